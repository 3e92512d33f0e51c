/**
 * A user's listener that throws never reaches the node: real node processes over mTLS
 * (scripts/cluster-node.mjs on the built dist/), each with a `change` and a `leader` listener that
 * throw on every call. Two kinds of application:
 *
 * - one whose uncaught exceptions end the process (cluster-node's default handler exits 1, as a
 *   process without any handler would): before the safe emitter every node died on the first write;
 * - one with a `process.on('uncaughtException')` handler that keeps running: before, the leader
 *   survived but stopped applying for good ("apply leaves a gap: 6 after 3"), kept leading and
 *   failed every later call.
 *
 * In both, writes on every node keep committing and applying on every node (a second `change`
 * listener, registered first, sees each one), reads return them, a `warning` { code:
 * 'LISTENER_ERROR' } arrives for each failed listener call, no process exits and no exception
 * reaches the process. Every wait is on a reported event or a reply, bounded.
 */
import { afterEach, describe, expect, it } from 'vitest';

type TimelineEntry = { event: string; node: string } & Record<string, unknown>;
type Cluster = {
  ids: string[];
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown): Promise<void>;
  get(id: string, key: string): Promise<unknown>;
  metrics(id: string): Promise<{ listenerErrors: number; appliedIndex: number; commitIndex: number }>;
  waitFor<T>(
    check: (event: TimelineEntry | null) => T,
    options?: { timeoutMs?: number; label?: string },
  ): Promise<T>;
  waitForLeader(
    timeoutMs?: number,
    filter?: { agreed?: boolean },
  ): Promise<{ leaderId: string; term: number }>;
  changes(id: string): Array<{ key: string; value: unknown }>;
  isLive(id: string): boolean;
  stop(): Promise<void>;
};
const { startCluster } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  startCluster(options: Record<string, unknown>): Promise<Cluster>;
};

const WRITES = 60;
const BOUND_MS = 10_000;
let cluster: Cluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

const run = async (keepRunningOnUncaught: boolean) => {
  const ids = ['node-1', 'node-2', 'node-3'];
  const perNode = Object.fromEntries(
    ids.map((id) => [id, { throwingListeners: true, warningEvents: true, keepRunningOnUncaught }]),
  );
  cluster = await startCluster({
    ids,
    changeEvents: true,
    proposalTimeoutMs: 5000,
    perNode,
  });
  const c = cluster;
  const leader = await c.waitForLeader(BOUND_MS, { agreed: true });
  // Writes on every node, ten at a time.
  for (let batch = 0; batch < WRITES / 10; batch += 1) {
    await Promise.all(
      Array.from({ length: 10 }, (_, i) => {
        const n = batch * 10 + i;
        return c.set(ids[n % 3]!, `k${n}`, { n });
      }),
    );
  }
  // Every node applied every write (its first `change` listener saw each), and reads return them.
  await c.waitFor(
    () => ids.every((id) => new Set(c.changes(id).map((change) => change.key)).size === WRITES),
    {
      timeoutMs: BOUND_MS,
      label: `every node to apply ${WRITES} writes`,
    },
  );
  for (const id of ids) {
    for (const n of [0, WRITES / 2, WRITES - 1]) expect(await c.get(id, `k${n}`)).toEqual({ n });
    const metrics = await c.metrics(id);
    expect(metrics.appliedIndex).toBe(metrics.commitIndex);
    expect(metrics.listenerErrors).toBeGreaterThanOrEqual(WRITES);
  }
  // The warnings arrived, from every node, for both kinds of listener.
  const warnings = c.timeline.filter((entry) => entry.event === 'warning' && entry.code === 'LISTENER_ERROR');
  for (const id of ids) {
    const own = warnings.filter((warning) => warning.node === id);
    expect(own.filter((warning) => warning.listenerEvent === 'change').length).toBeGreaterThanOrEqual(WRITES);
    expect(own.some((warning) => warning.listenerEvent === 'leader')).toBe(true);
    expect(String(own[0]!.message)).toContain('listener');
  }
  // Nothing reached a process, nothing exited, the same leader still leads.
  expect(c.timeline.filter((entry) => ['fatal', 'uncaught', 'exit'].includes(entry.event))).toEqual([]);
  for (const id of ids) expect(c.isLive(id)).toBe(true);
  const after = await c.waitForLeader(BOUND_MS, { agreed: true });
  console.log(
    `throwing listeners (${keepRunningOnUncaught ? 'with' : 'without'} a keep-running handler): ${WRITES} writes applied on 3 nodes, ${warnings.length} LISTENER_ERROR warnings, leader ${leader.leaderId}/${leader.term} -> ${after.leaderId}/${after.term}`,
  );
};

describe('listeners that throw, over real processes', () => {
  it('never stop a node whose uncaught exceptions end the process', async () => {
    await run(false);
  });

  it('never stop applying on a node with an uncaughtException handler that keeps running', async () => {
    await run(true);
  });
});
