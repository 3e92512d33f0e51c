/**
 * The follower's election timer belongs to the machine (dissertation §3.4, etcd-io/raft's tick):
 * it counts `tick` events against a timeout drawn in ticks from its seeded generator, starts over
 * when the follower hears from the leader, grants a vote or becomes follower, and raises the
 * election itself. A recovering follower retries its recovery on the same count.
 */
import { describe, expect, it } from 'vitest';
import type { Heartbeat, RaftMessage, RequestVote } from '../../src/machines/messages.js';
import { roleOf } from '../../src/machines/raft.machine.js';
import { electionTicksOf, TICKS_PER_ELECTION_TIMEOUT, tickMsOf } from '../../src/machines/ticks.js';
import { createCluster, startServer } from './cluster.js';

const VOTERS = ['s1', 's2', 's3'];
const sentBy = (outputs: ReturnType<typeof startServer>['outputs']): RaftMessage[] =>
  outputs.flatMap((output) => (output.type === 'send' ? output.messages : []));

const follower = (seed = 7, extra: { recovering?: boolean } = {}) =>
  startServer({
    id: 's1',
    voters: VOTERS,
    electionTimeoutMs: 150,
    heartbeatMs: 50,
    seed,
    hardState: { term: 1, votedFor: null },
    ...extra,
  });

const ticks = (server: ReturnType<typeof startServer>, count: number): void => {
  for (let tick = 0; tick < count; tick += 1) server.actor.send({ type: 'tick' });
};

const heartbeat = (term: number): Heartbeat => ({
  type: 'Heartbeat',
  from: 's2',
  to: 's1',
  term,
  commit: 0,
  seq: 0,
});

describe('the tick', () => {
  it('is a tenth of the election timeout, at least 1 ms, and the timeout is a whole number of ticks', () => {
    expect(TICKS_PER_ELECTION_TIMEOUT).toBe(10);
    expect([tickMsOf(150), electionTicksOf(150)]).toEqual([15, 10]);
    expect([tickMsOf(3000), electionTicksOf(3000)]).toEqual([300, 10]);
    expect([tickMsOf(155), electionTicksOf(155)]).toEqual([15, 10]);
    expect([tickMsOf(5), electionTicksOf(5)]).toEqual([1, 5]);
    expect(() => tickMsOf(0)).toThrow(/below 1 ms/);
  });
});

describe("the follower's election timer counts ticks", () => {
  it('starts an election on the tick that reaches the drawn timeout, not one before', () => {
    for (const seed of [1, 2, 3, 42, 1000]) {
      const server = follower(seed);
      const { randomizedElectionTimeoutTicks: due, tickMs } = server.actor.getSnapshot().context;
      expect(tickMs).toBe(15);
      expect(due).toBeGreaterThanOrEqual(10);
      expect(due).toBeLessThan(20);
      ticks(server, due - 1);
      expect(roleOf(server.actor.getSnapshot().value)).toBe('follower');
      expect(server.actor.getSnapshot().context.electionElapsedTicks).toBe(due - 1);
      expect(sentBy(server.outputs)).toEqual([]);
      ticks(server, 1);
      expect(server.actor.getSnapshot().value).toEqual({ candidate: 'preVote' });
      const requests = sentBy(server.outputs) as RequestVote[];
      expect(requests.map((request) => [request.type, request.to, request.term, request.preVote])).toEqual([
        ['RequestVote', 's2', 2, true],
        ['RequestVote', 's3', 2, true],
      ]);
      server.actor.stop();
    }
  });

  it('starts over when the follower hears from the leader, without leaving its state', () => {
    const server = follower();
    const due = server.actor.getSnapshot().context.randomizedElectionTimeoutTicks;
    for (let round = 0; round < 5; round += 1) {
      ticks(server, due - 1);
      const before = server.actor.getSnapshot();
      server.outputs.length = 0;
      server.actor.send({ type: 'message', message: heartbeat(1) });
      const after = server.actor.getSnapshot();
      expect(after.value).toEqual({ follower: 'listening' });
      expect(after.context.electionElapsedTicks).toBe(0);
      // The same drawn timeout: a reset moves a counter, it does not draw or re-enter a state.
      expect(after.context.randomizedElectionTimeoutTicks).toBe(due);
      expect(after.context.rng).toBe(before.context.rng);
      expect(server.outputs.map((output) => output.type)).toEqual(['send']);
    }
    expect(roleOf(server.actor.getSnapshot().value)).toBe('follower');
    server.actor.stop();
  });

  it('starts over when it grants a vote, with a newly drawn timeout', () => {
    const server = follower();
    const first = server.actor.getSnapshot().context;
    ticks(server, first.randomizedElectionTimeoutTicks - 1);
    const request: RequestVote = {
      type: 'RequestVote',
      from: 's3',
      to: 's1',
      term: 2,
      lastLogIndex: 0,
      lastLogTerm: 0,
      preVote: false,
    };
    server.actor.send({ type: 'message', message: request });
    const context = server.actor.getSnapshot().context;
    expect([context.currentTerm, context.votedFor, context.electionElapsedTicks]).toEqual([2, 's3', 0]);
    ticks(server, context.randomizedElectionTimeoutTicks - 1);
    expect(roleOf(server.actor.getSnapshot().value)).toBe('follower');
    ticks(server, 1);
    expect(roleOf(server.actor.getSnapshot().value)).toBe('candidate');
    server.actor.stop();
  });

  it('draws the same timeouts from the same seed, and different ones across seeds', () => {
    const drawn = (seed: number): number[] => {
      const server = follower(seed);
      const dues: number[] = [];
      for (let election = 0; election < 6; election += 1) {
        const due = server.actor.getSnapshot().context.randomizedElectionTimeoutTicks;
        dues.push(due);
        ticks(server, due);
        // Back to follower at a higher term (a refused pre-vote of a newer term), which draws again.
        const term = server.actor.getSnapshot().context.currentTerm + 2;
        server.actor.send({ type: 'message', message: heartbeat(term) });
      }
      server.actor.stop();
      return dues;
    };
    expect(drawn(11)).toEqual(drawn(11));
    const all = [11, 12, 13, 14].map(drawn);
    expect(new Set(all.map((dues) => dues.join(','))).size).toBeGreaterThan(1);
  });

  it('is ignored by candidates and leaders, whose timers stay XState delays', () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    expect(cluster.role('s1')).toBe('candidate');
    const candidate = cluster.server('s1').actor.getSnapshot();
    cluster.server('s1').outputs.length = 0;
    for (let tick = 0; tick < 100; tick += 1) cluster.send('s1', { type: 'tick' });
    expect(cluster.server('s1').actor.getSnapshot().context).toBe(candidate.context);
    expect(cluster.server('s1').outputs).toEqual([]);
    cluster.settle();
    expect(cluster.role('s1')).toBe('leader');
    const leader = cluster.server('s1').actor.getSnapshot();
    for (let tick = 0; tick < 100; tick += 1) cluster.send('s1', { type: 'tick' });
    expect(cluster.server('s1').actor.getSnapshot().context).toBe(leader.context);
    expect(cluster.role('s1')).toBe('leader');
    cluster.stop();
  });

  it('keeps the explicit electionTimeout event for tests and tools', () => {
    const server = follower();
    server.actor.send({ type: 'electionTimeout' });
    expect(roleOf(server.actor.getSnapshot().value)).toBe('candidate');
    server.actor.stop();
  });
});

describe("a recovering follower's retry counts the same ticks", () => {
  it('asks again, with a new round, on the tick that reaches its timeout', () => {
    const server = follower(5, { recovering: true });
    const rounds = (): number[] =>
      sentBy(server.outputs).flatMap((message) =>
        message.type === 'RecoveryRequest' ? [message.round] : [],
      );
    expect(rounds()).toEqual([1, 1]);
    for (let round = 2; round <= 4; round += 1) {
      server.outputs.length = 0;
      const context = server.actor.getSnapshot().context;
      expect(context.electionElapsedTicks).toBe(0);
      ticks(server, context.randomizedElectionTimeoutTicks - 1);
      expect(rounds()).toEqual([]);
      ticks(server, 1);
      expect(rounds()).toEqual([round, round]);
      expect(server.actor.getSnapshot().value).toEqual({ follower: 'recovering' });
    }
    server.actor.stop();
  });
});
