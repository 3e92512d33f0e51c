/**
 * The scenario of issue 9 over real processes with real mTLS (scripts/cluster-node.mjs on the
 * built dist/), each node with its WAL on disk: one flipped bit in a follower's WAL must not lose
 * writes that the two other nodes acknowledged.
 *
 * 3 nodes; 1,000 writes; kill -9 follower B; 2,000 more writes acknowledged by leader A and
 * follower C; one bit flipped in the middle of B's WAL; kill -9 A; start B: it refuses
 * (WAL_CORRUPT, naming its WAL and the offset) instead of replaying up to the flip, electing
 * itself with C and overwriting A's log; start A again: A and C elect a leader and serve all
 * 3,000 writes (linearizable reads on both).
 *
 * Before format version 1, B cut its WAL at the flip and started silently; B and C elected a
 * leader, and when A returned its log was overwritten (issue 9: 3,001 -> 1,003 entries), so the
 * acknowledged writes were lost on every node.
 *
 * Every wait is on an event a node reports or on a reply, with a bound; nothing sleeps.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

type TimelineEntry = { event: string; node: string; atMs: number } & Record<string, unknown>;
type Leader = { leaderId: string; term: number; atMs: number };
type Cluster = {
  ids: string[];
  dataDirs: Record<string, string> | null;
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown, options?: object): Promise<void>;
  get(id: string, key: string, options?: { consistency?: 'linearizable' | 'local' }): Promise<unknown>;
  waitForLeader(timeoutMs?: number, filter?: { exclude?: string[]; agreed?: boolean }): Promise<Leader>;
  kill(id: string, signal?: string): Promise<{ atMs: number }>;
  restart(id: string): Promise<void>;
  stop(): Promise<void>;
};
type ClusterModule = { startCluster(options: Record<string, unknown>): Promise<Cluster> };

const { startCluster } = (await import(
  new URL('../../scripts/cluster.mjs', import.meta.url).href
)) as ClusterModule;

const LEADER_BOUND_MS = 10_000;
const BEFORE = 1000;
const WHILE_DOWN = 2000;
const PARALLEL = 32;

let cluster: Cluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

/** Writes `prefix-<i>` = i for i in [from, to) through node `id`, `PARALLEL` at a time; all must be acknowledged. */
const writeRange = async (c: Cluster, id: string, from: number, to: number) => {
  let next = from;
  const worker = async () => {
    while (next < to) {
      const i = next++;
      await c.set(id, `w-${i}`, i);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
};

/** Every key w-0 .. w-(count-1) read with a linearizable get on `id`; the keys that are wrong. */
const wrongKeys = async (c: Cluster, id: string, count: number) => {
  const wrong: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const got = await c.get(id, `w-${i}`);
      if (got !== i) wrong.push(`w-${i}: ${JSON.stringify(got)}`);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  return wrong;
};

describe('a flipped bit in a follower’s WAL loses no acknowledged write (issue 9)', () => {
  it('the damaged follower refuses to start; the leader and the other follower serve every write', async () => {
    const c = await startCluster({ nodes: 3, persistence: true, proposalTimeoutMs: 5000 });
    cluster = c;
    const { leaderId: a } = await c.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    const [b, other] = c.ids.filter((id) => id !== a) as [string, string];
    await writeRange(c, a, 0, BEFORE);

    await c.kill(b, 'SIGKILL');
    await writeRange(c, a, BEFORE, BEFORE + WHILE_DOWN);

    const walPath = join(c.dataDirs![b]!, 'raft.wal');
    const wal = await readFile(walPath);
    const middle = Math.floor(wal.length / 2);
    wal[middle] = wal[middle]! ^ 0x10;
    await writeFile(walPath, wal);

    await c.kill(a, 'SIGKILL');
    await expect(c.restart(b)).rejects.toMatchObject({ code: 'START_FAILED' });
    const fatal = c.timeline.find((entry) => entry.node === b && entry.event === 'fatal');
    expect(fatal?.error).toMatchObject({ code: 'WAL_CORRUPT' });
    const { message } = fatal!.error as { message: string };
    expect(message).toContain(walPath);
    expect(message).toMatch(/at byte \d+/);
    // Refused: the WAL is as the flip left it.
    expect((await readFile(walPath)).equals(wal)).toBe(true);

    await c.restart(a);
    await c.waitForLeader(LEADER_BOUND_MS, { exclude: [b] });
    for (const id of [a, other]) {
      const wrong = await wrongKeys(c, id, BEFORE + WHILE_DOWN);
      expect(wrong, `${id}: ${wrong.length} of ${BEFORE + WHILE_DOWN} keys wrong`).toEqual([]);
    }
  });
});
