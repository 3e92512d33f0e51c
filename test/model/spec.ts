/**
 * A reference specification of Raft, written as plainly as possible and independently of
 * src/machines (only the message *types* are shared, because the model test feeds the messages the
 * implementation sends to both).
 *
 * It mirrors the actions of Diego Ongaro's TLA+ spec (raft.tla):
 *
 *   Restart, Timeout, RequestVote, BecomeLeader, ClientRequest, AdvanceCommitIndex, AppendEntries,
 *   Receive = UpdateTerm + HandleRequestVoteRequest / HandleRequestVoteResponse /
 *             HandleAppendEntriesRequest / HandleAppendEntriesResponse, DropMessage, DuplicateMessage
 *
 * grown with the extensions diskeyval implements, each a rule of its own below:
 *
 *   PreVote, CheckQuorum, a no-op entry per new leader, batched proposals, heartbeats that carry
 *   min(matchIndex, commitIndex), rejections with a conflict hint, commit = max(commit,
 *   min(leaderCommit, last new index)), stale requests answered with the receiver's term,
 *   incarnations: every start of a server has a larger number, its answers carry it, and a leader
 *   resets its match of a follower whose incarnation went up and ignores answers whose went down,
 *   recovery of an amnesiac server (docs/design/recovery.md): it starts `recovering`, grants no
 *   vote, marks its answers (a leader counts them toward no commit and no CheckQuorum), asks every
 *   member with a nonce (incarnation, round), and completes once a majority of the others that are
 *   not recovering answered, one of them the leader of the highest term, and it holds that leader's
 *   log up to the last index it reported; crash vectors: vote and recovery answers carry the
 *   sender's, and a vote from an incarnation known to be older is dropped; membership by joint
 *   consensus (spec-config.ts; Raft paper §6, dissertation §4.3): the newest configuration in the
 *   log is in force, every majority needs both sets while joint, a leader appends C_old,new on a
 *   reconfigure request and C_new once that commits, a leader outside a committed C_new steps down,
 *   and removed servers are told `Removed` and start no election.
 *
 * Every function is pure: it takes a server's state and returns the next one plus the replies
 * the server must send. Two kinds of messages are *not* predicted exactly: a leader's
 * AppendEntries and Heartbeat (what to send when is flow control, not Raft). For those the spec
 * says which messages a server may send (`leaderMayHaveSent`), the AppendEntries action of the
 * TLA+ spec read as a predicate. DropMessage and DuplicateMessage are actions of the network,
 * which the harness owns.
 */
import type {
  AppendEntries,
  AppendEntriesResponse,
  Entry,
  Heartbeat,
  NodeId,
  RaftMessage,
  RecoveryRequest,
  RecoveryResponse,
  RequestVote,
  RequestVoteResponse,
} from '../../src/machines/messages.js';
import { RECOVERING_VOTE } from '../../src/machines/messages.js';
import {
  afterCatchUp,
  asksForCurrent,
  asksForTarget,
  type ConfigInForce,
  catchUpOf,
  configBefore,
  configEntry,
  configInForce,
  configOfEntry,
  finalOf,
  isCatchUpConfig,
  isJointConfig,
  isMemberOf,
  jointOf,
  MOST_VOTERS,
  membersOfConfig,
  quorumOf,
  recoveryQuorumOf,
  type SpecAddress,
  sameConfig,
  someSetMajority,
  stableOf,
} from './spec-config.js';

/** A recovering server's round: its answers, and the leader it copies from once it has one. */
export type SpecRecovery = {
  readonly round: number;
  readonly answers: Readonly<Record<NodeId, RecoveryResponse>>;
  readonly target: { leaderId: NodeId; term: number; lastIndex: number } | null;
  readonly heardTarget: boolean;
  /** A member whose log is not empty answered in some round of this recovery: never bootstrap. */
  readonly heardLog: boolean;
};

export type SpecRole = 'follower' | 'candidate' | 'leader';
/** A candidate first polls (PreVote, dissertation §9.6), then campaigns for real. */
export type SpecPhase = 'preVote' | 'campaign';

export type SpecServer = {
  readonly id: NodeId;
  /**
   * The bootstrap voters (this server included): the configuration in force while the log holds no
   * config entry (`configOf`: the newest config entry in the log is in force, committed or not).
   */
  readonly bootstrap: readonly NodeId[];
  /** Told that a committed configuration removed it (a `Removed` message, or it led and left). */
  readonly removed: boolean;
  /** Never bootstrap a new cluster while recovering (a server started to be added). */
  readonly join: boolean;
  readonly role: SpecRole;
  /** Only for candidates; null otherwise. */
  readonly phase: SpecPhase | null;
  // Persistent state.
  readonly currentTerm: number;
  readonly votedFor: NodeId | null;
  readonly log: readonly Entry[];
  // Volatile state.
  readonly commitIndex: number;
  readonly leaderId: NodeId | null;
  /** Candidates: the answers of the current poll or election (true = granted). */
  readonly votes: Readonly<Record<NodeId, boolean>>;
  /** Leaders: highest index known to be replicated on each peer. */
  readonly matchIndex: Readonly<Record<NodeId, number>>;
  /** Leaders: peers heard from since the last CheckQuorum. */
  readonly recentActive: Readonly<Record<NodeId, boolean>>;
  /** This start of the server: larger than every earlier start's (not persistent state). */
  readonly incarnation: number;
  /** Leaders: the highest incarnation each peer's answers named (absent: none heard). */
  readonly incarnationOf: Readonly<Record<NodeId, number>>;
  /** Leaders: peers whose answers in their current incarnation are marked recovering (or unheard). */
  readonly recoveringOf: Readonly<Record<NodeId, boolean>>;
  /** Started without its state and not yet recovered. */
  readonly recovering: boolean;
  readonly recovery: SpecRecovery;
  /** The largest incarnation heard of each member. */
  readonly crashVector: Readonly<Record<NodeId, number>>;
  /** Candidates: the incarnation of each voter whose answer `votes` holds. */
  readonly voteIncarnations: Readonly<Record<NodeId, number>>;
};

/** What a step of the spec produces: the next state and the messages it must send. */
export type SpecStep = {
  readonly server: SpecServer;
  readonly send: readonly RaftMessage[];
  /** The leader's state its AppendEntries and Heartbeats of the step were sent from, when it left in the step. */
  readonly sentAs?: SpecServer;
};

/** The persistent part of a server: what survives Restart. */
export type Persistent = { term: number; votedFor: NodeId | null; log: readonly Entry[] };

// ---------------------------------------------------------------------------------------------
// Helpers

/** The configuration in force: the newest config entry in the log, else the bootstrap voters. */
export const configOf = (s: SpecServer): ConfigInForce => configInForce(s.log, s.bootstrap);

/** The other servers of the configuration in force (both sets while it is joint, and the learners). */
export const peers = (s: SpecServer): NodeId[] =>
  membersOfConfig(configOf(s).config).filter((v) => v !== s.id);

/**
 * Only a member of its configuration in force that was not told it is removed starts elections, or,
 * while that configuration is not known to be committed, a member of the one before it (a leader
 * that appended a C_new without itself may hold its only copy: the others need its vote).
 */
export const mayCampaign = (s: SpecServer): boolean => {
  if (s.removed) return false;
  const { index, config } = configOf(s);
  if (isMemberOf(config, s.id)) return true;
  return index > s.commitIndex && index > 0 && isMemberOf(configBefore(s.log, s.bootstrap, index), s.id);
};

/** Term of the entry at 1-based `index`: 0 for index 0, undefined past the end. */
export const termAt = (log: readonly Entry[], index: number): number | undefined => {
  if (index === 0) return 0;
  if (index < 0 || index > log.length) return undefined;
  return log[index - 1]!.term;
};

export const lastTerm = (log: readonly Entry[]): number => (log.length === 0 ? 0 : log[log.length - 1]!.term);

/** §5.4.1: the candidate's log is at least as up to date as `log`. */
export const logIsUpToDate = (log: readonly Entry[], lastLogIndex: number, lastLogTerm: number): boolean =>
  lastLogTerm > lastTerm(log) || (lastLogTerm === lastTerm(log) && lastLogIndex >= log.length);

const sameBytes = (a: Uint8Array | null, b: Uint8Array | null): boolean => {
  if (a === null || b === null) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
  return true;
};

/** Config entries are compared by what they say (the order of addresses in the encoding is free). */
export const sameEntry = (a: Entry, b: Entry): boolean =>
  a.term === b.term &&
  a.kind === b.kind &&
  (a.kind === 'config' ? sameConfig(configOfEntry(a), configOfEntry(b)) : sameBytes(a.data, b.data));

const unchanged = (server: SpecServer): SpecStep => ({ server, send: [] });

// ---------------------------------------------------------------------------------------------
// Init and Restart

export const initServer = (
  id: NodeId,
  voters: readonly NodeId[],
  persistent?: Persistent,
  incarnation = 1,
  recovering = false,
  join = false,
): SpecServer => ({
  id,
  bootstrap: [...voters].sort(),
  removed: false,
  join,
  role: 'follower',
  phase: null,
  currentTerm: persistent?.term ?? 0,
  votedFor: persistent?.votedFor ?? null,
  log: [...(persistent?.log ?? [])],
  commitIndex: 0,
  leaderId: null,
  votes: {},
  matchIndex: {},
  recentActive: {},
  incarnation,
  incarnationOf: {},
  recoveringOf: {},
  // A crash in the middle of recovery leaves the mark on the disk: the server recovers again.
  recovering: recovering || persistent?.votedFor === RECOVERING_VOTE,
  recovery: { round: 0, answers: {}, target: null, heardTarget: false, heardLog: false },
  crashVector: { [id]: incarnation },
  voteIncarnations: {},
});

export const persistentOf = (s: SpecServer): Persistent => ({
  term: s.currentTerm,
  votedFor: s.votedFor,
  log: s.log,
});

/**
 * Restart: the server keeps currentTerm, votedFor and log, and loses everything else; it starts
 * as a new `incarnation` (larger than its last). With `keptEntries`, only that prefix of the log
 * survives (a torn tail cut at start; the harness cuts only what was never acknowledged).
 */
export const restart = (s: SpecServer, incarnation: number, keptEntries = s.log.length): SpecServer => {
  if (incarnation <= s.incarnation) throw new Error(`spec: incarnation ${incarnation} <= ${s.incarnation}`);
  const persistent = persistentOf(s);
  return initServer(
    s.id,
    s.bootstrap,
    { ...persistent, log: persistent.log.slice(0, keptEntries) },
    incarnation,
    false,
    s.join,
  );
};

/** What a server does as it starts: a recovering one sends its first round of RecoveryRequests. */
export const startup = (s: SpecServer): SpecStep => (s.recovering ? startRecoveryRound(s) : unchanged(s));

/**
 * Amnesia: the server lost everything and starts recovering as a new incarnation, with `voters`
 * as its bootstrap configuration (what its operator names: its membership when it forgot).
 */
export const amnesiacRestart = (
  s: SpecServer,
  incarnation: number,
  voters: readonly NodeId[] = s.bootstrap,
): SpecStep => {
  if (incarnation <= s.incarnation) throw new Error(`spec: incarnation ${incarnation} <= ${s.incarnation}`);
  return startRecoveryRound(initServer(s.id, voters, undefined, incarnation, true, s.join));
};

/** A server started to be added: an empty log, `voters` naming the new membership, recovering, never bootstrapping. */
export const joinStart = (id: NodeId, voters: readonly NodeId[], incarnation: number): SpecStep =>
  startRecoveryRound(initServer(id, voters, undefined, incarnation, true, true));

// ---------------------------------------------------------------------------------------------
// Becoming follower, candidate, leader

const becomeFollower = (s: SpecServer): SpecServer =>
  s.role === 'follower'
    ? s
    : {
        ...s,
        role: 'follower',
        phase: null,
        matchIndex: {},
        recentActive: {},
        incarnationOf: {},
        recoveringOf: {},
        leaderId: s.role === 'leader' ? null : s.leaderId,
      };

const requestVotes = (s: SpecServer, term: number, preVote: boolean): RequestVote[] =>
  peers(s).map((to) => ({
    type: 'RequestVote',
    from: s.id,
    to,
    term,
    lastLogIndex: s.log.length,
    lastLogTerm: lastTerm(s.log),
    preVote,
  }));

/**
 * Timeout (PreVote variant): a follower or candidate polls the others for term currentTerm + 1
 * without changing its term or vote. A leader ignores the election timer.
 */
export const timeout = (s: SpecServer): SpecStep => settle(electionTimeout(s));

const electionTimeout = (s: SpecServer): SpecStep => {
  if (s.role === 'leader') return unchanged(s);
  if (s.recovering) return retryRecovery(s);
  // A server that may not campaign (removed, or no member) starts no election; it forgets its leader.
  if (s.role === 'follower' && !mayCampaign(s)) return unchanged({ ...s, leaderId: null });
  const polling: SpecServer = {
    ...s,
    role: 'candidate',
    phase: 'preVote',
    leaderId: null,
    votes: { [s.id]: true },
    voteIncarnations: { [s.id]: s.incarnation },
  };
  return tally({ server: polling, send: requestVotes(polling, s.currentTerm + 1, true) });
};

/** RequestVote (TLA+ Timeout + RequestVote): term + 1, vote for self, ask every peer. */
const campaign = (s: SpecServer): SpecStep => {
  const term = s.currentTerm + 1;
  const candidate: SpecServer = {
    ...s,
    role: 'candidate',
    phase: 'campaign',
    currentTerm: term,
    votedFor: s.id,
    leaderId: null,
    votes: { [s.id]: true },
    voteIncarnations: { [s.id]: s.incarnation },
  };
  return tally({ server: candidate, send: requestVotes(candidate, term, false) });
};

/** A leader's view of its peers: unheard, nothing matched, active until the first CheckQuorum. */
const freshPeer = (s: SpecServer, p: NodeId, maps: LeaderMaps): void => {
  maps.matchIndex[p] = 0;
  maps.recentActive[p] = true;
  // Unheard peers count for nothing yet; their known incarnation (crash vector) rules out older answers.
  maps.recoveringOf[p] = true;
  if (s.crashVector[p] !== undefined) maps.incarnationOf[p] = s.crashVector[p]!;
  else delete maps.incarnationOf[p];
};

type LeaderMaps = {
  matchIndex: Record<NodeId, number>;
  recentActive: Record<NodeId, boolean>;
  incarnationOf: Record<NodeId, number>;
  recoveringOf: Record<NodeId, boolean>;
};

/**
 * The leader's peers follow its configuration in force: a new member starts fresh, a member that
 * left is forgotten (so one added again later starts fresh too).
 */
const syncPeers = (s: SpecServer): SpecServer => {
  const maps: LeaderMaps = { matchIndex: {}, recentActive: {}, incarnationOf: {}, recoveringOf: {} };
  for (const p of peers(s)) {
    if (!(p in s.matchIndex)) {
      freshPeer(s, p, maps);
      continue;
    }
    maps.matchIndex[p] = s.matchIndex[p]!;
    maps.recentActive[p] = s.recentActive[p]!;
    maps.recoveringOf[p] = s.recoveringOf[p]!;
    if (s.incarnationOf[p] !== undefined) maps.incarnationOf[p] = s.incarnationOf[p]!;
  }
  return { ...s, ...maps };
};

/** BecomeLeader, plus the extension: the new leader appends a no-op entry of its term (§8). */
const becomeLeader = (s: SpecServer): SpecStep => {
  const maps: LeaderMaps = { matchIndex: {}, recentActive: {}, incarnationOf: {}, recoveringOf: {} };
  for (const p of peers(s)) freshPeer(s, p, maps);
  return leaderCommits({
    ...s,
    role: 'leader',
    phase: null,
    leaderId: s.id,
    log: [...s.log, { term: s.currentTerm, kind: 'noop', data: null }],
    ...maps,
  });
};

/**
 * Counts the answers of a poll or election: a majority of grants (of both sets while joint) moves
 * a poll to a campaign and a campaign to leadership; a majority of refusals in either set sends the
 * candidate back to follower.
 */
const tally = (step: SpecStep): SpecStep => {
  const s = step.server;
  if (s.role !== 'candidate') return step;
  const { config } = configOf(s);
  if (quorumOf(config, (v) => s.votes[v] === true)) {
    const next = s.phase === 'preVote' ? campaign(s) : becomeLeader(s);
    return { server: next.server, send: [...step.send, ...next.send] };
  }
  if (someSetMajority(config, (v) => s.votes[v] === false))
    return { server: becomeFollower(s), send: step.send };
  return step;
};

// ---------------------------------------------------------------------------------------------
// Leaders

/** ClientRequest, batched: every command of one proposal is appended at once. Non-leaders refuse. */
export const clientRequest = (
  s: SpecServer,
  commands: readonly Uint8Array[],
): SpecStep & { accepted: boolean } => {
  if (s.role !== 'leader') return { server: s, send: [], accepted: false };
  const entries: Entry[] = commands.map((data) => ({ term: s.currentTerm, kind: 'command', data }));
  return settle({ ...leaderCommits({ ...s, log: [...s.log, ...entries] }), accepted: true });
};

/**
 * AdvanceCommitIndex: the largest N > commitIndex stored on a majority of every voter set of the
 * configuration in force (the leader counts its own log where it is a voter) whose entry is of the
 * current term. Earlier terms commit only as a prefix (Figure 8).
 */
export const advanceCommitIndex = (s: SpecServer): SpecServer => {
  if (s.role !== 'leader') return s;
  const { config } = configOf(s);
  for (let n = s.log.length; n > s.commitIndex; n -= 1) {
    if (termAt(s.log, n) !== s.currentTerm) break;
    const holds = (v: NodeId): boolean =>
      v === s.id || (!s.recoveringOf[v] && v in s.matchIndex && s.matchIndex[v]! >= n);
    if (quorumOf(config, holds)) return { ...s, commitIndex: n };
  }
  return s;
};

/**
 * The leader's commit, with what membership adds to it: when C_new commits, the servers it removed
 * are told (`Removed`); when C_old,new commits, C_new is appended (which may commit in turn).
 */
const leaderCommits = (s: SpecServer): SpecStep => {
  let server = s;
  const send: RaftMessage[] = [];
  for (let round = 0; round < 3; round += 1) {
    const before = server.commitIndex;
    server = advanceCommitIndex(server);
    if (server.commitIndex > before) send.push(...tellRemoved(server, before));
    const { index, config } = configOf(server);
    if (!isJointConfig(config) || index > server.commitIndex) break;
    server = syncPeers({ ...server, log: [...server.log, configEntry(server.currentTerm, finalOf(config))] });
  }
  return { server, send };
};

/**
 * C_new (or a C_learn, or the base that cancels one) just committed: tell the servers of the
 * configuration before it that it left out. A learner of both is not left out: it is still being
 * added (learners are no members for majorities, but they are in the configuration).
 */
const tellRemoved = (s: SpecServer, previousCommit: number): RaftMessage[] => {
  const { index, config } = configOf(s);
  if (isJointConfig(config) || index <= previousCommit || index > s.commitIndex) return [];
  const before = configBefore(s.log, s.bootstrap, index);
  const kept = membersOfConfig(config);
  return membersOfConfig(before)
    .filter((id) => id !== s.id && !kept.includes(id))
    .map((to) => removedMessage(s, to));
};

const removedMessage = (s: SpecServer, to: NodeId): RaftMessage => ({
  type: 'Removed',
  from: s.id,
  to,
  term: s.currentTerm,
  configIndex: configOf(s).index,
});

/**
 * CheckQuorum: a leader that has not heard from a majority (of both sets while joint; itself
 * counted where it is a voter) since the last check steps down.
 */
export const checkQuorum = (s: SpecServer): SpecStep => {
  if (s.role !== 'leader') return settle(unchanged(s));
  if (!quorumOf(configOf(s).config, (v) => v === s.id || s.recentActive[v] === true))
    return unchanged(becomeFollower(s));
  const cleared: Record<NodeId, boolean> = {};
  for (const p of peers(s)) cleared[p] = false;
  return settle(unchanged({ ...s, recentActive: cleared }));
};

/** The heartbeat timer only makes a leader send Heartbeats (checked by `leaderMayHaveSent`). */
export const heartbeatTimeout = (s: SpecServer): SpecStep => settle(unchanged(s));

/** What the spec answers a reconfigure request (the machine's reconfigureAccepted / reconfigureRejected). */
export type RefusalCode = 'NOT_LEADER' | 'LEADER_NOT_READY' | 'CHANGE_IN_PROGRESS' | 'INVALID_ARGUMENT';

export type ReconfigureAnswer =
  | { accepted: true; index: number; term: number; unchanged: boolean }
  | {
      accepted: false;
      code: RefusalCode;
      leaderId: NodeId | null;
    };

/**
 * A reconfigure request (§6): only a leader takes it; the voters must be a non-empty list without
 * repeats; one change at a time: refused while the configuration in force is joint or not yet
 * committed (CHANGE_IN_PROGRESS), and before the leader committed an entry of its own term
 * (LEADER_NOT_READY; dissertation §4.1). A committed catch-up is no change in progress: the request
 * replaces it. The change starts from the stable base of the configuration in force (a catch-up
 * without its learners): asking for the base is answered at once when nothing is catching up, and
 * cancels the catch-up otherwise (the base is appended); a change that adds servers appends C_learn
 * (they catch up as learners first, dissertation §4.2.1; `settle` goes on to C_old,new); any other
 * appends C_old,new at once. What is appended is in force at once (its servers join the leader's
 * view) and the leader's commit rule runs.
 */
export const reconfigure = (
  s: SpecServer,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): SpecStep & { answer: ReconfigureAnswer } => {
  const refuse = (code: RefusalCode) => ({
    server: s,
    send: [],
    answer: { accepted: false as const, code, leaderId: s.leaderId },
  });
  if (s.role !== 'leader') return refuse('NOT_LEADER');
  if (voters.length === 0 || new Set(voters).size !== voters.length || voters.length > MOST_VOTERS)
    return refuse('INVALID_ARGUMENT');
  const inForce = configOf(s);
  const committedOwnTerm = termAt(s.log, s.commitIndex) === s.currentTerm;
  if (isJointConfig(inForce.config) || inForce.index > s.commitIndex) return refuse('CHANGE_IN_PROGRESS');
  // The last leader's configuration may be uncommitted elsewhere: first a commit of its own term.
  if (!committedOwnTerm) return refuse('LEADER_NOT_READY');
  const base = stableOf(inForce.config);
  const catchingUp = isCatchUpConfig(inForce.config);
  if (!catchingUp && asksForCurrent(base, voters, addresses))
    return {
      server: s,
      send: [],
      answer: { accepted: true, index: inForce.index, term: inForce.term, unchanged: true },
    };
  // The same change asked again (a call retried after a leader change): the catch-up goes on.
  if (catchingUp && asksForTarget(inForce.config, voters, addresses))
    return {
      server: s,
      send: [],
      answer: { accepted: true, index: inForce.index, term: inForce.term, unchanged: false },
    };
  const next = asksForCurrent(base, voters, addresses)
    ? base
    : voters.every((id) => base.voters.includes(id))
      ? jointOf(base, voters, addresses)
      : catchUpOf(base, voters, addresses);
  const step = settle(leaderCommits(syncPeers({ ...s, log: [...s.log, configEntry(s.currentTerm, next)] })));
  return {
    ...step,
    answer: { accepted: true, index: s.log.length + 1, term: s.currentTerm, unchanged: false },
  };
};

/** A leader outside its committed C_new steps down, told it is removed (§6). */
export const leavesAsRemoved = (s: SpecServer): boolean => {
  if (s.role !== 'leader') return false;
  const { index, config } = configOf(s);
  return !isJointConfig(config) && !config.voters.includes(s.id) && index <= s.commitIndex;
};

/**
 * The learners of a committed C_learn have caught up (dissertation §4.2.1): the leader holds
 * progress for each, heard from its current incarnation that it is not recovering, and it holds the
 * log up to C_learn. Then C_old,new follows (`settle`).
 */
export const catchUpDone = (s: SpecServer): boolean => {
  if (s.role !== 'leader') return false;
  const { index, config } = configOf(s);
  return (
    isCatchUpConfig(config) &&
    index <= s.commitIndex &&
    config.learners.every(
      (l) => l in s.matchIndex && s.recoveringOf[l] === false && s.matchIndex[l]! >= index,
    )
  );
};

/**
 * After any action (the machine's `always` on the leader state), in this order: a removed leader
 * leaves (what it sent in the step it sent as the leader it was, `sentAs`); a leader whose committed
 * catch-up is done appends C_old,new (its commit rule runs, as after any append).
 */
export const settle = <T extends SpecStep>(step: T): T => {
  if (leavesAsRemoved(step.server))
    return {
      ...step,
      server: { ...becomeFollower(step.server), leaderId: null, removed: true },
      sentAs: step.server,
    };
  if (!catchUpDone(step.server)) return step;
  const s = step.server;
  const joint = configEntry(s.currentTerm, afterCatchUp(configOf(s).config));
  const next = leaderCommits(syncPeers({ ...s, log: [...s.log, joint] }));
  return settle({ ...step, server: next.server, send: [...step.send, ...next.send] });
};

/**
 * The AppendEntries and Heartbeat actions, read as predicates: null when `s` (the sender's state
 * right after it sent `m`) may send `m`, otherwise the reason it may not. `peersBefore`: the
 * sender's peers before the step that sent `m`.
 */
export const leaderMayHaveSent = (
  s: SpecServer,
  m: AppendEntries | Heartbeat,
  peersBefore: readonly NodeId[] = [],
): string | null => {
  if (s.role !== 'leader') return `${s.id} is a ${s.role}, not a leader`;
  if (m.from !== s.id) return `from ${m.from}, sent by ${s.id}`;
  // To a member of its configuration, or of the one before the step (a change may end in the step).
  if (m.to === s.id || !(peers(s).includes(m.to) || peersBefore.includes(m.to)))
    return `addressed to ${m.to}`;
  if (m.term !== s.currentTerm) return `term ${m.term}, leader is at ${s.currentTerm}`;
  if (m.type === 'Heartbeat') {
    const expected = Math.min(s.matchIndex[m.to] ?? 0, s.commitIndex);
    return m.commit === expected
      ? null
      : `heartbeat commit ${m.commit}, expected min(match, commit) = ${expected}`;
  }
  if (m.prevLogIndex < 0 || m.prevLogIndex > s.log.length)
    return `prevLogIndex ${m.prevLogIndex} outside the log`;
  if (termAt(s.log, m.prevLogIndex) !== m.prevLogTerm)
    return `prevLogTerm ${m.prevLogTerm} but the leader's entry ${m.prevLogIndex} has term ${termAt(s.log, m.prevLogIndex)}`;
  if (m.prevLogIndex + m.entries.length > s.log.length) return 'entries past the end of the leader log';
  for (let k = 0; k < m.entries.length; k += 1) {
    if (!sameEntry(m.entries[k]!, s.log[m.prevLogIndex + k]!))
      return `entry ${m.prevLogIndex + 1 + k} differs from the leader's log`;
  }
  if (m.leaderCommit > s.commitIndex) return `leaderCommit ${m.leaderCommit} > commitIndex ${s.commitIndex}`;
  return null;
};

// ---------------------------------------------------------------------------------------------
// Receive

/** UpdateTerm: a message of a higher term makes the receiver a follower of that term. */
const updateTerm = (s: SpecServer, m: RaftMessage): SpecServer => ({
  ...becomeFollower(s),
  currentTerm: m.term,
  votedFor: null,
  // A request from a leader names the leader of the new term; anything else leaves it unknown.
  leaderId: m.type === 'AppendEntries' || m.type === 'Heartbeat' ? m.from : null,
  votes: {},
});

/** The conflict hint of a rejection at `index` (see AppendEntriesResponse in messages.ts). */
export const conflictHint = (
  log: readonly Entry[],
  index: number,
): { conflictTerm: number; conflictIndex: number } => {
  const term = termAt(log, index);
  if (term === undefined) return { conflictTerm: 0, conflictIndex: log.length + 1 };
  let first = index;
  while (first > 1 && termAt(log, first - 1) === term) first -= 1;
  return { conflictTerm: term, conflictIndex: first };
};

const rejectAppend = (s: SpecServer, m: AppendEntries): AppendEntriesResponse => ({
  type: 'AppendEntriesResponse',
  from: s.id,
  to: m.from,
  term: s.currentTerm,
  success: false,
  matchIndex: 0,
  rejectedIndex: m.prevLogIndex,
  ...conflictHint(s.log, m.prevLogIndex),
  incarnation: s.incarnation,
  ...marked(s),
});

const voteResponse = (
  s: SpecServer,
  to: NodeId,
  term: number,
  granted: boolean,
  preVote: boolean,
): RequestVoteResponse => ({
  type: 'RequestVoteResponse',
  from: s.id,
  to,
  term,
  voteGranted: granted,
  preVote,
  incarnation: s.incarnation,
  crashVector: s.crashVector,
});

/** A recovering server's answers say so. */
const marked = (s: SpecServer): { recovering?: true } => (s.recovering ? { recovering: true } : {});

const heartbeatResponse = (s: SpecServer, m: Heartbeat): RaftMessage => ({
  type: 'HeartbeatResponse',
  from: s.id,
  to: m.from,
  term: s.currentTerm,
  seq: m.seq,
  incarnation: s.incarnation,
  ...marked(s),
});

/** A request of an older term is refused with our term; a stale response is dropped. */
const answerStale = (s: SpecServer, m: RaftMessage): SpecStep => {
  switch (m.type) {
    case 'RequestVote':
      return { server: s, send: [voteResponse(s, m.from, s.currentTerm, false, m.preVote)] };
    case 'AppendEntries':
      return { server: s, send: [rejectAppend(s, m)] };
    case 'Heartbeat':
      return {
        server: s,
        send: [heartbeatResponse(s, m)],
      };
    default:
      return unchanged(s);
  }
};

/**
 * PreVote: grant iff the proposed term is above ours, we know no leader, and the candidate's log
 * is up to date. Nothing changes here; a grant carries the proposed term.
 */
const handlePreVoteRequest = (s: SpecServer, m: RequestVote): SpecStep => {
  const granted =
    !s.recovering &&
    m.term > s.currentTerm &&
    s.leaderId === null &&
    logIsUpToDate(s.log, m.lastLogIndex, m.lastLogTerm);
  return { server: s, send: [voteResponse(s, m.from, granted ? m.term : s.currentTerm, granted, true)] };
};

/** HandleRequestVoteRequest (m.term = currentTerm): one vote per term, for an up-to-date log. */
const handleRequestVoteRequest = (s: SpecServer, m: RequestVote): SpecStep => {
  const granted =
    !s.recovering &&
    (s.votedFor === null || s.votedFor === m.from) &&
    logIsUpToDate(s.log, m.lastLogIndex, m.lastLogTerm);
  const next = granted ? { ...becomeFollower(s), votedFor: m.from } : s;
  return { server: next, send: [voteResponse(next, m.from, s.currentTerm, granted, false)] };
};

/** HandleRequestVoteResponse: a candidate counts answers to its current poll or election only. */
const handleRequestVoteResponse = (s: SpecServer, m: RequestVoteResponse): SpecStep => {
  if (s.role !== 'candidate') return unchanged(s);
  const answersPoll = s.phase === 'preVote' && m.preVote && (!m.voteGranted || m.term === s.currentTerm + 1);
  const answersElection = s.phase === 'campaign' && !m.preVote && m.term === s.currentTerm;
  if (!answersPoll && !answersElection) return unchanged(s);
  const raised = raiseCrashVector(s, m.crashVector);
  const incarnation = m.incarnation ?? 0;
  // A vote sent before its voter restarted (the crash vector knows a later incarnation) is dropped.
  if (incarnation < (raised.crashVector[m.from] ?? 0)) return tally(unchanged(raised));
  return tally(
    unchanged({
      ...raised,
      votes: { ...raised.votes, [m.from]: m.voteGranted },
      voteIncarnations: { ...raised.voteIncarnations, [m.from]: incarnation },
    }),
  );
};

/**
 * HandleAppendEntriesRequest (m.term = currentTerm): the sender is the leader of our term.
 * Reject when our log has no entry at prevLogIndex of prevLogTerm; otherwise drop the entries
 * that conflict with the request (and all after them), append what is new, and commit up to
 * min(leaderCommit, last index the request covers). A request never shortens a matching log.
 */
const handleAppendEntriesRequest = (s: SpecServer, m: AppendEntries): SpecStep => {
  if (s.role === 'leader')
    throw new Error(`spec: two leaders in term ${s.currentTerm}: ${s.id} and ${m.from}`);
  const follower: SpecServer = { ...becomeFollower(s), leaderId: m.from };
  if (termAt(follower.log, m.prevLogIndex) !== m.prevLogTerm) {
    return { server: follower, send: [rejectAppend(follower, m)] };
  }
  let log = [...follower.log];
  for (let k = 0; k < m.entries.length; k += 1) {
    const index = m.prevLogIndex + 1 + k;
    const existing = termAt(log, index);
    if (existing === m.entries[k]!.term) continue;
    // A conflict (or the end of our log): keep what precedes it, then take the rest.
    log = [...log.slice(0, index - 1), ...m.entries.slice(k)];
    break;
  }
  const lastNew = m.prevLogIndex + m.entries.length;
  const commitIndex = Math.max(follower.commitIndex, Math.min(m.leaderCommit, lastNew));
  const rejoined = follower.removed && rejoins(follower, log);
  const response: AppendEntriesResponse = {
    type: 'AppendEntriesResponse',
    from: s.id,
    to: m.from,
    term: s.currentTerm,
    success: true,
    matchIndex: lastNew,
    rejectedIndex: 0,
    conflictIndex: 0,
    conflictTerm: 0,
    incarnation: s.incarnation,
    ...marked(s),
  };
  return {
    server: { ...follower, log, commitIndex, removed: !rejoined && follower.removed },
    send: [response],
  };
};

/**
 * A server told it was removed is a member again once a write to its log changes the configuration
 * in force (another entry, or another index) to one that includes it (as a learner too: it is being
 * added again).
 */
const rejoins = (s: SpecServer, log: readonly Entry[]): boolean => {
  const before = configOf(s);
  const after = configInForce(log, s.bootstrap);
  const changed =
    after.index !== before.index ||
    (after.index > 0 && !sameEntry(log[after.index - 1]!, s.log[after.index - 1]!));
  return changed && membersOfConfig(after.config).includes(s.id);
};

/** Heartbeat (m.term = currentTerm): the leader is alive; commit min(commit, our last index). */
const handleHeartbeat = (s: SpecServer, m: Heartbeat): SpecStep => {
  if (s.role === 'leader')
    throw new Error(`spec: two leaders in term ${s.currentTerm}: ${s.id} and ${m.from}`);
  const follower: SpecServer = {
    ...becomeFollower(s),
    leaderId: m.from,
    commitIndex: Math.max(s.commitIndex, Math.min(m.commit, s.log.length)),
  };
  return {
    server: follower,
    send: [heartbeatResponse(s, m)],
  };
};

/**
 * The incarnation of a follower's answer, at a leader: an answer from an earlier start than one
 * already heard is ignored (null); one from a later start forgets the follower's match (its log may
 * be shorter now), and the answer is then handled. The first answer only records it.
 */
const admitIncarnation = (
  s: SpecServer,
  from: NodeId,
  incarnation: number,
  recovering: boolean,
): SpecServer | null => {
  const known = s.incarnationOf[from];
  if (known !== undefined && incarnation < known) return null;
  // Within one incarnation, recovery only completes.
  if (known === incarnation)
    return {
      ...s,
      recoveringOf: { ...s.recoveringOf, [from]: (s.recoveringOf[from] ?? true) && recovering },
    };
  const incarnationOf = { ...s.incarnationOf, [from]: incarnation };
  const recoveringOf = { ...s.recoveringOf, [from]: recovering };
  if (known === undefined) return { ...s, incarnationOf, recoveringOf };
  // A new start: its match starts over, and it counts as heard from (a new progress).
  return {
    ...s,
    incarnationOf,
    recoveringOf,
    matchIndex: { ...s.matchIndex, [from]: 0 },
    recentActive: { ...s.recentActive, [from]: true },
  };
};

/**
 * An answer marks its sender active for CheckQuorum unless it recovers (rule 3), except a server
 * being added (in C_new only, while joint): it is reachable, and the leader of the change keeps its
 * lease while the new servers catch up (they still count toward no commit).
 */
const heardFrom = (s: SpecServer, from: NodeId): SpecServer => {
  const { config } = configOf(s);
  const beingAdded = isJointConfig(config) && !config.outgoing.includes(from);
  return s.recoveringOf[from] && !beingAdded
    ? s
    : { ...s, recentActive: { ...s.recentActive, [from]: true } };
};

/**
 * HandleAppendEntriesResponse: within one incarnation of the follower, match only moves forward
 * (responses may be reordered or duplicated); a new incarnation starts it again from 0.
 */
const handleAppendEntriesResponse = (s: SpecServer, m: AppendEntriesResponse): SpecStep => {
  // A leader counts the answers of the members of its configuration only (a late one from a server
  // that left is ignored).
  if (s.role !== 'leader' || !peers(s).includes(m.from)) return unchanged(s);
  const admitted = admitIncarnation(s, m.from, m.incarnation, m.recovering === true);
  if (admitted === null) return unchanged(s);
  const heard = heardFrom(admitted, m.from);
  if (!m.success) return unchanged(heard);
  const matchIndex = { ...heard.matchIndex, [m.from]: Math.max(heard.matchIndex[m.from] ?? 0, m.matchIndex) };
  return leaderCommits({ ...heard, matchIndex });
};

/** A heartbeat answer tells the leader that the follower is alive (CheckQuorum), and its incarnation. */
const handleHeartbeatResponse = (
  s: SpecServer,
  m: Extract<RaftMessage, { type: 'HeartbeatResponse' }>,
): SpecStep => {
  if (s.role !== 'leader' || !peers(s).includes(m.from)) return unchanged(s);
  const admitted = admitIncarnation(s, m.from, m.incarnation, m.recovering === true);
  if (admitted === null) return unchanged(s);
  // A follower that just finished recovering counts from now on: its match may commit more.
  return leaderCommits(heardFrom(admitted, m.from));
};

// ---------------------------------------------------------------------------------------------
// Recovery (docs/design/recovery.md)

/** Rule 1: raise the crash vector; drop votes of older incarnations; a leader resets their match. */
const raiseCrashVector = (
  s: SpecServer,
  vector: Readonly<Record<NodeId, number>> | undefined,
): SpecServer => {
  if (vector === undefined) return s;
  const { config } = configOf(s);
  let next = s;
  for (const [member, incarnation] of Object.entries(vector)) {
    if (!isMemberOf(config, member) || incarnation <= (next.crashVector[member] ?? 0)) continue;
    next = { ...next, crashVector: { ...next.crashVector, [member]: incarnation } };
    if (member in next.votes && (next.voteIncarnations[member] ?? 0) < incarnation) {
      const votes = { ...next.votes };
      delete votes[member];
      next = { ...next, votes };
    }
    if (next.role === 'leader' && member !== s.id && (next.incarnationOf[member] ?? 0) < incarnation) {
      next = {
        ...next,
        incarnationOf: { ...next.incarnationOf, [member]: incarnation },
        recoveringOf: { ...next.recoveringOf, [member]: true },
        matchIndex: { ...next.matchIndex, [member]: 0 },
        recentActive: { ...next.recentActive, [member]: true },
      };
    }
  }
  return next;
};

const isBlank = (s: SpecServer): boolean => s.currentTerm === 0 && s.log.length === 0;

/** A new round: new nonce, no answers, a RecoveryRequest to every peer. */
const startRecoveryRound = (s: SpecServer): SpecStep => {
  const round = s.recovery.round + 1;
  const next: SpecServer = {
    ...s,
    votedFor: RECOVERING_VOTE,
    recovery: { round, answers: {}, target: null, heardTarget: false, heardLog: s.recovery.heardLog },
  };
  const send: RecoveryRequest[] = peers(s).map((to) => ({
    type: 'RecoveryRequest',
    from: s.id,
    to,
    term: s.currentTerm,
    incarnation: s.incarnation,
    round,
  }));
  // A single-member configuration has no one to ask: it decides at once.
  if (send.length === 0 && canBootstrap(next))
    return unchanged({ ...next, recovering: false, votedFor: null });
  return { server: next, send };
};

/** The retry timer: a round copying from a leader that still sends goes on; any other starts over. */
const retryRecovery = (s: SpecServer): SpecStep => {
  if (canBootstrap(s)) return unchanged({ ...s, recovering: false, votedFor: null });
  return s.recovery.target !== null && s.recovery.heardTarget
    ? unchanged({ ...s, recovery: { ...s.recovery, heardTarget: false } })
    : startRecoveryRound(s);
};

/**
 * Bootstrap, when a round ends: this server and the answers of a majority hold nothing, and no
 * answer of the round holds anything.
 */
const canBootstrap = (s: SpecServer): boolean => {
  if (s.join || !s.recovering || s.recovery.target !== null || !isBlank(s) || s.recovery.heardLog)
    return false;
  const answers = Object.values(s.recovery.answers);
  const answered = (id: NodeId): boolean => id === s.id || s.recovery.answers[id] !== undefined;
  return answers.every((a) => a.blank) && quorumOf(configOf(s).config, answered);
};

/** A new term while recovering: a round that followed a leader starts over; one collecting goes on. */
const enterRecovering = (s: SpecServer): SpecStep =>
  s.recovery.round === 0 || s.recovery.target !== null
    ? startRecoveryRound(s)
    : unchanged({ ...s, votedFor: RECOVERING_VOTE });

/** Every server answers a RecoveryRequest (outside the term rules), after raising its crash vector. */
const handleRecoveryRequest = (s: SpecServer, m: RecoveryRequest): SpecStep => {
  if (m.incarnation < (s.crashVector[m.from] ?? 0)) return unchanged(s);
  const raised = raiseCrashVector(s, { [m.from]: m.incarnation });
  const response: RecoveryResponse = {
    type: 'RecoveryResponse',
    from: s.id,
    to: m.from,
    term: s.currentTerm,
    incarnation: m.incarnation,
    round: m.round,
    recovering: s.recovering,
    blank: isBlank(s),
    holdsLog: s.log.length > 0,
    leaderLastIndex: s.role === 'leader' && peers(s).includes(m.from) ? s.log.length : -1,
    crashVector: raised.crashVector,
  };
  return { server: raised, send: [response] };
};

/**
 * An answer of the current nonce: with a majority of the others not recovering and the leader of the highest
 * term among them, adopt that term as voted in and copy that leader's log up to its last index.
 */
const handleRecoveryResponse = (s: SpecServer, m: RecoveryResponse): SpecStep => {
  const crashed = raiseCrashVector(s, m.crashVector);
  const ours = s.recovering && m.incarnation === s.incarnation;
  // Sticky across rounds: a member whose log is not empty answered, so the cluster exists.
  const raised: SpecServer =
    ours && m.holdsLog && !s.recovery.heardLog
      ? { ...crashed, recovery: { ...crashed.recovery, heardLog: true } }
      : crashed;
  const current = ours && raised.recovery.target === null && m.round === raised.recovery.round;
  if (!current) return unchanged(raised);
  const answersBy = { ...raised.recovery.answers, [m.from]: m };
  const withAnswer: SpecServer = { ...raised, recovery: { ...raised.recovery, answers: answersBy } };
  const answers = Object.values(answersBy);
  const ready = answers.filter((a) => !a.recovering);
  const term = Math.max(withAnswer.currentTerm, ...ready.map((a) => a.term));
  const leader = ready.find((a) => a.leaderLastIndex >= 0 && a.term === term);
  const answered = (id: NodeId): boolean => ready.some((a) => a.from === id);
  if (leader === undefined || !recoveryQuorumOf(configOf(s).config, s.id, answered))
    return unchanged(withAnswer);
  return unchanged({
    ...withAnswer,
    currentTerm: term,
    votedFor: RECOVERING_VOTE,
    leaderId: leader.from,
    recovery: {
      ...withAnswer.recovery,
      target: { leaderId: leader.from, term, lastIndex: leader.leaderLastIndex },
      heardTarget: false,
    },
  });
};

/** AppendEntries while recovering: as any follower, then: does it complete the recovery? */
const appendWhileRecovering = (s: SpecServer, m: AppendEntries): SpecStep => {
  const step = handleAppendEntriesRequest(s, m);
  const target = s.recovery.target;
  let server = step.server;
  if (target?.leaderId === m.from && !s.recovery.heardTarget)
    server = { ...server, recovery: { ...server.recovery, heardTarget: true } };
  const answer = step.send[0];
  const done =
    answer?.type === 'AppendEntriesResponse' &&
    answer.success &&
    target !== null &&
    target.leaderId === m.from &&
    target.term === m.term &&
    answer.matchIndex >= target.lastIndex;
  // Recovered: it counts as having voted (for itself) in the term it adopted.
  if (done)
    server = {
      ...server,
      recovering: false,
      votedFor: s.id,
      recovery: { ...server.recovery, target: null, heardTarget: false },
    };
  return { server, send: step.send };
};

/**
 * Receive: the term rules first (a stale request is refused; a pre-vote request and a granted
 * pre-vote answer never move terms; any other message of a higher term runs UpdateTerm), then
 * the handler of the message's type.
 */
export const receive = (s: SpecServer, m: RaftMessage): SpecStep => settle(receiveMessage(s, m));

/**
 * Membership first, outside the term rules: a `Removed` message tells this server that a committed
 * configuration removed it (unless its own configuration in force is newer and includes it), and a
 * member whose committed configuration removed the sender answers what it sends with `Removed`,
 * except the replication traffic of the current term (`isReplicationOfTerm`), which is handled as
 * such: it comes from the leader of the term, or answers it (a leader ignores answers from servers
 * outside its configuration).
 */
const receiveMessage = (s: SpecServer, m: RaftMessage): SpecStep => {
  if (m.type === 'Removed') return unchanged(learnRemoved(s, m.configIndex));
  if (isFromRemovedServer(s, m.from) && !isReplicationOfTerm(s, m))
    return { server: s, send: [removedMessage(s, m.from)] };
  return receiveInTerm(s, m);
};

/** AppendEntries and Heartbeats of the current term at a follower, and their answers at the leader. */
const isReplicationOfTerm = (s: SpecServer, m: RaftMessage): boolean => {
  if (m.term !== s.currentTerm) return false;
  if (s.role === 'follower') return m.type === 'AppendEntries' || m.type === 'Heartbeat';
  if (s.role === 'leader') return m.type === 'AppendEntriesResponse' || m.type === 'HeartbeatResponse';
  return false;
};

/**
 * Told it was removed (unless it knew, or its own newer configuration includes it, as a learner too):
 * a candidate or leader stops.
 */
const learnRemoved = (s: SpecServer, configIndex: number): SpecServer => {
  const inForce = configOf(s);
  if (s.removed || (membersOfConfig(inForce.config).includes(s.id) && inForce.index > configIndex)) return s;
  return { ...becomeFollower(s), removed: true };
};

/** The sender is on the removed list of this server's committed configuration in force, and no member. */
export const isFromRemovedServer = (s: SpecServer, from: NodeId): boolean => {
  const { index, config } = configOf(s);
  return index <= s.commitIndex && config.removed.includes(from) && !isMemberOf(config, from);
};

const receiveInTerm = (s: SpecServer, m: RaftMessage): SpecStep => {
  if (m.type === 'RecoveryRequest') return handleRecoveryRequest(s, m);
  if (m.type === 'RecoveryResponse') return handleRecoveryResponse(s, m);
  if (m.term < s.currentTerm) return answerStale(s, m);
  if (m.type === 'RequestVote' && m.preVote) return handlePreVoteRequest(s, m);
  if (m.type === 'RequestVoteResponse' && m.preVote && m.voteGranted) return handleRequestVoteResponse(s, m);
  if (m.term > s.currentTerm && s.recovering) {
    const entered = enterRecovering(updateTerm(s, m));
    const handled = receiveInTerm(entered.server, m);
    return { ...handled, send: [...entered.send, ...handled.send] };
  }
  const current = m.term > s.currentTerm ? updateTerm(s, m) : s;
  if (current.recovering && m.type === 'AppendEntries') return appendWhileRecovering(current, m);
  switch (m.type) {
    case 'RequestVote':
      return handleRequestVoteRequest(current, m);
    case 'RequestVoteResponse':
      return handleRequestVoteResponse(current, m);
    case 'AppendEntries':
      return handleAppendEntriesRequest(current, m);
    case 'AppendEntriesResponse':
      return handleAppendEntriesResponse(current, m);
    case 'Heartbeat':
      return handleHeartbeat(current, m);
    case 'HeartbeatResponse':
      return handleHeartbeatResponse(current, m);
    case 'InstallSnapshot':
    case 'InstallSnapshotResponse':
      // The model test never compacts a log, so no snapshot is ever sent; the simulation covers them.
      throw new Error(`the spec has no snapshots, got ${m.type}`);
    case 'Removed':
      // Handled before the term rules (receiveMessage).
      return unchanged(current);
  }
};
