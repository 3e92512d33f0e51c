/**
 * A Raft server as an actor system: the raft machine (XState) decides; the log actor persists; a
 * peer actor per member sends; the store actor applies; the requests actor serves calls from any
 * node. This module is the mailbox between them: it feeds the machine events (messages, proposal
 * batches, read batches) and carries out what the machine emits in the order rule 4 of
 * ARCHITECTURE.md needs: persist, then send, then apply.
 *
 * Durable before acknowledged (rule 4): with a durable log (the WAL), what the machine emits after
 * a `persist` must not reach the world before that persist is on disk, as in etcd's Ready loop.
 * Every output then goes through an outbox, in emission order: a `persist` is recorded in the log
 * at once (its in-memory mirror, which the machine already agrees with) and starts a flush after
 * the current tick; every other output waits in the outbox until every persist emitted before it is
 * durable, then is carried out in its original order, except a `send` that the machine marks
 * `beforePersist` (a leader's AppendEntries and heartbeats, raft.types.ts), which goes at once. One flush is one write and one fdatasync of
 * everything persisted since the previous one; outputs emitted while a flush runs queue behind it
 * and their persists form the next group. With the memory log nothing waits: outputs are carried
 * out at once, synchronously (the simulator relies on it).
 *
 * Batching: every call made in the same tick becomes one machine event (or one message to the
 * leader), so a burst of writes is one log append and one AppendEntries per peer.
 */
import { type Actor, createActor, type InspectionEvent } from 'xstate';
import { encodeCommand, type KvOperation, whyUndecodable } from '../io/command.js';
import type { RaftTransport, TransportEndpoint, TransportMessage } from '../io/transport.js';
import { assert, isCount } from '../machines/assert.js';
import { clusterIdOfLog } from '../machines/cluster-id.js';
import type { InstallSnapshot, NodeId, RaftMessage, SnapshotChunkAck } from '../machines/messages.js';
import { isChunkAck, RAFT_MESSAGE_TYPES } from '../machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../machines/raft.machine.js';
import { goesBeforePersist, type RaftEmitted, type Role } from '../machines/raft.types.js';
import { emptyRecoveryCounters } from '../machines/rules/index.js';
import { tickMsOf } from '../machines/ticks.js';
import type { ClientMessage, ClientPropose, ClientRead } from './client-messages.js';
import { isWellFormedClientMessage } from './client-messages.js';
import { type Clock, createDeadlines } from './deadlines.js';
import { createMemoryLog, type LogActor } from './log.js';
import { createPeer, type Peer } from './peer.js';
import { type CallOptions, createRequests } from './requests.js';
import { type Change, createStore } from './store.js';

export type RaftNodeOptions = {
  id: NodeId;
  voters: readonly NodeId[];
  transport: RaftTransport;
  electionTimeoutMs: number;
  heartbeatMs: number;
  /** Calls not confirmed by a majority within this time reject with QUORUM_UNAVAILABLE. */
  proposalTimeoutMs: number;
  /** A call forwarded to the leader that got no answer within this time goes again. */
  rpcTimeoutMs?: number;
  seed: number;
  /** Names this incarnation's requests so retries apply once; unique per process start. */
  session: number;
  /** What the server persisted before; a fresh memory log when absent. */
  log?: LogActor;
  /** Opens the log on `start()` (a WAL on disk), instead of `log`; `stop()` closes it. */
  openLog?: () => Promise<LogActor>;
  /** The log failed to write or sync: the node has stopped itself (fail-stop). */
  onFatal?: (error: Error) => void;
  clock?: Clock;
  nowMs?: () => number;
  /** Runs `fn` after the current tick; batches form in between. */
  defer?: (fn: () => void) => void;
  maxInflight?: number;
  maxEntriesPerAppend?: number;
  /** Most bytes of entry data in one AppendEntries (default 1 MiB; one entry always goes). */
  maxAppendBytes?: number;
  /**
   * This start's incarnation (messages.ts): used when the log does not define one (a WAL does,
   * from what it recorded); default Date.now(). Must exceed every earlier start's.
   */
  incarnation?: number;
  /**
   * Whether the node starts `recovering` (docs/design/recovery.md): by default when its log holds no
   * state at all (no term, no entry, no snapshot) and could have forgotten some: a memory log, or a
   * durable log whose storage this start created (a new or emptied dir).
   */
  recovering?: boolean;
  /** Never bootstrap a new cluster (the `join` option). */
  join?: boolean;
  /** Complete recovery from the members that still hold state (the `forceRecovery` option). */
  forceRecovery?: boolean;
  /** The id to mint if this node becomes the first leader of a new cluster (machines/cluster-id.ts). */
  newClusterId?: string;
  /**
   * Log compaction (§7): once this many entries were applied since the last compaction, the log
   * forgets all but the last `keepEntries` applied ones (a snapshot of the store replaces them).
   * Default 10,000; 0 or Infinity never compacts.
   */
  compactEvery?: number;
  /** Applied entries kept after a compaction, so a follower a little behind needs no snapshot (default min(5,000, compactEvery)). */
  keepEntries?: number;
  /** Largest piece of a snapshot in one message (default 1 MiB). */
  snapshotChunkBytes?: number;
  /** Snapshot chunks sent and not yet acknowledged, per follower (default 4): flow control. */
  snapshotWindowChunks?: number;
  inspect?: (event: InspectionEvent) => void;
  onChange?: (change: Change) => void;
  /** Whether anyone listens to changes now (default: whether onChange is given). */
  wantsChanges?: () => boolean;
  onRole?: (status: RaftStatus) => void;
  /** The peers this node cannot connect to now, and why (the hint of QUORUM_UNAVAILABLE errors). */
  unreachablePeers?: () => Array<{ nodeId: NodeId; reason: string }>;
  /** A committed entry did not decode and was applied as a no-op (store.ts). */
  onUndecodable?: (index: number, reason: string) => void;
};

export type RaftStatus = {
  id: NodeId;
  role: Role;
  term: number;
  leaderId: NodeId | null;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
};

/** Where the commands of one proposal batch came from, in batch order. */
type BatchPart = { from: NodeId | null; seqs: number[] };

/** A start with no state at all: no term, no entry, no snapshot (a memory log, an empty dir). */
const isBlankStart = (persisted: ReturnType<LogActor['persisted']>): boolean =>
  (persisted.hardState?.term ?? 0) === 0 && persisted.entries.length === 0 && !persisted.snapshot;

const realClock: Clock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

const RAFT_TYPES = new Set<string>(RAFT_MESSAGE_TYPES);
const DEFAULT_COMPACT_EVERY = 10_000;
const DEFAULT_SNAPSHOT_CHUNK_BYTES = 1024 * 1024;
const DEFAULT_SNAPSHOT_WINDOW_CHUNKS = 4;
/** Heartbeat answers without a new chunk ack before a snapshot transfer resends from its last ack. */
const SNAPSHOT_STALL_HEARTBEATS = 3;
/** The largest snapshot a node accepts from a peer (a Node Buffer's limit is near 4 GiB). */
const MAX_SNAPSHOT_BYTES = 2 ** 31 - 1;
/** A leader keeps entries for a live follower at most this many compaction intervals behind. */
const MAX_RETAINED_COMPACTIONS = 4;
const EMITTED_TYPES = [
  'persist',
  'installSnapshot',
  'send',
  'committed',
  'proposalsAccepted',
  'proposalsRejected',
  'readsReady',
  'readsRejected',
] as const;

export const createRaftNode = (options: RaftNodeOptions) => {
  const clock = options.clock ?? realClock;
  const nowMs = options.nowMs ?? (() => performance.now());
  const defer = options.defer ?? queueMicrotask;
  let log: LogActor = options.log ?? createMemoryLog();
  const deadlines = createDeadlines(clock, nowMs);
  const metrics = {
    proposalBatches: 0,
    readBatches: 0,
    elections: 0,
    malformedMessages: 0,
    compactions: 0,
    snapshotsSent: 0,
    snapshotsInstalled: 0,
    snapshotChunksSent: 0,
    /** Snapshot transfers that stalled and went back to the follower's last ack. */
    snapshotResends: 0,
  };
  const compactEvery =
    options.compactEvery === undefined
      ? DEFAULT_COMPACT_EVERY
      : options.compactEvery || Number.POSITIVE_INFINITY;
  const keepEntries = options.keepEntries ?? Math.min(5000, compactEvery);
  const snapshotChunkBytes = options.snapshotChunkBytes ?? DEFAULT_SNAPSHOT_CHUNK_BYTES;
  const snapshotWindowBytes =
    (options.snapshotWindowChunks ?? DEFAULT_SNAPSHOT_WINDOW_CHUNKS) * snapshotChunkBytes;
  assert(compactEvery > 0 && keepEntries >= 0 && snapshotChunkBytes > 0, 'bad compaction options');
  assert(snapshotWindowBytes >= snapshotChunkBytes, 'snapshotWindowChunks must be >= 1');
  /** The log's snapshot point as the node last moved it (compaction or install). */
  let compactedTo = 0;
  /** Durable logs only: flushes done, outputs that had to wait for one, the largest wait. */
  const durability = { flushes: 0, heldOutputs: 0, maxOutbox: 0, fatalError: null as string | null };

  let actor: Actor<RaftMachine> | null = null;
  let endpoint: TransportEndpoint | null = null;
  let stopped = false;
  let starting = false;
  let lastStatus: RaftStatus | null = null;
  /** This start's incarnation (messages.ts), set by `start()`. */
  let incarnation = 0;
  /** The cluster id the WAL's first entry holds at a restart (the store's applied one wins). */
  let startClusterId: string | null = null;
  const peers = new Map<NodeId, Peer>();

  // Leader side: batches by id, remote calls waiting for the next batch, reads taken for others.
  let nextBatchId = 1;
  const batches = new Map<number, BatchPart[]>();
  let remoteProposals: ClientPropose[] = [];
  let remoteReads: ClientRead[] = [];
  let nextLocalReadId = -1;
  const readsForOthers = new Map<number, { from: NodeId; id: number }>();

  const store = createStore(
    (change) => options.onChange?.(change),
    (session, seq) => requests.applied(session, seq),
    options.wantsChanges ?? (() => options.onChange !== undefined),
    (index, reason) => options.onUndecodable?.(index, reason),
  );

  const status = (): RaftStatus => {
    assert(actor !== null, 'status before start');
    const { context, value } = actor.getSnapshot();
    return {
      id: options.id,
      role: roleOf(value),
      term: context.currentTerm,
      leaderId: context.leaderId,
      commitIndex: context.commitIndex,
      appliedIndex: store.appliedIndex(),
      lastIndex: context.log.offset + context.log.entries.length,
    };
  };

  const send = (message: TransportMessage | ClientMessage): void => {
    if (!stopped) endpoint?.send(message);
  };

  const requests = createRequests({
    id: options.id,
    session: options.session,
    deadlines,
    nowMs,
    defer,
    proposalTimeoutMs: options.proposalTimeoutMs,
    rpcTimeoutMs: options.rpcTimeoutMs ?? Math.max(4 * options.electionTimeoutMs, 1000),
    leader: () => {
      if (!actor || stopped) return { self: false, leaderId: null };
      const now = status();
      return { self: now.role === 'leader', leaderId: now.role === 'leader' ? options.id : now.leaderId };
    },
    appliedIndex: () => store.appliedIndex(),
    proposeLocally: (seqs, commands) => {
      remoteProposals.unshift({ type: 'ClientPropose', from: options.id, to: options.id, seqs, commands });
      proposeBatch();
    },
    readLocally: (ids) => {
      remoteReads.unshift({ type: 'ClientRead', from: options.id, to: options.id, ids });
      readBatch();
    },
    send: (message) => send(message as ClientMessage),
    ...(options.unreachablePeers ? { unreachable: options.unreachablePeers } : {}),
  });

  /** One `propose` event for every write that reached this leader in the tick, local or forwarded. */
  const proposeBatch = (): void => {
    if (!actor || remoteProposals.length === 0) return;
    const parts: BatchPart[] = [];
    const commands: Uint8Array[] = [];
    for (const message of remoteProposals) {
      parts.push({ from: message.from === options.id ? null : message.from, seqs: message.seqs });
      for (const command of message.commands) commands.push(command);
    }
    remoteProposals = [];
    const batchId = nextBatchId++;
    batches.set(batchId, parts);
    metrics.proposalBatches += 1;
    actor.send({ type: 'propose', batchId, commands });
  };

  const readBatch = (): void => {
    if (!actor || remoteReads.length === 0) return;
    const ids: number[] = [];
    for (const message of remoteReads) {
      for (const id of message.ids) {
        if (message.from === options.id) {
          ids.push(id);
        } else {
          const localId = nextLocalReadId--;
          readsForOthers.set(localId, { from: message.from, id });
          ids.push(localId);
        }
      }
    }
    remoteReads = [];
    metrics.readBatches += 1;
    actor.send({ type: 'readIndex', ids });
  };

  const answerBatch = (batchId: number, firstIndex: number, term: number, leaderId: NodeId | null): void => {
    const parts = batches.get(batchId) ?? [];
    batches.delete(batchId);
    const accepted = firstIndex > 0;
    let offset = 0;
    for (const part of parts) {
      if (part.from === null) {
        if (accepted) requests.writesAccepted(part.seqs, firstIndex + offset);
        else requests.writesRefused(part.seqs);
      } else {
        send({
          type: 'ClientProposeResult',
          from: options.id,
          to: part.from,
          seqs: part.seqs,
          firstIndex: accepted ? firstIndex + offset : 0,
          term,
          notLeader: !accepted,
          leaderId,
        });
      }
      offset += part.seqs.length;
    }
  };

  const answerReads = (ids: number[], readIndex: number, leaderId: NodeId | null): void => {
    const confirmed = readIndex >= 0;
    const own: number[] = [];
    const byOrigin = new Map<NodeId, number[]>();
    for (const id of ids) {
      const other = readsForOthers.get(id);
      if (!other) {
        own.push(id);
        continue;
      }
      readsForOthers.delete(id);
      const list = byOrigin.get(other.from) ?? [];
      list.push(other.id);
      byOrigin.set(other.from, list);
    }
    if (own.length > 0) {
      if (confirmed) requests.readsConfirmed(own, readIndex);
      else requests.readsRefused(own);
    }
    for (const [to, remoteIds] of byOrigin) {
      send({
        type: 'ClientReadResult',
        from: options.id,
        to,
        ids: remoteIds,
        readIndex: Math.max(readIndex, 0),
        notLeader: !confirmed,
        leaderId,
      });
    }
  };

  // ---- snapshots and compaction (§7) -----------------------------------------------------------

  /**
   * Where the log may be compacted to now: `keepEntries` below the applied index, and on a leader
   * not past what a follower it hears from still needs (a snapshot is far costlier to send than
   * the entries), unless that follower is more than `MAX_RETAINED_COMPACTIONS` intervals behind.
   */
  const compactionTarget = (): number => {
    const applied = store.appliedIndex();
    let target = applied - keepEntries;
    if (!actor) return target;
    const { context, value } = actor.getSnapshot();
    if (roleOf(value) !== 'leader') return target;
    const floor = applied - keepEntries - MAX_RETAINED_COMPACTIONS * compactEvery;
    for (const progress of Object.values(context.progress)) {
      if (progress.recentActive && progress.matchIndex >= floor)
        target = Math.min(target, progress.matchIndex);
    }
    return target;
  };

  /** After an apply pass: compact when enough was applied since the last compaction. */
  const maybeCompact = (): void => {
    if (!actor || store.appliedIndex() - keepEntries - compactedTo < compactEvery) return;
    const target = compactionTarget();
    if (target - compactedTo < compactEvery) return;
    compactedTo = target;
    metrics.compactions += 1;
    log.compact(target, store.snapshot);
    actor.send({ type: 'compact', index: target });
  };

  /**
   * Snapshot transfers, one per follower (the latest the machine asked for replaces an older one).
   * Chunks go out a window at a time: at most `snapshotWindowBytes` sent beyond what the follower
   * acknowledged (SnapshotChunkAck), so a large store does not queue its whole snapshot at once
   * ahead of heartbeats and appends. A lost chunk or ack stalls the transfer: after
   * `SNAPSHOT_STALL_HEARTBEATS` heartbeat answers without a new ack, it goes back to the last ack
   * and sends from there (go-back-N). A transfer ends once the follower acknowledged every byte,
   * or when the machine asks for another snapshot for that follower (it resends after its own
   * patience ran out, progress.ts), or when this node stops leading.
   */
  type Transfer = {
    request: InstallSnapshot;
    data: Uint8Array;
    nextOffset: number;
    /** The follower holds every byte before this (its chunk acks). */
    ackedBytes: number;
    /** Heartbeat answers from the follower since the last ack that moved `ackedBytes`. */
    heartbeatsSinceAck: number;
    /** A heartbeat went to the follower since the last answer counted (a burst counts once). */
    heartbeatSent: boolean;
  };
  const transfers = new Map<NodeId, Transfer>();

  /** Sends the transfer's next chunks while the window has room. Bounded by the window. */
  const pumpTransfer = (transfer: Transfer): void => {
    const { request, data } = transfer;
    const totalBytes = data.byteLength;
    while (
      transfer.nextOffset < totalBytes &&
      transfer.nextOffset - transfer.ackedBytes < snapshotWindowBytes
    ) {
      const chunkOffset = transfer.nextOffset;
      transfer.nextOffset += snapshotChunkBytes;
      metrics.snapshotChunksSent += 1;
      peers.get(request.to)?.send({
        ...request,
        data: data.subarray(chunkOffset, chunkOffset + snapshotChunkBytes),
        chunkOffset,
        totalBytes,
      });
    }
  };

  /** A heartbeat answer from `from`: a transfer to it that made no progress goes back to its last ack. */
  const checkTransferStall = (from: NodeId): void => {
    const transfer = transfers.get(from);
    if (!transfer?.heartbeatSent) return;
    transfer.heartbeatSent = false;
    transfer.heartbeatsSinceAck += 1;
    if (transfer.heartbeatsSinceAck < SNAPSHOT_STALL_HEARTBEATS) return;
    if (status().role !== 'leader' || status().term !== transfer.request.term) {
      transfers.clear();
      return;
    }
    transfer.heartbeatsSinceAck = 0;
    transfer.nextOffset = transfer.ackedBytes;
    metrics.snapshotResends += 1;
    pumpTransfer(transfer);
  };

  /**
   * Sends the store's snapshot for an InstallSnapshot the machine asked for. The store's state at
   * its applied index is at least as new as the log's snapshot point, and covers only committed
   * entries, so it stands in for it. Split into chunks of at most snapshotChunkBytes.
   */
  const sendSnapshots = (requests: InstallSnapshot[]): void => {
    const snapshot = store.snapshot();
    assert(snapshot.data.byteLength > 0, 'an empty store snapshot');
    for (const request of requests) {
      assert(snapshot.index >= request.lastIncludedIndex, 'the store is behind the log snapshot point');
      // The machine asks again once its patience ran out (progress.ts). A transfer to that follower
      // that still covers what it needs and is moving (acks within the stall bound) goes on: starting
      // over would discard the follower's chunks, and a large store could then never get across.
      const current = transfers.get(request.to);
      if (
        current !== undefined &&
        current.request.term === request.term &&
        current.request.lastIncludedIndex >= request.lastIncludedIndex &&
        current.heartbeatsSinceAck < SNAPSHOT_STALL_HEARTBEATS
      )
        continue;
      metrics.snapshotsSent += 1;
      const transfer: Transfer = {
        request: { ...request, lastIncludedIndex: snapshot.index, lastIncludedTerm: snapshot.term },
        data: snapshot.data,
        nextOffset: 0,
        ackedBytes: 0,
        heartbeatsSinceAck: 0,
        heartbeatSent: false,
      };
      transfers.set(request.to, transfer);
      pumpTransfer(transfer);
    }
  };

  /** A follower acknowledged chunks of a snapshot: more of that transfer may go. */
  const onChunkAck = (ack: SnapshotChunkAck): void => {
    const transfer = transfers.get(ack.from);
    if (!transfer) return;
    const { request, data } = transfer;
    if (
      ack.term !== request.term ||
      ack.lastIncludedIndex !== request.lastIncludedIndex ||
      ack.totalBytes !== data.byteLength
    )
      return;
    if (status().role !== 'leader' || status().term !== request.term) {
      transfers.clear();
      return;
    }
    if (ack.receivedBytes > transfer.ackedBytes) {
      transfer.ackedBytes = Math.min(ack.receivedBytes, data.byteLength);
      transfer.heartbeatsSinceAck = 0;
    } else if (ack.receivedBytes < transfer.ackedBytes) {
      // The follower no longer holds what it acknowledged (it restarted, or it had finished this
      // snapshot and took a resent tail for a new one): send again from what it holds.
      transfer.ackedBytes = ack.receivedBytes;
      transfer.nextOffset = ack.receivedBytes;
    }
    if (transfer.ackedBytes >= data.byteLength) transfers.delete(ack.from);
    else pumpTransfer(transfer);
  };

  /** The follower answered an InstallSnapshot at or past the transfer's point: nothing more to send. */
  const endTransferAnswered = (response: RaftMessage): void => {
    if (response.type !== 'InstallSnapshotResponse') return;
    const transfer = transfers.get(response.from);
    if (transfer && response.matchIndex >= transfer.request.lastIncludedIndex)
      transfers.delete(response.from);
  };

  /** InstallSnapshot rule 8: the store takes the snapshot's state; calls it covers are done. */
  const restoreStore = (data: Uint8Array, index: number): void => {
    const restored = store.restore(data);
    assert(restored.index === index, `snapshot data at ${restored.index}, message at ${index}`);
    compactedTo = Math.max(compactedTo, index);
    metrics.snapshotsInstalled += 1;
    requests.afterRestore((seq) => store.wasApplied(options.session, seq));
  };

  const carryOut = (emitted: RaftEmitted): void => {
    switch (emitted.type) {
      case 'persist':
        log.persist(emitted);
        return;
      case 'installSnapshot':
        if (!log.durable) log.installSnapshot(emitted);
        restoreStore(emitted.data, emitted.index);
        return;
      case 'send': {
        const snapshots: InstallSnapshot[] = [];
        for (const message of emitted.messages) {
          if (message.type === 'InstallSnapshot') snapshots.push(message);
          else peers.get(message.to)?.send(message);
          if (message.type === 'Heartbeat' && transfers.size > 0) {
            const transfer = transfers.get(message.to);
            if (transfer) transfer.heartbeatSent = true;
          }
        }
        if (snapshots.length > 0) sendSnapshots(snapshots);
        return;
      }
      case 'committed':
        store.apply(emitted.firstIndex, emitted.entries);
        requests.afterApply();
        maybeCompact();
        return;
      case 'proposalsAccepted':
        answerBatch(emitted.batchId, emitted.firstIndex, emitted.term, options.id);
        return;
      case 'proposalsRejected':
        answerBatch(emitted.batchId, 0, 0, emitted.leaderId);
        return;
      case 'readsReady':
        answerReads(emitted.ids, emitted.readIndex, options.id);
        return;
      case 'readsRejected':
        answerReads(emitted.ids, -1, emitted.leaderId);
        return;
    }
  };

  // ---- the clock's tick: the machine's follower election timer counts it (ticks.ts) -----------

  const tickMs = tickMsOf(options.electionTimeoutMs);
  let tickTimer: unknown = null;

  /** One clock timer: every `tickMs`, one `tick` event to the machine. */
  const onTick = (): void => {
    tickTimer = null;
    if (stopped || !actor) return;
    tickTimer = clock.setTimeout(onTick, tickMs);
    actor.send({ type: 'tick' });
  };

  /** Only a follower counts ticks (candidates' and leaders' timers are XState delays): tick while one. */
  const tickWhile = (role: Role): void => {
    if (role === 'follower' && tickTimer === null && !stopped) {
      tickTimer = clock.setTimeout(onTick, tickMs);
    } else if (role !== 'follower' && tickTimer !== null) {
      clock.clearTimeout(tickTimer);
      tickTimer = null;
    }
  };

  // ---- the outbox: durable before acknowledged (durable logs only) ------------------------------

  /** An output and the number of persists emitted before it: it waits until that many are durable. */
  type Held = { emitted: RaftEmitted; after: number };
  let outbox: Held[] = [];
  let outboxHead = 0;
  let persistsEmitted = 0;
  let persistsDurable = 0;
  let flushing: Promise<void> | null = null;

  const outboxSize = (): number => outbox.length - outboxHead;

  const hold = (emitted: RaftEmitted): void => {
    outbox.push({ emitted, after: persistsEmitted });
    durability.heldOutputs += 1;
    durability.maxOutbox = Math.max(durability.maxOutbox, outboxSize());
  };

  /** Carries out, in order, the held outputs whose persists are all durable. */
  const release = (): void => {
    while (!stopped && outboxHead < outbox.length) {
      const held = outbox[outboxHead]!;
      if (held.after > persistsDurable) return;
      outbox[outboxHead] = undefined as unknown as Held;
      outboxHead += 1;
      if (outboxHead === outbox.length) {
        outbox = [];
        outboxHead = 0;
      }
      carryOut(held.emitted);
    }
  };

  const fail = (error: Error): void => {
    if (stopped) return;
    durability.fatalError = error.message;
    stop().catch(() => undefined);
    options.onFatal?.(error);
  };

  /** Flushes until every persist emitted so far is durable, releasing what each flush covers. */
  const flushAll = async (): Promise<void> => {
    // After the current tick: every output of this transition, and of the tick, joins the group.
    await new Promise<void>((resolve) => defer(resolve));
    try {
      while (!stopped && persistsDurable < persistsEmitted) {
        const target = persistsEmitted;
        await log.flush!();
        durability.flushes += 1;
        persistsDurable = target;
        reportDurablePrefix();
        release();
      }
    } catch (error) {
      fail(error as Error);
    } finally {
      flushing = null;
    }
  };

  /** Every output of the machine arrives here, in emission order. */
  const onEmitted = (emitted: RaftEmitted): void => {
    if (!log.durable) {
      carryOut(emitted);
      return;
    }
    if (stopped) return;
    if (emitted.type === 'installSnapshot') {
      // Its log part is a persist; its store part waits in the outbox like any output.
      log.installSnapshot(emitted);
      persistsEmitted += 1;
      if (!emitted.keptSuffix)
        unflushedWrites.push({ ordinal: persistsEmitted, fromIndex: emitted.index + 1, count: 0 });
      flushing ??= flushAll();
    } else if (emitted.type === 'persist') {
      log.persist(emitted);
      persistsEmitted += 1;
      if (emitted.fromIndex > 0) {
        unflushedWrites.push({
          ordinal: persistsEmitted,
          fromIndex: emitted.fromIndex,
          count: emitted.entries.length,
        });
      }
      flushing ??= flushAll();
      return;
    }
    if (outboxSize() === 0 && persistsDurable === persistsEmitted) {
      carryOut(emitted);
      return;
    }
    // The machine says what may leave before the persists ahead of it are durable (raft.types.ts).
    if (goesBeforePersist(emitted)) {
      carryOut(emitted);
      return;
    }
    hold(emitted);
  };

  /** Log writes emitted and not yet flushed, in order: where each starts and how many entries. */
  let unflushedWrites: Array<{ ordinal: number; fromIndex: number; count: number }> = [];
  let durableLastIndex = log.lastIndex();

  /**
   * After a flush: the longest prefix of the current log that is on disk is what the flushed
   * writes left, cut before any write still waiting (it replaces what follows it). The machine
   * learns it as a `persisted` event.
   */
  const reportDurablePrefix = (): void => {
    let pending = 0;
    while (pending < unflushedWrites.length && unflushedWrites[pending]!.ordinal <= persistsDurable) {
      const write = unflushedWrites[pending]!;
      durableLastIndex = write.fromIndex - 1 + write.count;
      pending += 1;
    }
    if (pending > 0) unflushedWrites = unflushedWrites.slice(pending);
    let prefix = durableLastIndex;
    for (const write of unflushedWrites) prefix = Math.min(prefix, write.fromIndex - 1);
    if (!stopped && actor) actor.send({ type: 'persisted', index: prefix });
  };

  const noticeRoleChange = (): void => {
    if (!actor || stopped) return;
    const now = status();
    const before = lastStatus;
    if (before && before.role === now.role && before.term === now.term && before.leaderId === now.leaderId)
      return;
    lastStatus = now;
    tickWhile(now.role);
    if (now.role === 'leader' && before?.role !== 'leader') metrics.elections += 1;
    // A snapshot transfer (the whole store's bytes) does not outlive the leadership that began it.
    if (now.role !== 'leader' || now.term !== before?.term) transfers.clear();
    if (before?.leaderId !== now.leaderId || before?.role !== now.role) requests.leaderChanged();
    options.onRole?.(now);
  };

  /** A client message from another node. Anything malformed is dropped and counted. */
  const receiveClientMessage = (message: ClientMessage): void => {
    if (!isWellFormedClientMessage(message as unknown as { type: string } & Record<string, unknown>)) {
      metrics.malformedMessages += 1;
      return;
    }
    const leading = status().role === 'leader';
    switch (message.type) {
      case 'ClientPropose': {
        if (!leading) {
          answerRefusal(message.from, 'ClientProposeResult', message.seqs);
          return;
        }
        const valid = withoutUndecodable(message);
        if (valid.seqs.length === 0) return;
        if (remoteProposals.length === 0) defer(proposeBatch);
        remoteProposals.push(valid);
        return;
      }
      case 'ClientRead':
        if (!leading) {
          answerRefusal(message.from, 'ClientReadResult', message.ids);
          return;
        }
        if (remoteReads.length === 0) defer(readBatch);
        remoteReads.push(message);
        return;
      case 'ClientProposeResult':
        requests.onProposeResult(message);
        return;
      case 'ClientReadResult':
        requests.onReadResult(message);
        return;
    }
  };

  /**
   * A forwarded write is bytes from the network: the leader checks that every command and value
   * decodes before it appends one (the caller checked too, but may run other code). The ones that
   * do not are refused back as invalid, and counted; the rest go on.
   */
  const withoutUndecodable = (message: ClientPropose): ClientPropose => {
    let firstBad = 0;
    while (firstBad < message.commands.length && whyUndecodable(message.commands[firstBad]!) === null)
      firstBad += 1;
    if (firstBad === message.commands.length) return message;
    const seqs = message.seqs.slice(0, firstBad);
    const commands = message.commands.slice(0, firstBad);
    const bad: number[] = [];
    for (let offset = firstBad; offset < message.commands.length; offset += 1) {
      const good = whyUndecodable(message.commands[offset]!) === null;
      (good ? seqs : bad).push(message.seqs[offset]!);
      if (good) commands.push(message.commands[offset]!);
    }
    metrics.malformedMessages += 1;
    send({
      type: 'ClientProposeResult',
      from: options.id,
      to: message.from,
      seqs: bad,
      firstIndex: 0,
      term: 0,
      notLeader: false,
      leaderId: options.id,
      invalid: true,
    });
    return { ...message, seqs, commands };
  };

  const answerRefusal = (
    to: NodeId,
    type: 'ClientProposeResult' | 'ClientReadResult',
    ids: number[],
  ): void => {
    const leaderId = status().leaderId;
    const base = { from: options.id, to, firstIndex: 0, readIndex: 0, term: 0, notLeader: true, leaderId };
    send(type === 'ClientProposeResult' ? { ...base, type, seqs: ids } : { ...base, type, ids });
  };

  /** Snapshot chunks received so far, one snapshot per sender (Figure 13's offset and done). */
  /** `contiguous`: every byte before it arrived (what the chunk acks report). */
  type Assembly = {
    key: string;
    totalBytes: number;
    parts: Map<number, Uint8Array>;
    received: number;
    contiguous: number;
  };
  const assemblies = new Map<NodeId, Assembly>();

  /** Tells the leader how much of its snapshot arrived, so it sends more (flow control). */
  const acknowledgeChunk = (message: InstallSnapshot, receivedBytes: number): void => {
    const ack: SnapshotChunkAck = {
      type: 'SnapshotChunkAck',
      from: options.id,
      to: message.from,
      term: message.term,
      lastIncludedIndex: message.lastIncludedIndex,
      totalBytes: message.totalBytes,
      receivedBytes,
    };
    send(ack);
  };

  /** A whole InstallSnapshot once every chunk of it arrived (in any order), else null. */
  const assembleSnapshot = (message: InstallSnapshot): InstallSnapshot | null => {
    const { data, chunkOffset, totalBytes } = message;
    const counts = [
      message.term,
      message.lastIncludedIndex,
      message.lastIncludedTerm,
      chunkOffset,
      totalBytes,
    ];
    if (
      !counts.every(isCount) ||
      !(data instanceof Uint8Array) ||
      totalBytes > MAX_SNAPSHOT_BYTES ||
      chunkOffset + data.byteLength > totalBytes ||
      (data.byteLength === 0 && totalBytes > 0)
    ) {
      metrics.malformedMessages += 1;
      return null;
    }
    // One chunk, or a snapshot this server already holds all of (its commit index is at or past the
    // snapshot's point, e.g. a resent tail after it installed it): acknowledged whole, so the
    // leader's transfer ends, and handed on (the machine answers the latter without its data).
    const oneChunk = chunkOffset === 0 && data.byteLength === totalBytes;
    if (oneChunk || message.lastIncludedIndex <= status().commitIndex) {
      acknowledgeChunk(message, totalBytes);
      assemblies.delete(message.from);
      return message;
    }
    const key = `${message.term}/${message.lastIncludedIndex}/${message.lastIncludedTerm}/${totalBytes}`;
    let assembly = assemblies.get(message.from);
    if (!assembly || assembly.key !== key) {
      assembly = { key, totalBytes, parts: new Map(), received: 0, contiguous: 0 };
      assemblies.set(message.from, assembly);
    }
    // A duplicate is acknowledged again: the leader resends from the last ack after a stall.
    if (!assembly.parts.has(chunkOffset)) {
      assembly.parts.set(chunkOffset, data);
      assembly.received += data.byteLength;
      let part = assembly.parts.get(assembly.contiguous);
      while (part !== undefined && part.byteLength > 0) {
        assembly.contiguous += part.byteLength;
        part = assembly.parts.get(assembly.contiguous);
      }
    }
    acknowledgeChunk(message, assembly.contiguous);
    if (assembly.received < totalBytes) return null;
    assemblies.delete(message.from);
    // The pieces must tile the snapshot exactly: no gap, no overlap.
    const offsets = [...assembly.parts.keys()].sort((a, b) => a - b);
    const whole = new Uint8Array(totalBytes);
    let next = 0;
    for (const at of offsets) {
      const part = assembly.parts.get(at)!;
      if (at !== next) {
        metrics.malformedMessages += 1;
        return null;
      }
      whole.set(part, at);
      next = at + part.byteLength;
    }
    return { ...message, data: whole, chunkOffset: 0 };
  };

  /**
   * A whole snapshot that the machine would install is parsed before the machine sees it: bad
   * bytes are dropped and counted here (the log and the commit index must not move for them).
   * The store keeps the parse for the restore that follows.
   */
  const isInstallable = (message: InstallSnapshot): boolean => {
    if (message.lastIncludedIndex <= status().commitIndex) return true; // answered without its data
    try {
      const parsed = store.prepare(message.data!);
      if (parsed.index === message.lastIncludedIndex && parsed.term === message.lastIncludedTerm) return true;
    } catch {
      // counted below
    }
    metrics.malformedMessages += 1;
    return false;
  };

  const deliver = (message: TransportMessage): void => {
    if (stopped || !actor) return;
    peers.get(message.from)?.received();
    if (message.type === 'HeartbeatResponse' && transfers.size > 0) checkTransferStall(message.from);
    if (message.type === 'InstallSnapshot') {
      const whole = assembleSnapshot(message as unknown as InstallSnapshot);
      if (whole && isInstallable(whole)) actor.send({ type: 'message', message: whole });
    } else if (message.type === 'SnapshotChunkAck') {
      if (isChunkAck(message)) onChunkAck(message);
      else metrics.malformedMessages += 1;
    } else if (RAFT_TYPES.has(message.type)) {
      if (transfers.size > 0) endTransferAnswered(message as unknown as RaftMessage);
      actor.send({ type: 'message', message: message as unknown as RaftMessage });
    } else {
      receiveClientMessage(message as unknown as ClientMessage);
    }
  };

  const start = async (): Promise<void> => {
    assert(actor === null && !starting, 'start called twice');
    starting = true;
    if (options.openLog) {
      try {
        log = await options.openLog();
      } catch (error) {
        starting = false;
        throw error;
      }
    }
    let persisted: ReturnType<LogActor['persisted']>;
    try {
      persisted = log.persisted();
      // A WAL log defines `incarnation` (larger than any it recorded); a memory log does not.
      incarnation = log.incarnation ?? options.incarnation ?? Date.now();
      assert(Number.isSafeInteger(incarnation) && incarnation > 0, `bad incarnation ${incarnation}`);
      if (persisted.snapshot) store.restore(persisted.snapshot.data);
      // A restart from the WAL knows its cluster id at once (machines/cluster-id.ts).
      startClusterId = persisted.snapshot ? null : clusterIdOfLog(persisted.entries);
      compactedTo = persisted.snapshot?.index ?? 0;
      durableLastIndex = log.lastIndex();
      // Synchronous when the transport connects synchronously (in-process and simulated ones).
      const connected = options.transport.connect(options.id, deliver);
      endpoint = connected instanceof Promise ? await connected : connected;
    } catch (error) {
      // Nothing runs: the WAL's file handle and the dir lock are released for the next start.
      await log.close?.();
      throw error;
    }
    for (const voter of options.voters)
      if (voter !== options.id) peers.set(voter, createPeer(voter, endpoint));
    actor = createActor(raftMachine, {
      clock,
      ...(options.inspect ? { inspect: options.inspect } : {}),
      input: {
        id: options.id,
        voters: options.voters,
        electionTimeoutMs: options.electionTimeoutMs,
        heartbeatMs: options.heartbeatMs,
        seed: options.seed,
        hardState: persisted.hardState,
        ...(persisted.snapshot
          ? { snapshot: { index: persisted.snapshot.index, term: persisted.snapshot.term } }
          : {}),
        entries: persisted.entries,
        durable: log.durable === true,
        incarnation,
        recovering:
          options.recovering ?? (isBlankStart(persisted) && (log.durable !== true || log.fresh === true)),
        join: options.join === true,
        forceRecovery: options.forceRecovery === true,
        ...(options.newClusterId ? { newClusterId: options.newClusterId } : {}),
        ...(options.maxAppendBytes ? { maxAppendBytes: options.maxAppendBytes } : {}),
        ...(options.maxInflight ? { maxInflight: options.maxInflight } : {}),
        ...(options.maxEntriesPerAppend ? { maxEntriesPerAppend: options.maxEntriesPerAppend } : {}),
      },
    });
    for (const type of EMITTED_TYPES) actor.on(type, (emitted) => onEmitted(emitted as RaftEmitted));
    actor.subscribe({ next: noticeRoleChange });
    actor.start();
    noticeRoleChange();
  };

  /**
   * Stops the machine and the transport; every waiting call rejects with STOPPED. Held outputs are
   * dropped (nothing was acknowledged for them); a flush in flight is waited for, then the log is
   * closed.
   */
  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= stopOnce();
    return stopping;
  };
  const stopOnce = async (): Promise<void> => {
    stopped = true;
    if (tickTimer !== null) clock.clearTimeout(tickTimer);
    tickTimer = null;
    actor?.stop();
    requests.stop();
    deadlines.clear();
    batches.clear();
    readsForOthers.clear();
    transfers.clear();
    outbox = [];
    outboxHead = 0;
    await flushing;
    try {
      await log.close?.();
    } finally {
      await endpoint?.close();
    }
  };

  /**
   * While recovering: the members whose answer (from a member that is not recovering itself) the
   * current round still lacks, and whether it lacks a leader's; empty once recovered.
   */
  const recoveryWaitingFor = (): NodeId[] => {
    const context = actor?.getSnapshot().context;
    if (!context?.recovering) return [];
    const ready = new Set(
      Object.values(context.recovery.answers)
        .filter((answer) => !answer.recovering)
        .map((answer) => answer.from),
    );
    return options.voters.filter((voter) => voter !== options.id && !ready.has(voter));
  };

  /** Recovery (docs/design/recovery.md): whether this node still recovers, and its counters. */
  const recoveryMetrics = () => {
    const context = actor?.getSnapshot().context;
    return {
      recovering: context?.recovering ?? false,
      recovery: { ...(context?.recoveryCounters ?? emptyRecoveryCounters()) },
    };
  };

  /** Leader side: progress resets by a new incarnation, answers of an old one ignored. */
  const incarnationCounters = () => {
    const counters = actor?.getSnapshot().context.incarnationCounters;
    return { incarnationResets: counters?.resets ?? 0, staleIncarnationAnswers: counters?.staleIgnored ?? 0 };
  };

  return {
    id: options.id,
    start,
    stop,
    /** set/delete: resolves once committed by a majority and applied on this node. */
    write: (operation: KvOperation, callOptions?: CallOptions) =>
      requests.write((tag) => encodeCommand(operation, tag), callOptions),
    /** Resolves once this node has applied everything committed before the call (ReadIndex). */
    readBarrier: (callOptions?: CallOptions) => requests.read(callOptions),
    status,
    get: store.get,
    has: store.has,
    /** The store's snapshot at its applied index (tests and tools). */
    storeSnapshot: store.snapshot,
    /** The log actor (the one `openLog` opened, once started). */
    log: (): LogActor => log,
    /** The machine's snapshot, for tests and tools (read-only). */
    snapshot: () => {
      assert(actor !== null, 'snapshot before start');
      return actor.getSnapshot();
    },
    recoveryWaitingFor,
    /** The cluster id this node knows (machines/cluster-id.ts), or null while it knows none. */
    clusterId: (): string | null => store.clusterId() ?? startClusterId,
    /** Sends a timer event by hand (tests and tools: `electionTimeout`, `checkQuorum`, ...). */
    fire: (event: { type: 'electionTimeout' | 'heartbeatTimeout' | 'checkQuorum' }) => actor?.send(event),
    isStopped: () => stopped,
    metrics: () => ({
      ...metrics,
      incarnation,
      ...incarnationCounters(),
      ...recoveryMetrics(),
      ...requests.counters(),
      pendingWrites: requests.pending().writes,
      pendingReads: requests.pending().reads,
      duplicatesSkipped: store.duplicates(),
      undecodableEntries: store.undecodable(),
      storeSize: store.size(),
      durable: log.durable === true,
      ...durability,
      outbox: outboxSize(),
      peers: [...peers.values()].map((peer) => peer.metrics()),
    }),
  };
};

export type RaftNode = ReturnType<typeof createRaftNode>;
