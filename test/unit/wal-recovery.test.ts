/**
 * WAL recovery (src/io/wal.ts, format version 1) on real files: the line between a torn tail
 * (cut, and reported) and damage in synced data (refused with WAL_CORRUPT) is the last sync
 * marker.
 *
 * - a crash during the last group's write: the file truncated at every byte offset of that group,
 *   and zeroed from every byte offset of it (pages never written), and a zeroed 16-byte window at
 *   every offset of it (pages reaching the disk out of order): the WAL opens, the cut is reported,
 *   and every record of every group whose append resolved before the crash is still there;
 * - one bit flipped in every byte before the last sync marker, in a cleanly closed WAL and in a
 *   crashed one: open refuses with WAL_CORRUPT naming the file and the offset, and leaves the file
 *   byte-identical; every bit of every byte of two records too;
 * - the broken variant (the old recovery: cut from the first bad item, markers ignored, through
 *   the test-only `checkMarkers: false`) silently loses acknowledged records on the same files;
 * - a file that is not a WAL (random bytes, a foreign file, the old headerless format, an unknown
 *   version, another node's), a 0-byte WAL, a WAL removed from a dir with an identity file:
 *   refused, untouched;
 * - incarnations grow from one open to the next, even when the clock goes back.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemoryLog, type PersistOutput } from '../../src/actors/memory-log.js';
import { createWalLog } from '../../src/actors/wal-log.js';
import { createMemoryTransport, diskeyval, type WarningEvent } from '../../src/index.js';
import {
  encodeHeader,
  encodeRecord,
  openWal,
  scanWal,
  WAL_FILE_NAME,
  WAL_IDENTITY_FILE_NAME,
  WAL_MARKER_BYTES,
  type WalRecord,
  type WalState,
} from '../../src/io/wal.js';
import type { Entry } from '../../src/machines/messages.js';
import { createRng } from '../../src/machines/rng.js';

let root: string;
let nextDir = 0;
const freshDir = () => join(root, `recovery-${nextDir++}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'diskeyval-wal-recovery-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const NODE = 'n1';
const command = (term: number, ...data: number[]): Entry => ({
  term,
  kind: 'command',
  data: new Uint8Array(data),
});

/** Groups as the log actor writes them: votes, appends, an overwritten suffix, hard-state-only. */
const GROUPS: WalRecord[][] = [
  [
    {
      hardState: { term: 1, votedFor: 'n1' },
      fromIndex: 1,
      entries: [{ term: 1, kind: 'noop', data: null }],
    },
  ],
  [{ hardState: null, fromIndex: 2, entries: [command(1, 1, 2), command(1, 3)] }],
  [
    { hardState: null, fromIndex: 4, entries: [command(1, 4)] },
    { hardState: null, fromIndex: 5, entries: [command(1, 5, 5, 5)] },
  ],
  [{ hardState: { term: 2, votedFor: null }, fromIndex: -1, entries: [] }],
  [{ hardState: null, fromIndex: 5, entries: [command(2, 6), command(2, 7, 7)] }],
  [
    { hardState: { term: 3, votedFor: 'n2' }, fromIndex: 7, entries: [command(3, 8)] },
    { hardState: null, fromIndex: 8, entries: [command(3, 9, 9)] },
  ],
];

/** The state `records` replay to, by the memory log's rules (the reference). */
const expectedState = (records: readonly WalRecord[]): WalState => {
  const log = createMemoryLog();
  for (const record of records) {
    log.persist({ type: 'persist', ...record, entries: [...record.entries] } as PersistOutput);
  }
  const { hardState, entries } = log.persisted();
  return { hardState, snapshot: null, entries: [...entries] };
};

/**
 * Appends GROUPS one group per append (each resolved: acknowledged) and returns the file's bytes
 * and where the last group starts; `clean` closes the WAL (a final marker), else it is left as a
 * crashed process leaves it.
 */
const writeGroups = async (dir: string, clean: boolean) => {
  const wal = await openWal(dir, NODE);
  let lastStart = 0;
  for (const group of GROUPS) {
    lastStart = wal.stats().bytes;
    await wal.append(group);
  }
  if (clean) await wal.close();
  const bytes = await readFile(join(dir, WAL_FILE_NAME));
  if (!clean) await wal.close();
  return { bytes, lastStart };
};

const ACKED_BEFORE_LAST = GROUPS.slice(0, -1).flat();
const LAST = GROUPS.at(-1)!;

/** Opens `dir` with `bytes` as its WAL and checks that nothing acknowledged before the last group was lost. */
const openCrashed = async (dir: string, bytes: Uint8Array, what: string) => {
  await writeFile(join(dir, WAL_FILE_NAME), bytes);
  const wal = await openWal(dir, NODE);
  const { info, state } = wal;
  await wal.close();
  expect(info.records, what).toBeGreaterThanOrEqual(ACKED_BEFORE_LAST.length);
  const kept = [...ACKED_BEFORE_LAST, ...LAST.slice(0, info.records - ACKED_BEFORE_LAST.length)];
  expect(state, what).toEqual(expectedState(kept));
  return info;
};

describe('a crash during the last group: a torn tail is cut and reported, nothing acknowledged is lost', () => {
  it('truncated at every byte offset of the last group', async () => {
    const dir = freshDir();
    const { bytes, lastStart } = await writeGroups(dir, false);
    const boundaries = new Set([lastStart, lastStart + WAL_MARKER_BYTES]);
    boundaries.add(lastStart + WAL_MARKER_BYTES + encodeRecord(LAST[0]!).length);
    let cuts = 0;
    for (let end = lastStart; end < bytes.length; end += 1) {
      const info = await openCrashed(dir, bytes.subarray(0, end), `truncated at ${end}`);
      const torn = !boundaries.has(end);
      expect(info.cutAt !== null, `cut reported when truncated at ${end}`).toBe(torn);
      if (torn) {
        cuts += 1;
        expect(info.cutAt).toBeGreaterThanOrEqual(lastStart);
        expect(info).toMatchObject({ bytes: info.cutAt, cutBytes: end - info.cutAt!, cutReason: 'torn' });
        expect(info.cutRecords).toBeGreaterThanOrEqual(info.cutAt! >= lastStart + WAL_MARKER_BYTES ? 1 : 0);
      }
    }
    expect(cuts).toBe(bytes.length - lastStart - boundaries.size);
  });

  it('zeroed from every byte offset of the last group, and a zeroed 16-byte window at every offset of it', async () => {
    const dir = freshDir();
    const { bytes, lastStart } = await writeGroups(dir, false);
    for (let from = lastStart; from < bytes.length; from += 1) {
      for (const [label, to] of [
        ['zeroed tail', bytes.length],
        ['zeroed window', Math.min(bytes.length, from + 16)],
      ] as const) {
        const copy = Buffer.from(bytes);
        copy.fill(0, from, to);
        if (copy.equals(bytes)) continue;
        const info = await openCrashed(dir, copy, `${label} from ${from}`);
        expect(info.cutAt, `${label} from ${from}: cut reported`).not.toBeNull();
        expect(info.cutAt).toBeGreaterThanOrEqual(lastStart);
        expect(info.cutBytes).toBe(bytes.length - info.cutAt!);
      }
    }
  });
});

/** Flips bit `bit` of byte `at` of `bytes` (a copy). */
const flipped = (bytes: Uint8Array, at: number, bit: number) => {
  const copy = Buffer.from(bytes);
  copy[at] = copy[at]! ^ (1 << bit);
  return copy;
};

/** Opening `copy` must refuse with WAL_CORRUPT naming the file and a byte offset, and leave it as it was. */
const expectRefused = async (dir: string, copy: Uint8Array, what: string) => {
  const path = join(dir, WAL_FILE_NAME);
  await writeFile(path, copy);
  const error = await openWal(dir, NODE).then(
    () => null,
    (caught: Error & { code?: string }) => caught,
  );
  expect(error?.code, what).toBe('WAL_CORRUPT');
  expect(error?.message, what).toContain(path);
  expect(error?.message, what).toMatch(/at byte \d+/);
  expect((await readFile(path)).equals(copy), `${what}: the file is untouched`).toBe(true);
};

describe('damage at or before the last sync marker: refused (WAL_CORRUPT), never cut', () => {
  it('a cleanly closed WAL: one bit flipped in every byte before its final marker', async () => {
    const dir = freshDir();
    const { bytes } = await writeGroups(dir, true);
    const finalMarker = bytes.length - WAL_MARKER_BYTES;
    for (let at = 0; at < finalMarker; at += 1) {
      await expectRefused(dir, flipped(bytes, at, at % 8), `bit ${at % 8} of byte ${at} flipped`);
    }
    // The final marker itself vouches for nothing after it: a damaged one is cut, no record lost.
    for (let at = finalMarker; at < bytes.length; at += 1) {
      await writeFile(join(dir, WAL_FILE_NAME), flipped(bytes, at, at % 8));
      const wal = await openWal(dir, NODE);
      expect(wal.info, `final marker byte ${at}`).toMatchObject({
        cutAt: finalMarker,
        records: GROUPS.flat().length,
      });
      expect(wal.state).toEqual(expectedState(GROUPS.flat()));
      await wal.close();
    }
  });

  it('a crashed WAL: one bit flipped in every byte before the last group', async () => {
    const dir = freshDir();
    const { bytes, lastStart } = await writeGroups(dir, false);
    for (let at = 0; at < lastStart; at += 1) {
      await expectRefused(dir, flipped(bytes, at, (at * 5) % 8), `bit ${(at * 5) % 8} of byte ${at} flipped`);
    }
  });

  it('every bit of every byte of the first and a middle record', async () => {
    const dir = freshDir();
    const { bytes } = await writeGroups(dir, true);
    const header = encodeHeader(NODE).length;
    const first = header + WAL_MARKER_BYTES;
    const firstLength = encodeRecord(GROUPS[0]![0]!).length;
    const middle = first + firstLength + WAL_MARKER_BYTES;
    const middleLength = encodeRecord(GROUPS[1]![0]!).length;
    for (const [start, length] of [
      [first, firstLength],
      [middle, middleLength],
    ] as const) {
      for (let at = start; at < start + length; at += 1) {
        for (let bit = 0; bit < 8; bit += 1) {
          const copy = flipped(bytes, at, bit);
          expect(() => scanWal(copy), `bit ${bit} of byte ${at}`).toThrow(
            expect.objectContaining({ code: 'WAL_CORRUPT' }),
          );
        }
      }
    }
  });

  it('BROKEN VARIANT caught: the old recovery (markers ignored) silently drops acknowledged records on the same flips', async () => {
    const dir = freshDir();
    const { bytes } = await writeGroups(dir, true);
    const header = encodeHeader(NODE).length;
    const finalMarker = bytes.length - WAL_MARKER_BYTES;
    const all = GROUPS.flat().length;
    let silentLosses = 0;
    let flips = 0;
    for (let at = header; at < finalMarker; at += 1) {
      const copy = flipped(bytes, at, at % 8);
      flips += 1;
      // The real scan refuses every one of these (test above); the broken one cuts and goes on.
      expect(() => scanWal(copy)).toThrow(expect.objectContaining({ code: 'WAL_CORRUPT' }));
      const broken = scanWal(copy, { checkMarkers: false });
      if (broken.records < all) silentLosses += 1;
    }
    // Every flip after the header lost acknowledged (appended and synced) records without a word.
    expect(flips).toBeGreaterThan(200);
    expect(silentLosses).toBe(flips);
  });
});

describe('not a WAL, or a WAL gone: refused (WAL_CORRUPT), untouched', () => {
  const versioned = (version: number) => {
    const header = Buffer.from(encodeHeader(NODE));
    header.writeUInt32BE(version, 8);
    header.writeUInt32BE(crc32(header.subarray(0, header.length - 4)), header.length - 4);
    return header;
  };

  it('random bytes, a foreign file, the old headerless format, an unknown version, a 0-byte file, a cut header', async () => {
    const rng = createRng(20261201);
    const random = Buffer.from(Array.from({ length: 4096 }, () => rng.int(0, 256)));
    const headerless = Buffer.concat(GROUPS.flat().map(encodeRecord));
    const cases: Array<[string, Uint8Array]> = [
      ['random bytes', random],
      ['a JSON file', Buffer.from('{"hello":"world"}\n')],
      ['the old headerless format', headerless],
      ['version 2', Buffer.concat([versioned(2), headerless])],
      ['a 0-byte file', Buffer.alloc(0)],
      ['a header cut short', encodeHeader(NODE).subarray(0, 12)],
    ];
    for (const [what, bytes] of cases) {
      const dir = freshDir();
      await mkdir(dir, { recursive: true });
      await expectRefused(dir, bytes, what);
    }
  });

  it("a dir whose WAL was removed (its identity file remains), and another node's dir", async () => {
    const dir = freshDir();
    await writeGroups(dir, true);
    const identity = await readFile(join(dir, WAL_IDENTITY_FILE_NAME), 'utf8');
    expect(JSON.parse(identity)).toMatchObject({ format: 1, nodeId: NODE });
    // Another node's dir: refused on the identity file (and on the header).
    await expect(openWal(dir, 'n2')).rejects.toMatchObject({
      code: 'WAL_CORRUPT',
      message: expect.stringContaining('belongs to node n1'),
    });
    await rm(join(dir, WAL_FILE_NAME));
    await expect(openWal(dir, NODE)).rejects.toMatchObject({
      code: 'WAL_CORRUPT',
      message: expect.stringContaining(join(dir, WAL_FILE_NAME)),
    });
    await expect(stat(join(dir, WAL_FILE_NAME))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a crash between creating the WAL and its identity file: the next open writes the identity file', async () => {
    const dir = freshDir();
    await writeGroups(dir, true);
    await rm(join(dir, WAL_IDENTITY_FILE_NAME));
    const wal = await openWal(dir, NODE);
    expect(wal.state).toEqual(expectedState(GROUPS.flat()));
    await wal.close();
    expect(JSON.parse(await readFile(join(dir, WAL_IDENTITY_FILE_NAME), 'utf8'))).toMatchObject({
      nodeId: NODE,
    });
    // The header names the node too: with no identity file, another node is still refused.
    await rm(join(dir, WAL_IDENTITY_FILE_NAME));
    await expect(openWal(dir, 'n2')).rejects.toMatchObject({
      code: 'WAL_CORRUPT',
      message: expect.stringContaining('the header names node n1'),
    });
  });
});

describe('incarnations', () => {
  it('grow from one open to the next, even when the clock goes back', async () => {
    const dir = freshDir();
    const first = await createWalLog(dir, NODE, { nowMs: () => 1000 });
    expect(first.incarnation).toBe(1000);
    first.persist({ type: 'persist', hardState: { term: 1, votedFor: null }, fromIndex: -1, entries: [] });
    await first.flush();
    await first.close();
    const second = await createWalLog(dir, NODE, { nowMs: () => 5 });
    expect(second.incarnation).toBe(1001);
    await second.close();
    const third = await createWalLog(dir, NODE, { nowMs: () => 5 });
    expect(third.incarnation).toBe(1002);
    await third.close();
    const real = await createWalLog(dir, NODE);
    expect(real.incarnation).toBeGreaterThan(Date.now() - 60_000);
    await real.close();
  });
});

describe('the node reports a cut tail: a WAL_TAIL_CUT warning after start() resolves, and getMetrics().walRecovery', () => {
  const soloNode = (dir: string) =>
    diskeyval({
      nodeId: 'solo',
      peers: [],
      transport: createMemoryTransport(),
      electionTimeoutMs: 60,
      heartbeatMs: 15,
      persistence: { dir },
    });
  /** One turn of the event loop after start(): the warning, if any, was emitted by then. */
  const afterStart = () => new Promise((resolve) => setImmediate(resolve));

  it('a torn record after the last marker is cut and reported once; every acknowledged value is there', async () => {
    const dir = freshDir();
    const first = soloNode(dir);
    await first.start();
    for (let i = 0; i < 20; i += 1) await first.set(`k${i}`, i);
    await first.end();
    const path = join(dir, WAL_FILE_NAME);
    const clean = await readFile(path);
    // A crash mid-write of a group that was never acknowledged: 11 bytes of a record.
    const torn = encodeRecord({ hardState: null, fromIndex: 22, entries: [command(9, 1, 2, 3)] }).subarray(
      0,
      11,
    );
    await writeFile(path, Buffer.concat([clean, torn]));

    const second = soloNode(dir);
    const before: WarningEvent[] = [];
    const after: WarningEvent[] = [];
    second.on('warning', (warning) => before.push(warning));
    await second.start();
    second.on('warning', (warning) => after.push(warning));
    await afterStart();
    const expected = { cutAt: clean.length, cutBytes: 11, cutRecords: 1, reason: 'torn' };
    expect(second.getMetrics().walRecovery).toEqual(expected);
    expect(before).toEqual([expect.objectContaining({ code: 'WAL_TAIL_CUT', ...expected })]);
    expect(before[0]!.message).toContain(path);
    // A listener added right after `await start()` hears it too.
    expect(after).toHaveLength(1);
    for (let i = 0; i < 20; i += 1) expect(await second.get(`k${i}`)).toBe(i);
    await second.end();

    // Nothing cut: no warning, walRecovery null.
    const third = soloNode(dir);
    const none: WarningEvent[] = [];
    third.on('warning', (warning) => none.push(warning));
    await third.start();
    await afterStart();
    expect(third.getMetrics().walRecovery).toBeNull();
    expect(none).toEqual([]);
    await third.end();
  });

  it('a bit flipped in a synced record: start() rejects with WAL_CORRUPT naming the file and offset', async () => {
    const dir = freshDir();
    const first = soloNode(dir);
    await first.start();
    for (let i = 0; i < 20; i += 1) await first.set(`k${i}`, i);
    await first.end();
    const path = join(dir, WAL_FILE_NAME);
    const bytes = await readFile(path);
    const at = Math.floor(bytes.length / 2);
    await writeFile(path, flipped(bytes, at, 3));
    const second = soloNode(dir);
    await expect(second.start()).rejects.toMatchObject({
      code: 'WAL_CORRUPT',
      message: expect.stringMatching(new RegExp(`${path}.* at byte \\d+`)),
    });
    await expect(second.set('k', 1)).rejects.toMatchObject({ code: 'STOPPED' });
    expect((await readFile(path)).equals(flipped(bytes, at, 3))).toBe(true);
  });
});
