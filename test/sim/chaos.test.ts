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
