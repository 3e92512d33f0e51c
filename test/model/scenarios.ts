/**
 * Scripted scenarios for the model checker (harness.ts `runScript`), shared by the rule tests
 * (where they must pass) and the broken-variant tests (where they must fail).
 */
import type { Cmd, MessageMatch, ModelConfig } from './harness.js';

const deliver = (match: MessageMatch): Cmd => ({ kind: 'deliverWhere', match });

/** `from` wins a pre-vote and an election with the single vote of `voter` (3 servers). */
export const electWithOneVote = (from: string, voter: string): Cmd[] => [
  deliver({ from, to: voter, type: 'RequestVote' }),
  deliver({ from: voter, to: from, type: 'RequestVoteResponse' }),
  deliver({ from, to: voter, type: 'RequestVote' }),
  deliver({ from: voter, to: from, type: 'RequestVoteResponse' }),
];

/** Figure 8 needs entries to travel one at a time, so a match can stop on an old-term entry. */
export const FIGURE_8_CONFIG: ModelConfig = { servers: 3, maxInflight: 1, maxEntriesPerAppend: 1, seed: 1 };

/**
 * The situation of Figure 8 (Raft paper §5.4.2), on 3 servers a, b, c:
 *
 * 1. a leads term 1, appends a client entry, and none of its AppendEntries arrive.
 * 2. CheckQuorum makes a step down; a wins term 2 with b's vote and appends its term-2 no-op.
 *    Log of a: [n1, v1, n2]; b and c are empty.
 * 3. a brings b up to date one entry at a time. After b acknowledges index 2, the entries n1 and
 *    v1 (term 1) are on a majority (a, b), but they must NOT commit: they are of an earlier term.
 *    They commit only with n2 (index 3), once b acknowledges it.
 *
 * A leader that commits by counting replicas of any term commits index 1 at step 3.
 */
export const figure8Script: Cmd[] = [
  { kind: 'timeout', server: 0 },
  ...electWithOneVote('a', 'b'),
  { kind: 'dropWhere', match: { from: 'a' } },
  { kind: 'propose', server: 0, count: 1 },
  { kind: 'checkQuorum', server: 0 },
  { kind: 'checkQuorum', server: 0 },
  { kind: 'timeout', server: 0 },
  ...electWithOneVote('a', 'b'),
  // prev = 2 (term 1) is rejected by the empty log of b; the hint sends a back to index 1.
  deliver({ from: 'a', to: 'b', type: 'AppendEntries' }),
  deliver({ from: 'b', to: 'a', type: 'AppendEntriesResponse' }),
  // n1 reaches b: a majority holds index 1 (term 1).
  deliver({ from: 'a', to: 'b', type: 'AppendEntries' }),
  deliver({ from: 'b', to: 'a', type: 'AppendEntriesResponse' }),
  // v1 reaches b: a majority holds index 2 (term 1).
  deliver({ from: 'a', to: 'b', type: 'AppendEntries' }),
  deliver({ from: 'b', to: 'a', type: 'AppendEntriesResponse' }),
  // n2 reaches b: index 3 is of term 2 and on a majority: 1..3 commit together.
  deliver({ from: 'a', to: 'b', type: 'AppendEntries' }),
  deliver({ from: 'b', to: 'a', type: 'AppendEntriesResponse' }),
];

/** Indexes of the script after which a's matchIndex for b is 1, 2 and 3. */
export const FIGURE_8_MATCH_STEPS = { one: figure8Script.length - 5, two: figure8Script.length - 3 };
