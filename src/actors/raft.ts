/**
 * The raft actor (`<node>/raft`): the role machine (machines/raft.machine.ts), which decides
 * everything Raft decides, and the routing of its outputs. Every output goes, in emission order, to
 * the actor that owns that part of the world (events.ts): persists to the log actor; with a durable
 * log, every other output that must wait for them to the log actor's outbox too (`afterPersist`),
 * except what the machine marks `beforePersist` (a leader's AppendEntries and heartbeats, which
 * promise nothing about its own disk, §10.2.1), which goes straight to the peers; with a memory
 * log, everything else straight to its actor.
 *
 * It also tells the others when its role, term or leader changes (`leaderChanged`: requests,
 * peers), and sends the machine the clock's `tick` while it is a follower.
 */
import type { AnyActorRef, AnyActorScope } from 'xstate';
import type { NodeId } from '../machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../machines/raft.machine.js';
import { goesBeforePersist, type RaftEmitted, type Role } from '../machines/raft.types.js';
import { peersOf } from '../machines/rules/index.js';
import type { Clock } from './deadlines.js';
import type { AnyActorSystem } from './events.js';
import { deliverOutput, relay, type SystemIds } from './events.js';

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
  /** The log is durable: outputs that wait for persists go through the log actor's outbox. */
  durable: boolean;
  clock: Clock;
  /** The period of the `tick` event (machines/ticks.ts): a follower's election timer counts ticks. */
  tickMs: number;
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

type Router = { deps: RaftDeps; system: AnyActorSystem; self: AnyActorRef };

/** One output of the machine, to the actor that carries it out (see the header). */
const route = (router: Router, output: RaftEmitted): void => {
  const { deps, system, self } = router;
  const { ids } = deps;
  if (output.type === 'persist') relay(system, self, ids.log, { type: 'persist', output });
  else if (output.type === 'installSnapshot')
    relay(system, self, ids.log, { type: 'installSnapshot', output });
  // The machine says what may leave before the persists ahead of it are durable (raft.types.ts);
  // a change of the configuration in force promises nothing and spawns the peers the sends need.
  else if (!deps.durable || goesBeforePersist(output) || output.type === 'membership')
    deliverOutput(system, self, ids, output);
  else relay(system, self, ids.log, { type: 'afterPersist', output });
};

/**
 * The clock's tick, which the machine's follower election timer counts (machines/ticks.ts): one
 * clock timer, a `tick` every `tickMs` while the machine is a follower (candidates' and leaders'
 * timers are XState delays), so a message from the leader moves a counter in the machine, never a
 * timer.
 */
const createTicker = (deps: RaftDeps, self: AnyActorRef) => {
  let timer: unknown = null;
  let stopped = false;
  const onTick = (): void => {
    timer = null;
    if (stopped || self.getSnapshot().status !== 'active') return;
    timer = deps.clock.setTimeout(onTick, deps.tickMs);
    relay(self.system, self, deps.ids.raft, { type: 'tick' });
  };
  return {
    /** Ticks while the machine is a follower. */
    follow: (role: Role): void => {
      if (role === 'follower' && timer === null && !stopped)
        timer = deps.clock.setTimeout(onTick, deps.tickMs);
      else if (role !== 'follower' && timer !== null) {
        deps.clock.clearTimeout(timer);
        timer = null;
      }
    },
    stop: (): void => {
      stopped = true;
      if (timer !== null) deps.clock.clearTimeout(timer);
      timer = null;
    },
  };
};

/** Tells the others when the role, term or leader changes; counts won elections. */
const watchRole = (
  deps: RaftDeps,
  system: AnyActorSystem,
  self: AnyActorRef,
  ticker: { follow: (role: Role) => void },
): void => {
  let last: RaftStatus | null = null;
  self.subscribe({
    next: () => {
      if (self.getSnapshot().status !== 'active') return;
      const now = statusOf(deps.ids.root, self);
      const before = last;
      if (before && before.role === now.role && before.term === now.term && before.leaderId === now.leaderId)
        return;
      last = now;
      ticker.follow(now.role);
      if (now.role === 'leader' && before?.role !== 'leader') deps.counters.elections += 1;
      const self_ = now.role === 'leader';
      const event = {
        type: 'leaderChanged',
        role: now.role,
        term: now.term,
        leaderId: now.leaderId,
        self: self_,
      };
      for (const peer of peersOf(self.getSnapshot().context)) relay(system, self, deps.ids.peer(peer), event);
      if (before?.leaderId !== now.leaderId || before?.role !== now.role) {
        relay(system, self, deps.ids.requests, event);
        relay(system, self, deps.ids.membership, event);
      }
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
        const ticker = createTicker(deps, self);
        const router: Router = { deps, system, self };
        self.on('*', (output: RaftEmitted) => route(router, output));
        watchRole(deps, system, self, ticker);
        deps.stopTimers = ticker.stop;
        raftMachine.start(snapshot as never);
      },
    },
  }) as RaftMachine;
