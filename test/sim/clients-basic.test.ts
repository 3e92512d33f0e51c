/**
 * The lab suites' basic KV scenarios with concurrent clients on the simulator: one client, many
 * clients on different nodes, an unreliable network, and read-your-writes on followers. Every
 * client history is checked for linearizability; every node's applied updates for exactly-once
 * and same order.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { clientRun, createCheckStats, describeStats } from './clients.js';
import { isolate, seedsFor, UNRELIABLE } from './simulator.js';

const stats = createCheckStats();
const startedAt = performance.now();
afterAll(() => {
  console.log(describeStats('clients-basic', stats, performance.now() - startedAt));
});

describe('clients: basic', () => {
  it('one client on one node', async () => {
    for (const seed of seedsFor(60, 301)) {
      await clientRun(
        seed,
        { nodes: 3, clients: { maxOps: 60, keys: 3 } },
        async (sim, clients) => {
          clients.add(sim.rng.pick(sim.ids));
          clients.start(3_000);
          await clients.drive(3_000);
        },
        stats,
      );
    }
  });

  it('many clients on different nodes', async () => {
    for (const seed of seedsFor(80, 302)) {
      await clientRun(
        seed,
        { nodes: 5, clients: { maxOps: 25, keys: 4 } },
        async (sim, clients) => {
          for (let index = 0; index < 7; index += 1) clients.add(sim.ids[index % sim.ids.length]!);
          clients.start(3_000);
          await clients.drive(3_000);
        },
        stats,
      );
    }
  });

  it('many clients on an unreliable network', async () => {
    for (const seed of seedsFor(70, 303)) {
      await clientRun(
        seed,
        { nodes: 5, network: UNRELIABLE, clients: { maxOps: 25, keys: 4 } },
        async (sim, clients) => {
          for (const id of sim.ids) clients.add(id);
          clients.start(4_000);
          await clients.drive(4_000);
        },
        stats,
      );
    }
  });

  it('read-your-writes on followers, across a leader change', async () => {
    let checkedReads = 0;
    for (const seed of seedsFor(50, 304)) {
      const { sim, clients } = await clientRun(
        seed,
        { nodes: 3, clients: { maxOps: 30, readShare: 0.4, deleteShare: 0.15, localReadAfterWrite: true } },
        async (sim, clients) => {
          const leader = sim.stableLeader()!;
          const followers = sim.ids.filter((id) => id !== leader);
          followers.forEach((id, index) => {
            clients.add(id, [`own-${index}-a`, `own-${index}-b`]);
          });
          clients.start(3_000);
          await clients.drive(600);
          // The leader goes away for a while: the followers' calls go to the next leader.
          isolate(sim, [leader]);
          await clients.drive(800);
          sim.heal();
          await clients.drive(1_600);
        },
        stats,
      );
      // Each client alone writes its keys: every read (local ones right after a write, and
      // linearizable ones) returns the client's last completed write of that key.
      for (let clientId = 1; clientId <= clients.clientCount(); clientId += 1) {
        const last = new Map<string, unknown>();
        for (const op of clients.completedOf(clientId)) {
          if ('unknown' in op.output) sim.fail(`client ${clientId}: a write with unknown outcome`);
          if (op.input.op === 'set') last.set(op.input.key, op.input.value);
          else if (op.input.op === 'delete') last.set(op.input.key, undefined);
          else {
            checkedReads += 1;
            const seen = (op.output as { value: unknown }).value;
            if (seen !== last.get(op.input.key)) {
              sim.fail(
                `client ${clientId} on ${sim.ids.join(',')} read ${JSON.stringify(seen)} at ${op.input.key} (${op.callMs} ms) after writing ${JSON.stringify(last.get(op.input.key))}`,
              );
            }
          }
        }
      }
    }
    expect(checkedReads).toBeGreaterThan(0);
  });
});
