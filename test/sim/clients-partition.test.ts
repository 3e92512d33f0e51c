/**
 * The lab suites' KV partition scenarios with concurrent clients on the simulator: a partitioned
 * minority whose clients cannot complete anything until the partition heals (and then complete
 * within 3 s), and many random partitions under many clients, on a reliable and an unreliable
 * network, some writes with `forward: false` (a NOT_LEADER refusal must change nothing).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { type Clients, clientRun, createCheckStats, describeStats } from './clients.js';
import { RELIABLE, type Simulation, seedsFor, UNRELIABLE } from './simulator.js';

const stats = createCheckStats();
const startedAt = performance.now();
afterAll(() => {
  console.log(describeStats('clients-partition', stats, performance.now() - startedAt));
});

/** A random split of the servers in two (the lab's partitioner). */
const randomSplit = (sim: Simulation): void => {
  const shuffled = [...sim.ids].sort(() => sim.rng.float() - 0.5);
  const cut = sim.rng.int(1, sim.ids.length);
  sim.partition(shuffled.slice(0, cut), shuffled.slice(cut));
};

/** Faults every 150-600 ms for `durationMs` while the clients run, then heals. */
const partitionStorm = async (sim: Simulation, clients: Clients, durationMs: number): Promise<void> => {
  const endMs = sim.now() + durationMs;
  while (sim.now() < endMs) {
    if (sim.rng.chance(0.7)) randomSplit(sim);
    else sim.heal();
    await clients.drive(Math.min(sim.rng.int(150, 600), Math.max(1, endMs - sim.now())));
  }
  sim.heal();
};

describe('clients: partitions', () => {
  it('a partitioned minority completes nothing within 1 s, and everything within 3 s of healing', async () => {
    let minorityOps = 0;
    for (const seed of seedsFor(50, 311)) {
      await clientRun(
        seed,
        { nodes: 5, clients: { maxOps: 40, keys: 3, thinkMs: [0, 30] } },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start();
          await clients.drive(sim.rng.int(300, 800));
          // Calls in flight settle before the partition (the lab partitions between calls).
          if (!(await clients.drain(3_000))) sim.fail('calls did not settle before the partition');
          const leader = sim.stableLeader() ?? sim.fail('no stable leader before the partition');
          const others = sim.ids.filter((id) => id !== leader);
          const majority = [leader, ...others.slice(0, 2)];
          const minority = others.slice(2);
          sim.partition(majority, minority);
          const partitionedAt = sim.now();
          const fresh = minority.map((id) => clients.add(id));
          const majorityClients = majority.flatMap((id) => clients.on(id));
          clients.start(Number.POSITIVE_INFINITY, [...majorityClients, ...fresh]);
          await clients.drive(1_000);
          for (const clientId of fresh) {
            const done = clients.completedOf(clientId);
            const failed = clients.failures().filter((failure) => failure.clientId === clientId);
            if (done.length > 0 || failed.length > 0) {
              sim.fail(
                `client ${clientId} in the minority ${minority.join(',')} completed a call while partitioned (at ${done[0]?.returnMs ?? failed[0]?.atMs} ms, partitioned at ${partitionedAt} ms)`,
              );
            }
            if (clients.pendingOf(clientId).length !== 1)
              sim.fail(`client ${clientId} has no call in flight`);
          }
          // Majority clients kept working meanwhile.
          const majorityDone = majorityClients.flatMap((id) => clients.completedOf(id));
          if (!majorityDone.some((op) => op.callMs >= partitionedAt))
            sim.fail(`the majority ${majority.join(',')} completed nothing while the minority was cut off`);
          await clients.drive(sim.rng.int(0, 500));
          sim.heal();
          const healedAt = sim.now();
          const stuck = fresh.flatMap((clientId) => clients.pendingOf(clientId));
          minorityOps += stuck.length;
          await clients.drive(3_000);
          for (const op of stuck) {
            const done = clients.completedOf(op.clientId).find((other) => other.callMs === op.callMs);
            if (!done || done.returnMs > healedAt + 3_000) {
              sim.fail(
                `client ${op.clientId}'s ${op.input.op}(${op.input.key}) called at ${op.callMs} ms in the minority did not complete within 3 s of healing at ${healedAt} ms`,
              );
            }
          }
          const failed = clients.failures().filter((failure) => fresh.includes(failure.clientId));
          if (failed.length > 0) sim.fail(`a minority client's call failed: ${failed[0]!.code}`);
        },
        stats,
      );
    }
    expect(minorityOps).toBeGreaterThan(0);
  });

  it('many partitions with many clients', async () => {
    for (const seed of seedsFor(60, 312)) {
      await clientRun(
        seed,
        { nodes: 5, clients: { maxOps: 30, keys: 4, thinkMs: [0, 40] } },
        async (sim, clients) => {
          for (const id of sim.ids) {
            clients.add(id);
            clients.add(id);
          }
          clients.start();
          await partitionStorm(sim, clients, 3_000);
          await clients.drive(500);
        },
        stats,
      );
    }
  });

  it('a write refused with NOT_LEADER (forward: false) changes nothing, across leader changes', async () => {
    let refused = 0;
    for (const seed of seedsFor(25, 314)) {
      const { clients } = await clientRun(
        seed,
        { nodes: 5, clients: { maxOps: 25, keys: 4, thinkMs: [0, 30], noForwardShare: 0.5 } },
        async (sim, clients) => {
          for (let round = 0; round < 4; round += 1) {
            // Clients on the leader write without forwarding; then the leader loses its majority
            // (alone or with one follower) and later comes back.
            const leader = sim.leader();
            if (leader !== null) for (let index = 0; index < 3; index += 1) clients.add(leader);
            clients.start();
            await clients.drive(sim.rng.int(20, 200));
            if (leader !== null) {
              const others = sim.ids.filter((id) => id !== leader);
              const keep = sim.rng.int(0, 2);
              sim.partition([leader, ...others.slice(0, keep)], others.slice(keep));
            }
            await clients.drive(sim.rng.int(200, 500));
            sim.heal();
            await clients.drive(300);
          }
        },
        stats,
      );
      refused += clients.refusedValues().size;
    }
    // Writes with forward:false were refused (NOT_LEADER), and every run checked none was applied.
    expect(refused).toBeGreaterThan(0);
  });

  it('many partitions with many clients on an unreliable network', async () => {
    for (const seed of seedsFor(40, 313)) {
      await clientRun(
        seed,
        {
          nodes: 5,
          network: UNRELIABLE,
          // Short enough that some calls give up (QUORUM_UNAVAILABLE): writes of unknown outcome.
          proposalTimeoutMs: 1_500,
          clients: { maxOps: 20, keys: 4, thinkMs: [0, 40] },
        },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start();
          await partitionStorm(sim, clients, 3_000);
          sim.setNetwork(RELIABLE);
          await clients.drive(500);
        },
        stats,
      );
    }
  });
});
