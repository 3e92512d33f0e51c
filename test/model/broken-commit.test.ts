/**
 * The model checker must catch broken Raft rules. Each test swaps one rule of src/machines for a
 * deliberately broken variant (vi.mock; every variant is off unless its test turns it on) and
 * runs the same checker as the model suite (harness.ts), expecting a counterexample.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RequestVote } from '../../src/machines/messages.js';
import type { RaftContext } from '../../src/machines/raft.types.js';
import { runModel, runScript } from './harness.js';
import { FIGURE_8_CONFIG, figure8Script } from './scenarios.js';

const broken = vi.hoisted(() => ({
  commit: false,
  vote: false,
  merge: false,
  checkQuorum: false,
  probe: false,
}));

vi.mock('../../src/machines/commit.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/commit.js')>();
  /** Figure 8's mistake: commit the quorum's match index whatever the term of its entry. */
  const countingReplicasOfAnyTerm = (context: RaftContext): number => {
    const matchIndexes = context.config.voters.map((voter) =>
      voter === context.id ? context.log.entries.length : (context.progress[voter]?.matchIndex ?? 0),
    );
    const sorted = [...matchIndexes].sort((a, b) => b - a);
    const quorum = sorted[Math.floor(sorted.length / 2)] ?? 0;
    return Math.max(quorum, context.commitIndex);
  };
  return {
    ...original,
    commitIndexByQuorum: (context: RaftContext) =>
      broken.commit ? countingReplicasOfAnyTerm(context) : original.commitIndexByQuorum(context),
  };
});

vi.mock('../../src/machines/rules/index.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/rules/index.js')>();
  return {
    ...original,
    /** Grants a vote without the election restriction (§5.4.1). */
    canGrantVote: (context: RaftContext, request: RequestVote) =>
      broken.vote
        ? context.votedFor === null || context.votedFor === request.from
        : original.canGrantVote(context, request),
    /** CheckQuorum never fires. */
    hasLostQuorumContact: (context: RaftContext) =>
      broken.checkQuorum ? false : original.hasLostQuorumContact(context),
  };
});

vi.mock('../../src/machines/raft-log.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/raft-log.js')>();
  return {
    ...original,
    /** Truncates after prevLogIndex on every AppendEntries, so a stale or duplicate one shortens the log. */
    mergeEntries: (
      log: import('../../src/machines/raft-log.js').RaftLog,
      prevLogIndex: number,
      entries: readonly import('../../src/machines/messages.js').Entry[],
    ) => {
      if (!broken.merge) return original.mergeEntries(log, prevLogIndex, entries);
      log.entries.length = prevLogIndex - log.offset;
      log.entries.push(...entries);
      return {
        firstWrittenIndex: entries.length > 0 ? prevLogIndex + 1 : -1,
        lastNewIndex: prevLogIndex + entries.length,
      };
    },
  };
});

vi.mock('../../src/machines/progress.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/progress.js')>();
  return {
    ...original,
    /** A heartbeat answer no longer unpauses the pipeline: a lost AppendEntries stalls the follower. */
    onHeartbeatAnswered: (
      progress: import('../../src/machines/progress.js').Progress,
      maxInflight: number,
    ) => {
      if (!broken.probe) return original.onHeartbeatAnswered(progress, maxInflight);
      progress.recentActive = true;
    },
  };
});

const SEED = 7;
const BOUND = 3000;

afterEach(() => {
  broken.commit = false;
  broken.vote = false;
  broken.merge = false;
  broken.checkQuorum = false;
  broken.probe = false;
});

const expectCaught = (servers: number, pattern: RegExp) => {
  const report = runModel({ servers, numRuns: BOUND, seed: SEED, replayable: false });
  console.log(
    `caught after ${report.numRuns} run(s): ${report.message.split('\n').slice(0, 3).join(' | ')}\n${report.error?.split('\n')[0]}`,
  );
  expect(report.failed).toBe(true);
  expect(report.numRuns).toBeLessThanOrEqual(BOUND);
  expect(report.error).toMatch(pattern);
  return report;
};

describe('the model checker catches broken rules', () => {
  it('passes with every rule intact (the mocks pass through)', () => {
    const report = runModel({ servers: 3, numRuns: 200, seed: SEED });
    expect(report.message).toBe('');
    expect(report.failed).toBe(false);
  });

  it('a leader committing an entry of an earlier term by counting replicas (Figure 8)', () => {
    broken.commit = true;
    const report = expectCaught(3, /commitIndex/);
    // The seed and path printed with a failure replay exactly that counterexample, in one run.
    const replay = runModel({ servers: 3, numRuns: BOUND, seed: report.seed, path: report.path ?? '' });
    expect(replay.failed).toBe(true);
    expect(replay.numRuns).toBe(1);
    expect(replay.error).toBe(report.error);
  });

  it('the scripted Figure 8 scenario: the broken rule commits a term-1 entry a term-2 leader counted', () => {
    expect(() => runScript(FIGURE_8_CONFIG, figure8Script)).not.toThrow();
    broken.commit = true;
    expect(() => runScript(FIGURE_8_CONFIG, figure8Script)).toThrow(
      /disagree after deliver AppendEntriesResponse b→a t2 ok match=1:\n {2}a\.commitIndex: spec 0, implementation 1/,
    );
  });

  it('a vote granted without the up-to-date log check', () => {
    broken.vote = true;
    expectCaught(3, /vote|RequestVoteResponse|votedFor/);
  });

  it('a stale or duplicate AppendEntries that truncates the log', () => {
    broken.merge = true;
    expectCaught(3, /log/);
  });

  it('a replication pipeline that a lost AppendEntries stalls for good (caught by the liveness phase)', () => {
    broken.probe = true;
    expectCaught(3, /liveness/);
  });

  it('a leader that never steps down on CheckQuorum', () => {
    broken.checkQuorum = true;
    expectCaught(3, /role/);
  });
});
