import { describe, expect, it } from 'vitest';
import { chaosRun } from './chaos.js';
import { seedsFor } from './simulator.js';

describe.each([3, 5])('chaos: %i servers', (nodes) => {
  const seeds = seedsFor(Number(process.env.DISKEYVAL_CHAOS_SEEDS ?? 200), nodes);
  it('survives seeded fault schedules with safety checked after every step', async () => {
    let committed = 0;
    let elections = 0;
    for (const seed of seeds) {
      const result = await chaosRun(seed, nodes);
      committed += result.committed;
      elections += result.elections;
    }
    // The runs did real work: leaders were elected and entries committed in every run.
    expect(elections).toBeGreaterThanOrEqual(seeds.length);
    expect(committed).toBeGreaterThanOrEqual(seeds.length * 6);
  });
});

// The same schedules with log compaction every few entries and snapshots sent in small chunks, so
// that lagging and restarted servers catch up through InstallSnapshot (§7) all the time.
const COMPACTION = { compactEvery: 6, keepEntries: 2, snapshotChunkBytes: 96 };

describe.each([3, 5])('chaos with log compaction: %i servers', (nodes) => {
  const seeds = seedsFor(Number(process.env.DISKEYVAL_CHAOS_SEEDS ?? 200) / 2, nodes + 10);
  it('catches servers up with snapshots, safety checked after every step, stores equal at the end', async () => {
    let committed = 0;
    let snapshotsSent = 0;
    for (const seed of seeds) {
      const result = await chaosRun(seed, nodes, COMPACTION);
      committed += result.committed;
      snapshotsSent += result.snapshotsSent;
    }
    console.log(
      `compaction chaos, ${nodes} servers: ${seeds.length} seeds, ${committed} entries committed, ${snapshotsSent} InstallSnapshot chunks sent`,
    );
    expect(committed).toBeGreaterThanOrEqual(seeds.length * 6);
    // Snapshots really were sent (in chunks), in a good share of the runs.
    expect(snapshotsSent).toBeGreaterThanOrEqual(seeds.length);
  });
});
