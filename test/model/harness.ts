/**
 * The model checker shared by the model suite and the broken-variant tests: a cluster of raft
 * machines (the implementation) run in lockstep with the reference spec (spec.ts) over one
 * network, a bag of in-flight messages that the implementation sent.
 *
 * After every step it checks that
 *  - spec and implementation agree on role (and candidate phase), currentTerm, votedFor, log
 *    (term, kind and bytes of every entry), commitIndex, leaderId, and a leader's matchIndex and
 *    CheckQuorum flags;
 *  - every message the implementation sent is one the spec allows (refinement): replies, votes
 *    and vote requests are exactly the spec's; AppendEntries and Heartbeats are ones the spec's
 *    leader may send;
 *  - what the server persisted is what it holds, and the term or vote or entries a message
 *    depends on was persisted before the message left (durable before acknowledged);
 *  - the other outputs fit: committed entries come in order and match the log, proposals are
 *    accepted by leaders only, reads are released by a leader at an index that covers every
 *    commit made before the read was asked;
 *  - the spec state satisfies Raft's safety properties (invariants.ts).
 */
import fc from 'fast-check';
import { type Actor, createActor } from 'xstate';
import type { Entry, NodeId, RaftMessage } from '../../src/machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../../src/machines/raft.machine.js';
import type { HardState, RaftContext, RaftEmitted, RaftEvent } from '../../src/machines/raft.types.js';
import {
  checkSafety,
  createHistory,
  type History,
  implementationConfigProblems,
  onAmnesia,
  onRestart,
  removedServerCampaigns,
} from './invariants.js';
import * as spec from './spec.js';
import {
  afterCatchUp,
  configBefore,
  configOfEntry,
  isCatchUpConfig,
  isJointConfig,
  isMemberOf,
  membersOfConfig,
  type SpecConfig,
  sameConfig,
  setsOf,
  stableOf,
} from './spec-config.js';

// ---------------------------------------------------------------------------------------------
// Configuration and commands

export type ModelConfig = {
  servers: number;
  /** Passed to the machine: bounds the replication pipeline (flow control is not in the spec). */
  maxInflight: number;
  maxEntriesPerAppend: number;
  /** Seed of the machines' election-timeout generator (irrelevant here: timers are explicit). */
  seed: number;
  /**
   * Servers beyond the initial cluster that reconfigurations may add (membership runs): each is
   * started when a reconfiguration first names it, as a user adds a node: an empty log, the
   * requested membership as its bootstrap voters, recovering and never bootstrapping (`join`).
   */
  spares?: number;
};

/**
 * How a reconfiguration picks its voters from the target's configuration in force (C_new) and the
 * pool of ids: add one or two, remove one or two, replace every voter, remove the target (the
 * leader, usually), any subset of the pool, the same voters, or invalid voters (none, a repeat).
 */
export type ChangeKind = 'grow' | 'shrink' | 'replace' | 'removeTarget' | 'subset' | 'same' | 'invalid';

/** A server by position (modulo the cluster size), or the leader of the highest term if any. */
export type Target = number | 'leader';

export type Cmd =
  | { kind: 'timeout'; server: Target }
  | { kind: 'heartbeat'; server: Target }
  | { kind: 'checkQuorum'; server: Target }
  | { kind: 'propose'; server: Target; count: number }
  | { kind: 'read'; server: Target }
  /** With `loseTail`, the log keeps only what the server ever acknowledged (a torn tail cut). */
  | { kind: 'restart'; server: Target; loseTail?: boolean; amnesia?: boolean }
  /** Deliver / drop / duplicate the in-flight message at `pick` modulo the bag's size. */
  | { kind: 'deliver'; pick: number }
  | { kind: 'drop'; pick: number }
  | { kind: 'duplicate'; pick: number }
  /** Deliver the oldest message, `count` times. */
  | { kind: 'deliverMany'; count: number }
  /** Drop every in-flight message from or to a server (a brief partition). */
  | { kind: 'isolate'; server: Target }
  /** Ask a server to change the voters (see ChangeKind); `addresses`: name where each voter listens. */
  | { kind: 'reconfigure'; server: Target; change: ChangeKind; pick: number; addresses: boolean }
  /** Scripted runs only: act on the oldest message that matches. */
  | { kind: 'deliverWhere'; match: MessageMatch }
  | { kind: 'dropWhere'; match: MessageMatch };

export type MessageMatch = { from?: NodeId; to?: NodeId; type?: RaftMessage['type'] };

export const SERVER_IDS: readonly NodeId[] = ['a', 'b', 'c', 'd', 'e', 'f', 'g'];

const showTarget = (t: Target): string => (t === 'leader' ? 'leader' : String(t));

export const showCmd = (c: Cmd): string => {
  switch (c.kind) {
    case 'timeout':
      return `Timeout(${showTarget(c.server)})`;
    case 'heartbeat':
      return `HeartbeatTimeout(${showTarget(c.server)})`;
    case 'checkQuorum':
      return `CheckQuorum(${showTarget(c.server)})`;
    case 'propose':
      return `ClientRequest(${showTarget(c.server)}, ${c.count})`;
    case 'read':
      return `ReadIndex(${showTarget(c.server)})`;
    case 'restart':
      return `Restart(${showTarget(c.server)}${c.loseTail ? ', losing its tail' : ''}${c.amnesia ? ', amnesiac' : ''})`;
    case 'deliver':
      return `Deliver(${c.pick})`;
    case 'drop':
      return `Drop(${c.pick})`;
    case 'duplicate':
      return `Duplicate(${c.pick})`;
    case 'deliverMany':
      return `DeliverOldest(${c.count})`;
    case 'isolate':
      return `Isolate(${showTarget(c.server)})`;
    case 'reconfigure':
      return `Reconfigure(${showTarget(c.server)}, ${c.change}, ${c.pick}${c.addresses ? ', with addresses' : ''})`;
    case 'deliverWhere':
      return `DeliverWhere(${JSON.stringify(c.match)})`;
    case 'dropWhere':
      return `DropWhere(${JSON.stringify(c.match)})`;
  }
};

// ---------------------------------------------------------------------------------------------
// The world: implementation, spec, network, history

type ImplNode = {
  actor: Actor<RaftMachine>;
  /** Outputs of the event being processed. */
  outputs: RaftEmitted[];
  /** What the server persisted: the persist outputs applied in order. */
  store: { hardState: HardState; log: Entry[] };
  /** Last index handed over in `committed` outputs since the server (re)started. */
  applied: number;
};

export type Stats = {
  runs: number;
  commands: number;
  steps: number;
  delivered: number;
  leadersElected: number;
  runsWithLeader: number;
  entriesCommitted: number;
  runsWithCommit: number;
  maxTerm: number;
  appendRejections: number;
  truncations: number;
  stepDowns: number;
  preVoteRejections: number;
  restarts: number;
  /** Restarts that lost everything (memory mode): the server recovered before taking part. */
  amnesiacRestarts: number;
  /** Amnesiac servers that completed recovery. */
  recoveries: number;
  /** Restarts that cut entries off a log (never acknowledged ones). */
  tailsLost: number;
  /** A leader heard a higher incarnation (reset its match) / a lower one (ignored the answer). */
  incarnationResets: number;
  staleIncarnations: number;
  readsServed: number;
  proposalsAccepted: number;
  /** Rounds the end-of-run healing needed in total (liveness). */
  healRounds: number;
  /** Entries committed once healed (every run ends with its whole log committed everywhere). */
  committedAfterHeal: number;
  // Membership (counted on the generated part of a run, like the rest).
  /** Reconfigure requests, and what became of them. */
  reconfigures: number;
  changesProposed: number;
  changesUnchanged: number;
  changesInProgress: number;
  changesInvalid: number;
  /** Refused as LEADER_NOT_READY: the leader had not committed an entry of its term yet. */
  leaderNotReady: number;
  /** C_old,new entries and C_new entries committed (each index once per run). */
  jointCommitted: number;
  changesCommitted: number;
  /**
   * The learner phase (dissertation §4.2.1): C_learn appended by a leader; C_old,new appended once
   * its learners caught up; the stable base appended over it (a request for the voters in force);
   * C_learn entries committed (each index once per run).
   */
  catchUps: number;
  catchUpsCompleted: number;
  catchUpsCancelled: number;
  /** A committed C_learn replaced by another change (another C_learn, or C_old,new to fewer voters). */
  catchUpsReplaced: number;
  catchUpsCommitted: number;
  /** Leaders that stepped down because a committed C_new left them out. */
  leadersRemoved: number;
  /** A write to a log removed a configuration from it (the server fell back on an older one). */
  configsTruncated: number;
  /** `Removed` answers to a removed server's messages; `Removed` told by a leader as C_new commits. */
  removedAnswers: number;
  removedTold: number;
  /** Servers that learned they were removed (a `Removed`, or leading outside C_new). */
  removedLearned: number;
  /** Spare servers started to be added (empty log, recovering, `join`). */
  serversAdded: number;
  /** Runs whose healing stalled because a majority of a voter set was still recovering (see heal). */
  stalledJoins: number;
};

export const emptyStats = (): Stats => ({
  runs: 0,
  commands: 0,
  steps: 0,
  delivered: 0,
  leadersElected: 0,
  runsWithLeader: 0,
  entriesCommitted: 0,
  runsWithCommit: 0,
  maxTerm: 0,
  appendRejections: 0,
  truncations: 0,
  stepDowns: 0,
  preVoteRejections: 0,
  restarts: 0,
  amnesiacRestarts: 0,
  recoveries: 0,
  tailsLost: 0,
  incarnationResets: 0,
  staleIncarnations: 0,
  readsServed: 0,
  proposalsAccepted: 0,
  healRounds: 0,
  committedAfterHeal: 0,
  reconfigures: 0,
  changesProposed: 0,
  changesUnchanged: 0,
  changesInProgress: 0,
  changesInvalid: 0,
  leaderNotReady: 0,
  jointCommitted: 0,
  changesCommitted: 0,
  catchUps: 0,
  catchUpsCompleted: 0,
  catchUpsCancelled: 0,
  catchUpsReplaced: 0,
  catchUpsCommitted: 0,
  leadersRemoved: 0,
  configsTruncated: 0,
  removedAnswers: 0,
  removedTold: 0,
  removedLearned: 0,
  serversAdded: 0,
  stalledJoins: 0,
});

export const addStats = (total: Stats, run: Stats): void => {
  for (const key of Object.keys(total) as (keyof Stats)[]) {
    total[key] = key === 'maxTerm' ? Math.max(total[key], run[key]) : total[key] + run[key];
  }
};

type PendingRead = { server: NodeId; minIndex: number; answered: boolean };

export type World = {
  config: ModelConfig;
  /** The servers started so far (the initial cluster, then spares as reconfigurations add them). */
  ids: NodeId[];
  /** Every id a reconfiguration may name: the initial cluster and the spares. */
  pool: NodeId[];
  /** Each started server's bootstrap voters and whether it may bootstrap a cluster (`join` if not). */
  bootstrapOf: Record<NodeId, NodeId[]>;
  joins: Record<NodeId, boolean>;
  impl: Record<NodeId, ImplNode>;
  spec: Record<NodeId, spec.SpecServer>;
  network: RaftMessage[];
  history: History;
  stats: Stats;
  reads: Map<number, PendingRead>;
  counters: { batch: number; read: number; data: number; restarts: number; requests: number };
  /** The highest index each server acknowledged (a success answer), over the whole run. */
  acked: Record<NodeId, number>;
  /** Each server's incarnation: every start gets a larger one (restarts + 1 at that start). */
  incarnation: Record<NodeId, number>;
  /** The most recent steps, for failure reports. */
  trace: string[];
};

/** A clock whose timers never fire: only explicit events move time. */
const frozenClock = { setTimeout: () => 0, clearTimeout: () => {} };

const startActor = (
  world: World,
  id: NodeId,
  store: ImplNode['store'],
  recovering = false,
): Actor<RaftMachine> => {
  const actor = createActor(raftMachine, {
    input: {
      id,
      voters: world.bootstrapOf[id]!,
      join: world.joins[id]!,
      electionTimeoutMs: 100,
      heartbeatMs: 10,
      seed: world.config.seed + world.counters.restarts,
      incarnation: world.incarnation[id]!,
      hardState: { ...store.hardState },
      entries: [...store.log],
      maxInflight: world.config.maxInflight,
      maxEntriesPerAppend: world.config.maxEntriesPerAppend,
      recovering,
    },
    clock: frozenClock,
  });
  actor.on('*', (emitted) => {
    world.impl[id]?.outputs.push(emitted as RaftEmitted);
  });
  // An action that throws puts the actor in the error state; we read it from the snapshot.
  actor.subscribe({ error: () => {} });
  return actor;
};

export const createWorld = (config: ModelConfig): World => {
  const ids = SERVER_IDS.slice(0, config.servers);
  const world: World = {
    config,
    ids: [...ids],
    pool: SERVER_IDS.slice(0, config.servers + (config.spares ?? 0)),
    bootstrapOf: {},
    joins: {},
    impl: {},
    spec: {},
    network: [],
    history: createHistory(),
    stats: { ...emptyStats(), runs: 1 },
    reads: new Map(),
    counters: { batch: 0, read: 0, data: 0, restarts: 0, requests: 0 },
    acked: {},
    incarnation: {},
    trace: [],
  };
  for (const id of ids) {
    const store = { hardState: { term: 0, votedFor: null }, log: [] };
    world.incarnation[id] = 1;
    world.bootstrapOf[id] = ids;
    world.joins[id] = false;
    world.impl[id] = { actor: undefined as unknown as Actor<RaftMachine>, outputs: [], store, applied: 0 };
    world.impl[id].actor = startActor(world, id, store);
    world.impl[id].actor.start();
    world.spec[id] = spec.initServer(id, ids);
  }
  return world;
};

export const stopWorld = (world: World): void => {
  for (const id of world.ids) world.impl[id]!.actor.stop();
};

/** The run's counters so far, with the per-run counts taken from its history. */
export const finishRun = (world: World): Stats => {
  const stats = { ...world.stats };
  stats.entriesCommitted = world.history.committed.size;
  stats.runsWithCommit = world.history.committed.size > 0 ? 1 : 0;
  stats.runsWithLeader = world.history.leaderOfTerm.size > 0 ? 1 : 0;
  stats.maxTerm = Math.max(...world.ids.map((id) => world.spec[id]!.currentTerm));
  for (const { entry } of world.history.committed.values()) {
    if (entry.kind !== 'config') continue;
    const config = configOfEntry(entry);
    if (isJointConfig(config)) stats.jointCommitted += 1;
    else if (isCatchUpConfig(config)) stats.catchUpsCommitted += 1;
    else stats.changesCommitted += 1;
  }
  return stats;
};

// ---------------------------------------------------------------------------------------------
// Failure reports

/** Every failure of the checker is an Error named ModelViolation. */
export const violation = (message: string): Error =>
  Object.assign(new Error(message), { name: 'ModelViolation' });

const fail = (world: World, what: string): never => {
  const servers = world.ids.map((id) => `  ${describeServer(world.spec[id]!)}`).join('\n');
  const trace = world.trace.slice(-12).join('\n  ');
  throw violation(`${what}\nspec state after the step:\n${servers}\nlast steps:\n  ${trace}`);
};

const hex = (data: Uint8Array | null): string => (data ? Buffer.from(data).toString('hex') : '-');

/** {C_new|C_old -removed +learners>target}: the parts that are not empty. */
const describeConfig = (c: SpecConfig): string =>
  `{${c.voters.join('')}${c.outgoing.length > 0 ? `|${c.outgoing.join('')}` : ''}${c.removed.length > 0 ? ` -${c.removed.join('')}` : ''}${(c.learners ?? []).length > 0 ? ` +${c.learners.join('')}>${c.target.join('')}` : ''}}`;

const describeEntry = (e: Entry): string => {
  if (e.kind === 'noop') return `n${e.term}`;
  if (e.kind === 'config') return `c${e.term}${describeConfig(configOfEntry(e))}`;
  return `${e.term}:${hex(e.data)}`;
};

export const describeLog = (log: readonly Entry[]): string => `[${log.map(describeEntry).join(' ')}]`;

export const describeServer = (s: spec.SpecServer): string =>
  `${s.id}${s.removed ? ' (removed)' : ''}${s.recovering ? ' (recovering)' : ''} ${describeConfig(spec.configOf(s).config)}@${spec.configOf(s).index} ${s.role}${s.phase ? `/${s.phase}` : ''} term=${s.currentTerm} vote=${s.votedFor ?? '-'} leader=${s.leaderId ?? '-'} commit=${s.commitIndex} log=${describeLog(s.log)}${s.role === 'leader' ? ` match=${JSON.stringify(s.matchIndex)}` : ''}`;

export const describeMessage = (m: RaftMessage): string => {
  switch (m.type) {
    case 'RequestVote':
      return `${m.preVote ? 'PreVote' : 'RequestVote'} ${m.from}→${m.to} t${m.term} last=${m.lastLogIndex}@${m.lastLogTerm}`;
    case 'RequestVoteResponse':
      return `${m.preVote ? 'PreVoteResponse' : 'RequestVoteResponse'} ${m.from}→${m.to} t${m.term} ${m.voteGranted ? 'granted' : 'refused'}`;
    case 'AppendEntries':
      return `AppendEntries ${m.from}→${m.to} t${m.term} prev=${m.prevLogIndex}@${m.prevLogTerm} entries=${describeLog(m.entries)} commit=${m.leaderCommit}`;
    case 'AppendEntriesResponse':
      return `AppendEntriesResponse ${m.from}→${m.to} t${m.term} ${m.success ? `ok match=${m.matchIndex}` : `rejected at ${m.rejectedIndex} hint=${m.conflictIndex}@${m.conflictTerm}`}`;
    case 'Heartbeat':
      return `Heartbeat ${m.from}→${m.to} t${m.term} commit=${m.commit} seq=${m.seq}`;
    case 'HeartbeatResponse':
      return `HeartbeatResponse ${m.from}→${m.to} t${m.term} seq=${m.seq}`;
    case 'InstallSnapshot':
      return `InstallSnapshot ${m.from}→${m.to} t${m.term} last=${m.lastIncludedIndex}@${m.lastIncludedTerm}`;
    case 'InstallSnapshotResponse':
      return `InstallSnapshotResponse ${m.from}→${m.to} t${m.term} match=${m.matchIndex}`;
    case 'RecoveryRequest':
      return `RecoveryRequest ${m.from}→${m.to} t${m.term} nonce=${m.incarnation}/${m.round}`;
    case 'RecoveryResponse':
      return `RecoveryResponse ${m.from}→${m.to} t${m.term} nonce=${m.incarnation}/${m.round} ${m.recovering ? 'recovering' : 'ready'}${m.blank ? ' blank' : ''} leaderLast=${m.leaderLastIndex}`;
    case 'Removed':
      return `Removed ${m.from}→${m.to} t${m.term} config=${m.configIndex}`;
  }
};

/** A canonical text of a message (field order independent), to compare messages exactly. */
const canonical = (m: RaftMessage): string =>
  Object.keys(m)
    .sort()
    .map((key) => {
      const value = (m as Record<string, unknown>)[key];
      if (Array.isArray(value)) return `${key}=${describeLog(value as Entry[])}`;
      if (typeof value === 'object' && value !== null)
        return `${key}=${JSON.stringify(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1)))}`;
      return `${key}=${String(value)}`;
    })
    .join(',');

// ---------------------------------------------------------------------------------------------
// Comparing the implementation with the spec

const phaseOf = (value: unknown): spec.SpecPhase | null => {
  if (typeof value !== 'object' || value === null || !('candidate' in value)) return null;
  const phase = (value as { candidate: unknown }).candidate;
  return phase === 'preVote' || phase === 'campaign' ? phase : null;
};

const sameLog = (a: readonly Entry[], b: readonly Entry[]): number => {
  if (a.length !== b.length) return Math.min(a.length, b.length) + 1;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i] && !spec.sameEntry(a[i]!, b[i]!)) return i + 1;
  return 0;
};

/** The differences between a spec server and the implementation's state (empty when they agree). */
export const compareWithSpec = (s: spec.SpecServer, value: unknown, context: RaftContext): string[] => {
  const diffs: string[] = [];
  const field = (name: string, specValue: unknown, implValue: unknown) => {
    if (specValue !== implValue)
      diffs.push(
        `${s.id}.${name}: spec ${JSON.stringify(specValue)}, implementation ${JSON.stringify(implValue)}`,
      );
  };
  field('role', s.role, roleOf(value));
  field('candidate phase', s.phase, phaseOf(value));
  field('currentTerm', s.currentTerm, context.currentTerm);
  field('votedFor', s.votedFor, context.votedFor);
  field('commitIndex', s.commitIndex, context.commitIndex);
  field('leaderId', s.leaderId, context.leaderId);
  field('recovering', s.recovering, context.recovering);
  field('removed', s.removed, context.removed);
  const inForce = spec.configOf(s);
  field('configuration index', inForce.index, context.configs[context.configs.length - 1]?.index);
  if (!sameConfig(inForce.config, context.config))
    diffs.push(
      `${s.id}.configuration in force: spec ${describeConfig(inForce.config)}, implementation ${describeConfig(context.config)}`,
    );
  field('recovery round', s.recovery.round, context.recovery.round);
  field('recovery target', JSON.stringify(s.recovery.target), JSON.stringify(context.recovery.target));
  const at = sameLog(s.log, context.log.entries);
  if (at !== 0)
    diffs.push(
      `${s.id}.log differs at ${at}: spec ${describeLog(s.log)}, implementation ${describeLog(context.log.entries)}`,
    );
  if (s.role === 'leader' && roleOf(value) === 'leader') {
    for (const peer of spec.peers(s)) {
      const progress = context.progress[peer];
      field(`matchIndex[${peer}]`, s.matchIndex[peer], progress?.matchIndex);
      field(`recentActive[${peer}]`, s.recentActive[peer], progress?.recentActive);
      field(`recovering[${peer}]`, s.recoveringOf[peer], progress?.recovering);
    }
  }
  return diffs;
};

// ---------------------------------------------------------------------------------------------
// One step: an event to one server, mirrored on the spec, then every check

type SpecAction = (
  s: spec.SpecServer,
) => spec.SpecStep & { accepted?: boolean; answer?: spec.ReconfigureAnswer };

const isLeaderMessage = (
  m: RaftMessage,
): m is Extract<RaftMessage, { type: 'AppendEntries' | 'Heartbeat' }> =>
  m.type === 'AppendEntries' || m.type === 'Heartbeat';

const applyPersist = (
  world: World,
  id: NodeId,
  node: ImplNode,
  out: Extract<RaftEmitted, { type: 'persist' }>,
) => {
  if (out.hardState) node.store.hardState = { ...out.hardState };
  if (out.fromIndex >= 1) {
    if (out.fromIndex > node.store.log.length + 1)
      fail(
        world,
        `${id} persisted entries from ${out.fromIndex}, past the end of its stored log (${node.store.log.length})`,
      );
    node.store.log.length = out.fromIndex - 1;
    node.store.log.push(...out.entries);
  } else if (out.entries.length > 0) {
    fail(world, `${id} persisted entries without an index`);
  }
};

/** Rule 4 of ARCHITECTURE.md: what a message vouches for is on disk before it leaves. */
const checkDurable = (world: World, id: NodeId, node: ImplNode, m: RaftMessage): void => {
  const { hardState, log } = node.store;
  const isPoll = (m.type === 'RequestVote' && m.preVote) || (m.type === 'RequestVoteResponse' && m.preVote);
  if (!isPoll && m.term !== hardState.term)
    fail(world, `${id} sent ${describeMessage(m)} with term ${m.term} but persisted term ${hardState.term}`);
  if (m.type === 'RequestVoteResponse' && !m.preVote && m.voteGranted && hardState.votedFor !== m.to)
    fail(world, `${id} granted its vote to ${m.to} before persisting it (persisted ${hardState.votedFor})`);
  if (m.type === 'RequestVote' && !m.preVote && hardState.votedFor !== id)
    fail(world, `${id} campaigned before persisting its vote for itself`);
  if (m.type === 'AppendEntriesResponse' && m.success && log.length < m.matchIndex)
    fail(world, `${id} acknowledged up to ${m.matchIndex} with only ${log.length} entries persisted`);
  if (m.type === 'AppendEntriesResponse' && m.success)
    world.acked[id] = Math.max(world.acked[id] ?? 0, m.matchIndex);
};

/** Answers from a new incarnation that reset a leader's match, and stale ones it ignored. */
const countIncarnations = (
  world: World,
  before: spec.SpecServer,
  after: spec.SpecServer,
  event: RaftEvent,
) => {
  if (before.role !== 'leader' || after.role !== 'leader' || event.type !== 'message') return;
  const m = event.message;
  if (!('incarnation' in m) || m.incarnation === undefined || m.term !== after.currentTerm) return;
  const known = before.incarnationOf[m.from];
  if (known !== undefined && m.incarnation > known) world.stats.incarnationResets += 1;
  if (known !== undefined && m.incarnation < known) world.stats.staleIncarnations += 1;
};

const specStep = (world: World, id: NodeId, run: () => ReturnType<SpecAction>, label: string) => {
  try {
    return run();
  } catch (error) {
    return fail(world, `${id}: the spec refused ${label}: ${(error as Error).message}`);
  }
};

type StepView = {
  world: World;
  id: NodeId;
  node: ImplNode;
  before: spec.SpecServer;
  after: spec.SpecServer;
  step: ReturnType<SpecAction>;
  event: RaftEvent;
};

/** The outputs of a proposal and of reads: accepted by leaders only, released at a commit of the leader's term. */
const checkClientOutput = (view: StepView, out: RaftEmitted): 'accepted' | 'rejected' | null => {
  const { world, id, before, after, step } = view;
  switch (out.type) {
    case 'proposalsAccepted':
      if (step.accepted !== true) fail(world, `${id} accepted a proposal the spec refuses (${before.role})`);
      if (out.firstIndex !== before.log.length + 1 || out.term !== before.currentTerm)
        fail(world, `${id} accepted a proposal at ${out.firstIndex}@${out.term}`);
      world.stats.proposalsAccepted += 1;
      return 'accepted';
    case 'proposalsRejected':
      if (step.accepted !== false) fail(world, `${id} rejected a proposal the spec accepts`);
      if (out.leaderId !== before.leaderId)
        fail(world, `${id} rejected a proposal naming leader ${out.leaderId}`);
      return 'rejected';
    case 'readsReady':
      for (const readId of out.ids) {
        const read = world.reads.get(readId);
        if (!read || read.answered || read.server !== id)
          fail(world, `${id} released read ${readId} it was not asked`);
        else {
          read.answered = true;
          if (out.readIndex < read.minIndex)
            fail(
              world,
              `${id} released read ${readId} at ${out.readIndex}, below ${read.minIndex} committed before it`,
            );
        }
      }
      if (after.role !== 'leader') fail(world, `${id} released reads as a ${after.role}`);
      if (out.readIndex > after.commitIndex || spec.termAt(after.log, out.readIndex) !== after.currentTerm)
        fail(world, `${id} released reads at ${out.readIndex}, not a commit of its term`);
      world.stats.readsServed += out.ids.length;
      return null;
    case 'readsRejected':
      for (const readId of out.ids) {
        const read = world.reads.get(readId);
        if (!read || read.answered || read.server !== id)
          fail(world, `${id} rejected read ${readId} it was not asked`);
        else read.answered = true;
      }
      return null;
    default:
      return null;
  }
};

/** Whether the configuration in force changed between two states of a server (another entry or index). */
const configChanged = (before: spec.SpecServer, after: spec.SpecServer): boolean => {
  const x = spec.configOf(before);
  const y = spec.configOf(after);
  return (
    x.index !== y.index || (y.index > 0 && !spec.sameEntry(before.log[y.index - 1]!, after.log[y.index - 1]!))
  );
};

/**
 * The membership outputs: a reconfigure answer is the spec's (accepted at the index and term of
 * C_old,new, or of the configuration in force when unchanged; rejected with the spec's code), a
 * `membership` output comes exactly when the configuration in force changes and names it, and a
 * `removed` output exactly when the server learns it was removed.
 */
const checkMembershipOutput = (view: StepView, out: RaftEmitted): boolean => {
  const { world, id, before, after, step } = view;
  const answer = step.answer;
  switch (out.type) {
    case 'reconfigureAccepted':
      if (
        !answer?.accepted ||
        answer.index !== out.index ||
        answer.term !== out.term ||
        answer.unchanged !== out.unchanged
      )
        fail(
          world,
          `${id} accepted a reconfiguration at ${out.index}@${out.term}${out.unchanged ? ' (unchanged)' : ''}; spec: ${JSON.stringify(answer)}`,
        );
      world.stats[out.unchanged ? 'changesUnchanged' : 'changesProposed'] += 1;
      return true;
    case 'reconfigureRejected':
      if (
        answer === undefined ||
        answer.accepted ||
        answer.code !== out.code ||
        answer.leaderId !== out.leaderId
      )
        fail(
          world,
          `${id} rejected a reconfiguration with ${out.code} (leader ${out.leaderId}); spec: ${JSON.stringify(answer)}`,
        );
      if (out.code === 'CHANGE_IN_PROGRESS') world.stats.changesInProgress += 1;
      if (out.code === 'LEADER_NOT_READY') world.stats.leaderNotReady += 1;
      if (out.code === 'INVALID_ARGUMENT') world.stats.changesInvalid += 1;
      return true;
    case 'membership': {
      // One per change within the step (C_old,new then C_new may both come): each names a
      // configuration the log holds at that index; the last one is in force (checkOutputs).
      const held = spec.configOf({ ...after, log: after.log.slice(0, out.index) });
      if (held.index !== out.index || !sameConfig(held.config, out.config))
        fail(
          world,
          `${id} announced configuration ${describeConfig(out.config)} at ${out.index}; its log holds ${describeConfig(held.config)} there`,
        );
      return true;
    }
    case 'removed':
      if (before.removed || !after.removed)
        fail(
          world,
          `${id} announced it was removed; the spec ${before.removed ? 'knew it already' : 'does not'}`,
        );
      world.stats.removedLearned += 1;
      return true;
    default:
      return false;
  }
};

/** Every output of the step but the persists and sends, which `exchange` handles. */
const checkOutputs = (view: StepView): void => {
  const { world, id, node, after, step } = view;
  let proposal: 'accepted' | 'rejected' | null = null;
  let lastMembership: Extract<RaftEmitted, { type: 'membership' }> | null = null;
  let removedOutputs = 0;
  let answered = false;
  for (const out of node.outputs) {
    if (out.type === 'committed') {
      if (out.firstIndex !== node.applied + 1)
        fail(world, `${id} handed over committed entries from ${out.firstIndex} after ${node.applied}`);
      const last = out.firstIndex + out.entries.length - 1;
      if (sameLog(out.entries, after.log.slice(out.firstIndex - 1, last)) !== 0)
        fail(world, `${id} handed over committed entries that differ from its log`);
      if (node.store.log.length < last)
        fail(world, `${id} committed ${last} with ${node.store.log.length} persisted`);
      node.applied = last;
      continue;
    }
    proposal = checkClientOutput(view, out) ?? proposal;
    if (!checkMembershipOutput(view, out)) continue;
    if (out.type === 'membership') lastMembership = out;
    else if (out.type === 'removed') removedOutputs += 1;
    else answered = true;
  }
  if (step.accepted !== undefined && proposal === null)
    fail(world, `${id} neither accepted nor rejected a proposal`);
  if (step.answer !== undefined && !answered)
    fail(world, `${id} neither accepted nor rejected a reconfiguration`);
  const inForce = spec.configOf(after);
  if (configChanged(view.before, after) !== (lastMembership !== null))
    fail(
      world,
      `${id}: the configuration in force ${lastMembership ? 'did not change, yet came' : 'changed without'} a membership output`,
    );
  if (lastMembership !== null && lastMembership.index !== inForce.index)
    fail(
      world,
      `${id} announced the configuration at ${lastMembership.index} last; ${inForce.index} is in force`,
    );
  if (!view.before.removed && after.removed && removedOutputs === 0)
    fail(world, `${id} learned it was removed without a removed output`);
};

/** Membership counters of a step, and the check that a server told it is removed starts no election. */
const countMembership = (view: StepView, sent: readonly RaftMessage[]): void => {
  const { world, before, after, event } = view;
  // An answer to a removed server's message, or a leader telling the servers a committed C_new left out.
  const asker =
    event.type === 'message' && spec.isFromRemovedServer(before, event.message.from)
      ? event.message.from
      : null;
  for (const m of sent) {
    if (m.type === 'Removed') world.stats[m.to === asker ? 'removedAnswers' : 'removedTold'] += 1;
  }
  const campaign = removedServerCampaigns(before, after, sent);
  if (campaign !== null) fail(world, campaign);
  if (before.role === 'leader' && after.role !== 'leader' && after.removed && !before.removed)
    world.stats.leadersRemoved += 1;
  countCatchUps(view);
  // A configuration entry that the write took out of the log (truncated or overwritten).
  for (let i = 1; i <= before.log.length; i += 1) {
    const entry = before.log[i - 1]!;
    if (entry.kind !== 'config') continue;
    const now = after.log[i - 1];
    if (now === undefined || !spec.sameEntry(now, entry)) {
      world.stats.configsTruncated += 1;
      break;
    }
  }
};

/** The learner phase of the step: the config entries the server appended as a leader, by what they follow. */
const countCatchUps = (view: StepView): void => {
  const { world, id, before, after, step } = view;
  const leader = step.sentAs ?? after;
  if (leader.role !== 'leader' || after.log.length <= before.log.length) return;
  for (let index = before.log.length + 1; index <= after.log.length; index += 1) {
    const entry = after.log[index - 1]!;
    if (entry.kind !== 'config') continue;
    const config = configOfEntry(entry);
    const previous = configBefore(after.log, world.spec[id]!.bootstrap, index);
    if (isCatchUpConfig(config)) world.stats.catchUps += 1;
    if (!isCatchUpConfig(previous)) continue;
    if (sameConfig(config, afterCatchUp(previous))) world.stats.catchUpsCompleted += 1;
    else if (sameConfig(config, stableOf(previous))) world.stats.catchUpsCancelled += 1;
    else world.stats.catchUpsReplaced += 1;
  }
};

const exchange = (world: World, id: NodeId, event: RaftEvent, action: SpecAction, label: string): void => {
  const node = world.impl[id]!;
  const before = world.spec[id]!;
  world.trace.push(label);
  if (world.trace.length > 40) world.trace.shift();
  world.stats.steps += 1;

  node.outputs = [];
  node.actor.send(event);
  const snapshot = node.actor.getSnapshot();
  if (snapshot.status === 'error')
    fail(world, `${id}: the implementation threw on ${label}: ${String(snapshot.error)}`);

  const step = specStep(world, id, () => action(before), label);
  const after = step.server;
  world.spec[id] = after;
  countIncarnations(world, before, after, event);

  const sent: RaftMessage[] = [];
  for (const out of node.outputs) {
    if (out.type === 'persist') applyPersist(world, id, node, out);
    if (out.type !== 'send') continue;
    for (const m of out.messages) {
      checkDurable(world, id, node, m);
      sent.push(m);
    }
  }
  const view: StepView = { world, id, node, before, after, step, event };
  checkOutputs(view);
  if (node.applied !== snapshot.context.commitIndex)
    fail(
      world,
      `${id} handed over entries up to ${node.applied} but commitIndex is ${snapshot.context.commitIndex}`,
    );

  // Agreement with the spec, and with what the server persisted.
  const diffs = compareWithSpec(after, snapshot.value, snapshot.context);
  diffs.push(...implementationConfigProblems(id, snapshot.context));
  const stored = node.store;
  if (stored.hardState.term !== after.currentTerm || stored.hardState.votedFor !== after.votedFor)
    diffs.push(`${id} persisted term ${stored.hardState.term} vote ${stored.hardState.votedFor}`);
  if (sameLog(stored.log, after.log) !== 0) diffs.push(`${id} persisted log ${describeLog(stored.log)}`);
  if (diffs.length > 0)
    fail(world, `spec and implementation disagree after ${label}:\n  ${diffs.join('\n  ')}`);

  checkSends(world, id, before, after, step, sent, label);
  world.network.push(...sent);
  countStep(world, before, after, sent);
  countMembership(view, sent);

  const problems = checkSafety(
    world.ids.map((i) => world.spec[i]!),
    world.history,
  );
  if (problems.length > 0) fail(world, `safety violated after ${label}:\n  ${problems.join('\n  ')}`);
};

/** Refinement of outputs: answers exactly the spec's; AppendEntries and Heartbeats ones its leader may send. */
const checkSends = (
  world: World,
  id: NodeId,
  before: spec.SpecServer,
  after: spec.SpecServer,
  step: spec.SpecStep,
  sent: readonly RaftMessage[],
  label: string,
): void => {
  const exact = sent
    .filter((m) => !isLeaderMessage(m))
    .map(canonical)
    .sort();
  const expected = step.send.map(canonical).sort();
  if (exact.join('\n') !== expected.join('\n'))
    fail(
      world,
      `${id} sent messages the spec does not after ${label}:\n  implementation: ${
        sent
          .filter((m) => !isLeaderMessage(m))
          .map(describeMessage)
          .join('; ') || 'none'
      }\n  spec: ${step.send.map(describeMessage).join('; ') || 'none'}`,
    );
  for (const m of sent) {
    if (!isLeaderMessage(m)) continue;
    const reason = spec.leaderMayHaveSent(step.sentAs ?? after, m, spec.peers(before));
    if (reason !== null) fail(world, `${id} sent ${describeMessage(m)} which the spec forbids: ${reason}`);
  }
};

const countStep = (
  world: World,
  before: spec.SpecServer,
  after: spec.SpecServer,
  sent: readonly RaftMessage[],
) => {
  if (before.recovering && !after.recovering) world.stats.recoveries += 1;
  if (before.role !== 'leader' && after.role === 'leader') world.stats.leadersElected += 1;
  if (before.role === 'leader' && after.role !== 'leader' && after.currentTerm === before.currentTerm)
    world.stats.stepDowns += 1;
  for (const m of sent) {
    if (m.type === 'AppendEntriesResponse' && !m.success) world.stats.appendRejections += 1;
    if (m.type === 'RequestVoteResponse' && m.preVote && !m.voteGranted) world.stats.preVoteRejections += 1;
  }
  if (
    after.log.length < before.log.length ||
    sameLog(before.log, after.log.slice(0, before.log.length)) !== 0
  )
    world.stats.truncations += 1;
};

// ---------------------------------------------------------------------------------------------
// Commands

const resolve = (world: World, target: Target): NodeId => {
  if (target === 'leader') {
    let best: spec.SpecServer | null = null;
    for (const id of world.ids) {
      const s = world.spec[id]!;
      if (s.role === 'leader' && (best === null || s.currentTerm > best.currentTerm)) best = s;
    }
    return best?.id ?? world.ids[0]!;
  }
  return world.ids[target % world.ids.length]!;
};

const matches = (m: RaftMessage, match: MessageMatch): boolean =>
  (match.from === undefined || m.from === match.from) &&
  (match.to === undefined || m.to === match.to) &&
  (match.type === undefined || m.type === match.type);

const deliverAt = (world: World, index: number): void => {
  const [message] = world.network.splice(index, 1);
  if (!message) return;
  world.stats.delivered += 1;
  exchange(
    world,
    message.to,
    { type: 'message', message },
    (s) => spec.receive(s, message),
    `deliver ${describeMessage(message)}`,
  );
};

/**
 * How much of `id`'s log a restart keeps. Losing the tail is safe only for entries no one counted
 * toward a commit: the server never acknowledged them (a follower's count), and no server ever
 * committed that far (a leader counts its own log, and commits what it counts). Like an unsynced
 * WAL tail cut at start, it leaves a log shorter than the one the server last answered from.
 */
const keptEntries = (world: World, id: NodeId, loseTail: boolean): number => {
  const length = world.impl[id]!.store.log.length;
  if (!loseTail) return length;
  return Math.min(length, Math.max(world.acked[id] ?? 0, world.history.maxCommitted));
};

/**
 * An amnesiac restart is run only while the servers that lack the state (recovering, or blank:
 * term 0 and an empty log) stay a minority with it: what the memory mode is stated to survive
 * (docs/design/recovery.md); otherwise the restart keeps the log.
 */
const mayForget = (world: World, id: NodeId): boolean => {
  const lacking = world.ids.filter((other) => {
    const s = world.spec[other]!;
    return other === id || s.recovering || (s.currentTerm === 0 && s.log.length === 0);
  });
  // Under membership changes: a minority of every voter set of every configuration in force
  // anywhere, and the server is a member of its own (its operator names that membership).
  const sets = world.ids.flatMap((other) => setsOf(spec.configOf(world.spec[other]!).config));
  return (
    isMemberOf(spec.configOf(world.spec[id]!).config, id) &&
    sets.every((set) => set.filter((v) => lacking.includes(v)).length <= Math.floor((set.length - 1) / 2))
  );
};

/** What an operator names as the voters of a server that lost its state: its membership then. */
const membersNamedFor = (world: World, id: NodeId): NodeId[] => {
  const { config } = spec.configOf(world.spec[id]!);
  return [...new Set([...config.voters, ...config.outgoing, id])].sort();
};

/** A restart that lost everything: the server recovers (its first RecoveryRequests go out at once). */
const forgetServer = (world: World, id: NodeId): void => {
  world.trace.push(`Restart(${id}, amnesiac)`);
  world.stats.restarts += 1;
  world.stats.amnesiacRestarts += 1;
  world.counters.restarts += 1;
  world.incarnation[id] = world.counters.restarts + 1;
  world.bootstrapOf[id] = membersNamedFor(world, id);
  const node = world.impl[id]!;
  node.store.hardState = { term: 0, votedFor: null };
  node.store.log.length = 0;
  world.acked[id] = 0;
  node.actor.stop();
  node.outputs = [];
  node.applied = 0;
  node.actor = startActor(world, id, node.store, true);
  node.actor.start();
  for (const read of world.reads.values()) if (read.server === id) read.answered = true;
  const step = spec.amnesiacRestart(world.spec[id]!, world.incarnation[id]!, world.bootstrapOf[id]!);
  world.spec[id] = step.server;
  onAmnesia(world.history, id);
  startedSends(world, id, step, 'its amnesiac restart');
  const snapshot = node.actor.getSnapshot();
  const diffs = compareWithSpec(world.spec[id]!, snapshot.value, snapshot.context);
  if (diffs.length > 0)
    fail(world, `spec and implementation disagree after Restart(${id}, amnesiac):\n  ${diffs.join('\n  ')}`);
};

/** What a server did as it started: persists applied, its sends checked against the spec's and sent. */
const startedSends = (world: World, id: NodeId, step: spec.SpecStep, label: string): void => {
  const node = world.impl[id]!;
  const sent: RaftMessage[] = [];
  for (const out of node.outputs) {
    if (out.type === 'persist') applyPersist(world, id, node, out);
    if (out.type === 'send') sent.push(...out.messages);
  }
  node.outputs = [];
  const exact = sent.map(canonical).sort();
  const expected = step.send.map(canonical).sort();
  if (exact.join('\n') !== expected.join('\n'))
    fail(world, `${id} sent messages the spec does not after ${label}`);
  world.network.push(...sent);
};

const restartServer = (world: World, id: NodeId, loseTail = false, amnesia = false): void => {
  if (amnesia && mayForget(world, id)) {
    forgetServer(world, id);
    return;
  }
  world.trace.push(`Restart(${id}${loseTail ? ', losing its tail' : ''})`);
  world.stats.restarts += 1;
  world.counters.restarts += 1;
  world.incarnation[id] = world.counters.restarts + 1;
  const node = world.impl[id]!;
  const kept = keptEntries(world, id, loseTail);
  if (kept < node.store.log.length) {
    world.stats.tailsLost += 1;
    node.store.log.length = kept;
  }
  node.actor.stop();
  node.outputs = [];
  node.applied = 0;
  node.actor = startActor(world, id, node.store);
  node.actor.start();
  for (const read of world.reads.values()) if (read.server === id) read.answered = true;
  const started = spec.startup(spec.restart(world.spec[id]!, world.incarnation[id]!, kept));
  world.spec[id] = started.server;
  onRestart(world.history, id);
  startedSends(world, id, started, `Restart(${id})`);
  const snapshot = node.actor.getSnapshot();
  const diffs = compareWithSpec(world.spec[id]!, snapshot.value, snapshot.context);
  if (diffs.length > 0)
    fail(world, `spec and implementation disagree after Restart(${id}):\n  ${diffs.join('\n  ')}`);
  const problems = checkSafety(
    world.ids.map((i) => world.spec[i]!),
    world.history,
  );
  if (problems.length > 0) fail(world, `safety violated after Restart(${id}):\n  ${problems.join('\n  ')}`);
};

/**
 * The voters a reconfiguration asks for: picked from `current` (the target's C_new) and the pool
 * by `change`, deterministically from `pick`.
 */
export const votersFor = (
  pool: readonly NodeId[],
  current: readonly NodeId[],
  target: NodeId,
  change: ChangeKind,
  pick: number,
): NodeId[] => {
  const outside = pool.filter((id) => !current.includes(id));
  const rotate = <T>(list: readonly T[]): T[] => list.map((_, i) => list[(i + pick) % list.length]!);
  switch (change) {
    case 'grow':
      return [...current, ...rotate(outside).slice(0, 1 + (pick % 2))];
    case 'shrink':
      return current.length <= 1
        ? [...current]
        : rotate(current).slice(Math.min(1 + (pick % 2), current.length - 1));
    case 'replace':
      return outside.length === 0
        ? [...current]
        : rotate(outside).slice(0, Math.min(current.length, outside.length));
    case 'removeTarget': {
      const others = current.filter((id) => id !== target);
      const added = pick % 2 === 1 ? rotate(outside).slice(0, 1) : [];
      return others.length + added.length === 0 ? [...current] : [...others, ...added];
    }
    case 'subset': {
      const chosen = pool.filter((_, i) => (pick >> i) & 1);
      return chosen.length > 0 ? chosen : [pool[pick % pool.length]!];
    }
    case 'same':
      return [...current];
    case 'invalid':
      return pick % 2 === 0 || current.length === 0 ? [] : [current[0]!, ...current];
  }
};

/** Where a voter listens, when a reconfiguration names addresses (two variants, so they may change). */
const addressesFor = (
  voters: readonly NodeId[],
  pick: number,
): Record<NodeId, { host: string; port: number }> =>
  Object.fromEntries(
    voters.map((id) => [id, { host: '127.0.0.1', port: 7000 + SERVER_IDS.indexOf(id) + 100 * (pick % 2) }]),
  );

/**
 * A spare server named by a reconfiguration starts as a user adds a node: an empty log, the
 * requested voters as its bootstrap membership, recovering, never bootstrapping a cluster (`join`).
 * A spare that already started but still holds nothing starts again with the new membership.
 */
const startSpare = (world: World, id: NodeId, voters: readonly NodeId[]): void => {
  const known = world.spec[id];
  const named = [...new Set([...voters])].sort();
  if (known !== undefined) {
    const blank = known.log.length === 0 && known.currentTerm === 0;
    if (!world.joins[id] || !blank || named.join() === world.bootstrapOf[id]!.join()) return;
    // Not while some configuration in force counts it (a learner too): it is being added with the
    // membership it has.
    if (world.ids.some((other) => membersOfConfig(spec.configOf(world.spec[other]!).config).includes(id)))
      return;
    world.impl[id]!.actor.stop();
  } else {
    world.ids.push(id);
    world.impl[id] = {
      actor: undefined as unknown as Actor<RaftMachine>,
      outputs: [],
      store: { hardState: { term: 0, votedFor: null }, log: [] },
      applied: 0,
    };
  }
  world.trace.push(`Start(${id}, joining ${named.join('')})`);
  world.stats.serversAdded += 1;
  world.counters.restarts += 1;
  world.incarnation[id] = world.counters.restarts + 1;
  world.bootstrapOf[id] = named;
  world.joins[id] = true;
  world.acked[id] = 0;
  const node = world.impl[id]!;
  node.store = { hardState: { term: 0, votedFor: null }, log: [] };
  node.outputs = [];
  node.applied = 0;
  node.actor = startActor(world, id, node.store, true);
  node.actor.start();
  const step = spec.joinStart(id, named, world.incarnation[id]!);
  world.spec[id] = step.server;
  onAmnesia(world.history, id);
  startedSends(world, id, step, `Start(${id})`);
  const snapshot = node.actor.getSnapshot();
  const diffs = compareWithSpec(world.spec[id]!, snapshot.value, snapshot.context);
  if (diffs.length > 0)
    fail(world, `spec and implementation disagree after Start(${id}):\n  ${diffs.join('\n  ')}`);
};

const reconfigureCmd = (world: World, cmd: Extract<Cmd, { kind: 'reconfigure' }>): void => {
  const id = resolve(world, cmd.server);
  const current = spec.configOf(world.spec[id]!).config.voters;
  const voters = votersFor(world.pool, current, id, cmd.change, cmd.pick);
  const addresses = cmd.addresses ? addressesFor(voters, cmd.pick) : {};
  for (const voter of new Set(voters))
    if (world.pool.includes(voter) && voter !== id) startSpare(world, voter, voters);
  world.stats.reconfigures += 1;
  world.counters.requests += 1;
  exchange(
    world,
    id,
    { type: 'reconfigure', requestId: world.counters.requests, voters, addresses },
    (s) => spec.reconfigure(s, voters, addresses),
    `Reconfigure(${id}, ${voters.join('') || 'none'}${cmd.addresses ? ', with addresses' : ''})`,
  );
};

/** Runs one command on the world, checking everything after each step. */
export const runCmd = (world: World, cmd: Cmd): void => {
  world.stats.commands += 1;
  switch (cmd.kind) {
    case 'timeout': {
      const id = resolve(world, cmd.server);
      exchange(world, id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${id})`);
      return;
    }
    case 'heartbeat': {
      const id = resolve(world, cmd.server);
      exchange(world, id, { type: 'heartbeatTimeout' }, spec.heartbeatTimeout, `HeartbeatTimeout(${id})`);
      return;
    }
    case 'checkQuorum': {
      const id = resolve(world, cmd.server);
      exchange(world, id, { type: 'checkQuorum' }, spec.checkQuorum, `CheckQuorum(${id})`);
      return;
    }
    case 'propose': {
      const id = resolve(world, cmd.server);
      const commands = Array.from({ length: cmd.count }, () => {
        world.counters.data += 1;
        return new TextEncoder().encode(`v${world.counters.data}`);
      });
      world.counters.batch += 1;
      exchange(
        world,
        id,
        { type: 'propose', batchId: world.counters.batch, commands },
        (s) => spec.clientRequest(s, commands),
        `ClientRequest(${id}, ${cmd.count})`,
      );
      return;
    }
    case 'read': {
      const id = resolve(world, cmd.server);
      world.counters.read += 1;
      const readId = world.counters.read;
      world.reads.set(readId, { server: id, minIndex: world.history.maxCommitted, answered: false });
      exchange(
        world,
        id,
        { type: 'readIndex', ids: [readId] },
        (s) => ({ server: s, send: [] }),
        `ReadIndex(${id})`,
      );
      return;
    }
    case 'restart':
      restartServer(world, resolve(world, cmd.server), cmd.loseTail === true, cmd.amnesia === true);
      return;
    case 'reconfigure':
      reconfigureCmd(world, cmd);
      return;
    case 'deliver':
      if (world.network.length > 0) deliverAt(world, cmd.pick % world.network.length);
      return;
    case 'deliverMany':
      for (let i = 0; i < cmd.count && world.network.length > 0; i += 1) deliverAt(world, 0);
      return;
    case 'drop':
      if (world.network.length > 0) {
        const [m] = world.network.splice(cmd.pick % world.network.length, 1);
        world.trace.push(`drop ${describeMessage(m!)}`);
      }
      return;
    case 'duplicate':
      if (world.network.length > 0) {
        const m = world.network[cmd.pick % world.network.length]!;
        world.trace.push(`duplicate ${describeMessage(m)}`);
        world.network.push(m);
      }
      return;
    case 'isolate': {
      const id = resolve(world, cmd.server);
      const before = world.network.length;
      world.network = world.network.filter((m) => m.from !== id && m.to !== id);
      world.trace.push(`isolate ${id}: dropped ${before - world.network.length} messages`);
      return;
    }
    case 'deliverWhere': {
      const index = world.network.findIndex((m) => matches(m, cmd.match));
      if (index < 0) fail(world, `no message in flight matches ${JSON.stringify(cmd.match)}`);
      deliverAt(world, index);
      return;
    }
    case 'dropWhere': {
      const before = world.network.length;
      world.network = world.network.filter((m) => !matches(m, cmd.match));
      world.trace.push(
        `drop ${before - world.network.length} messages matching ${JSON.stringify(cmd.match)}`,
      );
      return;
    }
  }
};

const deliverAll = (world: World): void => {
  for (let count = 0; world.network.length > 0; count += 1) {
    if (count > 5000) fail(world, 'the network never went quiet');
    deliverAt(world, 0);
  }
};

/**
 * True when one leader has brought the log and commit of every member of its configuration to its
 * own (its learners too), leads the highest term among them (servers outside it, removed or never
 * added, may keep what they hold), and no change it started is left halfway: a catch-up whose
 * learners hold the log goes on to C_old,new once the leader hears they no longer recover.
 */
const converged = (world: World): boolean => {
  const leaders = world.ids.map((id) => world.spec[id]!).filter((s) => s.role === 'leader');
  const leader = leaders.sort((x, y) => y.currentTerm - x.currentTerm)[0];
  if (!leader) return false;
  const members = spec.peers(leader).map((id) => world.spec[id]!);
  return (
    members.every(
      (s) =>
        s.currentTerm === leader.currentTerm &&
        s.commitIndex === leader.log.length &&
        sameLog(s.log, leader.log) === 0 &&
        s.leaderId === leader.id,
    ) &&
    leader.commitIndex === leader.log.length &&
    !isCatchUpConfig(spec.configOf(leader).config)
  );
};

const HEAL_ROUNDS = 12;

/** A heal round's election: followers of someone time out first (so they grant pre-votes), then the best log. */
const healElection = (world: World, servers: readonly spec.SpecServer[]): void => {
  // A recovering server or one that may not campaign (removed, or no member) starts no election.
  const candidates = servers.filter((s) => !s.recovering && spec.mayCampaign(s));
  const best = [...(candidates.length > 0 ? candidates : servers)].sort(
    (x, y) => spec.lastTerm(y.log) - spec.lastTerm(x.log) || y.log.length - x.log.length,
  )[0]!;
  for (const s of servers) {
    if (s.id === best.id || world.spec[s.id]!.leaderId === null) continue;
    exchange(world, s.id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${s.id})`);
    deliverAll(world);
  }
  exchange(world, best.id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${best.id})`);
};

/**
 * Liveness after the faults stop: the network becomes reliable and timers fire one at a time.
 * While there is a leader, the one of the highest term sends heartbeats (a stale one learns the
 * higher term from the answers and steps down). While there is none, the servers that still follow
 * someone time out first (so they stop refusing pre-votes), then the one with the most up-to-date
 * log. Recovering servers without a target retry every round (a server being added recovers once
 * the leader counts it as a member). Within a few rounds one leader must have replicated and committed its whole
 * log on every member. Flow control is not in the spec; this is where a stalled pipeline shows.
 */
export const heal = (world: World): number => {
  world.trace.push('-- heal: no more faults --');
  for (let round = 0; round < HEAL_ROUNDS; round += 1) {
    deliverAll(world);
    if (converged(world)) return round;
    // A recovering server without a leader to copy from asks again (its retry timer).
    for (const s of world.ids.map((id) => world.spec[id]!)) {
      if (!s.recovering || s.recovery.target !== null) continue;
      exchange(world, s.id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${s.id})`);
      deliverAll(world);
    }
    const servers = world.ids.map((id) => world.spec[id]!);
    const leader = servers
      .filter((s) => s.role === 'leader')
      .sort((x, y) => y.currentTerm - x.currentTerm)[0];
    if (leader) {
      // A stale leader learns the higher term from the answers and steps down.
      exchange(
        world,
        leader.id,
        { type: 'heartbeatTimeout' },
        spec.heartbeatTimeout,
        `HeartbeatTimeout(${leader.id})`,
      );
      continue;
    }
    healElection(world, servers);
  }
  deliverAll(world);
  if (converged(world)) return HEAL_ROUNDS;
  if (recoveringMajority(world)) {
    world.stats.stalledJoins += 1;
    return HEAL_ROUNDS;
  }
  return fail(
    world,
    `liveness: no leader had replicated and committed its log everywhere after ${HEAL_ROUNDS} rounds of healing`,
  );
};

/**
 * The one stall the model would excuse (counted as `stalledJoins`): no leader, and the
 * configuration of the most up-to-date log that may campaign has a voter set without a majority of
 * servers that are not recovering: recovering servers vote for no one and a recovering server
 * completes only by copying a leader's log, so no election can be won. Servers being added catch up
 * as learners before they vote (dissertation §4.2.1), so this no longer happens: the membership
 * suites assert a count of 0.
 */
const recoveringMajority = (world: World): boolean => {
  const servers = world.ids.map((id) => world.spec[id]!);
  if (servers.some((s) => s.role === 'leader')) return false;
  const able = servers.filter((s) => !s.recovering && spec.mayCampaign(s));
  const best = able.sort(
    (x, y) => spec.lastTerm(y.log) - spec.lastTerm(x.log) || y.log.length - x.log.length,
  )[0];
  if (best === undefined) return servers.some((s) => s.recovering);
  return setsOf(spec.configOf(best).config).some(
    (set) => set.filter((v) => world.spec[v]?.recovering === false).length < Math.floor(set.length / 2) + 1,
  );
};

/** Runs a scripted command list on a fresh world; throws a ModelViolation error on the first problem. */
export const runScript = (config: ModelConfig, cmds: readonly Cmd[]): World => {
  const world = createWorld(config);
  try {
    for (const cmd of cmds) runCmd(world, cmd);
    return world;
  } finally {
    stopWorld(world);
  }
};

// ---------------------------------------------------------------------------------------------
// Generators and the property

const targetArb: fc.Arbitrary<Target> = fc.oneof(
  { weight: 3, arbitrary: fc.nat(6) },
  { weight: 2, arbitrary: fc.constant('leader' as const) },
);
const pickArb = fc.oneof({ weight: 1, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.nat(40) });

const CHANGES: readonly ChangeKind[] = [
  'grow',
  'shrink',
  'replace',
  'removeTarget',
  'subset',
  'same',
  'invalid',
];

const reconfigureArb: fc.Arbitrary<Cmd> = fc.record({
  kind: fc.constant('reconfigure' as const),
  server: fc.oneof(
    { weight: 4, arbitrary: fc.constant('leader' as const) },
    { weight: 1, arbitrary: fc.nat(6) },
  ),
  change: fc.oneof(
    // 'same' while a catch-up is in force cancels it (the base is appended): frequent enough to happen.
    {
      weight: 3,
      arbitrary: fc.constantFrom<ChangeKind>('grow', 'shrink', 'replace', 'removeTarget', 'same'),
    },
    { weight: 2, arbitrary: fc.constantFrom(...CHANGES) },
  ),
  pick: fc.nat(127),
  addresses: fc.boolean(),
});

/** Weighted so that elections finish and entries commit in most runs; with `membership`, reconfigurations too. */
export const cmdArb = (servers: number, membership = false): fc.Arbitrary<Cmd> =>
  membership
    ? fc.oneof(
        { weight: 80, arbitrary: baseCmdArb(servers) },
        { weight: 8, arbitrary: reconfigureArb },
        // A change takes two commits: more delivery lets more of them finish within the faults.
        {
          weight: 12,
          arbitrary: fc.record({
            kind: fc.constant('deliverMany' as const),
            count: fc.integer({ min: servers + 1, max: 4 * (servers + 2) }),
          }),
        },
      )
    : baseCmdArb(servers);

const baseCmdArb = (servers: number): fc.Arbitrary<Cmd> =>
  fc.oneof(
    { weight: 30, arbitrary: fc.record({ kind: fc.constant('deliver' as const), pick: pickArb }) },
    {
      weight: 14,
      arbitrary: fc.record({
        kind: fc.constant('deliverMany' as const),
        count: fc.integer({ min: 1, max: 2 * servers }),
      }),
    },
    { weight: 10, arbitrary: fc.record({ kind: fc.constant('timeout' as const), server: fc.nat(6) }) },
    {
      weight: 10,
      arbitrary: fc.record({
        kind: fc.constant('propose' as const),
        server: targetArb,
        count: fc.integer({ min: 1, max: 3 }),
      }),
    },
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('heartbeat' as const), server: targetArb }) },
    {
      weight: 4,
      arbitrary: fc.record({ kind: fc.constant('checkQuorum' as const), server: targetArb }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('isolate' as const), server: targetArb }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('read' as const), server: targetArb }) },
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('drop' as const), pick: pickArb }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('duplicate' as const), pick: pickArb }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('restart' as const),
        server: targetArb,
        loseTail: fc.boolean(),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('restart' as const),
        server: targetArb,
        amnesia: fc.constant(true),
      }),
    },
  );

export type ModelCommand = fc.Command<object, World> & { readonly cmd: Cmd };

export const toCommand = (cmd: Cmd): ModelCommand => ({
  cmd,
  check: () => true,
  run: (_model, world) => runCmd(world, cmd),
  toString: () => showCmd(cmd),
});

export const configArb = (servers: number, spares?: number): fc.Arbitrary<ModelConfig> =>
  fc.record({
    servers: fc.constant(servers),
    ...(spares === undefined ? {} : { spares: fc.constant(spares) }),
    maxInflight: fc.constantFrom(1, 2, 8),
    maxEntriesPerAppend: fc.constantFrom(1, 2, 512),
    seed: fc.integer({ min: 0, max: 0x7fffffff }),
  });

export type ModelRunOptions = {
  servers: number;
  numRuns: number;
  seed: number;
  path?: string;
  maxCommands?: number;
  /**
   * Membership runs: reconfigurations are generated, and this many spare servers (beyond the
   * initial cluster, at most 7 ids in all) may be added. Undefined: no reconfiguration at all.
   */
  spares?: number;
  /** Name of the test, for the replay command. */
  testName?: string;
  /** False when the environment variables do not reach this run (no replay line then). */
  replayable?: boolean;
};

export type ModelReport = {
  failed: boolean;
  /** The failure, with the shrunk counterexample and a one-line replay command. */
  message: string;
  stats: Stats;
  numRuns: number;
  seed: number;
  path: string | null;
  error: string | null;
};

/**
 * The model property: a generated config and command sequence, run on a fresh world with
 * fc.modelRun. The sequence is a plain array of command data rather than fc.commands, so that a
 * failure replays from fast-check's seed and path alone (fc.commands also needs its replayPath).
 */
export const modelProperty = (servers: number, maxCommands: number, stats: Stats, spares?: number) =>
  fc.property(
    configArb(servers, spares),
    fc.array(cmdArb(servers, spares !== undefined), { maxLength: maxCommands, size: 'max' }),
    (config, cmds) => {
      const world = createWorld(config);
      let run: Stats | null = null;
      try {
        fc.modelRun(() => ({ model: {}, real: world }), cmds.map(toCommand));
        // Counters of the generated (faulty) part only, so that healing cannot make them pass.
        run = finishRun(world);
        const healRounds = heal(world);
        run = {
          ...run,
          healRounds,
          committedAfterHeal: world.history.committed.size,
          steps: world.stats.steps,
        };
      } finally {
        stopWorld(world);
        addStats(stats, run ?? finishRun(world));
      }
    },
  );

export const replayCommand = (seed: number, path: string, testName?: string): string =>
  `DISKEYVAL_MODEL_SEED=${seed} DISKEYVAL_MODEL_PATH=${path} npx vitest run test/model${testName ? ` -t '${testName}'` : ''}`;

/** Runs the model property and reports instead of throwing, so callers can expect failures too. */
export const runModel = (options: ModelRunOptions): ModelReport => {
  const stats = emptyStats();
  const property = modelProperty(options.servers, options.maxCommands ?? 100, stats, options.spares);
  const details = fc.check(property, {
    numRuns: options.numRuns,
    seed: options.seed,
    ...(options.path ? { path: options.path } : {}),
  });
  if (!details.failed) {
    return {
      failed: false,
      message: '',
      stats,
      numRuns: details.numRuns,
      seed: details.seed,
      path: null,
      error: null,
    };
  }
  const path = details.counterexamplePath ?? '';
  const error =
    details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
  const [config, cmds] = details.counterexample ?? [undefined, []];
  const script = cmds as Cmd[];
  const message = [
    `model check failed after ${details.numRuns} run(s), shrunk ${details.numShrinks} time(s)`,
    `config: ${JSON.stringify(config)}`,
    `commands (${script.length}): ${script.map(showCmd).join(', ')}`,
    `script: ${JSON.stringify(script)}`,
    `error: ${error}`,
    ...(options.replayable === false
      ? []
      : [`replay: ${replayCommand(details.seed, path, options.testName)}`]),
  ].join('\n');
  return { failed: true, message, stats, numRuns: details.numRuns, seed: details.seed, path, error };
};
