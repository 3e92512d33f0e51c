/**
 * The messages Raft servers exchange (Raft paper, Figure 2, plus the extensions etcd-io/raft has:
 * PreVote, heartbeats that carry a read-index sequence number, and a conflict hint on rejection).
 *
 * Contract: every message names its sender (`from`), its receiver (`to`) and the sender's
 * `term`. Messages are plain data: they survive a msgpack round trip unchanged.
 */

import type { Configuration } from './configuration.js';

export type NodeId = string;

/**
 * The vote a recovering server persists (docs/design/recovery.md): no vote at all, and a mark that
 * survives a crash in the middle of recovery, so that the server recovers again after it (a node id
 * is never empty).
 */
export const RECOVERING_VOTE: NodeId = '';

/**
 * Every start of a server gets a new, larger incarnation number, and every answer a follower sends
 * its leader carries it (AppendEntriesResponse, HeartbeatResponse, InstallSnapshotResponse). A log
 * may get shorter only across a restart (a memory log is empty again, a torn WAL tail is cut), so
 * a leader that hears a higher incarnation than before forgets what it knew of that follower's log
 * and probes again; answers with a lower one were sent before the restart and are ignored
 * (progress.ts). Within one incarnation a follower's matched prefix only grows.
 */
export type Incarnation = number;

/**
 * What a log entry carries. `noop` is the entry every new leader appends (Raft paper §8); `config`
 * holds a configuration (configuration.ts, `encodeConfiguration`), in force from the moment it is
 * in the log (dissertation §4.1).
 */
export type EntryKind = 'noop' | 'command' | 'config';

/**
 * One log entry. `data` is the command, encoded once by the proposer and shipped as bytes
 * everywhere after that (never re-encoded per hop).
 */
export type Entry = {
  readonly term: number;
  readonly kind: EntryKind;
  readonly data: Uint8Array | null;
};

/** RequestVote RPC (Figure 2). With `preVote` set, `term` is the term the sender would campaign in (§9.6). */
export type RequestVote = {
  type: 'RequestVote';
  from: NodeId;
  to: NodeId;
  term: number;
  lastLogIndex: number;
  lastLogTerm: number;
  preVote: boolean;
};

/**
 * The largest incarnation of each member a server has heard of (Michael, Ports et al., DISC 2017):
 * it rides only on the messages that grant something a restart could make untrue (vote answers,
 * recovery answers), never on the replication hot path. See docs/design/recovery.md.
 */
export type CrashVector = Record<NodeId, number>;

/**
 * `incarnation` is the voter's, `crashVector` its crash vector: a candidate drops a vote whose
 * voter it knows to have restarted since (docs/design/recovery.md, rule 1). Both are absent only in
 * hand-made test messages.
 */
export type RequestVoteResponse = {
  type: 'RequestVoteResponse';
  from: NodeId;
  to: NodeId;
  term: number;
  voteGranted: boolean;
  preVote: boolean;
  incarnation?: number;
  crashVector?: CrashVector;
};

/**
 * Recovery (docs/design/recovery.md; Viewstamped Replication Revisited §4.3): a server that started
 * without its earlier state asks every member, with a nonce (`round` within its `incarnation`).
 * Outside the term rules: its `term` is the sender's current term and is never adopted from it.
 */
export type RecoveryRequest = {
  type: 'RecoveryRequest';
  from: NodeId;
  to: NodeId;
  term: number;
  incarnation: number;
  round: number;
};

/**
 * The answer to a RecoveryRequest, echoing its nonce (`incarnation` of the asker, `round`).
 * `leaderLastIndex` is the answering leader's last log index (-1 when it does not lead); `blank`
 * says the answering server holds no state at all (term 0, empty log), which only bootstrap uses;
 * `holdsLog` says its log is not empty (an entry or a snapshot): a cluster exists, so the asker never
 * bootstraps another for the rest of its recovery (docs/design/recovery.md).
 */
export type RecoveryResponse = {
  type: 'RecoveryResponse';
  from: NodeId;
  to: NodeId;
  term: number;
  incarnation: number;
  round: number;
  recovering: boolean;
  blank: boolean;
  holdsLog: boolean;
  leaderLastIndex: number;
  crashVector: CrashVector;
};

/** AppendEntries RPC (Figure 2). `entries[i]` goes to index `prevLogIndex + 1 + i`. */
export type AppendEntries = {
  type: 'AppendEntries';
  from: NodeId;
  to: NodeId;
  term: number;
  prevLogIndex: number;
  prevLogTerm: number;
  entries: Entry[];
  leaderCommit: number;
};

/**
 * Reply to AppendEntries. On success `matchIndex` is the last index known to match the leader.
 * On rejection `rejectedIndex` is the request's prevLogIndex and the conflict hint lets the
 * leader skip a whole term per round trip (§5.3, "the leader can decrement nextIndex to bypass
 * all of the conflicting entries in that term"): `conflictTerm` is the term of the follower's entry
 * at rejectedIndex (0 when the follower's log is shorter) and `conflictIndex` the first index the
 * follower holds of that term (or its lastIndex + 1 when shorter).
 */
export type AppendEntriesResponse = {
  type: 'AppendEntriesResponse';
  from: NodeId;
  to: NodeId;
  term: number;
  success: boolean;
  matchIndex: number;
  rejectedIndex: number;
  conflictIndex: number;
  conflictTerm: number;
  /** The sender's incarnation (see {@link Incarnation}). */
  incarnation: number;
  /** Set while the sender is recovering: the leader replicates to it but does not count it. */
  recovering?: true;
};

/**
 * Leader heartbeat. `commit` is min(leader commit, the receiver's known match) so a follower never
 * commits an entry it has not been shown to match. `seq` numbers heartbeat rounds for ReadIndex.
 */
export type Heartbeat = {
  type: 'Heartbeat';
  from: NodeId;
  to: NodeId;
  term: number;
  commit: number;
  seq: number;
};

export type HeartbeatResponse = {
  type: 'HeartbeatResponse';
  from: NodeId;
  to: NodeId;
  term: number;
  seq: number;
  incarnation: number;
  recovering?: true;
};

/**
 * InstallSnapshot RPC (Figure 13, dissertation §5): the leader sends its state machine's snapshot
 * to a follower that needs entries the leader has compacted. The raft machine sends it with
 * `data: null` and the snapshot point of its log; the node replaces the point and the data with
 * the store's snapshot when it sends (a later snapshot is as good: it covers only committed
 * entries). Large snapshots cross the network in chunks (`chunkOffset`, `totalBytes`, Figure 13's
 * offset and done); the machine only ever sees whole ones.
 */
export type InstallSnapshot = {
  type: 'InstallSnapshot';
  from: NodeId;
  to: NodeId;
  term: number;
  lastIncludedIndex: number;
  lastIncludedTerm: number;
  data: Uint8Array | null;
  chunkOffset: number;
  totalBytes: number;
  /**
   * The configuration in force at `lastIncludedIndex` (configuration.ts): the node attaches it with
   * the store's snapshot, and the receiver's log falls back to it. Absent only from the machine's
   * own requests (which carry no data either) and from snapshots of a cluster never reconfigured.
   */
  config?: Configuration;
};

/** Reply to InstallSnapshot: the follower's log now matches the leader's up to `matchIndex`. */
export type InstallSnapshotResponse = {
  type: 'InstallSnapshotResponse';
  from: NodeId;
  to: NodeId;
  term: number;
  matchIndex: number;
  incarnation: number;
  recovering?: true;
};

/**
 * A follower got part of a chunked InstallSnapshot: `receivedBytes` of the snapshot at
 * `lastIncludedIndex` (of `totalBytes`) so far. Flow control only, outside the raft machine: the
 * leader's node sends the next chunks as these arrive, a window at a time (actors/snapshot-transfer.ts).
 */
export type SnapshotChunkAck = {
  type: 'SnapshotChunkAck';
  from: NodeId;
  to: NodeId;
  term: number;
  lastIncludedIndex: number;
  totalBytes: number;
  receivedBytes: number;
};

const isCountField = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0;

export const isChunkAck = (message: { type: string }): message is SnapshotChunkAck => {
  const ack = message as Partial<SnapshotChunkAck>;
  return (
    ack.type === 'SnapshotChunkAck' &&
    isCountField(ack.term) &&
    isCountField(ack.lastIncludedIndex) &&
    isCountField(ack.totalBytes) &&
    isCountField(ack.receivedBytes)
  );
};

/**
 * A member's answer to a message from a server that a committed configuration removed (configuration.ts,
 * `removed`; as etcd answers a removed member): the receiver stops campaigning and its calls reject
 * with REMOVED. `configIndex` is the index of the configuration that says so.
 */
export type Removed = {
  type: 'Removed';
  from: NodeId;
  to: NodeId;
  term: number;
  configIndex: number;
};

export type RaftMessage =
  | Removed
  | RequestVote
  | RequestVoteResponse
  | AppendEntries
  | AppendEntriesResponse
  | Heartbeat
  | HeartbeatResponse
  | InstallSnapshot
  | InstallSnapshotResponse
  | RecoveryRequest
  | RecoveryResponse;

export type RaftMessageType = RaftMessage['type'];

export const RAFT_MESSAGE_TYPES: readonly RaftMessageType[] = [
  'Removed',
  'RequestVote',
  'RequestVoteResponse',
  'AppendEntries',
  'AppendEntriesResponse',
  'Heartbeat',
  'HeartbeatResponse',
  'InstallSnapshot',
  'InstallSnapshotResponse',
  'RecoveryRequest',
  'RecoveryResponse',
];

/** Messages that ask for a reply (the lab suites count these as RPCs). */
export const isRequest = (message: RaftMessage): boolean =>
  message.type === 'RequestVote' ||
  message.type === 'AppendEntries' ||
  message.type === 'Heartbeat' ||
  message.type === 'InstallSnapshot';
