/**
 * Broken variants of membership change (issue 13), swapped in with vi.mock, each with a directed
 * scenario run on ten seeds that passes with the real rules:
 *
 * - **No joint phase**: once the learners caught up the leader puts the new voters in force in one
 *   step (C_new straight away, no C_old,new), the change Raft paper §6 warns about (the old and the
 *   new majorities need not overlap, so both may commit at one index). `cutOffChange`: the
 *   simulator's state machine safety check fails it.
 * - **No catch-up phase** (dissertation §4.2.1): a change that adds servers appends C_old,new at
 *   once, so servers still copying the log (recovering) are voters at once. `leaderLostWhileAdding`:
 *   the leader is lost before they caught up, the voters that remain cannot form a majority of
 *   C_new, and no leader is ever elected: the liveness bound fails it.
 *
 * The snapshot and committed-only variants are in test/model (the reference spec).
 */
import { describe, expect, it, vi } from 'vitest';
import type { Configuration, MemberAddress } from '../../src/machines/configuration.js';
import { createSimulation, seedsFor, track, waitForLeader } from './simulator.js';

const broken = vi.hoisted(() => ({ noJoint: false, noCatchUp: false }));

vi.mock('../../src/machines/configuration.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/machines/configuration.js')>();
  return {
    ...original,
    /** The broken change: the new voters alone, in force at once (no C_old,new). */
    jointConfiguration: (
      current: Configuration,
      voters: readonly string[],
      addresses: Readonly<Record<string, MemberAddress>>,
    ): Configuration => {
      const joint = original.jointConfiguration(current, voters, addresses);
      return broken.noJoint ? original.finalConfiguration(joint) : joint;
    },
    /** The broken end of a catch-up: its target voters alone, in force at once. */
    jointAfterCatchUp: (catchUp: Configuration): Configuration => {
      const joint = original.jointAfterCatchUp(catchUp);
      return broken.noJoint ? original.finalConfiguration(joint) : joint;
    },
    /** The broken start of a change that adds servers: C_old,new at once, no learners. */
    catchUpConfiguration: (
      current: Configuration,
      voters: readonly string[],
      addresses: Readonly<Record<string, MemberAddress>>,
    ): Configuration =>
      broken.noCatchUp
        ? original.jointConfiguration(current, voters, addresses)
        : original.catchUpConfiguration(current, voters, addresses),
  };
});

/** The leader's configuration: the catch-up one, committed (its learners may not have answered yet). */
const catchUpCommitted = (sim: ReturnType<typeof createSimulation>, leader: string): boolean => {
  const context = sim.node(leader)?.snapshot().context;
  if (context === undefined) return false;
  const at = context.configs[context.configs.length - 1]!;
  return at.config.learners.length > 0 && at.index <= context.commitIndex;
};

/**
 * The leader L is asked to change to {L, s4, s5} (s4 and s5: caught-up servers outside the
 * configuration, cut off until the change's catch-up configuration is committed); then L is cut off
 * with s4 and s5, and the other two members keep writing on their side. With joint consensus C_old,new (appended when
 * s4 and s5 answer) needs a majority of the old members too, so nothing of the change commits;
 * without it, L commits with s4 and s5 while the other side elects a leader of the old
 * configuration and commits other entries at the same indexes.
 */
const cutOffChange = async (seed: number): Promise<void> => {
  const sim = createSimulation({ seed, nodes: 3, spares: 2, sparesTrusted: true });
  const spares = sim.ids.filter((id) => !sim.initialVoters.includes(id));
  // Cut off from the start: a trusted spare would campaign among the voters its options name.
  sim.partition(sim.initialVoters, spares);
  const leader = await waitForLeader(sim);
  const rest = sim.initialVoters.filter((id) => id !== leader);
  track(
    sim,
    sim.node(leader)!.reconfigure(
      [leader, ...spares].map((nodeId) => ({ nodeId })),
      3_000,
    ),
  );
  await sim.runUntil(() => catchUpCommitted(sim, leader), 2_000, 'the catch-up committed', 1);
  sim.partition([leader, ...spares], rest);
  for (let n = 0; n < 3; n += 1) sim.propose(leader, `cut-${n}`, 'k');
  await sim.runFor(sim.rng.int(400, 900));
  const other = sim.leader() === leader ? null : sim.leader();
  for (let n = 0; n < 3; n += 1) sim.propose(other ?? rest[0]!, `rest-${n}`, 'k');
  await sim.runFor(sim.rng.int(400, 900));
  sim.heal();
  await sim.runFor(1_000);
};

/**
 * A 3-server cluster grows to five with two blank servers (recovering, as a user starts them),
 * which are cut off from everyone when the change is called; once both other voters hold the
 * change's first entry, the leader crashes and stays down, and the new servers come back. The
 * remaining voters must elect a leader, which completes the change (five voters, one down).
 */
const leaderLostWhileAdding = async (seed: number): Promise<void> => {
  const sim = createSimulation({ seed, nodes: 3, spares: 2 });
  const leader = await waitForLeader(sim);
  const rest = sim.initialVoters.filter((id) => id !== leader);
  const spares = sim.ids.filter((id) => !sim.initialVoters.includes(id));
  sim.partition(sim.initialVoters, spares);
  track(
    sim,
    sim.node(leader)!.reconfigure(
      sim.ids.map((nodeId) => ({ nodeId })),
      3_000,
    ),
  );
  const changeIndex = (id: string): number => {
    const context = sim.node(id)?.snapshot().context;
    return context === undefined ? 0 : context.configs[context.configs.length - 1]!.index;
  };
  await sim.runUntil(
    () => rest.every((id) => changeIndex(id) > 0),
    2_000,
    'the change reached the voters',
    1,
  );
  sim.crash(leader);
  sim.heal();
  await sim.runUntil(() => sim.stableLeader() !== null, 10_000, 'a leader without the lost one');
  const grown = (id: string): boolean => {
    const config = sim.node(id)?.snapshot().context.config;
    return config !== undefined && config.voters.length === 5 && config.outgoing.length === 0;
  };
  await sim.runUntil(() => rest.every(grown), 10_000, 'the change to five voters completed');
};

/** Runs `scenario` on `seeds` until one fails; returns the failure (or null). */
const firstFailure = async (
  seeds: number[],
  scenario: (seed: number) => Promise<void> = cutOffChange,
): Promise<string | null> => {
  for (const seed of seeds) {
    try {
      await scenario(seed);
    } catch (error) {
      return (error as Error).message;
    }
  }
  return null;
};

describe('broken membership variants are caught by the simulation', () => {
  it('passes with every rule intact (the mocks pass through)', async () => {
    broken.noJoint = false;
    broken.noCatchUp = false;
    expect(await firstFailure(seedsFor(10, 1322))).toBeNull();
    expect(await firstFailure(seedsFor(10, 1323), leaderLostWhileAdding)).toBeNull();
  });

  it('a change that adds servers without catching them up first (C_old,new at once)', async () => {
    broken.noCatchUp = true;
    const failure = await firstFailure(seedsFor(10, 1323), leaderLostWhileAdding);
    broken.noCatchUp = false;
    console.log(`no catch-up phase: ${failure?.split('\n')[0]}`);
    expect(failure).toMatch(/a leader without the lost one did not happen/);
    expect(failure).toMatch(/replay: DISKEYVAL_SIM_SEED=\d+ npx vitest run/);
  });

  it('a change without the joint phase (C_new in force at once)', async () => {
    broken.noJoint = true;
    const failure = await firstFailure(seedsFor(10, 1322));
    broken.noJoint = false;
    console.log(`no joint phase: ${failure?.split('\n')[0]}`);
    expect(failure).toMatch(/election safety|state machine safety|leader completeness|log matching/);
    expect(failure).toMatch(/replay: DISKEYVAL_SIM_SEED=\d+ npx vitest run/);
  });
});
