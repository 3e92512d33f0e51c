/**
 * Read scenarios (ReadIndex, dissertation §6.4), from the seed's backlog: a leader's read barrier
 * returns the committed value, reads after writes see them from any server, a stale leader cannot
 * complete a read (it waits, then rejects on the proposal timeout or on stepping down), a new
 * leader's reads wait for its first commit, reads in one tick share one heartbeat round, and a
 * client history across leadership changes is linearizable. Every failure names its seed.
 */
import { describe, it } from 'vitest';
import type { Node as RaftNode } from '../../src/actors/node.js';
import { checkKvHistory, describeViolation, type Operation } from '../support/linearizability.js';
import {
  agreeOne,
  createSimulation,
  ensure,
  isolate,
  type Simulation,
  seedsFor,
  type Tracked,
  track,
  waitForLeader,
} from './simulator.js';

const ELECTION_MS = 150;

/** A read barrier whose value is taken, as a client would, the moment it resolves. */
type Read = Tracked & { value?: unknown };

const readOn = (sim: Simulation, node: RaftNode, options?: { forward?: boolean }): Read => {
  const read: Read = { state: 'pending' };
  node.readBarrier(options).then(
    () => {
      read.value = node.get('k');
      read.state = 'ok';
      read.settledAtMs = sim.now();
    },
    (error: { code?: string }) => {
      read.state = 'failed';
      read.error = error.code ?? String(error);
      read.settledAtMs = sim.now();
    },
  );
  return read;
};

const settled = async (sim: Simulation, calls: Tracked[], boundMs: number, what: string): Promise<void> => {
  await sim.runUntil(() => calls.every((call) => call.state !== 'pending'), boundMs, what, 1);
};

describe('scenarios: reads', () => {
  it('resolves a read barrier on a stable leader with the latest committed value', async () => {
    for (const seed of seedsFor(30, 1701)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      const empty = readOn(sim, sim.node(leader)!);
      await settled(sim, [empty], 500, 'a read on an empty store');
      ensure(
        sim,
        empty.state === 'ok' && empty.value === undefined,
        `empty read: ${empty.state} ${String(empty.value)}`,
      );
      for (let n = 0; n < 5; n += 1) {
        await agreeOne(sim, `r-${seed}-${n}`, 3);
        const calledAt = sim.now();
        const read = readOn(sim, sim.node(leader)!, { forward: false });
        await settled(sim, [read], 500, 'the read barrier');
        ensure(sim, read.state === 'ok', `the read barrier failed: ${read.error}`);
        ensure(
          sim,
          read.value === `r-${seed}-${n}`,
          `read ${String(read.value)} after writing r-${seed}-${n}`,
        );
        // One heartbeat round trip: a couple of network delays, not a timeout.
        const tookMs = read.settledAtMs! - calledAt;
        ensure(sim, tookMs <= 4 * 5 + 2, `the read barrier took ${tookMs} ms`);
      }
    }
  });

  it('reads its own writes from every server, one write after another', async () => {
    for (const seed of seedsFor(15, 1702)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const leader = await waitForLeader(sim, 2_000);
      for (let n = 0; n < 20; n += 1) {
        const value = `w-${seed}-${n}`;
        const writer = sim.rng.pick(sim.ids);
        const write = track(sim, sim.node(writer)!.write({ op: 'set', key: 'k', value }));
        await settled(sim, [write], 1_000, `the write of ${value} through ${writer}`);
        ensure(sim, write.state === 'ok', `write through ${writer} failed: ${write.error}`);
        const reads = sim.ids.map((id) => readOn(sim, sim.node(id)!));
        await settled(sim, reads, 1_000, 'reads on every server');
        reads.forEach((read, index) => {
          ensure(sim, read.state === 'ok', `read on ${sim.ids[index]} failed: ${read.error}`);
          ensure(
            sim,
            read.value === value,
            `${sim.ids[index]} read ${String(read.value)} after ${value} completed`,
          );
        });
      }
      ensure(sim, sim.stableLeader() === leader, 'the leader changed in a fault-free run');
    }
  });

  it('rejects a follower read that may not be forwarded, naming the leader', async () => {
    for (const seed of seedsFor(50, 1703)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(100);
      const follower = sim.ids.find((id) => id !== leader)!;
      let leaderId: unknown;
      const read = track(
        sim,
        sim
          .node(follower)!
          .readBarrier({ forward: false })
          .catch((error: { leaderId?: unknown }) => {
            leaderId = error.leaderId;
            throw error;
          }),
      );
      await settled(sim, [read], 10, 'the refusal');
      ensure(
        sim,
        read.state === 'failed' && read.error === 'NOT_LEADER',
        `follower read: ${read.state} ${read.error}`,
      );
      ensure(sim, leaderId === leader, `the refusal names ${String(leaderId)}, not ${leader}`);
    }
  });

  it('keeps a minority leader read pending, then rejects it on the proposal timeout', async () => {
    for (const seed of seedsFor(50, 1704)) {
      const proposalTimeoutMs = 100;
      const sim = createSimulation({ seed, nodes: 5, proposalTimeoutMs });
      await agreeOne(sim, `before-${seed}`, 5);
      const old = sim.stableLeader()!;
      const [buddy] = sim.ids.filter((id) => id !== old);
      sim.partition(
        [old, buddy!],
        sim.ids.filter((id) => id !== old && id !== buddy),
      );
      const startMs = sim.now();
      const read = readOn(sim, sim.node(old)!, { forward: false });
      await sim.runFor(proposalTimeoutMs / 2);
      ensure(
        sim,
        read.state === 'pending',
        `the minority read is ${read.state} after ${proposalTimeoutMs / 2} ms`,
      );
      ensure(
        sim,
        sim.status(old)!.role === 'leader',
        'the minority leader stepped down too early for this check',
      );
      await settled(sim, [read], proposalTimeoutMs, 'the minority read to time out');
      ensure(sim, read.state === 'failed', `the minority leader completed a read (${String(read.value)})`);
      ensure(sim, read.error === 'QUORUM_UNAVAILABLE', `the minority read failed with ${read.error}`);
      ensure(sim, read.settledAtMs! - startMs >= proposalTimeoutMs, 'the read failed before its timeout');
      // Meanwhile the majority elects a leader and serves writes.
      const next = await waitForLeader(sim, 3_000, 'a leader on the majority side');
      ensure(sim, next !== old && next !== buddy, `${next} leads from the minority`);
      await agreeOne(sim, `during-${seed}`, 3);
      sim.heal();
      await agreeOne(sim, `after-${seed}`, 5);
    }
  });

  it('rejects a minority leader read when CheckQuorum steps the leader down', async () => {
    for (const seed of seedsFor(60, 1705)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `before-${seed}`, 3);
      const old = sim.stableLeader()!;
      await sim.runFor(sim.rng.int(0, ELECTION_MS));
      isolate(sim, [old]);
      const startMs = sim.now();
      const read = readOn(sim, sim.node(old)!, { forward: false });
      let steppedDownAt = -1;
      const stop = sim.onStep(() => {
        if (steppedDownAt < 0 && sim.status(old)!.role !== 'leader') steppedDownAt = sim.now();
        if (read.state === 'pending' || steppedDownAt >= 0) return;
        sim.fail(`the read settled (${read.state}) while ${old} still led`);
      });
      await settled(sim, [read], 2 * ELECTION_MS + 10, 'the read to fail on step-down');
      stop();
      ensure(
        sim,
        read.state === 'failed' && read.error === 'NOT_LEADER',
        `stale read: ${read.state} ${read.error}`,
      );
      ensure(sim, steppedDownAt >= 0 && steppedDownAt - startMs <= 2 * ELECTION_MS, 'the step-down was late');
      await waitForLeader(sim, 3_000, 'a leader on the majority side');
      sim.heal();
      await agreeOne(sim, `after-${seed}`, 3);
    }
  });

  it('never lets a stale leader return a value older than a completed write', async () => {
    for (const seed of seedsFor(50, 1706)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await agreeOne(sim, `old-${seed}`, 5);
      const old = sim.stableLeader()!;
      isolate(sim, [old]);
      // Three of the other four time out one after another, so the third wins PreVote (the first
      // two no longer follow anyone) and the election, long before CheckQuorum retires the old
      // leader: for a while two servers lead, in different terms.
      const [b, c, d] = sim.ids.filter((id) => id !== old) as [string, string, string];
      for (const id of [b, c, d]) {
        sim.node(id)!.fire({ type: 'electionTimeout' });
        await sim.runFor(15);
      }
      await agreeOne(sim, `new-${seed}`, 4, 3_000);
      ensure(sim, sim.status(old)!.role === 'leader', 'the old leader stepped down before the stale read');
      ensure(sim, sim.stableLeader() !== old, 'the cut-off leader still counts as stable');
      const strict = readOn(sim, sim.node(old)!, { forward: false });
      const forwarded = readOn(sim, sim.node(old)!);
      await sim.runFor(1_000);
      // It may fail, or wait (it can never be confirmed while cut off); it must not answer.
      ensure(sim, strict.state !== 'ok', `the stale leader answered a local read (${String(strict.value)})`);
      ensure(sim, forwarded.state === 'pending', `the cut-off server settled a read: ${forwarded.state}`);
      sim.heal();
      await settled(sim, [forwarded], 3_000, 'the forwarded read after healing');
      ensure(sim, forwarded.state === 'ok', `the forwarded read failed: ${forwarded.error}`);
      ensure(
        sim,
        forwarded.value === `new-${seed}`,
        `read ${String(forwarded.value)} after new-${seed} completed`,
      );
    }
  });

  it("makes a new leader's reads wait for its first commit, then see every earlier write", async () => {
    for (const seed of seedsFor(60, 1707)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `w1-${seed}`, 3);
      const old = sim.stableLeader()!;
      // The old leader commits a write the others learn only in its next AppendEntries.
      await agreeOne(sim, `w2-${seed}`, 2);
      isolate(sim, [old]);
      let read: Read | null = null;
      let fresh: string | null = null;
      let committedOwnTermAt = -1;
      const stop = sim.onStep(() => {
        const leader = sim.ids.find((id) => id !== old && sim.status(id)?.role === 'leader');
        if (leader && read === null) {
          fresh = leader;
          read = readOn(sim, sim.node(leader)!, { forward: false });
        }
        if (fresh && committedOwnTermAt < 0) {
          const context = sim.node(fresh)!.snapshot().context;
          const term = context.log.entries[context.commitIndex - 1]?.term;
          if (term === context.currentTerm) committedOwnTermAt = sim.now();
        }
      });
      await sim.runUntil(
        () => read !== null && read.state !== 'pending',
        3_000,
        'a read on the new leader',
        1,
      );
      stop();
      const done = read as unknown as Read;
      ensure(sim, done.state === 'ok', `the new leader's read failed: ${done.error}`);
      ensure(
        sim,
        committedOwnTermAt >= 0 && done.settledAtMs! >= committedOwnTermAt,
        'read before the first commit',
      );
      ensure(
        sim,
        done.value === `w2-${seed}`,
        `the new leader read ${String(done.value)}, expected w2-${seed}`,
      );
      sim.heal();
    }
  });

  it('serves many reads in one tick with one read batch and one heartbeat round', async () => {
    for (const seed of seedsFor(50, 1708)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await agreeOne(sim, `x-${seed}`, 3);
      const leader = sim.stableLeader()!;
      const node = sim.node(leader)!;
      const batchesBefore = node.metrics().readBatches;
      let heartbeats = 0;
      const stop = sim.observe((message) => {
        if (message.type === 'Heartbeat') heartbeats += 1;
      });
      const reads = Array.from({ length: 100 }, () => readOn(sim, node, { forward: false }));
      await settled(sim, reads, 200, '100 reads');
      stop();
      ensure(
        sim,
        reads.every((read) => read.state === 'ok' && read.value === `x-${seed}`),
        'a read failed or erred',
      );
      const batches = node.metrics().readBatches - batchesBefore;
      ensure(sim, batches === 1, `100 reads in one tick took ${batches} read batches`);
      // One round to each follower (a periodic heartbeat may fall in the same window).
      ensure(sim, heartbeats <= 2 * 2, `${heartbeats} heartbeats for one read batch`);
    }
  });

  it('keeps a history of reads and writes linearizable across leader crashes and partitions', async () => {
    for (const seed of seedsFor(15, 1709)) {
      const sim = createSimulation({ seed, nodes: 5 });
      await waitForLeader(sim, 2_000);
      const history: Operation[] = [];
      const open: { op: Operation; call: Tracked & { value?: unknown } }[] = [];
      let written = 0;
      const client = (clientId: number): void => {
        const alive = sim.ids.filter((id) => sim.isAlive(id));
        const node = sim.node(sim.rng.pick(alive))!;
        const callMs = sim.now();
        if (sim.rng.chance(0.5)) {
          const value = `h-${seed}-${written++}`;
          const op: Operation = {
            clientId,
            input: { op: 'set', key: 'k', value },
            output: { ok: true },
            callMs,
            returnMs: Number.POSITIVE_INFINITY,
          };
          open.push({ op, call: track(sim, node.write({ op: 'set', key: 'k', value })) });
        } else {
          const op: Operation = {
            clientId,
            input: { op: 'get', key: 'k' },
            output: { value: undefined },
            callMs,
            returnMs: Number.POSITIVE_INFINITY,
          };
          open.push({ op, call: readOn(sim, node) });
        }
      };
      const busy = new Set<number>();
      const collect = (): void => {
        for (let index = open.length - 1; index >= 0; index -= 1) {
          const { op, call } = open[index]!;
          if (call.state === 'pending') continue;
          open.splice(index, 1);
          busy.delete(op.clientId);
          if (call.state === 'ok') {
            op.returnMs = call.settledAtMs!;
            if (op.input.op === 'get') op.output = { value: call.value };
          } else {
            op.output = { unknown: true };
          }
          history.push(op);
        }
      };
      for (let tick = 0; tick < 300; tick += 1) {
        if (tick % 60 === 20) {
          const leader = sim.leader();
          if (leader && sim.rng.chance(0.5)) sim.crash(leader);
          else if (leader) isolate(sim, [leader]);
        }
        if (tick % 60 === 55) {
          sim.heal();
          for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
        }
        for (let clientId = 0; clientId < 4; clientId += 1) {
          if (busy.has(clientId)) continue;
          busy.add(clientId);
          client(clientId);
        }
        await sim.runFor(sim.rng.int(1, 15));
        collect();
      }
      sim.heal();
      for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
      await sim.runUntil(
        () => open.every(({ call }) => call.state !== 'pending'),
        20_000,
        'every call to settle',
      );
      collect();
      const completed = history.filter((op) => !('unknown' in op.output));
      ensure(sim, completed.length >= 100, `only ${completed.length} operations completed`);
      ensure(
        sim,
        completed.some(
          (op) => op.input.op === 'get' && 'value' in op.output && op.output.value !== undefined,
        ),
        'no read saw a write',
      );
      const result = checkKvHistory(history, { timeoutMs: 20_000 });
      ensure(sim, result.ok === true, describeViolation(result));
    }
  });
});
