/**
 * diskeyval: a Raft-replicated key/value store for Node.js. `diskeyval(options)` returns a node
 * handle; nothing else lives here (ARCHITECTURE.md).
 */

import { randomBytes, randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { InspectionEvent, Observer } from 'xstate';
import { inspectFunction } from './actors/inspection.js';
import type { MemoryLog } from './actors/memory-log.js';
import { createNode, type Node } from './actors/node.js';
import { dropSupersededAppends } from './actors/peer.js';
import { createReachability } from './actors/reachability.js';
import type { Change } from './actors/store.js';
import { createWalLog, type WalLog } from './actors/wal-log.js';
import { diskeyvalError, isQuorumUnavailable, isStopped } from './errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from './io/codec.js';
import type { KvOperation } from './io/command.js';
import {
  createTlsTransport,
  firstClusterMismatchPerPeer,
  type TlsTransportLogEvent,
  type TlsTransportMetrics,
} from './io/tls-transport.js';
import type { RaftTransport } from './io/transport.js';
import type { WalCutReason } from './io/wal.js';
import { clusterIdFromBytes } from './machines/cluster-id.js';
import {
  type Configuration,
  type MemberAddress,
  membersOf,
  simpleConfiguration,
} from './machines/configuration.js';
import { DEFAULT_MAX_APPEND_BYTES } from './machines/rules/index.js';
import {
  DEFAULT_MAX_VALUE_BYTES,
  encodeCheckedValue,
  MAX_KEY_BYTES,
  validateCallOptions,
  validateKey,
  validateMembers,
  validateReconfigureOptions,
} from './validate.js';

export type ClusterPeer = { nodeId: string; host: string; port: number };

export type DiskeyvalOptions = {
  nodeId: string;
  host?: string;
  port?: number;
  peers: string[] | ClusterPeer[];
  tls?: { cert: string; key: string; ca: string };
  /** A custom transport, such as `createMemoryTransport()` for tests in one process. */
  transport?: RaftTransport;
  /** Base election timeout T in ms; each wait is drawn from [T, 2T). Default 300. */
  electionTimeoutMs?: number;
  /** Leader heartbeat interval in ms. Default 50. */
  heartbeatMs?: number;
  /** How long set/get wait for a majority before rejecting with QUORUM_UNAVAILABLE. Default 5000. */
  proposalTimeoutMs?: number;
  /** A call forwarded to the leader that got no answer within this time is sent again. Default 1200. */
  rpcTimeoutMs?: number;
  /**
   * Largest msgpack-encoded value in bytes; a larger one is refused at `set` (INVALID_ARGUMENT).
   * Default 1 MiB. Must leave the entry (value, key, framing) within half of `maxFrameBytes`.
   */
  maxValueBytes?: number;
  /** Seed for the election timeout generator; random when absent. */
  seed?: number;
  /**
   * XState inspection: an observer or a callback that sees every actor of the node (system ids
   * `<nodeId>/raft`, `<nodeId>/peer:<peerId>`, ...), e.g. `inspect: inspector.inspect` of
   * `createWebSocketInspector` from @statelyai/inspect.
   */
  inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  /**
   * With `inspect`: events of replication traffic (calls, proposals, AppendEntries, Heartbeats and
   * their answers, persists, applies, forwarded writes and reads) the inspector gets per second,
   * at most; past it they are
   * counted in getMetrics().inspection.skippedEvents. Counted per 100 ms of the wall clock, the
   * same slices on every node. Everything else always goes. Default 250; Infinity sends all.
   */
  inspectEventsPerSecond?: number;
  /**
   * Largest wire frame in bytes, both ways (TLS transport). Default 16 MiB, at least 64 KiB. Replication
   * sends at most 1 MiB (or maxFrameBytes / 16) of entries per AppendEntries beyond the first, and
   * snapshots in chunks of 1 MiB (or maxFrameBytes / 4); a tick's messages to a peer that exceed
   * one frame go as several.
   */
  maxFrameBytes?: number;
  /** Transport events, such as rejected connections and why (TLS transport). */
  onTransportEvent?: (event: TlsTransportLogEvent) => void;
  /**
   * Durability: the node keeps its term, vote and log in a write-ahead log in `dir` (created when
   * missing; one dir per node, never shared) and restores them on `start()`. Nothing is
   * acknowledged (a vote, an append, a write) before the state it depends on is fsynced, in groups.
   * `compactEvery` sets the log compaction interval (as the top-level option does). After a
   * compaction, once the WAL file has grown to 4x its size after the last cut (and 1 MiB), it is
   * replaced by the store's snapshot and the entries after it (tmp file, fsync, rename). A snapshot a
   * follower installs is written to the WAL before it is acknowledged. Without `persistence` the
   * node keeps everything in memory.
   */
  persistence?: { dir: string; compactEvery?: number };
  /**
   * Log compaction (Raft §7): once this many entries were applied since the last compaction, the
   * log keeps only the last 5,000 (or `compactEvery`, if fewer) applied entries; a follower that
   * needs older ones gets a snapshot of the store (InstallSnapshot, sent in 1 MiB chunks). Default
   * 10,000.
   */
  compactEvery?: number;
  /** Restart state for tests (what the node persisted before, in memory); not with `persistence`. */
  log?: MemoryLog;
  /**
   * Never bootstrap a new cluster (etcd's initial-cluster-state=existing): a node that starts without
   * state waits until a member that holds the cluster's state answers, and recovers from it.
   */
  join?: boolean;
  /**
   * Operator: complete recovery from the members that still hold state even when a majority of the
   * cluster lost its own. May lose writes acknowledged only by the members that forgot them (README,
   * "Restarts, recovery and bootstrap").
   */
  forceRecovery?: boolean;
};

export type ChangeEvent = { key: string; value: unknown; deleted: boolean; index: number };
export type LeaderEvent = { nodeId: string | null; term: number };

/**
 * The configuration this node uses changed (README "Membership"): `voters` are the voting members
 * (C_new), `outgoing` the members of the configuration being left while a change is in its joint
 * phase (C_old; empty otherwise), `index` the log index of the entry that holds it.
 */
export type MembershipEvent = { voters: string[]; outgoing: string[]; learners: string[]; index: number };

/**
 * One member of the configuration in use, as `getPeers()` lists it: where it listens (absent with a
 * custom transport), whether it is this node, its role as this node knows it, and its part in a
 * change: `voter` (in the old and the new configuration, or no change is going on), `learner` (being
 * added, still catching up: it gets the log and votes in nothing), `joining` (in the new
 * configuration only) or `leaving` (in the old one only).
 */
export type PeerInfo = {
  nodeId: string;
  host?: string;
  port?: number;
  self: boolean;
  role: 'leader' | 'candidate' | 'follower';
  voting: 'voter' | 'learner' | 'joining' | 'leaving';
};

/** A member for `reconfigure`: `{ nodeId, host, port }`; a bare id or `{ nodeId }` only with a custom transport. */
export type MemberSpec = ClusterPeer | { nodeId: string } | string;

/** Options of `reconfigure`: how long to wait for the change to be committed (default max(proposalTimeoutMs, 10 election timeouts)). */
export type ReconfigureOptions = { timeoutMs?: number };

/**
 * Something the node noticed and kept running through: a listener that threw, a WAL tail cut at
 * start, an entry that could not be decoded, peers that stay unreachable. `code` says which.
 */
export type WarningEvent = { code: WarningCode; message: string; [detail: string]: unknown };
export type WarningCode =
  | 'LISTENER_ERROR'
  | 'WAL_TAIL_CUT'
  | 'ENTRY_UNDECODABLE'
  | 'PEERS_UNREACHABLE'
  | 'RECOVERY_BLOCKED'
  | 'CLUSTER_MISMATCH'
  | 'REMOVED';

/** The node stopped itself (fail-stop); fired once. Every call rejects with `code` from then on. */
export type FailedEvent = { code: 'DISK_FAILED'; message: string; error: Error };

/** A torn WAL tail that start() cut (see README "Persistence and recovery"). */
export type WalRecovery = { cutAt: number; cutBytes: number; cutRecords: number; reason: WalCutReason };

export type RaftMetrics = {
  nodeId: string;
  role: 'follower' | 'candidate' | 'leader';
  term: number;
  leaderId: string | null;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
  /** Log compactions since start, and snapshots sent to / installed from the leader. */
  compactions: number;
  snapshotsSent: number;
  snapshotsInstalled: number;
  /** Leaderships this node has won since start. */
  elections: number;
  /** Machine events that carried a batch of proposals / of reads. */
  proposalBatches: number;
  readBatches: number;
  forwardedWrites: number;
  forwardedReads: number;
  retries: number;
  duplicatesSkipped: number;
  malformedMessages: number;
  pendingWrites: number;
  pendingReads: number;
  keys: number;
  peers: Array<{ nodeId: string; messagesSent: number; messagesReceived: number; entriesSent: number }>;
  /** The mTLS transport's counters (frames, bytes, rejected connections by reason); null for a custom transport. */
  transport: TlsTransportMetrics | null;
  /** Size of the write-ahead log file in bytes; null without `persistence` (or before start). */
  walBytes: number | null;
  /** Groups written to the WAL since start, each one write and one fdatasync; null without `persistence`. */
  walSyncs: number | null;
  /** Records (persist outputs) in the WAL file; null without `persistence`. */
  walRecords: number | null;
  /** Times the WAL file was cut (replaced by a snapshot and the entries after it); null without `persistence`. */
  walRewrites: number | null;
  /** Why the node stopped itself, when a WAL write or sync failed (fail-stop); null otherwise. */
  walError: string | null;
  /**
   * What start() cut from a torn WAL tail (written after the last completed fsync, so never
   * acknowledged): where, how many bytes and records, and why; null when nothing was cut (or
   * without `persistence`). Also reported by a `warning` event with code WAL_TAIL_CUT.
   */
  walRecovery: WalRecovery | null;
  /** Listeners (`change`, `leader`, `warning`) that threw; each was reported and the node went on. */
  listenerErrors: number;
  /** Committed entries that did not decode, applied as no-ops (each one an ENTRY_UNDECODABLE warning). */
  undecodableEntries: number;
  /**
   * The node started without its earlier state (memory mode, an empty persistence dir) and has not
   * recovered yet: it votes in no election and counts toward no majority (README, "Restarts,
   * recovery and bootstrap").
   */
  recovering: boolean;
  /** The cluster id this node knows (minted at bootstrap, README "Restarts, recovery and bootstrap"), or null. */
  clusterId: string | null;
  /** Handshakes refused and connections closed because the peer's cluster id differs (TLS transport). */
  clusterMismatches: number;
  /**
   * With `inspect`: inspection events sent to it, and events of replication traffic its budget
   * kept back (`inspectEventsPerSecond`); null without `inspect`.
   */
  inspection: { sentEvents: number; skippedEvents: number } | null;
};

/** Per-call options. `forward: false` refuses with NOT_LEADER instead of forwarding to the leader. */
export type CallOptions = { forward?: boolean; timeoutMs?: number; signal?: AbortSignal };
export type GetOptions = CallOptions & { consistency?: 'linearizable' | 'local' };

export type DiskeyvalNode = {
  start(): Promise<void>;
  set(key: string, value: unknown, options?: CallOptions): Promise<void>;
  get<T = unknown>(key: string, options?: GetOptions): Promise<T | undefined>;
  delete(key: string, options?: CallOptions): Promise<void>;
  /** Sets the whole new voting membership (README "Membership"). */
  reconfigure(members: MemberSpec[], options?: ReconfigureOptions): Promise<void>;
  /** The whole membership in use, this node included, with roles. */
  getPeers(): PeerInfo[];
  end(): Promise<void>;
  isLeader(): boolean;
  leaderId(): string | null;
  getMetrics(): RaftMetrics;
  on(event: 'change', listener: (change: ChangeEvent) => void): DiskeyvalNode;
  on(event: 'leader', listener: (leader: LeaderEvent) => void): DiskeyvalNode;
  on(event: 'warning', listener: (warning: WarningEvent) => void): DiskeyvalNode;
  on(event: 'failed', listener: (failure: FailedEvent) => void): DiskeyvalNode;
  on(event: 'membership', listener: (membership: MembershipEvent) => void): DiskeyvalNode;
  off(event: NodeEventName, listener: (arg: never) => void): DiskeyvalNode;
};

export type NodeEventName = 'change' | 'leader' | 'warning' | 'failed' | 'membership';

/**
 * Calls every listener of `event` with `arg`; a listener that throws never reaches the node (it is
 * called from the apply step, an election, a timer): the error becomes a `warning` event with code
 * LISTENER_ERROR, and a `warning` listener that throws is counted and otherwise ignored. Not
 * EventEmitter's `error` event, which throws when nobody listens.
 */
const createSafeEmitter = (counters: { listenerErrors: number }) => {
  const emitter = new EventEmitter();
  const emit = (event: NodeEventName, arg: unknown): void => {
    for (const listener of emitter.listeners(event)) {
      try {
        (listener as (arg: unknown) => void)(arg);
      } catch (error) {
        counters.listenerErrors += 1;
        if (event === 'warning') continue;
        emit('warning', {
          code: 'LISTENER_ERROR',
          message: `a '${event}' listener threw: ${(error as Error)?.message ?? String(error)}`,
          event,
          error,
        } satisfies WarningEvent);
      }
    }
  };
  return { emitter, emit };
};

/** A node that has reached no peer for this long (or half of proposalTimeoutMs, if less) says so. */
const PEERS_UNREACHABLE_AFTER_MS = 2000;
/** How long a node may stay recovering before it warns (RECOVERY_BLOCKED). */
const RECOVERY_BLOCKED_AFTER_MS = 3000;

const peerIdOf = (peer: string | ClusterPeer): string => (typeof peer === 'string' ? peer : peer.nodeId);

/**
 * What one message may carry, from maxFrameBytes and maxValueBytes. A `set` makes one log entry
 * (the value, its key of at most MAX_KEY_BYTES, a few bytes of framing) and an AppendEntries always
 * carries at least one entry, so the largest entry must fit in one frame with room to spare: at
 * most half a frame. An AppendEntries carries at most `maxAppendBytes` of entries beyond its first,
 * and a pipeline of 8 of them stays within half a frame; snapshot chunks within a quarter.
 */
const sizesOf = (options: DiskeyvalOptions) => {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const maxValueBytes = options.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  if (!Number.isSafeInteger(maxFrameBytes) || maxFrameBytes < 64 * 1024 || maxFrameBytes > 0xffff_ffff) {
    throw diskeyvalError('INVALID_ARGUMENT', 'options.maxFrameBytes must be an integer from 64 KiB to 4 GiB');
  }
  if (!Number.isSafeInteger(maxValueBytes) || maxValueBytes < 1) {
    throw diskeyvalError('INVALID_ARGUMENT', 'options.maxValueBytes must be a positive integer');
  }
  const largestEntryBytes = maxValueBytes + MAX_KEY_BYTES + ENTRY_FRAMING_BYTES;
  if (largestEntryBytes > maxFrameBytes / 2) {
    throw diskeyvalError(
      'INVALID_ARGUMENT',
      `options.maxValueBytes (${maxValueBytes}) must leave an entry within half of maxFrameBytes (${maxFrameBytes}): at most ${Math.floor(maxFrameBytes / 2) - MAX_KEY_BYTES - ENTRY_FRAMING_BYTES}`,
    );
  }
  return {
    maxFrameBytes,
    maxValueBytes,
    maxAppendBytes: Math.min(DEFAULT_MAX_APPEND_BYTES, Math.floor(maxFrameBytes / 16)),
    snapshotChunkBytes: Math.min(1024 * 1024, Math.floor(maxFrameBytes / 4)),
  };
};

/** Command encoding around a key and a value: op, tag, msgpack headers (generous). */
const ENTRY_FRAMING_BYTES = 1024;

const checkOptions = (options: DiskeyvalOptions): void => {
  sizesOf(options);
  if (typeof options?.nodeId !== 'string' || options.nodeId.length === 0) {
    throw diskeyvalError('INVALID_ARGUMENT', 'options.nodeId must be a non-empty string');
  }
  if (!Array.isArray(options.peers))
    throw diskeyvalError('INVALID_ARGUMENT', 'options.peers must be an array');
  if (
    options.compactEvery !== undefined &&
    !(Number.isSafeInteger(options.compactEvery) && options.compactEvery > 0)
  ) {
    throw diskeyvalError('INVALID_ARGUMENT', 'options.compactEvery must be a positive integer');
  }
  const rate = options.inspectEventsPerSecond;
  if (rate !== undefined && !(typeof rate === 'number' && rate >= 10)) {
    throw diskeyvalError(
      'INVALID_ARGUMENT',
      'options.inspectEventsPerSecond must be a number of at least 10, or Infinity',
    );
  }
  const ids = options.peers.map(peerIdOf);
  if (ids.some((id) => typeof id !== 'string' || id.length === 0) || new Set(ids).size !== ids.length) {
    throw diskeyvalError('INVALID_ARGUMENT', 'options.peers must name distinct, non-empty node ids');
  }
  if (ids.includes(options.nodeId))
    throw diskeyvalError('INVALID_ARGUMENT', 'options.peers must not list the node itself');
  const electionTimeoutMs = options.electionTimeoutMs ?? 300;
  const heartbeatMs = options.heartbeatMs ?? 50;
  if (!(heartbeatMs > 0 && electionTimeoutMs > heartbeatMs)) {
    throw diskeyvalError('INVALID_ARGUMENT', 'heartbeatMs must be positive and below electionTimeoutMs');
  }
  if (options.persistence !== undefined) {
    const { persistence } = options;
    if (typeof persistence !== 'object' || persistence === null || Array.isArray(persistence)) {
      throw diskeyvalError(
        'INVALID_ARGUMENT',
        'options.persistence must be an object { dir, compactEvery? }',
      );
    }
    if (
      typeof persistence.dir !== 'string' ||
      persistence.dir.length === 0 ||
      persistence.dir.includes('\0')
    ) {
      throw diskeyvalError('INVALID_ARGUMENT', 'options.persistence.dir must be a non-empty path');
    }
    if (
      persistence.compactEvery !== undefined &&
      !(Number.isSafeInteger(persistence.compactEvery) && persistence.compactEvery > 0)
    ) {
      throw diskeyvalError('INVALID_ARGUMENT', 'options.persistence.compactEvery must be a positive integer');
    }
    if (options.log !== undefined) {
      throw diskeyvalError('INVALID_ARGUMENT', 'give options.persistence or options.log, not both');
    }
  }
  if (!options.transport) {
    if (!options.tls || typeof options.host !== 'string' || !Number.isInteger(options.port)) {
      throw diskeyvalError('INVALID_ARGUMENT', 'give host, port and tls (or a custom transport)');
    }
    if (options.peers.some((peer) => typeof peer === 'string')) {
      throw diskeyvalError('INVALID_ARGUMENT', 'with the TLS transport, peers need { nodeId, host, port }');
    }
  }
};

const transportFor = (
  options: DiskeyvalOptions,
  log: (event: TlsTransportLogEvent) => void,
  clusterId: () => string | null,
  clusterSeen: () => void,
) => {
  if (options.transport) return { transport: options.transport, tls: null };
  const tls = createTlsTransport({
    clusterId,
    host: options.host!,
    port: options.port!,
    peers: options.peers as ClusterPeer[],
    tls: options.tls!,
    ...(options.maxFrameBytes ? { maxFrameBytes: options.maxFrameBytes } : {}),
    log,
    coalesce: dropSupersededAppends,
    // A member's handshake carries the cluster id: a node being added never bootstraps beside it.
    onPeerClusterId: () => clusterSeen(),
  });
  return { transport: tls as unknown as RaftTransport, tls };
};

/** Creates a node. Call `start()` before anything else, and `end()` when done. */
/** One node's handle state, shared by the short functions below. */
type HandleContext = {
  options: DiskeyvalOptions;
  counters: { listenerErrors: number };
  emitter: EventEmitter;
  emit: (event: NodeEventName, arg: unknown) => void;
  maxValueBytes: number;
  tls: ReturnType<typeof createTlsTransport> | null;
  /** Which peers cannot be reached (the PEERS_UNREACHABLE warning); follows the configuration. */
  reachability: { setPeers: (peers: readonly string[]) => void };
  node: Node;
  started: boolean;
  ended: boolean;
  leader: string | null;
  wal: WalLog | null;
  /** Set once, when the node stopped itself on a disk error: every call rejects with DISK_FAILED. */
  diskFailure: string | null;
  recoveryWatch: ReturnType<typeof setInterval> | null;
  /** Where members listen: options.peers, this node, and every configuration and call seen since. */
  addresses: Map<string, MemberAddress>;
};

/** The transport (the given one, or mTLS) with the reachability watch that names unreachable peers. */
const wireTransport = (
  options: DiskeyvalOptions,
  emit: HandleContext['emit'],
  clusterId: () => string | null,
  clusterSeen: () => void,
) => {
  const proposalTimeoutMs = options.proposalTimeoutMs ?? 5000;
  const reachability = createReachability({
    peers: options.peers.map(peerIdOf),
    afterMs: Math.min(PEERS_UNREACHABLE_AFTER_MS, proposalTimeoutMs / 2),
    nowMs: () => performance.now(),
    onAllUnreachable: (peers, forMs) => {
      const list = peers.map(({ nodeId, reason }) => `${nodeId} (${reason})`).join(', ');
      options.onTransportEvent?.({ event: 'peers-unreachable', peers, forMs: Math.round(forMs) });
      emit('warning', {
        code: 'PEERS_UNREACHABLE',
        message: `${options.nodeId} has reached no peer for ${Math.round(forMs)} ms: ${list}; calls need a majority running`,
        peers,
        forMs: Math.round(forMs),
      } satisfies WarningEvent);
    },
  });
  const warnClusterMismatch = firstClusterMismatchPerPeer(({ peer, ours, theirs, remote }) =>
    emit('warning', {
      code: 'CLUSTER_MISMATCH',
      message: `${options.nodeId} refuses ${peer} (${remote}): it belongs to cluster ${theirs}, this node to ${ours} (two clusters share a CA and node ids; check peers and ports)`,
      peer,
      ours,
      theirs,
    } satisfies WarningEvent),
  );
  const onEvent = (event: TlsTransportLogEvent): void => {
    reachability.observe(event);
    warnClusterMismatch(event);
    options.onTransportEvent?.(event);
  };
  const { transport, tls } = transportFor(options, onEvent, clusterId, clusterSeen);
  return { transport, tls, reachability };
};

/**
 * The user's `inspect`, called so that one that throws never reaches the node (it runs inside the
 * actors' steps, where a throw would break a delivery): each error is counted in listenerErrors,
 * and the first is a LISTENER_ERROR warning (an observer that always throws would otherwise warn
 * on every event).
 */
const safeInspect = (
  inspect: NonNullable<DiskeyvalOptions['inspect']>,
  { counters, emit }: Pick<HandleContext, 'counters' | 'emit'>,
): ((event: InspectionEvent) => void) => {
  const next = inspectFunction(inspect);
  let warned = false;
  return (event) => {
    try {
      next(event);
    } catch (error) {
      counters.listenerErrors += 1;
      if (warned) return;
      warned = true;
      emit('warning', {
        code: 'LISTENER_ERROR',
        message: `the inspect observer threw: ${(error as Error)?.message ?? String(error)} (later throws are only counted, in listenerErrors)`,
        event: 'inspect',
        error,
      } satisfies WarningEvent);
    }
  };
};

/** The node's own options from the public ones; its callbacks become node events. */
const nodeOptionsOf = (
  ctx: HandleContext,
  wired: ReturnType<typeof wireTransport>,
): Parameters<typeof createNode>[0] => {
  const { options, emit } = ctx;
  const sizes = sizesOf(options);
  const persistenceDir = options.persistence?.dir;
  const compactEvery = options.persistence?.compactEvery ?? options.compactEvery;
  return {
    id: options.nodeId,
    voters: [options.nodeId, ...options.peers.map(peerIdOf)],
    transport: wired.transport,
    electionTimeoutMs: options.electionTimeoutMs ?? 300,
    heartbeatMs: options.heartbeatMs ?? 50,
    proposalTimeoutMs: options.proposalTimeoutMs ?? 5000,
    unreachablePeers: wired.reachability.unreachable,
    ...(options.rpcTimeoutMs ? { rpcTimeoutMs: options.rpcTimeoutMs } : {}),
    seed: options.seed ?? randomInt(2 ** 31),
    ...(options.join ? { join: true } : {}),
    ...(options.forceRecovery ? { forceRecovery: true } : {}),
    session: randomInt(2 ** 47),
    newClusterId: clusterIdFromBytes(randomBytes(16)),
    maxAppendBytes: sizes.maxAppendBytes,
    snapshotChunkBytes: sizes.snapshotChunkBytes,
    ...(options.log ? { log: options.log } : {}),
    ...(compactEvery !== undefined ? { compactEvery } : {}),
    ...(persistenceDir !== undefined
      ? {
          openLog: async () => {
            ctx.wal = await createWalLog(persistenceDir, options.nodeId);
            return ctx.wal;
          },
        }
      : {}),
    ...(options.inspect ? { inspect: safeInspect(options.inspect, ctx) } : {}),
    ...(options.inspectEventsPerSecond !== undefined
      ? { inspectEventsPerSecond: options.inspectEventsPerSecond }
      : {}),
    // A WAL write or sync failed: the node stopped itself; calls reject with DISK_FAILED from now on.
    onFatal: (error: Error) => {
      ctx.ended = true;
      if (ctx.diskFailure !== null) return;
      ctx.diskFailure = `${options.nodeId} stopped itself: ${error.message} (free space or replace the disk, then restart the node; its WAL is intact up to its last sync)`;
      emit('failed', { code: 'DISK_FAILED', message: ctx.diskFailure, error } satisfies FailedEvent);
    },
    wantsChanges: () => ctx.emitter.listenerCount('change') > 0,
    onChange: (change: Change) => {
      emit('change', change);
    },
    onUndecodable: (index, reason) => {
      emit('warning', {
        code: 'ENTRY_UNDECODABLE',
        message: `entry ${index} does not decode (${reason}); applied as a no-op on every node`,
        index,
      } satisfies WarningEvent);
    },
    onRole: (status) => {
      if (status.leaderId === ctx.leader) return;
      ctx.leader = status.leaderId;
      emit('leader', { nodeId: ctx.leader, term: status.term } satisfies LeaderEvent);
    },
    ...membershipOptionsOf(ctx),
  };
};

// ---- membership (README "Membership"; machines/configuration.ts) ------------------------------

/** The addresses options.peers and this node's own options give (the bootstrap configuration's). */
const bootstrapAddresses = (options: DiskeyvalOptions): Map<string, MemberAddress> => {
  const addresses = new Map<string, MemberAddress>();
  for (const peer of options.peers)
    if (typeof peer !== 'string') addresses.set(peer.nodeId, { host: peer.host, port: peer.port });
  if (typeof options.host === 'string' && Number.isInteger(options.port) && options.port! > 0)
    addresses.set(options.nodeId, { host: options.host, port: options.port! });
  return addresses;
};

/**
 * The transport follows the configuration in use: it admits and dials the members of C_new, while a
 * change is joint of C_old, and while it catches up its learners (io/tls-transport.ts `setPeers`; a member it takes out stays
 * reachable until it is told it was removed). A custom transport routes by id and is left alone.
 */
const followConfiguration = (ctx: HandleContext, config: Configuration): void => {
  for (const [id, address] of Object.entries(config.addresses)) ctx.addresses.set(id, address);
  ctx.reachability.setPeers(membersOf(config).filter((nodeId) => nodeId !== ctx.options.nodeId));
  if (!ctx.tls) return;
  const peers = [];
  for (const nodeId of membersOf(config)) {
    const address = ctx.addresses.get(nodeId);
    if (nodeId !== ctx.options.nodeId && address) peers.push({ nodeId, ...address });
  }
  ctx.tls.setPeers(peers);
};

/** The node's membership callbacks: the transport follows, listeners hear of it. */
const membershipOptionsOf = (ctx: HandleContext) => ({
  addresses: Object.fromEntries(ctx.addresses) as Record<string, MemberAddress>,
  onMembership: (config: Configuration, index: number) => {
    followConfiguration(ctx, config);
    ctx.emit('membership', {
      voters: [...config.voters],
      outgoing: [...config.outgoing],
      learners: [...config.learners],
      index,
    } satisfies MembershipEvent);
  },
  onRemoved: (configIndex: number) => {
    ctx.emit('warning', {
      code: 'REMOVED',
      message: `${ctx.options.nodeId} was removed from the cluster by the configuration at index ${configIndex}: it no longer campaigns, and its calls reject with REMOVED (README "Membership")`,
      configIndex,
    } satisfies WarningEvent);
  },
});

/** The configuration in use: the node's once started, else the bootstrap one (this node and options.peers). */
const configurationOf = (ctx: HandleContext): Configuration => {
  const view = ctx.started ? ctx.node.membership() : null;
  if (view) return view.config;
  const { nodeId, peers } = ctx.options;
  return simpleConfiguration([nodeId, ...peers.map(peerIdOf)], Object.fromEntries(ctx.addresses));
};

const peersOfHandle = (ctx: HandleContext): PeerInfo[] => {
  const config = configurationOf(ctx);
  const status = ctx.started && !ctx.ended ? ctx.node.status() : null;
  // A node told it was removed before it applied the change's C_new still holds an older
  // configuration: it lists itself as leaving, never as a voter.
  const removed = ctx.node.membership()?.removed ?? false;
  return membersOf(config).map((nodeId): PeerInfo => {
    const self = nodeId === ctx.options.nodeId;
    const inNew = config.voters.includes(nodeId);
    const inOld = config.outgoing.length === 0 || config.outgoing.includes(nodeId);
    const role = self && status ? status.role : nodeId === status?.leaderId ? 'leader' : 'follower';
    const address = config.addresses[nodeId] ?? ctx.addresses.get(nodeId);
    return {
      nodeId,
      ...(address ? { host: address.host, port: address.port } : {}),
      self,
      role,
      voting:
        self && removed
          ? 'leaving'
          : config.learners.includes(nodeId)
            ? 'learner'
            : inNew && inOld
              ? 'voter'
              : inNew
                ? 'joining'
                : 'leaving',
    };
  });
};

/** reconfigure: checked here (INVALID_ARGUMENT, STOPPED), then one call of the node. */
const reconfigureOn = async (ctx: HandleContext, members: unknown, options: unknown): Promise<void> => {
  const checked = validateMembers(members, ctx.options.transport === undefined);
  const { timeoutMs } = validateReconfigureOptions(options);
  running(ctx);
  for (const { nodeId, host, port } of checked)
    if (host !== undefined && port !== undefined) ctx.addresses.set(nodeId, { host, port });
  try {
    await ctx.node.reconfigure(checked, timeoutMs);
  } catch (error) {
    throw failedCall(ctx, error);
  }
};

const walRecoveryOf = (ctx: HandleContext): WalRecovery | null => {
  const info = ctx.wal?.info();
  if (!info || info.cutAt === null) return null;
  return { cutAt: info.cutAt, cutBytes: info.cutBytes, cutRecords: info.cutRecords, reason: info.cutReason! };
};

/** A STOPPED rejection of a call that the disk failure ended becomes DISK_FAILED. */
const failedCall = (ctx: HandleContext, error: unknown): unknown => {
  if (ctx.diskFailure !== null && isStopped(error)) return diskeyvalError('DISK_FAILED', ctx.diskFailure);
  // A node that has not recovered cannot help a majority form: say so on the error.
  if (isQuorumUnavailable(error) && ctx.node.metrics().recovering)
    Object.assign(error as object, { recovering: true });
  return error;
};

/**
 * RECOVERY_BLOCKED: a node still recovering after RECOVERY_BLOCKED_AFTER_MS says so once, naming
 * the members it waits for; again if it recovers and is blocked anew. A check per second, unref'd.
 */
const watchRecovery = (ctx: HandleContext): void => {
  let since: number | null = null;
  let reported = false;
  ctx.recoveryWatch = setInterval(() => {
    if (ctx.ended) {
      if (ctx.recoveryWatch) clearInterval(ctx.recoveryWatch);
      return;
    }
    const waitingFor = ctx.node.recoveryWaitingFor();
    if (!ctx.node.metrics().recovering) {
      since = null;
      reported = false;
      return;
    }
    since ??= performance.now();
    if (reported || performance.now() - since < RECOVERY_BLOCKED_AFTER_MS) return;
    reported = true;
    ctx.emit('warning', {
      code: 'RECOVERY_BLOCKED',
      message: `${ctx.options.nodeId} started without its earlier state and cannot recover yet: it needs answers from a majority of the other members that hold state, the leader among them; waiting for ${waitingFor.join(', ') || 'a leader'} (see README "Restarts, recovery and bootstrap"; forceRecovery recovers from the members that still hold state)`,
      waitingFor,
    } satisfies WarningEvent);
  }, 1000);
  ctx.recoveryWatch.unref?.();
};

const running = (ctx: HandleContext): void => {
  if (ctx.diskFailure !== null) throw diskeyvalError('DISK_FAILED', ctx.diskFailure);
  if (!ctx.started || ctx.ended)
    throw diskeyvalError('STOPPED', `${ctx.options.nodeId} is ${ctx.ended ? 'ended' : 'not started'}`);
};

const startHandle = async (ctx: HandleContext): Promise<void> => {
  if (ctx.diskFailure !== null) throw diskeyvalError('DISK_FAILED', ctx.diskFailure);
  if (ctx.ended) throw diskeyvalError('STOPPED', `${ctx.options.nodeId} was ended`);
  if (ctx.started) return;
  ctx.started = true;
  try {
    await ctx.node.start();
  } catch (error) {
    // Nothing runs (the WAL could not be opened or replayed, or the transport could not listen).
    ctx.ended = true;
    throw error;
  }
  watchRecovery(ctx);
  // On a restart the log's configuration wins over options.peers (which only bootstrap an empty log).
  const inUse = ctx.node.membership();
  if (inUse) followConfiguration(ctx, inUse.config);
  const recovery = walRecoveryOf(ctx);
  if (recovery) {
    // After start() resolves, so that a listener added right after `await start()` hears it too.
    setImmediate(() =>
      ctx.emit('warning', {
        code: 'WAL_TAIL_CUT',
        message: `${ctx.options.nodeId}: cut a torn tail of ${recovery.cutBytes} bytes (${recovery.cutRecords} records, ${recovery.reason}) at byte ${recovery.cutAt} of ${ctx.wal?.path}: past the last sync marker: a write a crash tore (never acknowledged), or damage to the last group written (see README, Persistence and recovery)`,
        ...recovery,
      } satisfies WarningEvent),
    );
  }
};

/** A set or delete: checked here, then one call of the node. */
const writeOn = async (
  ctx: HandleContext,
  operation: KvOperation,
  callOptions?: CallOptions,
): Promise<void> => {
  running(ctx);
  try {
    await ctx.node.write(operation, callOptions);
  } catch (error) {
    throw failedCall(ctx, error);
  }
};

const metricsOfHandle = (ctx: HandleContext): RaftMetrics => {
  const metrics = ctx.node.metrics();
  const status = ctx.started && !ctx.ended ? ctx.node.status() : null;
  const walStats = ctx.wal?.stats();
  return {
    nodeId: ctx.options.nodeId,
    role: status?.role ?? 'follower',
    term: status?.term ?? 0,
    leaderId: status?.leaderId ?? null,
    commitIndex: status?.commitIndex ?? 0,
    appliedIndex: status?.appliedIndex ?? 0,
    lastIndex: status?.lastIndex ?? 0,
    compactions: metrics.compactions,
    snapshotsSent: metrics.snapshotsSent,
    snapshotsInstalled: metrics.snapshotsInstalled,
    elections: metrics.elections,
    proposalBatches: metrics.proposalBatches,
    readBatches: metrics.readBatches,
    forwardedWrites: metrics.forwardedWrites,
    forwardedReads: metrics.forwardedReads,
    retries: metrics.retries,
    duplicatesSkipped: metrics.duplicatesSkipped,
    malformedMessages: metrics.malformedMessages,
    pendingWrites: metrics.pendingWrites,
    pendingReads: metrics.pendingReads,
    keys: metrics.storeSize,
    peers: metrics.peers,
    transport: ctx.tls ? ctx.tls.metrics() : null,
    walBytes: walStats?.bytes ?? null,
    walSyncs: walStats?.syncs ?? null,
    walRecords: walStats?.records ?? null,
    walRewrites: walStats?.rewrites ?? null,
    walError: metrics.fatalError,
    walRecovery: walRecoveryOf(ctx),
    listenerErrors: ctx.counters.listenerErrors,
    undecodableEntries: metrics.undecodableEntries,
    recovering: ctx.started && !ctx.ended ? metrics.recovering : false,
    clusterId: ctx.node.clusterId(),
    clusterMismatches: ctx.tls ? ctx.tls.metrics().clusterMismatches : 0,
    inspection: metrics.inspection,
  };
};

const handleOf = (ctx: HandleContext): DiskeyvalNode => {
  const { node } = ctx;
  const handle: DiskeyvalNode = {
    start: () => startHandle(ctx),
    async set(key, value, callOptions) {
      validateKey(key);
      validateCallOptions(callOptions);
      // Encoded once and decoded again here: what the command carries is proven to round-trip.
      // Within maxValueBytes, the entry fits in half a frame (sizesOf): it can always be replicated.
      const encodedValue = encodeCheckedValue(value, ctx.maxValueBytes);
      await writeOn(ctx, { op: 'set', key, value, encodedValue }, callOptions);
    },
    async get<T>(key: string, getOptions?: GetOptions) {
      validateKey(key);
      validateCallOptions(getOptions);
      running(ctx);
      try {
        if (getOptions?.consistency !== 'local') await node.readBarrier(getOptions);
      } catch (error) {
        throw failedCall(ctx, error);
      }
      return node.get(key) as T | undefined;
    },
    async delete(key, callOptions) {
      validateKey(key);
      validateCallOptions(callOptions);
      await writeOn(ctx, { op: 'delete', key }, callOptions);
    },
    reconfigure: (members, reconfigureOptions) => reconfigureOn(ctx, members, reconfigureOptions),
    getPeers: () => peersOfHandle(ctx),
    async end() {
      ctx.ended = true;
      if (ctx.recoveryWatch) clearInterval(ctx.recoveryWatch);
      // Idempotent; also waits for a stop the node began itself (a failed WAL write).
      if (ctx.started) await node.stop();
    },
    isLeader: () => ctx.started && !ctx.ended && node.status().role === 'leader',
    leaderId: () => (ctx.started && !ctx.ended ? node.status().leaderId : null),
    getMetrics: () => metricsOfHandle(ctx),
    on(event: NodeEventName, listener: (arg: never) => void) {
      ctx.emitter.on(event, listener as (arg: unknown) => void);
      return handle;
    },
    off(event, listener) {
      ctx.emitter.off(event, listener as (arg: unknown) => void);
      return handle;
    },
  };
  return handle;
};

/** Creates a node. Call `start()` before anything else, and `end()` when done. */
export const diskeyval = (options: DiskeyvalOptions): DiskeyvalNode => {
  checkOptions(options);
  const counters = { listenerErrors: 0 };
  const { emitter, emit } = createSafeEmitter(counters);
  // The transport asks for the cluster id the node knows (machines/cluster-id.ts) at each check.
  const wired = wireTransport(
    options,
    emit,
    () => ctx.node.clusterId(),
    () => ctx.node?.clusterSeen(),
  );
  const ctx = {
    options,
    counters,
    emitter,
    emit,
    maxValueBytes: sizesOf(options).maxValueBytes,
    tls: wired.tls,
    reachability: wired.reachability,
    started: false,
    ended: false,
    leader: null,
    wal: null,
    diskFailure: null,
    recoveryWatch: null,
    addresses: bootstrapAddresses(options),
  } as Omit<HandleContext, 'node'> as HandleContext;
  ctx.node = createNode(nodeOptionsOf(ctx, wired));
  return handleOf(ctx);
};

export default diskeyval;
export type { MemoryLog, PersistedState } from './actors/memory-log.js';
export { createMemoryLog } from './actors/memory-log.js';
export type { DiskeyvalError, DiskeyvalErrorCode } from './errors.js';
export {
  ERROR_CODES,
  isAborted,
  isChangeInProgress,
  isDirLocked,
  isDiskeyvalError,
  isDiskFailed,
  isInvalidArgument,
  isNotLeader,
  isQuorumUnavailable,
  isRemoved,
  isStopped,
  isTimeout,
  isWalCorrupt,
} from './errors.js';
export {
  createCertificateAuthority,
  createClusterCertificates,
  issueNodeCertificate,
  writeClusterCertificates,
} from './io/certs.js';
export { createMemoryTransport, type MemoryTransport } from './io/memory-transport.js';
export {
  createTlsTransport,
  type TlsTransportLogEvent,
  type TlsTransportMetrics,
  type TlsTransportOptions,
} from './io/tls-transport.js';
export type { RaftTransport, TransportEndpoint, TransportMessage } from './io/transport.js';
export { raftMachine } from './machines/raft.machine.js';
export { DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES } from './validate.js';
