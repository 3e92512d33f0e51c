/**
 * Bootstrap is judged when a recovery round ends (docs/design/recovery.md). Under load, the answer
 * of the member that holds the log can miss one round: the empty members must not take that round
 * as "nobody holds state" and start a new cluster beside the real one (which is how an e2e run lost
 * an acknowledged write: two empty members bootstrapped, and the member holding an older log led).
 * Once any answer of this recovery came from a member whose log is not empty (`holdsLog`), the
 * server never bootstraps for the rest of that recovery (`heardLog`, sticky across rounds).
 */
import { describe, expect, it } from 'vitest';
import type { RaftMessage, RecoveryResponse } from '../../src/machines/messages.js';
import { startServer } from './cluster.js';

const VOTERS = ['s1', 's2', 's3'];

type Server = ReturnType<typeof startServer>;

const blankRecovering = (): Server =>
  startServer({
    id: 's1',
    voters: VOTERS,
    electionTimeoutMs: 150,
    heartbeatMs: 50,
    seed: 11,
    recovering: true,
  });

const answer = (server: Server, from: string, fields: Partial<RecoveryResponse>): void => {
  const context = server.actor.getSnapshot().context;
  const message: RaftMessage = {
    type: 'RecoveryResponse',
    from,
    to: 's1',
    term: 0,
    incarnation: context.incarnation,
    round: context.recovery.round,
    recovering: false,
    blank: true,
    holdsLog: false,
    leaderLastIndex: -1,
    crashVector: {},
    ...fields,
  };
  server.actor.send({ type: 'message', message });
};

/** Ends the current round: ticks up to the retry timeout. */
const endRound = (server: Server): void => {
  const context = server.actor.getSnapshot().context;
  const due = context.randomizedElectionTimeoutTicks - context.electionElapsedTicks;
  for (let tick = 0; tick < due; tick += 1) server.actor.send({ type: 'tick' });
};

const bootstrapped = (server: Server): number =>
  server.actor.getSnapshot().context.recoveryCounters.bootstrapped;

describe('recovery never bootstraps once a member holding a log answered', () => {
  it('a blank majority in one round still bootstraps (a new cluster forms the README way)', () => {
    const server = blankRecovering();
    answer(server, 's2', {});
    endRound(server);
    expect(bootstrapped(server)).toBe(1);
    expect(server.actor.getSnapshot().context.recovering).toBe(false);
    server.actor.stop();
  });

  it('the log holder answered in round 1 and missed round 2: no bootstrap, still recovering', () => {
    const server = blankRecovering();
    answer(server, 's3', { term: 4, blank: false, holdsLog: true });
    endRound(server);
    expect(server.actor.getSnapshot().context.recovery.round).toBe(2);
    answer(server, 's2', {});
    endRound(server);
    const context = server.actor.getSnapshot().context;
    expect(context.recovery.heardLog).toBe(true);
    expect(bootstrapped(server)).toBe(0);
    expect(context.recovering).toBe(true);
    server.actor.stop();
  });

  it('broken variant: judging each round alone (heardLog forgotten) bootstraps beside the cluster', () => {
    const server = blankRecovering();
    answer(server, 's3', { term: 4, blank: false, holdsLog: true });
    endRound(server);
    // What the rule was before: nothing of round 1 is remembered in round 2.
    const snapshot = server.actor.getSnapshot();
    snapshot.context.recovery.heardLog = false;
    answer(server, 's2', {});
    endRound(server);
    expect(bootstrapped(server), 'the old rule starts a new cluster').toBe(1);
    server.actor.stop();
  });

  it('a cluster id seen in a handshake (clusterSeen) blocks bootstrap: a node being added among new nodes waits', () => {
    const server = blankRecovering();
    // Its peers are mostly new nodes: a blank majority answers, but the transport met a member.
    server.actor.send({ type: 'clusterSeen' });
    answer(server, 's2', {});
    endRound(server);
    expect(bootstrapped(server)).toBe(0);
    expect(server.actor.getSnapshot().context.recovering).toBe(true);
    server.actor.stop();
  });

  it('a member with a term but no log does not block bootstrap (durable members of a cluster not yet formed)', () => {
    const server = blankRecovering();
    answer(server, 's3', { term: 2, blank: false, holdsLog: false });
    endRound(server);
    answer(server, 's2', {});
    endRound(server);
    expect(bootstrapped(server)).toBe(1);
    server.actor.stop();
  });
});
