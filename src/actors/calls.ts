/**
 * The client calls of one node, as plain data the requests actor owns (requests.ts): every set,
 * delete and read made on this node, until it settles. Any node serves every call.
 *
 * Writes: a call is encoded once, tagged (session, seq), and routed each tick in one batch: into
 * the local machine when this node leads, in one ClientPropose to the leader otherwise, or held
 * while no leader is known. A call resolves when the store applies its (session, seq) here, so a
 * caller reads its own writes on the node it called. Retries (leader change, a lost message, an
 * entry a new leader replaced) resend the same tag, and the store applies a tag at most once.
 *
 * Reads: ReadIndex (dissertation §6.4) from any node: the leader confirms its leadership for a
 * batch of reads with one heartbeat round and answers with its commit index; the node that was
 * called waits until it has applied that far, then reads its own map.
 *
 * Functions over one state object (`Calls`), each short; none keeps a closure per call beyond the
 * caller's own promise (a call is its own deadline; a listener only for a call with a signal).
 */
import { diskeyvalError } from '../errors.js';
import type { NodeId } from '../machines/messages.js';
import type { ClientProposeResult, ClientReadResult } from './client-messages.js';
import type { Deadline, Deadlines } from './deadlines.js';
import type { NewCall } from './events.js';

export type CallOptions = { forward?: boolean; timeoutMs?: number; signal?: AbortSignal };

type Phase = 'waiting' | 'sent' | 'accepted' | 'confirmed';

/**
 * A call's bookkeeping. It is its own deadline in the deadline queue (deadlines.ts): `expire` is
 * one shared function, so a call costs no closure of its own (one only with an abort signal).
 */
type Call = Deadline & {
  owner: Calls;
  kind: 'write' | 'read';
  /** The caller's promise and options, as the handle made them. */
  newCall: NewCall;
  /** In the waiting queue that the next flush routes. */
  queued: boolean;
  phase: Phase;
  sentAtMs: number;
  /** accepted writes: the log index; confirmed reads: the read index. */
  index: number;
  forward: boolean;
  /** Proposed at least once: from then on its outcome is unknown until it applies or times out. */
  proposed: boolean;
  /** Removes itself from the signal's listeners (set only when the call has a signal). */
  onAbort: (() => void) | null;
};

type Write = Call & { seq: number; command: Uint8Array };
type Read = Call & { id: number };

export type CallsDeps = {
  id: NodeId;
  session: number;
  deadlines: Deadlines;
  nowMs: () => number;
  defer: (fn: () => void) => void;
  proposalTimeoutMs: number;
  rpcTimeoutMs: number;
  /** This node leads: the writes and reads of a flush go to its own machine, as one batch each. */
  proposeLocally: (seqs: number[], commands: Uint8Array[]) => void;
  readLocally: (ids: number[]) => void;
  send: (message: { type: string; from: NodeId; to: NodeId } & Record<string, unknown>) => void;
  /** The peers this node cannot connect to now, and why (a hint for QUORUM_UNAVAILABLE). */
  unreachable?: () => Array<{ nodeId: NodeId; reason: string }>;
};

export type Calls = {
  deps: CallsDeps;
  writes: Map<number, Write>;
  reads: Map<number, Read>;
  /** Accepted writes and confirmed reads in index order, for the apply-side checks. */
  acceptedWrites: Write[];
  confirmedReads: Read[];
  /** Calls to route at the next flush (some may have moved on meanwhile: flush checks). */
  waitingWriteQueue: Write[];
  waitingReadQueue: Read[];
  nextSeq: number;
  nextReadId: number;
  flushScheduled: boolean;
  resendArmed: boolean;
  stopped: boolean;
  counters: { forwardedWrites: number; forwardedReads: number; retries: number };
  /** Who leads, as the raft actor last said (`leaderChanged`). */
  leader: { self: boolean; leaderId: NodeId | null };
  /** How far the store applied, as it last said (`applied`). */
  appliedIndex: number;
};

export const createCalls = (deps: CallsDeps): Calls => ({
  deps,
  writes: new Map(),
  reads: new Map(),
  acceptedWrites: [],
  confirmedReads: [],
  waitingWriteQueue: [],
  waitingReadQueue: [],
  nextSeq: 1,
  nextReadId: 1,
  flushScheduled: false,
  resendArmed: false,
  stopped: false,
  counters: { forwardedWrites: 0, forwardedReads: 0, retries: 0 },
  leader: { self: false, leaderId: null },
  appliedIndex: 0,
});

/** QUORUM_UNAVAILABLE, with the peers this node cannot connect to when it knows them. */
const quorumUnavailable = (s: Calls, what: string, timeoutMs: number): Error => {
  const unreachable = s.deps.unreachable?.() ?? [];
  const hint =
    unreachable.length === 0
      ? ''
      : `; cannot connect to ${unreachable.map(({ nodeId, reason }) => `${nodeId} (${reason})`).join(', ')}`;
  return diskeyvalError(
    'QUORUM_UNAVAILABLE',
    `${what} not confirmed by a majority within ${timeoutMs} ms${hint}`,
    {
      ...(unreachable.length > 0 ? { unreachable } : {}),
    },
  );
};

/** The open calls of the call's kind, and its key there. */
const slotOf = (call: Call): [Map<number, Call>, number] =>
  call.kind === 'write'
    ? [call.owner.writes as Map<number, Call>, (call as Write).seq]
    : [call.owner.reads as Map<number, Call>, (call as Read).id];

/** Settles a call once: resolves it, or rejects it with `error`; later settles do nothing. */
const settle = (call: Call, error?: Error): void => {
  const [open, key] = slotOf(call);
  if (open.get(key) !== call) return; // settled already
  call.done = true; // its deadline
  open.delete(key);
  const { newCall } = call;
  if (call.onAbort) newCall.signal?.removeEventListener('abort', call.onAbort);
  if (error) newCall.reject(error);
  else newCall.resolve();
};

/** The proposal timeout, or the call's own if shorter. */
const timeoutOf = (s: Calls, newCall: NewCall): number =>
  Math.min(newCall.timeoutMs ?? Number.POSITIVE_INFINITY, s.deps.proposalTimeoutMs);

/** A call's deadline passed: TIMEOUT for its own shorter timeout, else QUORUM_UNAVAILABLE. */
const expireCall = (deadline: Deadline): void => {
  const call = deadline as Call;
  const s = call.owner;
  const { kind, timeoutMs } = call.newCall;
  settle(
    call,
    timeoutMs !== undefined && timeoutMs < s.deps.proposalTimeoutMs
      ? diskeyvalError('TIMEOUT', `${kind} did not complete within ${timeoutMs} ms`)
      : quorumUnavailable(s, kind, timeoutOf(s, call.newCall)),
  );
};

const aborted = (call: Call): Error => diskeyvalError('ABORTED', `${call.kind} aborted by its signal`);

/**
 * Opens a call: it joins the open calls and the deadline queue, and listens to its abort signal.
 * False when it settled at once (aborted already).
 */
const open = (s: Calls, call: Call): boolean => {
  const [calls, key] = slotOf(call);
  calls.set(key, call);
  s.deps.deadlines.insert(call, timeoutOf(s, call.newCall));
  const { signal } = call.newCall;
  if (signal === undefined) return true;
  if (signal.aborted) {
    settle(call, aborted(call));
    return false;
  }
  call.onAbort = () => settle(call, aborted(call));
  signal.addEventListener('abort', call.onAbort, { once: true });
  return true;
};

/** The smallest seq still unanswered: the store may forget every seq below it. */
const lowestPending = (s: Calls): number => {
  for (const seq of s.writes.keys()) return seq;
  return s.nextSeq;
};

/** A call's bookkeeping, with the fields of both kinds (one shape: `seq`/`command` or `id` set after). */
const newState = (s: Calls, newCall: NewCall, kind: 'write' | 'read'): Write & Read => ({
  dueMs: 0,
  expire: expireCall,
  done: false,
  owner: s,
  kind,
  newCall,
  queued: false,
  phase: 'waiting',
  sentAtMs: 0,
  index: 0,
  forward: newCall.forward,
  proposed: false,
  onAbort: null,
  seq: 0,
  command: EMPTY,
  id: 0,
});

const EMPTY = new Uint8Array(0);

/** Takes the calls made on the node in one tick, and routes them at once (one batch per kind). */
export const takeCalls = (s: Calls, calls: NewCall[]): void => {
  for (const newCall of calls) {
    if (s.stopped) {
      newCall.reject(diskeyvalError('STOPPED', `${s.deps.id} is not running`));
      continue;
    }
    if (!newCall.forward && !s.leader.self) {
      newCall.reject(
        diskeyvalError('NOT_LEADER', `${s.deps.id} is not the leader`, { leaderId: s.leader.leaderId }),
      );
      continue;
    }
    if (newCall.kind === 'write') {
      const seq = s.nextSeq++;
      const tag = { session: s.deps.session, seq, lowestPending: Math.min(seq, lowestPending(s)) };
      const write = newState(s, newCall, 'write') as Write;
      write.seq = seq;
      write.command = newCall.encode!(tag);
      if (open(s, write)) keep(s, write);
    } else {
      const read = newState(s, newCall, 'read') as Read;
      read.id = s.nextReadId++;
      if (open(s, read)) keep(s, read);
    }
  }
  flush(s);
};

/** Puts a call (back) in the waiting queue and makes sure a flush will route it. */
const enqueue = (s: Calls, call: Call): void => {
  call.phase = 'waiting';
  keep(s, call);
  scheduleFlush(s);
};

/** Back in the queue without a flush of its own: the next leader change or call routes it. */
const keep = (s: Calls, call: Call): void => {
  if (call.queued) return;
  call.queued = true;
  if (call.kind === 'write') s.waitingWriteQueue.push(call as Write);
  else s.waitingReadQueue.push(call as Read);
};

const scheduleFlush = (s: Calls): void => {
  if (s.flushScheduled || s.stopped) return;
  s.flushScheduled = true;
  s.deps.defer(() => {
    s.flushScheduled = false;
    flush(s);
  });
};

/** The queued calls still waiting and still open, in call order. */
const takeWaiting = <C extends Call>(queue: C[], open: Map<number, C>, keyOf: (call: C) => number): C[] => {
  const taken: C[] = [];
  for (const call of queue) {
    call.queued = false;
    if (call.phase === 'waiting' && open.get(keyOf(call)) === call) taken.push(call);
  }
  return taken;
};

/** Routes every waiting call; the ones no one can take yet stay queued for the next flush. */
const flush = (s: Calls): void => {
  if (s.stopped) return;
  const waitingWrites = takeWaiting(s.waitingWriteQueue, s.writes, (call) => call.seq);
  const waitingReads = takeWaiting(s.waitingReadQueue, s.reads, (call) => call.id);
  s.waitingWriteQueue = [];
  s.waitingReadQueue = [];
  route(s, waitingWrites, waitingReads);
  for (const call of waitingWrites)
    if (call.phase === 'waiting' && s.writes.get(call.seq) === call) keep(s, call);
  for (const call of waitingReads)
    if (call.phase === 'waiting' && s.reads.get(call.id) === call) keep(s, call);
};

/** One local batch, or one message to the leader, per kind. */
const route = (s: Calls, waitingWrites: Write[], waitingReads: Read[]): void => {
  const { self, leaderId } = s.leader;
  if (self) {
    markSent(s, waitingWrites);
    markSent(s, waitingReads);
    if (waitingWrites.length > 0)
      s.deps.proposeLocally(
        waitingWrites.map((call) => call.seq),
        waitingWrites.map((call) => call.command),
      );
    if (waitingReads.length > 0) s.deps.readLocally(waitingReads.map((call) => call.id));
    return;
  }
  // NOT_LEADER promises no effect, so only a call never proposed may get it. A write proposed
  // while this node led is already in some log: it completes like a forwarded call, through
  // whoever leads now (the store applies its tag once). A read has no effect, so NOT_LEADER is
  // always true for it.
  for (const call of [...waitingWrites.filter((write) => !write.proposed), ...waitingReads]) {
    if (!call.forward)
      settle(call, diskeyvalError('NOT_LEADER', `${s.deps.id} is not the leader`, { leaderId }));
  }
  if (leaderId !== null) forward(s, leaderId, waitingWrites, waitingReads);
};

/** Writes and reads for the leader, one message per kind. */
const forward = (s: Calls, leaderId: NodeId, waitingWrites: Write[], waitingReads: Read[]): void => {
  const forwardWrites = waitingWrites.filter((call) => call.forward || call.proposed);
  const forwardReads = waitingReads.filter((call) => call.forward);
  const from = s.deps.id;
  if (forwardWrites.length > 0) {
    markSent(s, forwardWrites);
    s.counters.forwardedWrites += forwardWrites.length;
    const seqs = forwardWrites.map((call) => call.seq);
    s.deps.send({
      type: 'ClientPropose',
      from,
      to: leaderId,
      seqs,
      commands: forwardWrites.map((call) => call.command),
    });
  }
  if (forwardReads.length > 0) {
    markSent(s, forwardReads);
    s.counters.forwardedReads += forwardReads.length;
    s.deps.send({ type: 'ClientRead', from, to: leaderId, ids: forwardReads.map((call) => call.id) });
  }
  if (forwardWrites.length + forwardReads.length > 0) armResend(s);
};

const markSent = (s: Calls, calls: Call[]): void => {
  const now = s.deps.nowMs();
  for (const call of calls) {
    call.phase = 'sent';
    call.sentAtMs = now;
    call.proposed = true;
  }
};

/** Calls sent to a leader that did not answer within rpcTimeoutMs go again. */
const armResend = (s: Calls): void => {
  if (s.resendArmed) return;
  s.resendArmed = true;
  s.deps.deadlines.add(s.deps.rpcTimeoutMs, () => {
    s.resendArmed = false;
    if (s.stopped) return;
    const due = s.deps.nowMs() - s.deps.rpcTimeoutMs;
    let stillSent = false;
    for (const call of [...s.writes.values(), ...s.reads.values()]) {
      if (call.phase !== 'sent') continue;
      if (call.sentAtMs <= due) retry(s, call);
      else stillSent = true;
    }
    if (stillSent) armResend(s);
  });
};

const retry = (s: Calls, call: Call): void => {
  s.counters.retries += 1;
  enqueue(s, call);
};

// --- answers from the local machine or the leader ---------------------------------------------

export const writesAccepted = (s: Calls, seqs: number[], firstIndex: number): void => {
  seqs.forEach((seq, offset) => {
    const call = s.writes.get(seq);
    if (!call || call.phase === 'accepted') return;
    call.phase = 'accepted';
    call.index = firstIndex + offset;
    s.acceptedWrites.push(call);
  });
};

/** The local machine refused (it stopped leading): route again with what we know now. */
export const writesRefused = (s: Calls, seqs: number[]): void => {
  for (const seq of seqs) {
    const call = s.writes.get(seq);
    if (call && call.phase === 'sent') enqueue(s, call);
  }
};

export const readsConfirmed = (s: Calls, ids: number[], readIndex: number): void => {
  for (const id of ids) {
    const call = s.reads.get(id);
    if (!call || call.phase === 'confirmed') continue;
    call.phase = 'confirmed';
    call.index = readIndex;
    s.confirmedReads.push(call);
  }
  releaseReads(s);
};

export const readsRefused = (s: Calls, ids: number[]): void => {
  for (const id of ids) {
    const call = s.reads.get(id);
    if (call && call.phase === 'sent') enqueue(s, call);
  }
};

/**
 * The leader refused (it no longer leads): the calls wait for the next leader change, or go again
 * at once when the refusal names another leader or this node already knows another one, so a
 * stale view never spins.
 */
const park = <C extends Call>(
  s: Calls,
  open: Map<number, C>,
  keys: number[],
  refusal: { from: NodeId; leaderId: NodeId | null },
): void => {
  for (const key of keys) {
    const call = open.get(key);
    if (call && call.phase === 'sent') {
      call.phase = 'waiting';
      keep(s, call);
    }
  }
  // A late refusal from an old leader, after this node learned of a new one (the call may already
  // have gone to it, and that copy been lost): go again to the one it knows, not wait for a change.
  const known = s.leader.leaderId;
  const elsewhere =
    (refusal.leaderId !== null && refusal.leaderId !== refusal.from) ||
    (known !== null && known !== refusal.from);
  if (elsewhere) scheduleFlush(s);
};

export const onProposeResult = (s: Calls, message: ClientProposeResult): void => {
  if (message.invalid === true) {
    const error = diskeyvalError(
      'INVALID_ARGUMENT',
      `the leader ${message.from} refused the command: it does not decode`,
    );
    for (const seq of message.seqs) {
      const call = s.writes.get(seq);
      if (call) settle(call, error);
    }
  } else if (message.notLeader) park(s, s.writes, message.seqs, message);
  else writesAccepted(s, message.seqs, message.firstIndex);
};

export const onReadResult = (s: Calls, message: ClientReadResult): void => {
  if (message.notLeader) park(s, s.reads, message.ids, message);
  else readsConfirmed(s, message.ids, message.readIndex);
};

// --- the apply side -------------------------------------------------------------------------------

/** The store applied up to `appliedIndex`; `seqs` of this session settled: their calls are done. */
export const applied = (s: Calls, appliedIndex: number, seqs: readonly number[]): void => {
  s.appliedIndex = appliedIndex;
  for (const seq of seqs) {
    const call = s.writes.get(seq);
    if (call) settle(call);
  }
  afterApply(s);
};

/** After an apply pass: accepted writes passed by the applied index were replaced: retry them. */
const afterApply = (s: Calls): void => {
  const { appliedIndex, acceptedWrites } = s;
  let passed = 0;
  while (passed < acceptedWrites.length && acceptedWrites[passed]!.index <= appliedIndex) passed += 1;
  if (passed > 0) {
    for (const call of acceptedWrites.slice(0, passed)) {
      if (s.writes.get(call.seq) === call && call.phase === 'accepted') retry(s, call);
    }
    s.acceptedWrites = acceptedWrites.slice(passed);
  }
  releaseReads(s);
};

const releaseReads = (s: Calls): void => {
  if (s.confirmedReads.length === 0) return;
  const pending: Read[] = [];
  for (const call of s.confirmedReads) {
    if (call.index <= s.appliedIndex) settle(call);
    else pending.push(call);
  }
  s.confirmedReads = pending;
};

/**
 * The store took a snapshot's state (InstallSnapshot): writes it covers are done (their applies
 * happened elsewhere), and accepted writes it passed without applying go again.
 */
export const restored = (
  s: Calls,
  appliedIndex: number,
  settledBelow: number,
  appliedSeqs: number[],
): void => {
  const settled = new Set(appliedSeqs);
  for (const call of [...s.writes.values()])
    if (call.seq < settledBelow || settled.has(call.seq)) settle(call);
  s.appliedIndex = appliedIndex;
  afterApply(s);
};

/** A new leader (or none): everything not yet applied goes again; the store drops duplicates. */
export const leaderChanged = (s: Calls, leader: { self: boolean; leaderId: NodeId | null }): void => {
  s.leader = leader;
  for (const call of s.writes.values()) if (call.phase !== 'waiting') retry(s, call);
  for (const call of s.reads.values()) if (call.phase === 'sent') retry(s, call);
  s.acceptedWrites = [];
  scheduleFlush(s);
};

/**
 * Every pending call rejects: STOPPED when the node stops; REMOVED when it learned that the cluster
 * removed it (a write pending then may or may not have taken effect, as with QUORUM_UNAVAILABLE).
 */
export const stopCalls = (s: Calls, code: 'STOPPED' | 'REMOVED' = 'STOPPED'): void => {
  if (s.stopped) return;
  s.stopped = true;
  const error =
    code === 'STOPPED'
      ? diskeyvalError('STOPPED', `${s.deps.id} stopped`)
      : diskeyvalError(
          'REMOVED',
          `${s.deps.id} was removed from the cluster; a pending call may have taken effect`,
        );
  for (const call of [...s.writes.values(), ...s.reads.values()]) settle(call, error);
  s.acceptedWrites = [];
  s.confirmedReads = [];
};
