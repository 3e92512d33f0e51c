/**
 * The checker has teeth: clients whose gets skip the read index and read the node's map at once
 * (a deliberately stale read path) produce histories the linearizability checker rejects, within
 * a bounded number of seeds, in the scenarios with partitions and leader changes.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { checkKvHistory, describeViolation } from '../support/linearizability.js';
import { type Clients, clientRun } from './clients.js';
import { isolate, replayCommand, type Simulation, seedsFor } from './simulator.js';

const caught: string[] = [];
afterAll(() => {
  console.log(`clients-stale: the checker caught the stale read path\n${caught.join('\n')}`);
});

/** Faults every 150-600 ms for `durationMs` while the clients run, then heals. */
const partitionStorm = async (sim: Simulation, clients: Clients, durationMs: number): Promise<void> => {
  const endMs = sim.now() + durationMs;
  while (sim.now() < endMs) {
    if (sim.rng.chance(0.7)) {
      const shuffled = [...sim.ids].sort(() => sim.rng.float() - 0.5);
      const cut = sim.rng.int(1, sim.ids.length);
      sim.partition(shuffled.slice(0, cut), shuffled.slice(cut));
    } else {
      sim.heal();
    }
    await clients.drive(Math.min(sim.rng.int(150, 600), Math.max(1, endMs - sim.now())));
  }
  sim.heal();
};

/**
 * Runs `scenario` with stale-reading clients seed after seed until the checker reports a
 * violation; returns the seed, its replay line and the violation text (null when none was found).
 */
const firstViolation = async (
  seeds: readonly number[],
  nodes: number,
  scenario: (sim: Simulation, clients: Clients) => Promise<void>,
): Promise<{ seed: number; tried: number; text: string } | null> => {
  let tried = 0;
  for (const seed of seeds) {
    tried += 1;
    const { clients } = await clientRun(
      seed,
      { nodes, check: false, clients: { read: 'stale', maxOps: 40, keys: 3, thinkMs: [1, 30] } },
      scenario,
    );
    const result = checkKvHistory(clients.history(), { timeoutMs: 10_000 });
    if (result.ok === false) {
      return {
        seed,
        tried,
        text: `seed ${seed} (replay: ${replayCommand(seed)}):\n${describeViolation(result)}`,
      };
    }
  }
  return null;
};

describe('clients: a stale read path is caught', () => {
  it('local reads without a read index, under many partitions, fail the checker', async () => {
    const found = await firstViolation(seedsFor(10, 331), 5, async (sim, clients) => {
      for (const id of sim.ids) clients.add(id);
      clients.start();
      await partitionStorm(sim, clients, 3_000);
      await clients.drive(300);
    });
    expect(found, 'no violation within 10 seeds').not.toBeNull();
    caught.push(`- many partitions: after ${found!.tried} seed(s), ${found!.text}`);
  });

  it('local reads, with the leader cut off from the majority for a while, fail the checker', async () => {
    const found = await firstViolation(seedsFor(10, 332), 3, async (sim, clients) => {
      const leader = sim.stableLeader()!;
      for (const id of sim.ids) clients.add(id);
      clients.start();
      await clients.drive(300);
      // The leader is cut off; the others elect a new one and write on; the old leader's map
      // keeps its values, and its local reads return them.
      isolate(sim, [leader]);
      await clients.drive(1_000);
      sim.heal();
      await clients.drive(300);
    });
    expect(found, 'no violation within 10 seeds').not.toBeNull();
    caught.push(`- leader cut off: after ${found!.tried} seed(s), ${found!.text}`);
  });
});
