/**
 * The scenario of test/sim/cluster-id-uncommitted.test.ts (and of its broken variant,
 * broken-cluster-id.test.ts): the cluster's first leader mints id A into its no-op at index 1 and
 * is cut off and crashes before that entry reaches anyone; the other two elect a leader that mints
 * id B and commits it; the first leader restarts with its state (its index 1 still holds A,
 * uncommitted), catches up, and is restarted once more. The simulator checks after every step that
 * no two servers know different ids (simulator.ts checkClusterId).
 */
import { expect } from 'vitest';
import { clusterIdOfEntry, isClusterId } from '../../src/machines/cluster-id.js';
import {
  agreeAll,
  converged,
  createSimulation,
  isolate,
  type Simulation,
  sameCommittedEverywhere,
  waitForLeader,
} from './simulator.js';

/** The id entry 1 of `id`'s log carries (null: no entry 1, or one without an id). */
const idInLog = (sim: Simulation, id: string): string | null => {
  const { entries, snapshot } = sim.persisted(id);
  if (snapshot || entries.length === 0) return null;
  return clusterIdOfEntry(1, entries[0]!);
};

/**
 * Runs until the first leader is elected and, in the step that elected it (its no-op appended and
 * its AppendEntries sent, none delivered yet), cuts it off from the others. Returns it.
 */
const cutOffFirstLeader = async (sim: Simulation): Promise<string> => {
  let first: string | null = null;
  const unsubscribe = sim.onStep(() => {
    if (first !== null) return;
    first = sim.leader();
    if (first !== null) isolate(sim, [first]);
  });
  await sim.runUntil(() => first !== null, 3_000, 'a first leader');
  unsubscribe();
  return first!;
};

/** The scenario up to the restart of the first leader; returns it, with the ids A and B. */
const uncommittedFirstId = async (sim: Simulation) => {
  const first = await cutOffFirstLeader(sim);
  // Long enough for a durable disk to sync the no-op (fsyncs take at most 8 ms here).
  await sim.runFor(50);
  sim.crash(first);
  const minted = idInLog(sim, first);
  expect(isClusterId(minted), `seed ${sim.seed}: ${first} kept its no-op with id A`).toBe(true);
  for (const other of sim.ids.filter((id) => id !== first))
    expect(sim.persisted(other).entries, `seed ${sim.seed}: ${other} never got it`).toEqual([]);
  expect(sim.clusterId(), 'nobody knows an id yet').toBeNull();
  const second = await waitForLeader(sim, 5_000, 'a second leader');
  await agreeAll(sim, ['x', 'y'], 2);
  const committed = sim.clusterId();
  expect(isClusterId(committed), `seed ${sim.seed}: ${second} minted B and committed it`).toBe(true);
  expect(committed).not.toBe(minted);
  expect(idInLog(sim, second)).toBe(committed);
  return { first, minted: minted!, committed: committed! };
};

export const restartsWithItsState = async (disk: 'memory' | 'durable', seed: number): Promise<void> => {
  const sim = createSimulation({ seed, nodes: 3, disk });
  const { first, minted, committed } = await uncommittedFirstId(sim);
  sim.heal();
  sim.restart(first);
  const knownAtRestart = sim.node(first)!.clusterId();
  expect(idInLog(sim, first), 'its log still holds the uncommitted id A').toBe(minted);
  // Every step checks that no server knows an id other than B (simulator.ts checkClusterId).
  await sim.runUntil(() => sim.node(first)!.clusterId() === committed, 5_000, `${first} to learn B`);
  await agreeAll(sim, ['z'], 3);
  await converged(sim);
  expect(knownAtRestart, `seed ${seed}: an uncommitted id is not known`).toBeNull();
  expect(idInLog(sim, first), `seed ${seed}: its index 1 was replaced`).toBe(committed);
  expect(await sameCommittedEverywhere(sim)).toEqual(['x', 'y', 'z']);
  // Learned on apply, the id is in the hard state, and on disk since the flush of 'z' (and of
  // anything after it): the next restart knows it before a single step.
  await sim.runFor(50);
  expect(sim.persisted(first).hardState.clusterId, `seed ${seed}: in the hard state`).toBe(committed);
  sim.restart(first);
  expect(sim.node(first)!.clusterId(), `seed ${seed}: known at the next restart`).toBe(committed);
  await waitForLeader(sim, 5_000);
  await agreeAll(sim, ['w'], 3);
};
