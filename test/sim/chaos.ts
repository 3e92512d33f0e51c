/**
 * Randomized fault schedules on 3- and 5-server clusters: partitions, crashes and restarts, an
 * unreliable network, and a steady stream of proposals. Safety is checked after every step by the
 * simulator; liveness after the faults heal: a leader appears and every write proposed after
 * healing commits within a bounded simulated time.
 */
import { createSimulation, RELIABLE, type Simulation, UNRELIABLE } from './simulator.js';

export const faultRound = (sim: Simulation): void => {
  const { rng, ids } = sim;
  const choice = rng.int(0, 6);
  if (choice === 0) {
    const shuffled = [...ids].sort(() => rng.float() - 0.5);
    const cut = rng.int(1, ids.length);
    sim.partition(shuffled.slice(0, cut), shuffled.slice(cut));
  } else if (choice === 1) {
    sim.heal();
  } else if (choice === 2) {
    sim.crash(rng.pick(ids));
  } else if (choice === 3) {
    for (const id of ids) if (!sim.isAlive(id)) sim.restart(id);
  } else if (choice === 4) {
    sim.setNetwork(rng.chance(0.5) ? UNRELIABLE : RELIABLE);
  } else {
    sim.restart(rng.pick(ids));
  }
};

export const chaosRun = async (
  seed: number,
  nodes: number,
): Promise<{ committed: number; elections: number }> => {
  const sim = createSimulation({ seed, nodes });
  let proposed = 0;
  for (let round = 0; round < 12; round += 1) {
    faultRound(sim);
    for (let burst = 0; burst < 3; burst += 1) {
      const leader = sim.leader();
      const target = leader !== null && sim.rng.chance(0.8) ? leader : sim.rng.pick(sim.ids);
      for (let n = sim.rng.int(1, 4); n > 0; n -= 1) sim.propose(target, `v${seed}-${proposed++}`);
      await sim.runFor(sim.rng.int(20, 150));
    }
  }
  // Heal everything: liveness must follow.
  sim.heal();
  sim.setNetwork(RELIABLE);
  for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
  await sim.runUntil(() => sim.stableLeader() !== null, 5_000, 'a stable leader after healing');
  const leader = sim.stableLeader()!;
  const finals = Array.from({ length: 5 }, (_, index) => sim.propose(leader, `final-${seed}-${index}`));
  await sim.runUntil(
    () => finals.every((proposal) => proposal.state !== 'pending'),
    5_000,
    'writes proposed after healing to commit',
  );
  for (const proposal of finals) {
    if (proposal.state !== 'ok') sim.fail(`write after healing failed: ${proposal.error}`);
  }
  await sim.runUntil(
    () => finals.every((proposal) => sim.committedOn(proposal.value) === nodes),
    5_000,
    'every server to learn the final commits',
  );
  if (sim.checker.checks() <= 20) sim.fail(`only ${sim.checker.checks()} steps were checked`);
  return { committed: sim.checker.committedLength(), elections: sim.checker.leaders().size };
};
