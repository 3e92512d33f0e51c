/**
 * Rules for All Servers (Figure 2): the initial state, "if RPC request or response contains term
 * T > currentTerm: set currentTerm = T, convert to follower" (§5.1), the answer to a stale request,
 * the RequestVote receiver (§5.2, §5.4.1; PreVote, dissertation §9.6), what the log actor made
 * durable, and the persist order of every server's messages (dissertation §10.2.1).
 */
import { assert } from '../assert.js';
import { decodeConfiguration, simpleConfiguration } from '../configuration.js';
import {
  type RaftMessage,
  RECOVERING_VOTE,
  type RequestVote,
  type RequestVoteResponse,
} from '../messages.js';
import type {
  ConfigAt,
  MembershipCounters,
  Outcome,
  RaftContext,
  RaftInput,
  RecoveryCounters,
} from '../raft.types.js';
import { createLog, isUpToDate, lastIndex } from '../raft-log.js';
import { electionTicksOf, tickMsOf } from '../ticks.js';
import { rejectAppend } from './follower.js';
import {
  DEFAULT_MAX_APPEND_BYTES,
  DEFAULT_MAX_ENTRIES_PER_APPEND,
  DEFAULT_MAX_INFLIGHT,
  drawElectionTimeout,
  markRecovering,
  persistHardState,
} from './shared.js';

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

/** The membership counters of a machine that has done nothing yet (tests and metrics). */
export const emptyMembershipCounters = (): MembershipCounters => ({
  truncated: 0,
  fromSnapshot: 0,
  leaderRemoved: 0,
  removedAnswers: 0,
  removedCampaigns: 0,
  catchUps: 0,
  catchUpsCompleted: 0,
  catchUpsCancelled: 0,
});

/**
 * The configurations a (re)started server knows (membership.ts): the snapshot's, else the bootstrap
 * voters of the input, then one per config entry in the log. The log's win over the input.
 */
export const initialConfigs = (input: RaftInput): ConfigAt[] => {
  const snapshotIndex = input.snapshot?.index ?? 0;
  const base = input.snapshot?.config ?? simpleConfiguration(input.voters, input.addresses);
  const configs: ConfigAt[] = [{ index: snapshotIndex, config: base }];
  (input.entries ?? []).forEach((entry, offset) => {
    if (entry.kind === 'config' && entry.data !== null)
      configs.push({ index: snapshotIndex + 1 + offset, config: decodeConfiguration(entry.data) });
  });
  // A server being added holds an empty log and lists the new membership: it may not be in it yet
  // (it never campaigns while not a member, membership.ts mayCampaign).
  assert(
    configs.length > 1 || input.snapshot?.config !== undefined || input.voters.includes(input.id),
    `voters must include the local server ${input.id}`,
  );
  return configs;
};

export const initialContext = (input: RaftInput): RaftContext => {
  const configs = initialConfigs(input);
  const config = configs[configs.length - 1]!.config;
  assert(input.electionTimeoutMs > input.heartbeatMs, 'election timeout must exceed the heartbeat interval');
  assert(input.maxAppendBytes === undefined || input.maxAppendBytes >= 1, 'maxAppendBytes must be >= 1');
  const base = {
    id: input.id,
    configs,
    config,
    removed: false,
    membershipCounters: emptyMembershipCounters(),
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
    newClusterId: input.newClusterId,
    recovering: input.recovering === true || input.hardState?.votedFor === RECOVERING_VOTE,
    recovery: { round: 0, answers: {}, target: null, heardTarget: false, heardLog: false },
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

/**
 * Persist order (dissertation §10.2.1, raft.types.ts): a leader's AppendEntries and heartbeats
 * promise nothing about its own disk, so they may leave before its log write is durable (it counts
 * itself toward a commit only up to `persisted`). Every other message waits: an answer or a vote
 * request states what this server holds or has promised, which a crash must not take back.
 */
export const mayLeaveBeforePersist = (message: RaftMessage): boolean =>
  message.type === 'AppendEntries' || message.type === 'Heartbeat';

/** The log actor made the log durable up to `index`; a leader may now count itself that far. */
export const recordPersisted = (context: RaftContext, index: number): Outcome => {
  assert(index <= lastIndex(context.log), `persisted ${index} beyond the log ${lastIndex(context.log)}`);
  return { patch: { persistedIndex: index } };
};
