/**
 * Rules for Candidates (Figure 2, §5.2): the pre-vote poll (dissertation §9.6), the election, and
 * counting the answers (after the crash vectors of docs/design/recovery.md rule 1).
 */

import { hasQuorum } from '../configuration.js';
import type { RequestVote, RequestVoteResponse } from '../messages.js';
import { isMajority } from '../quorum.js';
import type { Outcome, RaftContext } from '../raft.types.js';
import { lastIndex, lastTerm } from '../raft-log.js';
import { raiseCrashVector } from './recovery.js';
import { after, drawElectionTimeout, merge, peersOf, persistHardState } from './shared.js';

const requestVotes = (context: RaftContext, term: number, preVote: boolean): RequestVote[] =>
  peersOf(context).map((peer) => ({
    type: 'RequestVote',
    from: context.id,
    to: peer,
    term,
    lastLogIndex: lastIndex(context.log),
    lastLogTerm: lastTerm(context.log),
    preVote,
  }));

/** PreVote: ask whether we could win at currentTerm + 1 without changing any state (§9.6). */
export const startPreVote = (context: RaftContext): Outcome => ({
  patch: {
    leaderId: null,
    votes: { [context.id]: true },
    voteIncarnations: { [context.id]: context.incarnation },
    ...drawElectionTimeout(context),
  },
  send: requestVotes(context, context.currentTerm + 1, true),
});

/** "On conversion to candidate: increment currentTerm, vote for self, reset election timer, send RequestVote RPCs." */
export const startElection = (context: RaftContext): Outcome => {
  const term = context.currentTerm + 1;
  return {
    patch: {
      currentTerm: term,
      votedFor: context.id,
      leaderId: null,
      votes: { [context.id]: true },
      voteIncarnations: { [context.id]: context.incarnation },
      ...drawElectionTimeout(context),
    },
    send: requestVotes(context, term, false),
    emitted: [persistHardState(term, context.id)],
  };
};

export const isAnswerToOurPreVote = (context: RaftContext, response: RequestVoteResponse): boolean =>
  response.preVote && (!response.voteGranted || response.term === context.currentTerm + 1);

export const isAnswerToOurElection = (context: RaftContext, response: RequestVoteResponse): boolean =>
  !response.preVote && response.term === context.currentTerm;

/**
 * Records a vote answer, after its crash vector (rule 1 of docs/design/recovery.md): votes from
 * voters known to have restarted since they voted are dropped, and so is this answer when its
 * voter has restarted since it was sent (a delayed or duplicated pre-crash vote).
 */
export const recordVote = (context: RaftContext, response: RequestVoteResponse): Outcome => {
  const raised = raiseCrashVector(context, response.crashVector);
  const seen = after(context, raised);
  const incarnation = response.incarnation ?? 0;
  if (incarnation < (seen.crashVector[response.from] ?? 0)) {
    context.recoveryCounters.staleVotesDropped += 1;
    return raised;
  }
  return merge(raised, {
    patch: {
      votes: { ...seen.votes, [response.from]: response.voteGranted },
      voteIncarnations: { ...seen.voteIncarnations, [response.from]: incarnation },
    },
  });
};

/** "If votes received from majority of servers: become leader" (of both sets while joint, §6). */
export const hasVoteQuorum = (context: RaftContext): boolean =>
  hasQuorum(context.config, (voter) => context.votes[voter] === true);

/** A majority refused (of either set while joint): this election cannot be won. */
export const hasRejectionQuorum = (context: RaftContext): boolean => {
  const refused = (set: readonly string[]): boolean =>
    set.length > 0 && isMajority(set.filter((voter) => context.votes[voter] === false).length, set.length);
  return refused(context.config.voters) || refused(context.config.outgoing);
};
