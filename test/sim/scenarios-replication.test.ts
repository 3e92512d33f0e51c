/**
 * Log replication and commit scenarios, after the lab suites' 2B/3B tests and the seed's backlog:
 * basic agreement, follower and leader failure, no agreement without a majority, concurrent
 * proposals in one batch, a rejoining partitioned leader, fast backup with conflict hints,
 * monotonic commit and apply indexes, agreement over an unreliable network, and divergent logs
 * being repaired. Every failure names its seed and the command that replays it.
 */
import { describe, it } from 'vitest';
import type { Node as RaftNode } from '../../src/actors/node.js';
import { decodeCommand } from '../../src/io/command.js';
import type { Entry } from '../../src/machines/messages.js';
import {
  agreeAll,
  agreeOne,
  committedCounts,
  committedStrings,
  converged,
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
const verbose = process.env.DISKEYVAL_SIM_VERBOSE !== undefined;

const others = (sim: Simulation, id: string): string[] => sim.ids.filter((other) => other !== id);

const sameLogEverywhere = async (sim: Simulation): Promise<void> => {
  await converged(sim);
  const [first, ...rest] = sim.ids;
  const reference = sim.persisted(first!).entries;
  for (const id of rest) {
    const entries = sim.persisted(id).entries;
    ensure(
      sim,
      entries.length === reference.length,
      `${id} holds ${entries.length} entries, ${first} ${reference.length}`,
    );
    entries.forEach((entry, index) => {
      ensure(sim, entry.term === reference[index]!.term, `${id} and ${first} differ at index ${index + 1}`);
    });
  }
};

const holdsValue = (entries: readonly Entry[], value: string): boolean =>
  entries.some((entry) => {
    if (entry.kind !== 'command' || entry.data === null) return false;
    const command = decodeCommand(entry.data);
    return command.op === 'set' && command.value === value;
  });

const setValueOf = (entry: Entry): unknown => {
  if (entry.kind !== 'command' || entry.data === null) return undefined;
  const command = decodeCommand(entry.data);
  return command.op === 'set' ? command.value : undefined;
};

/** One entry as a server held it: a write replaced by a new leader is gone from that index and term. */
type Placed = { index: number; term: number; value: string };

const placedIn = (sim: Simulation, id: string, wanted: readonly string[]): Placed[] => {
  const set = new Set(wanted);
  const placed: Placed[] = [];
  sim.persisted(id).entries.forEach((entry, offset) => {
    const value = setValueOf(entry);
    if (typeof value === 'string' && set.has(value))
      placed.push({ index: offset + 1, term: entry.term, value });
  });
  return placed;
};

/** The placed entries that some server still holds at the same index and term. */
const survivors = (sim: Simulation, placed: readonly Placed[]): Placed[] =>
  placed.filter((entry) =>
    sim.ids.some((id) => {
      const held = sim.persisted(id).entries[entry.index - 1];
      return held !== undefined && held.term === entry.term && setValueOf(held) === entry.value;
    }),
  );

/**
 * A write a server took as leader and could not commit may still complete after it rejoins (it
 * forwards the call to the new leader, and the store applies the request once): what was
 * acknowledged must be committed everywhere.
 */
const acknowledgedEverywhere = (sim: Simulation, proposals: readonly Proposal[]): void => {
  const acknowledged = proposals
    .filter((proposal) => proposal.state === 'ok')
    .map((proposal) => proposal.value);
  for (const [value, count] of committedCounts(sim, acknowledged)) {
    ensure(sim, count === sim.ids.length, `acknowledged ${value} is committed on ${count} servers`);
  }
};

/** Waits for every proposal to settle, then commits one more write everywhere: the logs are quiet. */
const quiesce = async (sim: Simulation, proposals: readonly Proposal[], tag: string): Promise<void> => {
  await sim.runUntil(
    () => proposals.every((proposal) => proposal.state !== 'pending'),
    10_000,
    'every proposal to settle',
  );
  await agreeOne(sim, `quiet-${tag}`, sim.ids.length, 5_000);
};

const values = (prefix: string, count: number): string[] =>
  Array.from({ length: count }, (_, index) => `${prefix}-${index}`);

describe('scenarios: log replication and commit', () => {
  it('basic agreement: each entry commits on every server, in order', async () => {
    for (const seed of seedsFor(50, 1201)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await waitForLeader(sim, 1_000);
      const proposed: string[] = [];
      for (let n = 1; n <= 3; n += 1) {
        const value = `basic-${seed}-${n}`;
        ensure(sim, sim.committedOn(value) === 0, `${value} committed before it was proposed`);
        await agreeOne(sim, value, 3, 2_000);
        proposed.push(value);
        for (const id of sim.ids) {
          const committed = committedStrings(sim, id);
          ensure(sim, JSON.stringify(committed) === JSON.stringify(proposed), `${id} committed ${committed}`);
        }
      }
    }
  });

  it('basic agreement on 5 servers: 30 sequential writes, identical logs, applied everywhere', async () => {
    for (const seed of seedsFor(12, 1202)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const leader = await waitForLeader(sim, 2_000);
      const written = values(`five-${seed}`, 30);
      for (const value of written) {
        const proposal = sim.propose(leader, value);
        await sim.runUntil(() => proposal.state !== 'pending', 1_000, `the write of ${value}`);
        ensure(sim, proposal.state === 'ok', `write of ${value} failed: ${proposal.error}`);
      }
      await sim.runFor(2 * 50);
      const committed = await sameCommittedEverywhere(sim);
      ensure(
        sim,
        JSON.stringify(committed) === JSON.stringify(written),
        'the committed values differ from the writes',
      );
      for (const id of sim.ids) {
        const status = sim.status(id)!;
        ensure(
          sim,
          status.appliedIndex === status.commitIndex,
          `${id} applied ${status.appliedIndex} of ${status.commitIndex}`,
        );
        ensure(
          sim,
          sim.node(id)!.get('k') === written.at(-1),
          `${id} reads ${String(sim.node(id)!.get('k'))}`,
        );
      }
      ensure(sim, sim.stableLeader() === leader, 'the leader changed during a fault-free run');
    }
  });

  it('follower failure: agreement continues with one follower disconnected, which catches up later', async () => {
    for (const seed of seedsFor(50, 1203)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `101-${seed}`, 3);
      const leader = sim.stableLeader()!;
      const follower = others(sim, leader)[0]!;
      isolate(sim, [follower]);
      for (let n = 102; n <= 105; n += 1) {
        await agreeOne(sim, `${n}-${seed}`, 2);
        await sim.runFor(sim.rng.int(0, ELECTION_MS));
      }
      ensure(sim, sim.committedOn(`105-${seed}`) === 2, 'the disconnected follower committed while apart');
      sim.heal();
      await agreeOne(sim, `106-${seed}`, 3);
      await agreeOne(sim, `107-${seed}`, 3);
      await sim.runUntil(() => sim.committedOn(`105-${seed}`) === 3, 2_000, 'the follower to catch up');
      await sameCommittedEverywhere(sim);
    }
  });

  it('follower failure: with every follower gone, the leader commits nothing', async () => {
    for (const seed of seedsFor(40, 1204)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `101-${seed}`, 3);
      const leader = sim.stableLeader()!;
      const [first, second] = others(sim, leader) as [string, string];
      isolate(sim, [first]);
      await agreeOne(sim, `102-${seed}`, 2);
      await sim.runFor(2 * ELECTION_MS);
      await agreeOne(sim, `103-${seed}`, 2);
      const leaderNow = sim.stableLeader()!;
      const commitBefore = sim.status(leaderNow)!.commitIndex;
      isolate(sim, [first, second, leader]);
      const lastBefore = sim.status(leaderNow)!.lastIndex;
      const proposal = sim.propose(leaderNow, `104-${seed}`);
      await sim.runFor(1);
      ensure(sim, sim.status(leaderNow)!.lastIndex === lastBefore + 1, 'the leader did not append the write');
      const stop = sim.onStep(() => {
        if (sim.committedOn(`104-${seed}`) > 0) sim.fail('a write committed without a majority');
      });
      await sim.runFor(4 * ELECTION_MS);
      stop();
      ensure(sim, proposal.state !== 'ok', 'the write without a majority succeeded');
      ensure(
        sim,
        sim.status(leaderNow)!.commitIndex === commitBefore,
        'the lone leader advanced its commit index',
      );
      sim.heal();
      await agreeOne(sim, `105-${seed}`, 3);
    }
  });

  it('leader failure: a new leader commits; committed entries survive, uncommitted ones may go', async () => {
    for (const seed of seedsFor(50, 1205)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `101-${seed}`, 3);
      const first = sim.stableLeader()!;
      // Entries in flight when the leader crashes may commit or not; committed ones must stay.
      const inFlight = values(`flight-${seed}`, 3).map((value) => sim.propose(first, value));
      await sim.runFor(sim.rng.int(0, 4));
      // Entries the leader takes but cannot send (its links are down) before it crashes.
      isolate(sim, [first]);
      const doomed = values(`doomed-${seed}`, 3).map((value) => sim.propose(first, value));
      await sim.runFor(1);
      for (const value of values(`doomed-${seed}`, 3)) {
        ensure(sim, holdsValue(sim.persisted(first).entries, value), `the leader did not take ${value}`);
      }
      const lastBefore = sim.persisted(first).entries.length;
      const committedBefore = committedStrings(sim, first);
      sim.crash(first);
      // Its last messages die with the partition (the network checks links on delivery).
      await sim.runFor(10);
      sim.heal();
      ensure(
        sim,
        doomed.every((proposal) => proposal.state === 'failed'),
        'a write on a crashed leader succeeded',
      );
      await agreeOne(sim, `102-${seed}`, 2, 3_000);
      const second = sim.stableLeader()!;
      ensure(sim, second !== first, 'the crashed leader still leads');
      // The second leader fails too; nothing commits with one server left.
      isolate(sim, [second]);
      for (const id of sim.ids) if (sim.isAlive(id)) sim.propose(id, `103-${seed}`);
      await sim.runFor(4 * ELECTION_MS);
      ensure(sim, sim.committedOn(`103-${seed}`) === 0, 'a write committed on a single server');
      sim.heal();
      sim.restart(first);
      ensure(sim, sim.persisted(first).entries.length === lastBefore, 'the restart lost persisted entries');
      await agreeOne(sim, `104-${seed}`, 3, 5_000);
      for (const value of [`101-${seed}`, `102-${seed}`, `104-${seed}`]) {
        ensure(sim, sim.committedOn(value) === 3, `${value} is not committed everywhere`);
      }
      const committedAfter = committedStrings(sim, first);
      ensure(
        sim,
        JSON.stringify(committedAfter.slice(0, committedBefore.length)) === JSON.stringify(committedBefore),
        'entries committed before the crash changed',
      );
      inFlight.forEach((proposal, index) => {
        if (proposal.state === 'ok')
          ensure(sim, sim.committedOn(`flight-${seed}-${index}`) === 3, 'an acknowledged write was lost');
      });
      for (const value of values(`doomed-${seed}`, 3)) {
        ensure(sim, sim.committedOn(value) === 0, `${value}, never replicated, committed`);
        ensure(
          sim,
          !holdsValue(sim.persisted(first).entries, value),
          `${value} stayed in the old leader's log`,
        );
      }
      await sameLogEverywhere(sim);
    }
  });

  it('no agreement without a majority of 5; commits resume once the followers reconnect', async () => {
    for (const seed of seedsFor(50, 1206)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `10-${seed}`, 5);
      const leader = sim.stableLeader()!;
      const apart = others(sim, leader).slice(0, 3);
      isolate(sim, apart);
      const lastBefore = sim.status(leader)!.lastIndex;
      const proposal = sim.propose(leader, `20-${seed}`);
      await sim.runFor(2 * ELECTION_MS);
      ensure(
        sim,
        sim.persisted(leader).entries.length === lastBefore + 1,
        'the leader did not take the write',
      );
      ensure(sim, sim.committedOn(`20-${seed}`) === 0, 'a write committed with 2 of 5 servers');
      ensure(sim, proposal.state !== 'ok', 'a write without a majority succeeded');
      sim.heal();
      await waitForLeader(sim, 3_000);
      await agreeOne(sim, `30-${seed}`, 5);
      await agreeOne(sim, `1000-${seed}`, 5);
      await sameCommittedEverywhere(sim);
    }
  });

  it('commits many proposals made in one tick as one batch', async () => {
    for (const seed of seedsFor(50, 1207)) {
      // FIFO links (a fixed delay), like the TCP transport: with per-message reordering the
      // commit broadcast can overtake the burst, draw a rejection and a resend.
      const sim = createSimulation({ seed, nodes: 3, network: { minDelayMs: 2, maxDelayMs: 2 } });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(100);
      const node = sim.node(leader)!;
      const batchesBefore = node.metrics().proposalBatches;
      let carrying = 0;
      let shipped = 0;
      sim.observe((message) => {
        if (message.type !== 'AppendEntries' || message.entries.length === 0) return;
        carrying += 1;
        shipped += message.entries.length;
      });
      const written = values(`burst-${seed}`, 100);
      const proposals = written.map((value) => sim.propose(leader, value));
      await sim.runUntil(
        () => proposals.every((proposal) => proposal.state !== 'pending'),
        1_000,
        'the burst',
      );
      ensure(
        sim,
        proposals.every((proposal) => proposal.state === 'ok'),
        'a write of the burst failed',
      );
      ensure(
        sim,
        node.metrics().proposalBatches === batchesBefore + 1,
        `the burst took ${node.metrics().proposalBatches - batchesBefore} batches`,
      );
      // One AppendEntries per follower carries the whole burst: one log append, one send per peer.
      ensure(
        sim,
        carrying === 2 && shipped === 200,
        `the burst went out in ${carrying} AppendEntries (${shipped} entries)`,
      );
      await sim.runFor(50);
      const committed = await sameCommittedEverywhere(sim);
      ensure(sim, JSON.stringify(committed) === JSON.stringify(written), 'the burst committed out of order');
      // The burst sits at consecutive indexes.
      const entries = sim.persisted(leader).entries;
      const first = entries.findIndex((entry) => entry.kind === 'command');
      ensure(
        sim,
        entries.slice(first, first + 100).every((entry) => entry.kind === 'command'),
        'the burst is split',
      );
    }
  });

  it('replaces the uncommitted entries of a partitioned leader when it rejoins', async () => {
    for (const seed of seedsFor(60, 1208)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `101-${seed}`, 3);
      const leader1 = sim.stableLeader()!;
      isolate(sim, [leader1]);
      const lost = values(`lost-${seed}`, 3);
      const proposals = lost.map((value) => sim.propose(leader1, value));
      await sim.runFor(1);
      const placed = placedIn(sim, leader1, lost);
      ensure(sim, placed.length === 3, 'the leader did not take them');
      await agreeOne(sim, `103-${seed}`, 2);
      for (const value of lost) ensure(sim, sim.committedOn(value) === 0, `${value} committed while cut off`);
      const leader2 = sim.stableLeader()!;
      ensure(sim, leader2 !== leader1, 'the isolated leader is still stable');
      // New leader cut off, old one back.
      isolate(sim, [leader2]);
      await agreeOne(sim, `104-${seed}`, 2, 5_000);
      ensure(sim, sim.stableLeader() !== leader1, 'the old leader, with a stale log, won again');
      sim.heal();
      await agreeOne(sim, `105-${seed}`, 3, 5_000);
      await quiesce(sim, proposals, `${seed}`);
      const kept = survivors(sim, placed);
      ensure(
        sim,
        kept.length === 0,
        `entries of the partitioned leader survive at ${kept.map((e) => e.index)}`,
      );
      ensure(sim, sim.status(leader1)!.lastIndex >= placed.at(-1)!.index, 'the rejoined log is short');
      acknowledgedEverywhere(sim, proposals);
      await sameLogEverywhere(sim);
    }
  });

  it('backs up quickly over divergent logs with conflict hints (lab TestBackup)', async () => {
    const rejectionCounts: number[] = [];
    for (const seed of seedsFor(15, 1209)) {
      const sim = createSimulation({ seed, nodes: 5 });
      // Rejections of an AppendEntries whose prevLogIndex holds a conflicting entry: the back-off
      // steps. (A short log is one step too; reordered pipelined appends draw a few more rejections.)
      let rejections = 0;
      let conflicts = 0;
      let appendsSent = 0;
      sim.observe((message) => {
        if (message.type === 'AppendEntriesResponse' && !message.success) {
          rejections += 1;
          if (message.conflictTerm > 0) conflicts += 1;
        }
        if (message.type === 'AppendEntries') appendsSent += 1;
      });
      await agreeOne(sim, `first-${seed}`, 5);
      const leader1 = sim.stableLeader()!;
      const ring = (offset: number): string => sim.ids[(sim.ids.indexOf(leader1) + offset) % 5]!;
      isolate(sim, [ring(2), ring(3), ring(4)]);
      // 50 entries that cannot commit: the leader and one follower hold them.
      const proposals = values(`a-${seed}`, 50).map((value) => sim.propose(leader1, value));
      await sim.runFor(ELECTION_MS / 2);
      const placed = placedIn(sim, leader1, values(`a-${seed}`, 50));
      ensure(sim, placed.length === 50, `the first leader took ${placed.length} of 50`);
      isolate(sim, [ring(0), ring(1)]);
      // 50 that commit on the other three.
      for (const value of values(`b-${seed}`, 50)) await agreeOne(sim, value, 3);
      for (const [value, count] of committedCounts(sim, values(`a-${seed}`, 50))) {
        ensure(sim, count === 0, `${value}, never on a majority, is committed on ${count}`);
      }
      const leader2 = sim.stableLeader()!;
      let other = ring(2);
      if (other === leader2) other = ring(3);
      isolate(sim, [ring(0), ring(1), other]);
      // 50 more that cannot commit: leader2 and one follower hold them.
      proposals.push(...values(`c-${seed}`, 50).map((value) => sim.propose(leader2, value)));
      await sim.runFor(ELECTION_MS / 2);
      placed.push(...placedIn(sim, leader2, values(`c-${seed}`, 50)));
      ensure(sim, placed.length === 100, `the second leader took ${placed.length - 50} of 50`);
      // The original leader, its follower and `other` come back; the rest leave.
      const back = [ring(0), ring(1), other];
      isolate(
        sim,
        sim.ids.filter((id) => !back.includes(id)),
      );
      const conflictsBefore = conflicts;
      for (const value of values(`d-${seed}`, 50)) await agreeOne(sim, value, 3);
      const conflictsFirstRepair = conflicts - conflictsBefore;
      sim.heal();
      await agreeOne(sim, `last-${seed}`, 5);
      await quiesce(sim, proposals, `${seed}`);
      // The divergent entries are gone from every log (their writes may complete later, forwarded).
      const kept = survivors(sim, placed);
      ensure(sim, kept.length === 0, `${kept.length} divergent entries survive, first at ${kept[0]?.index}`);
      acknowledgedEverywhere(sim, proposals);
      const counts = committedCounts(sim, [...values(`b-${seed}`, 50), ...values(`d-${seed}`, 50)]);
      for (const [value, count] of counts) ensure(sim, count === 5, `${value} is committed on ${count} of 5`);
      await sameLogEverywhere(sim);
      rejectionCounts.push(conflicts);
      // Without the hint each follower 50 divergent entries off draws about 50 conflicting
      // rejections; with it, one per divergent term.
      ensure(
        sim,
        conflictsFirstRepair <= 2 * 2,
        `${conflictsFirstRepair} conflict rejections to repair two followers`,
      );
      ensure(sim, conflicts <= 4 * 2, `${conflicts} conflict rejections over the whole run`);
      ensure(sim, rejections <= 40, `${rejections} AppendEntries rejections over the whole run`);
      ensure(sim, appendsSent > 0, 'no AppendEntries observed');
    }
    if (verbose) console.info(`TestBackup: conflict rejections per run ${rejectionCounts.join(', ')}`);
  });

  it('commits an entry only once a majority holds it', async () => {
    for (const seed of seedsFor(60, 1210)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `base-${seed}`, 5);
      const leader = sim.stableLeader()!;
      const [a, b, c, d] = others(sim, leader) as [string, string, string, string];
      sim.partition([leader, a], [b], [c], [d]);
      const proposal = sim.propose(leader, `maj-${seed}`);
      await sim.runFor(100);
      ensure(
        sim,
        holdsValue(sim.persisted(a).entries, `maj-${seed}`),
        'the connected follower did not get the entry',
      );
      ensure(sim, sim.committedOn(`maj-${seed}`) === 0, 'the entry committed on 2 of 5 servers');
      ensure(sim, proposal.state === 'pending', `the write is ${proposal.state} with 2 of 5`);
      sim.partition([leader, a, b], [c], [d]);
      await sim.runUntil(() => proposal.state === 'ok', 1_000, 'the commit once 3 of 5 hold the entry');
      await sim.runFor(20);
      ensure(sim, sim.committedOn(`maj-${seed}`) === 3, `committed on ${sim.committedOn(`maj-${seed}`)}`);
      sim.heal();
      await sim.runUntil(() => sim.committedOn(`maj-${seed}`) === 5, 2_000, 'everyone to learn the commit');
    }
  });

  it('keeps every commit index and applied index monotonic per server through crashes and partitions', async () => {
    for (const seed of seedsFor(30, 1211)) {
      const sim = createSimulation({ seed, nodes: 5, network: UNRELIABLE });
      const seen = new WeakMap<RaftNode, { commit: number; applied: number }>();
      let observations = 0;
      sim.onStep(() => {
        for (const id of sim.ids) {
          const node = sim.node(id);
          if (!node || node.isStopped()) continue;
          const status = node.status();
          const last = seen.get(node);
          if (last && (status.commitIndex < last.commit || status.appliedIndex < last.applied)) {
            sim.fail(
              `${id}: commit ${last.commit}→${status.commitIndex}, applied ${last.applied}→${status.appliedIndex}`,
            );
          }
          if (status.appliedIndex > status.commitIndex) sim.fail(`${id} applied past its commit index`);
          seen.set(node, { commit: status.commitIndex, applied: status.appliedIndex });
          observations += 1;
        }
      });
      let written = 0;
      for (let round = 0; round < 15; round += 1) {
        const choice = sim.rng.int(0, 4);
        if (choice === 0) sim.restart(sim.rng.pick(sim.ids));
        else if (choice === 1) isolate(sim, [sim.rng.pick(sim.ids), sim.rng.pick(sim.ids)]);
        else if (choice === 2) sim.heal();
        else sim.crash(sim.rng.pick(sim.ids));
        if (sim.ids.filter((id) => sim.isAlive(id)).length < 3) {
          for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
        }
        const leader = sim.leader();
        if (leader)
          for (let n = sim.rng.int(1, 20); n > 0; n -= 1) sim.propose(leader, `m-${seed}-${written++}`);
        await sim.runFor(sim.rng.int(50, 400));
      }
      sim.heal();
      sim.setNetwork(RELIABLE);
      for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
      await agreeOne(sim, `final-${seed}`, 5);
      ensure(sim, observations > 1_000, `only ${observations} observations`);
    }
  });

  it('applies every committed entry, and never more, under bursts with crashes', async () => {
    for (const seed of seedsFor(20, 1212)) {
      const sim = createSimulation({ seed, nodes: 3 });
      let maxLag = 0;
      sim.onStep(() => {
        for (const id of sim.ids) {
          const status = sim.status(id);
          if (!status) continue;
          if (status.appliedIndex > status.commitIndex) sim.fail(`${id} applied past commit`);
          maxLag = Math.max(maxLag, status.commitIndex - status.appliedIndex);
        }
      });
      const acknowledged: string[] = [];
      for (let round = 0; round < 6; round += 1) {
        const leader = await waitForLeader(sim, 3_000);
        const burst = values(`s-${seed}-${round}`, 200);
        const proposals = burst.map((value) => sim.propose(leader, value));
        await sim.runFor(sim.rng.int(0, 10));
        sim.restart(sim.rng.pick(sim.ids));
        await sim.runFor(500);
        proposals.forEach((proposal, index) => {
          if (proposal.state === 'ok') acknowledged.push(burst[index]!);
        });
      }
      await agreeOne(sim, `final-${seed}`, 3);
      await sim.runFor(100);
      const commit = sim.status(sim.stableLeader()!)!.commitIndex;
      for (const id of sim.ids) {
        const status = sim.status(id)!;
        ensure(sim, status.commitIndex === commit, `${id} commit ${status.commitIndex}, leader ${commit}`);
        ensure(sim, status.appliedIndex === commit, `${id} applied ${status.appliedIndex} of ${commit}`);
      }
      const counts = committedCounts(sim, acknowledged);
      for (const [value, count] of counts)
        ensure(sim, count === 3, `acknowledged ${value} is on ${count} servers`);
      ensure(sim, acknowledged.length > 0, 'no write was acknowledged');
      ensure(sim, maxLag === 0, `a server's applied index lagged its commit index by ${maxLag} after a step`);
    }
  });

  it('agrees over an unreliable network (lab TestUnreliableAgree)', async () => {
    for (const seed of seedsFor(20, 1213)) {
      const sim = createSimulation({ seed, nodes: 5, network: UNRELIABLE });
      for (let iteration = 1; iteration < 30; iteration += 1) {
        await agreeAll(
          sim,
          [0, 1, 2, 3].map((client) => `u-${seed}-${iteration}-${client}`),
          1,
          20_000,
        );
        await agreeOne(sim, `u-${seed}-${iteration}`, 1, 20_000);
      }
      sim.setNetwork(RELIABLE);
      await agreeOne(sim, `u-${seed}-final`, 5);
      await sameCommittedEverywhere(sim);
    }
  });

  it('tolerates heavy delay, duplication and reordering of messages', async () => {
    for (const seed of seedsFor(40, 1214)) {
      const sim = createSimulation({
        seed,
        nodes: 3,
        network: { maxDelayMs: 40, duplicateRate: 0.3, longDelayRate: 0.2, longDelayMaxMs: 300 },
      });
      const written: string[] = [];
      for (let burst = 0; burst < 10; burst += 1) {
        const batch = values(`d-${seed}-${burst}`, 10);
        written.push(...batch);
        await agreeAll(sim, batch, 3, 20_000);
      }
      const committed = await sameCommittedEverywhere(sim);
      for (const value of written) ensure(sim, committed.includes(value), `${value} is missing`);
      // A retried write commits more than once at most as a duplicate that the store skips.
      const leader = sim.stableLeader() ?? sim.leader()!;
      ensure(sim, sim.node(leader)!.get('k') !== undefined, 'nothing applied');
    }
  });

  it('streams a long log through a small pipeline window and small appends, with losses', async () => {
    for (const seed of seedsFor(20, 1215)) {
      const sim = createSimulation({
        seed,
        nodes: 3,
        maxInflight: 2,
        maxEntriesPerAppend: 4,
        network: { dropRate: 0.05, maxDelayMs: 10 },
      });
      const leader = await waitForLeader(sim, 2_000);
      const follower = others(sim, leader)[0]!;
      // The follower misses the whole stream, then catches up through the window.
      isolate(sim, [follower]);
      const written = values(`p-${seed}`, 300);
      await agreeAll(sim, written, 2, 20_000);
      const appendsBefore = sim.sentByType().AppendEntries ?? 0;
      sim.heal();
      await sim.runUntil(
        () => committedCounts(sim, [written.at(-1)!]).get(written.at(-1)!) === 3,
        10_000,
        'the follower to catch up',
      );
      const appends = (sim.sentByType().AppendEntries ?? 0) - appendsBefore;
      ensure(sim, appends >= 300 / 4, `${appends} AppendEntries for 300 entries of at most 4`);
      await sameCommittedEverywhere(sim);
    }
  });

  it('repairs followers with missing and extra entries from several old terms (Figure 7)', async () => {
    for (const seed of seedsFor(30, 1216)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `base-${seed}`, 5);
      const l1 = sim.stableLeader()!;
      const [f1, x, y, z] = others(sim, l1) as [string, string, string, string];
      // l1 and f1 take 20 entries of l1's term that never commit.
      sim.partition([l1, f1], [x, y, z]);
      const proposals = values(`t1-${seed}`, 20).map((value) => sim.propose(l1, value));
      await sim.runFor(1);
      const placed = placedIn(sim, l1, values(`t1-${seed}`, 20));
      // x, y and z elect a leader and commit 10.
      await agreeAll(sim, values(`t2-${seed}`, 10), 3, 5_000);
      const l2 = sim.stableLeader()!;
      // That leader, alone, takes 15 more that never commit.
      const rest = [x, y, z].filter((id) => id !== l2);
      sim.partition([l2], [l1, f1, ...rest]);
      proposals.push(...values(`t3-${seed}`, 15).map((value) => sim.propose(l2, value)));
      await sim.runFor(1);
      placed.push(...placedIn(sim, l2, values(`t3-${seed}`, 15)));
      ensure(sim, placed.length === 35, `the old leaders took ${placed.length} of 35 entries`);
      // l1, f1 and the other two elect one of the up-to-date two and commit 5.
      await agreeAll(sim, values(`t4-${seed}`, 5), 3, 5_000);
      const l3 = sim.stableLeader()!;
      ensure(sim, rest.includes(l3), `${l3} won without the committed entries of ${rest}`);
      sim.heal();
      await agreeOne(sim, `final-${seed}`, 5, 5_000);
      await quiesce(sim, proposals, `${seed}`);
      await sameLogEverywhere(sim);
      const kept = survivors(sim, placed);
      ensure(
        sim,
        kept.length === 0,
        `${kept.length} entries of old terms survive, first at ${kept[0]?.index}`,
      );
      acknowledgedEverywhere(sim, proposals);
      const counts = committedCounts(sim, [...values(`t2-${seed}`, 10), ...values(`t4-${seed}`, 5)]);
      for (const [value, count] of counts) ensure(sim, count === 5, `${value} is committed on ${count} of 5`);
    }
  });
});
