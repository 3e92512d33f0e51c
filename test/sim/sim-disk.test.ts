/**
 * The simulated durable disk itself (sim-disk.ts): what a crash keeps is exactly what completed
 * fsyncs covered (plus a seeded prefix of those in flight), in order; a dead handle changes
 * nothing; compaction reaches the disk with the flush that follows it.
 */
import { describe, expect, it } from 'vitest';
import type { PersistOutput } from '../../src/actors/memory-log.js';
import type { Entry } from '../../src/machines/messages.js';
import { createRng } from '../../src/machines/rng.js';
import { createAgenda } from './queue.js';
import { createSimDisk } from './sim-disk.js';

const entry = (term: number): Entry => ({ term, kind: 'noop', data: null });
const append = (
  fromIndex: number,
  terms: number[],
  hardState: PersistOutput['hardState'] = null,
): PersistOutput => ({
  type: 'persist',
  hardState,
  fromIndex,
  entries: terms.map(entry),
});

/** A disk on a tiny agenda of its own: `advance(ms)` runs what is due. */
const setup = (seed = 1) => {
  const agenda = createAgenda();
  let nowMs = 0;
  const disk = createSimDisk({
    rng: createRng(seed),
    nowMs: () => nowMs,
    schedule: (atMs, fn) => {
      agenda.push(atMs, fn);
    },
    wake: () => undefined,
    fsyncMs: { minMs: 2, maxMs: 5 },
  });
  const advance = (ms: number): void => {
    const until = nowMs + ms;
    for (let next = agenda.peek(); next && next.atMs <= until; next = agenda.peek()) {
      agenda.pop();
      nowMs = next.atMs;
      next.run();
    }
    nowMs = until;
  };
  return { disk, advance };
};

const lastIndexOf = (state: { snapshot: { index: number } | null; entries: readonly Entry[] }): number =>
  (state.snapshot?.index ?? 0) + state.entries.length;

describe('simulated durable disk', () => {
  it('keeps what a completed fsync covered and loses the rest at a crash', async () => {
    const { disk, advance } = setup();
    const log = disk.open();
    log.persist(append(1, [1, 1], { term: 1, votedFor: 's2' }));
    let synced = false;
    void log.flush!().then(() => {
      synced = true;
    });
    advance(5);
    await Promise.resolve();
    expect(synced).toBe(true);
    log.persist(append(3, [1], { term: 2, votedFor: 's3' }));
    expect(lastIndexOf(log.persisted())).toBe(3);
    expect(disk.unsyncedCount()).toBe(1);
    disk.crash();
    expect(disk.persisted().hardState).toEqual({ term: 1, votedFor: 's2' });
    expect(lastIndexOf(disk.persisted())).toBe(2);
    expect(disk.counters()).toMatchObject({
      crashesLosingPersists: 1,
      persistsLost: 1,
      crashesLosingVotes: 1,
    });
    // The next incarnation starts from what was synced.
    expect(lastIndexOf(disk.open().persisted())).toBe(2);
  });

  it('a crash keeps a prefix of the fsyncs in flight, in order, never a later one without an earlier one', () => {
    const kept = new Set<number>();
    for (let seed = 1; seed <= 40; seed += 1) {
      const { disk } = setup(seed);
      const log = disk.open();
      for (let index = 1; index <= 3; index += 1) {
        log.persist(append(index, [1]));
        void log.flush!();
      }
      disk.crash();
      const last = lastIndexOf(disk.synced());
      kept.add(last);
      expect(disk.counters().inFlightSurvived).toBe(last);
    }
    // Seeds pick every prefix length: none, some, all.
    expect([...kept].sort()).toEqual([0, 1, 2, 3]);
  });

  it('a dead handle changes nothing and hears no fsync completion', async () => {
    const { disk, advance } = setup();
    const old = disk.open();
    old.persist(append(1, [1]));
    let heard = false;
    void old.flush!().then(() => {
      heard = true;
    });
    disk.crash();
    const next = disk.open();
    old.persist(append(1, [7, 7, 7]));
    advance(10);
    await Promise.resolve();
    expect(heard).toBe(false);
    expect(lastIndexOf(next.persisted())).toBe(lastIndexOf(disk.synced()));
    expect(next.persisted().entries.every((item) => item.term === 1)).toBe(true);
  });

  it('compaction reaches the disk with the next flush, with the snapshot taken when it happened', async () => {
    const { disk, advance } = setup();
    const log = disk.open();
    log.persist(append(1, [1, 1, 1, 1]));
    void log.flush!();
    advance(5);
    const snapshot = { index: 3, term: 1, data: new Uint8Array([1, 2, 3]) };
    log.compact(3, () => snapshot);
    expect(log.persisted().snapshot).toEqual(snapshot);
    expect(disk.synced().snapshot).toBeNull();
    void log.flush!();
    advance(5);
    expect(disk.synced().snapshot).toEqual(snapshot);
    expect(disk.synced().entries).toHaveLength(1);
  });
});
