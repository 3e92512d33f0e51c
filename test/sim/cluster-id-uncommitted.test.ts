/**
 * A cluster id that was never committed is never known (src/machines/cluster-id.ts; issue 11).
 *
 * The cluster's first leader appends its no-op at index 1 (minting id A) and is cut off before
 * that entry reaches anyone; it crashes. The other two, their logs empty, elect a leader that
 * mints id B and commits it. The first leader restarts with its state (the memory log kept whole,
 * or the durable simulated disk): its index 1 still holds A, uncommitted. It must not claim A (the
 * simulator's cluster-id check after every step; over mTLS the cluster and it would refuse each
 * other for good); it must catch up, its index 1 replaced by B's entry, learn B on apply, and from
 * then on know B across restarts (the id is kept in its durable hard state).
 *
 * Before the fix, a restart took the id from the log's index 1, committed or not, and every seed
 * failed with "cluster id: s<n> knows <A>, others <B>".
 */
import { describe, it } from 'vitest';
import { seedsFor } from './simulator.js';
import { restartsWithItsState } from './uncommitted-cluster-id.js';

const SEEDS = 6;

describe('a cluster id that was never committed', () => {
  it('is not known by the first leader restarted from its memory log; it learns the committed one', async () => {
    for (const seed of seedsFor(SEEDS, 1105)) await restartsWithItsState('memory', seed);
  });

  it('is not known by the first leader restarted from its durable disk; it learns the committed one', async () => {
    for (const seed of seedsFor(SEEDS, 1106)) await restartsWithItsState('durable', seed);
  });
});
