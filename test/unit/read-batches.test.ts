/**
 * Read batching on the leader (src/actors/leader-batches.ts, requests.ts): one read batch in the
 * raft machine at a time; the reads that arrive while it waits for its heartbeat round go together
 * as the next batch once it is answered.
 *
 * - The batch bookkeeping alone: a second batch is held while the first is open, and released
 *   whole (the leader's own reads and a follower's, with local ids for the follower's) after it.
 * - On an in-memory 3-node cluster: reads issued one macrotask apart on the leader and on a
 *   follower, 64 at a time, without waiting for each other, all complete and see the write made
 *   before them, in at most one read batch per tick and origin. A requests actor that never opened the next
 *   batch after an answer would leave them waiting (the bound fails: broken variant checked by
 *   hand, removing `readRoundDone` after `readsReady`).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLeaderBatches, takeReads } from '../../src/actors/leader-batches.js';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';
import { anyLeader } from '../support/leader.js';
import { within } from '../support/within.js';

const BOUND_MS = 20_000;
const open: DiskeyvalNode[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
});

describe('leader read batches', () => {
  it('holds the next batch while one is in the machine, then takes every read queued meanwhile', () => {
    const batches = createLeaderBatches('n1');
    batches.reads.push({ type: 'ClientRead', from: 'n1', to: 'n1', ids: [1, 2] });
    expect(takeReads(batches)).toEqual([1, 2]);
    batches.reads.push({ type: 'ClientRead', from: 'n1', to: 'n1', ids: [3] });
    batches.reads.push({ type: 'ClientRead', from: 'n2', to: 'n1', ids: [7, 8] });
    expect(takeReads(batches)).toBeNull();
    expect(takeReads(batches)).toBeNull();
    batches.readRoundOpen = false; // the machine answered the first batch
    expect(takeReads(batches)).toEqual([3, -1, -2]);
    expect([...batches.readsForOthers.values()]).toEqual([
      { from: 'n2', id: 7 },
      { from: 'n2', id: 8 },
    ]);
    expect(takeReads(batches)).toBeNull();
    expect(batches.counters.readBatches).toBe(2);
  });

  it('completes reads that arrive while a batch is in flight, on the leader and through a follower', async () => {
    const transport = createMemoryTransport();
    const ids = ['r1', 'r2', 'r3'];
    const nodes = ids.map((nodeId, index) =>
      diskeyval({
        nodeId,
        peers: ids.filter((id) => id !== nodeId),
        transport,
        seed: index + 11,
        electionTimeoutMs: 150,
        heartbeatMs: 30,
      }),
    );
    open.push(...nodes);
    await Promise.all(nodes.map((node) => node.start()));
    const leader = await anyLeader(nodes, BOUND_MS);
    const follower = nodes.find((node) => node !== leader)!;
    await within(leader.set('k', 'v1'), 'a write', BOUND_MS);
    const before = leader.getMetrics().readBatches;
    const reads: Array<Promise<unknown>> = [];
    for (let tick = 0; tick < 20; tick += 1) {
      for (let index = 0; index < 64; index += 1) reads.push(leader.get('k'));
      for (let index = 0; index < 4; index += 1) reads.push(follower.get('k'));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const values = await within(Promise.all(reads), `${reads.length} reads`, BOUND_MS);
    expect(new Set(values)).toEqual(new Set(['v1']));
    const batches = leader.getMetrics().readBatches - before;
    console.info(`${reads.length} reads in ${batches} read batches on the leader`);
    expect(batches).toBeGreaterThan(0);
    expect(batches).toBeLessThanOrEqual(40);
  });
});
