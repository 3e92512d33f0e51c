/**
 * The model checker catches broken recovery rules (docs/design/recovery.md): each test swaps one
 * rule of src/machines for a broken variant (vi.mock; off unless its test turns it on) and runs the
 * model suite's checker, which generates amnesiac restarts, expecting a counterexample.
 *
 * - An amnesiac server that votes at once (as diskeyval did before recovery existed).
 * - A leader that counts a pre-crash answer: it ignores incarnations and the `recovering` mark, so
 *   an answer sent before a restart, or by a server still recovering, counts toward a commit.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RequestVote } from '../../src/machines/messages.js';
import type { Progress } from '../../src/machines/progress.js';
import type { RaftContext } from '../../src/machines/raft.types.js';
import { runModel } from './harness.js';

const broken = vi.hoisted(() => ({ amnesiacVotes: false, preCrashCounted: false }));

vi.mock('../../src/machines/rules/index.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/rules/index.js')>();
  // The recovering mark ('' as votedFor) would refuse the vote as well: the variant ignores both.
  const asIfRecovered = (context: RaftContext): RaftContext => ({
    ...context,
    recovering: false,
    votedFor: context.votedFor === '' ? null : context.votedFor,
  });
  return {
    ...original,
    canGrantVote: (context: RaftContext, request: RequestVote) =>
      original.canGrantVote(broken.amnesiacVotes ? asIfRecovered(context) : context, request),
    canGrantPreVote: (context: RaftContext, request: RequestVote) =>
      original.canGrantPreVote(broken.amnesiacVotes ? asIfRecovered(context) : context, request),
  };
});

vi.mock('../../src/machines/progress.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/progress.js')>();
  return {
    ...original,
    /** Every answer is current and counts: no incarnation check, no recovering mark. */
    admitIncarnation: (
      progress: Progress,
      incarnation: number,
      leaderLastIndex: number,
      recovering = false,
    ) => {
      if (!broken.preCrashCounted)
        return original.admitIncarnation(progress, incarnation, leaderLastIndex, recovering);
      progress.incarnation = Math.max(progress.incarnation, incarnation);
      progress.recovering = false;
      return 'current' as const;
    },
  };
});

const SEED = 11;
const BOUND = 3000;

afterEach(() => {
  broken.amnesiacVotes = false;
  broken.preCrashCounted = false;
});

const expectCaught = (servers: number, pattern: RegExp) => {
  const report = runModel({ servers, numRuns: BOUND, seed: SEED, replayable: false });
  console.log(
    `caught after ${report.numRuns} run(s): ${report.message.split('\n').slice(0, 3).join(' | ')}\n${report.error?.split('\n')[0]}`,
  );
  expect(report.failed).toBe(true);
  expect(report.numRuns).toBeLessThanOrEqual(BOUND);
  expect(report.error).toMatch(pattern);
};

describe('the model checker catches broken recovery rules', () => {
  it('passes with every rule intact (the mocks pass through)', () => {
    const report = runModel({ servers: 3, numRuns: 200, seed: SEED });
    expect(report.message).toBe('');
  });

  it('an amnesiac server that votes at once', () => {
    broken.amnesiacVotes = true;
    expectCaught(3, /RequestVoteResponse|PreVoteResponse|vote/);
  });

  it('a leader that counts a pre-crash answer (or a recovering one)', () => {
    broken.preCrashCounted = true;
    expectCaught(3, /commitIndex|recovering|matchIndex|completeness/);
  });
});
