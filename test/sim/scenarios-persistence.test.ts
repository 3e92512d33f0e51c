/**
 * Persistence scenarios, after the lab suites' 2C/3C persistence tests: a restarted server keeps
 * its term, vote and log (and loses everything else), committed entries survive when every server
 * crashes, when the leader and followers crash in turn, and across repeated partitions with
 * restarts; a restarted voter never votes twice in one term. Every failure names its seed.
 */
import { describe, it } from 'vitest';
import { decodeCommand } from '../../src/io/command.js';
import type { RequestVoteResponse } from '../../src/machines/messages.js';
import {
  agreeOne,
  committedCounts,
  createSimulation,
  ensure,
  isolate,
  type Proposal,
  type Simulation,
  sameCommittedEverywhere,
  seedsFor,
  waitForLeader,
} from './simulator.js';

const ELECTION_MS = 150;

const holds = (sim: Simulation, id: string, value: string): boolean =>
  sim.persisted(id).entries.some((entry) => {
    if (entry.kind !== 'command' || entry.data === null) return false;
    const command = decodeCommand(entry.data);
    return command.op === 'set' && command.value === value;
  });

/** Waits until `value` is committed on every server (the lab's `wait(index, servers)`). */
const everywhere = (sim: Simulation, value: string, boundMs = 3_000): Promise<number> =>
  sim.runUntil(() => sim.committedOn(value) === sim.ids.length, boundMs, `${value} on every server`);

describe('scenarios: persistence', () => {
  it('keeps committed entries when every server crashes and restarts', async () => {
    for (const seed of seedsFor(60, 1601)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `11-${seed}`, 3);
      const terms = sim.ids.map((id) => sim.status(id)!.term);
      for (const id of sim.ids) sim.crash(id);
      for (const id of sim.ids) ensure(sim, holds(sim, id, `11-${seed}`), `${id} lost the entry on disk`);
      await sim.runFor(sim.rng.int(0, 500));
      for (const id of sim.ids) sim.restart(id);
      sim.ids.forEach((id, index) => {
        const status = sim.status(id)!;
        ensure(
          sim,
          status.term === terms[index],
          `${id} restarted at term ${status.term}, not ${terms[index]}`,
        );
        ensure(sim, status.commitIndex === 0 && status.appliedIndex === 0, `${id} kept volatile state`);
        ensure(sim, status.role === 'follower', `${id} restarted as ${status.role}`);
      });
      await agreeOne(sim, `12-${seed}`, 3, 3_000);
      await everywhere(sim, `11-${seed}`);
      await sameCommittedEverywhere(sim);
      // The store is rebuilt from the log: every server applies both writes again.
      for (const id of sim.ids)
        ensure(sim, sim.node(id)!.get('k') === `12-${seed}`, `${id} did not re-apply`);
    }
  });

  it('keeps committed entries when the leader and the followers crash in turn (lab TestPersist1)', async () => {
    for (const seed of seedsFor(40, 1602)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `12-${seed}`, 3);
      const leader1 = sim.stableLeader()!;
      sim.restart(leader1);
      await agreeOne(sim, `13-${seed}`, 3, 3_000);
      const leader2 = await waitForLeader(sim);
      isolate(sim, [leader2]);
      await agreeOne(sim, `14-${seed}`, 2, 3_000);
      sim.restart(leader2);
      sim.heal();
      await everywhere(sim, `14-${seed}`);
      const leader3 = await waitForLeader(sim);
      const i3 = sim.ids[(sim.ids.indexOf(leader3) + 1) % 3]!;
      isolate(sim, [i3]);
      await agreeOne(sim, `15-${seed}`, 2, 3_000);
      sim.restart(i3);
      sim.heal();
      await agreeOne(sim, `16-${seed}`, 3, 3_000);
      const counts = committedCounts(
        sim,
        [12, 13, 14, 15, 16].map((n) => `${n}-${seed}`),
      );
      for (const [value, count] of counts) ensure(sim, count === 3, `${value} is on ${count} of 3`);
      await sameCommittedEverywhere(sim);
    }
  });

  it('keeps commits across repeated partitions with restarts on 5 servers (lab TestPersist2)', async () => {
    for (const seed of seedsFor(20, 1603)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const apart = new Set<string>();
      const ring = (leader: string, offset: number): string =>
        sim.ids[(sim.ids.indexOf(leader) + offset) % 5]!;
      let index = 1;
      const written: string[] = [];
      const one = async (expected: number): Promise<void> => {
        const value = `${10 + index}-${seed}`;
        index += 1;
        written.push(value);
        await agreeOne(sim, value, expected, 5_000);
      };
      for (let iteration = 0; iteration < 5; iteration += 1) {
        await one(5);
        const leader1 = await waitForLeader(sim);
        apart.add(ring(leader1, 1)).add(ring(leader1, 2));
        isolate(sim, apart);
        await one(3);
        for (const offset of [0, 3, 4]) apart.add(ring(leader1, offset));
        isolate(sim, apart);
        for (const offset of [1, 2]) {
          sim.restart(ring(leader1, offset));
          apart.delete(ring(leader1, offset));
        }
        isolate(sim, apart);
        await sim.runFor(ELECTION_MS);
        sim.restart(ring(leader1, 3));
        apart.delete(ring(leader1, 3));
        isolate(sim, apart);
        await one(3);
        apart.delete(ring(leader1, 4));
        apart.delete(ring(leader1, 0));
        isolate(sim, apart);
      }
      await agreeOne(sim, `1000-${seed}`, 5, 5_000);
      const counts = committedCounts(sim, written);
      for (const [value, count] of counts) ensure(sim, count === 5, `${value} is on ${count} of 5`);
      await sameCommittedEverywhere(sim);
    }
  });

  it('elects the restarted server that holds the newest commit (lab TestPersist3)', async () => {
    for (const seed of seedsFor(60, 1604)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `101-${seed}`, 3);
      const leader = sim.stableLeader()!;
      const ring = (offset: number): string => sim.ids[(sim.ids.indexOf(leader) + offset) % 3]!;
      isolate(sim, [ring(2)]);
      await agreeOne(sim, `102-${seed}`, 2);
      sim.crash(ring(0));
      sim.crash(ring(1));
      sim.heal();
      sim.restart(ring(0));
      await agreeOne(sim, `103-${seed}`, 2, 5_000);
      ensure(sim, sim.stableLeader() === ring(0), `${sim.stableLeader()} leads without 102-${seed}`);
      sim.restart(ring(1));
      await agreeOne(sim, `104-${seed}`, 3, 3_000);
      const counts = committedCounts(
        sim,
        [101, 102, 103, 104].map((n) => `${n}-${seed}`),
      );
      for (const [value, count] of counts) ensure(sim, count === 3, `${value} is on ${count} of 3`);
      await sameCommittedEverywhere(sim);
    }
  });

  it('never lets a restarted server vote twice in one term', async () => {
    for (const seed of seedsFor(60, 1605)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `v-${seed}`, 5);
      const leader = sim.stableLeader()!;
      const [voter, first, second] = sim.ids.filter((id) => id !== leader) as [string, string, string];
      sim.crash(first);
      sim.crash(second);
      const term = sim.status(leader)!.term + 1;
      const answers: RequestVoteResponse[] = [];
      sim.observe((message) => {
        if (message.type === 'RequestVoteResponse' && message.from === voter && !message.preVote)
          answers.push(message);
      });
      const ask = (from: string): void =>
        sim.inject({
          type: 'RequestVote',
          from,
          to: voter,
          term,
          lastLogIndex: 10_000,
          lastLogTerm: term - 1,
          preVote: false,
        });
      ask(first);
      await sim.runFor(2);
      ensure(sim, answers.length === 1, `${answers.length} answers to the first candidate`);
      ensure(sim, answers[0]!.voteGranted, 'the first candidate did not get the vote');
      sim.restart(voter);
      const hard = sim.persisted(voter).hardState;
      ensure(sim, hard.term === term && hard.votedFor === first, `persisted ${JSON.stringify(hard)}`);
      ensure(sim, sim.status(voter)!.term === term, `restarted at term ${sim.status(voter)!.term}`);
      ask(second);
      ask(first);
      await sim.runFor(2);
      const [toSecond, toFirst] = answers.slice(1);
      ensure(
        sim,
        toSecond?.to === second && !toSecond.voteGranted,
        'the restarted voter voted twice in one term',
      );
      ensure(
        sim,
        toFirst?.to === first && toFirst.voteGranted,
        'the restarted voter forgot whom it voted for',
      );
      sim.restart(first);
      sim.restart(second);
      await agreeOne(sim, `after-${seed}`, 5, 5_000);
    }
  });

  it('restarts a candidate in the middle of its campaign with its term and self-vote', async () => {
    for (const seed of seedsFor(60, 1606)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `c-${seed}`, 3);
      const leader = sim.stableLeader()!;
      isolate(sim, [leader]);
      let crashed: { id: string; term: number } | null = null;
      const stop = sim.onStep(() => {
        if (crashed) return;
        for (const id of sim.ids) {
          if (id === leader || !sim.isAlive(id)) continue;
          const context = sim.node(id)!.snapshot().context;
          if (context.votedFor === id && context.currentTerm > sim.status(leader)!.term) {
            crashed = { id, term: context.currentTerm };
            sim.crash(id);
            return;
          }
        }
      });
      await sim.runUntil(() => crashed !== null, 3_000, 'a follower to start a campaign');
      stop();
      const { id, term } = crashed as unknown as { id: string; term: number };
      sim.restart(id);
      const context = sim.node(id)!.snapshot().context;
      ensure(
        sim,
        context.currentTerm === term && context.votedFor === id,
        `restarted at ${context.currentTerm}`,
      );
      sim.heal();
      await agreeOne(sim, `after-${seed}`, 3, 5_000);
      ensure(
        sim,
        sim.status(sim.stableLeader()!)!.term >= term,
        'a leader of an older term after the campaign',
      );
    }
  });

  it('keeps every acknowledged write through repeated whole-cluster crashes with writes in flight', async () => {
    for (const seed of seedsFor(30, 1607)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const proposals: Proposal[] = [];
      const committedAtCrash: string[] = [];
      for (let round = 0; round < 8; round += 1) {
        const leader = await waitForLeader(sim, 3_000);
        const batch = Array.from({ length: 20 }, (_, index) => `f-${seed}-${round}-${index}`);
        for (const value of batch) proposals.push(sim.propose(leader, value));
        await sim.runFor(sim.rng.int(0, 25));
        const counts = committedCounts(sim, batch);
        for (const [value, count] of counts) if (count > 0) committedAtCrash.push(value);
        for (const id of sim.ids) sim.crash(id);
        for (const id of sim.ids) sim.restart(id);
      }
      await agreeOne(sim, `final-${seed}`, 3, 3_000);
      await sim.runFor(100);
      const acknowledged = proposals
        .filter((proposal) => proposal.state === 'ok')
        .map((proposal) => proposal.value);
      const counts = committedCounts(sim, [...acknowledged, ...committedAtCrash]);
      for (const [value, count] of counts)
        ensure(sim, count === 3, `${value}, committed before a crash, is on ${count}`);
      ensure(sim, committedAtCrash.length > 0, 'nothing committed before any crash');
      await sameCommittedEverywhere(sim);
    }
  });
});
