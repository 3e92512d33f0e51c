/**
 * What the rules share: the defaults of the machine's input, composing outcomes (`merge`, `after`),
 * the hard-state persist, the draw of an election timeout, the leader's progress lookup, the mark
 * on a recovering server's answers and the `committed` output of a commit index that moved.
 */
import { assert } from '../assert.js';
import { membersOf } from '../configuration.js';
import type {
  AppendEntriesResponse,
  HeartbeatResponse,
  InstallSnapshotResponse,
  NodeId,
} from '../messages.js';
import type { HardState, Outcome, RaftContext, RaftEmitted } from '../raft.types.js';
import { lastIndex, slice } from '../raft-log.js';
import { nextInt } from '../rng.js';

export const DEFAULT_MAX_INFLIGHT = 8;

export const DEFAULT_MAX_ENTRIES_PER_APPEND = 512;

/** Entry data bytes in one AppendEntries: with the default window of 8, 8 MiB in flight per follower. */
export const DEFAULT_MAX_APPEND_BYTES = 1024 * 1024;

/** The other members of the configuration in force (both sets while it is joint). */
export const peersOf = (context: RaftContext): NodeId[] =>
  membersOf(context.config).filter((member) => member !== context.id);

const hardStateOf = (term: number, votedFor: NodeId | null): HardState => ({ term, votedFor });

export const persistHardState = (term: number, votedFor: NodeId | null): RaftEmitted => ({
  type: 'persist',
  hardState: hardStateOf(term, votedFor),
  fromIndex: -1,
  entries: [],
});

/**
 * Draws the next election timeout from [T, 2T) with the machine's seeded generator (§5.2), in ms
 * for the candidates' delays and in whole ticks (rounded down) for the follower's count, which
 * starts over.
 */
export const drawElectionTimeout = (context: Pick<RaftContext, 'rng' | 'electionTimeoutMs' | 'tickMs'>) => {
  const [timeoutMs, rng] = nextInt(context.rng, context.electionTimeoutMs, 2 * context.electionTimeoutMs);
  return {
    randomizedElectionTimeoutMs: timeoutMs,
    randomizedElectionTimeoutTicks: Math.max(1, Math.floor(timeoutMs / context.tickMs)),
    electionElapsedTicks: 0,
    rng,
  };
};

export const merge = (...outcomes: Outcome[]): Outcome => {
  const merged: Required<Outcome> = { patch: {}, send: [], emitted: [] };
  for (const outcome of outcomes) {
    Object.assign(merged.patch, outcome.patch);
    if (outcome.send) merged.send.push(...outcome.send);
    if (outcome.emitted) merged.emitted.push(...outcome.emitted);
  }
  return merged;
};

/** With the patch of `outcome` applied: the view later steps of the same rule must see. */
export const after = (context: RaftContext, outcome: Outcome): RaftContext => ({
  ...context,
  ...outcome.patch,
});

export const progressOf = (context: RaftContext, peer: NodeId) => {
  const progress = context.progress[peer];
  assert(progress !== undefined, `no progress for ${peer}`);
  return progress;
};

/** A recovering server's answers say so: its leader replicates to it but does not count it (rule 3). */
export const markRecovering = <M extends AppendEntriesResponse | HeartbeatResponse | InstallSnapshotResponse>(
  context: RaftContext,
  message: M,
): M => {
  if (context.recovering) message.recovering = true;
  return message;
};

export const commitOutcome = (context: RaftContext, newCommitIndex: number): Outcome => {
  if (newCommitIndex <= context.commitIndex) return {};
  assert(newCommitIndex <= lastIndex(context.log), 'commitIndex beyond the log');
  return {
    patch: { commitIndex: newCommitIndex },
    emitted: [
      {
        type: 'committed',
        firstIndex: context.commitIndex + 1,
        entries: slice(context.log, context.commitIndex + 1, newCommitIndex),
      },
    ],
  };
};
