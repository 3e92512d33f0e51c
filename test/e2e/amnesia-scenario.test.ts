/**
 * Amnesiac restarts, real processes (scripts/cluster-node.mjs on the built dist/), real mTLS, memory
 * mode (no persistence): the scenario of issue 11 and its operator path. Every node reaches its
 * peers only through a loopback proxy per directed pair (test/support/link-proxy.ts), so a test can
 * cut a node off while the processes run.
 *
 * The scenario (issue 11): cut follower C off; set('W') on leader A is acknowledged by A and B;
 * kill -9 B and restart it empty under its old id; kill -9 A; heal C. Before the fix B votes for C,
 * C leads and a linearizable get('W') answers undefined. With recovery (docs/design/recovery.md) B
 * takes part in no majority until it has recovered, so nothing can be elected: the cluster waits,
 * says so (RECOVERY_BLOCKED, getMetrics().recovering, QUORUM_UNAVAILABLE with recovering: true),
 * and never answers anything but W.
 *
 * Every wait is on an event a node reports (role, warning, metrics) or on replies, with a bound.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Cluster,
  describeTimeline,
  formatRoleTimeline,
  freePorts,
  nowMs,
  type Outcome,
  outcomeOf,
  startCluster,
  startProbe,
  summarizeOutcomes,
  twoLeadersInATerm,
  waitForMetrics,
  waitForWarning,
  wrongAnswers,
} from '../support/amnesia.js';
import { createProxyMesh, type ProxyMesh } from '../support/link-proxy.js';

const IDS = ['node-1', 'node-2', 'node-3'];
const PROPOSAL_TIMEOUT_MS = 1000;
const LEADER_BOUND_MS = 10_000;
/** "A few seconds" of being blocked, then RECOVERY_BLOCKED (contract), with room for a slow machine. */
const BLOCKED_BOUND_MS = 15_000;
const RECOVERY_BOUND_MS = 15_000;
const W = 'acknowledged-W';

let cluster: Cluster | null = null;
let mesh: ProxyMesh | null = null;

afterEach(async (context) => {
  if (context.task.result?.state === 'fail' && cluster) console.log(describeTimeline(cluster));
  await cluster?.stop();
  await mesh?.close();
  cluster = null;
  mesh = null;
});

/** Three memory nodes behind a proxy mesh; resolves with the leader as A and the others as B, C. */
const startMeshCluster = async () => {
  const ports = await freePorts(IDS.length);
  const byId = Object.fromEntries(IDS.map((id, i) => [id, ports[i]!]));
  mesh = await createProxyMesh(IDS, byId);
  const c = await startCluster({
    ids: IDS,
    ports,
    perNode: mesh.perNodePeers(),
    proposalTimeoutMs: PROPOSAL_TIMEOUT_MS,
    callTimeoutMs: 10_000,
    warningEvents: true,
    watchMetrics: 20,
  });
  cluster = c;
  const { leaderId } = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
  // A node that started late (a loaded machine) may still be finishing its first recovery, and a
  // recovering member counts toward no write: the scenarios begin once every member counts.
  for (const id of IDS) {
    await waitForMetrics(c, id, (x) => x.recovering === false, {
      sinceMs: c.t0,
      timeoutMs: RECOVERY_BOUND_MS,
      label: 'took part in the new cluster',
    });
  }
  const [b, cc] = IDS.filter((id) => id !== leaderId) as [string, string];
  return { c, m: mesh, a: leaderId, b, cId: cc };
};

/**
 * set('W') through `id` until acknowledged (at most 3 attempts of up to 5 s: a cluster that just
 * formed may still settle its first leader). Retrying the same value is safe: W is acknowledged by
 * the members that are connected now, whichever of them leads.
 */
const acknowledge = async (c: Cluster, id: string): Promise<void> => {
  let last: Outcome | null = null;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    last = await outcomeOf(c.set(id, 'W', W, { timeoutMs: 5000 }));
    if (last.ok) return;
    console.log(`set('W') through ${id}, attempt ${attempt + 1}: ${last.code} ${last.message}`);
  }
  throw new Error(`set('W') through ${id} was never acknowledged: ${JSON.stringify(last)}${diagnostics(c)}`);
};

/** Kills `id` and starts it again with empty memory; resolves with the restart time. */
const restartEmpty = async (c: Cluster, id: string, overrides?: Record<string, unknown>): Promise<number> => {
  await c.kill(id, 'SIGKILL');
  const at = nowMs();
  await c.restart(id, overrides);
  return at;
};

const diagnostics = (c: Cluster): string => `\n${formatRoleTimeline(c.timeline, { t0: c.t0 })}`;

/**
 * When a later step fails (a wait timed out), a wrong answer already seen is the finding that
 * matters: report it first, with the step's error after it.
 */
const safetyFirst = async (
  probe: ReturnType<typeof startProbe>,
  c: Cluster,
  error: unknown,
): Promise<never> => {
  await probe.stop();
  const wrong = wrongAnswers(probe.outcomes, W);
  if (wrong.length > 0) {
    throw new Error(
      `wrong answers to get('W'): ${wrong.slice(0, 6).join(', ')} (${summarizeOutcomes(probe.outcomes)}); ` +
        `then: ${(error as Error).message}${diagnostics(c)}`,
    );
  }
  throw error;
};

describe('amnesia: the scenario of issue 11, real processes behind link proxies', () => {
  it('a forgotten acknowledgement is never answered away: the cluster waits and says why', async () => {
    const { c, m, a, b, cId } = await startMeshCluster();
    m.isolate(cId);
    await acknowledge(c, a);

    const bRestartedAt = await restartEmpty(c, b);
    const aKilledAt = (await c.kill(a, 'SIGKILL')).atMs;
    m.rejoin(cId);
    const probe = startProbe(c, 'W');
    let onB: Outcome | null = null;
    try {
      // Long enough for C to campaign many times (election timeout 300..600 ms): each round waits
      // for both nodes to answer, and a rejection takes PROPOSAL_TIMEOUT_MS. Safety is checked
      // first: before the fix this is where C leads and answers undefined.
      await probe.moreRounds(4, 4 * (PROPOSAL_TIMEOUT_MS + 5000));
      expect(
        wrongAnswers(probe.outcomes, W),
        `${summarizeOutcomes(probe.outcomes)}${diagnostics(c)}`,
      ).toEqual([]);
      const blocked = await waitForWarning(c, b, 'RECOVERY_BLOCKED', {
        sinceMs: bRestartedAt,
        timeoutMs: BLOCKED_BOUND_MS,
      });
      expect(blocked.waitingFor, 'RECOVERY_BLOCKED names what B waits for').toBeInstanceOf(Array);
      expect(typeof blocked.message === 'string' && blocked.message.length > 0).toBe(true);
      expect((await c.metrics(b)).recovering, 'B after its empty restart, A dead').toBe(true);
      onB = await outcomeOf(c.get(b, 'W'));

      // The operator brings A back, empty too: a majority forgot, C alone holds state (without W).
      const aRestartedAt = nowMs();
      await c.restart(a);
      await waitForWarning(c, a, 'RECOVERY_BLOCKED', { sinceMs: aRestartedAt, timeoutMs: BLOCKED_BOUND_MS });
      await probe.moreRounds(2, 2 * (PROPOSAL_TIMEOUT_MS + 5000));
      expect((await c.metrics(a)).recovering, 'A after its empty restart').toBe(true);
    } catch (error) {
      await safetyFirst(probe, c, error);
    } finally {
      await probe.stop();
    }
    const summary = summarizeOutcomes(probe.outcomes);
    console.log(`issue 11 scenario (A=${a} B=${b} C=${cId}): get('W') outcomes: ${summary}`);
    expect(wrongAnswers(probe.outcomes, W), `${summary}${diagnostics(c)}`).toEqual([]);
    expect(onB, 'a call on the recovering B').toMatchObject({
      ok: false,
      code: 'QUORUM_UNAVAILABLE',
      recovering: true,
    });
    const bStates = c.timeline
      .filter((e) => e.node === b && e.event === 'metrics' && e.atMs >= bRestartedAt)
      .map((e) => e.recovering);
    expect(bStates[0], 'B reports recovering from its first metrics event on').toBe(true);
    const rejections = probe.outcomes.filter(({ outcome }) => !outcome.ok);
    const codes = new Set(rejections.map(({ outcome }) => (outcome as { code: string }).code));
    codes.delete('NODE_EXITED');
    expect([...codes], summary).toEqual(['QUORUM_UNAVAILABLE']);
    const leadersAfter = c.timeline.filter(
      (e) => e.event === 'role' && e.role === 'leader' && e.atMs > aKilledAt,
    );
    expect(
      leadersAfter.map((e) => `${e.node} term ${e.term}`),
      `nobody can be elected once A died${diagnostics(c)}`,
    ).toEqual([]);
    expect(twoLeadersInATerm(c.timeline), diagnostics(c)).toEqual([]);
  }, 90_000);

  it('A stays up: B restarted empty recovers from the leader, then A dies and B and C go on with W', async () => {
    const { c, m, a, b, cId } = await startMeshCluster();
    // As in the issue, C is cut off when W is acknowledged (A and B hold it), and B restarts empty;
    // but A stays up and C's links heal, so A leads a majority again (A and C: a recovering B
    // counts for nothing) and B can recover from it. C gets W from A as it catches up.
    m.isolate(cId);
    await acknowledge(c, a);

    const bRestartedAt = await restartEmpty(c, b);
    m.rejoin(cId);
    await waitForMetrics(c, b, (x) => x.recovering === false, {
      sinceMs: bRestartedAt,
      timeoutMs: RECOVERY_BOUND_MS,
      label: 'recovered from A',
    });
    const recovery = c.timeline.filter(
      (e) => e.node === b && e.event === 'metrics' && e.atMs >= bRestartedAt,
    );
    const states = recovery.map((e) => e.recovering).filter((x, i, all) => i === 0 || x !== all[i - 1]);
    expect(states, 'B starts recovering, then recovers').toEqual([true, false]);

    await c.kill(a, 'SIGKILL');
    const leader = await c.waitForLeader(LEADER_BOUND_MS, { exclude: [a], agreed: true });
    expect([b, cId]).toContain(leader.leaderId);
    for (const id of [b, cId]) expect(await c.get(id, 'W'), `get('W') on ${id}`).toBe(W);
    expect(twoLeadersInATerm(c.timeline), diagnostics(c)).toEqual([]);
  }, 60_000);

  it('operator path: a majority forgot W, C still holds it; forceRecovery on A brings W back everywhere', async () => {
    const { c, m, a, b, cId } = await startMeshCluster();
    m.isolate(b);
    await acknowledge(c, a); // A and C hold W
    const aRestartedAt = await restartEmpty(c, a);
    const bRestartedAt = await restartEmpty(c, b);
    m.rejoin(b);

    const probe = startProbe(c, 'W');
    try {
      await waitForWarning(c, a, 'RECOVERY_BLOCKED', { sinceMs: aRestartedAt, timeoutMs: BLOCKED_BOUND_MS });
      await waitForWarning(c, b, 'RECOVERY_BLOCKED', { sinceMs: bRestartedAt, timeoutMs: BLOCKED_BOUND_MS });
      await probe.moreRounds(2, 2 * (PROPOSAL_TIMEOUT_MS + 5000));
    } catch (error) {
      await safetyFirst(probe, c, error);
    } finally {
      await probe.stop();
    }
    const summary = summarizeOutcomes(probe.outcomes);
    expect(wrongAnswers(probe.outcomes, W), `${summary}${diagnostics(c)}`).toEqual([]);
    expect(
      c.timeline.filter((e) => e.event === 'role' && e.role === 'leader' && e.atMs > aRestartedAt),
      `no leader while a majority is recovering${diagnostics(c)}`,
    ).toEqual([]);

    // The operator: restart A with forceRecovery; it recovers from C, the member that holds state.
    const forcedAt = await restartEmpty(c, a, { forceRecovery: true });
    await waitForMetrics(c, a, (x) => x.recovering === false, {
      sinceMs: forcedAt,
      timeoutMs: RECOVERY_BOUND_MS,
      label: 'forced recovery completes',
    });
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    await waitForMetrics(c, b, (x) => x.recovering === false, {
      sinceMs: bRestartedAt,
      timeoutMs: RECOVERY_BOUND_MS,
      label: 'recovered once a leader exists',
    });
    for (const id of IDS) expect(await c.get(id, 'W'), `get('W') on ${id}${diagnostics(c)}`).toBe(W);
    expect(twoLeadersInATerm(c.timeline), diagnostics(c)).toEqual([]);
    console.log(`operator path (A=${a} B=${b} C=${cId}): while blocked ${summary}; W back on every node`);
  }, 90_000);
});
