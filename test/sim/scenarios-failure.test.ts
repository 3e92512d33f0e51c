/**
 * Failure handling scenarios, after the lab suites' churn tests and the seed's backlog: a minority
 * partition cannot commit while the majority serves writes, a crashed follower catches up from the
 * log, every server crashes and rejoins in turn, churn of crashes, restarts and partitions on a
 * reliable and an unreliable network, flapping links, a three-way split, and no acknowledged write
 * is ever lost. Every failure names its seed and the command that replays it.
 */
import { describe, it } from 'vitest';
import {
  agreeAll,
  agreeOne,
  committedCounts,
  createSimulation,
  ensure,
  isolate,
  type Proposal,
  RELIABLE,
  type Simulation,
  sameCommittedEverywhere,
  seedsFor,
  UNRELIABLE,
  waitForLeader,
} from './simulator.js';

const ELECTION_MS = 150;

const values = (prefix: string, count: number): string[] =>
  Array.from({ length: count }, (_, index) => `${prefix}-${index}`);

/** Everything a client was told succeeded is committed on every server. */
const acknowledgedSurvive = (sim: Simulation, proposals: readonly Proposal[]): number => {
  const acknowledged = proposals
    .filter((proposal) => proposal.state === 'ok')
    .map((proposal) => proposal.value);
  const counts = committedCounts(sim, acknowledged);
  for (const [value, count] of counts) {
    ensure(sim, count === sim.ids.length, `acknowledged write ${value} is committed on ${count} servers`);
  }
  return acknowledged.length;
};

const restartAll = (sim: Simulation): void => {
  for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
};

/**
 * The lab's churn: every 0.7 election timeouts a random server may be cut off, one may come back
 * (restarted if it had crashed) and one may crash, while three clients keep proposing; then
 * everything heals and every acknowledged write must be on every server.
 */
const churn = async (seed: number, unreliable: boolean): Promise<void> => {
  const sim = createSimulation({ seed, nodes: 5, network: unreliable ? UNRELIABLE : RELIABLE });
  const apart = new Set<string>();
  const proposals: Proposal[] = [];
  let written = 0;
  for (let iteration = 0; iteration < 20; iteration += 1) {
    if (sim.rng.chance(0.2)) apart.add(sim.rng.pick(sim.ids));
    if (sim.rng.chance(0.5)) {
      const id = sim.rng.pick(sim.ids);
      if (!sim.isAlive(id)) sim.restart(id);
      apart.delete(id);
    }
    if (sim.rng.chance(0.2)) sim.crash(sim.rng.pick(sim.ids));
    isolate(sim, apart);
    // Clients: each proposes to a random live server (only a leader takes it) every few ms.
    const untilMs = sim.now() + 7 * 100;
    while (sim.now() < untilMs) {
      for (let client = 0; client < 3; client += 1) {
        const alive = sim.ids.filter((id) => sim.isAlive(id));
        if (alive.length === 0) continue;
        const leader = sim.leader();
        const target = leader !== null && sim.rng.chance(0.5) ? leader : sim.rng.pick(alive);
        proposals.push(sim.propose(target, `churn-${seed}-${written++}`));
      }
      await sim.runFor(sim.rng.int(5, 40));
    }
  }
  await sim.runFor(1_000);
  sim.setNetwork(RELIABLE);
  sim.heal();
  restartAll(sim);
  await waitForLeader(sim, 5_000, 'a leader after the churn');
  await agreeOne(sim, `final-${seed}`, 5, 10_000);
  await sim.runFor(200);
  const acknowledged = acknowledgedSurvive(sim, proposals);
  ensure(sim, acknowledged >= 10, `only ${acknowledged} writes were acknowledged during the churn`);
  await sameCommittedEverywhere(sim);
};

describe('scenarios: failure handling', () => {
  it('minority partition cannot commit; the majority keeps serving writes; the minority converges', async () => {
    for (const seed of seedsFor(30, 1301)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `base-${seed}`, 5);
      const old = sim.stableLeader()!;
      const buddy = sim.ids.find((id) => id !== old)!;
      const majority = sim.ids.filter((id) => id !== old && id !== buddy);
      sim.partition([old, buddy], majority);
      const minorityWrites = values(`minority-${seed}`, 5).map((value) => sim.propose(old, value));
      const committedBefore = sim.status(old)!.commitIndex;
      const stop = sim.onStep(() => {
        for (const id of [old, buddy]) {
          const commit = sim.status(id)!.commitIndex;
          if (commit > committedBefore) sim.fail(`${id} on the minority side committed up to ${commit}`);
        }
      });
      const majorityValues = values(`majority-${seed}`, 10);
      for (const value of majorityValues) await agreeOne(sim, value, 3, 5_000);
      stop();
      ensure(
        sim,
        sim.status(old)!.commitIndex === committedBefore,
        'the minority leader advanced its commit index',
      );
      ensure(
        sim,
        sim.status(buddy)!.commitIndex <= committedBefore,
        'the minority follower advanced its commit index',
      );
      ensure(
        sim,
        minorityWrites.every((proposal) => proposal.state !== 'ok'),
        'a minority write succeeded',
      );
      sim.heal();
      await agreeOne(sim, `healed-${seed}`, 5, 5_000);
      // The writes the old leader took complete after healing (forwarded to the new leader, applied
      // once), or fail; NOT_LEADER promises they had no effect.
      await sim.runUntil(
        () => minorityWrites.every((proposal) => proposal.state !== 'pending'),
        5_000,
        'the minority writes to settle after healing',
      );
      await sim.runFor(100);
      const counts = committedCounts(sim, [...majorityValues, ...values(`minority-${seed}`, 5)]);
      for (const value of majorityValues) ensure(sim, counts.get(value) === 5, `${value} not everywhere`);
      for (const proposal of minorityWrites) {
        const count = counts.get(proposal.value);
        if (proposal.state === 'ok')
          ensure(sim, count === 5, `acknowledged ${proposal.value} is on ${count}`);
        if (proposal.error === 'NOT_LEADER')
          ensure(sim, count === 0, `refused ${proposal.value} is on ${count}`);
      }
      await sameCommittedEverywhere(sim);
    }
  });

  it('catches up a crashed follower from the log after it restarts', async () => {
    const catchUps: number[] = [];
    for (const seed of seedsFor(30, 1302)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      const follower = sim.ids.find((id) => id !== leader)!;
      sim.crash(follower);
      const written = values(`c-${seed}`, 200);
      for (let start = 0; start < written.length; start += 20)
        await agreeAll(sim, written.slice(start, start + 20), 2);
      ensure(sim, sim.persisted(follower).entries.length < 5, 'the crashed follower received entries');
      sim.restart(follower);
      const tookMs = await sim.runUntil(
        () => committedCounts(sim, [written.at(-1)!]).get(written.at(-1)!) === 3,
        2_000,
        'the restarted follower to catch up',
        1,
      );
      catchUps.push(tookMs);
      // One heartbeat to notice, one probe round trip, then the pipeline: well under an election timeout.
      ensure(sim, tookMs <= ELECTION_MS, `catching up 200 entries took ${tookMs} ms`);
      ensure(sim, sim.stableLeader() === leader, 'the rejoining follower disturbed the leader');
      await sameCommittedEverywhere(sim);
    }
    if (process.env.DISKEYVAL_SIM_VERBOSE)
      console.info(`catch-up of 200 entries: max ${Math.max(...catchUps)} ms`);
  });

  it('crashes and restarts every server in turn, the leader included, without losing commits', async () => {
    for (const seed of seedsFor(24, 1303)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const written: string[] = [];
      for (let round = 0; round < 10; round += 1) {
        const victim = round % 2 === 0 ? (sim.stableLeader() ?? sim.ids[0]!) : sim.ids[round % 5]!;
        sim.crash(victim);
        const during = `r-${seed}-${round}`;
        await agreeOne(sim, during, 4, 5_000);
        written.push(during);
        sim.restart(victim);
        await sim.runFor(sim.rng.int(0, 2 * ELECTION_MS));
      }
      await agreeOne(sim, `final-${seed}`, 5, 5_000);
      const counts = committedCounts(sim, written);
      for (const [value, count] of counts) ensure(sim, count === 5, `${value} is on ${count} of 5 servers`);
      const committed = await sameCommittedEverywhere(sim);
      ensure(
        sim,
        JSON.stringify(committed.slice(0, written.length)) === JSON.stringify(written),
        'order changed',
      );
    }
  });

  it('survives churn on a reliable network (lab TestReliableChurn)', async () => {
    for (const seed of seedsFor(12, 1304)) await churn(seed, false);
  });

  it('survives churn on an unreliable network (lab TestUnreliableChurn)', async () => {
    for (const seed of seedsFor(12, 1305)) await churn(seed, true);
  });

  it('never loses an acknowledged write under random crashes, restarts and partitions', async () => {
    for (const seed of seedsFor(40, 1306)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const proposals: Proposal[] = [];
      for (let round = 0; round < 25; round += 1) {
        const choice = sim.rng.int(0, 5);
        if (choice === 0) sim.crash(sim.rng.pick(sim.ids));
        else if (choice === 1) restartAll(sim);
        else if (choice === 2) {
          const shuffled = [...sim.ids].sort(() => sim.rng.float() - 0.5);
          const cut = sim.rng.int(1, 5);
          sim.partition(shuffled.slice(0, cut), shuffled.slice(cut));
        } else if (choice === 3) sim.heal();
        else sim.setNetwork(sim.rng.chance(0.5) ? UNRELIABLE : RELIABLE);
        const leader = sim.leader();
        if (leader !== null) {
          for (const value of values(`a-${seed}-${round}`, sim.rng.int(1, 6)))
            proposals.push(sim.propose(leader, value));
        }
        await sim.runFor(sim.rng.int(20, 300));
      }
      sim.heal();
      sim.setNetwork(RELIABLE);
      restartAll(sim);
      await agreeOne(sim, `final-${seed}`, 5, 10_000);
      await sim.runFor(200);
      acknowledgedSurvive(sim, proposals);
      await sameCommittedEverywhere(sim);
    }
  });

  it('makes progress between flapping links and commits everything once they settle', async () => {
    for (const seed of seedsFor(24, 1307)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await waitForLeader(sim, 2_000);
      const proposals: Proposal[] = [];
      for (let flap = 0; flap < 40; flap += 1) {
        if (flap % 2 === 0) {
          const shuffled = [...sim.ids].sort(() => sim.rng.float() - 0.5);
          sim.partition(shuffled.slice(0, 2), shuffled.slice(2));
        } else {
          sim.heal();
        }
        const leader = sim.leader();
        if (leader !== null) proposals.push(sim.propose(leader, `flap-${seed}-${flap}`));
        await sim.runFor(sim.rng.int(20, 120));
      }
      sim.heal();
      const lost = proposals.filter((proposal) => proposal.state !== 'ok').map((proposal) => proposal.value);
      await agreeAll(sim, lost, 5, 10_000);
      await agreeOne(sim, `final-${seed}`, 5);
      await sim.runFor(100);
      acknowledgedSurvive(sim, proposals);
      const counts = committedCounts(
        sim,
        proposals.map((proposal) => proposal.value),
      );
      for (const [value, count] of counts) ensure(sim, count === 5, `${value} is on ${count} of 5 servers`);
    }
  });

  it('has no leader and no commits when no group holds a majority, then recovers', async () => {
    for (const seed of seedsFor(40, 1308)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `base-${seed}`, 5);
      const shuffled = [...sim.ids].sort(() => sim.rng.float() - 0.5);
      sim.partition(shuffled.slice(0, 2), shuffled.slice(2, 4), shuffled.slice(4));
      for (const id of sim.ids) sim.propose(id, `split-${seed}`);
      await sim.runFor(2 * ELECTION_MS + 10);
      const stop = sim.onStep(() => {
        const leaders = sim.ids.filter((id) => sim.status(id)!.role === 'leader');
        if (leaders.length > 0) sim.fail(`${leaders} leads without a majority`);
      });
      await sim.runFor(2_000);
      stop();
      ensure(sim, sim.committedOn(`split-${seed}`) === 0, 'a write committed without a majority');
      sim.heal();
      await waitForLeader(sim, 3_000, 'a leader once the groups rejoin');
      await agreeOne(sim, `after-${seed}`, 5);
      await sameCommittedEverywhere(sim);
    }
  });

  it('repairs a lagging follower when the leader crashes mid-stream', async () => {
    for (const seed of seedsFor(24, 1309)) {
      const sim = createSimulation({ seed, nodes: 5, maxEntriesPerAppend: 16, maxInflight: 2 });
      await agreeOne(sim, `base-${seed}`, 5);
      const leader = sim.stableLeader()!;
      const lagging = sim.ids.find((id) => id !== leader)!;
      sim.crash(lagging);
      const written = values(`s-${seed}`, 300);
      await agreeAll(sim, written, 4, 5_000);
      sim.restart(lagging);
      // The leader streams the backlog to the restarted follower and crashes part way.
      await sim.runFor(sim.rng.int(2, 30));
      const partial = sim.persisted(lagging).entries.length;
      sim.crash(leader);
      await waitForLeader(sim, 3_000, 'a new leader mid-stream');
      await sim.runUntil(
        () => committedCounts(sim, [written.at(-1)!]).get(written.at(-1)!) === 4,
        3_000,
        'the lagging follower to finish catching up from the new leader',
      );
      sim.restart(leader);
      await agreeOne(sim, `final-${seed}`, 5);
      await sameCommittedEverywhere(sim);
      ensure(sim, partial <= sim.persisted(lagging).entries.length, 'the follower lost entries');
    }
  });
});
