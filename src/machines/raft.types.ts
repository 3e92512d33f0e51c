/**
 * The raft machine's context, input, events and outputs. The machine is pure (ARCHITECTURE.md
 * rule 1): what it needs from the world arrives as events below, and what it wants done leaves as
 * emitted outputs that the node's actors carry out.
 */

import type { ClusterId } from './cluster-id.js';
import type { Configuration, MemberAddress } from './configuration.js';
import type { CrashVector, Entry, NodeId, RaftMessage, RecoveryResponse } from './messages.js';
import type { Progress } from './progress.js';
import type { RaftLog } from './raft-log.js';
import type { RngState } from './rng.js';

export type Role = 'follower' | 'candidate' | 'leader';

/**
 * The state a server must persist before it answers an RPC (Figure 2, "Persistent state"), and the
 * cluster id once the server applied it (cluster-id.ts: committed, so it never changes). The
 * machine never sets `clusterId`; the log keeps it across the machine's later hard states.
 */
export type HardState = { term: number; votedFor: NodeId | null; clusterId?: ClusterId };

/** One ReadIndex round (dissertation §6.4): reads that wait for a heartbeat quorum at `seq`. */
export type ReadRound = { seq: number; readIndex: number; ids: number[]; acks: NodeId[] };

export type RaftTimings = {
  /** Base election timeout T; each wait is drawn from [T, 2T). */
  electionTimeoutMs: number;
  heartbeatMs: number;
};

export type RaftInput = RaftTimings & {
  id: NodeId;
  /**
   * Every voting member, the local server included: the bootstrap configuration, in force only
   * while neither the log nor the snapshot holds one (configuration.ts).
   */
  voters: readonly NodeId[];
  /** Where the bootstrap voters listen (configuration.ts, `addresses`). */
  addresses?: Readonly<Record<NodeId, MemberAddress>>;
  /** What the server persisted before it (re)started. */
  hardState?: HardState;
  /**
   * The snapshot the server restarted from: the log's entries follow its last index (§7); `config`
   * is the configuration in force at that index, when the cluster was ever reconfigured.
   */
  snapshot?: { index: number; term: number; config?: Configuration };
  entries?: readonly Entry[];
  /** Seed of the generator that randomizes election timeouts. */
  seed: number;
  /** Pipeline bound: unanswered AppendEntries per follower. */
  maxInflight?: number;
  /** Most entries in one AppendEntries. */
  maxEntriesPerAppend?: number;
  /**
   * Most bytes of entry data in one AppendEntries (default 1 MiB); one entry always goes, however
   * large, so the size of one entry is bounded where it is proposed (`set`), not here.
   */
  maxAppendBytes?: number;
  /** This start of the server (messages.ts, Incarnation): larger than any earlier start's. */
  incarnation?: number;
  /**
   * The log is on disk and reports what is durable with `persisted` events. A leader then counts
   * itself toward a commit only up to that index, so it may replicate before its own fsync
   * (dissertation §10.2.1). Without it, the log is durable as soon as it is written.
   */
  durable?: boolean;
  /**
   * The server starts without its earlier state (a memory log, an empty dir): it is `recovering`
   * and takes part in no majority until it has recovered (docs/design/recovery.md).
   */
  recovering?: boolean;
  /** Never bootstrap a new cluster: recover from members that hold state, or wait (the `join` option). */
  join?: boolean;
  /** Operator: complete recovery from the members that still hold state even without a majority. */
  forceRecovery?: boolean;
  /** The id this server mints if it becomes the first leader of a new cluster (cluster-id.ts). */
  newClusterId?: string;
};

/** The leader a recovering server copies its log from: up to `lastIndex`, in `term`. */
export type RecoveryTarget = { leaderId: NodeId; term: number; lastIndex: number };

/** One round of recovery: the answers to the RecoveryRequests of nonce (incarnation, round). */
export type RecoveryState = {
  round: number;
  answers: Record<NodeId, RecoveryResponse>;
  target: RecoveryTarget | null;
  /** The target leader sent entries since the last retry timeout (the round is not stuck). */
  heardTarget: boolean;
  /**
   * Some answer of this recovery, in any round, came from a member whose log is not empty: the
   * cluster exists (and has an id), so this server never bootstraps another (a slow answer that
   * missed one round must not let empty members start over beside it).
   */
  heardLog: boolean;
};

/** Counted in place, for tests and metrics: the hard cases of recovery that happened. */
export type RecoveryCounters = {
  rounds: number;
  recovered: number;
  bootstrapped: number;
  forced: number;
  /** A vote dropped because its voter was known to have restarted since (crash vector). */
  staleVotesDropped: number;
  /** Answers a leader got marked `recovering` and did not count. */
  recoveringAnswers: number;
  /** Rounds restarted because the term moved on (a leader died or was replaced mid-recovery). */
  restartedByTerm: number;
  /** Recovery rounds that met a new term (a recovery racing an election). */
  termChanges: number;
};

/** A configuration and the index of the entry that holds it (0: bootstrap; the snapshot's index). */
export type ConfigAt = { readonly index: number; readonly config: Configuration };

/** Counted in place, for tests and metrics: the hard cases of membership change that happened. */
export type MembershipCounters = {
  /** Configurations that a truncation removed from the log (the server fell back to an older one). */
  truncated: number;
  /** Configurations taken from a snapshot (InstallSnapshot). */
  fromSnapshot: number;
  /** A leader stepped down because the committed C_new does not include it. */
  leaderRemoved: number;
  /** `Removed` answers sent to a removed server's messages. */
  removedAnswers: number;
  /** Messages from removed servers that tried to campaign (a RequestVote, pre-vote or not). */
  removedCampaigns: number;
  /** Catch-up configurations appended (a change that adds servers, §4.2.1). */
  catchUps: number;
  /** Catch-ups whose learners caught up: C_old,new appended. */
  catchUpsCompleted: number;
  /** Catch-ups cancelled by a call for the voters in force. */
  catchUpsCancelled: number;
};

export type RaftContext = {
  readonly id: NodeId;
  /**
   * The configurations of the log, oldest first: the first is the base (bootstrap, or the
   * snapshot's, at the snapshot's index), then one per config entry still in the log. The last is
   * in force (dissertation §4.1). Copied on change, which is rare.
   */
  configs: readonly ConfigAt[];
  /** The configuration in force: the last of `configs`. */
  config: Configuration;
  /** This server learned that a committed configuration removed it (a `Removed` answer, or it led). */
  removed: boolean;
  readonly membershipCounters: MembershipCounters;
  readonly electionTimeoutMs: number;
  readonly heartbeatMs: number;
  readonly maxInflight: number;
  readonly maxEntriesPerAppend: number;
  readonly maxAppendBytes: number;
  readonly durable: boolean;
  readonly incarnation: number;
  /**
   * Leader only, changed in place like progress: followers whose progress a higher incarnation
   * reset, and answers ignored because they came from an earlier incarnation (tests and metrics).
   */
  readonly incarnationCounters: { resets: number; staleIgnored: number };
  readonly join: boolean;
  readonly forceRecovery: boolean;
  /** The id minted into the first no-op if this server leads a new cluster (cluster-id.ts). */
  readonly newClusterId: string | undefined;
  /** True from an amnesiac start until recovery completes (docs/design/recovery.md). */
  recovering: boolean;
  recovery: RecoveryState;
  readonly recoveryCounters: RecoveryCounters;
  /** The largest incarnation heard of each member (copied on change, which is rare). */
  crashVector: CrashVector;
  /** The incarnation of each voter whose answer `votes` holds. */
  voteIncarnations: Record<NodeId, number>;
  // Persistent state on all servers (Figure 2).
  currentTerm: number;
  votedFor: NodeId | null;
  log: RaftLog;
  // Volatile state on all servers.
  commitIndex: number;
  /** The longest prefix of the log known to be on disk (durable logs only). */
  persistedIndex: number;
  leaderId: NodeId | null;
  rng: RngState;
  /** The period of the `tick` event (ticks.ts, tickMsOf): the follower's election timer counts them. */
  readonly tickMs: number;
  /** The election timeout drawn for the current wait, from [T, 2T) (§5.2): candidates' XState delays. */
  randomizedElectionTimeoutMs: number;
  /** The same draw in whole ticks: a follower starts an election once this many ticks pass. */
  randomizedElectionTimeoutTicks: number;
  /** Ticks since the follower last heard from the leader, granted a vote or became follower. */
  electionElapsedTicks: number;
  /** Answers received in the current pre-vote or election: granted or not, by voter. */
  votes: Record<NodeId, boolean>;
  // Volatile state on leaders (reinitialized after election).
  progress: Record<NodeId, Progress>;
  readSeq: number;
  readRounds: ReadRound[];
  /** Reads that arrived before this leader committed an entry of its own term. */
  pendingReadIds: number[];
};

/** Events from the world. `message` carries every RPC; the machine routes it by term first. */
export type RaftEvent =
  | { type: 'message'; message: RaftMessage }
  | { type: 'propose'; batchId: number; commands: Uint8Array[] }
  | { type: 'readIndex'; ids: number[] }
  /**
   * Change the voters to `voters` by joint consensus (§6): a leader appends C_old,new, and C_new
   * once that is committed. `addresses` gives where new members listen.
   */
  | {
      type: 'reconfigure';
      requestId: number;
      voters: NodeId[];
      addresses: Record<NodeId, MemberAddress>;
    }
  | { type: 'persisted'; index: number }
  /** The node snapshotted the state machine up to at least `index`: compact the log that far. */
  | { type: 'compact'; index: number }
  /**
   * One period of the node's clock (`tickMs`): a follower counts it toward its election timeout,
   * a recovering one toward its retry; candidates and leaders ignore it (their timers are delays).
   */
  | { type: 'tick' }
  /**
   * The transport met a server that knows a cluster id (its handshake carried one): a cluster exists,
   * so a recovering server never bootstraps another (recovery.ts, `heardLog`).
   */
  | { type: 'clusterSeen' }
  /** The election timer expires now, whatever the ticks say (tests and tools). */
  | { type: 'electionTimeout' }
  | { type: 'heartbeatTimeout' }
  | { type: 'checkQuorum' }
  // Routed RPCs: raised by the machine itself once the term check has passed.
  | { type: 'RequestVote'; message: Extract<RaftMessage, { type: 'RequestVote' }> }
  | { type: 'RequestVoteResponse'; message: Extract<RaftMessage, { type: 'RequestVoteResponse' }> }
  | { type: 'AppendEntries'; message: Extract<RaftMessage, { type: 'AppendEntries' }> }
  | { type: 'AppendEntriesResponse'; message: Extract<RaftMessage, { type: 'AppendEntriesResponse' }> }
  | { type: 'Heartbeat'; message: Extract<RaftMessage, { type: 'Heartbeat' }> }
  | { type: 'HeartbeatResponse'; message: Extract<RaftMessage, { type: 'HeartbeatResponse' }> }
  | { type: 'InstallSnapshot'; message: Extract<RaftMessage, { type: 'InstallSnapshot' }> }
  | { type: 'RecoveryRequest'; message: Extract<RaftMessage, { type: 'RecoveryRequest' }> }
  | { type: 'RecoveryResponse'; message: Extract<RaftMessage, { type: 'RecoveryResponse' }> }
  | {
      type: 'InstallSnapshotResponse';
      message: Extract<RaftMessage, { type: 'InstallSnapshotResponse' }>;
    };

/**
 * Outputs, carried out by the node in emission order, with one exception that the machine decides
 * (dissertation §10.2.1; etcd-io/raft's messages-after-append):
 *
 * **Persist order.** An output waits until every persist emitted ahead of it (`persist`, and the
 * log part of `installSnapshot`) is durable, unless it says it may go before: only a `send` with
 * `beforePersist: true` may, and the machine gives that flag only to messages that promise nothing
 * about the sender's disk (rules, mayLeaveBeforePersist: a leader's AppendEntries and Heartbeat;
 * the leader counts itself toward a commit only up to what is `persisted`). Every answer (a vote,
 * an append or snapshot acknowledgement), vote request, recovery message, commit, apply and client
 * answer waits. With a log that is durable as soon as it is written, nothing waits.
 */
export type RaftEmitted =
  | {
      type: 'persist';
      hardState: HardState | null;
      /** Entries to write starting at `fromIndex`, replacing whatever the log held from there on. */
      fromIndex: number;
      entries: Entry[];
    }
  /** Messages in the order the rule sent them; `beforePersist` as stated above. */
  | { type: 'send'; messages: RaftMessage[]; beforePersist: boolean }
  /**
   * Persist the snapshot (log now starts after `index`, keeping its suffix when `keptSuffix`) and
   * reset the state machine from `data`. A persist: what follows it waits until it is durable.
   */
  | { type: 'installSnapshot'; index: number; term: number; data: Uint8Array; keptSuffix: boolean }
  | { type: 'committed'; firstIndex: number; entries: Entry[] }
  | { type: 'proposalsAccepted'; batchId: number; firstIndex: number; term: number }
  | { type: 'proposalsRejected'; batchId: number; leaderId: NodeId | null }
  | { type: 'readsReady'; ids: number[]; readIndex: number }
  /** A reconfigure was appended as C_old,new at (`index`, `term`); C_new follows once it commits.
   * `unchanged`: the configuration in force (committed, at `index`) already is the one asked for. */
  | { type: 'reconfigureAccepted'; requestId: number; index: number; term: number; unchanged: boolean }
  /**
   * A reconfigure was refused: `NOT_LEADER` (ask `leaderId`), `LEADER_NOT_READY` (the leader has not
   * committed an entry of its term yet: ask again), `CHANGE_IN_PROGRESS` (the configuration in force
   * is joint or not yet committed), or `INVALID_ARGUMENT`.
   */
  | {
      type: 'reconfigureRejected';
      requestId: number;
      code: 'NOT_LEADER' | 'LEADER_NOT_READY' | 'CHANGE_IN_PROGRESS' | 'INVALID_ARGUMENT';
      leaderId: NodeId | null;
    }
  /** The configuration in force changed (a config entry appended or truncated, a snapshot installed). */
  | { type: 'membership'; config: Configuration; index: number }
  /** This server learned that it was removed (configuration index `configIndex`). */
  | { type: 'removed'; configIndex: number }
  | { type: 'readsRejected'; ids: number[]; leaderId: NodeId | null };

/** Whether `emitted` may be carried out before the persists emitted ahead of it are durable. */
export const goesBeforePersist = (emitted: RaftEmitted): boolean =>
  emitted.type === 'send' && emitted.beforePersist;

export type Outcome = {
  patch?: Partial<RaftContext>;
  send?: RaftMessage[];
  emitted?: RaftEmitted[];
};
