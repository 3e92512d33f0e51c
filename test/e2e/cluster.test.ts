/**
 * End to end: real node processes (scripts/cluster-node.mjs on the built dist/), real sockets on
 * 127.0.0.1, real mutual-TLS certificates from the project's cert tooling, kill -9 and restart.
 *
 * Nothing here sleeps for a fixed time: every wait is on an event a node reports (role, leader,
 * change, transport) or on a reply, with a bound. Timing is logged, not asserted, beyond sanity
 * bounds.
 *
 * These nodes run without the `persistence` option (test/e2e/persistence.test.ts covers the WAL),
 * so a restarted node comes back with empty memory and catches up from the leader. So that a majority of empty nodes can never elect one of themselves
 * and lose committed data, nodes killed together are restarted one at a time, each after a leader
 * with the data is in place.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// ---- the cluster library (plain JS in scripts/; typed here for what these tests use) ----------

type TimelineEntry = { event: string; node: string; atMs: number; relMs: number } & Record<string, unknown>;
type ChangeEntry = TimelineEntry & { key: string; value: unknown; deleted: boolean; index: number };
type Leader = { leaderId: string; term: number; atMs: number; relMs: number };
type LeaderFilter = { exclude?: string[]; minTerm?: number; agreed?: boolean };
type Metrics = {
  role: string;
  forwardedWrites: number;
  forwardedReads: number;
  transport: { rejected: Record<string, number> } | null;
};
type Cluster = {
  ids: string[];
  dir: string;
  ports: Record<string, number>;
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown, options?: object): Promise<void>;
  get(id: string, key: string, options?: { consistency?: 'linearizable' | 'local' }): Promise<unknown>;
  delete(id: string, key: string): Promise<void>;
  metrics(id: string): Promise<Metrics>;
  waitFor<T>(
    check: (event: TimelineEntry | null) => T | null | undefined | false,
    options?: { timeoutMs?: number; label?: string },
  ): Promise<T>;
  waitForLeader(timeoutMs?: number, filter?: LeaderFilter): Promise<Leader>;
  kill(id: string, signal?: string): Promise<{ atMs: number; relMs: number }>;
  restart(id: string, extra?: { forceRecovery?: boolean; join?: boolean }): Promise<void>;
  stop(): Promise<void>;
  isLive(id: string): boolean;
  isRecovering(id: string): boolean;
  changes(id: string): ChangeEntry[];
  output(id: string): string;
};
type ClusterModule = {
  startCluster(options: Record<string, unknown>): Promise<Cluster>;
  formatRoleTimeline(timeline: TimelineEntry[], options?: { t0?: number }): string;
};

const CLUSTER_MODULE = new URL('../../scripts/cluster.mjs', import.meta.url).href;
const { startCluster } = (await import(CLUSTER_MODULE)) as ClusterModule;

const LEADER_BOUND_MS = 5000;
const PROPOSAL_TIMEOUT_MS = 1500;

const codeOf = async (promise: Promise<unknown>): Promise<string> => {
  try {
    await promise;
    return 'RESOLVED';
  } catch (error) {
    return String((error as { code?: unknown }).code);
  }
};

/** Restarts every killed node, one at a time, each once a leader every live node follows exists. */
const heal = async (cluster: Cluster): Promise<Leader> => {
  for (const id of cluster.ids) {
    if (cluster.isLive(id)) continue;
    await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true }).catch(() => undefined);
    await cluster.restart(id);
  }
  // A node restarted in memory recovers first (README, "Restarts, recovery and bootstrap"): until it
  // has, it counts toward no majority, so the next fault must wait for it.
  await cluster.waitFor(() => cluster.ids.every((id) => !cluster.isRecovering(id)), {
    timeoutMs: LEADER_BOUND_MS,
    label: 'every restarted node to recover',
  });
  return cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
};

/** Waits until each of `ids` has applied (reported a change for) each key with the expected value. */
const waitApplied = (
  cluster: Cluster,
  ids: string | string[],
  expected: Record<string, unknown>,
  label: string,
) =>
  cluster.waitFor(
    () =>
      [ids].flat().every((id) => {
        const last = new Map<string, ChangeEntry>();
        for (const change of cluster.changes(id)) last.set(change.key, change);
        return Object.entries(expected).every(([key, value]) => {
          const change = last.get(key);
          return value === undefined
            ? change?.deleted === true
            : change !== undefined && !change.deleted && isDeepStrictEqual(change.value, value);
        });
      }),
    { timeoutMs: LEADER_BOUND_MS, label },
  );

describe('a three-node cluster of real processes over mTLS', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({ nodes: 3, changeEvents: true, proposalTimeoutMs: PROPOSAL_TIMEOUT_MS });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('elects one leader that every node follows', async () => {
    const leader = await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    expect(cluster.ids).toContain(leader.leaderId);
    const roles = await Promise.all(cluster.ids.map(async (id) => (await cluster.metrics(id)).role));
    expect(roles.filter((role) => role === 'leader')).toHaveLength(1);
    expect(roles.filter((role) => role === 'follower')).toHaveLength(2);
  });

  it('serves set, get and delete on every node: followers forward, every node reads every write, changes arrive in the same order', async () => {
    const leader = await heal(cluster);
    const values: Record<string, unknown> = {};
    for (const [i, id] of cluster.ids.entries()) {
      const key = `crud-${id}`;
      values[key] = { writtenOn: id, n: i, bytes: new Uint8Array([i, 1, 2]) };
      await cluster.set(id, key, values[key]);
    }
    // A linearizable get on every node returns what was set on every other node.
    for (const reader of cluster.ids) {
      for (const [key, value] of Object.entries(values)) {
        expect(await cluster.get(reader, key), `${key} read on ${reader}`).toEqual(value);
      }
    }
    // Followers forwarded their writes and reads to the leader.
    for (const id of cluster.ids.filter((id) => id !== leader.leaderId)) {
      const metrics = await cluster.metrics(id);
      expect(metrics.forwardedWrites, `${id} forwarded writes`).toBeGreaterThan(0);
      expect(metrics.forwardedReads, `${id} forwarded reads`).toBeGreaterThan(0);
    }

    // Overwrite on one node, delete on another: every node sees both.
    const [a, b, c] = cluster.ids as [string, string, string];
    await cluster.set(b, `crud-${a}`, 'overwritten');
    await cluster.delete(c, `crud-${b}`);
    for (const reader of cluster.ids) {
      expect(await cluster.get(reader, `crud-${a}`)).toBe('overwritten');
      expect(await cluster.get(reader, `crud-${b}`)).toBeUndefined();
      expect(await cluster.get(reader, `crud-${c}`)).toEqual(values[`crud-${c}`]);
    }
    // A deleted key is gone from every node's local map too, once the delete is applied there.
    for (const id of cluster.ids) {
      await waitApplied(cluster, id, { [`crud-${b}`]: undefined }, `${id} to apply the delete`);
      expect(await cluster.get(id, `crud-${b}`, { consistency: 'local' })).toBeUndefined();
    }

    // Change events: the same sequence, in log order, on every node.
    const sequence = (id: string) =>
      cluster
        .changes(id)
        .filter((change) => change.key.startsWith('crud-'))
        .map(({ key, value, deleted, index }) => ({ key, value, deleted, index }));
    const first = sequence(cluster.ids[0]!);
    expect(first.map((change) => [change.key, change.deleted])).toEqual([
      [`crud-${a}`, false],
      [`crud-${b}`, false],
      [`crud-${c}`, false],
      [`crud-${a}`, false],
      [`crud-${b}`, true],
    ]);
    const indexes = first.map((change) => change.index);
    expect([...indexes].sort((x, y) => x - y)).toEqual(indexes);
    expect(new Set(indexes).size).toBe(indexes.length);
    for (const id of cluster.ids.slice(1)) expect(sequence(id), `changes on ${id}`).toEqual(first);
  });

  it('elects a new leader after kill -9 of the leader; writes go on; the restarted node catches up', async () => {
    const old = await heal(cluster);
    const killed = await cluster.kill(old.leaderId, 'SIGKILL');
    const fresh = await cluster.waitForLeader(LEADER_BOUND_MS, { exclude: [old.leaderId] });
    console.log(
      `kill -9 of ${old.leaderId} (term ${old.term}) -> ${fresh.leaderId} leads term ${fresh.term} after ${Math.round(
        fresh.atMs - killed.atMs,
      )} ms`,
    );
    expect(fresh.leaderId).not.toBe(old.leaderId);
    expect(fresh.term).toBeGreaterThan(old.term);

    const survivors = cluster.ids.filter((id) => id !== old.leaderId);
    const written: Record<string, unknown> = {};
    for (const [i, id] of survivors.entries()) {
      for (let n = 0; n < 3; n += 1) {
        const key = `while-down-${i}-${n}`;
        written[key] = `${id}:${n}`;
        await cluster.set(id, key, written[key]);
      }
    }
    for (const reader of survivors) {
      for (const [key, value] of Object.entries(written)) expect(await cluster.get(reader, key)).toBe(value);
    }

    await cluster.restart(old.leaderId);
    // It catches up by replication alone: a local read once its change events came in...
    await waitApplied(cluster, old.leaderId, written, `${old.leaderId} to catch up after restart`);
    for (const [key, value] of Object.entries(written)) {
      expect(await cluster.get(old.leaderId, key, { consistency: 'local' })).toBe(value);
    }
    // ...and a linearizable read, of these and of what was written before it died.
    for (const [key, value] of Object.entries(written))
      expect(await cluster.get(old.leaderId, key)).toBe(value);
    expect(await cluster.get(old.leaderId, `crud-${cluster.ids[0]}`)).toBe('overwritten');
    // It rejoins as a follower (PreVote keeps a node that rejoins from disturbing the leader).
    const agreed = await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    expect(agreed.leaderId).not.toBe(old.leaderId);
    // It serves writes again (as a follower, forwarding).
    await cluster.set(old.leaderId, 'after-restart', 42);
    expect(await cluster.get(fresh.leaderId, 'after-restart')).toBe(42);
  });

  it('rejects calls on a minority side with QUORUM_UNAVAILABLE within proposalTimeoutMs and changes nothing; recovers after restarts', async () => {
    const leader = await heal(cluster);
    const [follower1, survivor] = cluster.ids.filter((id) => id !== leader.leaderId) as [string, string];
    await cluster.set(survivor, 'before-minority', 'kept');
    await cluster.kill(leader.leaderId);
    await cluster.kill(follower1);

    const started = performance.now();
    const [setCode, getCode] = await Promise.all([
      codeOf(cluster.set(survivor, 'minority-write', 'must-not-appear')),
      codeOf(cluster.get(survivor, 'before-minority')),
    ]);
    const elapsedMs = performance.now() - started;
    console.log(`minority side: set -> ${setCode}, get -> ${getCode} after ${Math.round(elapsedMs)} ms`);
    expect(setCode).toBe('QUORUM_UNAVAILABLE');
    expect(getCode).toBe('QUORUM_UNAVAILABLE');
    expect(elapsedMs).toBeLessThan(PROPOSAL_TIMEOUT_MS + 1500);
    expect(await cluster.get(survivor, 'minority-write', { consistency: 'local' })).toBeUndefined();
    expect(await cluster.get(survivor, 'before-minority', { consistency: 'local' })).toBe('kept');

    // Back to a majority: first one node (the survivor, which has the data, must lead), then the other.
    // In memory the restarted nodes lost their state: two of three, a majority, so recovery waits
    // for an operator (README, "Restarts, recovery and bootstrap"): forceRecovery recovers from the
    // survivor, which holds every acknowledged write.
    await cluster.restart(follower1, { forceRecovery: true });
    const recovered = await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    expect(recovered.leaderId).toBe(survivor);
    await cluster.restart(leader.leaderId);
    await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    for (const id of cluster.ids) {
      expect(await cluster.get(id, 'minority-write'), `minority-write on ${id}`).toBeUndefined();
      expect(await cluster.get(id, 'before-minority'), `before-minority on ${id}`).toBe('kept');
      await cluster.set(id, `recovered-${id}`, id);
    }
    for (const reader of cluster.ids) {
      for (const id of cluster.ids) expect(await cluster.get(reader, `recovered-${id}`)).toBe(id);
    }
  });

  it('drops bad bytes from raw TCP, plaintext and TLS clients without harm, and counts them', async () => {
    await heal(cluster);
    const target = cluster.ids[0]!;
    const port = cluster.ports[target]!;
    const pem = (name: string) => readFileSync(join(cluster.dir, name), 'utf8');
    const rejectedTotal = (metrics: Metrics) =>
      Object.values(metrics.transport?.rejected ?? {}).reduce((sum, n) => sum + n, 0);
    const before = rejectedTotal(await cluster.metrics(target));
    const since = cluster.timeline.length;

    /** Resolves when the node closes `socket`; rejects if it is still open after 5000 ms. */
    const closedByNode = (socket: net.Socket, what: string) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new Error(`the node did not close a ${what} that sent bad bytes within 5000 ms`));
        }, 5000);
        socket.on('error', () => undefined);
        socket.on('data', () => undefined);
        socket.on('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });

    /** Sends `bytes` on a fresh connection and resolves when the node closes it (or the bound passes). */
    const rawClient = (bytes: Buffer | string) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(bytes));
      return closedByNode(socket, 'raw connection');
    };

    /** A TLS client; when the handshake succeeds it writes `bytes`; resolves when the connection closes. */
    const tlsClient = (options: tls.ConnectionOptions, bytes: Buffer) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ...options }, () => socket.write(bytes));
      return closedByNode(socket, 'TLS connection');
    };

    const { createClusterCertificates } = (await import(
      new URL('../../dist/index.js', import.meta.url).href
    )) as {
      createClusterCertificates(o: {
        nodes: string[];
      }): Promise<{ ca: { cert: string }; nodes: Record<string, { cert: string; key: string }> }>;
    };
    const stranger = await createClusterCertificates({ nodes: [cluster.ids[1]!] });
    const badClients = [
      () => rawClient(randomBytes(2048)),
      () => rawClient('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'),
      () => rawClient(Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, ...randomBytes(64)])),
      // TLS without a client certificate.
      () => tlsClient({ rejectUnauthorized: false }, randomBytes(64)),
      // A client certificate from another CA.
      () =>
        tlsClient(
          {
            rejectUnauthorized: false,
            cert: stranger.nodes[cluster.ids[1]!]!.cert,
            key: stranger.nodes[cluster.ids[1]!]!.key,
          },
          randomBytes(64),
        ),
      // A valid cluster certificate, then garbage instead of the protocol handshake.
      () =>
        tlsClient(
          {
            ca: pem('ca.pem'),
            cert: pem(`${cluster.ids[1]}.pem`),
            key: pem(`${cluster.ids[1]}.key`),
            servername: target,
            checkServerIdentity: () => undefined,
          },
          randomBytes(4096),
        ),
    ];
    for (const client of badClients) await client();

    const rejections = await cluster.waitFor(
      () => {
        const events = cluster.timeline
          .slice(since)
          .filter((entry) => entry.event === 'transport' && entry.node === target);
        return events.length >= badClients.length ? events : null;
      },
      { timeoutMs: 5000, label: `${badClients.length} rejected connections on ${target}` },
    );
    console.log(`rejected on ${target}: ${rejections.map((entry) => entry.reason).join(', ')}`);
    const after = rejectedTotal(await cluster.metrics(target));
    expect(after - before).toBeGreaterThanOrEqual(badClients.length);

    // No node crashed, and the cluster still serves every call on every node.
    expect(
      cluster.timeline.slice(since).filter((entry) => entry.event === 'exit' || entry.event === 'fatal'),
    ).toEqual([]);
    for (const id of cluster.ids) expect(cluster.isLive(id)).toBe(true);
    await cluster.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    for (const id of cluster.ids) await cluster.set(id, `after-bad-bytes-${id}`, id);
    for (const reader of cluster.ids) {
      for (const id of cluster.ids) expect(await cluster.get(reader, `after-bad-bytes-${id}`)).toBe(id);
    }
  });
});

describe('leader failover time with the default timeouts (electionTimeoutMs 300, heartbeatMs 50)', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    // Default election timing; change events only tell when a follower has caught up.
    cluster = await startCluster({ nodes: 3, changeEvents: true });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('measures kill -9 of the leader to a new leader over 10 kills; writes work after each', async () => {
    const KILLS = 10;
    const times: number[] = [];
    const campaigns: number[] = [];
    for (let round = 0; round < KILLS; round += 1) {
      const old = await heal(cluster);
      // Steady state first: every follower has the leader's log (a node restarted a moment ago
      // may still be catching up, and a lagging node cannot win, nor let the other win a PreVote
      // while it still follows the old leader: that adds a whole election timeout).
      await cluster.set(old.leaderId, `sync-${round}`, round);
      await waitApplied(
        cluster,
        cluster.ids,
        { [`sync-${round}`]: round },
        `every node to apply sync-${round}`,
      );
      const killed = await cluster.kill(old.leaderId, 'SIGKILL');
      const fresh = await cluster.waitForLeader(LEADER_BOUND_MS, { exclude: [old.leaderId] });
      times.push(Math.round(fresh.atMs - killed.atMs));
      campaigns.push(fresh.term - old.term);
      expect(fresh.term).toBeGreaterThan(old.term);
      await cluster.set(fresh.leaderId, `failover-${round}`, round);
      const follower = cluster.ids.find((id) => id !== old.leaderId && id !== fresh.leaderId)!;
      expect(await cluster.get(follower, `failover-${round}`)).toBe(round);
    }
    await heal(cluster);
    for (let round = 0; round < KILLS; round += 1) {
      expect(await cluster.get(cluster.ids[round % cluster.ids.length]!, `failover-${round}`)).toBe(round);
    }
    const sorted = [...times].sort((a, b) => a - b);
    const median = (sorted[(sorted.length - 1) >> 1]! + sorted[sorted.length >> 1]!) / 2;
    console.log(
      `leader kill -> new leader (ms), ${KILLS} kills: ${times.join(', ')}; median ${median}, min ${sorted[0]}, max ${
        sorted[sorted.length - 1]
      }; terms used per failover (1 = no split vote): ${campaigns.join(', ')}`,
    );
    // How long a restarted node waits to hear from the leader (ready -> its first leader event).
    const rejoin: number[] = [];
    cluster.timeline.forEach((entry, i) => {
      if (entry.event !== 'restart') return;
      const later = cluster.timeline.slice(i + 1).filter((next) => next.node === entry.node);
      const ready = later.find((next) => next.event === 'ready');
      const knows = later.find((next) => next.event === 'leader' && next.nodeId);
      if (ready && knows) rejoin.push(Math.round(knows.atMs - ready.atMs));
    });
    console.log(`restarted node: ready -> hears from the leader (ms): ${rejoin.join(', ')}`);
    // A sanity bound only: these are figures, not promises.
    for (const ms of times) expect(ms).toBeLessThan(5000);
  });
});
