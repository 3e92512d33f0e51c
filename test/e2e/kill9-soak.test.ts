/**
 * The kill -9 soak: real node processes (scripts/cluster-node.mjs on the built dist/), real mTLS,
 * a WAL per node (real files, real fdatasync), continuous writers. Each cycle kills one node with
 * SIGKILL (the leader every third cycle at least, a seeded pick otherwise), waits until the others
 * elect a leader and go on acknowledging writes, restarts the killed node from its directory and
 * waits until it rejoined and writes go on. At the end every node must hold, for every key, the
 * last acknowledged write to it or a later one whose outcome the writer never learned: nothing
 * acknowledged is lost, and no older write came back.
 *
 * Every key has one writer that writes it sequentially (never two calls on it at once), so its
 * history is a sequence and "later" is exact. A call that rejected (timeout, node gone) has an
 * unknown outcome: it may or may not have taken effect.
 *
 * Environment:
 *   DISKEYVAL_SOAK=1          50 cycles instead of 10
 *   DISKEYVAL_SOAK_CYCLES=n   n cycles
 *   DISKEYVAL_SOAK_SEED=s     the seed of the victims' pick (default 1, printed)
 *
 * Every wait is on an event a node reports or on a reply, with a bound; nothing sleeps.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createRng } from '../../src/machines/rng.js';
import { startClients, violation } from '../support/clients.js';

type TimelineEntry = { event: string; node: string; atMs: number } & Record<string, unknown>;
type Leader = { leaderId: string; term: number };
type Cluster = {
  ids: string[];
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown): Promise<void>;
  get(id: string, key: string): Promise<unknown>;
  metrics(id: string): Promise<{ walError: string | null; role: string; term: number }>;
  waitFor<T>(
    check: (event: TimelineEntry | null) => T | null | undefined | false,
    options?: { timeoutMs?: number; label?: string },
  ): Promise<T>;
  waitForLeader(timeoutMs?: number, filter?: { exclude?: string[]; agreed?: boolean }): Promise<Leader>;
  kill(id: string, signal?: string): Promise<{ atMs: number }>;
  restart(id: string): Promise<void>;
  stop(): Promise<void>;
  liveIds(): string[];
  isRecovering(id: string): boolean;
};
type ClusterModule = { startCluster(options: Record<string, unknown>): Promise<Cluster> };

const { startCluster } = (await import(
  new URL('../../scripts/cluster.mjs', import.meta.url).href
)) as ClusterModule;

const CYCLES = Number(process.env.DISKEYVAL_SOAK_CYCLES ?? (process.env.DISKEYVAL_SOAK === '1' ? 50 : 10));
const SEED = Number(process.env.DISKEYVAL_SOAK_SEED ?? 1);
const WRITERS = 12;
const KEYS_PER_WRITER = 4;
/** Writes acknowledged after each failover and after each restart before the cycle goes on. */
const PROGRESS_PER_STEP = 40;
const LEADER_BOUND_MS = 10_000;
const PROGRESS_BOUND_MS = 20_000;

const replay = (): string =>
  `DISKEYVAL_SOAK_CYCLES=${CYCLES} DISKEYVAL_SOAK_SEED=${SEED} npx vitest run test/e2e/kill9-soak.test.ts`;

let cluster: Cluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

describe('kill -9 soak: real processes, real mTLS, a WAL per node', () => {
  it(
    `${CYCLES} cycles of kill -9 and restart under continuous writes: nothing acknowledged is lost`,
    async () => {
      const startedAt = performance.now();
      const c = await startCluster({ nodes: 3, persistence: true, proposalTimeoutMs: 3000 });
      cluster = c;
      await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
      // A member that started a little late may still be finishing its first recovery (README
      // "Restarts, recovery and bootstrap"): it counts toward nothing until then, and a leader killed
      // before it finished leaves no majority that holds the log. The soak begins once all count.
      await c.waitFor(() => c.ids.every((id) => !c.isRecovering(id)) || null, {
        timeoutMs: LEADER_BOUND_MS,
        label: 'every member recovered or bootstrapped',
      });
      const rng = createRng(SEED);
      // Writers only (every attempt per key recorded), each on the next live node.
      const writers = startClients(c, {
        seed: SEED,
        writers: WRITERS,
        readers: 0,
        keysPerWriter: KEYS_PER_WRITER,
        keyPrefix: 'soak',
        targets: () => c.liveIds(),
        maxCallsPerClient: 200_000,
        progressBoundMs: PROGRESS_BOUND_MS,
        replay,
      });
      const victims: string[] = [];
      let leaderKills = 0;
      try {
        await writers.progress(PROGRESS_PER_STEP, 'before the first kill');
        for (let cycle = 0; cycle < CYCLES; cycle += 1) {
          const leader = await c.waitForLeader(LEADER_BOUND_MS);
          const victim = cycle % 3 === 0 ? leader.leaderId : rng.pick(c.ids);
          if (victim === leader.leaderId) leaderKills += 1;
          victims.push(victim);
          await c.kill(victim, 'SIGKILL');
          await c.waitForLeader(LEADER_BOUND_MS, { exclude: [victim] });
          await writers.progress(PROGRESS_PER_STEP, `cycle ${cycle}: writes after killing ${victim}`);
          const restartedAt = performance.timeOrigin + performance.now();
          await c.restart(victim);
          await c.waitFor(
            () => c.timeline.some((e) => e.node === victim && e.event === 'role' && e.atMs >= restartedAt),
            { timeoutMs: LEADER_BOUND_MS, label: `${victim} to report its role after its restart` },
          );
          await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
          await writers.progress(PROGRESS_PER_STEP, `cycle ${cycle}: writes after restarting ${victim}`);
        }
      } finally {
        await writers.stop();
      }
      await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });

      // Every node, read linearizably (it answers once it applied everything committed before).
      const lost: string[] = [];
      for (const id of c.ids) {
        for (const [key, attempts] of writers.attempts) {
          const why = violation(attempts, await c.get(id, key));
          if (why) lost.push(`${id} ${key}: ${why}`);
        }
        expect((await c.metrics(id)).walError, `${id} walError`).toBeNull();
      }
      const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
      console.log(
        `kill -9 soak (seed ${SEED}): ${CYCLES} cycles (${leaderKills} of the leader; victims ${victims.join(' ')}), ` +
          `${writers.writes.length} writes acknowledged, ${writers.unknown()} with unknown outcome, ` +
          `${writers.attempts.size} keys checked on ${c.ids.length} nodes, lost: ${lost.length}, ${seconds} s`,
      );
      expect(lost, `acknowledged writes lost or rolled back (replay: ${replay()})`).toEqual([]);
      expect(leaderKills).toBeGreaterThanOrEqual(Math.ceil(CYCLES / 3));
      expect(writers.writes.length).toBeGreaterThanOrEqual(CYCLES * 2 * PROGRESS_PER_STEP);
    },
    CYCLES * 30_000 + 60_000,
  );
});
