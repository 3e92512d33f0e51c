/**
 * The lab suites' KV persistence scenarios with concurrent clients on the simulator: servers
 * crash and restart (one at a time, the leader, or all at once) under concurrent clients, and the
 * leader crashes while followers' writes are forwarded to it. Histories are checked for
 * linearizability; every node's applied updates for exactly-once (a retried write is applied by
 * one update at most) and for the same order on every node.
 *
 * Odd seeds run on durable simulated disks (sim-disk.ts): a crash loses every write not yet
 * synced, so only what the raft nodes held back until their fsync may have been acknowledged.
 * Cluster sizes from 2 to 5.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { type Clients, clientRun, createCheckStats, describeStats } from './clients.js';
import { type DurabilityCounters, type Simulation, seedsFor, UNRELIABLE } from './simulator.js';

const stats = createCheckStats();
const startedAt = performance.now();
const durable: Record<string, number> = {};
let durableRuns = 0;
afterAll(() => {
  stats.notes.push(
    `${durableRuns} runs on durable disks: ${Object.entries(durable)
      .map(([key, value]) => `${key} ${value}`)
      .join(', ')}`,
  );
  console.log(describeStats('clients-crash', stats, performance.now() - startedAt));
});

const diskFor = (seed: number) => ({ disk: seed % 2 === 1 ? ('durable' as const) : ('memory' as const) });

/** Adds a durable run's counters to the file's totals. */
const count = (sim: Simulation, seed: number): void => {
  if (seed % 2 === 0) return;
  durableRuns += 1;
  const counters = sim.durability();
  for (const key of Object.keys(counters) as Array<keyof DurabilityCounters>)
    durable[key] = (durable[key] ?? 0) + counters[key];
};

/** Restarts the crashed servers and attaches a fresh client to each (the old ones stopped). */
const restartAll = (sim: Simulation, clients: Clients, crashed: readonly string[]): void => {
  for (const id of crashed) {
    sim.restart(id);
    clients.add(id);
  }
  clients.start();
};

describe('clients: crashes and restarts', () => {
  it('crash-restart with concurrent clients (one server, the leader, or all)', async () => {
    for (const seed of seedsFor(70, 321)) {
      const result = await clientRun(
        seed,
        { nodes: 5, ...diskFor(seed), clients: { maxOps: 30, keys: 4, thinkMs: [0, 40] } },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start();
          for (let round = 0; round < 4; round += 1) {
            await clients.drive(sim.rng.int(100, 500));
            const roll = sim.rng.float();
            const leader = sim.leader();
            const crashed =
              roll < 0.2 ? [...sim.ids] : roll < 0.6 && leader !== null ? [leader] : [sim.rng.pick(sim.ids)];
            for (const id of crashed) sim.crash(id);
            await clients.drive(sim.rng.int(0, 400));
            restartAll(sim, clients, crashed);
          }
          await clients.drive(800);
        },
        stats,
      );
      count(result.sim, seed);
    }
  });

  it('crash-restart with concurrent clients on an unreliable network, 2, 3 and 4 servers', async () => {
    for (const [index, seed] of seedsFor(36, 322).entries()) {
      const result = await clientRun(
        seed,
        {
          nodes: [2, 3, 4][index % 3]!,
          ...diskFor(seed),
          network: UNRELIABLE,
          clients: { maxOps: 25, keys: 3, thinkMs: [0, 40] },
        },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start();
          for (let round = 0; round < 3; round += 1) {
            await clients.drive(sim.rng.int(200, 600));
            const crashed = [sim.rng.pick(sim.ids)];
            for (const id of crashed) sim.crash(id);
            await clients.drive(sim.rng.int(0, 400));
            restartAll(sim, clients, crashed);
          }
          await clients.drive(800);
        },
        stats,
      );
      count(result.sim, seed);
    }
  });

  it('crash-restart and partitions with log compaction: servers catch up by snapshot, histories stay linearizable', async () => {
    let snapshotsInstalled = 0;
    for (const seed of seedsFor(40, 324)) {
      const result = await clientRun(
        seed,
        {
          nodes: 3,
          network: UNRELIABLE,
          clients: { maxOps: 30, keys: 4, thinkMs: [0, 30], noForwardShare: 0.2 },
          compaction: { compactEvery: 5, keepEntries: 1, snapshotChunkBytes: 80 },
        },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start();
          for (let round = 0; round < 3; round += 1) {
            await clients.drive(sim.rng.int(100, 400));
            // One server misses a stretch of writes (down or cut off), then catches up.
            const lagging = sim.rng.pick(sim.ids);
            const crash = sim.rng.chance(0.5);
            if (crash) sim.crash(lagging);
            else
              sim.partition(
                [lagging],
                sim.ids.filter((id) => id !== lagging),
              );
            await clients.drive(sim.rng.int(200, 500));
            if (crash) restartAll(sim, clients, [lagging]);
            else sim.heal();
          }
          await clients.drive(800);
        },
        stats,
      );
      for (const id of result.sim.ids)
        snapshotsInstalled += result.sim.node(id)?.metrics().snapshotsInstalled ?? 0;
    }
    if (process.env.DISKEYVAL_SIM_SEED === undefined) expect(snapshotsInstalled).toBeGreaterThan(0);
    stats.notes.push(`compaction: ${snapshotsInstalled} snapshots installed (on nodes alive at the end)`);
  });

  it('leader crash during forwarded writes: retried writes apply exactly once', async () => {
    let duplicatesSkipped = 0;
    let retries = 0;
    let updates = 0;
    for (const seed of seedsFor(60, 323)) {
      const result = await clientRun(
        seed,
        {
          nodes: 3,
          ...diskFor(seed),
          clients: { maxOps: 40, keys: 3, thinkMs: [0, 10], readShare: 0.2, deleteShare: 0.05 },
        },
        async (sim, clients) => {
          const leader = sim.stableLeader()!;
          for (const id of sim.ids.filter((other) => other !== leader)) {
            clients.add(id);
            clients.add(id);
          }
          clients.start();
          for (let round = 0; round < 3; round += 1) {
            await clients.drive(sim.rng.int(100, 300));
            const current = sim.leader();
            if (current === null) continue;
            // Followers' writes are in flight to the leader (forwarded) when it crashes.
            sim.crash(current);
            await clients.drive(sim.rng.int(300, 700));
            sim.restart(current);
          }
          await clients.drive(600);
        },
        stats,
      );
      count(result.sim, seed);
      duplicatesSkipped += result.duplicates;
      updates += result.updates;
      for (const id of result.sim.ids) retries += result.sim.node(id)?.metrics().retries ?? 0;
    }
    // The runs did what they are for: forwarded writes were retried after the crashes, and the
    // log held the same request more than once, which the stores skipped (checked per value).
    if (process.env.DISKEYVAL_SIM_SEED === undefined) {
      expect(retries).toBeGreaterThan(0);
      expect(duplicatesSkipped).toBeGreaterThan(0);
    }
    expect(updates).toBeGreaterThan(0);
    stats.notes.push(
      `leader crash during forwarded writes: ${updates} applied updates, ${retries} retries, ${duplicatesSkipped} duplicate entries skipped`,
    );
  });
});
