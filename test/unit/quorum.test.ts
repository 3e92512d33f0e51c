/**
 * The majority arithmetic (src/machines/quorum.ts) pinned for every cluster size a user may run,
 * even ones included: a majority of n voters is floor(n / 2) + 1, which for even n is one more than
 * half (Math.ceil(n / 2) would let two disjoint halves of a 2- or 4-server cluster each elect a
 * leader and commit; broken-quorum.test.ts shows the suites catch that variant).
 */
import { describe, expect, it } from 'vitest';
import { isMajority, majorityOf, quorumMatchIndex } from '../../src/machines/quorum.js';

const EXPECTED: Record<number, number> = { 1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 4, 8: 5, 9: 5 };

describe('majorityOf', () => {
  it.each(Object.entries(EXPECTED).map(([n, majority]) => [Number(n), majority]))(
    'of %i voters is %i',
    (voters, majority) => {
      expect(majorityOf(voters)).toBe(majority);
      // Any two majorities intersect (Raft §5.2, §5.4): twice a majority exceeds the voters.
      expect(2 * majorityOf(voters)).toBeGreaterThan(voters);
      // And it is the smallest such count: one fewer does not exclude a disjoint second one.
      expect(2 * (majorityOf(voters) - 1)).toBeLessThanOrEqual(voters);
    },
  );
});

describe('isMajority', () => {
  it('is true from the majority on, false below it, for n = 1..9', () => {
    for (let voters = 1; voters <= 9; voters += 1) {
      for (let count = 0; count <= voters; count += 1)
        expect(isMajority(count, voters), `${count} of ${voters}`).toBe(count >= EXPECTED[voters]!);
    }
  });

  it('half of an even cluster is not a majority', () => {
    expect(isMajority(1, 2)).toBe(false);
    expect(isMajority(2, 4)).toBe(false);
    expect(isMajority(3, 6)).toBe(false);
  });
});

describe('quorumMatchIndex', () => {
  it('is the largest index a majority has matched, for even and odd sizes', () => {
    expect(quorumMatchIndex([7])).toBe(7);
    expect(quorumMatchIndex([9, 4])).toBe(4);
    expect(quorumMatchIndex([9, 4, 1])).toBe(4);
    expect(quorumMatchIndex([9, 8, 2, 1])).toBe(2);
    expect(quorumMatchIndex([1, 9, 2, 8])).toBe(2);
    expect(quorumMatchIndex([5, 5, 5, 1, 1])).toBe(5);
    expect(quorumMatchIndex([6, 5, 4, 3, 2, 1])).toBe(3);
  });

  it('does not reorder its argument', () => {
    const matchIndexes = [1, 9, 2, 8];
    quorumMatchIndex(matchIndexes);
    expect(matchIndexes).toEqual([1, 9, 2, 8]);
  });
});
