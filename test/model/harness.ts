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
import { checkSafety, createHistory, type History, onAmnesia, onRestart } from './invariants.js';
import * as spec from './spec.js';

// ---------------------------------------------------------------------------------------------
// Configuration and commands

export type ModelConfig = {
  servers: number;
  /** Passed to the machine: bounds the replication pipeline (flow control is not in the spec). */
  maxInflight: number;
  maxEntriesPerAppend: number;
  /** Seed of the machines' election-timeout generator (irrelevant here: timers are explicit). */
  seed: number;
};

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
});

export const addStats = (total: Stats, run: Stats): void => {
  for (const key of Object.keys(total) as (keyof Stats)[]) {
    total[key] = key === 'maxTerm' ? Math.max(total[key], run[key]) : total[key] + run[key];
  }
};

type PendingRead = { server: NodeId; minIndex: number; answered: boolean };

export type World = {
  config: ModelConfig;
  ids: NodeId[];
  impl: Record<NodeId, ImplNode>;
  spec: Record<NodeId, spec.SpecServer>;
  network: RaftMessage[];
  history: History;
  stats: Stats;
  reads: Map<number, PendingRead>;
  counters: { batch: number; read: number; data: number; restarts: number };
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
      voters: world.ids,
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
    ids,
    impl: {},
    spec: {},
    network: [],
    history: createHistory(),
    stats: { ...emptyStats(), runs: 1 },
    reads: new Map(),
    counters: { batch: 0, read: 0, data: 0, restarts: 0 },
    acked: {},
    incarnation: {},
    trace: [],
  };
  for (const id of ids) {
    const store = { hardState: { term: 0, votedFor: null }, log: [] };
    world.incarnation[id] = 1;
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

export const describeLog = (log: readonly Entry[]): string =>
  `[${log.map((e) => (e.kind === 'noop' ? `n${e.term}` : `${e.term}:${hex(e.data)}`)).join(' ')}]`;

export const describeServer = (s: spec.SpecServer): string =>
  `${s.id} ${s.role}${s.phase ? `/${s.phase}` : ''} term=${s.currentTerm} vote=${s.votedFor ?? '-'} leader=${s.leaderId ?? '-'} commit=${s.commitIndex} log=${describeLog(s.log)}${s.role === 'leader' ? ` match=${JSON.stringify(s.matchIndex)}` : ''}`;

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

type SpecAction = (s: spec.SpecServer) => spec.SpecStep & { accepted?: boolean };

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
  let proposal: 'accepted' | 'rejected' | null = null;
  for (const out of node.outputs) {
    switch (out.type) {
      case 'persist':
        applyPersist(world, id, node, out);
        break;
      case 'send':
        for (const m of out.messages) {
          checkDurable(world, id, node, m);
          sent.push(m);
        }
        break;
      case 'committed': {
        if (out.firstIndex !== node.applied + 1)
          fail(world, `${id} handed over committed entries from ${out.firstIndex} after ${node.applied}`);
        const last = out.firstIndex + out.entries.length - 1;
        if (sameLog(out.entries, after.log.slice(out.firstIndex - 1, last)) !== 0)
          fail(world, `${id} handed over committed entries that differ from its log`);
        if (node.store.log.length < last)
          fail(world, `${id} committed ${last} with ${node.store.log.length} persisted`);
        node.applied = last;
        break;
      }
      case 'proposalsAccepted':
        proposal = 'accepted';
        if (step.accepted !== true)
          fail(world, `${id} accepted a proposal the spec refuses (${before.role})`);
        if (out.firstIndex !== before.log.length + 1 || out.term !== before.currentTerm)
          fail(world, `${id} accepted a proposal at ${out.firstIndex}@${out.term}`);
        world.stats.proposalsAccepted += 1;
        break;
      case 'proposalsRejected':
        proposal = 'rejected';
        if (step.accepted !== false) fail(world, `${id} rejected a proposal the spec accepts`);
        if (out.leaderId !== before.leaderId)
          fail(world, `${id} rejected a proposal naming leader ${out.leaderId}`);
        break;
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
        break;
      case 'readsRejected':
        for (const readId of out.ids) {
          const read = world.reads.get(readId);
          if (!read || read.answered || read.server !== id)
            fail(world, `${id} rejected read ${readId} it was not asked`);
          else read.answered = true;
        }
        break;
    }
  }
  if (step.accepted !== undefined && proposal === null)
    fail(world, `${id} neither accepted nor rejected a proposal`);
  if (node.applied !== snapshot.context.commitIndex)
    fail(
      world,
      `${id} handed over entries up to ${node.applied} but commitIndex is ${snapshot.context.commitIndex}`,
    );

  // Agreement with the spec, and with what the server persisted.
  const diffs = compareWithSpec(after, snapshot.value, snapshot.context);
  const stored = node.store;
  if (stored.hardState.term !== after.currentTerm || stored.hardState.votedFor !== after.votedFor)
    diffs.push(`${id} persisted term ${stored.hardState.term} vote ${stored.hardState.votedFor}`);
  if (sameLog(stored.log, after.log) !== 0) diffs.push(`${id} persisted log ${describeLog(stored.log)}`);
  if (diffs.length > 0)
    fail(world, `spec and implementation disagree after ${label}:\n  ${diffs.join('\n  ')}`);

  // Refinement of outputs.
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
    const reason = spec.leaderMayHaveSent(after, m);
    if (reason !== null) fail(world, `${id} sent ${describeMessage(m)} which the spec forbids: ${reason}`);
  }
  world.network.push(...sent);

  // Counters.
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

  const problems = checkSafety(
    world.ids.map((i) => world.spec[i]!),
    world.history,
  );
  if (problems.length > 0) fail(world, `safety violated after ${label}:\n  ${problems.join('\n  ')}`);
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
    return other !== id && (s.recovering || (s.currentTerm === 0 && s.log.length === 0));
  }).length;
  return lacking + 1 <= Math.floor((world.ids.length - 1) / 2);
};

/** A restart that lost everything: the server recovers (its first RecoveryRequests go out at once). */
const forgetServer = (world: World, id: NodeId): void => {
  world.trace.push(`Restart(${id}, amnesiac)`);
  world.stats.restarts += 1;
  world.stats.amnesiacRestarts += 1;
  world.counters.restarts += 1;
  world.incarnation[id] = world.counters.restarts + 1;
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
  const step = spec.amnesiacRestart(world.spec[id]!, world.incarnation[id]!);
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

/** True when one leader of the highest term has brought every server's log and commit to its own. */
const converged = (world: World): boolean => {
  const servers = world.ids.map((id) => world.spec[id]!);
  const maxTerm = Math.max(...servers.map((s) => s.currentTerm));
  const leader = servers.find((s) => s.role === 'leader' && s.currentTerm === maxTerm);
  if (!leader) return false;
  return servers.every(
    (s) =>
      s.currentTerm === maxTerm &&
      s.commitIndex === leader.log.length &&
      sameLog(s.log, leader.log) === 0 &&
      s.leaderId === leader.id,
  );
};

const HEAL_ROUNDS = 12;

/**
 * Liveness after the faults stop: the network becomes reliable and timers fire one at a time.
 * While there is a leader, the one of the highest term sends heartbeats (a stale one learns the
 * higher term from the answers and steps down). While there is none, the servers that still follow
 * someone time out first (so they stop refusing pre-votes), then the one with the most up-to-date
 * log. Within a few rounds one leader must have replicated and committed its whole log on
 * every server. Flow control is not in the spec; this is where a stalled pipeline shows.
 */
export const heal = (world: World): number => {
  world.trace.push('-- heal: no more faults --');
  for (let round = 0; round < HEAL_ROUNDS; round += 1) {
    deliverAll(world);
    if (converged(world)) return round;
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
    // A recovering server starts no election: the best of the others does.
    const candidates = servers.filter((s) => !s.recovering);
    const best = [...(candidates.length > 0 ? candidates : servers)].sort(
      (x, y) => spec.lastTerm(y.log) - spec.lastTerm(x.log) || y.log.length - x.log.length,
    )[0]!;
    for (const s of servers) {
      if (s.id === best.id || world.spec[s.id]!.leaderId === null) continue;
      exchange(world, s.id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${s.id})`);
      deliverAll(world);
    }
    exchange(world, best.id, { type: 'electionTimeout' }, spec.timeout, `Timeout(${best.id})`);
  }
  deliverAll(world);
  if (!converged(world))
    fail(
      world,
      `liveness: no leader had replicated and committed its log everywhere after ${HEAL_ROUNDS} rounds of healing`,
    );
  return HEAL_ROUNDS;
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

/** Weighted so that elections finish and entries commit in most runs. */
export const cmdArb = (servers: number): fc.Arbitrary<Cmd> =>
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

export const configArb = (servers: number): fc.Arbitrary<ModelConfig> =>
  fc.record({
    servers: fc.constant(servers),
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
export const modelProperty = (servers: number, maxCommands: number, stats: Stats) =>
  fc.property(
    configArb(servers),
    fc.array(cmdArb(servers), { maxLength: maxCommands, size: 'max' }),
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
  const property = modelProperty(options.servers, options.maxCommands ?? 100, stats);
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
