/**
 * Log compaction and snapshots (§7, Figure 13): the log forgets what a snapshot of the store
 * covers, a leader sends its snapshot point to a follower that needs compacted entries, and the
 * InstallSnapshot receiver restores the log and the store.
 */
import { assert } from '../assert.js';
import type { InstallSnapshot, InstallSnapshotResponse, NodeId } from '../messages.js';
import type { Outcome, RaftContext } from '../raft.types.js';
import { compactTo, restoreTo } from '../raft-log.js';
import { configsAfterCompact, configsAfterSnapshot } from './membership.js';
import { markRecovering } from './shared.js';

/**
 * InstallSnapshot receiver (Figure 13; the term check, rule 1, happened when it was routed). A
 * snapshot at or below our commit index tells nothing new: we already match the leader up to our
 * commit index. Otherwise the log is restored to the snapshot point (rules 6 and 7: the entries
 * after it are kept when the log holds the snapshot's last entry), everything up to it counts as
 * committed, and the store is reset from the snapshot (rule 8). The answer goes after the snapshot
 * is durable, like any answer (ARCHITECTURE.md rule 4).
 */
export const installSnapshot = (context: RaftContext, request: InstallSnapshot): Outcome => {
  assert(request.term === context.currentTerm, 'installSnapshot at another term');
  const answer = (matchIndex: number): InstallSnapshotResponse =>
    markRecovering(context, {
      type: 'InstallSnapshotResponse',
      from: context.id,
      to: request.from,
      term: context.currentTerm,
      matchIndex,
      incarnation: context.incarnation,
    });
  const leaderPatch = { leaderId: request.from };
  const { lastIncludedIndex: index, lastIncludedTerm: term, data } = request;
  if (index <= context.commitIndex) return { patch: leaderPatch, send: [answer(context.commitIndex)] };
  assert(data !== null && term > 0, `an InstallSnapshot at ${index} without data or term`);
  const keptSuffix = restoreTo(context.log, index, term);
  // The snapshot's configuration is the log's base now (membership.ts).
  const configs = configsAfterSnapshot(context, index, request.config, keptSuffix);
  return {
    patch: {
      ...leaderPatch,
      ...configs.patch,
      commitIndex: index,
      persistedIndex: keptSuffix ? context.persistedIndex : Math.min(context.persistedIndex, index),
    },
    send: [answer(index)],
    emitted: [{ type: 'installSnapshot', index, term, data, keptSuffix }, ...(configs.emitted ?? [])],
  };
};

/**
 * The node took a snapshot of the state machine covering at least `index`, so the log may forget
 * the entries up to there (§7). Only applied (hence committed) entries are ever compacted.
 */
export const compactLog = (context: RaftContext, index: number): Outcome => {
  assert(index <= context.commitIndex, `compact ${index} beyond the commit index ${context.commitIndex}`);
  const configs = configsAfterCompact(context, index);
  compactTo(context.log, index);
  return configs;
};

/** An InstallSnapshot of the log's snapshot point; the node attaches the store's snapshot. */
export const snapshotFor = (context: RaftContext, peer: NodeId): InstallSnapshot => ({
  type: 'InstallSnapshot',
  from: context.id,
  to: peer,
  term: context.currentTerm,
  lastIncludedIndex: context.log.offset,
  lastIncludedTerm: context.log.offsetTerm,
  data: null,
  chunkOffset: 0,
  totalBytes: 0,
});
