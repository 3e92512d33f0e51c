/**
 * Rules for Followers (Figure 2): the election timer, counted in ticks (§5.2; dissertation §3.4),
 * and the AppendEntries receiver (§5.3), with etcd-io/raft's heartbeats that carry the commit index.
 */
import { assert } from '../assert.js';
import type { AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse } from '../messages.js';
import type { Outcome, RaftContext, RaftEmitted } from '../raft.types.js';
import { conflictHint, lastIndex, matchesAt, mergeEntries, slice } from '../raft-log.js';
import { configsAfterWrite } from './membership.js';
import { commitOutcome, drawElectionTimeout, markRecovering } from './shared.js';

/**
 * The follower's election timer (§5.2) counts the node's ticks (ticks.ts): an election, or a
 * recovering server's retry, is due on the tick that reaches the timeout drawn at the last reset.
 */
export const isElectionDue = (context: RaftContext): boolean =>
  context.electionElapsedTicks + 1 >= context.randomizedElectionTimeoutTicks;

export const countTick = (context: RaftContext): Outcome => ({
  patch: { electionElapsedTicks: context.electionElapsedTicks + 1 },
});

/**
 * The election timer of a follower that may not campaign (membership.ts, mayCampaign): it starts no
 * election, but the leader it followed is gone as far as it knows, so it stops refusing pre-votes
 * for that leader's sake (otherwise a removed server added again, or one outside its own
 * configuration, would refuse every candidate forever); the count starts over.
 */
export const forgetLeader = (context: RaftContext): Outcome => ({
  patch: { leaderId: null, ...drawElectionTimeout(context) },
});

/** Hearing from the leader, granting a vote or becoming follower starts the count over. */
export const resetElectionTimer = (context: RaftContext): Outcome =>
  context.electionElapsedTicks === 0 ? {} : { patch: { electionElapsedTicks: 0 } };

export const rejectAppend = (
  context: RaftContext,
  request: AppendEntries,
  term: number,
): AppendEntriesResponse => {
  const hint = conflictHint(context.log, request.prevLogIndex);
  return markRecovering(context, {
    type: 'AppendEntriesResponse',
    from: context.id,
    to: request.from,
    term,
    success: false,
    matchIndex: 0,
    rejectedIndex: request.prevLogIndex,
    conflictIndex: hint.conflictIndex,
    conflictTerm: hint.conflictTerm,
    incarnation: context.incarnation,
  });
};

const acceptAppend = (
  context: RaftContext,
  request: AppendEntries,
  matchIndex: number,
): AppendEntriesResponse =>
  markRecovering(context, {
    type: 'AppendEntriesResponse',
    from: context.id,
    to: request.from,
    term: context.currentTerm,
    success: true,
    matchIndex,
    rejectedIndex: 0,
    conflictIndex: 0,
    conflictTerm: 0,
    incarnation: context.incarnation,
  });

/**
 * AppendEntries receiver implementation (Figure 2): reply false if the log has no entry at
 * prevLogIndex with prevLogTerm (2); delete a conflicting entry and all that follow (3); append
 * new entries (4); if leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of
 * last new entry) (5). The term check (1) happened when the message was routed.
 */
export const appendFromLeader = (context: RaftContext, original: AppendEntries): Outcome => {
  assert(original.term === context.currentTerm, 'appendFromLeader at another term');
  const leaderPatch = { leaderId: original.from };
  const request = trimToSnapshotPoint(context, original);
  if (request === null) {
    const lastCovered = original.prevLogIndex + original.entries.length;
    return { patch: leaderPatch, send: [acceptAppend(context, original, lastCovered)] };
  }
  if (!matchesAt(context.log, request.prevLogIndex, request.prevLogTerm)) {
    assert(request.prevLogIndex > context.commitIndex, 'a leader disagrees with a committed entry');
    return { patch: leaderPatch, send: [rejectAppend(context, request, context.currentTerm)] };
  }
  const { firstWrittenIndex, lastNewIndex } = mergeEntries(
    context.log,
    request.prevLogIndex,
    request.entries,
  );
  assert(lastNewIndex >= context.commitIndex || firstWrittenIndex === -1, 'truncated a committed entry');
  const emitted: RaftEmitted[] = [];
  let configs: Outcome = {};
  if (firstWrittenIndex !== -1) {
    assert(firstWrittenIndex > context.commitIndex, 'overwrote a committed entry');
    const written = slice(context.log, firstWrittenIndex, lastIndex(context.log));
    emitted.push({ type: 'persist', hardState: null, fromIndex: firstWrittenIndex, entries: written });
    // The newest configuration in the log is in force; a truncated one gives way (membership.ts).
    configs = configsAfterWrite(context, firstWrittenIndex, written);
  }
  const commit = commitOutcome(context, Math.min(request.leaderCommit, lastNewIndex));
  // What was just written here is not durable yet, whatever was before at those indexes.
  const persistedIndex =
    firstWrittenIndex === -1
      ? context.persistedIndex
      : Math.min(context.persistedIndex, firstWrittenIndex - 1);
  return {
    patch: { ...leaderPatch, persistedIndex, ...configs.patch, ...commit.patch },
    send: [acceptAppend(context, request, lastNewIndex)],
    emitted: [...emitted, ...(configs.emitted ?? []), ...(commit.emitted ?? [])],
  };
};

/**
 * An AppendEntries that starts below our snapshot point: the entries up to that point are
 * committed (a snapshot holds only committed entries), so the leader's copies of them are ours
 * (Log Matching, Leader Completeness). Drop them and check consistency at the snapshot point.
 */
const trimToSnapshotPoint = (context: RaftContext, request: AppendEntries): AppendEntries | null => {
  const { offset, offsetTerm } = context.log;
  if (request.prevLogIndex >= offset) return request;
  const skipped = offset - request.prevLogIndex;
  // Everything it carries is already in our snapshot.
  if (skipped > request.entries.length) return null;
  assert(
    skipped === 0 || request.entries[skipped - 1]!.term === offsetTerm,
    `the leader's entry at the snapshot point ${offset} has another term`,
  );
  return {
    ...request,
    prevLogIndex: offset,
    prevLogTerm: offsetTerm,
    entries: request.entries.slice(skipped),
  };
};

/** A heartbeat: the leader is alive; commit what the leader says we match (etcd's MsgHeartbeat). */
export const heartbeatFromLeader = (context: RaftContext, heartbeat: Heartbeat): Outcome => {
  const commit = commitOutcome(context, Math.min(heartbeat.commit, lastIndex(context.log)));
  const response: HeartbeatResponse = markRecovering(context, {
    type: 'HeartbeatResponse',
    from: context.id,
    to: heartbeat.from,
    term: context.currentTerm,
    seq: heartbeat.seq,
    incarnation: context.incarnation,
  });
  return {
    patch: { leaderId: heartbeat.from, ...commit.patch },
    send: [response],
    emitted: commit.emitted ?? [],
  };
};
