import { describe, expect, it } from 'vitest';
import { type ChaosResult, chaosRun } from './chaos.js';
import { type DurabilityCounters, seedsFor } from './simulator.js';

/**
 * Every cluster size from 2 to 5: even sizes too, where a majority is not "more than half rounded
 * up" (a broken majority shows there first, see broken-quorum.test.ts). Odd seeds run on durable
 * simulated disks (sim-disk.ts): fsyncs complete later, crashes land mid-flush and lose what was
 * not synced, and every vote and append answer is checked against what the disk synced.
 */
const SIZES = [2, 3, 4, 5];
const isDurableSeed = (seed: number): boolean => seed % 2 === 1;

/** Durable-disk counters summed over runs: the proof that the hard cases of durability happened. */
const createTotals = () => {
  const totals: Record<string, number> = {};
  let runs = 0;
  return {
    add: (result: ChaosResult) => {
      if (!result.durability) return;
      runs += 1;
      for (const [key, value] of Object.entries(result.durability)) totals[key] = (totals[key] ?? 0) + value;
    },
    runs: () => runs,
    get: (key: keyof DurabilityCounters): number => totals[key] ?? 0,
    describe: () =>
      `${runs} durable runs: ${Object.entries(totals)
        .map(([key, value]) => `${key} ${value}`)
        .join(', ')}`,
  };
};

/** With more than a few durable runs, the hard cases must have happened (not on one replayed seed). */
const expectHardCases = (totals: ReturnType<typeof createTotals>): void => {
  if (totals.runs() < 20) return;
  expect(totals.get('freshVoteGrants')).toBeGreaterThan(0);
  expect(totals.get('appendAcksChecked')).toBeGreaterThan(0);
  expect(totals.get('crashesLosingPersists')).toBeGreaterThan(0);
  expect(totals.get('inFlightSurvived')).toBeGreaterThan(0);
};

describe.each(SIZES)('chaos: %i servers', (nodes) => {
  const seeds = seedsFor(Number(process.env.DISKEYVAL_CHAOS_SEEDS ?? 100), nodes);
  it('survives seeded fault schedules with safety checked after every step (odd seeds on durable disks)', async () => {
    let committed = 0;
    let elections = 0;
    const totals = createTotals();
    for (const seed of seeds) {
      const result = await chaosRun(seed, nodes, undefined, isDurableSeed(seed) ? { disk: 'durable' } : {});
      committed += result.committed;
      elections += result.elections;
      totals.add(result);
    }
    console.log(
      `chaos, ${nodes} servers: ${seeds.length} seeds, ${committed} entries committed; ${totals.describe()}`,
    );
    // The runs did real work: leaders were elected and entries committed in every run.
    expect(elections).toBeGreaterThanOrEqual(seeds.length);
    expect(committed).toBeGreaterThanOrEqual(seeds.length * 6);
    expectHardCases(totals);
  });
});

// The same schedules with log compaction every few entries and snapshots sent in small chunks, so
// that lagging and restarted servers catch up through InstallSnapshot (§7) all the time.
const COMPACTION = { compactEvery: 6, keepEntries: 2, snapshotChunkBytes: 96 };

describe.each(SIZES)('chaos with log compaction: %i servers', (nodes) => {
  const seeds = seedsFor(Number(process.env.DISKEYVAL_CHAOS_SEEDS ?? 100) / 2, nodes + 10);
  it('catches servers up with snapshots, safety checked after every step, stores equal at the end', async () => {
    let committed = 0;
    let snapshotsSent = 0;
    const totals = createTotals();
    for (const seed of seeds) {
      const result = await chaosRun(seed, nodes, COMPACTION, isDurableSeed(seed) ? { disk: 'durable' } : {});
      committed += result.committed;
      snapshotsSent += result.snapshotsSent;
      totals.add(result);
    }
    console.log(
      `compaction chaos, ${nodes} servers: ${seeds.length} seeds, ${committed} entries committed, ${snapshotsSent} InstallSnapshot chunks sent; ${totals.describe()}`,
    );
    expect(committed).toBeGreaterThanOrEqual(seeds.length * 6);
    // Snapshots really were sent (in chunks), in a good share of the runs. Not with 2 servers:
    // both must match an entry to commit it, so neither ever falls behind what was compacted.
    if (nodes >= 3) expect(snapshotsSent).toBeGreaterThanOrEqual(seeds.length);
    else expect(committed).toBeGreaterThanOrEqual(seeds.length * 6);
  });
});
