/**
 * Membership changes, directed (issue 13): grow 3 -> 5, shrink 5 -> 1, remove the leader, replace
 * every member, a second change while one is in progress, and a removed server that is told so.
 * Each runs on a reliable network over several seeds; the simulator checks every safety property
 * after every step. The random ones with faults are in membership.test.ts.
 */
import { describe, expect, it } from 'vitest';
import type { MembershipCounters } from '../../src/machines/raft.types.js';
import { createSimulation, type Simulation, seedsFor, track, waitForLeader } from './simulator.js';

const membersOf = (ids: string[]) => ids.map((nodeId) => ({ nodeId }));

const settle = async (sim: Simulation, call: ReturnType<typeof track>, what: string): Promise<void> => {
  await sim.runUntil(() => call.state !== 'pending', 5_000, what);
  if (call.state !== 'ok') sim.fail(`${what}: ${call.error}`);
};

const votersOf = (sim: Simulation, id: string): readonly string[] =>
  sim.node(id)!.membership()!.config.voters;

const countersOf = (sim: Simulation, id: string): MembershipCounters =>
  sim.node(id)!.snapshot().context.membershipCounters as MembershipCounters;

/** A write on the stable leader commits. */
const writeCommits = async (sim: Simulation, value: string): Promise<void> => {
  await sim.runUntil(() => sim.stableLeader() !== null, 5_000, 'a stable leader');
  const write = sim.propose(sim.stableLeader()!, value, 'k');
  await sim.runUntil(() => write.state !== 'pending', 5_000, `write ${value}`);
  expect(write.state).toBe('ok');
};

describe('membership changes, directed', () => {
  it('grows 3 -> 5 and shrinks 5 -> 1 (called on a follower, forwarded), writes commit throughout', async () => {
    for (const seed of seedsFor(6, 1311)) {
      const sim = createSimulation({ seed, nodes: 3, spares: 2 });
      const leader = await waitForLeader(sim);
      const follower = sim.initialVoters.find((id) => id !== leader)!;
      await settle(sim, track(sim, sim.node(follower)!.reconfigure(membersOf(sim.ids))), 'grow to 5');
      for (const id of sim.ids)
        await sim.runUntil(() => votersOf(sim, id).length === 5, 3_000, `${id} sees 5`);
      await writeCommits(sim, 'five');
      const keep = sim.stableLeader()!;
      await settle(sim, track(sim, sim.node(keep)!.reconfigure(membersOf([keep]))), 'shrink to 1');
      expect(votersOf(sim, keep)).toEqual([keep]);
      await writeCommits(sim, 'one');
      expect(sim.stableLeader()).toBe(keep);
    }
  });

  it('removes the leader: it steps down once C_new commits, the rest elect a leader, it is told it was removed', async () => {
    for (const seed of seedsFor(6, 1312)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim);
      const rest = sim.ids.filter((id) => id !== leader);
      await settle(sim, track(sim, sim.node(leader)!.reconfigure(membersOf(rest))), 'remove the leader');
      await sim.runUntil(
        () => sim.node(leader)!.membership()!.removed,
        3_000,
        'the old leader learns it was removed',
      );
      expect(countersOf(sim, leader).leaderRemoved).toBe(1);
      await writeCommits(sim, 'after');
      expect(rest).toContain(sim.stableLeader());
      // Its calls reject with REMOVED; it never campaigns again (terms of the rest stay put).
      const call = track(sim, sim.node(leader)!.write({ op: 'set', key: 'k', value: 'x' }));
      await sim.runFor(10);
      expect(call.error).toBe('REMOVED');
      const term = sim.status(sim.stableLeader()!)!.term;
      await sim.runFor(3_000);
      expect(sim.status(sim.stableLeader()!)!.term).toBe(term);
    }
  });

  it('replaces every member (3 spares started blank with join catch up, then the old three leave)', async () => {
    for (const seed of seedsFor(6, 1313)) {
      const sim = createSimulation({ seed, nodes: 3, spares: 3, compactEvery: 8, keepEntries: 2 });
      const leader = await waitForLeader(sim);
      for (let n = 0; n < 12; n += 1) sim.propose(leader, `v${n}`, `k${n % 3}`);
      await sim.runFor(500);
      const spares = sim.ids.filter((id) => !sim.initialVoters.includes(id));
      await settle(sim, track(sim, sim.node(leader)!.reconfigure(membersOf(spares))), 'replace all');
      await writeCommits(sim, 'new');
      expect(spares).toContain(sim.stableLeader());
      for (const old of sim.initialVoters)
        await sim.runUntil(() => sim.node(old)!.membership()!.removed, 3_000, `${old} told it was removed`);
    }
  });

  it('refuses a second change while one is in progress (CHANGE_IN_PROGRESS)', async () => {
    for (const seed of seedsFor(4, 1314)) {
      const sim = createSimulation({ seed, nodes: 3, spares: 2 });
      const leader = await waitForLeader(sim);
      // The leader cut off: its C_old,new cannot commit, so the change stays in progress.
      sim.partition(
        [leader],
        sim.ids.filter((id) => id !== leader),
      );
      const first = track(sim, sim.node(leader)!.reconfigure(membersOf(sim.ids)));
      await sim.runFor(20);
      const second = track(sim, sim.node(leader)!.reconfigure(membersOf(sim.initialVoters.slice(0, 2))));
      await sim.runFor(20);
      expect(second.error).toBe('CHANGE_IN_PROGRESS');
      sim.heal();
      await sim.runUntil(() => first.state !== 'pending', 8_000, 'the first change');
    }
  });
});
