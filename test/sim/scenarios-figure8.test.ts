/**
 * Figure 8 of the Raft paper, as the lab suites' TestFigure8 and TestFigure8Unreliable drive it:
 * 5 servers, 1,000 iterations of proposing on every live server, running a short random time and
 * taking the leader out (a crash, or on the unreliable network a disconnection), bringing a
 * random server back whenever fewer than 3 are up; then everything comes back and one more entry
 * must commit on all 5. The safety checker runs after every step; a watcher also checks the
 * commit rule itself: a leader only ever advances its commit index onto an entry of its own term.
 */
import { describe, it } from 'vitest';
import type { Node as RaftNode } from '../../src/actors/node.js';
import {
  agreeOne,
  createSimulation,
  ensure,
  isolate,
  RELIABLE,
  type Simulation,
  seedsFor,
  UNRELIABLE,
} from './simulator.js';

const ELECTION_MS = 150;

type Figure8Options = {
  seed: number;
  unreliable: boolean;
  maxEntriesPerAppend?: number;
};

/** Fails when a leader moves its commit index onto an entry of an older term (the Figure 8 rule). */
const watchCommitRule = (sim: Simulation): (() => number) => {
  const last = new WeakMap<RaftNode, { term: number; commit: number }>();
  let advances = 0;
  sim.onStep(() => {
    for (const id of sim.ids) {
      const node = sim.node(id);
      if (!node || node.isStopped() || node.status().role !== 'leader') continue;
      const { currentTerm, commitIndex, log } = node.snapshot().context;
      const before = last.get(node);
      if (before && before.term === currentTerm && commitIndex > before.commit) {
        advances += 1;
        const term = log.entries[commitIndex - 1]!.term;
        if (term !== currentTerm) {
          sim.fail(
            `${id}, leader of term ${currentTerm}, advanced its commit index to ${commitIndex} (term ${term})`,
          );
        }
      }
      last.set(node, { term: currentTerm, commit: commitIndex });
    }
  });
  return () => advances;
};

const figure8 = async ({ seed, unreliable, maxEntriesPerAppend }: Figure8Options) => {
  const sim = createSimulation({
    seed,
    nodes: 5,
    network: unreliable ? { ...UNRELIABLE, longDelayRate: 0 } : RELIABLE,
    ...(maxEntriesPerAppend ? { maxEntriesPerAppend } : {}),
  });
  const commitAdvances = watchCommitRule(sim);
  const down = new Set<string>();
  const up = (id: string): boolean => sim.isAlive(id) && !down.has(id);
  let proposed = 0;
  if (unreliable) await agreeOne(sim, `first-${seed}`, 1, 10_000);
  for (let iteration = 0; iteration < 1_000; iteration += 1) {
    // After 200 iterations, the lab turns on long reordering.
    if (unreliable && iteration === 200) sim.setNetwork({ longDelayRate: 0.1, longDelayMaxMs: 1_000 });
    let leader: string | null = null;
    for (const id of sim.ids) {
      if (!sim.isAlive(id)) continue;
      sim.propose(id, `f8-${seed}-${proposed++}`);
      if (sim.status(id)!.role === 'leader' && up(id)) leader = id;
    }
    await sim.runFor(sim.rng.chance(0.1) ? sim.rng.int(0, 2 * ELECTION_MS) : sim.rng.int(0, 13));
    if (leader !== null) {
      if (!unreliable) sim.crash(leader);
      else if (sim.rng.chance(0.5)) down.add(leader);
      isolate(sim, down);
    }
    if (sim.ids.filter(up).length < 3) {
      const id = sim.rng.pick(sim.ids);
      if (!sim.isAlive(id)) sim.restart(id);
      down.delete(id);
      isolate(sim, down);
    }
  }
  for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
  down.clear();
  sim.heal();
  await agreeOne(sim, `last-${seed}`, 5, 10_000);
  if (process.env.DISKEYVAL_SIM_VERBOSE) {
    console.info(
      `figure 8 seed ${seed}: ${sim.checker.leaders().size} leaders, ${commitAdvances()} commit advances, ${sim.checker.committedLength()} committed, ${sim.now()} ms`,
    );
  }
  return { sim, leaders: sim.checker.leaders().size, commitAdvances: commitAdvances() };
};

describe('scenarios: Figure 8', () => {
  it('keeps every committed entry through 1,000 iterations of leader crashes (reliable network)', async () => {
    for (const seed of seedsFor(12, 1401)) {
      const { sim, leaders, commitAdvances } = await figure8({ seed, unreliable: false });
      ensure(sim, leaders >= 25, `only ${leaders} leaders over 1,000 iterations`);
      ensure(sim, commitAdvances >= 25, `only ${commitAdvances} commit advances were checked`);
      ensure(
        sim,
        sim.checker.committedLength() >= 50,
        `only ${sim.checker.committedLength()} entries committed`,
      );
    }
  });

  it('keeps every committed entry with an unreliable network and disconnections instead of crashes', async () => {
    for (const seed of seedsFor(12, 1402)) {
      const { sim, leaders } = await figure8({ seed, unreliable: true });
      ensure(sim, leaders >= 8, `only ${leaders} leaders over 1,000 iterations`);
      ensure(
        sim,
        sim.checker.committedLength() >= 30,
        `only ${sim.checker.committedLength()} entries committed`,
      );
    }
  });

  it('never commits an entry of an older term by counting replicas (one entry per AppendEntries)', async () => {
    for (const seed of seedsFor(12, 1403)) {
      const { sim, commitAdvances } = await figure8({
        seed,
        unreliable: seed % 2 === 0,
        maxEntriesPerAppend: 1,
      });
      ensure(sim, commitAdvances >= 5, `only ${commitAdvances} commit advances were checked`);
    }
  });
});
