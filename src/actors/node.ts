/**
 * A diskeyval node as one XState actor system (ARCHITECTURE.md): `createNode` builds the root
 * actor (system id: the node id), whose children are the raft actor (the role machine), the log
 * actor, a peer actor per remote member, the store actor, the requests actor and the transport
 * endpoint actor, each with the system id `<node>/<actor>`. They talk only through events
 * (events.ts). What this module keeps is the handle that the public API (src/index.ts), the
 * simulator (test/sim) and the unit tests share: start and stop, calls (gathered per tick into one
 * event for the requests actor), and read-only views for status and metrics.
 */
import {
  type Actor,
  type AnyActorRef,
  createActor,
  enqueueActions,
  type InspectionEvent,
  type Observer,
  setup,
  spawnChild,
} from 'xstate';
import { encodeCommand, type KvOperation } from '../io/command.js';
import type { RaftTransport, TransportEndpoint, TransportMessage } from '../io/transport.js';
import { assert } from '../machines/assert.js';
import { type Configuration, type MemberAddress, membersOf } from '../machines/configuration.js';
import type { NodeId, RaftMessage } from '../machines/messages.js';
import { emptyMembershipCounters, emptyRecoveryCounters, initialConfigs } from '../machines/rules/index.js';
import { tickMsOf } from '../machines/ticks.js';
import type { CallOptions } from './calls.js';
import { type Clock, createDeadlines } from './deadlines.js';
import {
  hidden as hideDeps,
  type NewCall,
  type ReconfigureCall,
  type RootEvent,
  relay,
  type SystemIds,
  systemIdsOf,
} from './events.js';
import {
  DEFAULT_INSPECT_EVENTS_PER_SECOND,
  type Inspect,
  type InspectionCounters,
  inspectSystem,
  summarizingInspect,
} from './inspection.js';
import { type LogView, logActor } from './log-actor.js';
import { type MembershipView, membershipActor } from './membership.js';
import { createMemoryLog, type LogStorage } from './memory-log.js';
import { type PeerCounters, type PeerMetrics, peerActor } from './peer.js';
import { type RaftCounters, type RaftDeps, type RaftStatus, raftActorLogic, statusOf } from './raft.js';
import { type RequestsView, requestsActor } from './requests.js';
import type { Change, Store } from './store.js';
import { configOfSnapshot, type StoreSnapshot } from './store.js';
import { type StoreCounters, storeActor } from './store-actor.js';
import { type TransportCounters, transportActor } from './transport.js';

export type NodeOptions = {
  id: NodeId;
  /** The bootstrap voters (this node included), in force until the log holds a configuration. */
  voters: readonly NodeId[];
  /** Where the bootstrap voters listen (configuration entries carry the addresses). */
  addresses?: Readonly<Record<NodeId, MemberAddress>>;
  /** The configuration in force changed (machines/configuration.ts): the transport follows it. */
  onMembership?: (config: Configuration, index: number) => void;
  /** This node learned that a committed configuration removed it. */
  onRemoved?: (configIndex: number) => void;
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
  log?: LogStorage;
  /** Opens the log on `start()` (a WAL on disk), instead of `log`; `stop()` closes it. */
  openLog?: () => Promise<LogStorage>;
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
  /** Observes every actor of the node (XState inspection): an observer or a function. */
  inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void);
  /** Replication traffic the inspector gets per second (inspection.ts); default 250, Infinity: all. */
  inspectEventsPerSecond?: number;
  /** The wall clock in ms for the inspection budget's slices (default `nowMs` when given, else Date.now). */
  wallClockMs?: () => number;
  onChange?: (change: Change) => void;
  /** Whether anyone listens to changes now (default: whether onChange is given). */
  wantsChanges?: () => boolean;
  onRole?: (status: RaftStatus) => void;
  /** The peers this node cannot connect to now, and why (the hint of QUORUM_UNAVAILABLE errors). */
  unreachablePeers?: () => Array<{ nodeId: NodeId; reason: string }>;
  /** A committed entry did not decode and was applied as a no-op (store.ts). */
  onUndecodable?: (index: number, reason: string) => void;
};

export type NodeStatus = {
  id: NodeId;
  role: 'follower' | 'candidate' | 'leader';
  term: number;
  leaderId: NodeId | null;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
};

/** What the handle reads of the actors (each actor sets its part when it starts; never written here). */
type Views = {
  membership?: MembershipView;
  store?: Store;
  storeCounters?: StoreCounters;
  log?: LogView;
  requests?: RequestsView;
  transportCounters?: TransportCounters;
  peers: Map<NodeId, { metrics: PeerMetrics; counters: PeerCounters }>;
  /** What the inspector got and what its budget kept from it; absent without `inspect`. */
  inspection?: InspectionCounters;
};

/** A start with no state at all: no term, no entry, no snapshot (a memory log, an empty dir). */
const isBlankStart = (persisted: ReturnType<LogStorage['persisted']>): boolean =>
  (persisted.hardState?.term ?? 0) === 0 && persisted.entries.length === 0 && !persisted.snapshot;

const realClock: Clock = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

const DEFAULT_COMPACT_EVERY = 10_000;
const DEFAULT_SNAPSHOT_CHUNK_BYTES = 1024 * 1024;
const DEFAULT_SNAPSHOT_WINDOW_CHUNKS = 4;

/** Compaction and snapshot sizes from the options, checked. */
const sizesOf = (options: NodeOptions) => {
  const compactEvery =
    options.compactEvery === undefined
      ? DEFAULT_COMPACT_EVERY
      : options.compactEvery || Number.POSITIVE_INFINITY;
  const keepEntries = options.keepEntries ?? Math.min(5000, compactEvery);
  const chunkBytes = options.snapshotChunkBytes ?? DEFAULT_SNAPSHOT_CHUNK_BYTES;
  const windowBytes = (options.snapshotWindowChunks ?? DEFAULT_SNAPSHOT_WINDOW_CHUNKS) * chunkBytes;
  assert(compactEvery > 0 && keepEntries >= 0 && chunkBytes > 0, 'bad compaction options');
  assert(windowBytes >= chunkBytes, 'snapshotWindowChunks must be >= 1');
  return { compactEvery, keepEntries, chunkBytes, windowBytes };
};

/** What the log restarted from, and the machine's input for this start. */
type Boot = {
  log: LogStorage;
  persisted: ReturnType<LogStorage['persisted']>;
  incarnation: number;
  endpoint: TransportEndpoint;
};

/** The snapshot a restart begins from, with the configuration its header carries (membership). */
const snapshotInputOf = (snapshot: StoreSnapshot) => {
  const config = configOfSnapshot(snapshot.data);
  return { index: snapshot.index, term: snapshot.term, ...(config ? { config } : {}) };
};

/** The machine's input: who it is, what the log restarted from, its limits (raft.types.ts). */
const raftInputOf = (options: NodeOptions, boot: Boot) => {
  const { persisted, log, incarnation } = boot;
  return {
    id: options.id,
    voters: options.voters,
    ...(options.addresses ? { addresses: options.addresses } : {}),
    electionTimeoutMs: options.electionTimeoutMs,
    heartbeatMs: options.heartbeatMs,
    seed: options.seed,
    hardState: persisted.hardState,
    ...(persisted.snapshot ? { snapshot: snapshotInputOf(persisted.snapshot) } : {}),
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
  };
};

/** The membership actor's input: the configuration the node starts with, the callbacks of the options. */
const membershipInputOf = (
  options: NodeOptions,
  wiring: Wiring,
  initial: { config: Configuration; index: number },
  retryMs: number,
) => ({
  ids: systemIdsOf(options.id),
  id: options.id,
  clock: wiring.clock,
  retryMs,
  initial,
  onMembership: (config: Configuration, index: number) => options.onMembership?.(config, index),
  onRemoved: (configIndex: number) => options.onRemoved?.(configIndex),
  views: wiring.views,
});

/** The root's action on `membersChanged`: spawn the new members' peers, stop the removed members'. */
const followMembers = (
  self: NodeId,
  peerIds: Set<NodeId>,
  views: Views,
  spawnPeer: (peerId: NodeId) => unknown,
  announceRole: (peerId: NodeId) => void,
) =>
  enqueueActions(({ enqueue, event }) => {
    const members = new Set((event as RootEvent).members.filter((member) => member !== self));
    for (const peerId of [...peerIds]) {
      if (members.has(peerId)) continue;
      peerIds.delete(peerId);
      // Its counters leave the metrics with it.
      views.peers.delete(peerId);
      enqueue.stopChild(`peer:${peerId}`);
    }
    for (const peerId of members) {
      if (peerIds.has(peerId)) continue;
      peerIds.add(peerId);
      enqueue(spawnPeer(peerId) as never);
      enqueue(() => announceRole(peerId));
    }
  });

/** Everything the root's children need, besides what the log restarted from. */
type Wiring = {
  options: NodeOptions;
  views: Views;
  raftDeps: RaftDeps;
  deadlines: ReturnType<typeof createDeadlines>;
  defer: (fn: () => void) => void;
  nowMs: () => number;
  onReceive: (deliver: ((message: TransportMessage) => void) | null) => void;
  onFatal: (error: Error) => void;
  clock: Clock;
  /** Tells a peer spawned mid-run the raft actor's current role, term and leader. */
  announceRole: (peerId: NodeId) => void;
};

/**
 * The root actor's machine: it spawns its children when it starts, in an order that lets each
 * find the ones it talks to at once (the raft actor last: it may send on its first step). The
 * peers are a function of the member list (membership changes spawn and stop them, issue 13).
 */
const nodeMachineOf = (wiring: Wiring, boot: Boot) => {
  const { options, views } = wiring;
  const ids = systemIdsOf(options.id);
  const sizes = sizesOf(options);
  const hidden = <T extends object>(input: T, actor: string): T =>
    hideDeps(input, { node: options.id, actor });
  const raftInput = raftInputOf(options, boot);
  // The configuration the machine starts with (its own rule: the log's newest, else the bootstrap voters).
  const initial = initialConfigs(raftInput).at(-1)!;
  const peerIds = new Set(membersOf(initial.config).filter((member) => member !== options.id));
  const spawnPeer = (peerId: NodeId) =>
    spawnChild('peer', {
      id: `peer:${peerId}`,
      systemId: ids.peer(peerId),
      input: hidden(
        {
          ids,
          self: options.id,
          peerId,
          wire: boot.endpoint,
          chunkBytes: sizes.chunkBytes,
          windowBytes: sizes.windowBytes,
          views,
        },
        `peer:${peerId}`,
      ),
    });
  const requestsInput = {
    ids,
    id: options.id,
    session: options.session,
    deadlines: wiring.deadlines,
    nowMs: wiring.nowMs,
    defer: wiring.defer,
    proposalTimeoutMs: options.proposalTimeoutMs,
    rpcTimeoutMs: options.rpcTimeoutMs ?? Math.max(4 * options.electionTimeoutMs, 1000),
    ...(options.unreachablePeers ? { unreachable: options.unreachablePeers } : {}),
    views,
  };
  const storeInput = {
    ids,
    session: options.session,
    initial: boot.persisted.snapshot,
    compactEvery: sizes.compactEvery,
    keepEntries: sizes.keepEntries,
    onChange: (change: Change) => options.onChange?.(change),
    wantsChanges: options.wantsChanges ?? (() => options.onChange !== undefined),
    onUndecodable: (index: number, reason: string) => options.onUndecodable?.(index, reason),
    defer: wiring.defer,
    views,
  };
  const logInput = { ids, log: boot.log, defer: wiring.defer, onFatal: wiring.onFatal, views };
  const transportInput = { ids, endpoint: boot.endpoint, onReceive: wiring.onReceive, views };
  const membershipInput = membershipInputOf(options, wiring, initial, requestsInput.rpcTimeoutMs);
  return setup({
    actors: {
      requests: requestsActor,
      transport: transportActor,
      log: logActor,
      store: storeActor,
      peer: peerActor,
      membership: membershipActor,
      raft: raftActorLogic(wiring.raftDeps),
    },
  }).createMachine({
    id: options.id,
    on: {
      // The configuration in force changed (membership.ts): spawn the new members' peers, stop the
      // removed members' (their counters leave the metrics with them).
      membersChanged: {
        actions: followMembers(options.id, peerIds, views, spawnPeer, wiring.announceRole) as never,
      },
    },
    entry: [
      spawnChild('requests', {
        id: 'requests',
        systemId: ids.requests,
        input: hidden(requestsInput, 'requests'),
      }),
      spawnChild('transport', {
        id: 'transport',
        systemId: ids.transport,
        input: hidden(transportInput, 'transport'),
      }),
      spawnChild('log', { id: 'log', systemId: ids.log, input: hidden(logInput, 'log') }),
      spawnChild('store', { id: 'store', systemId: ids.store, input: hidden(storeInput, 'store') }),
      spawnChild('membership', {
        id: 'membership',
        systemId: ids.membership,
        input: hidden(membershipInput, 'membership'),
      }),
      ...[...peerIds].map(spawnPeer),
      spawnChild('raft', { id: 'raft', systemId: ids.raft, input: raftInput }),
    ] as never,
  });
};

/**
 * Reads what the log restarts from and connects the transport. Synchronous when the log is given
 * and the transport connects synchronously (in-process and simulated ones: the simulator relies on
 * it); on failure nothing runs, and the log is closed (a WAL's file handle and dir lock released).
 */
const boot = (
  options: NodeOptions,
  log: LogStorage,
  deliver: (message: TransportMessage) => void,
): Boot | Promise<Boot> => {
  const failed = async (error: unknown): Promise<never> => {
    await log.close?.();
    throw error;
  };
  try {
    const persisted = log.persisted();
    // A WAL log defines `incarnation` (larger than any it recorded); a memory log does not.
    const incarnation = log.incarnation ?? options.incarnation ?? Date.now();
    assert(Number.isSafeInteger(incarnation) && incarnation > 0, `bad incarnation ${incarnation}`);
    const connected = options.transport.connect(options.id, deliver);
    if (!(connected instanceof Promise)) return { log, persisted, incarnation, endpoint: connected };
    return connected.then((endpoint) => ({ log, persisted, incarnation, endpoint }), failed);
  } catch (error) {
    return failed(error);
  }
};

/** The node's counters, gathered from its actors' views. */
const metricsOf = (views: Views, raft: RaftCounters) => {
  const store = views.storeCounters ?? { compactions: 0, snapshotsInstalled: 0, malformedMessages: 0 };
  const batches = views.requests?.batches.counters ?? {
    proposalBatches: 0,
    readBatches: 0,
    malformedMessages: 0,
  };
  const peers = [...views.peers.values()];
  const sum = (key: keyof PeerCounters): number =>
    peers.reduce((total, peer) => total + peer.counters[key], 0);
  const received = views.transportCounters?.receivedFrom;
  return {
    proposalBatches: batches.proposalBatches,
    readBatches: batches.readBatches,
    elections: raft.elections,
    malformedMessages:
      batches.malformedMessages +
      store.malformedMessages +
      sum('malformedMessages') +
      (views.transportCounters?.malformedMessages ?? 0),
    compactions: store.compactions,
    snapshotsSent: sum('snapshotsSent'),
    snapshotsInstalled: store.snapshotsInstalled,
    snapshotChunksSent: sum('snapshotChunksSent'),
    /** Snapshot transfers that stalled and went back to the follower's last ack. */
    snapshotResends: sum('snapshotResends'),
    peers: peers.map(({ metrics }) => ({ ...metrics, messagesReceived: received?.get(metrics.nodeId) ?? 0 })),
  };
};

/** The handle's own state: what it started, and the calls of the current tick. */
type NodeState = {
  options: NodeOptions;
  clock: Clock;
  nowMs: () => number;
  defer: (fn: () => void) => void;
  ids: SystemIds;
  deadlines: ReturnType<typeof createDeadlines>;
  views: Views;
  raftCounters: RaftCounters;
  raftDeps: RaftDeps;
  log: LogStorage;
  root: Actor<ReturnType<typeof nodeMachineOf>> | null;
  /** The raft actor, kept after the node stops (its last snapshot stays readable). */
  raft: AnyActorRef | undefined;
  endpoint: TransportEndpoint | null;
  stopped: boolean;
  starting: boolean;
  stopping: Promise<void> | null;
  incarnation: number;
  /** The cluster id the log's hard state recorded at this start (the store's applied one wins). */
  startClusterId: string | null;
  deliver: ((message: TransportMessage) => void) | null;
  /** Calls made in this tick, handed to the requests actor as one event after it. */
  tickCalls: NewCall[];
};

const stoppedError = (s: NodeState, what: string): Error =>
  Object.assign(new Error(`${s.options.id} ${what}`), { code: 'STOPPED' });

const statusOfNode = (s: NodeState): NodeStatus => {
  assert(s.raft !== undefined, 'status before start');
  const status = statusOf(s.options.id, s.raft) as NodeStatus;
  status.appliedIndex = s.views.store?.appliedIndex() ?? 0;
  return status;
};

const handOver = (s: NodeState): void => {
  if (!s.root || s.tickCalls.length === 0) return;
  const calls = s.tickCalls;
  s.tickCalls = [];
  relay(s.root.system, undefined, s.ids.requests, { type: 'calls', calls });
};

/** A call on the handle: it joins this tick's batch (one `calls` event for all of them). */
const callOn = (
  s: NodeState,
  kind: 'write' | 'read',
  callOptions: CallOptions | undefined,
  encode: NewCall['encode'],
): Promise<void> => {
  if (s.stopped) return Promise.reject(stoppedError(s, 'is not running'));
  if (s.views.membership?.removed)
    return Promise.reject(
      Object.assign(new Error(`${s.options.id} was removed from the cluster`), { code: 'REMOVED' }),
    );
  return new Promise<void>((resolve, reject) => {
    if (s.tickCalls.length === 0) s.defer(() => handOver(s));
    s.tickCalls.push({
      kind,
      encode,
      forward: callOptions?.forward !== false,
      timeoutMs: callOptions?.timeoutMs,
      signal: callOptions?.signal,
      resolve,
      reject,
    });
  });
};

const reconfigureOn = (
  s: NodeState,
  members: ReadonlyArray<{ nodeId: NodeId; host?: string; port?: number }>,
  timeoutMs: number | undefined,
): Promise<void> => {
  if (s.stopped || !s.root) return Promise.reject(stoppedError(s, 'is not running'));
  const addresses: Record<NodeId, MemberAddress> = {};
  for (const member of members)
    if (member.host !== undefined && member.port !== undefined)
      addresses[member.nodeId] = { host: member.host, port: member.port };
  return new Promise<void>((resolve, reject) => {
    const call: ReconfigureCall = {
      voters: members.map((member) => member.nodeId),
      addresses,
      timeoutMs: timeoutMs ?? Math.max(s.options.proposalTimeoutMs, 10 * s.options.electionTimeoutMs),
      resolve,
      reject,
    };
    relay(s.root!.system, undefined, s.ids.membership, { type: 'reconfigureCall', call });
  });
};

const startNode = async (s: NodeState): Promise<void> => {
  assert(s.root === null && !s.starting, 'start called twice');
  s.starting = true;
  let booted: Boot;
  try {
    if (s.options.openLog) s.log = await s.options.openLog();
    const result = boot(s.options, s.log, (message) => s.deliver?.(message));
    booted = result instanceof Promise ? await result : result;
  } catch (error) {
    s.starting = false;
    throw error;
  }
  s.endpoint = booted.endpoint;
  s.incarnation = booted.incarnation;
  // A restart knows its cluster id at once when its hard state recorded it (it was committed:
  // machines/cluster-id.ts), or from its snapshot (the store's); never from an entry 1 as such.
  s.startClusterId = booted.persisted.hardState.clusterId ?? null;
  s.raftDeps.durable = s.log.durable === true;
  const wiring: Wiring = {
    options: s.options,
    views: s.views,
    raftDeps: s.raftDeps,
    deadlines: s.deadlines,
    defer: s.defer,
    nowMs: s.nowMs,
    onReceive: (next) => {
      s.deliver = next;
    },
    onFatal: (error) => {
      stopNode(s).catch(() => undefined);
      s.options.onFatal?.(error);
    },
    clock: s.clock,
    announceRole: (peerId) => {
      if (!s.root || !s.raft) return;
      const status = statusOf(s.options.id, s.raft);
      relay(s.root.system, s.raft, s.ids.peer(peerId), {
        type: 'leaderChanged',
        role: status.role,
        term: status.term,
        leaderId: status.leaderId,
        self: status.role === 'leader',
      });
    },
  };
  s.root = createActor(nodeMachineOf(wiring, booted), { clock: s.clock, systemId: s.options.id });
  if (s.options.inspect) inspectSystem(s.root, inspectionOf(s, s.options.inspect));
  s.root.start();
  s.raft = s.root.system.get(s.ids.raft) as AnyActorRef | undefined;
  handOver(s);
};

/** The node's `inspect`, summarized and within its budget (inspection.ts); counted in the views. */
const inspectionOf = (s: NodeState, inspect: Inspect): ((event: InspectionEvent) => void) => {
  s.views.inspection ??= { sentEvents: 0, skippedEvents: 0 };
  return summarizingInspect(inspect, s.clock, {
    eventsPerSecond: s.options.inspectEventsPerSecond ?? DEFAULT_INSPECT_EVENTS_PER_SECOND,
    // A simulated node's clock is shared by every node of the simulation: the slices agree there too.
    wallClockMs: s.options.wallClockMs ?? s.options.nowMs ?? Date.now,
    counters: s.views.inspection,
  });
};

/**
 * Stops every actor and the transport; every waiting call rejects with STOPPED. Held outputs are
 * dropped (nothing was acknowledged for them); a flush in flight is waited for, then the log is
 * closed. Idempotent.
 */
const stopNode = (s: NodeState): Promise<void> => {
  s.stopping ??= (async () => {
    s.stopped = true;
    s.raftDeps.stopTimers?.();
    if (s.root) relay(s.root.system, undefined, s.ids.requests, { type: 'stop' });
    if (s.root) relay(s.root.system, undefined, s.ids.membership, { type: 'stop' });
    for (const pending of s.tickCalls) pending.reject(stoppedError(s, 'stopped'));
    s.tickCalls = [];
    s.root?.stop();
    s.deadlines.clear();
    await s.views.log?.flushing();
    try {
      await s.log.close?.();
    } finally {
      await s.endpoint?.close();
    }
  })();
  return s.stopping;
};

/**
 * While recovering: the members whose answer (from a member that is not recovering itself) the
 * current round still lacks; empty once recovered.
 */
const recoveryWaitingFor = (s: NodeState): NodeId[] => {
  const context = s.raft?.getSnapshot().context;
  if (!context?.recovering) return [];
  const answers = Object.values(context.recovery.answers) as Array<{ recovering: boolean; from: NodeId }>;
  const ready = new Set(answers.filter((answer) => !answer.recovering).map((answer) => answer.from));
  return membersOf(context.config as Configuration).filter(
    (member) => member !== s.options.id && !ready.has(member),
  );
};

const nodeMetrics = (s: NodeState) => {
  const { views } = s;
  const context = s.raft?.getSnapshot().context;
  const counters = context?.incarnationCounters;
  const requests = views.requests?.calls;
  return {
    ...metricsOf(views, s.raftCounters),
    incarnation: s.incarnation,
    incarnationResets: counters?.resets ?? 0,
    staleIncarnationAnswers: counters?.staleIgnored ?? 0,
    recovering: context?.recovering ?? false,
    recovery: { ...(context?.recoveryCounters ?? emptyRecoveryCounters()) },
    /** Membership (machines/rules/membership.ts): the configuration in force and the hard cases counted. */
    membership: {
      configIndex: views.membership?.index ?? 0,
      voters: [...(views.membership?.config.voters ?? s.options.voters)],
      outgoing: [...(views.membership?.config.outgoing ?? [])],
      removed: views.membership?.removed ?? false,
      changes: views.membership?.changes ?? 0,
      retries: views.membership?.retries ?? 0,
      ...(context?.membershipCounters ?? emptyMembershipCounters()),
    },
    ...(requests?.counters ?? { forwardedWrites: 0, forwardedReads: 0, retries: 0 }),
    pendingWrites: requests?.writes.size ?? 0,
    pendingReads: requests?.reads.size ?? 0,
    duplicatesSkipped: views.store?.duplicates() ?? 0,
    undecodableEntries: views.store?.undecodable() ?? 0,
    storeSize: views.store?.size() ?? 0,
    durable: s.log.durable === true,
    ...(views.log?.durability ?? { flushes: 0, heldOutputs: 0, maxOutbox: 0, fatalError: null }),
    outbox: views.log?.outboxSize() ?? 0,
    inspection: views.inspection ? { ...views.inspection } : null,
  };
};

const nodeStateOf = (options: NodeOptions): NodeState => {
  const clock = options.clock ?? realClock;
  const nowMs = options.nowMs ?? (() => performance.now());
  const ids = systemIdsOf(options.id);
  const raftCounters: RaftCounters = { elections: 0 };
  return {
    options,
    clock,
    nowMs,
    defer: options.defer ?? queueMicrotask,
    ids,
    deadlines: createDeadlines(clock, nowMs),
    views: { peers: new Map() },
    raftCounters,
    raftDeps: {
      ids,
      durable: false,
      clock,
      tickMs: tickMsOf(options.electionTimeoutMs),
      onRole: (status) => options.onRole?.(status),
      counters: raftCounters,
    },
    log: options.log ?? createMemoryLog(),
    root: null,
    raft: undefined,
    endpoint: null,
    stopped: false,
    starting: false,
    stopping: null,
    incarnation: 0,
    startClusterId: null,
    deliver: null,
    tickCalls: [],
  };
};

/** A node: its actor system once started, and the handle the public API and the tests use. */
export const createNode = (options: NodeOptions) => {
  const s = nodeStateOf(options);
  return {
    id: options.id,
    start: () => startNode(s),
    stop: () => stopNode(s),
    /** set/delete: resolves once committed by a majority and applied on this node. */
    write: (operation: KvOperation, callOptions?: CallOptions) =>
      callOn(s, 'write', callOptions, (tag) => encodeCommand(operation, tag)),
    /** Resolves once this node has applied everything committed before the call (ReadIndex). */
    readBarrier: (callOptions?: CallOptions) => callOn(s, 'read', callOptions, undefined),
    status: () => statusOfNode(s),
    get: (key: string): unknown => s.views.store?.get(key),
    has: (key: string): boolean => s.views.store?.has(key) ?? false,
    /** The store's snapshot at its applied index (tests and tools). */
    storeSnapshot: () => s.views.store!.snapshot(),
    /** The log storage (the one `openLog` opened, once started). */
    log: (): LogStorage => s.log,
    /** The machine's snapshot, for tests and tools (read-only). */
    snapshot: () => {
      assert(s.raft !== undefined, 'snapshot before start');
      return s.raft.getSnapshot();
    },
    recoveryWaitingFor: () => recoveryWaitingFor(s),
    /** The cluster id this node knows (machines/cluster-id.ts), or null while it knows none. */
    clusterId: (): string | null => s.views.store?.clusterId() ?? s.startClusterId,
    /** The transport met a server that knows a cluster id: never bootstrap another (recovery.ts). */
    clusterSeen: () => {
      if (s.root && !s.stopped) relay(s.root.system, undefined, s.ids.raft, { type: 'clusterSeen' });
    },
    /** Sends a timer event by hand (tests and tools: `electionTimeout`, `checkQuorum`, ...). */
    fire: (event: { type: 'electionTimeout' | 'heartbeatTimeout' | 'checkQuorum' }) => s.raft?.send(event),
    isStopped: () => s.stopped,
    /**
     * Changes the voting membership to `members` (the whole new one) by joint consensus; resolves
     * once C_new is committed and applied here, or this node was removed by it (membership.ts).
     */
    reconfigure: (
      members: ReadonlyArray<{ nodeId: NodeId; host?: string; port?: number }>,
      timeoutMs?: number,
    ) => reconfigureOn(s, members, timeoutMs),
    /** The configuration in force, its index, and whether this node was removed. */
    membership: () => s.views.membership ?? null,
    metrics: () => nodeMetrics(s),
    /** The root actor (tests and tools: its system holds every actor of the node). */
    actor: () => s.root,
  };
};

export type Node = ReturnType<typeof createNode>;
export type { RaftMessage, RaftStatus };
