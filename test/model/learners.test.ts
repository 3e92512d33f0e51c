/**
 * The learner (catch-up) phase of a membership change (dissertation §4.2.1), scripted: machine and
 * spec in lockstep with every check of the model harness after every step, then healing
 * (liveness). A change that adds servers appends C_learn (the voters stay C_old, the new servers
 * are learners); once the committed C_learn's learners hold the log up to it, the leader appends
 * C_old,new, then C_new as before. A request for the voters in force while catching up cancels it.
 */
import { describe, expect, it } from 'vitest';
import { type Cmd, createWorld, heal, type ModelConfig, runCmd, stopWorld, type World } from './harness.js';
import * as spec from './spec.js';
import { configOfEntry, isCatchUpConfig, isJointConfig } from './spec-config.js';

const CONFIG: ModelConfig = { servers: 3, spares: 2, maxInflight: 8, maxEntriesPerAppend: 512, seed: 0 };

const deliverMany = (count: number): Cmd => ({ kind: 'deliverMany', count });
const timeout = (server: number): Cmd => ({ kind: 'timeout', server });
const reconfigure = (change: Extract<Cmd, { kind: 'reconfigure' }>['change'], pick: number): Cmd => ({
  kind: 'reconfigure',
  server: 'leader',
  change,
  pick,
  addresses: false,
});

/** Runs the script (then heals, unless told not to); returns the spec states and the run's counters. */
const run = (config: ModelConfig, cmds: readonly Cmd[], healed = true) => {
  const world = createWorld(config);
  try {
    for (const cmd of cmds) runCmd(world, cmd);
    const rounds = healed ? heal(world) : 0;
    return { servers: world.ids.map((id) => world.spec[id]!), stats: world.stats, rounds };
  } finally {
    stopWorld(world);
  }
};

/** The kinds of the config entries of a log, in order: learn, joint or stable. */
const configKinds = (s: spec.SpecServer): string[] =>
  s.log
    .filter((e) => e.kind === 'config')
    .map((e) => {
      const c = configOfEntry(e);
      return isCatchUpConfig(c) ? 'learn' : isJointConfig(c) ? 'joint' : 'stable';
    });

const byId = (servers: readonly spec.SpecServer[], id: string) => servers.find((s) => s.id === id)!;

describe('the learner phase of a membership change', () => {
  it('adding a server: C_learn, the learner catches up, then C_old,new and C_new', () => {
    // {a,b,c} + d (grow by one, pick 0): d starts blank and recovering, copies the log as a learner.
    const { servers, stats } = run(CONFIG, [timeout(0), deliverMany(40), reconfigure('grow', 0)]);
    const a = byId(servers, 'a');
    expect(configKinds(a)).toEqual(['learn', 'joint', 'stable']);
    expect(spec.configOf(a).config.voters).toEqual(['a', 'b', 'c', 'd']);
    expect(byId(servers, 'd').recovering).toBe(false);
    expect(stats.catchUps).toBe(1);
    expect(stats.catchUpsCompleted).toBe(1);
    expect(stats.stalledJoins).toBe(0);
  });

  it('no C_old,new while the learner has not caught up, however long the leader waits', () => {
    // d is started but every message to it is dropped: C_learn commits on a, b, c; d stays a learner.
    const cut: Cmd = { kind: 'dropWhere', match: { to: 'd' } };
    const { servers, stats } = run(
      CONFIG,
      [
        timeout(0),
        deliverMany(40),
        reconfigure('grow', 0),
        cut,
        ...Array.from({ length: 6 }, (): Cmd[] => [
          { kind: 'heartbeat', server: 'leader' },
          cut,
          deliverMany(20),
          cut,
        ]).flat(),
      ],
      false,
    );
    const a = byId(servers, 'a');
    const inForce = spec.configOf(a);
    expect(isCatchUpConfig(inForce.config)).toBe(true);
    expect(inForce.index).toBeLessThanOrEqual(a.commitIndex);
    expect(inForce.config.learners).toEqual(['d']);
    expect(stats.catchUpsCompleted).toBe(0);
  });

  it('a request for the voters in force cancels a committed catch-up; the learner is told it was removed', () => {
    const cut: Cmd = { kind: 'dropWhere', match: { to: 'd' } };
    const { servers, stats } = run(CONFIG, [
      timeout(0),
      deliverMany(40),
      reconfigure('grow', 0),
      cut,
      deliverMany(20),
      cut,
      // 'same': the voters of the configuration in force, {a,b,c}: the base is appended.
      reconfigure('same', 0),
      deliverMany(20),
    ]);
    const a = byId(servers, 'a');
    expect(configKinds(a)).toEqual(['learn', 'stable']);
    expect(spec.configOf(a).config.voters).toEqual(['a', 'b', 'c']);
    expect(stats.catchUpsCancelled).toBe(1);
    expect(stats.removedTold).toBeGreaterThanOrEqual(1);
  });

  it('the leader lost while the new servers still recover: the old voters elect a leader that goes on', () => {
    // {a,b,c} -> {d,e} (replace, pick 0). Before the learner phase, a committed C_old,new {d,e|a,b,c}
    // with d and e still recovering left no electable majority of {d,e} once the leader was lost:
    // this same script, run on the machine and spec of before, healed to no leader (a stalled join).
    const { servers, stats } = run(CONFIG, [
      timeout(0),
      deliverMany(40),
      reconfigure('replace', 0),
      { kind: 'dropWhere', match: { to: 'd' } },
      { kind: 'dropWhere', match: { to: 'e' } },
      deliverMany(20),
      { kind: 'restart', server: 0 },
    ]);
    const leader = servers.find((s) => s.role === 'leader')!;
    expect(spec.configOf(leader).config.voters).toEqual(['d', 'e']);
    // C_learn of term 1 (committed before a restarted); C_old,new of a leader of a later term.
    const configs = leader.log.filter((e) => e.kind === 'config');
    expect(configKinds(leader)).toEqual(['learn', 'joint', 'stable']);
    expect(configs[0]!.term).toBe(1);
    expect(configs[1]!.term).toBeGreaterThan(1);
    expect(stats.catchUpsCompleted).toBe(1);
    expect(stats.stalledJoins).toBe(0);
  });

  it('a catch-up replaced by a narrower one tells only the server it drops (it told the learner it kept too)', () => {
    // {a} + b, e (grow by two, pick 3), then {a} + b (grow, pick 0): C_learn {a +b} replaces C_learn
    // {a +be}. Found by the membership runs: the machine compared with isMember (learners left out)
    // and sent Removed to b as well, a server still being added.
    const { servers, stats } = run({ ...CONFIG, servers: 1, spares: 4 }, [
      timeout(0),
      reconfigure('grow', 3),
      reconfigure('grow', 0),
    ]);
    const a = byId(servers, 'a');
    expect(configKinds(a).slice(0, 2)).toEqual(['learn', 'learn']);
    expect(stats.removedTold).toBe(1);
    expect(byId(servers, 'e').removed).toBe(true);
    expect(byId(servers, 'b').removed).toBe(false);
    expect(spec.configOf(a).config.voters).toEqual(['a', 'b']);
  });

  it('a server added again ignores a Removed older than the catch-up that lists it (it learned REMOVED)', () => {
    // Found writing the spec: d, removed by C_new at 6, is added again (C_learn at 7) while the leader's
    // Removed of 6 is still in flight; d holds C_learn when the Removed comes. The machine compared
    // with isMember (learners left out), took the Removed and announced it was removed to the API.
    type Message = World['network'][number];
    const world = createWorld(CONFIG);
    /** Delivers the oldest message `held` does not keep back, until none is left (bounded). */
    const deliverAllBut = (held: (m: Message) => boolean, most = 400) => {
      for (let i = 0; i < most; i += 1) {
        const m = world.network.find((x) => !held(x));
        if (m === undefined) return;
        runCmd(world, { kind: 'deliverWhere', match: { from: m.from, to: m.to, type: m.type } });
      }
    };
    const nothing = () => false;
    const staleRemoved = (m: Message) => m.type === 'Removed' && m.to === 'd';
    try {
      runCmd(world, timeout(0));
      deliverAllBut(nothing);
      runCmd(world, reconfigure('grow', 0));
      for (let round = 0; round < 6; round += 1) {
        deliverAllBut(nothing);
        runCmd(world, { kind: 'heartbeat', server: 'leader' });
        runCmd(world, timeout(3));
      }
      deliverAllBut(nothing);
      expect(spec.configOf(world.spec.a!).config.voters).toEqual(['a', 'b', 'c', 'd']);
      // {a,b,c} (subset 0b111 of the pool): d is removed; the Removed to d stays in flight.
      runCmd(world, reconfigure('subset', 7));
      deliverAllBut(staleRemoved);
      expect(world.spec.d!.removed).toBe(false);
      runCmd(world, reconfigure('grow', 0));
      for (let i = 0; i < 200 && !isCatchUpConfig(spec.configOf(world.spec.d!).config); i += 1)
        deliverAllBut(staleRemoved, 1);
      expect(spec.configOf(world.spec.d!).config.learners).toEqual(['d']);
      runCmd(world, { kind: 'deliverWhere', match: { to: 'd', type: 'Removed' } });
      expect(world.spec.d!.removed).toBe(false);
      heal(world);
      expect(spec.configOf(world.spec.a!).config.voters).toEqual(['a', 'b', 'c', 'd']);
    } finally {
      stopWorld(world);
    }
  });
});
