/**
 * ReadIndex (dissertation §6.4): a batch of reads waits for the leader's first commit in its term,
 * records the commit index as its read index, and is released once a heartbeat round that started
 * after it was answered by a majority.
 */
import { listsQuorum, membersOf } from '../configuration.js';
import type { Outcome, RaftContext, RaftEmitted, ReadRound } from '../raft.types.js';
import { termAt } from '../raft-log.js';
import { broadcastHeartbeat } from './replication.js';
import { after, merge } from './shared.js';

/** The leader has committed an entry of its own term, so its commitIndex is current (§6.4 step 1). */
export const hasCommittedInCurrentTerm = (context: RaftContext): boolean =>
  termAt(context.log, context.commitIndex) === context.currentTerm;

/**
 * ReadIndex (dissertation §6.4): record commitIndex as the read index, confirm leadership with one
 * heartbeat round shared by every read in the batch, release once a majority answered.
 */
export const startReadRound = (context: RaftContext, ids: number[]): Outcome => {
  if (!hasCommittedInCurrentTerm(context)) {
    return { patch: { pendingReadIds: [...context.pendingReadIds, ...ids] } };
  }
  const seq = context.readSeq + 1;
  const round: ReadRound = { seq, readIndex: context.commitIndex, ids, acks: [context.id] };
  const withRound = after(context, { patch: { readSeq: seq, pendingReadIds: [] } });
  return merge(
    { patch: { readSeq: seq, pendingReadIds: [] } },
    releaseConfirmedReads(withRound, [...context.readRounds, round]),
    { send: membersOf(context.config).length > 1 ? broadcastHeartbeat(withRound).send : [] },
  );
};

export const rejectReads = (context: RaftContext, ids: number[]): Outcome => ({
  emitted: [{ type: 'readsRejected', ids, leaderId: context.leaderId }],
});

/** Releases every read round, oldest first, up to the newest one a majority has confirmed. */
export const releaseConfirmedReads = (context: RaftContext, rounds: ReadRound[]): Outcome => {
  let confirmed = -1;
  rounds.forEach((round, position) => {
    // The acks include the leader's own; a majority of both sets while joint (§6).
    if (listsQuorum(context.config, round.acks)) confirmed = position;
  });
  if (confirmed < 0) return { patch: { readRounds: rounds } };
  const released = rounds.slice(0, confirmed + 1);
  return {
    patch: { readRounds: rounds.slice(confirmed + 1) },
    emitted: released.map(
      (round): RaftEmitted => ({ type: 'readsReady', ids: round.ids, readIndex: round.readIndex }),
    ),
  };
};
