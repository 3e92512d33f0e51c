/**
 * Small snapshots (issue 12): what XState's inspector serializes of the machine (its snapshot, with
 * JSON) shows the log and the leader's progress as summaries computed from the live structures,
 * never entries or values, so its size does not grow with the log.
 */
import { describe, expect, it } from 'vitest';
import { createProgress } from '../../src/machines/progress.js';
import { createLog, summarizeLog } from '../../src/machines/raft-log.js';
import { createCluster } from './cluster.js';

const VOTERS = ['s1', 's2', 's3'];
const PROPOSALS = 1_000;
const VALUE_BYTES = 1024;
/** The bound every node's serialized snapshot stays under, whatever the log holds. */
const MAX_SNAPSHOT_BYTES = 8 * 1024;

const json = (cluster: ReturnType<typeof createCluster>, id: string) =>
  JSON.stringify(cluster.server(id).actor.getSnapshot());

describe("the machine's snapshot", () => {
  it(`stays under ${MAX_SNAPSHOT_BYTES} bytes after ${PROPOSALS} proposals of ${VALUE_BYTES} B, with correct summaries`, () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    cluster.settle();
    expect(cluster.role('s1')).toBe('leader');
    const value = new Uint8Array(VALUE_BYTES).fill(0x76);
    for (let batchId = 1; batchId <= PROPOSALS; batchId += 1) {
      cluster.send('s1', { type: 'propose', batchId, commands: [value] });
      if (batchId % 50 === 0) cluster.settle();
    }
    cluster.settle();
    // One more heartbeat round carries the last commit index to the followers.
    cluster.send('s1', { type: 'heartbeatTimeout' });
    cluster.settle();
    const last = PROPOSALS + 1; // the leader's no-op, then the proposals
    const sizes: Record<string, number> = {};
    for (const id of VOTERS) {
      const text = json(cluster, id);
      sizes[id] = text.length;
      expect(text.length, `${id}: ${text.length} bytes`).toBeLessThan(MAX_SNAPSHOT_BYTES);
      expect(text).not.toMatch(/"entries"\s*:\s*\[|"data"|118,118/);
      const { context } = JSON.parse(text);
      expect(context.log).toEqual({
        snapshotIndex: 0,
        snapshotTerm: 0,
        firstIndex: 1,
        lastIndex: last,
        lastTerm: 1,
        entryCount: last,
      });
      expect(context.commitIndex).toBe(last);
    }
    // Without the summary (a plain copy of the log), the same snapshot carries every value.
    const plainLog = JSON.stringify({ ...cluster.context('s1').log });
    expect(plainLog.length).toBeGreaterThan(PROPOSALS * VALUE_BYTES);
    const { progress } = JSON.parse(json(cluster, 's1')).context;
    for (const peer of ['s2', 's3']) {
      expect(progress[peer]).toMatchObject({
        state: 'replicate',
        matchIndex: last,
        nextIndex: last + 1,
        inflight: 0,
      });
    }
    console.info(
      `snapshot JSON bytes after ${PROPOSALS} proposals of ${VALUE_BYTES} B: ${JSON.stringify(sizes)}`,
    );
    cluster.stop();
  });

  it('shows what an in-place change did at once (the summary is computed when serialized)', () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    cluster.settle();
    cluster.send('s1', { type: 'propose', batchId: 1, commands: [new Uint8Array(10), new Uint8Array(10)] });
    cluster.settle();
    cluster.send('s1', { type: 'heartbeatTimeout' });
    cluster.settle();
    const before = JSON.parse(json(cluster, 's2')).context.log;
    expect(before).toMatchObject({ snapshotIndex: 0, lastIndex: 3, entryCount: 3 });
    // Compaction changes the log in place and assigns nothing: the snapshot must still show it.
    cluster.send('s2', { type: 'compact', index: 2 });
    const after = JSON.parse(json(cluster, 's2')).context.log;
    expect(after).toEqual({
      snapshotIndex: 2,
      snapshotTerm: 1,
      firstIndex: 3,
      lastIndex: 3,
      lastTerm: 1,
      entryCount: 1,
    });
    cluster.stop();
  });

  it('keeps the live structures comparable: the summaries are not enumerable fields', () => {
    const log = createLog([{ term: 1, kind: 'noop', data: null }]);
    expect(log).toEqual({ entries: [{ term: 1, kind: 'noop', data: null }], offset: 0, offsetTerm: 0 });
    expect(JSON.parse(JSON.stringify(log))).toEqual(summarizeLog(log));
    const progress = createProgress(4, 2);
    progress.inflight.push(5, 6);
    expect(Object.keys(progress)).not.toContain('toJSON');
    expect(JSON.parse(JSON.stringify(progress))).toMatchObject({ nextIndex: 5, incarnation: 2, inflight: 2 });
  });
});
