/**
 * A majority computed as Math.ceil(n / 2): the same number as floor(n / 2) + 1 for odd n, one too
 * few for even n (1 of 2, 2 of 4). Swapped into src/machines/quorum.ts here (vi.mock, for this
 * file only), it is invisible on 3 and 5 servers and caught on 2 and 4: by the model checker
 * (the spec keeps the real majority, harness.ts) and by the simulation's safety checks (two
 * leaders in one term, or a commit that a later leader lacks).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { chaosRun } from '../sim/chaos.js';
import { runModel } from './harness.js';

const broken = vi.hoisted(() => ({ quorum: false }));

vi.mock('../../src/machines/quorum.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/quorum.js')>();
  const halfRoundedUp = (voterCount: number): number => Math.ceil(voterCount / 2);
  const majorityOf = (voterCount: number): number =>
    broken.quorum ? halfRoundedUp(voterCount) : original.majorityOf(voterCount);
  return {
    majorityOf,
    isMajority: (count: number, voterCount: number): boolean => count >= majorityOf(voterCount),
    quorumMatchIndex: (matchIndexes: readonly number[]): number => {
      const sorted = [...matchIndexes].sort((a, b) => b - a);
      return sorted[majorityOf(sorted.length) - 1] ?? 0;
    },
  };
});

afterEach(() => {
  broken.quorum = false;
});

const SEED = 7;
const BOUND = 2000;

describe('a majority computed as Math.ceil(n / 2)', () => {
  it('is caught by the model checker on 2 and 4 servers', () => {
    broken.quorum = true;
    for (const servers of [2, 4]) {
      const report = runModel({ servers, numRuns: BOUND, seed: SEED, replayable: false });
      console.log(
        `${servers} servers: caught after ${report.numRuns} run(s): ${report.error?.split('\n')[0]}`,
      );
      expect(report.failed).toBe(true);
      expect(report.error).toBeTruthy();
    }
  });

  it('is the real rule on 3 and 5 servers except in recovery (so odd-only suites without it cannot catch it); the real rule passes on 2 and 4', () => {
    broken.quorum = true;
    // On odd clusters only recovery's "majority of the other members" (an even count) differs.
    for (const servers of [3, 5]) {
      const report = runModel({ servers, numRuns: 100, seed: SEED, replayable: false });
      console.log(`${servers} servers: ${report.failed ? report.error?.split('\n')[0] : 'passes'}`);
      if (report.failed) expect(report.message).toMatch(/Recovery/);
    }
    broken.quorum = false;
    for (const servers of [2, 4]) expect(runModel({ servers, numRuns: 100, seed: SEED }).failed).toBe(false);
  });

  it('is caught by the simulation safety checks on 2 and 4 servers within 60 seeds', async () => {
    broken.quorum = true;
    for (const nodes of [2, 4]) {
      let caught: string | null = null;
      let seed = 1;
      for (; seed <= 60 && caught === null; seed += 1) {
        try {
          await chaosRun(seed, nodes);
        } catch (error) {
          caught = (error as Error).message;
        }
      }
      console.log(`${nodes} servers: ${caught?.split('\n')[0]}`);
      expect(caught).toMatch(/election safety|state machine safety|leader completeness|log matching/);
      expect(caught).toMatch(/replay: DISKEYVAL_SIM_SEED=\d+ npx vitest run/);
      // The real rule passes the same seeds.
      broken.quorum = false;
      for (let again = 1; again < seed; again += 1) await chaosRun(again, nodes);
      broken.quorum = true;
    }
  });
});
