/**
 * The write-ahead log file: what a server persisted (Figure 2 "Persistent state on all servers":
 * currentTerm, votedFor, log[]) as an append-only file that a restarted process replays.
 *
 * File: `<dir>/raft.wal`, a plain sequence of records, nothing before the first one:
 *
 *   record = [length: uint32 BE][crc: uint32 BE][body: `length` bytes of msgpack]
 *
 *   - `length` is the body's size in bytes (at least 1);
 *   - `crc` is CRC-32 (zlib.crc32, the IEEE polynomial) of the 4 length bytes followed by the body,
 *     so a damaged length is caught as well as a damaged body;
 *   - `body` is one persist output of the raft machine, as a msgpack map
 *       { hardState: { term, votedFor } | null, fromIndex, entries: [{ term, kind, data }] }
 *     (`kind` is 'noop' or 'command', `data` a msgpack bin or nil), plus, for an installed
 *     snapshot (InstallSnapshot, §7), `snapshot: { index, term, data, keptSuffix }`.
 *
 * Replay applies the records in file order, exactly like the memory log applies persist outputs:
 * a non-null `hardState` replaces the hard state; `fromIndex` >= 1 cuts the log to
 * `fromIndex - 1` entries and appends `entries` there (so a follower's conflicting suffix that a
 * leader overwrote is replaced); `fromIndex` -1 (or 0) is a hard-state-only record. A snapshot
 * record makes the log start after `snapshot.index` (keeping the entries after it when
 * `keptSuffix`, dropping all otherwise); later indexes count from there.
 *
 * Recovery: a crash can leave a torn last record (partial header or body), and a bad disk a
 * damaged one. Replay stops at the first record that is incomplete, has a zero length or a length
 * that runs past the end of the file, or fails its crc; everything from there on is cut
 * (ftruncate + fdatasync) before anything new is appended, and `info` says how many bytes and
 * (at least) how many records were cut, and why. A record whose crc is right but whose body is
 * not a well-formed persist output (or that would leave a gap in the log, or move the term back)
 * is not damage but a bug or a foreign file: opening fails with code WAL_CORRUPT and nothing is
 * cut.
 *
 * Writes: `append(records)` encodes a whole group into one buffer, writes it with one `write` and
 * makes it durable with one `fdatasync`; it resolves once the group is on disk. Appends run one
 * at a time, in call order (never two writes in flight). After a failed write or sync the file's
 * state is unknown, so the handle fails every later append with that error (fail-stop).
 *
 * Compaction: `rewrite(records)` replaces the whole file with a shorter history (the log actor
 * writes its snapshot and the entries after it): the records go to `raft.wal.tmp`, which is
 * fdatasynced and renamed over `raft.wal`, and the directory is fsynced; appends then go to the new
 * file. A crash before the rename leaves the old file whole (the tmp file is removed at the next
 * open); after it, the new one.
 *
 * The file's directory is fsynced when the file is created, so the file itself survives a crash.
 */
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Decoder, Encoder } from '@msgpack/msgpack';
import { isCount } from '../machines/assert.js';
import type { Entry } from '../machines/messages.js';
import type { HardState } from '../machines/raft.types.js';

/** A snapshot a follower installed: the state machine at `index` (whose entry had `term`). */
export type WalSnapshot = { index: number; term: number; data: Uint8Array };

export const WAL_FILE_NAME = 'raft.wal';
/** length + crc */
export const WAL_RECORD_HEADER_BYTES = 8;

/** One record's body: a persist output without its `type`. */
export type WalRecord = {
  readonly hardState: HardState | null;
  readonly fromIndex: number;
  readonly entries: readonly Entry[];
  readonly snapshot?: (WalSnapshot & { keptSuffix: boolean }) | null;
};

/**
 * What replaying the file gives: the hard state, the last installed snapshot and the log after
 * it, as the server last persisted them.
 */
export type WalState = { hardState: HardState; snapshot: WalSnapshot | null; entries: Entry[] };

export type WalCutReason = 'torn' | 'bad-length' | 'bad-crc';

export type WalOpenInfo = {
  path: string;
  /** The file did not exist before this open. */
  created: boolean;
  /** Records replayed. */
  records: number;
  /** Bytes kept (the file's size after any cut). */
  bytes: number;
  /** Where the first bad record started (the new end of the file), or null when none was cut. */
  cutAt: number | null;
  cutReason: WalCutReason | null;
  /** Bytes cut from the tail. */
  cutBytes: number;
  /**
   * Records cut: the bad one, plus the records that followed it when their framing could still be
   * read (a lower bound after a bad length, which hides where the next record starts).
   */
  cutRecords: number;
};

export type WalStats = {
  /** Size of the file in bytes. */
  bytes: number;
  /** Records in the file (replayed at open plus appended since). */
  records: number;
  /** Records appended since open. */
  appendedRecords: number;
  /** Groups written (one write + one fdatasync each). */
  syncs: number;
  /** The largest group, in records. */
  maxGroupRecords: number;
  /** Times the file was replaced by a compacted one since open. */
  rewrites: number;
};

export type Wal = {
  readonly path: string;
  /** The state replayed at open. */
  readonly state: WalState;
  readonly info: WalOpenInfo;
  /** Writes every record of the group with one write and one fdatasync; resolves once durable. */
  append(records: readonly WalRecord[]): Promise<void>;
  /** Replaces the file with `records` (after every append asked for before); resolves once durable. */
  rewrite(records: readonly WalRecord[]): Promise<void>;
  /** Waits for appends in flight, then closes the file. Later appends reject. */
  close(): Promise<void>;
  stats(): WalStats;
};

export type WalErrorCode = 'WAL_CORRUPT' | 'WAL_CLOSED';

export const walError = (code: WalErrorCode, message: string): Error & { code: WalErrorCode } =>
  Object.assign(new Error(message), { code });

// ---- encoding ---------------------------------------------------------------------------------

const encoder = new Encoder();

/** One framed record: header and body, ready to append. */
export const encodeRecord = (record: WalRecord): Uint8Array => {
  // A record with a snapshot is large: a one-off encoder, so the shared one does not keep a buffer
  // of its size for the rest of the process.
  const body = (record.snapshot ? new Encoder() : encoder).encodeSharedRef({
    hardState: record.hardState,
    fromIndex: record.fromIndex,
    entries: record.entries.map((entry) => ({ term: entry.term, kind: entry.kind, data: entry.data })),
    ...(record.snapshot ? { snapshot: record.snapshot } : {}),
  });
  const framed = new Uint8Array(WAL_RECORD_HEADER_BYTES + body.length);
  const view = new DataView(framed.buffer);
  view.setUint32(0, body.length);
  framed.set(body, WAL_RECORD_HEADER_BYTES);
  view.setUint32(4, crcOf(framed, body.length));
  return framed;
};

/** The crc of a framed record: over its 4 length bytes and its body. */
const crcOf = (framed: Uint8Array, length: number): number =>
  crc32(
    framed.subarray(WAL_RECORD_HEADER_BYTES, WAL_RECORD_HEADER_BYTES + length),
    crc32(framed.subarray(0, 4)),
  );

/** Every record of a group in one buffer. */
export const encodeGroup = (records: readonly WalRecord[]): Uint8Array => {
  if (records.length === 1) return encodeRecord(records[0]!);
  const parts = records.map(encodeRecord);
  let size = 0;
  for (const part of parts) size += part.length;
  const group = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    group.set(part, offset);
    offset += part.length;
  }
  return group;
};

// ---- decoding and replay ----------------------------------------------------------------------

const isRecordObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);

/** The body as a record, or a reason why it is not one. Binary data is copied out of the file buffer. */
const decodeBody = (decoder: Decoder, body: Uint8Array): WalRecord | string => {
  let value: unknown;
  try {
    value = decoder.decode(body);
  } catch (error) {
    return `its body is not msgpack (${(error as Error).message})`;
  }
  if (!isRecordObject(value)) return 'its body is not a map';
  const { hardState, fromIndex, entries } = value;
  if (hardState !== null) {
    if (!isRecordObject(hardState) || !isCount(hardState.term)) return 'bad hardState';
    if (hardState.votedFor !== null && typeof hardState.votedFor !== 'string')
      return 'bad hardState.votedFor';
  }
  if (typeof fromIndex !== 'number' || !Number.isSafeInteger(fromIndex) || fromIndex < -1)
    return 'bad fromIndex';
  if (!Array.isArray(entries)) return 'entries is not an array';
  const decoded: Entry[] = new Array(entries.length);
  for (let i = 0; i < entries.length; i += 1) {
    const entry: unknown = entries[i];
    if (!isRecordObject(entry) || !isCount(entry.term)) return `bad entry ${i}`;
    if (entry.kind !== 'noop' && entry.kind !== 'command') return `bad entry ${i} kind`;
    if (entry.data !== null && !(entry.data instanceof Uint8Array)) return `bad entry ${i} data`;
    decoded[i] = {
      term: entry.term,
      kind: entry.kind,
      data: entry.data === null ? null : new Uint8Array(entry.data),
    };
  }
  if (fromIndex < 1 && decoded.length > 0) return 'entries without a fromIndex';
  const snapshot = decodeSnapshot(value.snapshot);
  if (typeof snapshot === 'string') return snapshot;
  return {
    snapshot,
    hardState:
      hardState === null
        ? null
        : { term: hardState.term as number, votedFor: hardState.votedFor as string | null },
    fromIndex,
    entries: decoded,
  };
};

const decodeSnapshot = (value: unknown): WalRecord['snapshot'] | string => {
  if (value === undefined || value === null) return null;
  if (!isRecordObject(value)) return 'bad snapshot';
  const { index, term, data, keptSuffix } = value;
  if (!isCount(index) || index < 1 || !isCount(term)) return 'bad snapshot index';
  if (!(data instanceof Uint8Array) || typeof keptSuffix !== 'boolean') return 'bad snapshot data';
  return { index, term, data: new Uint8Array(data), keptSuffix };
};

/** Applies one record to a replayed state, as the memory log applies a persist or an install. */
export const applyRecord = (state: WalState, record: WalRecord): string | null => {
  if (record.hardState) {
    if (record.hardState.term < state.hardState.term) {
      return `term goes back from ${state.hardState.term} to ${record.hardState.term}`;
    }
    state.hardState = record.hardState;
  }
  const offset = state.snapshot?.index ?? 0;
  if (record.snapshot) {
    const { index, term, data, keptSuffix } = record.snapshot;
    if (index <= offset) return `snapshot at ${index} is not past the last one at ${offset}`;
    if (keptSuffix) {
      if (index > offset + state.entries.length) return `snapshot at ${index} keeps a suffix it lacks`;
      state.entries.splice(0, index - offset);
    } else {
      state.entries.length = 0;
    }
    state.snapshot = { index, term, data };
    return null;
  }
  if (record.fromIndex > 0) {
    if (record.fromIndex > offset + state.entries.length + 1) {
      return `fromIndex ${record.fromIndex} leaves a gap after ${offset + state.entries.length} entries`;
    }
    if (record.fromIndex <= offset) return `fromIndex ${record.fromIndex} is inside the snapshot (${offset})`;
    state.entries.length = record.fromIndex - 1 - offset;
    for (const entry of record.entries) state.entries.push(entry);
  }
  return null;
};

export type WalScan = {
  state: WalState;
  records: number;
  /** Bytes of good records from the start: where the file is to be cut. */
  goodBytes: number;
  cutReason: WalCutReason | null;
  cutRecords: number;
};

/** How many framed records start at `offset` (a best-effort count behind a bad record). */
const countFrames = (bytes: Uint8Array, view: DataView, offset: number): number => {
  let count = 0;
  let at = offset;
  while (at < bytes.length) {
    count += 1;
    if (at + WAL_RECORD_HEADER_BYTES > bytes.length) break;
    const length = view.getUint32(at);
    if (length === 0) break;
    at += WAL_RECORD_HEADER_BYTES + length;
  }
  return count;
};

/**
 * Replays the bytes of a WAL file: the state of every good record up to the first bad one, and
 * where and why to cut. Throws WAL_CORRUPT for a well-framed record that is not a persist output.
 */
export const scanWal = (bytes: Uint8Array): WalScan => {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new Decoder();
  const state: WalState = { hardState: { term: 0, votedFor: null }, snapshot: null, entries: [] };
  let offset = 0;
  let records = 0;
  let cutReason: WalCutReason | null = null;
  while (offset < bytes.length) {
    if (offset + WAL_RECORD_HEADER_BYTES > bytes.length) {
      cutReason = 'torn';
      break;
    }
    const length = view.getUint32(offset);
    if (length === 0) {
      cutReason = 'bad-length';
      break;
    }
    const end = offset + WAL_RECORD_HEADER_BYTES + length;
    if (end > bytes.length) {
      cutReason = 'torn';
      break;
    }
    const framed = bytes.subarray(offset, end);
    if (crcOf(framed, length) !== view.getUint32(offset + 4)) {
      cutReason = 'bad-crc';
      break;
    }
    const record = decodeBody(decoder, framed.subarray(WAL_RECORD_HEADER_BYTES));
    const problem = typeof record === 'string' ? record : applyRecord(state, record);
    if (problem !== null) {
      throw walError(
        'WAL_CORRUPT',
        `WAL record ${records + 1} at byte ${offset} has a good crc but ${problem}`,
      );
    }
    records += 1;
    offset = end;
  }
  const cutRecords = cutReason === null ? 0 : cutReason === 'bad-crc' ? countFrames(bytes, view, offset) : 1;
  return { state, records, goodBytes: offset, cutReason, cutRecords };
};

// ---- the file ---------------------------------------------------------------------------------

const readWhole = async (file: FileHandle): Promise<Uint8Array> => {
  const { size } = await file.stat();
  const bytes = new Uint8Array(size);
  let offset = 0;
  while (offset < size) {
    const { bytesRead } = await file.read(bytes, offset, size - offset, offset);
    if (bytesRead === 0) break;
    offset += bytesRead;
  }
  return offset === size ? bytes : bytes.subarray(0, offset);
};

const writeAll = async (file: FileHandle, bytes: Uint8Array): Promise<void> => {
  let offset = 0;
  while (offset < bytes.length) {
    const { bytesWritten } = await file.write(bytes, offset, bytes.length - offset);
    offset += bytesWritten;
  }
};

/** Makes a directory entry (a created file) durable. */
const syncDirectory = async (dir: string): Promise<void> => {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
};

/**
 * Opens (creating `dir` and the file when missing) and replays `<dir>/raft.wal`, cuts a bad tail,
 * and returns the handle to append to it.
 */
export const openWal = async (dir: string): Promise<Wal> => {
  await mkdir(dir, { recursive: true });
  const path = join(dir, WAL_FILE_NAME);
  const tmpPath = `${path}.tmp`;
  // A rewrite that crashed before its rename: the file it was to replace is whole.
  await rm(tmpPath, { force: true });
  let created = false;
  let file: FileHandle;
  try {
    file = await open(path, 'r+');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    file = await open(path, 'a+');
    created = true;
    await syncDirectory(dir);
  }
  let scan: WalScan;
  let fileBytes: number;
  try {
    const bytes = await readWhole(file);
    fileBytes = bytes.length;
    scan = scanWal(bytes);
    if (scan.goodBytes < bytes.length) {
      await file.truncate(scan.goodBytes);
      await file.datasync();
    }
  } catch (error) {
    await file.close();
    throw error;
  }
  if (!created) {
    // Reopen for appending: O_APPEND puts every write at the end of the (possibly cut) file.
    await file.close();
    file = await open(path, 'a');
  }

  const info: WalOpenInfo = {
    path,
    created,
    records: scan.records,
    bytes: scan.goodBytes,
    cutAt: scan.cutReason === null ? null : scan.goodBytes,
    cutReason: scan.cutReason,
    cutBytes: fileBytes - scan.goodBytes,
    cutRecords: scan.cutRecords,
  };
  const stats: WalStats = {
    bytes: scan.goodBytes,
    records: scan.records,
    appendedRecords: 0,
    syncs: 0,
    maxGroupRecords: 0,
    rewrites: 0,
  };
  let tail: Promise<void> = Promise.resolve();
  let failure: Error | null = null;
  let closed = false;
  let handle = file;

  /** Runs `write` after every write asked for before it (never two at once); fail-stop. */
  const enqueue = (write: () => Promise<void>): Promise<void> => {
    const guarded = async (): Promise<void> => {
      if (failure) throw failure;
      try {
        await write();
      } catch (error) {
        failure = error as Error;
        throw error;
      }
    };
    const done = tail.then(guarded);
    tail = done.catch(() => undefined);
    return done;
  };

  const rewrite = (records: readonly WalRecord[]): Promise<void> => {
    if (closed) return Promise.reject(walError('WAL_CLOSED', `${path} is closed`));
    const group = encodeGroup(records);
    return enqueue(async () => {
      const out = await open(tmpPath, 'w');
      try {
        await writeAll(out, group);
        await out.datasync();
      } finally {
        await out.close();
      }
      await rename(tmpPath, path);
      await syncDirectory(dir);
      const next = await open(path, 'a');
      await handle.close();
      handle = next;
      stats.bytes = group.length;
      stats.records = records.length;
      stats.syncs += 1;
      stats.rewrites += 1;
    });
  };

  const append = (records: readonly WalRecord[]): Promise<void> => {
    if (closed) return Promise.reject(walError('WAL_CLOSED', `${path} is closed`));
    if (records.length === 0) return tail;
    // Encoded now: the group is what was asked for at this moment.
    const group = encodeGroup(records);
    return enqueue(async () => {
      await writeAll(handle, group);
      await handle.datasync();
      stats.bytes += group.length;
      stats.records += records.length;
      stats.appendedRecords += records.length;
      stats.syncs += 1;
      stats.maxGroupRecords = Math.max(stats.maxGroupRecords, records.length);
    });
  };

  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await tail;
    await handle.close();
  };

  return { path, state: scan.state, info, append, rewrite, close, stats: () => ({ ...stats }) };
};
