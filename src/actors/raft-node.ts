/**
 * A Raft server as an actor system: the raft machine (XState) decides; the log actor persists; a
 * peer actor per member sends; the store actor applies. This module is the mailbox between them:
 * it feeds the machine events (messages, proposal batches, read batches) and carries out what
 * the machine emits, in the order rule 4 of ARCHITECTURE.md needs: persist, then send, then apply.
 *
 * Batching: every `propose` and `read` call made in the same tick becomes one machine event, so a
 * burst of writes is one log append and one AppendEntries per peer.
 */
import { type Actor, createActor, type InspectionEvent } from 'xstate';
import { diskeyvalError } from '../errors.js';
import type { RaftTransport, TransportEndpoint, TransportMessage } from '../io/transport.js';
import { assert } from '../machines/assert.js';
import type { Entry, NodeId, RaftMessage } from '../machines/messages.js';
import { RAFT_MESSAGE_TYPES } from '../machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../machines/raft.machine.js';
import type { RaftEmitted, Role } from '../machines/raft.types.js';
import { type Clock, createDeadlines, type Deadline } from './deadlines.js';
import { createMemoryLog, type MemoryLog } from './log.js';
import { createPeer, type Peer } from './peer.js';
import { type Change, createStore } from './store.js';

export type RaftNodeOptions = {
  id: NodeId;
  voters: readonly NodeId[];
  transport: RaftTransport;
  electionTimeoutMs: number;
  heartbeatMs: number;
  proposalTimeoutMs: number;
  seed: number;
  /** What the server persisted before; a fresh memory log when absent. */
  log?: MemoryLog;
  clock?: Clock;
  nowMs?: () => number;
  /** Runs `fn` after the current tick; batches form in between. */
  defer?: (fn: () => void) => void;
  maxInflight?: number;
  maxEntriesPerAppend?: number;
  inspect?: (event: InspectionEvent) => void;
  onChange?: (change: Change) => void;
  onRole?: (status: RaftStatus) => void;
  /** Messages that are not Raft RPCs (the client API's own), delivered as they arrive. */
  onOtherMessage?: (message: TransportMessage) => void;
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

type Waiter = { resolve: () => void; reject: (error: Error) => void; deadline: Deadline | null };
type ProposalWaiter = Waiter & { index: number; term: number };
type ReadWaiter = Waiter & { readIndex: number };

const realClock: Clock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

const RAFT_TYPES = new Set<string>(RAFT_MESSAGE_TYPES);

export const createRaftNode = (options: RaftNodeOptions) => {
  const clock = options.clock ?? realClock;
  const nowMs = options.nowMs ?? (() => performance.now());
  const defer = options.defer ?? queueMicrotask;
  const log = options.log ?? createMemoryLog();
  const deadlines = createDeadlines(clock, nowMs);
  const metrics = { proposals: 0, proposalBatches: 0, reads: 0, readBatches: 0, elections: 0, applied: 0 };

  let actor: Actor<RaftMachine> | null = null;
  let endpoint: TransportEndpoint | null = null;
  let stopped = false;
  const peers = new Map<NodeId, Peer>();
  const store = createStore((change) => options.onChange?.(change));

  // Proposals: a queue per tick, then waiters by log index once the leader accepted the batch.
  let queuedCommands: Uint8Array[] = [];
  let queuedProposals: Waiter[] = [];
  let nextBatchId = 1;
  const batches = new Map<number, Waiter[]>();
  const proposalWaiters: ProposalWaiter[] = [];
  // Reads: a queue per tick, then waiters by read index once leadership was confirmed.
  let queuedReads: Waiter[] = [];
  let nextReadId = 1;
  const reads = new Map<number, Waiter>();
  const readWaiters: ReadWaiter[] = [];

  let lastStatus: RaftStatus | null = null;

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
      lastIndex: context.log.entries.length,
    };
  };

  const settle = (waiter: Waiter, error?: Error): void => {
    if (waiter.deadline) {
      if (waiter.deadline.done) return;
      waiter.deadline.done = true;
    }
    if (error) waiter.reject(error);
    else waiter.resolve();
  };

  const withDeadline = <W extends Waiter>(waiter: W, what: string): W => {
    waiter.deadline = deadlines.add(options.proposalTimeoutMs, () =>
      waiter.reject(
        diskeyvalError(
          'QUORUM_UNAVAILABLE',
          `${what} not confirmed by a majority within ${options.proposalTimeoutMs} ms`,
        ),
      ),
    );
    return waiter;
  };

  const onCommitted = (firstIndex: number, entries: Entry[]): void => {
    store.apply(firstIndex, entries);
    metrics.applied = store.appliedIndex();
    const applied = store.appliedIndex();
    let settled = 0;
    while (settled < proposalWaiters.length && proposalWaiters[settled]!.index <= applied) {
      const waiter = proposalWaiters[settled]!;
      const entry = entries[waiter.index - firstIndex];
      const sameEntry = entry !== undefined && entry.term === waiter.term;
      settle(
        waiter,
        sameEntry ? undefined : diskeyvalError('PROPOSAL_DROPPED', 'a new leader replaced the entry'),
      );
      settled += 1;
    }
    if (settled > 0) proposalWaiters.splice(0, settled);
    releaseReadsUpTo(applied);
  };

  const releaseReadsUpTo = (applied: number): void => {
    let released = 0;
    while (released < readWaiters.length && readWaiters[released]!.readIndex <= applied) {
      settle(readWaiters[released]!);
      released += 1;
    }
    if (released > 0) readWaiters.splice(0, released);
  };

  const onAccepted = (batchId: number, firstIndex: number, term: number): void => {
    const waiters = batches.get(batchId) ?? [];
    batches.delete(batchId);
    // Entries this leader just wrote replace whatever older pending proposals held at those indexes.
    while (proposalWaiters.length > 0 && proposalWaiters[proposalWaiters.length - 1]!.index >= firstIndex) {
      settle(proposalWaiters.pop()!, diskeyvalError('PROPOSAL_DROPPED', 'a new leader replaced the entry'));
    }
    waiters.forEach((waiter, offset) => {
      proposalWaiters.push(Object.assign(waiter, { index: firstIndex + offset, term }));
    });
  };

  const notLeader = (leaderId: NodeId | null) =>
    diskeyvalError('NOT_LEADER', `${options.id} is not the leader (leader: ${leaderId ?? 'unknown'})`, {
      leaderId,
    });

  const carryOut = (emitted: RaftEmitted): void => {
    switch (emitted.type) {
      case 'persist':
        log.persist(emitted);
        return;
      case 'send':
        for (const message of emitted.messages) peers.get(message.to)?.send(message);
        return;
      case 'committed':
        onCommitted(emitted.firstIndex, emitted.entries);
        return;
      case 'proposalsAccepted':
        onAccepted(emitted.batchId, emitted.firstIndex, emitted.term);
        return;
      case 'proposalsRejected': {
        const error = notLeader(emitted.leaderId);
        for (const waiter of batches.get(emitted.batchId) ?? []) settle(waiter, error);
        batches.delete(emitted.batchId);
        return;
      }
      case 'readsReady':
        for (const id of emitted.ids) {
          const waiter = reads.get(id);
          reads.delete(id);
          if (waiter) insertReadWaiter(Object.assign(waiter, { readIndex: emitted.readIndex }));
        }
        releaseReadsUpTo(store.appliedIndex());
        return;
      case 'readsRejected': {
        const error = notLeader(emitted.leaderId);
        for (const id of emitted.ids) {
          const waiter = reads.get(id);
          reads.delete(id);
          if (waiter) settle(waiter, error);
        }
        return;
      }
    }
  };

  const insertReadWaiter = (waiter: ReadWaiter): void => {
    let position = readWaiters.length;
    while (position > 0 && readWaiters[position - 1]!.readIndex > waiter.readIndex) position -= 1;
    readWaiters.splice(position, 0, waiter);
  };

  const noticeRoleChange = (): void => {
    if (!actor || stopped) return;
    const now = status();
    const before = lastStatus;
    if (before && before.role === now.role && before.term === now.term && before.leaderId === now.leaderId)
      return;
    lastStatus = now;
    if (now.role === 'leader' && before?.role !== 'leader') metrics.elections += 1;
    options.onRole?.(now);
  };

  const deliver = (message: TransportMessage): void => {
    if (stopped || !actor) return;
    if (!RAFT_TYPES.has(message.type)) {
      options.onOtherMessage?.(message);
      return;
    }
    peers.get(message.from)?.received();
    actor.send({ type: 'message', message: message as unknown as RaftMessage });
  };

  const flushProposals = (): void => {
    if (stopped || !actor || queuedCommands.length === 0) return;
    const batchId = nextBatchId++;
    batches.set(batchId, queuedProposals);
    const commands = queuedCommands;
    queuedCommands = [];
    queuedProposals = [];
    metrics.proposalBatches += 1;
    actor.send({ type: 'propose', batchId, commands });
  };

  const flushReads = (): void => {
    if (stopped || !actor || queuedReads.length === 0) return;
    const ids: number[] = [];
    for (const waiter of queuedReads) {
      const id = nextReadId++;
      reads.set(id, waiter);
      ids.push(id);
    }
    queuedReads = [];
    metrics.readBatches += 1;
    actor.send({ type: 'readIndex', ids });
  };

  const start = async (): Promise<void> => {
    assert(actor === null, 'start called twice');
    const persisted = log.persisted();
    // Synchronous when the transport connects synchronously (in-process and simulated ones).
    const connected = options.transport.connect(options.id, deliver);
    endpoint = connected instanceof Promise ? await connected : connected;
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
        entries: persisted.entries,
        ...(options.maxInflight ? { maxInflight: options.maxInflight } : {}),
        ...(options.maxEntriesPerAppend ? { maxEntriesPerAppend: options.maxEntriesPerAppend } : {}),
      },
    });
    for (const type of [
      'persist',
      'send',
      'committed',
      'proposalsAccepted',
      'proposalsRejected',
      'readsReady',
      'readsRejected',
    ] as const) {
      actor.on(type, (emitted) => carryOut(emitted as RaftEmitted));
    }
    actor.subscribe({ next: noticeRoleChange, error: (error) => options.onRole && console.error(error) });
    actor.start();
    noticeRoleChange();
  };

  /** Resolves once the command is committed by a majority and applied here; rejects with a coded error. */
  const propose = (command: Uint8Array): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (stopped || !actor) {
        reject(diskeyvalError('STOPPED', `${options.id} is not running`));
        return;
      }
      metrics.proposals += 1;
      if (queuedCommands.length === 0) defer(flushProposals);
      queuedCommands.push(command);
      queuedProposals.push(withDeadline({ resolve, reject, deadline: null }, 'write'));
    });

  /**
   * A linearizable read barrier (ReadIndex): resolves once this server, as leader, has confirmed
   * its leadership with a heartbeat quorum and applied everything committed before the call.
   */
  const readBarrier = (): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (stopped || !actor) {
        reject(diskeyvalError('STOPPED', `${options.id} is not running`));
        return;
      }
      metrics.reads += 1;
      if (queuedReads.length === 0) defer(flushReads);
      queuedReads.push(withDeadline({ resolve, reject, deadline: null }, 'read'));
    });

  /** Stops the machine and the transport; every waiting call rejects with STOPPED. */
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    actor?.stop();
    const error = diskeyvalError('STOPPED', `${options.id} stopped`);
    for (const waiter of [
      ...queuedProposals,
      ...queuedReads,
      ...proposalWaiters,
      ...readWaiters,
      ...reads.values(),
    ])
      settle(waiter, error);
    for (const waiters of batches.values()) for (const waiter of waiters) settle(waiter, error);
    queuedProposals = [];
    queuedReads = [];
    proposalWaiters.length = 0;
    readWaiters.length = 0;
    reads.clear();
    batches.clear();
    deadlines.clear();
    await endpoint?.close();
  };

  const send = (message: TransportMessage): void => {
    if (!stopped) endpoint?.send(message);
  };

  return {
    id: options.id,
    start,
    stop,
    propose,
    readBarrier,
    status,
    get: store.get,
    has: store.has,
    log,
    /** The machine's snapshot, for tests and tools (read-only). */
    snapshot: () => {
      assert(actor !== null, 'snapshot before start');
      return actor.getSnapshot();
    },
    /** Sends a machine event by hand (tests and tools: `electionTimeout`, `checkQuorum`, ...). */
    fire: (event: { type: 'electionTimeout' | 'heartbeatTimeout' | 'checkQuorum' }) => actor?.send(event),
    sendOther: send,
    isStopped: () => stopped,
    metrics: () => ({
      ...metrics,
      pendingProposals: proposalWaiters.length + queuedProposals.length,
      pendingReads: readWaiters.length + reads.size + queuedReads.length,
      storeSize: store.size(),
      peers: [...peers.values()].map((peer) => peer.metrics()),
    }),
  };
};

export type RaftNode = ReturnType<typeof createRaftNode>;
