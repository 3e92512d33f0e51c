/**
 * The write-ahead log (src/io/wal.ts), the durable log actor (src/actors/wal-log.ts) and the raft
 * node's outbox (durable before acknowledged), on real files in a temp dir with real fdatasync.
 *
 * - the file: round trip, reopen after close, replay semantics (truncate-and-append, hard-state-only
 *   records), a torn tail cut at every byte offset of the last record, a bad crc or length in the
 *   middle of a file with no sync marker after it (nothing vouched as synced) cut from there on, a
 *   well-framed foreign record refused (WAL_CORRUPT); damage before a sync marker, foreign files,
 *   the identity file and incarnations are in wal-recovery.test.ts, the dir lock in wal-lock.test.ts;
 * - group commit: N persists -> one write and one fdatasync, never two writes in flight;
 * - the node: nothing emitted after a persist reaches the world before the flush resolves; a
 *   cluster on `persistence` restarts with its term, vote, log and data.
 */
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createMemoryLog, type LogStorage, type PersistOutput } from '../../src/actors/memory-log.js';
import { createNode } from '../../src/actors/node.js';
import { createWalLog } from '../../src/actors/wal-log.js';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';
import {
  encodeHeader,
  encodeRecord,
  openWal,
  scanWal,
  WAL_FILE_NAME,
  WAL_MARKER_BYTES,
  WAL_RECORD_HEADER_BYTES,
  type WalRecord,
  type WalState,
} from '../../src/io/wal.js';
import type { Entry } from '../../src/machines/messages.js';

let root: string;
let nextDir = 0;
const freshDir = () => join(root, `wal-${nextDir++}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'diskeyval-wal-test-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

afterEach(() => {
  vi.restoreAllMocks();
});

const bytes = (...values: number[]) => new Uint8Array(values);
/** The node every WAL here belongs to. */
const NODE = 'n1';
const HEADER_BYTES = encodeHeader(NODE).length;
/** A WAL file of `records` with no sync marker (as if the process died before any fsync completed). */
const fileOf = (records: readonly WalRecord[], nodeId = NODE) =>
  Buffer.concat([encodeHeader(nodeId), ...records.map(encodeRecord)]);
const command = (term: number, ...data: number[]): Entry => ({ term, kind: 'command', data: bytes(...data) });
const noop = (term: number): Entry => ({ term, kind: 'noop', data: null });

const persist = (record: WalRecord): PersistOutput => ({
  type: 'persist',
  hardState: record.hardState,
  fromIndex: record.fromIndex,
  entries: [...record.entries],
});

/** The state a sequence of records replays to, by the memory log's rules (the reference). */
const expectedState = (records: readonly WalRecord[]): WalState => {
  const log = createMemoryLog();
  for (const record of records) log.persist(persist(record));
  const { hardState, entries } = log.persisted();
  return { hardState, snapshot: null, entries: [...entries] };
};

/** A history with every kind of record: votes, appends, a conflicting suffix replaced, hard-state-only. */
const HISTORY: WalRecord[] = [
  { hardState: { term: 1, votedFor: 'n1' }, fromIndex: -1, entries: [] },
  { hardState: null, fromIndex: 1, entries: [noop(1), command(1, 1, 2, 3)] },
  { hardState: null, fromIndex: 3, entries: [command(1, 4), command(1, 5), command(1, 6)] },
  { hardState: { term: 2, votedFor: null }, fromIndex: -1, entries: [] },
  // A new leader overwrites the follower's uncommitted suffix from index 4.
  { hardState: null, fromIndex: 4, entries: [noop(2), command(2, 7, 7)] },
  { hardState: { term: 3, votedFor: 'n2' }, fromIndex: 6, entries: [command(3, 8)] },
];

const writeRecords = async (dir: string, records: readonly WalRecord[]) => {
  const wal = await openWal(dir, NODE);
  await wal.append(records);
  await wal.close();
  return readFile(join(dir, WAL_FILE_NAME));
};

describe('the WAL file', () => {
  it('round-trips every kind of record, and reopens after close with the same state', async () => {
    const dir = freshDir();
    const first = await openWal(dir, NODE);
    expect(first.info).toMatchObject({
      created: true,
      records: 0,
      bytes: HEADER_BYTES,
      cutReason: null,
      cutBytes: 0,
    });
    expect(first.state).toEqual({ hardState: { term: 0, votedFor: null }, snapshot: null, entries: [] });
    for (const record of HISTORY.slice(0, 3)) await first.append([record]);
    await first.append(HISTORY.slice(3));
    expect(first.stats()).toMatchObject({
      records: HISTORY.length,
      appendedRecords: HISTORY.length,
      syncs: 4,
    });
    await first.close();
    await expect(first.append(HISTORY)).rejects.toMatchObject({ code: 'WAL_CLOSED' });

    const size = (await stat(join(dir, WAL_FILE_NAME))).size;
    const second = await openWal(dir, NODE);
    expect(second.info).toMatchObject({ created: false, records: HISTORY.length, bytes: size, cutAt: null });
    expect(second.state).toEqual(expectedState(HISTORY));
    expect(second.state.hardState).toEqual({ term: 3, votedFor: 'n2' });
    expect(second.state.entries.map((entry) => entry.term)).toEqual([1, 1, 1, 2, 2, 3]);
    // Appending after a reopen extends the same file.
    const more: WalRecord = { hardState: null, fromIndex: 7, entries: [command(3, 9)] };
    await second.append([more]);
    await second.close();
    const third = await openWal(dir, NODE);
    expect(third.state).toEqual(expectedState([...HISTORY, more]));
    expect(third.info.records).toBe(HISTORY.length + 1);
    await third.close();
  });

  it('replays truncate-and-append and hard-state-only records like the memory log', async () => {
    const records: WalRecord[] = [
      {
        hardState: { term: 1, votedFor: null },
        fromIndex: 1,
        entries: [noop(1), command(1, 1), command(1, 2)],
      },
      // Hard state only: the log stays.
      { hardState: { term: 2, votedFor: 'n3' }, fromIndex: -1, entries: [] },
      // Replace from 2: index 3 is gone, the new entries take 2 and 3 and 4.
      { hardState: null, fromIndex: 2, entries: [command(2, 9), command(2, 10), command(2, 11)] },
      // Replace everything from 1.
      { hardState: null, fromIndex: 1, entries: [noop(3)] },
      // Append at the end; the hard state stays.
      { hardState: null, fromIndex: 2, entries: [command(3, 12)] },
    ];
    const dir = freshDir();
    await writeRecords(dir, records);
    const wal = await openWal(dir, NODE);
    expect(wal.state).toEqual({
      hardState: { term: 2, votedFor: 'n3' },
      snapshot: null,
      entries: [noop(3), command(3, 12)],
    });
    expect(wal.state).toEqual(expectedState(records));
    await wal.close();
    // After the first three records only.
    expect(scanWal(fileOf(records.slice(0, 3))).state.entries).toEqual([
      noop(1),
      command(2, 9),
      command(2, 10),
      command(2, 11),
    ]);
  });

  it('replays installed snapshots like the memory log: the log restarts after them, with or without its suffix', async () => {
    const snap = (index: number, term: number, keptSuffix: boolean, ...data: number[]): WalRecord => ({
      hardState: null,
      fromIndex: -1,
      entries: [],
      snapshot: { index, term, data: bytes(...data), keptSuffix },
    });
    const records: WalRecord[] = [
      {
        hardState: { term: 2, votedFor: null },
        fromIndex: 1,
        entries: [noop(1), command(1, 1), command(2, 2)],
      },
      // The snapshot's last entry (2, term 1) is held: entry 3 stays.
      snap(2, 1, true, 7, 7),
      { hardState: null, fromIndex: 4, entries: [command(2, 3), command(2, 4)] },
      // A snapshot past the end: the log is empty after it.
      snap(9, 3, false, 8, 8, 8),
      { hardState: null, fromIndex: 10, entries: [noop(4)] },
    ];
    const memory = createMemoryLog(undefined, { keepSnapshots: true });
    for (const record of records) {
      if (record.snapshot) memory.installSnapshot({ type: 'installSnapshot', ...record.snapshot });
      else memory.persist(persist(record));
    }
    const dir = freshDir();
    await writeRecords(dir, records);
    const wal = await openWal(dir, NODE);
    expect(wal.state).toEqual(memory.persisted());
    expect(wal.state.snapshot).toEqual({ index: 9, term: 3, data: bytes(8, 8, 8) });
    expect(wal.state.entries).toEqual([noop(4)]);
    await wal.close();
    // After the first three records: the suffix after the first snapshot was kept.
    const early = scanWal(fileOf(records.slice(0, 3))).state;
    expect(early.snapshot?.index).toBe(2);
    expect(early.entries).toEqual([command(2, 2), command(2, 3), command(2, 4)]);
    // An entry inside the snapshot, or a snapshot that goes back, is not damage: WAL_CORRUPT.
    for (const bad of [
      [snap(5, 1, false, 1), { hardState: null, fromIndex: 3, entries: [noop(1)] }],
      [snap(5, 1, false, 1), snap(4, 1, false, 1)],
    ] as WalRecord[][]) {
      expect(() => scanWal(fileOf(bad))).toThrow(expect.objectContaining({ code: 'WAL_CORRUPT' }));
    }
  });

  it('rewrite replaces the file with a shorter history; appends continue in the new file; a leftover tmp file is ignored', async () => {
    const dir = freshDir();
    const wal = await openWal(dir, NODE);
    await wal.append(HISTORY);
    const before = (await stat(join(dir, WAL_FILE_NAME))).size;
    const compacted: WalRecord[] = [
      {
        hardState: { term: 3, votedFor: 'n2' },
        fromIndex: -1,
        entries: [],
        snapshot: { index: 5, term: 2, data: bytes(9, 9), keptSuffix: false },
      },
      { hardState: null, fromIndex: 6, entries: [noop(3)] },
    ];
    await wal.rewrite(compacted);
    await wal.append([{ hardState: null, fromIndex: 7, entries: [command(3, 7)] }]);
    expect(wal.stats()).toMatchObject({ rewrites: 1, records: 3 });
    await wal.close();
    expect((await stat(join(dir, WAL_FILE_NAME))).size).toBeLessThan(before + 64);
    // A crash during a later rewrite leaves a tmp file beside the whole old file.
    await writeFile(join(dir, `${WAL_FILE_NAME}.tmp`), bytes(1, 2, 3));
    const reopened = await openWal(dir, NODE);
    expect(reopened.state).toEqual({
      hardState: { term: 3, votedFor: 'n2' },
      snapshot: { index: 5, term: 2, data: bytes(9, 9) },
      entries: [noop(3), command(3, 7)],
    });
    await expect(stat(join(dir, `${WAL_FILE_NAME}.tmp`))).rejects.toMatchObject({ code: 'ENOENT' });
    await reopened.close();
  });

  it('the durable log actor writes an installed snapshot before it resolves, and reopens from it', async () => {
    const dir = freshDir();
    const log = await createWalLog(dir, NODE);
    log.persist(
      persist({ hardState: { term: 1, votedFor: 'n1' }, fromIndex: 1, entries: [noop(1), command(1, 5)] }),
    );
    log.installSnapshot({
      type: 'installSnapshot',
      index: 40,
      term: 3,
      data: bytes(1, 2, 3),
      keptSuffix: false,
    });
    log.persist(persist({ hardState: null, fromIndex: 41, entries: [command(3, 6)] }));
    await log.flush();
    // Own compaction frees the mirror only; the file keeps what it had.
    log.compact(40, () => ({ index: 40, term: 3, data: bytes(1, 2, 3) }));
    await log.close();
    const reopened = await createWalLog(dir, NODE);
    expect(reopened.persisted()).toEqual({
      hardState: { term: 1, votedFor: 'n1' },
      snapshot: { index: 40, term: 3, data: bytes(1, 2, 3) },
      entries: [command(3, 6)],
    });
    expect(reopened.lastIndex()).toBe(41);
    await reopened.close();
  });

  it('cuts a torn last record at every byte offset, keeps everything before it, and appends after the cut', async () => {
    const dir = freshDir();
    await writeRecords(dir, []);
    const full = fileOf(HISTORY);
    const lastLength = encodeRecord(HISTORY.at(-1)!).length;
    const lastStart = full.length - lastLength;
    const before = expectedState(HISTORY.slice(0, -1));
    for (let kept = 0; kept < lastLength; kept += 1) {
      await writeFile(join(dir, WAL_FILE_NAME), full.subarray(0, lastStart + kept));
      const wal = await openWal(dir, NODE);
      const expectCut = kept > 0;
      expect(wal.info, `torn after ${kept} bytes`).toMatchObject({
        records: HISTORY.length - 1,
        bytes: lastStart,
        cutAt: expectCut ? lastStart : null,
        cutReason: expectCut ? 'torn' : null,
        cutBytes: kept,
        cutRecords: expectCut ? 1 : 0,
      });
      expect(wal.state).toEqual(before);
      expect((await stat(join(dir, WAL_FILE_NAME))).size).toBe(lastStart + WAL_MARKER_BYTES);
      // Every few offsets: the log goes on after the cut as if the torn record had never been.
      if (kept % 7 === 0) {
        const next: WalRecord = { hardState: null, fromIndex: 6, entries: [command(2, 42)] };
        await wal.append([next]);
        await wal.close();
        const reopened = await openWal(dir, NODE);
        expect(reopened.info.cutReason).toBeNull();
        expect(reopened.state).toEqual(expectedState([...HISTORY.slice(0, -1), next]));
        await reopened.close();
      } else {
        await wal.close();
      }
    }
  });

  it('with no sync marker after it (nothing vouched as synced), cuts from a bad record in the middle, and counts the records cut', async () => {
    const dir = freshDir();
    await writeRecords(dir, []);
    const full = fileOf(HISTORY);
    const sizes = HISTORY.map((record) => encodeRecord(record).length);
    const startOf = (i: number) => HEADER_BYTES + sizes.slice(0, i).reduce((a, b) => a + b, 0);
    for (const [damaged, where] of [
      [2, 'body'],
      [2, 'crc'],
      [0, 'body'],
      [5, 'body'],
    ] as const) {
      const copy = Buffer.from(full);
      const offset = startOf(damaged) + (where === 'crc' ? 5 : WAL_RECORD_HEADER_BYTES + 1);
      copy[offset] = copy[offset]! ^ 0x40;
      await writeFile(join(dir, WAL_FILE_NAME), copy);
      const wal = await openWal(dir, NODE);
      expect(wal.info, `record ${damaged} damaged in its ${where}`).toMatchObject({
        records: damaged,
        bytes: startOf(damaged),
        cutAt: startOf(damaged),
        cutReason: 'bad-crc',
        cutBytes: full.length - startOf(damaged),
        cutRecords: HISTORY.length - damaged,
      });
      expect(wal.state).toEqual(expectedState(HISTORY.slice(0, damaged)));
      // Cut there, then the open's own marker (carrying its incarnation) after it.
      expect((await stat(join(dir, WAL_FILE_NAME))).size).toBe(startOf(damaged) + WAL_MARKER_BYTES);
      await wal.close();
    }
    // A length that runs past the end of the file, and a zero length.
    for (const length of [0xffff_fff0, 0]) {
      const copy = Buffer.from(full);
      copy.writeUInt32BE(length, startOf(3));
      await writeFile(join(dir, WAL_FILE_NAME), copy);
      const wal = await openWal(dir, NODE);
      expect(wal.info).toMatchObject({
        records: 3,
        cutAt: startOf(3),
        cutReason: 'bad-length',
        cutRecords: 1,
      });
      expect(wal.state).toEqual(expectedState(HISTORY.slice(0, 3)));
      await wal.close();
    }
  });

  it('refuses (WAL_CORRUPT, nothing cut) a record with a good crc that is not a persist output', async () => {
    const dir = freshDir();
    await writeRecords(dir, []);
    const good = fileOf(HISTORY.slice(0, 2));
    // A well-framed record whose body is some other map: frame it with a valid crc by hand.
    const { encode } = await import('@msgpack/msgpack');
    const { crc32 } = await import('node:zlib');
    const body = encode({ hello: 'world' });
    const header = Buffer.alloc(8);
    header.writeUInt32BE(body.length, 0);
    header.writeUInt32BE(crc32(body, crc32(header.subarray(0, 4))), 4);
    const file = Buffer.concat([good, header, body]);
    await writeFile(join(dir, WAL_FILE_NAME), file);
    await expect(openWal(dir, NODE)).rejects.toMatchObject({ code: 'WAL_CORRUPT' });
    expect((await stat(join(dir, WAL_FILE_NAME))).size).toBe(file.length);
    // A record that would leave a gap in the log is refused the same way.
    await writeFile(
      join(dir, WAL_FILE_NAME),
      fileOf([{ hardState: null, fromIndex: 5, entries: [command(1, 1)] }]),
    );
    await expect(openWal(dir, NODE)).rejects.toMatchObject({ code: 'WAL_CORRUPT' });
  });
});

/** Spies on FileHandle.prototype write and datasync; tracks how many writes overlap. */
const spyOnFiles = async () => {
  const probe = await open(join(root, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as {
    write: (...args: unknown[]) => Promise<unknown>;
    datasync: () => Promise<void>;
  };
  await probe.close();
  const counts = { writes: 0, datasyncs: 0, inFlight: 0, maxInFlight: 0 };
  const write = proto.write;
  const datasync = proto.datasync;
  vi.spyOn(proto, 'write').mockImplementation(async function (this: unknown, ...args: unknown[]) {
    counts.writes += 1;
    counts.inFlight += 1;
    counts.maxInFlight = Math.max(counts.maxInFlight, counts.inFlight);
    try {
      return await write.apply(this, args);
    } finally {
      counts.inFlight -= 1;
    }
  });
  vi.spyOn(proto, 'datasync').mockImplementation(async function (this: unknown) {
    counts.datasyncs += 1;
    counts.inFlight += 1;
    counts.maxInFlight = Math.max(counts.maxInFlight, counts.inFlight);
    try {
      return await datasync.apply(this);
    } finally {
      counts.inFlight -= 1;
    }
  });
  return counts;
};

describe('the durable log actor: group commit', () => {
  it('writes N persists with one write and one fdatasync per flush', async () => {
    const dir = freshDir();
    const log = await createWalLog(dir, NODE);
    expect(log.durable).toBe(true);
    const counts = await spyOnFiles();
    const n = 200;
    for (let i = 1; i <= n; i += 1) {
      log.persist({
        type: 'persist',
        hardState: i % 50 === 0 ? { term: i / 50, votedFor: null } : null,
        fromIndex: i,
        entries: [command(Math.floor(i / 50), i & 0xff)],
      });
    }
    // The mirror is synchronous, before anything is durable.
    expect(log.lastIndex()).toBe(n);
    expect(log.stats().pendingRecords).toBe(n);
    await log.flush();
    expect(counts).toMatchObject({ writes: 1, datasyncs: 1 });
    expect(log.stats()).toMatchObject({ syncs: 1, records: n, maxGroupRecords: n, pendingRecords: 0 });
    // Nothing queued: a flush writes nothing.
    await log.flush();
    expect(counts.datasyncs).toBe(1);
    await log.close();
    const reopened = await createWalLog(dir, NODE);
    expect(reopened.persisted().entries).toHaveLength(n);
    expect(reopened.persisted().hardState).toEqual({ term: 4, votedFor: null });
    await reopened.close();
  });

  it('never has two writes in flight: flushes asked for during one form the next group', async () => {
    const log = await createWalLog(freshDir(), NODE);
    const counts = await spyOnFiles();
    const flushes: Promise<void>[] = [];
    for (let i = 1; i <= 100; i += 1) {
      log.persist({ type: 'persist', hardState: null, fromIndex: i, entries: [command(1, i)] });
      // A flush after every persist: the first group is one record, the rest wait for it and
      // join one second group.
      flushes.push(log.flush());
    }
    await Promise.all(flushes);
    expect(counts.maxInFlight).toBe(1);
    expect(counts.datasyncs).toBe(2);
    expect(log.stats()).toMatchObject({ syncs: 2, records: 100, maxGroupRecords: 99 });
    await log.close();
  });
});

describe('the WAL after a failed write or sync', () => {
  it('fails that append and every later one (fail-stop), even once the disk works again', async () => {
    const dir = freshDir();
    const wal = await openWal(dir, NODE);
    await wal.append(HISTORY.slice(0, 1));
    const probe = await open(join(root, 'probe-fail'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const spy = vi
      .spyOn(proto, 'datasync')
      .mockRejectedValueOnce(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(wal.append(HISTORY.slice(1, 2))).rejects.toMatchObject({ code: 'EIO' });
    await expect(wal.append(HISTORY.slice(2, 3))).rejects.toMatchObject({ code: 'EIO' });
    expect(spy).toHaveBeenCalledTimes(1);
    expect(wal.stats().syncs).toBe(1);
    await wal.close();
  });
});

// ---- the raft node's outbox ---------------------------------------------------------------------

/** A durable log whose flushes the test releases by hand. */
const gatedLog = () => {
  const mirror = createMemoryLog();
  const gates: Array<() => void> = [];
  let pending = 0;
  const groups: number[] = [];
  const log: LogStorage & { gates: typeof gates; groups: number[] } = {
    persist: (output) => {
      mirror.persist(output);
      pending += 1;
    },
    installSnapshot: (output) => {
      mirror.installSnapshot(output);
      pending += 1;
    },
    compact: mirror.compact,
    recordClusterId: (clusterId) => {
      const recorded = mirror.recordClusterId(clusterId);
      if (recorded) pending += 1;
      return recorded;
    },
    persisted: mirror.persisted,
    writes: mirror.writes,
    lastIndex: mirror.lastIndex,
    durable: true,
    flush: () => {
      groups.push(pending);
      pending = 0;
      return new Promise<void>((resolve) => gates.push(resolve));
    },
    close: async () => undefined,
    gates,
    groups,
  };
  return log;
};

/** Resolves once `holds()` is true, polled on every macrotask turn, failing after `boundMs`. */
const until = async (holds: () => boolean, what: string, boundMs = 5000) => {
  const started = performance.now();
  while (!holds()) {
    if (performance.now() - started > boundMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
};

/** A one-member node on `log` (it elects itself), with the same timings in every test here. */
const soloNode = (log: LogStorage, onFatal?: (error: Error) => void) =>
  createNode({
    id: 'solo',
    voters: ['solo'],
    transport: createMemoryTransport(),
    electionTimeoutMs: 20,
    heartbeatMs: 5,
    proposalTimeoutMs: 10_000,
    seed: 7,
    session: 1,
    log,
    ...(onFatal ? { onFatal } : {}),
  });

describe('the raft node with a durable log: durable before acknowledged', () => {
  it('holds every output emitted after a persist until the flush resolves, then carries them out in order', async () => {
    const log = gatedLog();
    const node = soloNode(log);
    await node.start();
    try {
      // Elected on its own (the machine says leader), but its vote and no-op are not durable yet.
      await until(() => node.status().role === 'leader' && log.gates.length === 1, 'the first flush');
      let written = false;
      const write = node.write({ op: 'set', key: 'k', value: 1 }).then(() => {
        written = true;
      });
      // The proposal is persisted (in the mirror) and waits behind the first flush.
      await until(() => log.lastIndex() >= 2, 'the proposal to be persisted');
      for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(written).toBe(false);
      expect(node.status().appliedIndex).toBe(0);
      expect(node.metrics().outbox).toBeGreaterThan(0);
      // First flush done: the election's outputs go out; the proposal's persist forms the next group.
      log.gates.shift()!();
      await until(() => log.gates.length === 1, 'the second flush');
      for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
      expect(written).toBe(false);
      log.gates.shift()!();
      await write;
      expect(node.get('k')).toBe(1);
      expect(log.groups.length).toBe(2);
      expect(log.groups.reduce((a, b) => a + b, 0)).toBe(log.writes());
    } finally {
      while (log.gates.length > 0) log.gates.shift()!();
      await node.stop();
    }
  });
});

describe('a leader replicates before its own fsync (dissertation §10.2.1)', () => {
  /** A durable log that flushes at once until `hold()`, then waits for `release()`. */
  const switchableLog = () => {
    const mirror = createMemoryLog();
    let holding = false;
    const gates: Array<() => void> = [];
    const log: LogStorage & { hold: () => void; release: () => void; holding: () => boolean } = {
      persist: mirror.persist,
      installSnapshot: mirror.installSnapshot,
      compact: mirror.compact,
      recordClusterId: mirror.recordClusterId,
      persisted: mirror.persisted,
      writes: mirror.writes,
      lastIndex: mirror.lastIndex,
      durable: true,
      flush: () => (holding ? new Promise<void>((resolve) => gates.push(resolve)) : Promise.resolve()),
      close: async () => undefined,
      hold: () => {
        holding = true;
      },
      release: () => {
        holding = false;
        while (gates.length > 0) gates.shift()!();
      },
      holding: () => holding,
    };
    return log;
  };

  it('sends AppendEntries before its flush, and counts its own copy only once it is durable', async () => {
    const ids = ['a', 'b', 'c'];
    const transport = createMemoryTransport();
    const logs = Object.fromEntries(ids.map((id) => [id, switchableLog()]));
    const nodes = ids.map((id, index) =>
      createNode({
        id,
        voters: ids,
        transport,
        electionTimeoutMs: 40,
        heartbeatMs: 10,
        proposalTimeoutMs: 10_000,
        seed: index + 11,
        session: index + 1,
        log: logs[id]!,
      }),
    );
    await Promise.all(nodes.map((node) => node.start()));
    try {
      await until(() => nodes.some((node) => node.status().role === 'leader'), 'a leader');
      const leader = nodes.find((node) => node.status().role === 'leader')!;
      const [fast, slow] = nodes.filter((node) => node !== leader) as [typeof leader, typeof leader];
      await leader.write({ op: 'set', key: 'warm', value: 0 });
      // The leader's disk and one follower's disk stall; the other follower's does not.
      logs[leader.id]!.hold();
      logs[slow.id]!.hold();
      let written = false;
      const write = leader.write({ op: 'set', key: 'k', value: 1 }).then(() => {
        written = true;
      });
      const index = leader.status().lastIndex + 1;
      // The AppendEntries left before the leader's flush: both followers hold the entry.
      await until(
        () => fast.log().lastIndex() >= index && slow.log().lastIndex() >= index,
        'the entry to reach both followers while the leader flush is held',
      );
      for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
      // Only one durable copy (the fast follower's) exists: counting the leader's in-memory copy
      // would make a majority, and a crash of the leader could then lose a committed entry.
      expect(leader.status().commitIndex).toBeLessThan(index);
      expect(written).toBe(false);
      // The leader's copy becomes durable: with the fast follower's that is a majority.
      logs[leader.id]!.release();
      await write;
      expect(leader.get('k')).toBe(1);
      expect(leader.status().commitIndex).toBeGreaterThanOrEqual(index);
    } finally {
      for (const log of Object.values(logs)) log.release();
      await Promise.all(nodes.map((node) => node.stop()));
    }
  });
});

describe('the raft node with a failing durable log', () => {
  it('stops itself (fail-stop) when a flush fails: nothing held goes out, waiting calls reject with STOPPED', async () => {
    const log = gatedLog();
    let fatal: Error | null = null;
    const failingLog: LogStorage = {
      ...log,
      flush: () => {
        log.gates.push(() => undefined);
        return Promise.reject(Object.assign(new Error('disk on fire'), { code: 'EIO' }));
      },
    };
    const node = soloNode(failingLog, (error) => {
      fatal = error;
    });
    await node.start();
    await until(() => fatal !== null, 'the failed flush to stop the node');
    expect(node.isStopped()).toBe(true);
    expect(node.metrics()).toMatchObject({ fatalError: 'disk on fire', flushes: 0 });
    expect(node.status().appliedIndex).toBe(0);
    await expect(node.write({ op: 'set', key: 'k', value: 1 })).rejects.toMatchObject({ code: 'STOPPED' });
    await node.stop();
  });
});

describe('diskeyval with persistence (in-process cluster, real WAL files)', () => {
  const IDS = ['p1', 'p2', 'p3'];
  const nodes: DiskeyvalNode[] = [];

  afterEach(async () => {
    await Promise.all(nodes.splice(0).map((node) => node.end()));
  });

  const startAll = async (dirs: Record<string, string>) => {
    const transport = createMemoryTransport();
    const started = IDS.map((nodeId) =>
      diskeyval({
        nodeId,
        peers: IDS.filter((id) => id !== nodeId),
        transport,
        electionTimeoutMs: 60,
        heartbeatMs: 15,
        persistence: { dir: dirs[nodeId]! },
      }),
    );
    nodes.push(...started);
    await Promise.all(started.map((node) => node.start()));
    return started;
  };

  it('rejects bad persistence options with INVALID_ARGUMENT', () => {
    const base = { nodeId: 'x', peers: [], transport: createMemoryTransport() };
    for (const persistence of [null, 'dir', { dir: '' }, { dir: 5 }, { dir: '/tmp/x', compactEvery: 0 }]) {
      expect(() => diskeyval({ ...base, persistence } as never), JSON.stringify(persistence)).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      );
    }
    expect(() => diskeyval({ ...base, persistence: { dir: '/tmp/x' }, log: createMemoryLog() })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
  });

  it('refuses to start on a WAL it cannot replay (WAL_CORRUPT); later calls reject with STOPPED', async () => {
    const dir = freshDir();
    await mkdir(dir, { recursive: true });
    await writeFile(
      join(dir, WAL_FILE_NAME),
      fileOf([{ hardState: null, fromIndex: 3, entries: [noop(1)] }], 'x'),
    );
    const node = diskeyval({
      nodeId: 'x',
      peers: [],
      transport: createMemoryTransport(),
      persistence: { dir },
    });
    nodes.push(node);
    await expect(node.start()).rejects.toMatchObject({ code: 'WAL_CORRUPT' });
    await expect(node.set('k', 1)).rejects.toMatchObject({ code: 'STOPPED' });
    expect(node.getMetrics().walBytes).toBeNull();
  });

  /** Opens nodes of one cluster (fresh dirs, one memory transport) that compact every `compactEvery` entries; each node can be opened again on its dir. */
  const compactingOpener = (compactEvery: number) => {
    const dirs = Object.fromEntries(IDS.map((id) => [id, join(freshDir(), id)]));
    const transport = createMemoryTransport();
    return (nodeId: string): DiskeyvalNode => {
      const node = diskeyval({
        nodeId,
        peers: IDS.filter((id) => id !== nodeId),
        transport,
        electionTimeoutMs: 60,
        heartbeatMs: 15,
        persistence: { dir: dirs[nodeId]!, compactEvery },
      });
      nodes.push(node);
      return node;
    };
  };

  it('a follower that was down while the others compacted catches up by snapshot, and restarts from it', async () => {
    const open = compactingOpener(20);
    const [a, b, c] = IDS.map(open) as [DiskeyvalNode, DiskeyvalNode, DiskeyvalNode];
    await Promise.all([a, b, c].map((node) => node.start()));
    for (let i = 0; i < 10; i += 1) await a.set(`early${i}`, i);
    // The node that is down is not the leader, so the other two keep committing.
    const down = [a, b, c].find((node) => !node.isLeader())!;
    const downId = down.getMetrics().nodeId;
    await down.end();
    const up = [a, b, c].filter((node) => node !== down);
    await Promise.all(Array.from({ length: 200 }, (_, i) => up[i % 2]!.set(`k${i}`, i)));
    expect(up.reduce((sum, node) => sum + node.getMetrics().compactions, 0)).toBeGreaterThan(0);

    const back = open(downId);
    // Listeners hear the snapshot as one change per key it changed.
    const heard = new Map<string, unknown>();
    back.on('change', (change) => heard.set(change.key, change.value));
    await back.start();
    expect(await back.get('k199')).toBe(199);
    expect(back.getMetrics().snapshotsInstalled).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 200; i += 1) expect(heard.get(`k${i}`), `change for k${i}`).toBe(i);
    expect(await back.get('early3', { consistency: 'local' })).toBe(3);
    await Promise.all(nodes.splice(0).map((node) => node.end()));

    // Restart everything: the snapshot the follower installed came back from its WAL.
    const again = IDS.map(open);
    await Promise.all(again.map((node) => node.start()));
    const restarted = again[IDS.indexOf(downId)]!;
    expect(await restarted.get('k150')).toBe(150);
    expect(await restarted.get('early9', { consistency: 'local' })).toBe(9);
  });

  it('cuts the WAL file once it has grown enough after compactions; a restart replays the cut file', async () => {
    const open = compactingOpener(100);
    const first = IDS.map(open);
    await Promise.all(first.map((node) => node.start()));
    // 400 keys written 12 times over: the state stays small while the history grows past 1 MiB.
    const value = 'v'.repeat(200);
    for (let round = 0; round < 12; round += 1) {
      await Promise.all(
        Array.from({ length: 400 }, (_, i) => first[i % 3]!.set(`k${i}`, `${round}:${value}`)),
      );
    }
    const metrics = first.map((node) => node.getMetrics());
    for (const m of metrics) {
      expect(m.walRewrites, `${m.nodeId} cut its WAL`).toBeGreaterThan(0);
      // 4,800 writes of ~260 B each are over 1.2 MB of history; a cut file holds about 400 keys.
      expect(m.walBytes!).toBeLessThan(1024 * 1024);
    }
    await Promise.all(nodes.splice(0).map((node) => node.end()));
    const second = IDS.map(open);
    await Promise.all(second.map((node) => node.start()));
    for (const node of second) {
      for (const i of [0, 199, 399]) expect(await node.get(`k${i}`)).toBe(`11:${value}`);
    }
  });

  it('restarts every node from its WAL: values, terms and votes survive; fsyncs are grouped', async () => {
    const dirs = Object.fromEntries(IDS.map((id) => [id, join(freshDir(), id)]));
    const first = await startAll(dirs);
    const writes = Array.from({ length: 300 }, (_, i) => first[i % 3]!.set(`k${i}`, i));
    await Promise.all(writes);
    const metrics = first.map((node) => node.getMetrics());
    for (const m of metrics) {
      expect(m.walSyncs).toBeGreaterThan(0);
      expect(m.walBytes).toBeGreaterThan(0);
    }
    const leaderMetrics = metrics.find((m) => m.role === 'leader')!;
    console.log(
      `300 concurrent writes: leader ${leaderMetrics.walRecords} WAL records in ${leaderMetrics.walSyncs} fdatasyncs; followers ${metrics
        .filter((m) => m !== leaderMetrics)
        .map((m) => `${m.walRecords}/${m.walSyncs}`)
        .join(', ')} records/syncs`,
    );
    // Group commit: far fewer syncs than writes.
    expect(leaderMetrics.walSyncs!).toBeLessThan(300);
    const terms = metrics.map((m) => m.term);
    await Promise.all(nodes.splice(0).map((node) => node.end()));

    const second = await startAll(dirs);
    // Before any election: the term and log came back from disk.
    const restored = second.map((node) => node.getMetrics());
    restored.forEach((m, i) => {
      expect(m.term, `${IDS[i]} term`).toBeGreaterThanOrEqual(terms[i]!);
    });
    // Every write was committed: a majority holds all 300 (and the leader's no-op) on disk.
    expect(restored.filter((m) => m.lastIndex >= 301).length).toBeGreaterThanOrEqual(2);
    for (const node of second) {
      for (const i of [0, 1, 150, 299]) expect(await node.get(`k${i}`)).toBe(i);
    }
  });
});
