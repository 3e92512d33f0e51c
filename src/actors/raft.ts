/**
 * The raft actor (`<node>/raft`): the role machine (machines/raft.machine.ts), which decides
 * everything Raft decides, and the routing of its outputs. Every output goes, in emission order, to
 * the actor that owns that part of the world (events.ts): persists to the log actor; with a durable
 * log, every other output that must wait for them to the log actor's outbox too (`afterPersist`),
 * except the leader's AppendEntries and heartbeats, which promise nothing about its own disk and go
 * straight to the peers (§10.2.1); with a memory log, everything else straight to its actor.
 *
 * It also tells the others when its role, term or leader changes (`leaderChanged`: requests,
 * peers), and runs the follower's election timer for the machine.
 */
import type { AnyActorRef, AnyActorScope } from 'xstate';
import type { NodeId, RaftMessage } from '../machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../machines/raft.machine.js';
import type { RaftEmitted, Role } from '../machines/raft.types.js';
import type { Clock } from './deadlines.js';
import type { AnyActorSystem } from './events.js';
import { deliverOutput, relay, type SystemIds } from './events.js';

/** A leader's AppendEntries and heartbeats promise nothing about its own disk (§10.2.1). */
export const SENDS_BEFORE_FLUSH: ReadonlySet<RaftMessage['type']> = new Set(['AppendEntries', 'Heartbeat']);

export type RaftStatus = {
  id: NodeId;
  role: Role;
  term: number;
  leaderId: NodeId | null;
  commitIndex: number;
  lastIndex: number;
};

export type RaftCounters = { elections: number };

export type RaftDeps = {
  ids: SystemIds;
  peers: readonly NodeId[];
  /** The log is durable: outputs that wait for persists go through the log actor's outbox. */
  durable: boolean;
  /** Test hook for broken variants only: message types that go before the flush (default above). */
  sendsBeforeFlush: ReadonlySet<RaftMessage['type']>;
  clock: Clock;
  nowMs: () => number;
  onRole: (status: RaftStatus) => void;
  counters: RaftCounters;
  /** Set at start: stops the raft actor's timers (the node calls it when it stops). */
  stopTimers?: () => void;
};

/** The role machine's status as its snapshot has it now. */
export const statusOf = (id: NodeId, raft: AnyActorRef): RaftStatus => {
  const { context, value } = raft.getSnapshot();
  return {
    id,
    role: roleOf(value),
    term: context.currentTerm,
    leaderId: context.leaderId,
    commitIndex: context.commitIndex,
    lastIndex: context.log.offset + context.log.entries.length,
  };
};

type Router = { deps: RaftDeps; system: AnyActorSystem; self: AnyActorRef; timer: ElectionTimer };

/** One output of the machine, to the actor that carries it out (see the header). */
const route = (router: Router, output: RaftEmitted): void => {
  const { deps, system, self } = router;
  const { ids } = deps;
  switch (output.type) {
    case 'persist':
      relay(system, self, ids.log, { type: 'persist', output });
      return;
    case 'installSnapshot':
      relay(system, self, ids.log, { type: 'installSnapshot', output });
      return;
    case 'electionTimerReset':
      router.timer.reset(output.timeoutMs);
      return;
  }
  if (!deps.durable) {
    deliverOutput(system, self, ids, output);
    return;
  }
  if (output.type === 'send') {
    const early = output.messages.filter((message) => deps.sendsBeforeFlush.has(message.type));
    if (early.length > 0) {
      deliverOutput(system, self, ids, { type: 'send', messages: early });
      if (early.length === output.messages.length) return;
      const late = output.messages.filter((message) => !deps.sendsBeforeFlush.has(message.type));
      relay(system, self, ids.log, { type: 'afterPersist', output: { type: 'send', messages: late } });
      return;
    }
  }
  relay(system, self, ids.log, { type: 'afterPersist', output });
};

type ElectionTimer = { reset: (timeoutMs: number) => void; stop: () => void };

/**
 * The machine says when a follower's election timer starts over (`electionTimerReset`: on becoming
 * a follower, hearing from the leader, granting a vote); `electionTimeout` goes to it once that
 * much time passed without a reset while it is still a follower. One clock timer, armed for the
 * earliest deadline it may have to meet and re-armed when it fires before the current deadline: a
 * reset per message moves a number, it does not cancel and start a timer.
 */
const createElectionTimer = (deps: RaftDeps, self: AnyActorRef): ElectionTimer => {
  const { clock, nowMs } = deps;
  let deadline = Number.POSITIVE_INFINITY;
  let timer: unknown = null;
  let timerAt = Number.POSITIVE_INFINITY;
  let stopped = false;
  const arm = (at: number, now: number): void => {
    if (timer !== null) clock.clearTimeout(timer);
    timerAt = at;
    timer = clock.setTimeout(fire, at - now);
  };
  const fire = (): void => {
    timer = null;
    timerAt = Number.POSITIVE_INFINITY;
    const snapshot = self.getSnapshot();
    if (stopped || snapshot.status !== 'active' || roleOf(snapshot.value) !== 'follower') return;
    const now = nowMs();
    if (now < deadline) {
      arm(deadline, now);
      return;
    }
    deadline = Number.POSITIVE_INFINITY;
    relay(self.system, self, deps.ids.raft, { type: 'electionTimeout' });
  };
  return {
    reset: (timeoutMs) => {
      if (stopped) return;
      const now = nowMs();
      deadline = now + timeoutMs;
      if (timer === null || timerAt > deadline) arm(deadline, now);
    },
    stop: () => {
      stopped = true;
      if (timer !== null) clock.clearTimeout(timer);
      timer = null;
    },
  };
};

/** Tells the others when the role, term or leader changes; counts won elections. */
const watchRole = (deps: RaftDeps, system: AnyActorSystem, self: AnyActorRef): void => {
  let last: RaftStatus | null = null;
  self.subscribe({
    next: () => {
      if (self.getSnapshot().status !== 'active') return;
      const now = statusOf(deps.ids.root, self);
      const before = last;
      if (before && before.role === now.role && before.term === now.term && before.leaderId === now.leaderId)
        return;
      last = now;
      if (now.role === 'leader' && before?.role !== 'leader') deps.counters.elections += 1;
      const self_ = now.role === 'leader';
      const event = {
        type: 'leaderChanged',
        role: now.role,
        term: now.term,
        leaderId: now.leaderId,
        self: self_,
      };
      for (const peer of deps.peers) relay(system, self, deps.ids.peer(peer), event);
      if (before?.leaderId !== now.leaderId || before?.role !== now.role)
        relay(system, self, deps.ids.requests, event);
      deps.onRole(now);
    },
    error: () => undefined,
  });
};

/**
 * The raft machine as this node's raft actor: the machine's own logic, with the routing of its
 * outputs and the role watch attached when the actor starts (before the first output).
 */
export const raftActorLogic = (deps: RaftDeps): RaftMachine =>
  Object.create(raftMachine, {
    start: {
      value(snapshot: unknown, scope: AnyActorScope) {
        const { self, system } = scope;
        const timer = createElectionTimer(deps, self);
        const router: Router = { deps, system, self, timer };
        self.on('*', (output: RaftEmitted) => route(router, output));
        watchRole(deps, system, self);
        deps.stopTimers = timer.stop;
        raftMachine.start(snapshot as never);
      },
    },
  }) as RaftMachine;
