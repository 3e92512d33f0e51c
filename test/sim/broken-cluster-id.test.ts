/**
 * The cluster-id check must be able to fail (test/sim/cluster-id-uncommitted.test.ts). The broken
 * variant is the rule diskeyval had before: a restarted server takes its cluster id from its log's
 * entry at index 1, committed or not. Here every log (the memory log, and the simulated durable
 * disk built on it) reports that entry's id in the hard state it restarts from, which is what the
 * old rule amounted to. The first leader of the scenario then claims the id it minted and never
 * committed, and the simulator's check after every step catches it.
 */
import { describe, expect, it, vi } from 'vitest';
import { clusterIdOfEntry } from '../../src/machines/cluster-id.js';
import { seedsFor } from './simulator.js';
import { restartsWithItsState } from './uncommitted-cluster-id.js';

vi.mock('../../src/actors/memory-log.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/actors/memory-log.js')>();
  const createMemoryLog: typeof original.createMemoryLog = (initial, memoryOptions) => {
    const log = original.createMemoryLog(initial, memoryOptions);
    const persisted = () => {
      const state = log.persisted();
      // The bug: the id of entry 1, whether or not it was ever committed.
      const first = state.snapshot === null ? state.entries[0] : undefined;
      const clusterId = first ? clusterIdOfEntry(1, first) : null;
      return clusterId === null ? state : { ...state, hardState: { ...state.hardState, clusterId } };
    };
    return { ...log, persisted };
  };
  return { ...original, createMemoryLog };
});

const caught = async (disk: 'memory' | 'durable', seed: number): Promise<string | null> => {
  try {
    await restartsWithItsState(disk, seed);
    return null;
  } catch (error) {
    return (error as Error).message;
  }
};

describe('a restart that takes its cluster id from an uncommitted entry 1 (broken variant)', () => {
  for (const disk of ['memory', 'durable'] as const) {
    it(`is caught by the simulator's cluster-id check on every seed (${disk} log)`, async () => {
      for (const seed of seedsFor(3, disk === 'memory' ? 1105 : 1106)) {
        const failure = await caught(disk, seed);
        expect(failure, `seed ${seed}`).toMatch(/cluster id: s\d knows [0-9a-f]{32}, others [0-9a-f]{32}/);
      }
    });
  }
});
