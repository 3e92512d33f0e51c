/**
 * The catch-up runs must be able to fail: with the rule before incarnations (a leader ignores a
 * rejection at or below the match it recorded, whoever sends it, so a follower whose log got
 * shorter at a restart is never sent what it lost), the restart runs of catchup.ts do not catch
 * the follower up and fail within a bounded number of seeds.
 */
import { describe, expect, it, vi } from 'vitest';
import { restartRun } from './catchup.js';

const broken = { ignoreIncarnations: true };

vi.mock('../../src/machines/progress.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/progress.js')>();
  return {
    ...original,
    // The bug: every answer counts as the incarnation the leader already knew (and, as before
    // recovery existed, every answer counts: none is marked recovering in these runs' old rule).
    admitIncarnation: (...args: Parameters<typeof original.admitIncarnation>) => {
      if (!broken.ignoreIncarnations) return original.admitIncarnation(...args);
      args[0].recovering = false;
      return 'current';
    },
  };
});

describe('the catch-up runs with incarnations ignored (the old rule)', () => {
  it.each(['amnesia', 'tail'] as const)('fail for a follower restarted with %s', async (loss) => {
    broken.ignoreIncarnations = true;
    const failures: string[] = [];
    for (let seed = 1; seed <= 10 && failures.length === 0; seed += 1) {
      try {
        await restartRun({ seed, loss });
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatch(/caught up with .* did not happen within/);
  });

  it('pass with the rule intact (the mock passes through)', async () => {
    broken.ignoreIncarnations = false;
    await restartRun({ seed: 1, loss: 'amnesia' });
    await restartRun({ seed: 1, loss: 'tail' });
  });
});
