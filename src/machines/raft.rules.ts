/**
 * The rules of Raft as pure functions of (context, message) → Outcome. Each one is a rule of the
 * paper's Figure 2 (or an extension etcd-io/raft has) and is wired into the statechart as one named
 * action or guard in raft.machine.ts. Log and progress objects are changed in place (they are the
 * machine's own, see log.ts); everything else changes through `patch`.
 */
import { assert } from './assert.js';
import { commitIndexByQuorum } from './commit.js';
import {
  append,
  compactTo,
  conflictHint,
  createLog,
  isUpToDate,
  lastIndex,
  lastIndexOfTerm,
  lastTerm,
  matchesAt,
  mergeEntries,
  restoreTo,
  slice,
  sliceBounded,
  termAt,
} from './log.js';
import type {
  AppendEntries,
  AppendEntriesResponse,
  CrashVector,
  Entry,
  Heartbeat,
  HeartbeatResponse,
  InstallSnapshot,
  InstallSnapshotResponse,
  NodeId,
  RaftMessage,
  RecoveryRequest,
  RecoveryResponse,
  RequestVote,
  RequestVoteResponse,
} from './messages.js';
import { RECOVERING_VOTE } from './messages.js';
import {
  admitIncarnation,
  createProgress,
  isPaused,
  onAppendAccepted,
  onAppendRejected,
  onAppendSent,
  onHeartbeatAnswered,
  onHeartbeatSent,
  onSnapshotAnswered,
  onSnapshotSent,
} from './progress.js';
import { isMajority, majorityOf } from './quorum.js';
import type {
  HardState,
  Outcome,
  RaftContext,
  RaftEmitted,
  RaftInput,
  ReadRound,
  RecoveryCounters,
  RecoveryTarget,
} from './raft.types.js';
import { nextInt } from './rng.js';
import { electionTicksOf, tickMsOf } from './ticks.js';

export const DEFAULT_MAX_INFLIGHT = 8;
export const DEFAULT_MAX_ENTRIES_PER_APPEND = 512;
/** Entry data bytes in one AppendEntries: with the default window of 8, 8 MiB in flight per follower. */
export const DEFAULT_MAX_APPEND_BYTES = 1024 * 1024;

export const peersOf = (context: RaftContext): NodeId[] =>
  context.voters.filter((voter) => voter !== context.id);

const hardStateOf = (term: number, votedFor: NodeId | null): HardState => ({ term, votedFor });

const persistHardState = (term: number, votedFor: NodeId | null): RaftEmitted => ({
  type: 'persist',
  hardState: hardStateOf(term, votedFor),
  fromIndex: -1,
  entries: [],
});

/**
 * Draws the next election timeout from [T, 2T) with the machine's seeded generator (§5.2), in ms
 * for the candidates' delays and in whole ticks (rounded down) for the follower's count, which
 * starts over.
 */
export const drawElectionTimeout = (context: Pick<RaftContext, 'rng' | 'electionTimeoutMs' | 'tickMs'>) => {
  const [timeoutMs, rng] = nextInt(context.rng, context.electionTimeoutMs, 2 * context.electionTimeoutMs);
  return {
    randomizedElectionTimeoutMs: timeoutMs,
    randomizedElectionTimeoutTicks: Math.max(1, Math.floor(timeoutMs / context.tickMs)),
    electionElapsedTicks: 0,
    rng,
  };
};

/** The recovery counters of a machine that has done nothing yet (tests and metrics). */
export const emptyRecoveryCounters = (): RecoveryCounters => ({
  rounds: 0,
  recovered: 0,
  bootstrapped: 0,
  forced: 0,
  staleVotesDropped: 0,
  recoveringAnswers: 0,
  restartedByTerm: 0,
  termChanges: 0,
});

export const initialContext = (input: RaftInput): RaftContext => {
  assert(input.voters.includes(input.id), `voters must include the local server ${input.id}`);
  assert(input.electionTimeoutMs > input.heartbeatMs, 'election timeout must exceed the heartbeat interval');
  assert(input.maxAppendBytes === undefined || input.maxAppendBytes >= 1, 'maxAppendBytes must be >= 1');
  const base = {
    id: input.id,
    voters: [...input.voters].sort(),
    electionTimeoutMs: input.electionTimeoutMs,
    heartbeatMs: input.heartbeatMs,
    maxInflight: input.maxInflight ?? DEFAULT_MAX_INFLIGHT,
    maxEntriesPerAppend: input.maxEntriesPerAppend ?? DEFAULT_MAX_ENTRIES_PER_APPEND,
    maxAppendBytes: input.maxAppendBytes ?? DEFAULT_MAX_APPEND_BYTES,
    durable: input.durable === true,
    incarnation: input.incarnation ?? 0,
    incarnationCounters: { resets: 0, staleIgnored: 0 },
    join: input.join === true,
    forceRecovery: input.forceRecovery === true,
    recovering: input.recovering === true || input.hardState?.votedFor === RECOVERING_VOTE,
    recovery: { round: 0, answers: {}, target: null, heardTarget: false },
    recoveryCounters: emptyRecoveryCounters(),
    crashVector: { [input.id]: input.incarnation ?? 0 },
    voteIncarnations: {},
    currentTerm: input.hardState?.term ?? 0,
    votedFor: input.hardState?.votedFor ?? null,
    log: createLog(input.entries, input.snapshot?.index ?? 0, input.snapshot?.term ?? 0),
    // What a snapshot holds was committed (§7); the rest of the commit index is learned again.
    commitIndex: input.snapshot?.index ?? 0,
    persistedIndex: (input.snapshot?.index ?? 0) + (input.entries?.length ?? 0),
    leaderId: null,
    rng: input.seed | 0,
    tickMs: tickMsOf(input.electionTimeoutMs),
    randomizedElectionTimeoutMs: input.electionTimeoutMs,
    randomizedElectionTimeoutTicks: electionTicksOf(input.electionTimeoutMs),
    electionElapsedTicks: 0,
    votes: {},
    progress: {},
    readSeq: 0,
    readRounds: [],
    pendingReadIds: [],
  } satisfies RaftContext;
  return { ...base, ...drawElectionTimeout(base) };
};

// ---------------------------------------------------------------------------------------------
// Rules for all servers

/** "If RPC request or response contains term T > currentTerm: set currentTerm = T, convert to follower" (§5.1). */
export const adoptHigherTerm = (context: RaftContext, message: RaftMessage): Outcome => {
  assert(message.term > context.currentTerm, 'adoptHigherTerm needs a higher term');
  const fromLeader =
    message.type === 'AppendEntries' || message.type === 'Heartbeat' || message.type === 'InstallSnapshot';
  // A recovering server keeps its mark: a crash now must not let it vote in this term after a restart.
  const votedFor = context.recovering ? RECOVERING_VOTE : null;
  return {
    patch: {
      currentTerm: message.term,
      votedFor,
      leaderId: fromLeader ? message.from : null,
      votes: {},
      ...drawElectionTimeout(context),
    },
    emitted: [persistHardState(message.term, votedFor)],
  };
};

/** A request from an older term is refused with our term, so its sender learns it is stale. */
export const answerStaleMessage = (context: RaftContext, message: RaftMessage): Outcome => {
  const base = { from: context.id, to: message.from, term: context.currentTerm };
  const incarnation = context.incarnation;
  switch (message.type) {
    case 'RequestVote':
      return { send: [voteAnswer(context, message, base.term, false)] };
    case 'AppendEntries':
      return { send: [rejectAppend(context, message, base.term)] };
    case 'Heartbeat':
      return {
        send: [
          markRecovering(context, { ...base, type: 'HeartbeatResponse', seq: message.seq, incarnation }),
        ],
      };
    case 'InstallSnapshot':
      return {
        send: [
          markRecovering(context, { ...base, type: 'InstallSnapshotResponse', matchIndex: 0, incarnation }),
        ],
      };
    default:
      return {};
  }
};

/**
 * PreVote (dissertation §9.6): grant when the candidate could win a real election: its proposed
 * term is above ours and its log is up to date, and we do not currently follow a live leader
 * (the leader lease that CheckQuorum makes safe). Granting changes nothing on this server.
 */
export const canGrantPreVote = (context: RaftContext, request: RequestVote): boolean =>
  !context.recovering &&
  request.term > context.currentTerm &&
  context.leaderId === null &&
  isUpToDate(context.log, request.lastLogIndex, request.lastLogTerm);

export const answerPreVote = (context: RaftContext, request: RequestVote): Outcome => {
  const granted = canGrantPreVote(context, request);
  return { send: [voteAnswer(context, request, granted ? request.term : context.currentTerm, granted)] };
};

/**
 * RequestVote receiver rule 2: "If votedFor is null or candidateId, and candidate's log is at least
 * as up-to-date as receiver's log, grant vote" (§5.2, §5.4).
 */
export const canGrantVote = (context: RaftContext, request: RequestVote): boolean =>
  !context.recovering &&
  (context.votedFor === null || context.votedFor === request.from) &&
  isUpToDate(context.log, request.lastLogIndex, request.lastLogTerm);

/**
 * A vote answer carries the voter's incarnation and crash vector (docs/design/recovery.md rule 1),
 * so a candidate drops a vote from a voter that restarted since.
 */
const voteAnswer = (
  context: RaftContext,
  request: RequestVote,
  term: number,
  voteGranted: boolean,
): RequestVoteResponse => ({
  type: 'RequestVoteResponse',
  from: context.id,
  to: request.from,
  term,
  voteGranted,
  preVote: request.preVote,
  incarnation: context.incarnation,
  crashVector: context.crashVector,
});

export const grantVote = (context: RaftContext, request: RequestVote): Outcome => {
  const response = voteAnswer(context, request, context.currentTerm, true);
  const changed = context.votedFor !== request.from;
  return {
    patch: { votedFor: request.from, ...drawElectionTimeout(context) },
    send: [response],
    emitted: changed ? [persistHardState(context.currentTerm, request.from)] : [],
  };
};

export const rejectVote = (context: RaftContext, request: RequestVote): Outcome => ({
  send: [voteAnswer(context, request, context.currentTerm, false)],
});

// ---------------------------------------------------------------------------------------------
// Followers

/**
 * The follower's election timer (§5.2) counts the node's ticks (ticks.ts): an election, or a
 * recovering server's retry, is due on the tick that reaches the timeout drawn at the last reset.
 */
export const isElectionDue = (context: RaftContext): boolean =>
  context.electionElapsedTicks + 1 >= context.randomizedElectionTimeoutTicks;

export const countTick = (context: RaftContext): Outcome => ({
  patch: { electionElapsedTicks: context.electionElapsedTicks + 1 },
});

/** Hearing from the leader, granting a vote or becoming follower starts the count over. */
export const resetElectionTimer = (context: RaftContext): Outcome =>
  context.electionElapsedTicks === 0 ? {} : { patch: { electionElapsedTicks: 0 } };

/**
 * Persist order (dissertation §10.2.1, raft.types.ts): a leader's AppendEntries and heartbeats
 * promise nothing about its own disk, so they may leave before its log write is durable (it counts
 * itself toward a commit only up to `persisted`). Every other message waits: an answer or a vote
 * request states what this server holds or has promised, which a crash must not take back.
 */
export const mayLeaveBeforePersist = (message: RaftMessage): boolean =>
  message.type === 'AppendEntries' || message.type === 'Heartbeat';

/** A recovering server's answers say so: its leader replicates to it but does not count it (rule 3). */
const markRecovering = <M extends AppendEntriesResponse | HeartbeatResponse | InstallSnapshotResponse>(
  context: RaftContext,
  message: M,
): M => {
  if (context.recovering) message.recovering = true;
  return message;
};

const rejectAppend = (context: RaftContext, request: AppendEntries, term: number): AppendEntriesResponse => {
  const hint = conflictHint(context.log, request.prevLogIndex);
  return markRecovering(context, {
    type: 'AppendEntriesResponse',
    from: context.id,
    to: request.from,
    term,
    success: false,
    matchIndex: 0,
    rejectedIndex: request.prevLogIndex,
    conflictIndex: hint.conflictIndex,
    conflictTerm: hint.conflictTerm,
    incarnation: context.incarnation,
  });
};

const acceptAppend = (
  context: RaftContext,
  request: AppendEntries,
  matchIndex: number,
): AppendEntriesResponse =>
  markRecovering(context, {
    type: 'AppendEntriesResponse',
    from: context.id,
    to: request.from,
    term: context.currentTerm,
    success: true,
    matchIndex,
    rejectedIndex: 0,
    conflictIndex: 0,
    conflictTerm: 0,
    incarnation: context.incarnation,
  });

const commitOutcome = (context: RaftContext, newCommitIndex: number): Outcome => {
  if (newCommitIndex <= context.commitIndex) return {};
  assert(newCommitIndex <= lastIndex(context.log), 'commitIndex beyond the log');
  return {
    patch: { commitIndex: newCommitIndex },
    emitted: [
      {
        type: 'committed',
        firstIndex: context.commitIndex + 1,
        entries: slice(context.log, context.commitIndex + 1, newCommitIndex),
      },
    ],
  };
};

/**
 * AppendEntries receiver implementation (Figure 2): reply false if the log has no entry at
 * prevLogIndex with prevLogTerm (2); delete a conflicting entry and all that follow (3); append
 * new entries (4); if leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of
 * last new entry) (5). The term check (1) happened when the message was routed.
 */
export const appendFromLeader = (context: RaftContext, original: AppendEntries): Outcome => {
  assert(original.term === context.currentTerm, 'appendFromLeader at another term');
  const leaderPatch = { leaderId: original.from };
  const request = trimToSnapshotPoint(context, original);
  if (request === null) {
    const lastCovered = original.prevLogIndex + original.entries.length;
    return { patch: leaderPatch, send: [acceptAppend(context, original, lastCovered)] };
  }
  if (!matchesAt(context.log, request.prevLogIndex, request.prevLogTerm)) {
    assert(request.prevLogIndex > context.commitIndex, 'a leader disagrees with a committed entry');
    return { patch: leaderPatch, send: [rejectAppend(context, request, context.currentTerm)] };
  }
  const { firstWrittenIndex, lastNewIndex } = mergeEntries(
    context.log,
    request.prevLogIndex,
    request.entries,
  );
  assert(lastNewIndex >= context.commitIndex || firstWrittenIndex === -1, 'truncated a committed entry');
  const emitted: RaftEmitted[] = [];
  if (firstWrittenIndex !== -1) {
    assert(firstWrittenIndex > context.commitIndex, 'overwrote a committed entry');
    emitted.push({
      type: 'persist',
      hardState: null,
      fromIndex: firstWrittenIndex,
      entries: slice(context.log, firstWrittenIndex, lastIndex(context.log)),
    });
  }
  const commit = commitOutcome(context, Math.min(request.leaderCommit, lastNewIndex));
  // What was just written here is not durable yet, whatever was before at those indexes.
  const persistedIndex =
    firstWrittenIndex === -1
      ? context.persistedIndex
      : Math.min(context.persistedIndex, firstWrittenIndex - 1);
  return {
    patch: { ...leaderPatch, persistedIndex, ...commit.patch },
    send: [acceptAppend(context, request, lastNewIndex)],
    emitted: [...emitted, ...(commit.emitted ?? [])],
  };
};

/**
 * An AppendEntries that starts below our snapshot point: the entries up to that point are
 * committed (a snapshot holds only committed entries), so the leader's copies of them are ours
 * (Log Matching, Leader Completeness). Drop them and check consistency at the snapshot point.
 */
const trimToSnapshotPoint = (context: RaftContext, request: AppendEntries): AppendEntries | null => {
  const { offset, offsetTerm } = context.log;
  if (request.prevLogIndex >= offset) return request;
  const skipped = offset - request.prevLogIndex;
  // Everything it carries is already in our snapshot.
  if (skipped > request.entries.length) return null;
  assert(
    skipped === 0 || request.entries[skipped - 1]!.term === offsetTerm,
    `the leader's entry at the snapshot point ${offset} has another term`,
  );
  return {
    ...request,
    prevLogIndex: offset,
    prevLogTerm: offsetTerm,
    entries: request.entries.slice(skipped),
  };
};

/** A heartbeat: the leader is alive; commit what the leader says we match (etcd's MsgHeartbeat). */
export const heartbeatFromLeader = (context: RaftContext, heartbeat: Heartbeat): Outcome => {
  const commit = commitOutcome(context, Math.min(heartbeat.commit, lastIndex(context.log)));
  const response: HeartbeatResponse = markRecovering(context, {
    type: 'HeartbeatResponse',
    from: context.id,
    to: heartbeat.from,
    term: context.currentTerm,
    seq: heartbeat.seq,
    incarnation: context.incarnation,
  });
  return {
    patch: { leaderId: heartbeat.from, ...commit.patch },
    send: [response],
    emitted: commit.emitted ?? [],
  };
};

/**
 * InstallSnapshot receiver (Figure 13; the term check, rule 1, happened when it was routed). A
 * snapshot at or below our commit index tells nothing new: we already match the leader up to our
 * commit index. Otherwise the log is restored to the snapshot point (rules 6 and 7: the entries
 * after it are kept when the log holds the snapshot's last entry), everything up to it counts as
 * committed, and the store is reset from the snapshot (rule 8). The answer goes after the snapshot
 * is durable, like any answer (ARCHITECTURE.md rule 4).
 */
export const installSnapshot = (context: RaftContext, request: InstallSnapshot): Outcome => {
  assert(request.term === context.currentTerm, 'installSnapshot at another term');
  const answer = (matchIndex: number): InstallSnapshotResponse =>
    markRecovering(context, {
      type: 'InstallSnapshotResponse',
      from: context.id,
      to: request.from,
      term: context.currentTerm,
      matchIndex,
      incarnation: context.incarnation,
    });
  const leaderPatch = { leaderId: request.from };
  const { lastIncludedIndex: index, lastIncludedTerm: term, data } = request;
  if (index <= context.commitIndex) return { patch: leaderPatch, send: [answer(context.commitIndex)] };
  assert(data !== null && term > 0, `an InstallSnapshot at ${index} without data or term`);
  const keptSuffix = restoreTo(context.log, index, term);
  return {
    patch: {
      ...leaderPatch,
      commitIndex: index,
      persistedIndex: keptSuffix ? context.persistedIndex : Math.min(context.persistedIndex, index),
    },
    send: [answer(index)],
    emitted: [{ type: 'installSnapshot', index, term, data, keptSuffix }],
  };
};

/**
 * The node took a snapshot of the state machine covering at least `index`, so the log may forget
 * the entries up to there (§7). Only applied (hence committed) entries are ever compacted.
 */
export const compactLog = (context: RaftContext, index: number): Outcome => {
  assert(index <= context.commitIndex, `compact ${index} beyond the commit index ${context.commitIndex}`);
  compactTo(context.log, index);
  return {};
};

// ---------------------------------------------------------------------------------------------
// Candidates (§5.2)

const requestVotes = (context: RaftContext, term: number, preVote: boolean): RequestVote[] =>
  peersOf(context).map((peer) => ({
    type: 'RequestVote',
    from: context.id,
    to: peer,
    term,
    lastLogIndex: lastIndex(context.log),
    lastLogTerm: lastTerm(context.log),
    preVote,
  }));

/** PreVote: ask whether we could win at currentTerm + 1 without changing any state (§9.6). */
export const startPreVote = (context: RaftContext): Outcome => ({
  patch: {
    leaderId: null,
    votes: { [context.id]: true },
    voteIncarnations: { [context.id]: context.incarnation },
    ...drawElectionTimeout(context),
  },
  send: requestVotes(context, context.currentTerm + 1, true),
});

/** "On conversion to candidate: increment currentTerm, vote for self, reset election timer, send RequestVote RPCs." */
export const startElection = (context: RaftContext): Outcome => {
  const term = context.currentTerm + 1;
  return {
    patch: {
      currentTerm: term,
      votedFor: context.id,
      leaderId: null,
      votes: { [context.id]: true },
      voteIncarnations: { [context.id]: context.incarnation },
      ...drawElectionTimeout(context),
    },
    send: requestVotes(context, term, false),
    emitted: [persistHardState(term, context.id)],
  };
};

export const isAnswerToOurPreVote = (context: RaftContext, response: RequestVoteResponse): boolean =>
  response.preVote && (!response.voteGranted || response.term === context.currentTerm + 1);

export const isAnswerToOurElection = (context: RaftContext, response: RequestVoteResponse): boolean =>
  !response.preVote && response.term === context.currentTerm;

/**
 * Records a vote answer, after its crash vector (rule 1 of docs/design/recovery.md): votes from
 * voters known to have restarted since they voted are dropped, and so is this answer when its
 * voter has restarted since it was sent (a delayed or duplicated pre-crash vote).
 */
export const recordVote = (context: RaftContext, response: RequestVoteResponse): Outcome => {
  const raised = raiseCrashVector(context, response.crashVector);
  const seen = after(context, raised);
  const incarnation = response.incarnation ?? 0;
  if (incarnation < (seen.crashVector[response.from] ?? 0)) {
    context.recoveryCounters.staleVotesDropped += 1;
    return raised;
  }
  return merge(raised, {
    patch: {
      votes: { ...seen.votes, [response.from]: response.voteGranted },
      voteIncarnations: { ...seen.voteIncarnations, [response.from]: incarnation },
    },
  });
};

const countVotes = (context: RaftContext, granted: boolean): number =>
  context.voters.filter((voter) => context.votes[voter] === granted).length;

/** "If votes received from majority of servers: become leader." */
export const hasVoteQuorum = (context: RaftContext): boolean =>
  isMajority(countVotes(context, true), context.voters.length);

/** A majority refused: this election cannot be won. */
export const hasRejectionQuorum = (context: RaftContext): boolean =>
  isMajority(countVotes(context, false), context.voters.length);

// ---------------------------------------------------------------------------------------------
// Leaders

const progressOf = (context: RaftContext, peer: NodeId) => {
  const progress = context.progress[peer];
  assert(progress !== undefined, `no progress for ${peer}`);
  return progress;
};

/**
 * Sends AppendEntries to `peer` from its nextIndex while the pipeline has room (§5.3 with
 * etcd's flow control). With `evenIfEmpty`, one empty AppendEntries goes out when there is nothing
 * new, to carry the commit index or to find where a follower's log ends.
 */
const appendsFor = (context: RaftContext, peer: NodeId, evenIfEmpty: boolean): RaftMessage[] => {
  const progress = progressOf(context, peer);
  const messages: RaftMessage[] = [];
  const last = lastIndex(context.log);
  // Bounded: each pass sends at least one entry or stops, and the window caps the passes.
  for (let pass = 0; pass <= context.maxInflight; pass += 1) {
    if (isPaused(progress, context.maxInflight)) break;
    const next = progress.nextIndex;
    if (next <= context.log.offset) {
      // The entries it needs are compacted: only a snapshot can bring it up to date (§7).
      messages.push(snapshotFor(context, peer));
      onSnapshotSent(progress);
      break;
    }
    if (next > last && !(evenIfEmpty && messages.length === 0)) break;
    const prevLogIndex = Math.min(next - 1, last);
    const prevLogTerm = termAt(context.log, prevLogIndex);
    assert(prevLogTerm !== undefined, `no term at ${prevLogIndex}`);
    const entries =
      next <= last
        ? sliceBounded(context.log, next, next + context.maxEntriesPerAppend - 1, context.maxAppendBytes)
        : [];
    messages.push({
      type: 'AppendEntries',
      from: context.id,
      to: peer,
      term: context.currentTerm,
      prevLogIndex,
      prevLogTerm,
      entries,
      leaderCommit: context.commitIndex,
    });
    onAppendSent(progress, prevLogIndex + entries.length);
    if (entries.length === 0 || progress.state === 'probe') break;
  }
  return messages;
};

/** An InstallSnapshot of the log's snapshot point; the node attaches the store's snapshot. */
const snapshotFor = (context: RaftContext, peer: NodeId): InstallSnapshot => ({
  type: 'InstallSnapshot',
  from: context.id,
  to: peer,
  term: context.currentTerm,
  lastIncludedIndex: context.log.offset,
  lastIncludedTerm: context.log.offsetTerm,
  data: null,
  chunkOffset: 0,
  totalBytes: 0,
});

const merge = (...outcomes: Outcome[]): Outcome => {
  const merged: Required<Outcome> = { patch: {}, send: [], emitted: [] };
  for (const outcome of outcomes) {
    Object.assign(merged.patch, outcome.patch);
    if (outcome.send) merged.send.push(...outcome.send);
    if (outcome.emitted) merged.emitted.push(...outcome.emitted);
  }
  return merged;
};

/** With the patch of `outcome` applied: the view later steps of the same rule must see. */
const after = (context: RaftContext, outcome: Outcome): RaftContext => ({ ...context, ...outcome.patch });

/**
 * Advances commitIndex by the quorum rule, tells every follower (etcd broadcasts the new commit so
 * followers apply promptly), and starts the reads that waited for this leader's first commit.
 */
const advanceCommit = (context: RaftContext): Outcome => {
  const newCommitIndex = commitIndexByQuorum(context);
  if (newCommitIndex === context.commitIndex) return {};
  const commit = commitOutcome(context, newCommitIndex);
  const committed = after(context, commit);
  const broadcast = peersOf(committed).flatMap((peer) => appendsFor(committed, peer, true));
  const reads =
    committed.pendingReadIds.length > 0 ? startReadRound(committed, committed.pendingReadIds) : {};
  return merge(commit, { send: broadcast }, reads);
};

/** "Upon election: send initial empty AppendEntries RPCs"; the new term starts with a no-op entry (§8). */
export const becomeLeader = (context: RaftContext): Outcome => {
  const last = lastIndex(context.log);
  const progress: Record<NodeId, ReturnType<typeof createProgress>> = {};
  // Answers from incarnations older than the crash vector knows were sent before a restart (rule 1).
  for (const peer of peersOf(context)) progress[peer] = createProgress(last, context.crashVector[peer] ?? 0);
  const noop: Entry = { term: context.currentTerm, kind: 'noop', data: null };
  append(context.log, [noop]);
  const leading = after(context, {
    patch: { progress, leaderId: context.id, readRounds: [], pendingReadIds: [] },
  });
  const persist: RaftEmitted = { type: 'persist', hardState: null, fromIndex: last + 1, entries: [noop] };
  const appends = peersOf(leading).flatMap((peer) => appendsFor(leading, peer, true));
  return merge(
    { patch: { progress, leaderId: context.id, readRounds: [], pendingReadIds: [] } },
    { send: appends, emitted: [persist] },
    advanceCommit(leading),
  );
};

/** "If command received from client: append entry to local log" and replicate it. One batch, one append. */
export const appendProposals = (context: RaftContext, batchId: number, commands: Uint8Array[]): Outcome => {
  const firstIndex = lastIndex(context.log) + 1;
  const entries: Entry[] = commands.map((data) => ({ term: context.currentTerm, kind: 'command', data }));
  append(context.log, entries);
  const appends = peersOf(context).flatMap((peer) => appendsFor(context, peer, false));
  return merge(
    {
      send: appends,
      emitted: [
        { type: 'persist', hardState: null, fromIndex: firstIndex, entries },
        { type: 'proposalsAccepted', batchId, firstIndex, term: context.currentTerm },
      ],
    },
    advanceCommit(context),
  );
};

export const rejectProposals = (context: RaftContext, batchId: number): Outcome => ({
  emitted: [{ type: 'proposalsRejected', batchId, leaderId: context.leaderId }],
});

/**
 * The incarnation rule (progress.ts): an answer from an earlier start of the follower is ignored;
 * one from a later start resets the follower's progress before it is handled. Counted either way.
 */
const checkIncarnation = (
  context: RaftContext,
  response: AppendEntriesResponse | HeartbeatResponse | InstallSnapshotResponse,
) => {
  const progress = progressOf(context, response.from);
  const verdict = admitIncarnation(
    progress,
    response.incarnation,
    lastIndex(context.log),
    response.recovering,
  );
  if (verdict === 'stale') context.incarnationCounters.staleIgnored += 1;
  else if (progress.recovering) context.recoveryCounters.recoveringAnswers += 1;
  if (verdict === 'restarted') context.incarnationCounters.resets += 1;
  return verdict;
};

/**
 * After a reset by a new incarnation the answer itself may not call for a send (a rejection of a
 * request from before the reset is not the probe's answer): probe now, so the follower's conflict
 * hint arrives without waiting for the next heartbeat.
 */
const probeAfterRestart = (context: RaftContext, peer: NodeId, outcome: Outcome): Outcome =>
  (outcome.send?.length ?? 0) > 0 ? outcome : merge(outcome, { send: appendsFor(context, peer, true) });

/** Where the leader resumes after a rejection, from the follower's conflict hint (§5.3). */
const nextIndexFromHint = (context: RaftContext, response: AppendEntriesResponse): number => {
  if (response.conflictTerm > 0) {
    const leaderLast = lastIndexOfTerm(context.log, response.conflictTerm);
    if (leaderLast > 0) return leaderLast + 1;
  }
  return response.conflictIndex;
};

/**
 * "If successful: update nextIndex and matchIndex for follower. If AppendEntries fails because of
 * log inconsistency: decrement nextIndex and retry" — by a whole term at a time, with the hint.
 */
export const handleAppendResponse = (context: RaftContext, response: AppendEntriesResponse): Outcome => {
  const wasRecovering = progressOf(context, response.from).recovering;
  const verdict = checkIncarnation(context, response);
  if (verdict === 'stale') return {};
  const outcome = appendResponse(context, response, wasRecovering);
  return verdict === 'restarted' ? probeAfterRestart(context, response.from, outcome) : outcome;
};

const appendResponse = (
  context: RaftContext,
  response: AppendEntriesResponse,
  wasRecovering: boolean,
): Outcome => {
  const progress = progressOf(context, response.from);
  if (!progress.recovering) progress.recentActive = true;
  if (response.success) {
    assert(response.matchIndex <= lastIndex(context.log), 'a follower matched past the leader log');
    const advanced = onAppendAccepted(progress, response.matchIndex);
    // A follower that just finished recovering counts from now on: its match may commit more.
    const counted = wasRecovering && !progress.recovering;
    const commit = advanced || counted ? advanceCommit(context) : {};
    const committed = after(context, commit);
    return merge(commit, { send: appendsFor(committed, response.from, false) });
  }
  const changed = onAppendRejected(progress, response.rejectedIndex, nextIndexFromHint(context, response));
  return changed ? { send: appendsFor(context, response.from, true) } : {};
};

/** The follower installed our snapshot (or had one that far): it matches up to `matchIndex`. */
export const handleSnapshotResponse = (context: RaftContext, response: InstallSnapshotResponse): Outcome => {
  const verdict = checkIncarnation(context, response);
  if (verdict === 'stale') return {};
  const progress = progressOf(context, response.from);
  if (!progress.recovering) progress.recentActive = true;
  assert(response.matchIndex <= lastIndex(context.log), 'a follower matched past the leader log');
  const advanced = onSnapshotAnswered(progress, response.matchIndex);
  const commit = advanced ? advanceCommit(context) : {};
  return merge(commit, { send: appendsFor(after(context, commit), response.from, true) });
};

/** Heartbeat rounds double as ReadIndex confirmations (dissertation §6.4). */
export const broadcastHeartbeat = (context: RaftContext): Outcome => ({
  send: peersOf(context).map((peer): Heartbeat => {
    const progress = progressOf(context, peer);
    onHeartbeatSent(progress);
    return {
      type: 'Heartbeat',
      from: context.id,
      to: peer,
      term: context.currentTerm,
      commit: Math.min(progress.matchIndex, context.commitIndex),
      seq: context.readSeq,
    };
  }),
});

/** Releases every read round, oldest first, up to the newest one a majority has confirmed. */
const releaseConfirmedReads = (context: RaftContext, rounds: ReadRound[]): Outcome => {
  let confirmed = -1;
  rounds.forEach((round, position) => {
    if (isMajority(round.acks.length, context.voters.length)) confirmed = position;
  });
  if (confirmed < 0) return { patch: { readRounds: rounds } };
  const released = rounds.slice(0, confirmed + 1);
  return {
    patch: { readRounds: rounds.slice(confirmed + 1) },
    emitted: released.map(
      (round): RaftEmitted => ({ type: 'readsReady', ids: round.ids, readIndex: round.readIndex }),
    ),
  };
};

export const handleHeartbeatResponse = (context: RaftContext, response: HeartbeatResponse): Outcome => {
  const wasRecovering = progressOf(context, response.from).recovering;
  if (checkIncarnation(context, response) === 'stale') return {};
  const progress = progressOf(context, response.from);
  // A follower that just finished recovering counts from now on: its match may commit more.
  if (wasRecovering && !progress.recovering) {
    const commit = advanceCommit(context);
    return merge(commit, handleHeartbeatResponse(after(context, commit), response));
  }
  onHeartbeatAnswered(progress, context.maxInflight);
  // A recovering follower confirms no leadership (rule 3): its answer only keeps replication going.
  const rounds = context.readRounds.map((round) =>
    !progress.recovering && round.seq <= response.seq && !round.acks.includes(response.from)
      ? { ...round, acks: [...round.acks, response.from] }
      : round,
  );
  const catchUp =
    progress.matchIndex < lastIndex(context.log) ? appendsFor(context, response.from, true) : [];
  return merge(releaseConfirmedReads(context, rounds), { send: catchUp });
};

/** The leader has committed an entry of its own term, so its commitIndex is current (§6.4 step 1). */
export const hasCommittedInCurrentTerm = (context: RaftContext): boolean =>
  termAt(context.log, context.commitIndex) === context.currentTerm;

/**
 * ReadIndex (dissertation §6.4): record commitIndex as the read index, confirm leadership with one
 * heartbeat round shared by every read in the batch, release once a majority answered.
 */
export const startReadRound = (context: RaftContext, ids: number[]): Outcome => {
  if (!hasCommittedInCurrentTerm(context)) {
    return { patch: { pendingReadIds: [...context.pendingReadIds, ...ids] } };
  }
  const seq = context.readSeq + 1;
  const round: ReadRound = { seq, readIndex: context.commitIndex, ids, acks: [context.id] };
  const withRound = after(context, { patch: { readSeq: seq, pendingReadIds: [] } });
  return merge(
    { patch: { readSeq: seq, pendingReadIds: [] } },
    releaseConfirmedReads(withRound, [...context.readRounds, round]),
    { send: context.voters.length > 1 ? broadcastHeartbeat(withRound).send : [] },
  );
};

export const rejectReads = (context: RaftContext, ids: number[]): Outcome => ({
  emitted: [{ type: 'readsRejected', ids, leaderId: context.leaderId }],
});

/** CheckQuorum: a leader that has not heard from a majority in an election timeout steps down. */
export const hasLostQuorumContact = (context: RaftContext): boolean => {
  const active = peersOf(context).filter((peer) => progressOf(context, peer).recentActive).length + 1;
  return !isMajority(active, context.voters.length);
};

export const startQuorumRound = (context: RaftContext): Outcome => {
  for (const peer of peersOf(context)) progressOf(context, peer).recentActive = false;
  return {};
};

/** The log actor made the log durable up to `index`; a leader may now count itself that far. */
export const recordPersisted = (context: RaftContext, index: number): Outcome => {
  assert(index <= lastIndex(context.log), `persisted ${index} beyond the log ${lastIndex(context.log)}`);
  return { patch: { persistedIndex: index } };
};

export const leaderPersisted = (context: RaftContext, index: number): Outcome => {
  const recorded = recordPersisted(context, index);
  return merge(recorded, advanceCommit(after(context, recorded)));
};

/** Leaving leadership: pending reads cannot be confirmed any more. */
export const abandonLeadership = (context: RaftContext): Outcome => {
  const ids = [...context.readRounds.flatMap((round) => round.ids), ...context.pendingReadIds];
  return merge(
    { patch: { progress: {}, readRounds: [], pendingReadIds: [], leaderId: null } },
    ids.length > 0 ? { emitted: [{ type: 'readsRejected', ids, leaderId: null }] } : {},
  );
};

// ---------------------------------------------------------------------------------------------
// Recovery of a server that started without its earlier state (docs/design/recovery.md; Viewstamped
// Replication Revisited §4.3; crash vectors after Michael, Ports et al., DISC 2017)

/**
 * Rule 1, crash vectors first: raise ours with what a message carries. A vote recorded from an
 * incarnation the vector now knows to be older is dropped; a leader resets the progress of a
 * follower known to have restarted (its matches were an earlier incarnation's) and counts it again
 * only once it answers from the new one.
 */
export const raiseCrashVector = (context: RaftContext, vector: CrashVector | undefined): Outcome => {
  if (vector === undefined) return {};
  let crashVector: CrashVector | null = null;
  let votes: Record<NodeId, boolean> | null = null;
  for (const [member, incarnation] of Object.entries(vector)) {
    if (!context.voters.includes(member) || incarnation <= (context.crashVector[member] ?? 0)) continue;
    crashVector ??= { ...context.crashVector };
    crashVector[member] = incarnation;
    if (member in context.votes && (context.voteIncarnations[member] ?? 0) < incarnation) {
      votes ??= { ...context.votes };
      delete votes[member];
      context.recoveryCounters.staleVotesDropped += 1;
    }
    const progress = context.progress[member];
    if (progress !== undefined && progress.incarnation < incarnation) {
      Object.assign(progress, createProgress(lastIndex(context.log), incarnation));
      context.incarnationCounters.resets += 1;
    }
  }
  if (crashVector === null) return {};
  return { patch: votes === null ? { crashVector } : { crashVector, votes } };
};

/** Holds no state at all: term 0, an empty log (what bootstrap asks of a majority). */
const isBlank = (context: RaftContext): boolean => context.currentTerm === 0 && lastIndex(context.log) === 0;

/**
 * Every server answers a RecoveryRequest, whatever its role or term (the request is outside the
 * term rules): its term, whether it leads (and its last index then), whether it recovers itself, and
 * its crash vector, after raising it with the asker's new incarnation. A request from an incarnation
 * older than one already heard of was sent before a restart and gets no answer.
 */
export const answerRecovery = (context: RaftContext, request: RecoveryRequest): Outcome => {
  if (request.incarnation < (context.crashVector[request.from] ?? 0)) return {};
  const raised = raiseCrashVector(context, { [request.from]: request.incarnation });
  const seen = after(context, raised);
  const leads = context.leaderId === context.id && context.progress[request.from] !== undefined;
  const response: RecoveryResponse = {
    type: 'RecoveryResponse',
    from: context.id,
    to: request.from,
    term: context.currentTerm,
    incarnation: request.incarnation,
    round: request.round,
    recovering: context.recovering,
    blank: isBlank(context),
    leaderLastIndex: leads ? lastIndex(context.log) : -1,
    crashVector: seen.crashVector,
  };
  // A leader that just reset the asker's progress probes it at once, so recovery need not wait.
  const probe = leads ? appendsFor(seen, request.from, true) : [];
  return merge(raised, { send: [response, ...probe] });
};

/** A new round: a new nonce, no answers yet, RecoveryRequests to every member, the retry timer. */
export const startRecoveryRound = (context: RaftContext): Outcome => {
  const round = context.recovery.round + 1;
  context.recoveryCounters.rounds += 1;
  if (context.recovery.target !== null) context.recoveryCounters.restartedByTerm += 1;
  const requests: RecoveryRequest[] = peersOf(context).map((peer) => ({
    type: 'RecoveryRequest',
    from: context.id,
    to: peer,
    term: context.currentTerm,
    incarnation: context.incarnation,
    round,
  }));
  const timing = drawElectionTimeout(context);
  // The mark goes to the disk first, so that a crash during recovery leads to recovery again.
  const mark: Outcome =
    context.votedFor === RECOVERING_VOTE
      ? {}
      : {
          patch: { votedFor: RECOVERING_VOTE },
          emitted: [persistHardState(context.currentTerm, RECOVERING_VOTE)],
        };
  const started = merge(mark, {
    patch: { recovery: { round, answers: {}, target: null, heardTarget: false }, ...timing },
    send: requests,
  });
  // A single-server cluster has no one to ask: it decides at once.
  if (context.voters.length > 1) return started;
  const asked = after(context, started);
  return canBootstrap(asked) ? merge(started, recovered(asked, 'bootstrapped')) : started;
};

/**
 * Entering the recovering state: at the start, and again on every new term. A round that already
 * follows a leader starts over (that leader may be gone, and its term is over); a round still
 * collecting answers keeps them (the highest term and its leader are judged against the new term).
 */
export const enterRecovering = (context: RaftContext): Outcome => {
  if (context.recovery.round > 0) context.recoveryCounters.termChanges += 1;
  return context.recovery.round === 0 || context.recovery.target !== null
    ? startRecoveryRound(context)
    : { patch: { electionElapsedTicks: 0 } };
};

/**
 * The retry timer of a recovering server fired: a round that is copying from a leader that still
 * sends goes on; any other round starts over with a new nonce (lost answers, a leader that died).
 */
export const retryRecovery = (context: RaftContext): Outcome => {
  if (canBootstrap(context)) return recovered(context, 'bootstrapped');
  if (context.recovery.target !== null && context.recovery.heardTarget) {
    return { patch: { recovery: { ...context.recovery, heardTarget: false }, electionElapsedTicks: 0 } };
  }
  return startRecoveryRound(context);
};

/** Recovery is over: from now on the server's answers count and it may vote. */
const recovered = (context: RaftContext, counter: 'recovered' | 'bootstrapped' | 'forced'): Outcome => {
  context.recoveryCounters[counter] += 1;
  const done: Outcome = {
    patch: { recovering: false, recovery: { ...context.recovery, target: null, heardTarget: false } },
  };
  // The mark gives way: a recovered server has cast its vote of the term it adopted (itself: it
  // votes in no term up to it); a bootstrapped one is a new member at term 0, with no vote at all.
  const votedFor = counter === 'bootstrapped' ? null : context.id;
  return merge(done, { patch: { votedFor }, emitted: [persistHardState(context.currentTerm, votedFor)] });
};

/**
 * Rule 2, step 1: with answers of the current nonce from a majority of the other members that are
 * not recovering, one from the leader of the highest term T among them, adopt T and treat the vote
 * of T as cast (votedFor = self: it votes in no term up to T), and copy that leader's log up to the
 * last index it reported. Bootstrap instead when a majority of all members, this one included,
 * holds no state and no answer has any (unless `join`); `forceRecovery` completes from whatever
 * non-recovering members with state answered.
 */
export const recordRecoveryAnswer = (context: RaftContext, response: RecoveryResponse): Outcome => {
  const raised = raiseCrashVector(context, response.crashVector);
  const current =
    context.recovering &&
    context.recovery.target === null &&
    response.incarnation === context.incarnation &&
    response.round === context.recovery.round;
  if (!current) return raised;
  const answers = { ...context.recovery.answers, [response.from]: response };
  const seen = after(context, raised);
  const withAnswer = after(seen, { patch: { recovery: { ...context.recovery, answers } } });
  return merge(raised, { patch: { recovery: withAnswer.recovery } }, decideRecovery(withAnswer));
};

/**
 * Bootstrap, judged when a round ends (its retry timer), so that every reachable member had a whole
 * round to answer: this server and the answers of a majority hold no state at all, and no answer
 * holds any (a member that does would have answered within the round). Never with `join`.
 */
const canBootstrap = (context: RaftContext): boolean => {
  if (context.join || !context.recovering || context.recovery.target !== null || !isBlank(context))
    return false;
  const answers = Object.values(context.recovery.answers);
  return answers.every((answer) => answer.blank) && isMajority(answers.length + 1, context.voters.length);
};

const decideRecovery = (context: RaftContext): Outcome => {
  const answers = Object.values(context.recovery.answers);
  const ready = answers.filter((answer) => !answer.recovering);
  const term = Math.max(context.currentTerm, ...ready.map((answer) => answer.term));
  const leader = ready.find((answer) => answer.leaderLastIndex >= 0 && answer.term === term);
  if (leader !== undefined && ready.length >= majorityOf(context.voters.length - 1)) {
    return followTarget(context, { leaderId: leader.from, term, lastIndex: leader.leaderLastIndex });
  }
  if (context.forceRecovery && ready.some((answer) => !answer.blank)) {
    const adopted = adoptRecoveredTerm(term);
    return merge(adopted, recovered(after(context, adopted), 'forced'));
  }
  return {};
};

/**
 * Adopts `term`, still marked recovering (a crash while copying the log means recovering again);
 * once recovered the server counts as having voted in it (votedFor = self), so no vote of a
 * forgotten term repeats.
 */
const adoptRecoveredTerm = (term: number): Outcome => ({
  patch: { currentTerm: term, votedFor: RECOVERING_VOTE },
  emitted: [persistHardState(term, RECOVERING_VOTE)],
});

const followTarget = (context: RaftContext, target: RecoveryTarget): Outcome =>
  merge(adoptRecoveredTerm(target.term), {
    patch: { leaderId: target.leaderId, recovery: { ...context.recovery, target, heardTarget: false } },
  });

/**
 * Rule 2, step 2: the recovery completes once the log matches the target leader's up to the last
 * index it reported, shown by that leader in its term (an accepted AppendEntries or snapshot).
 */
const completesRecovery = (context: RaftContext, from: NodeId, term: number, matchIndex: number): boolean => {
  const target = context.recovery.target;
  return (
    target !== null && target.leaderId === from && target.term === term && matchIndex >= target.lastIndex
  );
};

const fromTarget = (context: RaftContext, from: NodeId): Outcome =>
  context.recovery.target?.leaderId === from && !context.recovery.heardTarget
    ? { patch: { recovery: { ...context.recovery, heardTarget: true } } }
    : {};

/** AppendEntries while recovering: as any follower (answers marked), then the completion check. */
export const appendWhileRecovering = (context: RaftContext, request: AppendEntries): Outcome => {
  const appended = appendFromLeader(context, request);
  const answer = appended.send?.[0];
  const heard = merge(appended, fromTarget(context, request.from));
  const done =
    answer?.type === 'AppendEntriesResponse' &&
    answer.success &&
    completesRecovery(context, request.from, request.term, answer.matchIndex);
  return done ? merge(heard, recovered(after(context, heard), 'recovered')) : heard;
};

/** InstallSnapshot while recovering: as any follower, then the completion check. */
export const installWhileRecovering = (context: RaftContext, request: InstallSnapshot): Outcome => {
  const installed = installSnapshot(context, request);
  const answer = installed.send?.[0];
  const heard = merge(installed, fromTarget(context, request.from));
  const done =
    answer?.type === 'InstallSnapshotResponse' &&
    completesRecovery(context, request.from, request.term, answer.matchIndex);
  return done ? merge(heard, recovered(after(context, heard), 'recovered')) : heard;
};
