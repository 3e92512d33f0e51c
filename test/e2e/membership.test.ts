/**
 * Membership changes on real processes with real mTLS (issue 13; README "Membership"): a 3-node
 * cluster grows to 5 and shrinks back to 3, the leader removed on the way, under continuous writes
 * and reads from several clients.
 *
 * 1. node-1..3 form the cluster (each lists the other two). node-4 and node-5 start with empty logs
 *    and `peers` naming all five; until the change reaches them they disturb nothing: the leader
 *    and its term stay the same while writes go on.
 * 2. Grow: reconfigure(all five) on the leader. A second call on the same node while the change
 *    runs rejects with CHANGE_IN_PROGRESS; bad input rejects with INVALID_ARGUMENT.
 * 3. Shrink: reconfigure(three nodes) on a follower, without the leader and one of the new nodes.
 *    The leader steps down once the change is committed; the three elect a leader among
 *    themselves. Both removed nodes warn REMOVED, their calls reject with REMOVED, and once ended a
 *    removed node's reconfigure rejects with STOPPED.
 *
 * Checked: every acknowledged write is on every remaining node with its value or a later write's
 * (one writer per key), the whole client history is linearizable (test/support/linearizability.ts),
 * no two leaders in one term. Printed: the time each change took (the call, as the caller saw it),
 * the write latency p50/p99 of writes started during each change (from its call until 20 writes
 * were acknowledged after it: for the shrink, after the new leader took over) next to the steady
 * state, and the longest gap between acknowledged writes during the shrink.
 * Environment: DISKEYVAL_MEMBERSHIP_SEED=s for the readers' key pick (default 1; in the replay
 * command). Every wait is on an event or a reply, with a bound; nothing sleeps.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Cluster,
  describeTimeline,
  formatRoleTimeline,
  freePorts,
  nowMs,
  outcomeOf,
  startCluster,
  twoLeadersInATerm,
  waitForMetrics,
  waitForWarning,
} from '../support/amnesia.js';
import { type AckedWrite, longestGapMs, readBack, startClients } from '../support/clients.js';
import { checkKvHistory, describeViolation } from '../support/linearizability.js';

const SEED = Number(process.env.DISKEYVAL_MEMBERSHIP_SEED ?? 1);
const HOST = '127.0.0.1';
const ORIGINAL = ['node-1', 'node-2', 'node-3'];
const JOINING = ['node-4', 'node-5'];
const ALL = [...ORIGINAL, ...JOINING];
const WRITERS = 8;
const READERS = 2;
const KEYS_PER_WRITER = 4;
const PROGRESS = 20;
const BOUND_MS = 20_000;
const MAX_CALLS_PER_CLIENT = 50_000;

const replay = (): string => `DISKEYVAL_MEMBERSHIP_SEED=${SEED} npx vitest run test/e2e/membership.test.ts`;

type Member = { nodeId: string; host: string; port: number };
type MembershipCluster = Cluster & {
  call(id: string, command: Record<string, unknown>, options?: { timeoutMs?: number }): Promise<unknown>;
};
const percentile = (sorted: readonly number[], p: number): number =>
  sorted.length === 0
    ? Number.NaN
    : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

/** p50 / p99 (ms, 1 decimal) and count of the writes started in [fromMs, toMs]. */
const latencyOf = (writes: readonly AckedWrite[], fromMs: number, toMs: number) => {
  const sorted = writes
    .filter((write) => write.callMs >= fromMs && write.callMs <= toMs)
    .map((write) => write.ackMs - write.callMs)
    .sort((a, b) => a - b);
  const round = (ms: number): number => Math.round(ms * 10) / 10;
  return { count: sorted.length, p50: round(percentile(sorted, 50)), p99: round(percentile(sorted, 99)) };
};

/** The rejection code of a command, or 'resolved'. */
const codeOf = async (promise: Promise<unknown>): Promise<string> => {
  const outcome = await outcomeOf(promise);
  return outcome.ok ? 'resolved' : outcome.code;
};

let cluster: MembershipCluster | null = null;
afterEach(async (context) => {
  if (context.task.result?.state === 'fail' && cluster) console.log(describeTimeline(cluster));
  await cluster?.stop();
  cluster = null;
});

/** The cluster: node-1..3 bootstrap among themselves; node-4 and node-5 wait, listing all five. */
const startFive = async (): Promise<{ c: MembershipCluster; members: Record<string, Member> }> => {
  const ports = await freePorts(ALL.length);
  const members = Object.fromEntries(
    ALL.map((nodeId, i) => [nodeId, { nodeId, host: HOST, port: ports[i]! }]),
  );
  const peersOf = (id: string, among: string[]) =>
    among.filter((other) => other !== id).map((other) => members[other]);
  const c = (await startCluster({
    ids: ALL,
    ports,
    deferred: JOINING,
    perNode: Object.fromEntries(ORIGINAL.map((id) => [id, { peers: peersOf(id, ORIGINAL) }])),
    proposalTimeoutMs: 3000,
    watchMetrics: 20,
    warningEvents: true,
    membershipEvents: true,
  })) as MembershipCluster;
  return { c, members };
};

/** The latest `membership` event of `id` at or after `sinceMs` has exactly these voters, not joint. */
const waitForConfiguration = (c: MembershipCluster, id: string, voters: string[], sinceMs: number) =>
  c.waitFor(
    () => {
      const mine = c.timeline.filter((e) => e.node === id && e.event === 'membership' && e.atMs >= sinceMs);
      const latest = mine.at(-1) as { voters?: string[]; outgoing?: string[] } | undefined;
      return (
        latest && (latest.outgoing ?? []).length === 0 && latest.voters?.join() === [...voters].sort().join()
      );
    },
    { timeoutMs: BOUND_MS, label: `${id} to use the configuration ${voters.join(', ')}` },
  );

describe('membership: 3 -> 5 -> 3 on real processes under writes', () => {
  it('grows and shrinks, removing the leader: nothing acknowledged lost, linearizable', async () => {
    const { c, members } = await startFive();
    cluster = c;
    await c.waitForLeader(BOUND_MS, { agreed: true });
    for (const id of ORIGINAL)
      await waitForMetrics(c, id, (m) => m.recovering === false, {
        sinceMs: c.t0,
        timeoutMs: BOUND_MS,
        label: 'bootstrapped',
      });
    let targets = [...ORIGINAL];
    const clients = startClients(c, {
      seed: SEED,
      writers: WRITERS,
      readers: READERS,
      keysPerWriter: KEYS_PER_WRITER,
      keyPrefix: 'member',
      targets: () => targets.filter((id) => c.isLive(id)),
      maxCallsPerClient: MAX_CALLS_PER_CLIENT,
      progressBoundMs: BOUND_MS,
      replay,
    });
    const grow = { ms: 0, fromMs: 0, toMs: 0 };
    const shrink = { ms: 0, fromMs: 0, toMs: 0 };
    let removed: string[] = [];
    let staying: string[] = [];
    try {
      await clients.progress(PROGRESS, 'before the new nodes start');
      const steadyFromMs = nowMs();
      await clients.progress(PROGRESS, 'steady state');
      const steadyToMs = nowMs();

      // 1. The new nodes start and wait, disturbing nothing: until the change reaches them they
      // never campaign and never leave term 0 (the members drop what they send). (The members'
      // own leader may still change meanwhile, on a loaded machine: that is not asserted here.)
      for (const id of JOINING) await c.restart(id);
      await clients.progress(PROGRESS, 'with the new nodes waiting');
      const quiet = (id: string): boolean =>
        c.timeline
          .filter((e) => e.node === id && e.event === 'role')
          .every((e) => e.role === 'follower' && e.term === 0);
      for (const id of JOINING) expect(quiet(id), `${id} stayed quiet before the change`).toBe(true);
      const dropped = await Promise.all(
        ORIGINAL.map(
          async (id) =>
            ((await c.metrics(id)) as { transport?: { nonMemberMessages?: number } }).transport
              ?.nonMemberMessages ?? 0,
        ),
      );

      // 2. Grow to five; a second call on the same node meanwhile; bad input.
      const allMembers = ALL.map((id) => members[id]);
      expect(await codeOf(c.call(ORIGINAL[0]!, { cmd: 'reconfigure', members: [] }))).toBe(
        'INVALID_ARGUMENT',
      );
      // The members' leader (the waiting nodes know none yet).
      const leaderBefore = (await c.waitForLeader(BOUND_MS, { agreed: false })).leaderId;
      grow.fromMs = nowMs();
      const growing = c.call(
        leaderBefore,
        { cmd: 'reconfigure', members: allMembers },
        { timeoutMs: BOUND_MS },
      );
      const concurrent = codeOf(c.call(leaderBefore, { cmd: 'reconfigure', members: allMembers }));
      await growing;
      grow.ms = nowMs() - grow.fromMs;
      expect(await concurrent).toBe('CHANGE_IN_PROGRESS');
      for (const id of ALL) await waitForConfiguration(c, id, ALL, grow.fromMs);
      targets = [...ALL];
      await clients.progress(PROGRESS, 'after the growth');
      grow.toMs = nowMs();

      // 3. Shrink to three: without the leader and one new node, called on a member that stays.
      const leader = (await c.waitForLeader(BOUND_MS, { agreed: true })).leaderId;
      removed = [leader, JOINING.find((id) => id !== leader)!];
      staying = ALL.filter((id) => !removed.includes(id));
      targets = [...staying];
      shrink.fromMs = nowMs();
      await c.call(
        staying[0]!,
        { cmd: 'reconfigure', members: staying.map((id) => members[id]) },
        { timeoutMs: BOUND_MS },
      );
      shrink.ms = nowMs() - shrink.fromMs;
      const next = await c.waitForLeader(BOUND_MS, { agreed: false, exclude: removed });
      expect(staying).toContain(next.leaderId);
      for (const id of staying) await waitForConfiguration(c, id, staying, shrink.fromMs);
      for (const id of removed)
        await waitForWarning(c, id, 'REMOVED', { sinceMs: shrink.fromMs, timeoutMs: BOUND_MS });
      await clients.progress(PROGRESS, 'after the shrink');
      shrink.toMs = nowMs();
      for (const id of removed) expect(await codeOf(c.set(id, 'after-removal', 1))).toBe('REMOVED');
      expect(await codeOf(c.call(removed[1]!, { cmd: 'reconfigure', members: allMembers }))).toBe('REMOVED');
      await c.call(removed[1]!, { cmd: 'endNode' });
      expect(await codeOf(c.call(removed[1]!, { cmd: 'reconfigure', members: allMembers }))).toBe('STOPPED');

      // A change's window: from its call until PROGRESS writes were acknowledged after it completed
      // (for the shrink: after the new leader took over).
      const steady = latencyOf(clients.writes, steadyFromMs, steadyToMs);
      const during = (window: { fromMs: number; toMs: number }) =>
        latencyOf(clients.writes, window.fromMs, window.toMs);
      const gap = longestGapMs(clients.writes, shrink.fromMs, shrink.toMs);
      console.log(
        `membership 3 -> 5 -> 3 (seed ${SEED}): grow ${Math.round(grow.ms)} ms, shrink (leader ${removed[0]} and ${removed[1]} removed) ${Math.round(shrink.ms)} ms; ` +
          `write latency p50/p99: steady ${steady.p50}/${steady.p99} ms (${steady.count} writes), ` +
          `during the growth ${during(grow).p50}/${during(grow).p99} ms (${during(grow).count}), ` +
          `during the shrink ${during(shrink).p50}/${during(shrink).p99} ms (${during(shrink).count}); ` +
          `new leader ${next.leaderId} term ${next.term}, longest gap between acknowledged writes in the shrink ${gap} ms; ` +
          `messages of the waiting nodes dropped by the members: ${dropped.join(', ')}`,
      );
    } finally {
      await clients.stop();
    }

    const lost = await readBack(c, staying, clients);
    const linearizable = checkKvHistory(clients.history, { timeoutMs: 20_000 });
    console.log(
      `membership: ${clients.writes.length} writes acknowledged, ${clients.history.length} operations checked ` +
        `(${linearizable.ok === true ? 'linearizable' : 'NOT linearizable'}), lost ${lost.length}, rejections ${JSON.stringify(Object.fromEntries(clients.codes))}`,
    );
    expect(lost, `acknowledged writes lost (replay: ${replay()})`).toEqual([]);
    expect(linearizable.ok, `${describeViolation(linearizable)} (replay: ${replay()})`).toBe(true);
    expect(twoLeadersInATerm(c.timeline), formatRoleTimeline(c.timeline, { t0: c.t0 })).toEqual([]);
  }, 180_000);
});
