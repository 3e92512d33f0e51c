/**
 * What a leader sends to keep followers' logs like its own (§5.3): AppendEntries under the flow
 * control of progress.ts (a window of `maxInflight`, batches bounded in entries and bytes), an
 * InstallSnapshot when the entries a follower needs are compacted (§7), and heartbeats.
 */
import { assert } from '../assert.js';
import type { Heartbeat, NodeId, RaftMessage } from '../messages.js';
import { isPaused, onAppendSent, onHeartbeatSent, onSnapshotSent } from '../progress.js';
import type { Outcome, RaftContext } from '../raft.types.js';
import { lastIndex, sliceBounded, termAt } from '../raft-log.js';
import { peersOf, progressOf } from './shared.js';
import { snapshotFor } from './snapshots.js';

/**
 * Sends AppendEntries to `peer` from its nextIndex while the pipeline has room (§5.3 with
 * etcd's flow control). With `evenIfEmpty`, one empty AppendEntries goes out when there is nothing
 * new, to carry the commit index or to find where a follower's log ends.
 */
export const appendsFor = (context: RaftContext, peer: NodeId, evenIfEmpty: boolean): RaftMessage[] => {
  const progress = progressOf(context, peer);
  const messages: RaftMessage[] = [];
  const last = lastIndex(context.log);
  // Bounded: each pass sends at least one entry or stops, and the window caps the passes.
  for (let pass = 0; pass <= context.maxInflight; pass += 1) {
    if (isPaused(progress, context.maxInflight)) break;
    const next = progress.nextIndex;
    if (next <= context.log.offset) {
      // The entries it needs are compacted: only a snapshot can bring it up to date (§7).
      messages.push(snapshotFor(context, peer));
      onSnapshotSent(progress);
      break;
    }
    if (next > last && !(evenIfEmpty && messages.length === 0)) break;
    const prevLogIndex = Math.min(next - 1, last);
    const prevLogTerm = termAt(context.log, prevLogIndex);
    assert(prevLogTerm !== undefined, `no term at ${prevLogIndex}`);
    const entries =
      next <= last
        ? sliceBounded(context.log, next, next + context.maxEntriesPerAppend - 1, context.maxAppendBytes)
        : [];
    messages.push({
      type: 'AppendEntries',
      from: context.id,
      to: peer,
      term: context.currentTerm,
      prevLogIndex,
      prevLogTerm,
      entries,
      leaderCommit: context.commitIndex,
    });
    onAppendSent(progress, prevLogIndex + entries.length);
    if (entries.length === 0 || progress.state === 'probe') break;
  }
  return messages;
};

/** Heartbeat rounds double as ReadIndex confirmations (dissertation §6.4). */
export const broadcastHeartbeat = (context: RaftContext): Outcome => ({
  send: peersOf(context).map((peer): Heartbeat => {
    const progress = progressOf(context, peer);
    onHeartbeatSent(progress);
    return {
      type: 'Heartbeat',
      from: context.id,
      to: peer,
      term: context.currentTerm,
      commit: Math.min(progress.matchIndex, context.commitIndex),
      seq: context.readSeq,
    };
  }),
});
