/**
 * A broken variant of membership change (issue 13), swapped in with vi.mock: the leader puts the new
 * voters in force in one step (C_new straight away, no C_old,new), the change that Raft paper §6
 * warns about (the old and the new majorities need not overlap, so both may commit at one index).
 * A directed scenario (`cutOffChange`) runs on ten seeds: with joint consensus it is safe; without,
 * the simulator's state machine safety check fails it. The snapshot and committed-only variants are
 * in test/model (the reference spec).
 */
import { describe, expect, it, vi } from 'vitest';
import type { Configuration, MemberAddress } from '../../src/machines/configuration.js';
import { createSimulation, seedsFor, track, waitForLeader } from './simulator.js';

const broken = vi.hoisted(() => ({ noJoint: false }));

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
  };
});

/**
 * The leader L is cut off with two caught-up servers outside the configuration (s4, s5) and asked
 * to change to {L, s4, s5}; the other two members keep writing on their side. With joint consensus
 * C_old,new needs a majority of the old members too, so nothing of the change commits; without it,
 * L commits with s4 and s5 while the other side elects a leader of the old configuration and
 * commits other entries at the same indexes.
 */
const cutOffChange = async (seed: number): Promise<void> => {
  const sim = createSimulation({ seed, nodes: 3, spares: 2, sparesTrusted: true });
  const leader = await waitForLeader(sim);
  const rest = sim.initialVoters.filter((id) => id !== leader);
  const spares = sim.ids.filter((id) => !sim.initialVoters.includes(id));
  sim.partition([leader, ...spares], rest);
  track(
    sim,
    sim.node(leader)!.reconfigure(
      [leader, ...spares].map((nodeId) => ({ nodeId })),
      3_000,
    ),
  );
  for (let n = 0; n < 3; n += 1) sim.propose(leader, `cut-${n}`, 'k');
  await sim.runFor(sim.rng.int(400, 900));
  const other = sim.leader() === leader ? null : sim.leader();
  for (let n = 0; n < 3; n += 1) sim.propose(other ?? rest[0]!, `rest-${n}`, 'k');
  await sim.runFor(sim.rng.int(400, 900));
  sim.heal();
  await sim.runFor(1_000);
};

/** Runs seeds until one fails; returns the failure (or null). */
const firstFailure = async (seeds: number[]): Promise<string | null> => {
  for (const seed of seeds) {
    try {
      await cutOffChange(seed);
    } catch (error) {
      return (error as Error).message;
    }
  }
  return null;
};

describe('broken membership variants are caught by the simulation', () => {
  it('passes with every rule intact (the mocks pass through)', async () => {
    broken.noJoint = false;
    expect(await firstFailure(seedsFor(10, 1322))).toBeNull();
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
