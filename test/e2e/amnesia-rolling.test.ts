/**
 * Rolling restarts of an in-memory cluster (issue 11): three real processes, real mTLS, no
 * persistence, continuous writers and readers. Every node in turn is killed with SIGKILL, started
 * again empty under its old id, and the test waits (bounded) until it reports recovering === false
 * and writes went on, before the next one; twice around. Before recovery existed this lost
 * acknowledged writes (two empty nodes could elect a leader that lacked them).
 *
 * Checked at the end: every acknowledged write is on every node with its acknowledged value or a
 * later write's (one writer per key, so "later" is exact; a rejected write has an unknown outcome),
 * the whole client history (writes, reads during the restarts, the final reads) is linearizable
 * (test/support/linearizability.ts), and the timeline never shows two leaders in one term.
 * Reported: writes acknowledged, lost (0), and per restart the unavailability: the longest gap
 * between two acknowledged writes from the kill until writes went on after the recovery.
 *
 * Environment: DISKEYVAL_SOAK=1 for 4 rounds instead of 2; DISKEYVAL_AMNESIA_SEED=s for the
 * readers' key pick (default 1, printed with the replay command); DISKEYVAL_AMNESIA_LEGACY=1 to
 * run against a build without recovery (see LEGACY).
 * Every wait is on an event or a reply, with a bound; nothing sleeps.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Cluster,
  describeTimeline,
  formatRoleTimeline,
  nowMs,
  startCluster,
  twoLeadersInATerm,
  waitForMetrics,
} from '../support/amnesia.js';
import { longestGapMs, readBack, startClients } from '../support/clients.js';
import { checkKvHistory, describeViolation } from '../support/linearizability.js';

const ROUNDS = process.env.DISKEYVAL_SOAK === '1' ? 4 : 2;
const SEED = Number(process.env.DISKEYVAL_AMNESIA_SEED ?? 1);
const WRITERS = 3;
const READERS = 2;
const KEYS_PER_WRITER = 4;
const PROGRESS_PER_STEP = 20;
const RECOVERY_BOUND_MS = 20_000;
const PROGRESS_BOUND_MS = 20_000;
const LEADER_BOUND_MS = 10_000;
const MAX_CALLS_PER_CLIENT = 50_000;

/**
 * DISKEYVAL_AMNESIA_LEGACY=1 waits for a restarted node's first role event instead of its recovery
 * (for builds without getMetrics().recovering), and kills the next node at once instead of
 * waiting for writes to go on: how the test was run against main to show what it catches there.
 */
const LEGACY = process.env.DISKEYVAL_AMNESIA_LEGACY === '1';

const replay = (): string =>
  `${ROUNDS > 2 ? 'DISKEYVAL_SOAK=1 ' : ''}${LEGACY ? 'DISKEYVAL_AMNESIA_LEGACY=1 ' : ''}DISKEYVAL_AMNESIA_SEED=${SEED} npx vitest run test/e2e/amnesia-rolling.test.ts`;

let cluster: Cluster | null = null;
afterEach(async (context) => {
  if (context.task.result?.state === 'fail' && cluster) console.log(describeTimeline(cluster));
  await cluster?.stop();
  cluster = null;
});

describe('amnesia: rolling restarts of an in-memory cluster under writes', () => {
  it(`${ROUNDS} rounds of kill -9 and empty restart of every node: nothing acknowledged is lost`, async () => {
    const startedAt = performance.now();
    const c = await startCluster({
      nodes: 3,
      proposalTimeoutMs: 2000,
      watchMetrics: 20,
      warningEvents: true,
    });
    cluster = c;
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    // A fresh memory node starts recovering too: the rolling starts once every node has recovered
    // (a node still recovering when the leader dies leaves no majority that holds state).
    if (!LEGACY) {
      for (const id of c.ids) {
        await waitForMetrics(c, id, (m) => m.recovering === false, {
          sinceMs: c.t0,
          timeoutMs: RECOVERY_BOUND_MS,
          label: 'recovered after the first start',
        });
      }
    }
    const clients = startClients(c, {
      seed: SEED,
      writers: WRITERS,
      readers: READERS,
      keysPerWriter: KEYS_PER_WRITER,
      keyPrefix: 'roll',
      targets: () => c.liveIds(),
      maxCallsPerClient: MAX_CALLS_PER_CLIENT,
      progressBoundMs: PROGRESS_BOUND_MS,
      replay,
    });
    const restarts: Array<{ id: string; wasLeader: boolean; recoveryMs: number; gapMs: number }> = [];
    try {
      await clients.progress(PROGRESS_PER_STEP, 'before the first restart');
      for (let round = 0; round < ROUNDS; round += 1) {
        for (const id of c.ids) {
          const wasLeader = c.currentLeader()?.leaderId === id;
          const killedAt = (await c.kill(id, 'SIGKILL')).atMs;
          const restartedAt = nowMs();
          await c.restart(id);
          if (LEGACY) {
            await c.waitFor(
              () => c.timeline.some((e) => e.node === id && e.event === 'role' && e.atMs >= restartedAt),
              { timeoutMs: RECOVERY_BOUND_MS, label: `${id} to report its role after its restart` },
            );
          } else {
            await waitForMetrics(c, id, (m) => m.recovering === false, {
              sinceMs: restartedAt,
              timeoutMs: RECOVERY_BOUND_MS,
              label: `recovered after its empty restart in round ${round} (replay: ${replay()})`,
            });
          }
          const recoveredAt = nowMs();
          // LEGACY moves on at once: the next node dies while this one may still be catching up.
          if (!LEGACY)
            await clients.progress(PROGRESS_PER_STEP, `round ${round}: writes after ${id} recovered`);
          restarts.push({
            id,
            wasLeader,
            recoveryMs: Math.round(recoveredAt - restartedAt),
            gapMs: longestGapMs(clients.writes, killedAt, nowMs()),
          });
        }
      }
    } finally {
      await clients.stop();
    }
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });

    const lost = await readBack(c, c.ids, clients);
    const linearizable = checkKvHistory(clients.history, { timeoutMs: 20_000 });
    const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
    console.log(
      `rolling restarts (seed ${SEED}): ${restarts.length} empty restarts, ${clients.writes.length} writes ` +
        `acknowledged, ${clients.unknown()} unknown, ${clients.history.length} operations checked ` +
        `(${linearizable.ok === true ? 'linearizable' : 'NOT linearizable'}), lost: ${lost.length}, ${seconds} s\n` +
        restarts
          .map(
            (r) =>
              `  ${r.id}${r.wasLeader ? ' (leader)' : ''}: recovered in ${r.recoveryMs} ms, longest gap between acknowledged writes ${r.gapMs} ms`,
          )
          .join('\n'),
    );
    const timeline = formatRoleTimeline(c.timeline, { t0: c.t0 });
    expect(lost, `acknowledged writes lost (replay: ${replay()})`).toEqual([]);
    expect(linearizable.ok, `${describeViolation(linearizable)} (replay: ${replay()})`).toBe(true);
    expect(twoLeadersInATerm(c.timeline), timeline).toEqual([]);
    expect(restarts.length).toBe(ROUNDS * c.ids.length);
    if (!LEGACY)
      expect(clients.writes.length).toBeGreaterThanOrEqual((ROUNDS * c.ids.length + 1) * PROGRESS_PER_STEP);
  }, 150_000);
});
