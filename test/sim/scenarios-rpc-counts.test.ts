/**
 * RPC count and byte budgets, after the lab suites' TestCount and TestRPCBytes: an election, a
 * burst of agreements and an idle second each stay within a fixed number of RPC requests
 * (RequestVote, AppendEntries, Heartbeat), and a replicated command crosses the network about
 * once per follower. Measured on the simulator's counters; every failure names its seed.
 */
import { describe, it } from 'vitest';
import { createFrameEncoder } from '../../src/io/codec.js';
import { RAFT_MESSAGE_TYPES } from '../../src/machines/messages.js';
import {
  agreeOne,
  committedCounts,
  createSimulation,
  ensure,
  type Simulation,
  seedsFor,
  waitForLeader,
} from './simulator.js';

const verbose = process.env.DISKEYVAL_SIM_VERBOSE !== undefined;
const RAFT_TYPES = new Set<string>(RAFT_MESSAGE_TYPES);

const report = (what: string, counts: number[]): void => {
  if (verbose)
    console.info(`${what}: min ${Math.min(...counts)}, max ${Math.max(...counts)} (${counts.length} runs)`);
};

/** Proposes `count` values in one tick (the lab's back-to-back Start calls) and waits for all of them on every server. */
const burst = async (sim: Simulation, leader: string, prefix: string, count: number): Promise<void> => {
  const written = Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
  const proposals = written.map((value) => sim.propose(leader, value));
  await sim.runUntil(
    () => {
      const counts = committedCounts(sim, written);
      return written.every((value) => counts.get(value) === sim.ids.length);
    },
    2_000,
    `${count} agreements on every server`,
    1,
  );
  ensure(
    sim,
    proposals.every((proposal) => proposal.state !== 'failed'),
    'a write of the burst failed',
  );
};

describe('scenarios: RPC counts and bytes', () => {
  it('elects a leader of 3 servers with at most 30 RPC requests', async () => {
    const counts: number[] = [];
    for (const seed of seedsFor(80, 1501)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await sim.runUntil(() => sim.stableLeader() !== null, 2_000, 'the election', 1);
      const sent = sim.requestsSent();
      counts.push(sent);
      ensure(sim, sent >= 1 && sent <= 30, `the election took ${sent} RPC requests`);
      // Each candidate asks each peer at most once per pre-vote or vote round.
      const votes = sim.sentByType().RequestVote ?? 0;
      ensure(sim, votes <= 12, `${votes} RequestVote messages for one election`);
    }
    report('RPC requests for an election (3 servers)', counts);
  });

  it('runs 10 back-to-back agreements with at most 42 RPC requests', async () => {
    const counts: number[] = [];
    for (const seed of seedsFor(60, 1502)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(sim.rng.int(100, 200));
      const term = sim.status(leader)!.term;
      const before = sim.requestsSent();
      await burst(sim, leader, `c-${seed}`, 10);
      const sent = sim.requestsSent() - before;
      counts.push(sent);
      ensure(sim, sim.status(leader)!.term === term, 'the term changed during the agreements');
      ensure(sim, sent <= (10 + 1 + 3) * 3, `10 agreements took ${sent} RPC requests`);
    }
    report('RPC requests for 10 agreements (3 servers)', counts);
  });

  it('needs no more RPC requests for 1,000 proposals in one tick than for 10', async () => {
    const counts: number[] = [];
    for (const seed of seedsFor(20, 1503)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(sim.rng.int(100, 200));
      const before = sim.requestsSent();
      await burst(sim, leader, `k-${seed}`, 1_000);
      const sent = sim.requestsSent() - before;
      counts.push(sent);
      ensure(sim, sent <= 42, `1,000 agreements in one batch took ${sent} RPC requests`);
    }
    report('RPC requests for 1,000 agreements in one tick (3 servers)', counts);
  });

  it('sends at most 60 RPC requests, and no AppendEntries, in an idle second on 3 servers', async () => {
    const counts: number[] = [];
    for (const seed of seedsFor(40, 1504)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `idle-${seed}`, 3);
      await sim.runFor(100);
      const before = sim.requestsSent();
      const appendsBefore = sim.sentByType().AppendEntries ?? 0;
      await sim.runFor(1_000);
      const sent = sim.requestsSent() - before;
      counts.push(sent);
      ensure(sim, sent <= 3 * 20, `an idle second took ${sent} RPC requests`);
      ensure(sim, sent >= 2 * 10, `only ${sent} heartbeats in a second: the followers would time out`);
      const appends = (sim.sentByType().AppendEntries ?? 0) - appendsBefore;
      ensure(sim, appends === 0, `${appends} AppendEntries in an idle second`);
    }
    report('RPC requests in an idle second (3 servers)', counts);
  });

  it('keeps an idle second on 5 servers to one heartbeat per follower per interval', async () => {
    const counts: number[] = [];
    for (const seed of seedsFor(20, 1505)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `idle-${seed}`, 5);
      await sim.runFor(100);
      const before = sim.requestsSent();
      await sim.runFor(1_000);
      const sent = sim.requestsSent() - before;
      counts.push(sent);
      // 1,000 ms / 50 ms heartbeat = 20 rounds (21 at a boundary) to 4 followers.
      ensure(sim, sent <= 4 * 21, `an idle second on 5 servers took ${sent} RPC requests`);
    }
    report('RPC requests in an idle second (5 servers)', counts);
  });

  it('ships each command about once per follower (lab TestRPCBytes)', async () => {
    const ratios: number[] = [];
    for (const seed of seedsFor(20, 1506)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const encoder = createFrameEncoder();
      let bytes = 0;
      sim.observe((message) => {
        if (RAFT_TYPES.has(message.type)) bytes += encoder.messages([message]).byteLength;
      });
      await agreeOne(sim, `warm-${seed}`, 3);
      const before = bytes;
      let sent = 0;
      for (let index = 0; index < 10; index += 1) {
        let command = `${seed}-${index}-`;
        while (command.length < 5_000) command += String.fromCharCode(97 + sim.rng.int(0, 26));
        await agreeOne(sim, command, 3);
        sent += command.length;
      }
      const got = bytes - before;
      ratios.push(got / sent);
      ensure(sim, got <= 3 * sent + 50_000, `${got} bytes of RPCs for ${sent} bytes of commands`);
      // The commands really crossed: each follower got each one.
      ensure(sim, got >= 2 * sent, `only ${got} bytes for ${sent} bytes of commands to 2 followers`);
    }
    if (verbose) console.info(`RPC bytes per command byte: max ${Math.max(...ratios).toFixed(3)}`);
  });
});
