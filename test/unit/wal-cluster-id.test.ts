/**
 * The committed cluster id in the hard state (src/machines/cluster-id.ts `recordHardState`,
 * src/io/wal.ts, src/actors/wal-log.ts, src/actors/memory-log.ts), on real files:
 *
 * - a hard-state record may carry `clusterId`; replay keeps it across later hard-state records
 *   without it, as the memory log does;
 * - a record that changes a recorded id, or carries a malformed one, is refused (WAL_CORRUPT);
 * - a WAL written before the field existed opens with no id, and a node restarted on it does not
 *   take the id of its entry 1 (never known to be committed) but learns the id on apply;
 * - the durable log actor writes the id once, keeps it through later hard states, and refuses
 *   another one; a node restarted from its WAL knows its id before it applies anything.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemoryLog, type LogStorage } from '../../src/actors/memory-log.js';
import { createNode } from '../../src/actors/node.js';
import { createWalLog } from '../../src/actors/wal-log.js';
import { createMemoryTransport } from '../../src/index.js';
import { encodeHeader, encodeRecord, openWal, WAL_FILE_NAME, type WalRecord } from '../../src/io/wal.js';
import { clusterIdFromSeed, noopData } from '../../src/machines/cluster-id.js';
import type { Entry } from '../../src/machines/messages.js';

let root: string;
let nextDir = 0;
const freshDir = () => join(root, `wal-cid-${nextDir++}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'diskeyval-wal-cid-test-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const NODE = 'n1';
const A = clusterIdFromSeed(1);
const B = clusterIdFromSeed(2);
/** The cluster's first no-op, carrying `clusterId` (what a first leader appends at index 1). */
const firstNoop = (term: number, clusterId: string): Entry => ({
  term,
  kind: 'noop',
  data: noopData(1, clusterId),
});
const command = (term: number, ...data: number[]): Entry => ({
  term,
  kind: 'command',
  data: new Uint8Array(data),
});

/** A WAL file of `records` (no sync marker: nothing vouched, but every record is whole). */
const writeWal = async (dir: string, records: readonly WalRecord[]): Promise<void> => {
  const wal = await openWal(dir, NODE);
  await wal.close();
  await writeFile(
    join(dir, WAL_FILE_NAME),
    Buffer.concat([encodeHeader(NODE), ...records.map(encodeRecord)]),
  );
};

/** The hard state a sequence of records leaves in the memory log (the reference replay). */
const memoryHardState = (records: readonly WalRecord[]) => {
  const log = createMemoryLog();
  for (const record of records)
    log.persist({
      type: 'persist',
      hardState: record.hardState,
      fromIndex: record.fromIndex,
      entries: [...record.entries],
    });
  return log.persisted().hardState;
};

describe('the cluster id in the WAL hard state', () => {
  it('is persisted, and kept across later hard-state records without it (as the memory log keeps it)', async () => {
    const dir = freshDir();
    const records: WalRecord[] = [
      { hardState: { term: 1, votedFor: NODE }, fromIndex: 1, entries: [firstNoop(1, A), command(1, 7)] },
      { hardState: { term: 1, votedFor: NODE, clusterId: A }, fromIndex: -1, entries: [] },
      { hardState: { term: 2, votedFor: null }, fromIndex: -1, entries: [] },
      { hardState: null, fromIndex: 3, entries: [command(2, 8)] },
      // The same id again is no change.
      { hardState: { term: 3, votedFor: 'n2', clusterId: A }, fromIndex: -1, entries: [] },
      { hardState: { term: 4, votedFor: 'n3' }, fromIndex: -1, entries: [] },
    ];
    await writeWal(dir, records);
    const wal = await openWal(dir, NODE);
    expect(wal.info.records).toBe(records.length);
    expect(wal.state.hardState).toEqual({ term: 4, votedFor: 'n3', clusterId: A });
    expect(memoryHardState(records)).toEqual(wal.state.hardState);
    // An id that was only recorded later than the term changes is kept just the same.
    expect(memoryHardState(records.slice(0, 3))).toEqual({ term: 2, votedFor: null, clusterId: A });
    await wal.close();
  });

  it('refuses (WAL_CORRUPT) a record that changes the recorded id, or carries a malformed one', async () => {
    const changed = freshDir();
    await writeWal(changed, [
      { hardState: { term: 1, votedFor: null, clusterId: A }, fromIndex: -1, entries: [] },
      { hardState: { term: 2, votedFor: null, clusterId: B }, fromIndex: -1, entries: [] },
    ]);
    const refusal = await openWal(changed, NODE).then(
      () => null,
      (error: Error & { code?: string }) => error,
    );
    expect(refusal).toMatchObject({ code: 'WAL_CORRUPT' });
    expect(refusal!.message).toContain(`the cluster id changes from ${A} to ${B}`);
    for (const bad of ['ABC', A.toUpperCase(), `${A}00`, null, 5]) {
      const dir = freshDir();
      await writeWal(dir, [
        { hardState: { term: 1, votedFor: null, clusterId: bad as string }, fromIndex: -1, entries: [] },
      ]);
      await expect(openWal(dir, NODE), String(bad)).rejects.toMatchObject({
        code: 'WAL_CORRUPT',
        message: expect.stringContaining('bad hardState.clusterId'),
      });
    }
  });

  it('is absent from a WAL written before the field existed, even when its entry 1 carries an id', async () => {
    const dir = freshDir();
    await writeWal(dir, [
      { hardState: { term: 1, votedFor: NODE }, fromIndex: 1, entries: [firstNoop(1, A)] },
    ]);
    const wal = await openWal(dir, NODE);
    expect(wal.state.hardState).toEqual({ term: 1, votedFor: NODE });
    expect('clusterId' in wal.state.hardState).toBe(false);
    await wal.close();
  });
});

describe('the durable log actor and the node', () => {
  it('write the id once, keep it through later hard states and a reopen, and refuse another one', async () => {
    const dir = freshDir();
    const log = await createWalLog(dir, NODE);
    log.persist({
      type: 'persist',
      hardState: { term: 1, votedFor: NODE },
      fromIndex: 1,
      entries: [firstNoop(1, A)],
    });
    expect(log.recordClusterId(A)).toBe(true);
    expect(log.recordClusterId(A)).toBe(false);
    log.persist({ type: 'persist', hardState: { term: 2, votedFor: null }, fromIndex: -1, entries: [] });
    expect(log.persisted().hardState).toEqual({ term: 2, votedFor: null, clusterId: A });
    expect(() => log.recordClusterId(B)).toThrow(/cluster id changes/);
    await log.flush();
    expect(log.stats().records).toBe(3);
    await log.close();
    const reopened = await createWalLog(dir, NODE);
    expect(reopened.persisted().hardState).toEqual({ term: 2, votedFor: null, clusterId: A });
    await reopened.close();
  });

  /** A node on `log` with these voters (fast timers, no randomness left to chance). */
  const nodeOn = (log: LogStorage, voters: string[]) =>
    createNode({
      id: NODE,
      voters,
      transport: createMemoryTransport(),
      electionTimeoutMs: 20,
      heartbeatMs: 5,
      proposalTimeoutMs: 10_000,
      seed: 3,
      session: 1,
      log,
    });
  /** A node on `log` that cannot be elected (its other voter never runs): it applies nothing. */
  const stuckNode = (log: LogStorage) => nodeOn(log, [NODE, 'absent']);

  it('a restart knows the id its hard state recorded, never the one of an uncommitted entry 1', async () => {
    const old = freshDir();
    // What the bug left: the first leader's no-op with id A, never committed, and no recorded id.
    await writeWal(old, [
      { hardState: { term: 1, votedFor: NODE }, fromIndex: 1, entries: [firstNoop(1, A)] },
    ]);
    const oldNode = stuckNode(await createWalLog(old, NODE));
    await oldNode.start();
    expect(oldNode.clusterId()).toBeNull();
    await oldNode.stop();

    const recorded = freshDir();
    // Its entry 1 was replaced by B's (committed) and applied: the hard state recorded B.
    await writeWal(recorded, [
      { hardState: { term: 2, votedFor: null }, fromIndex: 1, entries: [firstNoop(2, B)] },
      { hardState: { term: 2, votedFor: null, clusterId: B }, fromIndex: -1, entries: [] },
    ]);
    const node = stuckNode(await createWalLog(recorded, NODE));
    await node.start();
    expect(node.status().appliedIndex).toBe(0);
    expect(node.clusterId()).toBe(B);
    await node.stop();
  });

  it('an old-format WAL: the node learns the id on apply and records it, so the next start knows it', async () => {
    const dir = freshDir();
    await writeWal(dir, [
      { hardState: { term: 1, votedFor: NODE }, fromIndex: 1, entries: [firstNoop(1, A)] },
    ]);
    const solo = () => createWalLog(dir, NODE).then((log) => nodeOn(log, [NODE]));
    const first = await solo();
    await first.start();
    expect(first.clusterId()).toBeNull();
    // Alone, it elects itself and commits its entry 1 with its own no-op: now A is committed.
    await first.write({ op: 'set', key: 'k', value: 1 });
    expect(first.clusterId()).toBe(A);
    // In the hard state at once; on disk by the time the node has stopped (its log flushes on close).
    expect(first.log().persisted().hardState.clusterId).toBe(A);
    await first.stop();
    const second = await solo();
    await second.start();
    expect(second.clusterId()).toBe(A);
    await second.stop();
  });
});
