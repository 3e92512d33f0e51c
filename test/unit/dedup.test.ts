/**
 * Exactly-once application of retried writes (dissertation §6.3): every command carries its
 * request's (session, seq) tag, and the store applies a tag at most once, however many log
 * entries carry it. Pinned at the store (store.ts) and at the node level (actors/node.ts), on the simulator:
 * a write forwarded to a leader that replicated it and then went away is retried to the next
 * leader, so the log holds the tag twice; a later write to the same key stays in place.
 *
 * The broken variant (a store that never recognizes a tag, vi.mock of the command decoder, this
 * file only) is caught by both: the retried write is applied a second time and undoes the later one.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createStore } from '../../src/actors/store.js';
import { decodeCommand, encodeCommand, type KvOperation } from '../../src/io/command.js';
import type { Entry } from '../../src/machines/messages.js';
import { createSimulation, ensure, track, waitForLeader } from '../sim/simulator.js';

const broken = vi.hoisted(() => ({ dedup: false, fresh: 1_000_000, originalSeq: new Map<number, number>() }));

vi.mock('../../src/io/command.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/io/command.js')>();
  return {
    ...original,
    /** Broken: every decoded command looks to the store's dedup like a request never seen before. */
    decodeRawCommand: (bytes: Uint8Array) => {
      const command = original.decodeRawCommand(bytes);
      if (!broken.dedup) return command;
      broken.fresh += 1;
      broken.originalSeq.set(broken.fresh, command.seq);
      return { ...command, seq: broken.fresh, lowestPending: 0 };
    },
  };
});

vi.mock('../../src/actors/store.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/actors/store.js')>();
  return {
    ...original,
    // The callers still learn the real seq settled (only the dedup is broken, not the answers).
    createStore: (...[onChange, onApplied, wantsChanges]: Parameters<typeof original.createStore>) =>
      original.createStore(
        onChange,
        (session, seq, index) => onApplied(session, broken.originalSeq.get(seq) ?? seq, index),
        wantsChanges,
      ),
  };
});

afterEach(() => {
  broken.dedup = false;
});

// ---- the store ---------------------------------------------------------------------------------

const entry = (
  term: number,
  operation: KvOperation,
  session: number,
  seq: number,
  lowestPending = 0,
): Entry => ({
  term,
  kind: 'command',
  data: encodeCommand(operation, { session, seq, lowestPending }),
});

const storeWithLog = () => {
  const changes: string[] = [];
  const applied: string[] = [];
  const store = createStore(
    (change) => changes.push(`${change.key}=${String(change.value)}@${change.index}`),
    (session, seq, index) => applied.push(`${session}/${seq}@${index}`),
  );
  return { store, changes, applied };
};

/** x (7/1), then y (8/1) on the same key, then the retry of x (7/1) at a later index. */
const RETRY_AFTER_LATER_WRITE = [
  entry(1, { op: 'set', key: 'k', value: 'x' }, 7, 1),
  entry(1, { op: 'set', key: 'k', value: 'y' }, 8, 1),
  entry(2, { op: 'set', key: 'k', value: 'x' }, 7, 1),
];

describe('store: a (session, seq) tag is applied once', () => {
  it('a retry after a later write to the same key is skipped, reported as settled, and counted', () => {
    const { store, changes, applied } = storeWithLog();
    store.apply(1, RETRY_AFTER_LATER_WRITE);
    expect(store.get('k')).toBe('y');
    expect(changes).toEqual(['k=x@1', 'k=y@2']);
    // Both entries settle the request (the caller may be waiting on either index).
    expect(applied).toEqual(['7/1@1', '8/1@2', '7/1@3']);
    expect(store.duplicates()).toBe(1);
    expect(store.appliedIndex()).toBe(3);
  });

  it('the same seq in another session is another request', () => {
    const { store } = storeWithLog();
    store.apply(1, [
      entry(1, { op: 'set', key: 'a', value: 1 }, 7, 1),
      entry(1, { op: 'set', key: 'b', value: 2 }, 9, 1),
    ]);
    expect([store.get('a'), store.get('b'), store.duplicates()]).toEqual([1, 2, 0]);
  });

  it('a delete retried after a re-create does not delete again', () => {
    const { store } = storeWithLog();
    store.apply(1, [
      entry(1, { op: 'delete', key: 'k' }, 7, 1),
      entry(1, { op: 'set', key: 'k', value: 'back' }, 8, 1),
      entry(2, { op: 'delete', key: 'k' }, 7, 1),
    ]);
    expect(store.get('k')).toBe('back');
  });

  it('a seq below what the session settled (lowestPending) is a duplicate even once forgotten', () => {
    const { store } = storeWithLog();
    store.apply(1, [
      entry(1, { op: 'set', key: 'k', value: 'a' }, 7, 3, 3),
      entry(1, { op: 'set', key: 'k', value: 'b' }, 7, 5, 5),
      entry(1, { op: 'set', key: 'k', value: 'late' }, 7, 3, 0),
    ]);
    expect(store.get('k')).toBe('b');
    expect(store.wasApplied(7, 3)).toBe(true);
    expect(store.wasApplied(7, 6)).toBe(false);
  });

  it('the dedup table travels in the snapshot: a retry after a restore still applies once', () => {
    const first = storeWithLog();
    first.store.apply(1, RETRY_AFTER_LATER_WRITE.slice(0, 2));
    const second = storeWithLog();
    second.store.restore(first.store.snapshot().data);
    second.store.apply(3, RETRY_AFTER_LATER_WRITE.slice(2));
    expect(second.store.get('k')).toBe('y');
    expect(second.store.duplicates()).toBe(1);
  });

  it('broken variant (tags never recognized): the retry undoes the later write', () => {
    broken.dedup = true;
    const { store } = storeWithLog();
    store.apply(1, RETRY_AFTER_LATER_WRITE);
    expect(store.get('k')).toBe('x');
    expect(store.duplicates()).toBe(0);
  });
});

// ---- the raft node -----------------------------------------------------------------------------

/**
 * 3 servers. A follower F writes k = 'x' (forwarded to the leader L). Once L holds the entry, F is
 * cut off; L replicates it to the third server O, commits it, and commits k = 'y' after it. Then L
 * crashes and the network heals: O becomes leader (it holds the longer log), F learns of the
 * leader change and retries its write, and O appends the same tag a second time. Returns what
 * every server holds at k, how many entries carry F's tag, and the stores' duplicate counts.
 */
const retryAfterLeaderChange = async (seed: number) => {
  const sim = createSimulation({ seed, nodes: 3, yieldEvery: 1 });
  const leader = await waitForLeader(sim);
  const [follower, other] = sim.ids.filter((id) => id !== leader) as [string, string];
  const firstWrite = track(sim, sim.node(follower)!.write({ op: 'set', key: 'k', value: 'x' }));
  // Cut the follower off as the leader first sends the entry out (partitions apply at delivery).
  let cut = false;
  const unobserve = sim.observe((message) => {
    if (!cut && message.type === 'AppendEntries' && message.from === leader && message.entries.length > 0) {
      cut = true;
      sim.partition([leader, other], [follower]);
    }
  });
  await sim.runUntil(() => cut, 1000, 'the leader to replicate the write');
  unobserve();
  const later = track(sim, sim.node(leader)!.write({ op: 'set', key: 'k', value: 'y' }));
  await sim.runUntil(() => later.state === 'ok', 2000, 'the later write to commit without the follower');
  ensure(sim, firstWrite.state === 'pending', `the first write already settled (${firstWrite.state})`);
  sim.crash(leader);
  sim.heal();
  await sim.runUntil(() => sim.leader() === other, 3000, `${other} to lead`);
  await sim.runUntil(() => firstWrite.state !== 'pending', 5000, 'the retried write to settle');
  sim.restart(leader);
  await sim.runUntil(
    () => sim.ids.every((id) => sim.status(id)?.appliedIndex === sim.status(other)!.commitIndex),
    3000,
    'every server to apply everything',
  );
  // No-ops carry no command (the cluster's first one carries its id, machines/cluster-id.ts).
  const tagOf = (item: Entry) => (item.kind === 'command' && item.data ? decodeCommand(item.data) : null);
  const firstTag = sim
    .persisted(other)
    .entries.map(tagOf)
    .find((command) => command?.value === 'x')!;
  const copies = sim.persisted(other).entries.filter((item) => {
    const command = tagOf(item);
    return command?.session === firstTag.session && command.seq === firstTag.seq;
  }).length;
  return {
    sim,
    firstWrite,
    copies,
    values: sim.ids.map((id) => sim.node(id)!.get('k')),
    duplicatesSkipped: sim.ids.map((id) => sim.node(id)!.metrics().duplicatesSkipped),
    retries: sim.node(follower)!.metrics().retries,
  };
};

describe('raft node: a write retried after a leader change is applied once', () => {
  it.each([1, 2, 3])('seed %i: the log holds the tag twice, every store applied it once', async (seed) => {
    const run = await retryAfterLeaderChange(seed);
    expect(run.firstWrite.state).toBe('ok');
    expect(run.retries).toBeGreaterThan(0);
    expect(run.copies).toBe(2);
    expect(run.values).toEqual(['y', 'y', 'y']);
    expect(run.duplicatesSkipped).toEqual([1, 1, 1]);
  });

  it('broken variant (tags never recognized): the retry undoes the later write on every server', async () => {
    broken.dedup = true;
    const run = await retryAfterLeaderChange(1);
    expect(run.copies).toBe(2);
    expect(run.values).toEqual(['x', 'x', 'x']);
  });
});
