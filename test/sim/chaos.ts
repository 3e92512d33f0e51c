/**
 * Randomized fault schedules on 3- and 5-server clusters: partitions, crashes and restarts, an
 * unreliable network, and a steady stream of proposals. Safety is checked after every step by the
 * simulator; liveness after the faults heal: a leader appears and every write proposed after
 * healing commits within a bounded simulated time.
 */
import { Decoder } from '@msgpack/msgpack';
import { readSnapshot } from '../../src/actors/packed-map.js';
import { splitSnapshot } from '../../src/actors/store.js';
import { decodeValue } from '../../src/io/command.js';
import {
  createSimulation,
  type DurabilityCounters,
  RELIABLE,
  type SimOptions,
  type Simulation,
  UNRELIABLE,
} from './simulator.js';

/** Log compaction settings for runs that exercise snapshots (small, so they happen all the time). */
export type Compaction = { compactEvery: number; keepEntries: number; snapshotChunkBytes: number };

const snapshotDecoder = new Decoder({ useBigInt64: true });

/** A server's store as text that does not depend on insertion order: keys and sessions sorted. */
export const canonicalStore = (sim: Simulation, id: string): string => {
  const node = sim.node(id);
  if (!node) return '(down)';
  const { header, pairs } = splitSnapshot(node.storeSnapshot().data);
  const [, index, , tables] = snapshotDecoder.decode(header) as [number, number, number, unknown[]];
  const keys: string[] = [];
  for (const [key, value] of readSnapshot(pairs).entries())
    keys.push(`${Buffer.from(key).toString()}=${JSON.stringify(decodeValue(value))}`);
  const sessions: string[] = [];
  for (let i = 0; i < tables.length; i += 3) {
    const applied = [...(tables[i + 2] as number[])].sort((a, b) => a - b);
    sessions.push(`${String(tables[i])}:${String(tables[i + 1])}:${applied.join(',')}`);
  }
  return `@${index} ${keys.sort().join(' ')} | ${sessions.sort().join(' ')}`;
};

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

export type ChaosResult = {
  committed: number;
  elections: number;
  snapshotsSent: number;
  /** Durable-disk runs only. */
  durability: DurabilityCounters | null;
};

/** Simulation options a chaos run passes on (the disk, the wire check). */
export type ChaosOptions = Pick<SimOptions, 'disk' | 'fsyncMs' | 'checkDurability'>;

/**
 * Durable disks: a crash a few simulated milliseconds into a burst, while its persists (entries,
 * and the votes of an election) are being synced, so that some are lost; usually the server that
 * took the writes or the leader, then restarted at once or left down.
 */
const crashMidFlush = async (sim: Simulation, target: string): Promise<void> => {
  const leader = sim.leader();
  if (leader !== null && sim.rng.chance(0.3)) {
    // The leader goes: a crash lands during the election that follows, while votes are synced.
    sim.crash(leader);
    await sim.runFor(sim.rng.int(140, 320));
    sim.crash(sim.rng.pick(sim.ids));
    return;
  }
  await sim.runFor(sim.rng.int(0, 12));
  const victim = sim.rng.chance(0.5)
    ? target
    : sim.rng.chance(0.5) && leader !== null
      ? leader
      : sim.rng.pick(sim.ids);
  if (sim.rng.chance(0.5)) sim.restart(victim);
  else sim.crash(victim);
};

/**
 * Durable disks: a server that just granted a vote crashes now and then a millisecond or two
 * later and restarts at once. Correct code granted it only once the vote was synced; a node that
 * answered first forgets the vote and may grant it again in the same term (two leaders).
 */
const crashAfterVotes = (sim: Simulation): void => {
  let due: { id: string; atMs: number } | null = null;
  sim.observe((message, atMs) => {
    if (due === null && message.type === 'RequestVoteResponse' && message.voteGranted && !message.preVote)
      if (sim.rng.chance(0.3)) due = { id: message.from, atMs: atMs + sim.rng.int(0, 3) };
  });
  sim.onStep(() => {
    if (due === null || sim.now() < due.atMs) return;
    const { id } = due;
    due = null;
    if (sim.isAlive(id)) sim.restart(id);
  });
};

export const chaosRun = async (
  seed: number,
  nodes: number,
  compaction?: Compaction,
  simOptions: ChaosOptions = {},
): Promise<ChaosResult> => {
  const sim = createSimulation({ seed, nodes, ...compaction, ...simOptions });
  if (simOptions.disk === 'durable') crashAfterVotes(sim);
  let proposed = 0;
  // With compaction, several keys, so that a snapshot's content is worth comparing.
  const keyOf = (n: number): string => (compaction ? `k${n % 5}` : 'k');
  for (let round = 0; round < 12; round += 1) {
    faultRound(sim);
    for (let burst = 0; burst < 3; burst += 1) {
      const leader = sim.leader();
      const target = leader !== null && sim.rng.chance(0.8) ? leader : sim.rng.pick(sim.ids);
      for (let n = sim.rng.int(1, 4); n > 0; n -= 1) {
        sim.propose(target, `v${seed}-${proposed}`, keyOf(proposed));
        proposed += 1;
      }
      if (simOptions.disk === 'durable' && sim.rng.chance(0.4)) await crashMidFlush(sim, target);
      await sim.runFor(sim.rng.int(20, 150));
    }
  }
  // Heal everything: liveness must follow.
  sim.heal();
  sim.setNetwork(RELIABLE);
  for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
  await sim.runUntil(() => sim.stableLeader() !== null, 5_000, 'a stable leader after healing');
  const leader = sim.stableLeader()!;
  const finals = Array.from({ length: 5 }, (_, index) =>
    sim.propose(leader, `final-${seed}-${index}`, compaction ? `f${index}` : 'k'),
  );
  await sim.runUntil(
    () => finals.every((proposal) => proposal.state !== 'pending'),
    5_000,
    'writes proposed after healing to commit',
  );
  for (const proposal of finals) {
    if (proposal.state !== 'ok') sim.fail(`write after healing failed: ${proposal.error}`);
  }
  if (compaction) {
    await allServersApplyTheSameState(sim, leader, finals);
  } else {
    await sim.runUntil(
      () => finals.every((proposal) => sim.committedOn(proposal.value) === nodes),
      5_000,
      'every server to learn the final commits',
    );
  }
  if (sim.checker.checks() <= 20) sim.fail(`only ${sim.checker.checks()} steps were checked`);
  return {
    committed: sim.checker.committedLength(),
    elections: sim.checker.leaders().size,
    snapshotsSent: sim.sentByType().InstallSnapshot ?? 0,
    durability: simOptions.disk === 'durable' ? sim.durability() : null,
  };
};

/**
 * Every server applies up to the leader's commit index, and then all hold the same store (map and
 * dedup tables), with every final write in it: whether a server applied entries one by one or took
 * a snapshot, it must reach the same state (State Machine Safety, seen from the stores).
 */
const allServersApplyTheSameState = async (
  sim: Simulation,
  leader: string,
  finals: Array<{ value: string }>,
): Promise<void> => {
  const leaderCommit = (): number => sim.status(leader)?.commitIndex ?? -1;
  await sim.runUntil(
    () => sim.ids.every((id) => sim.status(id)?.appliedIndex === leaderCommit()),
    5_000,
    "every server to apply up to the leader's commit index",
  );
  const target = leaderCommit();
  const reference = canonicalStore(sim, leader);
  for (const id of sim.ids) {
    const store = canonicalStore(sim, id);
    if (store !== reference)
      sim.fail(`stores differ at ${target}:\n  ${leader}: ${reference}\n  ${id}: ${store}`);
    finals.forEach((final, index) => {
      const value = sim.node(id)!.get(`f${index}`);
      if (value !== final.value) sim.fail(`${id} holds ${String(value)} at f${index}, not ${final.value}`);
    });
  }
};
