/**
 * The checkers must be able to fail. Each test here swaps in a deliberately broken rule and shows
 * that the simulation's checks catch it within a bounded number of seeds.
 *
 * Broken commit rule (Raft paper §5.4.2, Figure 8): the leader commits any index a majority has
 * matched, even one holding an entry from an earlier term. A later leader can then overwrite that
 * "committed" entry, which the state machine safety check sees.
 */
import { describe, expect, it, vi } from 'vitest';
import { quorumMatchIndex } from '../../src/machines/quorum.js';
import type { RaftContext } from '../../src/machines/raft.types.js';
import { lastIndex, termAt } from '../../src/machines/raft-log.js';
import { figure8Run } from './figure8.js';
import { UNRELIABLE } from './simulator.js';

vi.mock('../../src/machines/commit.js', () => ({
  commitIndexByQuorum: (context: RaftContext): number => {
    const matchIndexes = context.config.voters.map((voter) =>
      voter === context.id ? lastIndex(context.log) : (context.progress[voter]?.matchIndex ?? 0),
    );
    const candidate = quorumMatchIndex(matchIndexes);
    // The bug: no check that log[candidate].term == currentTerm.
    return candidate > context.commitIndex && termAt(context.log, candidate) !== undefined
      ? candidate
      : context.commitIndex;
  },
}));

describe('a broken commit rule', () => {
  it('is caught by the simulation safety checks', async () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= 50 && failures.length === 0; seed += 1) {
      try {
        // One entry per AppendEntries lets a follower match an old-term entry before the new no-op.
        await figure8Run({
          seed,
          iterations: 1000,
          maxEntriesPerAppend: 1,
          network: UNRELIABLE,
          partitionInsteadOfCrash: seed % 2 === 0,
        });
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
    expect(failures.length).toBe(1);
    expect(failures[0]).toMatch(/state machine safety|leader completeness|log matching|invariant violated/);
  });
});
