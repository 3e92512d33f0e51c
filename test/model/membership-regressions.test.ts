/**
 * The counterexamples the membership model runs found in the machine (each shrunk by fast-check),
 * kept as scripts that must now pass: the commands, then healing (liveness), with every check of
 * the model harness after every step. Each states the bug it found and what the machine does now.
 */
import { describe, expect, it } from 'vitest';
import { type Cmd, createWorld, heal, type ModelConfig, runCmd, stopWorld } from './harness.js';
import * as spec from './spec.js';

const CONFIG: ModelConfig = { servers: 3, spares: 2, maxInflight: 1, maxEntriesPerAppend: 1, seed: 0 };

const deliverMany = (count: number): Cmd => ({ kind: 'deliverMany', count });
const deliver = (pick: number): Cmd => ({ kind: 'deliver', pick });
const timeout = (server: number): Cmd => ({ kind: 'timeout', server });
const reconfigure = (
  change: Extract<Cmd, { kind: 'reconfigure' }>['change'],
  pick: number,
  addresses = false,
): Cmd => ({ kind: 'reconfigure', server: 'leader', change, pick, addresses });

/** Runs the script, then heals; returns the spec states and the run's counters. */
const run = (config: ModelConfig, cmds: readonly Cmd[]) => {
  const world = createWorld(config);
  try {
    for (const cmd of cmds) runCmd(world, cmd);
    const rounds = heal(world);
    return { servers: world.ids.map((id) => world.spec[id]!), stats: world.stats, rounds };
  } finally {
    stopWorld(world);
  }
};

describe('membership counterexamples found by the model, fixed', () => {
  it('a late answer from a server that left the configuration is ignored (the leader threw "no progress")', () => {
    // {a,b,c} -> {a}: b's answer commits C_old,new, and C_new (a alone) commits with it; c's answer
    // to the joint entry comes after, from a server the leader no longer counts.
    const { servers, stats } = run(CONFIG, [
      timeout(0),
      deliverMany(30),
      reconfigure('shrink', 1),
      { kind: 'deliverWhere', match: { from: 'a', to: 'b', type: 'AppendEntries' } },
      { kind: 'deliverWhere', match: { from: 'a', to: 'c', type: 'AppendEntries' } },
      { kind: 'deliverWhere', match: { from: 'b', to: 'a', type: 'AppendEntriesResponse' } },
      { kind: 'deliverWhere', match: { from: 'c', to: 'a', type: 'AppendEntriesResponse' } },
    ]);
    const a = servers.find((s) => s.id === 'a')!;
    expect(a.role).toBe('leader');
    expect(spec.configOf(a).config.voters).toEqual(['a']);
    expect(stats.removedTold).toBe(2);
  });

  it('an answer that completes a change removing its sender sends it nothing more (the leader threw "no progress")', () => {
    run(CONFIG, [
      timeout(0),
      deliverMany(5),
      deliver(0),
      deliverMany(1),
      deliver(0),
      deliver(0),
      deliver(0),
      deliver(0),
      reconfigure('shrink', 3),
      deliver(0),
      { kind: 'restart', server: 'leader' },
    ]);
  });

  it('a single-server cluster commits an address change at once (it waited for the next write)', () => {
    const { servers } = run(CONFIG, [
      timeout(2),
      deliverMany(2),
      deliver(0),
      deliverMany(6),
      deliver(0),
      deliverMany(1),
      deliver(0),
      reconfigure('shrink', 57),
      deliver(0),
      deliver(0),
      deliver(3),
      reconfigure('shrink', 0, true),
    ]);
    const leader = servers.find((s) => s.role === 'leader')!;
    expect(spec.configOf(leader).index).toBeLessThanOrEqual(leader.commitIndex);
  });

  it('a member being added that holds the whole log completes its recovery on a heartbeat (it waited for a write)', () => {
    const { stats } = run(CONFIG, [
      timeout(0),
      deliver(0),
      deliverMany(5),
      deliver(0),
      deliver(0),
      deliver(0),
      deliverMany(2),
      reconfigure('subset', 20),
    ]);
    expect(stats.recoveries).toBeGreaterThan(0);
  });

  it('a candidate told it is removed stops (it went on polling)', () => {
    const { stats } = run(CONFIG, [
      reconfigure('removeTarget', 31),
      timeout(0),
      deliverMany(13),
      deliver(7),
      reconfigure('shrink', 7),
      deliverMany(4),
      deliverMany(4),
      deliver(0),
      timeout(6),
      deliverMany(2),
      timeout(6),
    ]);
    expect(stats.removedLearned).toBeGreaterThan(0);
  });

  it('a leader that appended a C_new without itself and restarted campaigns until C_new commits (no one else could be elected)', () => {
    const { servers } = run({ ...CONFIG, servers: 1, spares: 4 }, [
      timeout(0),
      reconfigure('removeTarget', 127),
      { kind: 'read', server: 0 },
      deliverMany(6),
      deliver(0),
      deliver(0),
      timeout(3),
      reconfigure('grow', 75),
      { kind: 'heartbeat', server: 0 },
      deliverMany(10),
      deliverMany(2),
      { kind: 'restart', server: 0, amnesia: true },
    ]);
    const leader = servers.find((s) => s.role === 'leader')!;
    expect(spec.configOf(leader).config.voters).toContain(leader.id);
  });

  it('a follower that may not campaign forgets its leader on its election timeout (it refused every pre-vote)', () => {
    run(CONFIG, [
      timeout(4),
      deliverMany(11),
      reconfigure('shrink', 0),
      deliverMany(4),
      deliverMany(4),
      deliverMany(3),
      reconfigure('grow', 51),
      { kind: 'restart', server: 5 },
    ]);
  });
});
