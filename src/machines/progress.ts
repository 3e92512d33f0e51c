/**
 * What a leader knows about one follower's log (Figure 2: nextIndex[], matchIndex[]), and the
 * flow control of the replication pipeline, after etcd-io/raft's tracker/progress.go:
 *
 * - `probe`: the leader does not know where the follower's log ends. It sends one AppendEntries
 *   and waits for the answer (or the next heartbeat answer) before sending another.
 * - `replicate`: the follower's log is known to match up to `matchIndex`. The leader streams
 *   AppendEntries optimistically (nextIndex moves ahead at send time) with at most
 *   `maxInflight` requests unanswered: the pipeline.
 * - `snapshot`: the follower needs entries the leader has compacted (§7). One InstallSnapshot is
 *   out; nothing else goes until it is answered, or until enough heartbeat answers arrived without
 *   its answer (it was lost), when the leader probes (and so resends): `SNAPSHOT_RETRY_HEARTBEATS`
 *   the first time, twice as many after each further try (a large snapshot takes a while to cross,
 *   and resending it early only doubles the load), up to 32 times as many.
 *
 * Incarnations (messages.ts): every answer names the follower's incarnation. The progress keeps
 * the highest one heard. An answer from a higher one means the follower restarted and its log may
 * have got shorter (a memory log empties, a torn WAL tail is cut): the progress starts over from
 * the leader's last index + 1 in probe, and the follower's conflict hint (or a snapshot) does the
 * rest. An answer from a lower one was sent before that restart, and is ignored. So the rule "match
 * only moves forward" holds within one incarnation, which is what lets duplicated and delayed
 * answers never move a follower's progress back.
 *
 * Progress objects are owned by the raft machine and changed in place, once per message. A
 * snapshot of the machine shows each as a `ProgressSummary` (its `toJSON`, computed when called
 * from the live object, so never stale): the in-flight list is shown as its length.
 */
import { assert } from './assert.js';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** Heartbeat answers a leader waits for the answer to an InstallSnapshot before it sends another. */
export const SNAPSHOT_RETRY_HEARTBEATS = 20;

export type Progress = {
  state: ProgressState;
  matchIndex: number;
  nextIndex: number;
  /** probe: an AppendEntries is out and unanswered. */
  probeSent: boolean;
  /** replicate: the last index carried by each unanswered AppendEntries, oldest first. */
  inflight: number[];
  /** Heard from since the last CheckQuorum round. */
  recentActive: boolean;
  /** snapshot: heartbeat answers since the InstallSnapshot went out. */
  snapshotWaitedHeartbeats: number;
  /** InstallSnapshots sent since the follower last answered one (or accepted entries). */
  snapshotTries: number;
  /** The highest incarnation the follower's answers named (0: none heard yet). */
  incarnation: number;
  /**
   * A heartbeat went out to the follower since a heartbeat answer last unpaused its probe or freed
   * a slot of its full window. So answers that arrive in a burst (a follower that was stopped
   * answers every heartbeat it missed at once) release one more AppendEntries, not one each.
   */
  heartbeatSinceRelease: boolean;
  /**
   * The follower's answers in its current incarnation are marked `recovering`: replication goes on,
   * but it counts toward no commit, read-index round or CheckQuorum (docs/design/recovery.md rule 3).
   * Within one incarnation it only goes from true to false; it starts true (nothing heard yet).
   */
  recovering: boolean;
};

/** What JSON shows of a progress: every field, the in-flight list as a count. */
export type ProgressSummary = Omit<Progress, 'inflight'> & { inflight: number };

export const summarizeProgress = (progress: Progress): ProgressSummary => ({
  ...progress,
  inflight: progress.inflight.length,
});

/** Shared by every progress (not enumerable: structural comparisons and Object.assign skip it). */
function progressToJSON(this: Progress): ProgressSummary {
  return summarizeProgress(this);
}

export const createProgress = (leaderLastIndex: number, incarnation = 0): Progress =>
  Object.defineProperty(
    {
      state: 'probe',
      matchIndex: 0,
      nextIndex: leaderLastIndex + 1,
      probeSent: false,
      inflight: [],
      recentActive: true,
      snapshotWaitedHeartbeats: 0,
      snapshotTries: 0,
      incarnation,
      heartbeatSinceRelease: false,
      recovering: true,
    } satisfies Progress,
    'toJSON',
    { value: progressToJSON },
  );

/** What an answer's incarnation means for the progress: see the module comment. */
export type IncarnationVerdict = 'current' | 'stale' | 'restarted';

/**
 * Checks an answer's incarnation before the answer is handled. 'stale': ignore the answer.
 * 'restarted': the progress was reset (matchIndex 0, probe from `leaderLastIndex` + 1); handle the
 * answer against it. The first answer a new leader hears only records the incarnation.
 */
export const admitIncarnation = (
  progress: Progress,
  incarnation: number,
  leaderLastIndex: number,
  recovering = false,
): IncarnationVerdict => {
  if (incarnation === progress.incarnation) {
    // Within an incarnation recovery only completes: a delayed recovering answer changes nothing.
    if (!recovering) progress.recovering = false;
    return 'current';
  }
  if (incarnation < progress.incarnation) return 'stale';
  const first = progress.incarnation === 0;
  if (first) {
    progress.incarnation = incarnation;
    progress.recovering = recovering;
    return 'current';
  }
  Object.assign(progress, createProgress(leaderLastIndex, incarnation));
  progress.recovering = recovering;
  return 'restarted';
};

export const isPaused = (progress: Progress, maxInflight: number): boolean => {
  if (progress.state === 'snapshot') return true;
  return progress.state === 'probe' ? progress.probeSent : progress.inflight.length >= maxInflight;
};

/** An InstallSnapshot went out: replication waits for its answer. */
export const onSnapshotSent = (progress: Progress): void => {
  progress.state = 'snapshot';
  progress.inflight = [];
  progress.probeSent = false;
  progress.snapshotWaitedHeartbeats = 0;
  progress.snapshotTries += 1;
};

/**
 * The follower installed a snapshot (or already had one) up to `matchIndex`: its log matches up
 * to there, and the leader probes from the next index. Returns whether matchIndex advanced.
 */
export const onSnapshotAnswered = (progress: Progress, matchIndex: number): boolean => {
  const advanced = matchIndex > progress.matchIndex;
  if (advanced) progress.matchIndex = matchIndex;
  progress.snapshotTries = 0;
  if (progress.state === 'snapshot') {
    progress.state = 'probe';
    progress.probeSent = false;
    progress.nextIndex = progress.matchIndex + 1;
  }
  progress.nextIndex = Math.max(progress.nextIndex, progress.matchIndex + 1);
  return advanced;
};

/** Records that an AppendEntries carrying entries up to `lastSentIndex` went out. */
export const onAppendSent = (progress: Progress, lastSentIndex: number): void => {
  if (progress.state === 'replicate') {
    progress.inflight.push(lastSentIndex);
    progress.nextIndex = Math.max(progress.nextIndex, lastSentIndex + 1);
  } else {
    progress.probeSent = true;
  }
};

/**
 * A success reply: the follower matches up to `matchIndex`. Returns false for a stale reply that
 * tells nothing new. Replies may arrive reordered or duplicated, so match only moves forward.
 */
export const onAppendAccepted = (progress: Progress, matchIndex: number): boolean => {
  const advanced = matchIndex > progress.matchIndex;
  if (advanced) progress.matchIndex = matchIndex;
  progress.nextIndex = Math.max(progress.nextIndex, matchIndex + 1);
  // A late answer to an AppendEntries sent before the snapshot: the snapshot's answer decides.
  if (progress.state === 'snapshot') return advanced;
  progress.probeSent = false;
  if (progress.state === 'probe') {
    progress.snapshotTries = 0;
    progress.state = 'replicate';
    progress.inflight = [];
    progress.nextIndex = progress.matchIndex + 1;
  }
  freeInflightUpTo(progress, matchIndex);
  assert(progress.nextIndex > progress.matchIndex, 'nextIndex must stay above matchIndex');
  return advanced;
};

const freeInflightUpTo = (progress: Progress, index: number): void => {
  let count = 0;
  while (count < progress.inflight.length && progress.inflight[count]! <= index) count += 1;
  if (count > 0) progress.inflight.splice(0, count);
};

/**
 * A rejection of the AppendEntries whose prevLogIndex was `rejectedIndex`. The leader moves
 * nextIndex back to `hintIndex` (computed from the follower's conflict hint, §5.3) and probes.
 * Returns false for a stale rejection: one about an index already known to match, or (in probe)
 * one that does not answer the request currently out.
 */
export const onAppendRejected = (progress: Progress, rejectedIndex: number, hintIndex: number): boolean => {
  if (rejectedIndex <= progress.matchIndex) return false;
  if (progress.state === 'snapshot') return false;
  if (progress.state === 'probe' && rejectedIndex !== progress.nextIndex - 1) return false;
  progress.state = 'probe';
  progress.inflight = [];
  progress.probeSent = false;
  progress.nextIndex = Math.max(progress.matchIndex + 1, Math.min(hintIndex, rejectedIndex));
  return true;
};

/** A heartbeat went out to the follower: its next answer may release one AppendEntries. */
export const onHeartbeatSent = (progress: Progress): void => {
  progress.heartbeatSinceRelease = true;
};

/**
 * A heartbeat reply: the follower is alive, so a paused probe may go again, and in replicate a
 * full window frees its oldest slot (a lost AppendEntries would otherwise stall the pipeline);
 * at most once per heartbeat sent (see `heartbeatSinceRelease`).
 */
export const onHeartbeatAnswered = (progress: Progress, maxInflight: number): void => {
  if (!progress.recovering) progress.recentActive = true;
  if (!progress.heartbeatSinceRelease) return;
  progress.heartbeatSinceRelease = false;
  progress.probeSent = false;
  if (progress.state === 'replicate' && progress.inflight.length >= maxInflight) progress.inflight.shift();
  if (progress.state === 'snapshot') {
    progress.snapshotWaitedHeartbeats += 1;
    const patience = SNAPSHOT_RETRY_HEARTBEATS * 2 ** Math.min(progress.snapshotTries - 1, 5);
    if (progress.snapshotWaitedHeartbeats >= patience) progress.state = 'probe';
  }
};
