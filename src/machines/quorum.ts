/**
 * Majority arithmetic (Raft paper §5.2 elections, §5.3 commitment). A configuration is the set of
 * voters including the local server.
 */

export const majorityOf = (voterCount: number): number => Math.floor(voterCount / 2) + 1;

/** True when `count` voters form a majority of `voterCount`. */
export const isMajority = (count: number, voterCount: number): boolean => count >= majorityOf(voterCount);

/**
 * The largest index that a majority of voters has matched: sort match indexes descending and take
 * the majority-th one. Figure 2: "there exists an N such that a majority of matchIndex[i] ≥ N".
 */
export const quorumMatchIndex = (matchIndexes: readonly number[]): number => {
  const sorted = [...matchIndexes].sort((a, b) => b - a);
  return sorted[majorityOf(sorted.length) - 1] ?? 0;
};
