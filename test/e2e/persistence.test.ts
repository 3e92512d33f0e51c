/**
 * End to end durability: real node processes (scripts/cluster-node.mjs on the built dist/) with
 * `persistence` on, each with its own WAL directory on disk (real files, real fdatasync), kill -9
 * and restart.
 *
 * - kill -9 ALL three nodes, restart all: every value is there (a linearizable get on every node),
 *   and no node's term went back;
 * - kill -9 the leader while many writes are in flight, restart it: every write that resolved is
 *   still there on every node (acknowledged => durable);
 * - kill -9 the leader and a follower (a majority) together under load, restart both: the same.
 *   Without the WAL the two empty nodes could elect one of themselves and lose committed writes.
 *
 * Every wait is on an event a node reports or on a reply, with a bound; nothing sleeps.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

type TimelineEntry = { event: string; node: string; atMs: number; relMs: number } & Record<string, unknown>;
type Leader = { leaderId: string; term: number; atMs: number };
type Status = { role: string; term: number; commitIndex: number; lastIndex: number; appliedIndex: number };
type Metrics = {
  role: string;
  term: number;
  walBytes: number | null;
  walSyncs: number | null;
  walRecords: number | null;
  walError: string | null;
};
type Cluster = {
  ids: string[];
  dir: string;
  dataDirs: Record<string, string> | null;
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown, options?: object): Promise<void>;
  get(id: string, key: string, options?: { consistency?: 'linearizable' | 'local' }): Promise<unknown>;
  status(id: string): Promise<Status>;
  metrics(id: string): Promise<Metrics>;
  waitFor<T>(
    check: (event: TimelineEntry | null) => T | null | undefined | false,
    options?: { timeoutMs?: number; label?: string },
  ): Promise<T>;
  waitForLeader(timeoutMs?: number, filter?: { exclude?: string[]; agreed?: boolean }): Promise<Leader>;
  kill(id: string, signal?: string): Promise<{ atMs: number }>;
  restart(id: string): Promise<void>;
  stop(): Promise<void>;
  isLive(id: string): boolean;
  liveIds(): string[];
};
type ClusterModule = { startCluster(options: Record<string, unknown>): Promise<Cluster> };

const { startCluster } = (await import(
  new URL('../../scripts/cluster.mjs', import.meta.url).href
)) as ClusterModule;

const LEADER_BOUND_MS = 10_000;
const PROPOSAL_TIMEOUT_MS = 3000;

let cluster: Cluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

const start = async (): Promise<Cluster> => {
  cluster = await startCluster({ nodes: 3, persistence: true, proposalTimeoutMs: PROPOSAL_TIMEOUT_MS });
  return cluster;
};

/** Runs `fn` over `items` with at most `limit` at a time. */
const inParallel = async <T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> => {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
};

/** Every key of `expected` read with a linearizable get on every node equals its value. */
const expectOnEveryNode = async (c: Cluster, expected: Map<string, unknown>, label: string) => {
  for (const id of c.ids) {
    const wrong: string[] = [];
    await inParallel([...expected], 32, async ([key, value]) => {
      const got = await c.get(id, key);
      if (got !== value) wrong.push(`${key}: ${JSON.stringify(got)} (expected ${JSON.stringify(value)})`);
    });
    expect(wrong, `${label}: on ${id}, ${wrong.length} of ${expected.size} keys wrong`).toEqual([]);
  }
};

/**
 * Writes `load-<i>` = i from `workers` concurrent callers spread over the live nodes until
 * `stop()`; records which resolved (acknowledged) and which rejected (outcome unknown).
 */
const startLoad = (c: Cluster, workers: number) => {
  const acknowledged = new Map<string, number>();
  const rejected = new Map<string, string>();
  let next = 0;
  let stopping = false;
  const listeners = new Set<() => void>();
  // Bounded by count as well as by stop(): a dead target rejects at once, and must not spin forever.
  const maxCalls = 20_000;
  const loop = async (worker: number) => {
    while (!stopping && next < maxCalls) {
      const i = next++;
      const live = c.liveIds();
      if (live.length === 0) return;
      const target = live[(worker + i) % live.length]!;
      const key = `load-${i}`;
      try {
        await c.set(target, key, i);
        acknowledged.set(key, i);
        for (const listener of listeners) listener();
      } catch (error) {
        rejected.set(key, String((error as { code?: string }).code));
      }
    }
  };
  const done = Promise.all(Array.from({ length: workers }, (_, w) => loop(w)));
  return {
    acknowledged,
    rejected,
    /** Resolves once `count` writes in all were acknowledged (bounded). */
    until: (count: number, what: string, boundMs = 20_000) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (acknowledged.size < count) return;
          clearTimeout(timer);
          listeners.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`only ${acknowledged.size} writes acknowledged, waited for ${count}: ${what}`));
        }, boundMs);
        listeners.add(check);
        check();
      }),
    stop: async () => {
      stopping = true;
      await done;
    },
  };
};

/** The first role a node reported after its last restart: the term it restored from its WAL. */
const restoredTerm = (c: Cluster, id: string, sinceMs: number) =>
  c.waitFor(
    () => {
      const entry = c.timeline.find(
        (e) => e.node === id && e.event === 'role' && e.atMs >= sinceMs && typeof e.term === 'number',
      );
      return entry ? (entry.term as number) : null;
    },
    { timeoutMs: LEADER_BOUND_MS, label: `${id} to report its role after restart` },
  );

const walSummary = async (c: Cluster) =>
  (
    await Promise.all(
      c.liveIds().map(async (id) => {
        const m = await c.metrics(id);
        const perSync = m.walSyncs ? (m.walRecords ?? 0) / m.walSyncs : 0;
        return `${id} (${m.role}) ${m.walRecords} records / ${m.walSyncs} syncs = ${perSync.toFixed(1)} per sync, ${m.walBytes} B`;
      }),
    )
  ).join('; ');

describe('persistence: a three-node cluster of real processes with a WAL per node', () => {
  it('kill -9 of ALL nodes: after a restart of all, every value is there on every node and no term went back', async () => {
    const c = await start();
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    expect(c.dataDirs).not.toBeNull();
    const expected = new Map<string, unknown>();
    for (const [n, id] of c.ids.entries()) {
      for (let i = 0; i < 10; i += 1) {
        const key = `all-${id}-${i}`;
        expected.set(key, `${id}:${i}`);
      }
      await inParallel(
        [...expected].filter(([key]) => key.startsWith(`all-${id}-`)),
        5,
        async ([key, value]) => {
          await c.set(c.ids[(n + 1) % c.ids.length]!, key, value);
        },
      );
    }
    // Overwrites: the last value must win after the restart too.
    await c.set(c.ids[0]!, 'all-node-1-0', 'overwritten');
    expected.set('all-node-1-0', 'overwritten');
    await expectOnEveryNode(c, expected, 'before the kill');

    const before = new Map<string, Status>();
    for (const id of c.ids) before.set(id, await c.status(id));
    for (const id of c.ids) expect(existsSync(join(c.dataDirs![id]!, 'raft.wal')), `${id} WAL`).toBe(true);
    console.log(`before kill -9 of all: ${await walSummary(c)}`);

    await Promise.all(c.ids.map((id) => c.kill(id, 'SIGKILL')));
    const restartedAt = performance.timeOrigin + performance.now();
    await Promise.all(c.ids.map((id) => c.restart(id)));

    // Each node came back with the term it had (or, if it just voted, a later one): none went back.
    for (const id of c.ids) {
      const term = await restoredTerm(c, id, restartedAt);
      expect(term, `${id} restored term`).toBeGreaterThanOrEqual(before.get(id)!.term);
    }
    const leader = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    expect(leader.term).toBeGreaterThan(Math.max(...[...before.values()].map((s) => s.term)));
    for (const id of c.ids) {
      const status = await c.status(id);
      expect(status.term, `${id} term`).toBeGreaterThanOrEqual(before.get(id)!.term);
      expect(status.lastIndex, `${id} log`).toBeGreaterThanOrEqual(before.get(id)!.commitIndex);
    }
    await expectOnEveryNode(c, expected, 'after kill -9 of all and restart');
    // And the cluster goes on.
    await c.set(leader.leaderId, 'after-restart', 1);
    for (const id of c.ids) expect(await c.get(id, 'after-restart')).toBe(1);
  });

  it('kill -9 of the leader mid-load: after its restart, every acknowledged write is there on every node', async () => {
    const c = await start();
    const old = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    const load = startLoad(c, 48);
    try {
      await load.until(300, 'before the kill');
      console.log(`under load: ${await walSummary(c)}`);
      const termBefore = (await c.status(old.leaderId)).term;
      const atKill = load.acknowledged.size;
      await c.kill(old.leaderId, 'SIGKILL');
      await c.waitForLeader(LEADER_BOUND_MS, { exclude: [old.leaderId] });
      // Writes go on through the new leader.
      await load.until(atKill + 200, 'after the failover');
      const restartedAt = performance.timeOrigin + performance.now();
      await c.restart(old.leaderId);
      expect(await restoredTerm(c, old.leaderId, restartedAt)).toBeGreaterThanOrEqual(termBefore);
      await load.until(load.acknowledged.size + 100, 'after the restart');
    } finally {
      await load.stop();
    }
    console.log(
      `${load.acknowledged.size} writes acknowledged, ${load.rejected.size} rejected (${[
        ...new Set(load.rejected.values()),
      ].join(', ')})`,
    );
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    console.log(`after: ${await walSummary(c)}`);
    await expectOnEveryNode(c, load.acknowledged, 'acknowledged writes');
  });

  it('kill -9 of the leader and a follower together mid-load: after both restart, every acknowledged write is there', async () => {
    const c = await start();
    const leader = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    const follower = c.ids.find((id) => id !== leader.leaderId)!;
    const load = startLoad(c, 48);
    try {
      await load.until(400, 'before the kill');
      await Promise.all([c.kill(leader.leaderId, 'SIGKILL'), c.kill(follower, 'SIGKILL')]);
    } finally {
      // Calls to the survivor cannot commit alone: they end with QUORUM_UNAVAILABLE (bounded).
      await load.stop();
    }
    const acknowledged = new Map(load.acknowledged);
    await Promise.all([c.restart(leader.leaderId), c.restart(follower)]);
    await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    console.log(
      `majority killed: ${acknowledged.size} writes acknowledged before, ${load.rejected.size} rejected; ${await walSummary(c)}`,
    );
    await expectOnEveryNode(c, acknowledged, 'acknowledged writes after a majority restart');
    for (const id of c.ids) expect((await c.metrics(id)).walError, `${id} walError`).toBeNull();
  });
});
