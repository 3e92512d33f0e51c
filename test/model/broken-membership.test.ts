/**
 * The model checker must catch broken membership rules. Each test swaps one rule of src/machines
 * (vi.mock; every variant is off unless its test turns it on) and runs the membership runs of the
 * model suite (harness.ts, reconfigurations with spare servers), expecting a counterexample:
 *
 * - two voters changed in one step, without the joint phase: the leader appends C_new at once
 *   (`jointConfiguration` returns the final configuration);
 * - a server that uses only the committed configuration: a follower ignores the config entries an
 *   AppendEntries writes past its commit index (`configsAfterWrite`);
 * - a removed server that keeps campaigning (`mayCampaign` always true), and one that ignores
 *   `Removed` (`acceptsRemoved` always false);
 * - the learner phase (dissertation §4.2.1) cut short: C_old,new appended as soon as the catch-up
 *   configuration commits, before its learners hold the log (`isCatchUpDone` ignores their
 *   progress). That is no safety violation: it is a liveness change (the new servers may again be
 *   voters that cannot vote while they recover), so the model catches it as a divergence between
 *   machine and spec (the machine's log gains C_old,new where the spec's does not);
 * - learners counted in a majority: their acknowledgements and votes count toward the voters'
 *   majority (`quorumIndex` and `hasQuorum` count voters and learners against a majority of the
 *   voters). That is a safety hazard (an entry held by one voter and a learner is "committed", a
 *   learner's vote elects); the model catches it at the first commit or election the spec does not
 *   make (a divergence), before a safety invariant would see a lost entry.
 *
 * The reference spec (spec.ts, spec-config.ts) has its own configuration code, untouched by the
 * mocks, so a broken machine disagrees with it; the harness's invariants (a configuration in force
 * is the newest in the log, a server told it is removed sends no vote request) say why.
 *
 * Not here: a snapshot without its configuration. The model never compacts a log (the spec has no
 * snapshots); that variant belongs to the simulation.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Configuration, MemberAddress } from '../../src/machines/configuration.js';
import type { Entry, NodeId, Removed } from '../../src/machines/messages.js';
import type { RaftContext } from '../../src/machines/raft.types.js';
import { runModel } from './harness.js';

const broken = vi.hoisted(() => ({
  noJoint: false,
  committedOnly: false,
  campaignsWhenRemoved: false,
  ignoresRemoved: false,
  eagerCatchUp: false,
  learnersCount: false,
}));

vi.mock('../../src/machines/configuration.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/configuration.js')>();
  return {
    ...original,
    /** The single-step change: C_new goes into the log at once, with no C_old,new before it. */
    jointConfiguration: (
      current: Configuration,
      voters: readonly NodeId[],
      addresses: Readonly<Record<NodeId, MemberAddress>>,
    ): Configuration => {
      const joint = original.jointConfiguration(current, voters, addresses);
      return broken.noJoint ? original.finalConfiguration(joint) : joint;
    },
    /** Learners' matches count toward the voters' majority (no joint sets while catching up). */
    quorumIndex: (config: Configuration, matchOf: (id: NodeId) => number): number => {
      if (!broken.learnersCount || config.learners.length === 0) return original.quorumIndex(config, matchOf);
      const matches = [...config.voters, ...config.learners].map(matchOf).sort((x, y) => y - x);
      return matches[Math.floor(config.voters.length / 2)] ?? 0;
    },
    /** Learners' votes (and answers) count toward the voters' majority. */
    hasQuorum: (config: Configuration, has: (id: NodeId) => boolean): boolean => {
      if (!broken.learnersCount || config.learners.length === 0) return original.hasQuorum(config, has);
      const count = [...config.voters, ...config.learners].filter(has).length;
      return count >= Math.floor(config.voters.length / 2) + 1;
    },
  };
});

vi.mock('../../src/machines/rules/membership.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/rules/membership.js')>();
  const notConfig = (entry: Entry): Entry => ({ term: entry.term, kind: 'noop', data: null });
  return {
    ...original,
    /** Only committed configurations count: config entries written past the commit index are passed over. */
    configsAfterWrite: (context: RaftContext, fromIndex: number, entries: readonly Entry[]) =>
      original.configsAfterWrite(
        context,
        fromIndex,
        broken.committedOnly
          ? entries.map((entry, offset) =>
              entry.kind === 'config' && fromIndex + offset > context.commitIndex ? notConfig(entry) : entry,
            )
          : entries,
      ),
    mayCampaign: (context: RaftContext) => broken.campaignsWhenRemoved || original.mayCampaign(context),
    acceptsRemoved: (context: RaftContext, message: Removed) =>
      !broken.ignoresRemoved && original.acceptsRemoved(context, message),
    learnRemoved: (context: RaftContext, message: Removed) =>
      broken.ignoresRemoved ? {} : original.learnRemoved(context, message),
    /** The catch-up is "done" once its configuration commits, whatever the learners hold (leader state only). */
    isCatchUpDone: (context: RaftContext) =>
      broken.eagerCatchUp
        ? context.config.learners.length > 0 &&
          context.configs[context.configs.length - 1]!.index <= context.commitIndex
        : original.isCatchUpDone(context),
  };
});

afterEach(() => {
  broken.noJoint = false;
  broken.committedOnly = false;
  broken.campaignsWhenRemoved = false;
  broken.ignoresRemoved = false;
  broken.eagerCatchUp = false;
  broken.learnersCount = false;
});

const SEED = 13;
const BOUND = 1500;

const caught = (variant: keyof typeof broken, servers = 3, spares = 2) => {
  broken[variant] = true;
  const report = runModel({
    servers,
    spares,
    numRuns: BOUND,
    seed: SEED,
    maxCommands: 120,
    replayable: false,
  });
  console.log(`${variant}: caught after ${report.numRuns} run(s): ${report.error?.split('\n')[0]}`);
  return report;
};

describe('broken membership rules are caught by the model checker', () => {
  it('two voters changed in one step without the joint phase', () => {
    const report = caught('noJoint');
    expect(report.failed).toBe(true);
    expect(report.error).toMatch(/announced configuration|disagree|safety/);
  });

  it('a server that uses only the committed configuration', () => {
    const report = caught('committedOnly');
    expect(report.failed).toBe(true);
    expect(report.error).toMatch(/configuration in force/);
  });

  it('a removed server that keeps campaigning', () => {
    const report = caught('campaignsWhenRemoved');
    expect(report.failed).toBe(true);
    expect(report.error).toMatch(/removed server campaigns|disagree/);
  });

  it('a removed server that ignores Removed', () => {
    const report = caught('ignoresRemoved');
    expect(report.failed).toBe(true);
    expect(report.error).toMatch(/removed/);
  });

  it('C_old,new appended before the learners caught up (a liveness change: caught as a divergence)', () => {
    const report = caught('eagerCatchUp');
    expect(report.failed).toBe(true);
    expect(report.error).toMatch(/disagree|announced configuration/);
  });

  it('learners counted in a majority', () => {
    const report = caught('learnersCount');
    expect(report.failed).toBe(true);
    // A commit the spec does not make shows first (often as the C_old,new it lets the leader append).
    expect(report.error).toMatch(/disagree|safety|announced configuration/);
  });

  it('the real rules pass the same runs', () => {
    const report = runModel({ servers: 3, spares: 2, numRuns: 300, seed: SEED, maxCommands: 120 });
    expect(report.failed, report.message).toBe(false);
  });
});
