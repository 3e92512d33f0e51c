/**
 * Recovery of a server that started without its earlier state (docs/design/recovery.md; Viewstamped
 * Replication Revisited §4.3; crash vectors after Michael, Ports et al., DISC 2017): rule 1 (crash
 * vectors), rule 2 (a round of RecoveryRequests, then copying the log of the leader of the highest
 * term), bootstrap of a new cluster, and the forced recovery of the operator.
 */

import { hasQuorum, hasRecoveryQuorum, isMember, membersOf } from '../configuration.js';
import {
  type AppendEntries,
  type CrashVector,
  type InstallSnapshot,
  type NodeId,
  RECOVERING_VOTE,
  type RecoveryRequest,
  type RecoveryResponse,
} from '../messages.js';
import { createProgress } from '../progress.js';
import type { Outcome, RaftContext, RecoveryTarget } from '../raft.types.js';
import { lastIndex } from '../raft-log.js';
import { appendFromLeader } from './follower.js';
import { appendsFor } from './replication.js';
import { after, drawElectionTimeout, merge, peersOf, persistHardState } from './shared.js';
import { installSnapshot } from './snapshots.js';

/**
 * Rule 1, crash vectors first: raise ours with what a message carries. A vote recorded from an
 * incarnation the vector now knows to be older is dropped; a leader resets the progress of a
 * follower known to have restarted (its matches were an earlier incarnation's) and counts it again
 * only once it answers from the new one.
 */
export const raiseCrashVector = (context: RaftContext, vector: CrashVector | undefined): Outcome => {
  if (vector === undefined) return {};
  let crashVector: CrashVector | null = null;
  let votes: Record<NodeId, boolean> | null = null;
  for (const [member, incarnation] of Object.entries(vector)) {
    if (!isMember(context.config, member) || incarnation <= (context.crashVector[member] ?? 0)) continue;
    crashVector ??= { ...context.crashVector };
    crashVector[member] = incarnation;
    if (member in context.votes && (context.voteIncarnations[member] ?? 0) < incarnation) {
      votes ??= { ...context.votes };
      delete votes[member];
      context.recoveryCounters.staleVotesDropped += 1;
    }
    const progress = context.progress[member];
    if (progress !== undefined && progress.incarnation < incarnation) {
      Object.assign(progress, createProgress(lastIndex(context.log), incarnation));
      context.incarnationCounters.resets += 1;
    }
  }
  if (crashVector === null) return {};
  return { patch: votes === null ? { crashVector } : { crashVector, votes } };
};

/** Holds no state at all: term 0, an empty log (what bootstrap asks of a majority). */
const isBlank = (context: RaftContext): boolean => context.currentTerm === 0 && lastIndex(context.log) === 0;

/**
 * Every server answers a RecoveryRequest, whatever its role or term (the request is outside the
 * term rules): its term, whether it leads (and its last index then), whether it recovers itself, and
 * its crash vector, after raising it with the asker's new incarnation. A request from an incarnation
 * older than one already heard of was sent before a restart and gets no answer.
 */
export const answerRecovery = (context: RaftContext, request: RecoveryRequest): Outcome => {
  if (request.incarnation < (context.crashVector[request.from] ?? 0)) return {};
  const raised = raiseCrashVector(context, { [request.from]: request.incarnation });
  const seen = after(context, raised);
  const leads = context.leaderId === context.id && context.progress[request.from] !== undefined;
  const response: RecoveryResponse = {
    type: 'RecoveryResponse',
    from: context.id,
    to: request.from,
    term: context.currentTerm,
    incarnation: request.incarnation,
    round: request.round,
    recovering: context.recovering,
    blank: isBlank(context),
    holdsLog: lastIndex(context.log) > 0,
    leaderLastIndex: leads ? lastIndex(context.log) : -1,
    crashVector: seen.crashVector,
  };
  // A leader that just reset the asker's progress probes it at once, so recovery need not wait.
  const probe = leads ? appendsFor(seen, request.from, true) : [];
  return merge(raised, { send: [response, ...probe] });
};

/** A new round: a new nonce, no answers yet, RecoveryRequests to every member, the retry timer. */
export const startRecoveryRound = (context: RaftContext): Outcome => {
  const round = context.recovery.round + 1;
  context.recoveryCounters.rounds += 1;
  if (context.recovery.target !== null) context.recoveryCounters.restartedByTerm += 1;
  const requests: RecoveryRequest[] = peersOf(context).map((peer) => ({
    type: 'RecoveryRequest',
    from: context.id,
    to: peer,
    term: context.currentTerm,
    incarnation: context.incarnation,
    round,
  }));
  const timing = drawElectionTimeout(context);
  // The mark goes to the disk first, so that a crash during recovery leads to recovery again.
  const mark: Outcome =
    context.votedFor === RECOVERING_VOTE
      ? {}
      : {
          patch: { votedFor: RECOVERING_VOTE },
          emitted: [persistHardState(context.currentTerm, RECOVERING_VOTE)],
        };
  const started = merge(mark, {
    patch: {
      recovery: { round, answers: {}, target: null, heardTarget: false, heardLog: context.recovery.heardLog },
      ...timing,
    },
    send: requests,
  });
  // A single-server cluster has no one to ask: it decides at once.
  if (membersOf(context.config).length > 1) return started;
  const asked = after(context, started);
  return canBootstrap(asked) ? merge(started, recovered(asked, 'bootstrapped')) : started;
};

/** Ticks a round runs before a leader's message may start the next one (`promptRecovery`). */
export const PROMPT_AFTER_TICKS = 2;

/**
 * A leader's message (AppendEntries, heartbeat, snapshot) reached a recovering server whose round
 * follows no leader yet: its requests went unanswered (a member answers a server being added only
 * once a configuration lists it, as a learner, and the leader's message may outrun that) or are
 * lost. A new round starts now rather than at the retry timer, so a server being added recovers
 * within a few round trips of the leader reaching it. Rounds still start at most once every
 * PROMPT_AFTER_TICKS ticks (the round's start resets the count), so a leader's messages never
 * flood the members with requests; like the retry timer, this is timing only: a round may start at
 * any moment without harm.
 */
export const promptRecovery = (context: RaftContext): Outcome =>
  context.recovering && context.recovery.target === null && context.electionElapsedTicks >= PROMPT_AFTER_TICKS
    ? startRecoveryRound(context)
    : {};

/**
 * Entering the recovering state: at the start, and again on every new term. A round that already
 * follows a leader starts over (that leader may be gone, and its term is over); a round still
 * collecting answers keeps them (the highest term and its leader are judged against the new term).
 */
export const enterRecovering = (context: RaftContext): Outcome => {
  if (context.recovery.round > 0) context.recoveryCounters.termChanges += 1;
  return context.recovery.round === 0 || context.recovery.target !== null
    ? startRecoveryRound(context)
    : { patch: { electionElapsedTicks: 0 } };
};

/**
 * The retry timer of a recovering server fired: a round that is copying from a leader that still
 * sends goes on; any other round starts over with a new nonce (lost answers, a leader that died).
 */
export const retryRecovery = (context: RaftContext): Outcome => {
  if (canBootstrap(context)) return recovered(context, 'bootstrapped');
  if (context.recovery.target !== null && context.recovery.heardTarget) {
    return { patch: { recovery: { ...context.recovery, heardTarget: false }, electionElapsedTicks: 0 } };
  }
  return startRecoveryRound(context);
};

/**
 * A server that knows a cluster id was met (the transport's handshake): a cluster exists, so this
 * recovery never bootstraps another, as if a member whose log is not empty had answered. A node being
 * added whose `peers` are mostly new nodes would otherwise start a cluster of its own.
 */
export const noteClusterSeen = (context: RaftContext): Outcome =>
  context.recovering && !context.recovery.heardLog
    ? { patch: { recovery: { ...context.recovery, heardLog: true } } }
    : {};

/** Recovery is over: from now on the server's answers count and it may vote. */
const recovered = (context: RaftContext, counter: 'recovered' | 'bootstrapped' | 'forced'): Outcome => {
  context.recoveryCounters[counter] += 1;
  const done: Outcome = {
    patch: { recovering: false, recovery: { ...context.recovery, target: null, heardTarget: false } },
  };
  // The mark gives way: a recovered server has cast its vote of the term it adopted (itself: it
  // votes in no term up to it); a bootstrapped one is a new member at term 0, with no vote at all.
  const votedFor = counter === 'bootstrapped' ? null : context.id;
  return merge(done, { patch: { votedFor }, emitted: [persistHardState(context.currentTerm, votedFor)] });
};

/**
 * Rule 2, step 1: with answers of the current nonce from a majority of the other members that are
 * not recovering, one from the leader of the highest term T among them, adopt T and treat the vote
 * of T as cast (votedFor = self: it votes in no term up to T), and copy that leader's log up to the
 * last index it reported. Bootstrap instead when a majority of all members, this one included,
 * holds no state and no answer has any (unless `join`); `forceRecovery` completes from whatever
 * non-recovering members with state answered.
 */
export const recordRecoveryAnswer = (context: RaftContext, response: RecoveryResponse): Outcome => {
  const crashed = raiseCrashVector(context, response.crashVector);
  const ours = context.recovering && response.incarnation === context.incarnation;
  // Sticky across rounds: a member whose log is not empty answered, so the cluster exists.
  const recovery =
    ours && response.holdsLog && !context.recovery.heardLog
      ? { ...context.recovery, heardLog: true }
      : context.recovery;
  const raised = recovery === context.recovery ? crashed : merge(crashed, { patch: { recovery } });
  const current = ours && recovery.target === null && response.round === recovery.round;
  if (!current) return raised;
  const answers = { ...recovery.answers, [response.from]: response };
  const seen = after(context, raised);
  const withAnswer = after(seen, { patch: { recovery: { ...recovery, answers } } });
  return merge(raised, { patch: { recovery: withAnswer.recovery } }, decideRecovery(withAnswer));
};

/**
 * Bootstrap, judged when a round ends (its retry timer), so that every reachable member had a whole
 * round to answer: this server and the answers of a majority hold no state at all, and no answer
 * holds any (a member that does would have answered within the round). Never with `join`.
 */
const canBootstrap = (context: RaftContext): boolean => {
  if (context.join || !context.recovering || context.recovery.target !== null || !isBlank(context))
    return false;
  // A member whose log is not empty answered in an earlier round: recover into that cluster.
  if (context.recovery.heardLog) return false;
  const answers = Object.values(context.recovery.answers);
  if (!answers.every((answer) => answer.blank)) return false;
  return hasQuorum(context.config, (id) => id === context.id || context.recovery.answers[id] !== undefined);
};

const decideRecovery = (context: RaftContext): Outcome => {
  const answers = Object.values(context.recovery.answers);
  const ready = answers.filter((answer) => !answer.recovering);
  const term = Math.max(context.currentTerm, ...ready.map((answer) => answer.term));
  const leader = ready.find((answer) => answer.leaderLastIndex >= 0 && answer.term === term);
  const answered = (id: NodeId): boolean => ready.some((answer) => answer.from === id);
  if (leader !== undefined && hasRecoveryQuorum(context.config, context.id, answered)) {
    return followTarget(context, { leaderId: leader.from, term, lastIndex: leader.leaderLastIndex });
  }
  if (context.forceRecovery && ready.some((answer) => !answer.blank)) {
    const adopted = adoptRecoveredTerm(term);
    return merge(adopted, recovered(after(context, adopted), 'forced'));
  }
  return {};
};

/**
 * Adopts `term`, still marked recovering (a crash while copying the log means recovering again);
 * once recovered the server counts as having voted in it (votedFor = self), so no vote of a
 * forgotten term repeats.
 */
const adoptRecoveredTerm = (term: number): Outcome => ({
  patch: { currentTerm: term, votedFor: RECOVERING_VOTE },
  emitted: [persistHardState(term, RECOVERING_VOTE)],
});

const followTarget = (context: RaftContext, target: RecoveryTarget): Outcome =>
  merge(adoptRecoveredTerm(target.term), {
    patch: { leaderId: target.leaderId, recovery: { ...context.recovery, target, heardTarget: false } },
  });

/**
 * Rule 2, step 2: the recovery completes once the log matches the target leader's up to the last
 * index it reported, shown by that leader in its term (an accepted AppendEntries or snapshot).
 */
const completesRecovery = (context: RaftContext, from: NodeId, term: number, matchIndex: number): boolean => {
  const target = context.recovery.target;
  return (
    target !== null && target.leaderId === from && target.term === term && matchIndex >= target.lastIndex
  );
};

const fromTarget = (context: RaftContext, from: NodeId): Outcome =>
  context.recovery.target?.leaderId === from && !context.recovery.heardTarget
    ? { patch: { recovery: { ...context.recovery, heardTarget: true } } }
    : {};

/** AppendEntries while recovering: as any follower (answers marked), then the completion check. */
export const appendWhileRecovering = (context: RaftContext, request: AppendEntries): Outcome => {
  const appended = appendFromLeader(context, request);
  const answer = appended.send?.[0];
  const heard = merge(appended, fromTarget(context, request.from));
  const done =
    answer?.type === 'AppendEntriesResponse' &&
    answer.success &&
    completesRecovery(context, request.from, request.term, answer.matchIndex);
  return done ? merge(heard, recovered(after(context, heard), 'recovered')) : heard;
};

/** InstallSnapshot while recovering: as any follower, then the completion check. */
export const installWhileRecovering = (context: RaftContext, request: InstallSnapshot): Outcome => {
  const installed = installSnapshot(context, request);
  const answer = installed.send?.[0];
  const heard = merge(installed, fromTarget(context, request.from));
  const done =
    answer?.type === 'InstallSnapshotResponse' &&
    completesRecovery(context, request.from, request.term, answer.matchIndex);
  return done ? merge(heard, recovered(after(context, heard), 'recovered')) : heard;
};
