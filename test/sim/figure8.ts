/**
 * The Figure 8 schedule of the Raft paper (§5.4.2) as the lab suites drive it: five servers, and
 * over many iterations a proposal on every live server, a short random wait, a crash of the leader,
 * and a restart whenever fewer than three servers are up. Leaders come and go with partly
 * replicated entries of old terms: the situation in which counting replicas of an old-term entry
 * would commit something a later leader overwrites. Afterwards every server comes back and one
 * more entry must commit on all five.
 */
import { createSimulation, type NetworkFaults, RELIABLE } from './simulator.js';

export type Figure8Options = {
  seed: number;
  iterations: number;
  network?: Partial<NetworkFaults>;
  /** Partition the leader away instead of crashing it (the unreliable variant). */
  partitionInsteadOfCrash?: boolean;
  maxEntriesPerAppend?: number;
};

export const figure8Run = async (options: Figure8Options) => {
  const sim = createSimulation({
    seed: options.seed,
    nodes: 5,
    ...(options.network ? { network: options.network } : {}),
    ...(options.maxEntriesPerAppend ? { maxEntriesPerAppend: options.maxEntriesPerAppend } : {}),
  });
  const { rng, ids } = sim;
  const down = new Set<string>();
  const isUp = (id: string) => !down.has(id);
  const cutOff = (id: string) => {
    down.add(id);
    if (options.partitionInsteadOfCrash) sim.partition(ids.filter(isUp), [...down]);
    else sim.crash(id);
  };
  const bringBack = (id: string) => {
    down.delete(id);
    if (options.partitionInsteadOfCrash) sim.partition(ids.filter(isUp), [...down]);
    else sim.restart(id);
  };

  await sim.runUntil(() => sim.stableLeader() !== null, 5_000, 'a first leader');
  let counter = 0;
  for (let iteration = 0; iteration < options.iterations; iteration += 1) {
    for (const id of ids) if (isUp(id)) sim.propose(id, `f8-${options.seed}-${counter++}`);
    await sim.runFor(rng.chance(0.1) ? rng.int(0, 500) : rng.int(0, 13));
    const leader = sim.leader();
    if (leader !== null && isUp(leader)) cutOff(leader);
    if (down.size > 2) bringBack(rng.pick([...down]));
  }
  for (const id of [...down]) bringBack(id);
  sim.heal();
  sim.setNetwork(RELIABLE);
  await sim.runUntil(() => sim.stableLeader() !== null, 10_000, 'a leader after all servers are back');
  const last = sim.propose(sim.stableLeader()!, `f8-${options.seed}-final`);
  await sim.runUntil(
    () => sim.committedOn(last.value) === 5,
    10_000,
    'the final entry to commit on all five servers',
  );
  return {
    committed: sim.checker.committedLength(),
    leaders: sim.checker.leaders().size,
    steps: sim.steps(),
  };
};
