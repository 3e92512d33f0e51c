/**
 * The leader's commit rule, in a file of its own so that tests can swap in a broken variant and
 * show that the model and simulation checkers catch it.
 */

import { quorumIndex } from './configuration.js';
import type { RaftContext } from './raft.types.js';
import { lastIndex, termAt } from './raft-log.js';

/**
 * Figure 2, Rules for Servers, Leaders: "If there exists an N such that N > commitIndex, a majority
 * of matchIndex[i] ≥ N, and log[N].term == currentTerm: set commitIndex = N". Entries of earlier
 * terms are never committed by counting replicas (§5.4.2, Figure 8); they commit with N.
 */
export const commitIndexByQuorum = (context: RaftContext): number => {
  // The leader's own copy counts only once it is durable (§10.2.1: it may replicate before its fsync).
  const selfMatch = context.durable
    ? Math.min(context.persistedIndex, lastIndex(context.log))
    : lastIndex(context.log);
  // A recovering follower counts toward no commit (docs/design/recovery.md rule 3).
  // Under a joint configuration, a majority of C_old and of C_new (§6); a leader outside C_new does
  // not count itself.
  const candidate = quorumIndex(context.config, (voter) => {
    if (voter === context.id) return selfMatch;
    const progress = context.progress[voter];
    return progress === undefined || progress.recovering ? 0 : progress.matchIndex;
  });
  return candidate > context.commitIndex && termAt(context.log, candidate) === context.currentTerm
    ? candidate
    : context.commitIndex;
};
