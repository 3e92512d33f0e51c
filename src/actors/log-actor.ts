/**
 * The log actor (`<node>/log`): owns what the server persisted (memory-log.ts in memory, wal-log.ts
 * on disk) and the outbox that keeps rule 4 of ARCHITECTURE.md: durable before acknowledged.
 *
 * The raft actor hands it every `persist` (and the log part of `installSnapshot`), and, with a
 * durable log, every output that must wait for the persists emitted before it (`afterPersist`: an
 * answer, a vote request, a commit, a client answer; the machine's AppendEntries and heartbeats do
 * not wait, §10.2.1). A persist is recorded at once (the log's in-memory mirror, which the machine
 * already agrees with) and starts a flush after the current tick; a waiting output is carried out
 * at once when nothing is unflushed, else held, in emission order, until every persist emitted
 * before it is durable. One flush is one write and one fdatasync of everything persisted since the
 * previous one; persists made while a flush runs form the next group. After each flush the machine
 * learns the durable prefix of its log (`persisted`), and the held outputs it covers go to their
 * actors (events.ts, deliverOutput). With the memory log nothing waits: every persist is durable
 * at once and nothing is held.
 *
 * A failed write or sync stops the node (fail-stop, `onFatal`): its state on disk is unknown.
 */
import { type AnyActorRef, fromCallback } from 'xstate';
import type { ClusterId } from '../machines/cluster-id.js';
import type { RaftEmitted } from '../machines/raft.types.js';
import type { AnyActorSystem } from './events.js';
import { deliverOutput, type LogEvent, relay, type SystemIds } from './events.js';
import type { InstallOutput, LogStorage, PersistOutput } from './memory-log.js';

export type Durability = {
  flushes: number;
  heldOutputs: number;
  maxOutbox: number;
  fatalError: string | null;
};

export type LogView = {
  durability: Durability;
  outboxSize: () => number;
  flushing: () => Promise<void> | null;
};

export type LogInput = {
  ids: SystemIds;
  log: LogStorage;
  /** Runs `fn` after the current tick: the flush waits for it, so a tick's persists form one group. */
  defer: (fn: () => void) => void;
  onFatal: (error: Error) => void;
  /** Where the node's handle reads the counters and waits for the last flush; never written there. */
  views: { log?: LogView };
};

/** An output and the number of persists emitted before it: it waits until that many are durable. */
type Held = { output: RaftEmitted; after: number };

type Outbox = {
  input: LogInput;
  system: AnyActorSystem;
  self: AnyActorRef;
  stopped: boolean;
  held: Held[];
  head: number;
  persistsEmitted: number;
  persistsDurable: number;
  flushing: Promise<void> | null;
  durability: Durability;
  /** Log writes emitted and not yet flushed, in order: where each starts and how many entries. */
  unflushed: Array<{ ordinal: number; fromIndex: number; count: number }>;
  durableLastIndex: number;
};

const outboxSize = (box: Outbox): number => box.held.length - box.head;

const deliver = (box: Outbox, output: RaftEmitted): void =>
  deliverOutput(box.system, box.self, box.input.ids, output);

/** Carries out, in order, the held outputs whose persists are all durable. */
const release = (box: Outbox): void => {
  while (!box.stopped && box.head < box.held.length) {
    const held = box.held[box.head]!;
    if (held.after > box.persistsDurable) return;
    box.held[box.head] = undefined as unknown as Held;
    box.head += 1;
    if (box.head === box.held.length) {
      box.held = [];
      box.head = 0;
    }
    deliver(box, held.output);
  }
};

/**
 * After a flush: the longest prefix of the current log that is on disk is what the flushed writes
 * left, cut before any write still waiting (it replaces what follows it). The machine learns it as
 * a `persisted` event.
 */
const reportDurablePrefix = (box: Outbox): void => {
  let pending = 0;
  while (pending < box.unflushed.length && box.unflushed[pending]!.ordinal <= box.persistsDurable) {
    const write = box.unflushed[pending]!;
    box.durableLastIndex = write.fromIndex - 1 + write.count;
    pending += 1;
  }
  if (pending > 0) box.unflushed = box.unflushed.slice(pending);
  let prefix = box.durableLastIndex;
  for (const write of box.unflushed) prefix = Math.min(prefix, write.fromIndex - 1);
  if (!box.stopped) relay(box.system, box.self, box.input.ids.raft, { type: 'persisted', index: prefix });
};

/** Flushes until every persist emitted so far is durable, releasing what each flush covers. */
const flushAll = async (box: Outbox): Promise<void> => {
  // After the current tick: every output of this transition, and of the tick, joins the group.
  await new Promise<void>((resolve) => box.input.defer(resolve));
  try {
    while (!box.stopped && box.persistsDurable < box.persistsEmitted) {
      const target = box.persistsEmitted;
      await box.input.log.flush!();
      box.durability.flushes += 1;
      box.persistsDurable = target;
      reportDurablePrefix(box);
      release(box);
    }
  } catch (error) {
    fatal(box, error as Error);
  } finally {
    box.flushing = null;
  }
};

/** A persist of a durable log: recorded in the mirror now, on disk at the next flush. */
const persistDurable = (box: Outbox, write: { fromIndex: number; count: number } | null): void => {
  box.persistsEmitted += 1;
  if (write !== null) box.unflushed.push({ ordinal: box.persistsEmitted, ...write });
  box.flushing ??= flushAll(box);
};

const persist = (box: Outbox, output: PersistOutput): void => {
  const { log } = box.input;
  log.persist(output);
  if (!log.durable) return;
  persistDurable(
    box,
    output.fromIndex > 0 ? { fromIndex: output.fromIndex, count: output.entries.length } : null,
  );
};

/** InstallSnapshot: the log restarts after the snapshot; the store takes its state once it is durable. */
const installSnapshot = (box: Outbox, output: InstallOutput): void => {
  const { log } = box.input;
  log.installSnapshot(output);
  if (!log.durable) {
    deliver(box, output);
    return;
  }
  persistDurable(box, output.keptSuffix ? null : { fromIndex: output.index + 1, count: 0 });
  afterPersist(box, output);
};

/** An output that may not reach the world before the persists emitted ahead of it are durable. */
const afterPersist = (box: Outbox, output: RaftEmitted): void => {
  if (box.stopped) return;
  if (outboxSize(box) === 0 && box.persistsDurable === box.persistsEmitted) {
    deliver(box, output);
    return;
  }
  box.held.push({ output, after: box.persistsEmitted });
  box.durability.heldOutputs += 1;
  box.durability.maxOutbox = Math.max(box.durability.maxOutbox, outboxSize(box));
};

/** The log failed or refused a write: the node stops (fail-stop), saying why. */
const fatal = (box: Outbox, error: Error): void => {
  if (box.stopped) return;
  box.durability.fatalError = error.message;
  box.input.onFatal(error);
};

/**
 * The store learned the committed cluster id: the log records it in its hard state, once. A durable
 * log writes it with the next group it flushes (the next persist's: a write, a vote, an append, or
 * the close of a clean stop), at no cost of its own, and nothing waits for it: a crash before then
 * loses only the record, and the restarted server learns the id again on apply (until then it knows
 * none, which every peer accepts). Another id than the one recorded means this server holds two
 * clusters' state: fail-stop.
 */
const recordClusterId = (box: Outbox, clusterId: ClusterId): void => {
  try {
    box.input.log.recordClusterId(clusterId);
  } catch (error) {
    fatal(box, error as Error);
  }
};

export const logActor = fromCallback<LogEvent, LogInput>(({ input, receive, system, self }) => {
  const box: Outbox = {
    input,
    system,
    self,
    stopped: false,
    held: [],
    head: 0,
    persistsEmitted: 0,
    persistsDurable: 0,
    flushing: null,
    durability: { flushes: 0, heldOutputs: 0, maxOutbox: 0, fatalError: null },
    unflushed: [],
    durableLastIndex: input.log.lastIndex(),
  };
  input.views.log = {
    durability: box.durability,
    outboxSize: () => outboxSize(box),
    flushing: () => box.flushing,
  };
  receive((event) => {
    if (box.stopped) return;
    switch (event.type) {
      case 'persist':
        persist(box, event.output);
        return;
      case 'installSnapshot':
        installSnapshot(box, event.output);
        return;
      case 'afterPersist':
        afterPersist(box, event.output);
        return;
      case 'compact':
        input.log.compact(event.index, event.take);
        return;
      case 'clusterIdLearned':
        recordClusterId(box, event.clusterId);
        return;
    }
  });
  // Held outputs are dropped (nothing was acknowledged for them); the node waits for the flush.
  return () => {
    box.stopped = true;
    box.held = [];
    box.head = 0;
  };
});
