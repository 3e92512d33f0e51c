/**
 * The client side of every node: it takes set/delete/read calls and gets them served by whoever
 * leads, so any node serves every call.
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
 */
import { diskeyvalError } from '../errors.js';
import type { NodeId } from '../machines/messages.js';
import type { ClientProposeResult, ClientReadResult } from './client-messages.js';
import type { Deadlines } from './deadlines.js';

export type CallOptions = { forward?: boolean; timeoutMs?: number; signal?: AbortSignal };

type Phase = 'waiting' | 'sent' | 'accepted' | 'confirmed';

type Call = {
  kind: 'write' | 'read';
  /** In the waiting queue that the next flush routes. */
  queued: boolean;
  phase: Phase;
  sentAtMs: number;
  /** accepted writes: the log index; confirmed reads: the read index. */
  index: number;
  forward: boolean;
  /** Proposed at least once: from then on its outcome is unknown until it applies or times out. */
  proposed: boolean;
  finish: (error?: Error) => void;
};

type Write = Call & { seq: number; command: Uint8Array };
type Read = Call & { id: number };

export type RequestsDeps = {
  id: NodeId;
  session: number;
  deadlines: Deadlines;
  nowMs: () => number;
  defer: (fn: () => void) => void;
  proposalTimeoutMs: number;
  rpcTimeoutMs: number;
  /** Who leads now, as this node knows it. */
  leader: () => { self: boolean; leaderId: NodeId | null };
  appliedIndex: () => number;
  proposeLocally: (seqs: number[], commands: Uint8Array[]) => void;
  readLocally: (ids: number[]) => void;
  send: (message: { type: string; from: NodeId; to: NodeId } & Record<string, unknown>) => void;
  /** The peers this node cannot connect to now, and why (a hint for QUORUM_UNAVAILABLE). */
  unreachable?: () => Array<{ nodeId: NodeId; reason: string }>;
};

export const createRequests = (deps: RequestsDeps) => {
  const writes = new Map<number, Write>();
  const reads = new Map<number, Read>();
  /** Accepted writes and confirmed reads in index order, for the apply-side checks. */
  let acceptedWrites: Write[] = [];
  let confirmedReads: Read[] = [];
  /** Calls to route at the next flush (some may have moved on meanwhile: flush checks). */
  let waitingWriteQueue: Write[] = [];
  let waitingReadQueue: Read[] = [];
  let nextSeq = 1;
  let nextReadId = 1;
  let flushScheduled = false;
  let resendArmed = false;
  let stopped = false;
  const counters = { forwardedWrites: 0, forwardedReads: 0, retries: 0 };

  const start = <C extends Call>(
    map: Map<number, C>,
    key: number,
    call: C,
    options: CallOptions,
    what: string,
  ) =>
    new Promise<void>((resolve, reject) => {
      const signal = options.signal;
      const onAbort =
        signal === undefined
          ? null
          : (): void => finish(diskeyvalError('ABORTED', `${what} aborted by its signal`));
      const callTimeoutMs = options.timeoutMs;
      const timeoutMs = Math.min(callTimeoutMs ?? Number.POSITIVE_INFINITY, deps.proposalTimeoutMs);
      const deadline = deps.deadlines.add(timeoutMs, () =>
        finish(
          callTimeoutMs !== undefined && callTimeoutMs < deps.proposalTimeoutMs
            ? diskeyvalError('TIMEOUT', `${what} did not complete within ${callTimeoutMs} ms`)
            : quorumUnavailable(what, timeoutMs),
        ),
      );
      const finish = (error?: Error): void => {
        if (map.get(key) !== call) return; // settled already
        deadline.done = true;
        map.delete(key);
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      call.finish = finish;
      map.set(key, call);
      if (signal?.aborted) {
        finish(diskeyvalError('ABORTED', `${what} aborted by its signal`));
        return;
      }
      if (onAbort) signal?.addEventListener('abort', onAbort, { once: true });
      enqueue(call);
    });

  const noop = (): void => undefined;

  /** QUORUM_UNAVAILABLE, with the peers this node cannot connect to when it knows them. */
  const quorumUnavailable = (what: string, timeoutMs: number): Error => {
    const unreachable = deps.unreachable?.() ?? [];
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

  /** Puts a call (back) in the waiting queue and makes sure a flush will route it. */
  const enqueue = (call: Call): void => {
    call.phase = 'waiting';
    if (!call.queued) {
      call.queued = true;
      if (call.kind === 'write') waitingWriteQueue.push(call as Write);
      else waitingReadQueue.push(call as Read);
    }
    scheduleFlush();
  };

  const refuseIfNotLeader = (options: CallOptions): Error | null => {
    if (options.forward !== false) return null;
    const { self, leaderId } = deps.leader();
    return self ? null : diskeyvalError('NOT_LEADER', `${deps.id} is not the leader`, { leaderId });
  };

  /** The smallest seq still unanswered: the store may forget every seq below it. */
  const lowestPending = (): number => {
    for (const seq of writes.keys()) return seq;
    return nextSeq;
  };

  /** Takes a write; `encode` builds the command bytes from the request tag. */
  const write = (
    encode: (tag: { session: number; seq: number; lowestPending: number }) => Uint8Array,
    options: CallOptions = {},
  ): Promise<void> => {
    if (stopped) return Promise.reject(diskeyvalError('STOPPED', `${deps.id} is not running`));
    const refused = refuseIfNotLeader(options);
    if (refused) return Promise.reject(refused);
    const seq = nextSeq++;
    const command = encode({ session: deps.session, seq, lowestPending: Math.min(seq, lowestPending()) });
    const call: Write = {
      kind: 'write',
      queued: false,
      phase: 'waiting',
      sentAtMs: 0,
      index: 0,
      forward: options.forward !== false,
      proposed: false,
      finish: noop,
      seq,
      command,
    };
    return start(writes, seq, call, options, 'write');
  };

  const read = (options: CallOptions = {}): Promise<void> => {
    if (stopped) return Promise.reject(diskeyvalError('STOPPED', `${deps.id} is not running`));
    const refused = refuseIfNotLeader(options);
    if (refused) return Promise.reject(refused);
    const id = nextReadId++;
    const call: Read = {
      kind: 'read',
      queued: false,
      phase: 'waiting',
      sentAtMs: 0,
      index: 0,
      forward: options.forward !== false,
      proposed: false,
      finish: noop,
      id,
    };
    return start(reads, id, call, options, 'read');
  };

  const scheduleFlush = (): void => {
    if (flushScheduled || stopped) return;
    flushScheduled = true;
    deps.defer(flush);
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
  const flush = (): void => {
    flushScheduled = false;
    if (stopped) return;
    const waitingWrites = takeWaiting(waitingWriteQueue, writes, (call) => call.seq);
    const waitingReads = takeWaiting(waitingReadQueue, reads, (call) => call.id);
    waitingWriteQueue = [];
    waitingReadQueue = [];
    route(waitingWrites, waitingReads);
    for (const call of waitingWrites)
      if (call.phase === 'waiting' && writes.get(call.seq) === call) keep(call);
    for (const call of waitingReads) if (call.phase === 'waiting' && reads.get(call.id) === call) keep(call);
  };

  /** Back in the queue without a flush of its own: the next leader change or call routes it. */
  const keep = (call: Call): void => {
    if (call.queued) return;
    call.queued = true;
    if (call.kind === 'write') waitingWriteQueue.push(call as Write);
    else waitingReadQueue.push(call as Read);
  };

  /** One local batch, or one message to the leader, per kind. */
  const route = (waitingWrites: Write[], waitingReads: Read[]): void => {
    const { self, leaderId } = deps.leader();
    if (!self) {
      // NOT_LEADER promises no effect, so only a call never proposed may get it. A write proposed
      // while this node led is already in some log: it completes like a forwarded call, through
      // whoever leads now (the store applies its tag once).
      // A read has no effect, so NOT_LEADER is always true for it.
      const refused = [...waitingWrites.filter((call) => !call.proposed), ...waitingReads];
      for (const call of refused) {
        if (!call.forward)
          call.finish(diskeyvalError('NOT_LEADER', `${deps.id} is not the leader`, { leaderId }));
      }
    }
    if (self) {
      markSent(waitingWrites);
      markSent(waitingReads);
      if (waitingWrites.length > 0) {
        deps.proposeLocally(
          waitingWrites.map((call) => call.seq),
          waitingWrites.map((call) => call.command),
        );
      }
      if (waitingReads.length > 0) deps.readLocally(waitingReads.map((call) => call.id));
      return;
    }
    if (leaderId === null) return;
    const forwardWrites = waitingWrites.filter((call) => call.forward || call.proposed);
    const forwardReads = waitingReads.filter((call) => call.forward);
    if (forwardWrites.length > 0) {
      markSent(forwardWrites);
      counters.forwardedWrites += forwardWrites.length;
      deps.send({
        type: 'ClientPropose',
        from: deps.id,
        to: leaderId,
        seqs: forwardWrites.map((call) => call.seq),
        commands: forwardWrites.map((call) => call.command),
      });
    }
    if (forwardReads.length > 0) {
      markSent(forwardReads);
      counters.forwardedReads += forwardReads.length;
      deps.send({
        type: 'ClientRead',
        from: deps.id,
        to: leaderId,
        ids: forwardReads.map((call) => call.id),
      });
    }
    if (forwardWrites.length + forwardReads.length > 0) armResend();
  };

  const markSent = (calls: Call[]): void => {
    const now = deps.nowMs();
    for (const call of calls) {
      call.phase = 'sent';
      call.sentAtMs = now;
      call.proposed = true;
    }
  };

  /** Calls sent to a leader that did not answer within rpcTimeoutMs go again. */
  const armResend = (): void => {
    if (resendArmed) return;
    resendArmed = true;
    deps.deadlines.add(deps.rpcTimeoutMs, () => {
      resendArmed = false;
      if (stopped) return;
      const due = deps.nowMs() - deps.rpcTimeoutMs;
      let stillSent = false;
      for (const call of [...writes.values(), ...reads.values()]) {
        if (call.phase !== 'sent') continue;
        if (call.sentAtMs <= due) retry(call);
        else stillSent = true;
      }
      if (stillSent) armResend();
    });
  };

  const retry = (call: Call): void => {
    counters.retries += 1;
    enqueue(call);
  };

  // --- answers from the local machine or the leader -------------------------------------------

  const writesAccepted = (seqs: number[], firstIndex: number): void => {
    seqs.forEach((seq, offset) => {
      const call = writes.get(seq);
      if (!call || call.phase === 'accepted') return;
      call.phase = 'accepted';
      call.index = firstIndex + offset;
      acceptedWrites.push(call);
    });
  };

  /** The local machine refused (it stopped leading): route again with what we know now. */
  const writesRefused = (seqs: number[]): void => {
    for (const seq of seqs) {
      const call = writes.get(seq);
      if (call && call.phase === 'sent') enqueue(call);
    }
  };

  const readsConfirmed = (ids: number[], readIndex: number): void => {
    for (const id of ids) {
      const call = reads.get(id);
      if (!call || call.phase === 'confirmed') continue;
      call.phase = 'confirmed';
      call.index = readIndex;
      confirmedReads.push(call);
    }
    releaseReads();
  };

  const readsRefused = (ids: number[]): void => {
    for (const id of ids) {
      const call = reads.get(id);
      if (call && call.phase === 'sent') enqueue(call);
    }
  };

  /**
   * The leader refused (it no longer leads): the calls wait for the next leader change, or go
   * again at once when the refusal names another leader or this node already knows another one,
   * so a stale view never spins.
   */
  const park = <C extends Call>(
    open: Map<number, C>,
    keys: number[],
    refusal: { from: NodeId; leaderId: NodeId | null },
  ) => {
    for (const key of keys) {
      const call = open.get(key);
      if (call && call.phase === 'sent') {
        call.phase = 'waiting';
        keep(call);
      }
    }
    // A late refusal from an old leader, after this node learned of a new one (the call may already
    // have gone to it, and that copy been lost): go again to the one it knows, not wait for a change.
    const known = deps.leader().leaderId;
    const elsewhere =
      (refusal.leaderId !== null && refusal.leaderId !== refusal.from) ||
      (known !== null && known !== refusal.from);
    if (elsewhere) scheduleFlush();
  };

  const onProposeResult = (message: ClientProposeResult): void => {
    if (message.invalid === true) {
      for (const seq of message.seqs) {
        writes
          .get(seq)
          ?.finish(
            diskeyvalError(
              'INVALID_ARGUMENT',
              `the leader ${message.from} refused the command: it does not decode`,
            ),
          );
      }
    } else if (message.notLeader) park(writes, message.seqs, message);
    else writesAccepted(message.seqs, message.firstIndex);
  };

  const onReadResult = (message: ClientReadResult): void => {
    if (message.notLeader) park(reads, message.ids, message);
    else readsConfirmed(message.ids, message.readIndex);
  };

  // --- the apply side ---------------------------------------------------------------------------

  /** The store applied (session, seq): the call that made it is done. */
  const applied = (session: number, seq: number): void => {
    if (session !== deps.session) return;
    writes.get(seq)?.finish();
  };

  /** After an apply pass: accepted writes passed by the applied index were replaced: retry them. */
  const afterApply = (): void => {
    const appliedIndex = deps.appliedIndex();
    let passed = 0;
    while (passed < acceptedWrites.length && acceptedWrites[passed]!.index <= appliedIndex) passed += 1;
    if (passed > 0) {
      for (const call of acceptedWrites.slice(0, passed)) {
        if (writes.get((call as Write).seq) === call && call.phase === 'accepted') retry(call);
      }
      acceptedWrites = acceptedWrites.slice(passed);
    }
    releaseReads();
  };

  const releaseReads = (): void => {
    if (confirmedReads.length === 0) return;
    const appliedIndex = deps.appliedIndex();
    const pending: Read[] = [];
    for (const call of confirmedReads) {
      if (call.index <= appliedIndex) call.finish();
      else pending.push(call);
    }
    confirmedReads = pending;
  };

  /**
   * The store took a snapshot's state (InstallSnapshot): writes it covers are done (their applies
   * happened elsewhere), and accepted writes it passed without applying go again.
   */
  const afterRestore = (wasApplied: (seq: number) => boolean): void => {
    for (const call of [...writes.values()]) if (wasApplied(call.seq)) call.finish();
    afterApply();
  };

  /** A new leader (or none): everything not yet applied goes again; the store drops duplicates. */
  const leaderChanged = (): void => {
    for (const call of writes.values()) if (call.phase !== 'waiting') retry(call);
    for (const call of reads.values()) if (call.phase === 'sent') retry(call);
    acceptedWrites = [];
    scheduleFlush();
  };

  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    const error = diskeyvalError('STOPPED', `${deps.id} stopped`);
    for (const call of [...writes.values(), ...reads.values()]) call.finish(error);
    acceptedWrites = [];
    confirmedReads = [];
  };

  return {
    write,
    read,
    writesAccepted,
    writesRefused,
    readsConfirmed,
    readsRefused,
    onProposeResult,
    onReadResult,
    applied,
    afterApply,
    afterRestore,
    leaderChanged,
    stop,
    pending: () => ({ writes: writes.size, reads: reads.size }),
    counters: () => ({ ...counters }),
  };
};

export type Requests = ReturnType<typeof createRequests>;
