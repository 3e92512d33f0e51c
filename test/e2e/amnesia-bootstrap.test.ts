/**
 * Bootstrap, the README way, with real processes and real mTLS in memory mode (issue 11):
 * - start 2 of the 3 listed members, all empty: they form a new cluster (a leader, writes
 *   acknowledged, a cluster id); start the third, empty: it does not bootstrap anything of its own,
 *   it recovers into that cluster (recovering -> false, same cluster id) and holds the writes;
 * - a node started with `join: true` whose peers are all unreachable, or empty and in `join` mode
 *   too, never bootstraps: it never leads, never raises its term, never mints a cluster id, and says
 *   why (RECOVERY_BLOCKED) while its calls reject with QUORUM_UNAVAILABLE and `recovering: true`.
 *
 * The observation window of the `join` case is bounded by events: it ends when the node reports
 * RECOVERY_BLOCKED (after "a few seconds" of being blocked, by the contract) and the calls made in
 * it have rejected; by then an ordinary empty node would have campaigned many times (election
 * timeout 300..600 ms).
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Cluster,
  describeTimeline,
  formatRoleTimeline,
  nowMs,
  outcomeOf,
  startCluster,
  twoLeadersInATerm,
  waitForMetrics,
  waitForWarning,
} from '../support/amnesia.js';

const IDS = ['node-1', 'node-2', 'node-3'];
const LEADER_BOUND_MS = 10_000;
const RECOVERY_BOUND_MS = 15_000;
const BLOCKED_BOUND_MS = 15_000;

let cluster: Cluster | null = null;
afterEach(async (context) => {
  if (context.task.result?.state === 'fail' && cluster) console.log(describeTimeline(cluster));
  await cluster?.stop();
  cluster = null;
});

const common = { ids: IDS, proposalTimeoutMs: 1000, warningEvents: true, watchMetrics: 20 };

describe('amnesia: bootstrap the README way, and join never bootstraps', () => {
  it('2 of 3 listed members form the cluster; the third recovers into it and holds the writes', async () => {
    const c = await startCluster({ ...common, deferred: ['node-3'] });
    cluster = c;
    const leader = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    for (let i = 0; i < 20; i += 1) await c.set(IDS[i % 2]!, `k${i}`, i);
    const clusterId = (await c.metrics(leader.leaderId)).clusterId;

    const startedAt = nowMs();
    await c.restart('node-3');
    await waitForMetrics(c, 'node-3', (m) => m.recovering === false, {
      sinceMs: startedAt,
      timeoutMs: RECOVERY_BOUND_MS,
      label: 'recovered into the running cluster',
    });
    const states = c.timeline
      .filter((e) => e.node === 'node-3' && e.event === 'metrics')
      .map((e) => e.recovering)
      .filter((x, i, all) => i === 0 || x !== all[i - 1]);
    expect(states, 'node-3 starts recovering, then recovers').toEqual([true, false]);
    const node3ClusterId = (await c.metrics('node-3')).clusterId;
    for (let i = 0; i < 20; i += 1) expect(await c.get('node-3', `k${i}`, { consistency: 'local' })).toBe(i);
    for (let i = 0; i < 20; i += 1) expect(await c.get('node-3', `k${i}`)).toBe(i);
    expect(
      c.timeline.filter((e) => e.node === 'node-3' && e.event === 'role' && e.role !== 'follower'),
      'node-3 never campaigned',
    ).toEqual([]);
    expect(c.currentLeader()?.leaderId).toBe(leader.leaderId);
    expect(twoLeadersInATerm(c.timeline)).toEqual([]);
    // Last, so that bootstrap and recovery are judged first: the id minted and the one recovered into.
    expect(clusterId, 'the first leader minted a cluster id').toBeTypeOf('string');
    expect(node3ClusterId, "node-3 holds the cluster's id").toBe(clusterId);
  }, 60_000);

  it('join: true with every peer unreachable, then with an empty join peer: never leads, never bootstraps', async () => {
    const c = await startCluster({
      ...common,
      deferred: ['node-2', 'node-3'],
      perNode: { 'node-1': { join: true } },
    });
    cluster = c;
    const startedAt = c.t0;
    const call = outcomeOf(c.set('node-1', 'k', 1));
    await waitForWarning(c, 'node-1', 'RECOVERY_BLOCKED', {
      sinceMs: startedAt,
      timeoutMs: BLOCKED_BOUND_MS,
    });
    expect(await call).toMatchObject({ ok: false, code: 'QUORUM_UNAVAILABLE', recovering: true });

    // A second member, empty and in join mode too: still nobody may start a cluster.
    const secondAt = nowMs();
    await c.restart('node-2', { join: true });
    const second = outcomeOf(c.get('node-2', 'k'));
    await waitForWarning(c, 'node-2', 'RECOVERY_BLOCKED', { sinceMs: secondAt, timeoutMs: BLOCKED_BOUND_MS });
    expect(await second).toMatchObject({ ok: false, code: 'QUORUM_UNAVAILABLE', recovering: true });

    const timeline = formatRoleTimeline(c.timeline, { t0: c.t0 });
    for (const id of ['node-1', 'node-2']) {
      const m = await c.metrics(id);
      expect(
        { recovering: m.recovering, clusterId: m.clusterId, term: m.term, role: m.role },
        `${id} in join mode${timeline}`,
      ).toEqual({ recovering: true, clusterId: null, term: 0, role: 'follower' });
    }
    expect(
      c.timeline.filter((e) => e.event === 'role' && e.role !== 'follower'),
      `no candidate, no leader${timeline}`,
    ).toEqual([]);
  }, 60_000);
});
