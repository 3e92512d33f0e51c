/**
 * Rules for Leaders (Figure 2): becoming leader with a no-op of its term (§8), appending client
 * proposals, the answers to AppendEntries, InstallSnapshot and heartbeats, the commit rule
 * (§5.3, §5.4.2, in commit.ts), CheckQuorum (dissertation §6.2), and stepping down.
 */
import { assert } from '../assert.js';
import { noopData } from '../cluster-id.js';
import { commitIndexByQuorum } from '../commit.js';
import { hasQuorum, isJoint, type MemberAddress } from '../configuration.js';
import type {
  AppendEntriesResponse,
  Entry,
  HeartbeatResponse,
  InstallSnapshotResponse,
  NodeId,
} from '../messages.js';
import {
  admitIncarnation,
  createProgress,
  onAppendAccepted,
  onAppendRejected,
  onHeartbeatAnswered,
  onSnapshotAnswered,
  type Progress,
} from '../progress.js';
import type { Outcome, RaftContext, RaftEmitted } from '../raft.types.js';
import { append, lastIndex, lastIndexOfTerm } from '../raft-log.js';
import { recordPersisted } from './all-servers.js';
import { completeJointChange, proposeReconfigure, tellRemoved } from './membership.js';
import { releaseConfirmedReads, startReadRound } from './read-index.js';
import { appendsFor } from './replication.js';
import { after, commitOutcome, merge, peersOf, progressOf } from './shared.js';

/**
 * Advances commitIndex by the quorum rule, tells every follower (etcd broadcasts the new commit so
 * followers apply promptly), and starts the reads that waited for this leader's first commit.
 */
const advanceCommit = (context: RaftContext): Outcome => {
  const newCommitIndex = commitIndexByQuorum(context);
  if (newCommitIndex === context.commitIndex) return {};
  const commit = commitOutcome(context, newCommitIndex);
  const committed = after(context, commit);
  const broadcast = peersOf(committed).flatMap((peer) => appendsFor(committed, peer, true));
  const reads =
    committed.pendingReadIds.length > 0 ? startReadRound(committed, committed.pendingReadIds) : {};
  const done = merge(commit, { send: broadcast }, reads, tellRemoved(committed, context.commitIndex));
  return merge(done, continueChange(after(context, done)));
};

/** A committed C_old,new is followed by C_new (membership.ts), which may commit at once. */
const continueChange = (context: RaftContext): Outcome => {
  const appended = completeJointChange(context);
  if (appended === null) return {};
  return merge(appended, advanceCommit(after(context, appended)));
};

/** "Upon election: send initial empty AppendEntries RPCs"; the new term starts with a no-op entry (§8). */
export const becomeLeader = (context: RaftContext): Outcome => {
  const last = lastIndex(context.log);
  const progress: Record<NodeId, ReturnType<typeof createProgress>> = {};
  // Answers from incarnations older than the crash vector knows were sent before a restart (rule 1).
  for (const peer of peersOf(context)) progress[peer] = createProgress(last, context.crashVector[peer] ?? 0);
  // The first leader of a new cluster mints its id into the cluster's first entry (cluster-id.ts).
  const noop: Entry = {
    term: context.currentTerm,
    kind: 'noop',
    data: noopData(last + 1, context.newClusterId),
  };
  append(context.log, [noop]);
  const leading = after(context, {
    patch: { progress, leaderId: context.id, readRounds: [], pendingReadIds: [] },
  });
  const persist: RaftEmitted = { type: 'persist', hardState: null, fromIndex: last + 1, entries: [noop] };
  const appends = peersOf(leading).flatMap((peer) => appendsFor(leading, peer, true));
  const started = merge(
    { patch: { progress, leaderId: context.id, readRounds: [], pendingReadIds: [] } },
    { send: appends, emitted: [persist] },
    advanceCommit(leading),
  );
  // A change the last leader left with C_old,new committed goes on (§6).
  return merge(started, continueChange(after(context, started)));
};

/** "If command received from client: append entry to local log" and replicate it. One batch, one append. */
export const appendProposals = (context: RaftContext, batchId: number, commands: Uint8Array[]): Outcome => {
  const firstIndex = lastIndex(context.log) + 1;
  const entries: Entry[] = commands.map((data) => ({ term: context.currentTerm, kind: 'command', data }));
  append(context.log, entries);
  const appends = peersOf(context).flatMap((peer) => appendsFor(context, peer, false));
  return merge(
    {
      send: appends,
      emitted: [
        { type: 'persist', hardState: null, fromIndex: firstIndex, entries },
        { type: 'proposalsAccepted', batchId, firstIndex, term: context.currentTerm },
      ],
    },
    advanceCommit(context),
  );
};

/**
 * A reconfigure request at the leader (membership.ts): C_old,new goes into the log, and the commit
 * rule runs at once, as after any append: a configuration whose every set is the leader alone (an
 * address change of a single-server cluster) commits now, and C_new follows, with no other event.
 */
export const startReconfigure = (
  context: RaftContext,
  requestId: number,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): Outcome => {
  const proposed = proposeReconfigure(context, requestId, voters, addresses);
  return merge(proposed, advanceCommit(after(context, proposed)));
};

export const rejectProposals = (context: RaftContext, batchId: number): Outcome => ({
  emitted: [{ type: 'proposalsRejected', batchId, leaderId: context.leaderId }],
});

/**
 * The incarnation rule (progress.ts): an answer from an earlier start of the follower is ignored;
 * one from a later start resets the follower's progress before it is handled. Counted either way.
 */
const checkIncarnation = (
  context: RaftContext,
  response: AppendEntriesResponse | HeartbeatResponse | InstallSnapshotResponse,
) => {
  const progress = progressOf(context, response.from);
  const verdict = admitIncarnation(
    progress,
    response.incarnation,
    lastIndex(context.log),
    response.recovering,
  );
  if (verdict === 'stale') context.incarnationCounters.staleIgnored += 1;
  else if (progress.recovering) context.recoveryCounters.recoveringAnswers += 1;
  if (verdict === 'restarted') context.incarnationCounters.resets += 1;
  return verdict;
};

/**
 * After a reset by a new incarnation the answer itself may not call for a send (a rejection of a
 * request from before the reset is not the probe's answer): probe now, so the follower's conflict
 * hint arrives without waiting for the next heartbeat.
 */
const probeAfterRestart = (context: RaftContext, peer: NodeId, outcome: Outcome): Outcome =>
  (outcome.send?.length ?? 0) > 0 ? outcome : merge(outcome, { send: appendsFor(context, peer, true) });

/** Where the leader resumes after a rejection, from the follower's conflict hint (§5.3). */
const nextIndexFromHint = (context: RaftContext, response: AppendEntriesResponse): number => {
  if (response.conflictTerm > 0) {
    const leaderLast = lastIndexOfTerm(context.log, response.conflictTerm);
    if (leaderLast > 0) return leaderLast + 1;
  }
  return response.conflictIndex;
};

/**
 * "If successful: update nextIndex and matchIndex for follower. If AppendEntries fails because of
 * log inconsistency: decrement nextIndex and retry" — by a whole term at a time, with the hint.
 */
export const handleAppendResponse = (context: RaftContext, response: AppendEntriesResponse): Outcome => {
  // An answer from a server no longer in the configuration (membership.ts) changes nothing.
  if (context.progress[response.from] === undefined) return {};
  const wasRecovering = progressOf(context, response.from).recovering;
  const verdict = checkIncarnation(context, response);
  if (verdict === 'stale') return {};
  const outcome = appendResponse(context, response, wasRecovering);
  return verdict === 'restarted' ? probeAfterRestart(context, response.from, outcome) : outcome;
};

const appendResponse = (
  context: RaftContext,
  response: AppendEntriesResponse,
  wasRecovering: boolean,
): Outcome => {
  const progress = progressOf(context, response.from);
  markActive(context, response.from, progress);
  if (response.success) {
    assert(response.matchIndex <= lastIndex(context.log), 'a follower matched past the leader log');
    const advanced = onAppendAccepted(progress, response.matchIndex);
    // A follower that just finished recovering counts from now on: its match may commit more.
    const counted = wasRecovering && !progress.recovering;
    const commit = advanced || counted ? advanceCommit(context) : {};
    const committed = after(context, commit);
    // The commit may have completed a change that removed this follower (membership.ts).
    if (committed.progress[response.from] === undefined) return commit;
    return merge(commit, { send: appendsFor(committed, response.from, false) });
  }
  const changed = onAppendRejected(progress, response.rejectedIndex, nextIndexFromHint(context, response));
  return changed ? { send: appendsFor(context, response.from, true) } : {};
};

/** The follower installed our snapshot (or had one that far): it matches up to `matchIndex`. */
export const handleSnapshotResponse = (context: RaftContext, response: InstallSnapshotResponse): Outcome => {
  if (context.progress[response.from] === undefined) return {};
  const verdict = checkIncarnation(context, response);
  if (verdict === 'stale') return {};
  const progress = progressOf(context, response.from);
  markActive(context, response.from, progress);
  assert(response.matchIndex <= lastIndex(context.log), 'a follower matched past the leader log');
  const advanced = onSnapshotAnswered(progress, response.matchIndex);
  const commit = advanced ? advanceCommit(context) : {};
  const committed = after(context, commit);
  if (committed.progress[response.from] === undefined) return commit;
  return merge(commit, { send: appendsFor(committed, response.from, true) });
};

export const handleHeartbeatResponse = (context: RaftContext, response: HeartbeatResponse): Outcome => {
  if (context.progress[response.from] === undefined) return {};
  const wasRecovering = progressOf(context, response.from).recovering;
  if (checkIncarnation(context, response) === 'stale') return {};
  const progress = progressOf(context, response.from);
  // A follower that just finished recovering counts from now on: its match may commit more.
  if (wasRecovering && !progress.recovering) {
    const commit = advanceCommit(context);
    return merge(commit, handleHeartbeatResponse(after(context, commit), response));
  }
  onHeartbeatAnswered(progress, context.maxInflight);
  markActive(context, response.from, progress);
  // A recovering follower confirms no leadership (rule 3): its answer only keeps replication going.
  const rounds = context.readRounds.map((round) =>
    !progress.recovering && round.seq <= response.seq && !round.acks.includes(response.from)
      ? { ...round, acks: [...round.acks, response.from] }
      : round,
  );
  // A follower still recovering gets an AppendEntries even when it holds the whole log: only an
  // accepted one from its target leader completes its recovery (recovery.ts), and an idle cluster
  // sends no other (a member being added would wait for the next write to count).
  const catchUp =
    progress.matchIndex < lastIndex(context.log) || progress.recovering
      ? appendsFor(context, response.from, true)
      : [];
  return merge(releaseConfirmedReads(context, rounds), { send: catchUp });
};

/**
 * An answer marks its sender active for CheckQuorum unless it recovers (rule 3), with one exception:
 * a server being added (in C_new only, while joint) that is still catching up is reachable, so the
 * leader of the change keeps its lease while the new servers recover (membership.ts); it still
 * counts toward no commit and no read round.
 */
const markActive = (context: RaftContext, from: NodeId, progress: Progress): void => {
  if (!progress.recovering || (isJoint(context.config) && !context.config.outgoing.includes(from)))
    progress.recentActive = true;
};

/** CheckQuorum: a leader that has not heard from a majority in an election timeout steps down. */
export const hasLostQuorumContact = (context: RaftContext): boolean =>
  !hasQuorum(context.config, (id) => id === context.id || context.progress[id]?.recentActive === true);

export const startQuorumRound = (context: RaftContext): Outcome => {
  for (const peer of peersOf(context)) progressOf(context, peer).recentActive = false;
  return {};
};

export const leaderPersisted = (context: RaftContext, index: number): Outcome => {
  const recorded = recordPersisted(context, index);
  return merge(recorded, advanceCommit(after(context, recorded)));
};

/** Leaving leadership: pending reads cannot be confirmed any more. */
export const abandonLeadership = (context: RaftContext): Outcome => {
  const ids = [...context.readRounds.flatMap((round) => round.ids), ...context.pendingReadIds];
  return merge(
    { patch: { progress: {}, readRounds: [], pendingReadIds: [], leaderId: null } },
    ids.length > 0 ? { emitted: [{ type: 'readsRejected', ids, leaderId: null }] } : {},
  );
};
