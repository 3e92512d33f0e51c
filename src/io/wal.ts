/**
 * The write-ahead log file: what a server persisted (Figure 2 "Persistent state on all servers":
 * currentTerm, votedFor, log[]) as an append-only file that a restarted process replays.
 *
 * File `<dir>/raft.wal`, format version 1:
 *
 *   file   = header, then items (records and sync markers) back to back
 *   header = ["DKVWAL\r\n": 8 bytes][version: uint32 BE = 1][idLength: uint16 BE][nodeId: utf-8]
 *            [crc: uint32 BE, CRC-32 of everything before it]
 *   record = [length: uint32 BE][crc: uint32 BE][body: `length` bytes of msgpack]
 *   marker = [0xFFFFFFFF][crc: uint32 BE][syncedEnd: float64 BE][incarnation: float64 BE]
 *
 *   - `length` is the body's size in bytes, at least 1 and below 2^31 (so it never reads as a
 *     marker's tag); `crc` is CRC-32 (zlib.crc32) of the 4 length bytes and the body;
 *   - `body` is one persist output of the raft machine, as a msgpack map
 *       { hardState: { term, votedFor, clusterId? } | null, fromIndex, entries: [{ term, kind, data }] }
 *     (`kind` noop, command or config; a config entry's data is a configuration,
 *     machines/configuration.ts, checked at replay; `clusterId`, 32 lower-case hex digits, is the
 *     committed cluster id once the server applied it, machines/cluster-id.ts: files written before
 *     it existed have none);
 *     plus, for an installed snapshot (InstallSnapshot, §7), `snapshot: { index, term, data,
 *     keptSuffix }`;
 *   - a marker says "the bytes of this file before me were fsynced": its `syncedEnd` is its own
 *     offset, and its crc covers the tag and the 16 bytes after the crc. `incarnation` is the
 *     incarnation of the process that wrote it (see `openWal`).
 *
 * Replay applies the records in file order, exactly like the memory log applies persist outputs:
 * a non-null `hardState` replaces the hard state (one without `clusterId` keeps the id recorded
 * before it; a record that changes a recorded id is refused, WAL_CORRUPT); `fromIndex` >= 1 cuts the log to
 * `fromIndex - 1` entries and appends `entries` there; `fromIndex` -1 (or 0) is hard-state-only.
 * A snapshot record makes the log start after `snapshot.index` (keeping the entries after it when
 * `keptSuffix`). Markers change nothing in the state.
 *
 * Writes: `append(records)` writes ONE buffer, a marker followed by the group's records, and then
 * makes it durable with one `fdatasync`; appends run one at a time, so the marker is written only
 * after the fdatasync of everything before it resolved (and `openWal` fdatasyncs the file it
 * found, then writes and fdatasyncs a marker of its own). A marker therefore never needs a sync of its own: even if the
 * disk persists the pages of a write out of order, a marker that reached the disk is true. The
 * cost is 24 bytes per group, no extra write and no extra sync.
 *
 * Recovery: the line between "a crash tore the tail" and "the disk damaged what was acknowledged"
 * is the last completed fsync. At the first item that does not read well (a torn or zero length,
 * a length past the end, a bad crc, a bad marker) at offset X, the rest of the file is searched
 * for a valid marker (crc right, and sitting at the offset it claims): one at P > X vouches that
 * byte X was synced, so X is damage in data that may have been acknowledged -> `openWal` refuses
 * with WAL_CORRUPT naming the file and X, and touches nothing. No such marker: X is in the tail
 * written after the last sync that any marker vouches for, i.e. a crash mid-write -> the file is
 * cut at X (ftruncate + fdatasync) and `info` reports where, how much and why. Only the last group
 * written before a crash is unvouched (its marker would come with the next group, or at `close`);
 * damage confined to it is indistinguishable from a torn write and is cut, and reported.
 * A file that is empty, does not start with the magic number, has another version or a damaged
 * header is refused (WAL_CORRUPT): a real WAL is never without its header (see creation below).
 * A record with a good crc whose body is not a well-formed persist output is refused too.
 *
 * Creation: the header is written to `raft.wal.tmp`, fdatasynced, renamed to `raft.wal`, and the
 * dir fsynced, so `raft.wal` never exists without its header. Then `diskeyval.id` (JSON: format,
 * nodeId, createdAt) is written the same way. It is written AFTER the WAL so that a crash between
 * the two leaves a WAL without an identity file (written at the next open), never an identity file
 * without a WAL: `diskeyval.id` present and `raft.wal` missing means the WAL was removed, and is
 * refused (WAL_CORRUPT), not taken for a fresh node. The nodeId in the header and in the identity
 * file must be the opening node's (a dir of another node is refused).
 *
 * Errors: after a failed write or sync the file's state is unknown, so the handle fails every
 * later append with that error (fail-stop); the error's message names the file and the call.
 *
 * Compaction: `rewrite(records)` replaces the whole file with a shorter history: header, records
 * and a marker at their end go to `raft.wal.tmp`, which is fdatasynced and renamed over
 * `raft.wal`, and the dir is fsynced (the trailing marker is true: the file is visible under its
 * name only once synced). A crash before the rename leaves the old file whole (the tmp file is
 * removed at the next open); after it, the new one.
 *
 * `close()` writes a final marker and fdatasyncs, so after a clean stop the whole file is vouched.
 */
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Decoder, Encoder } from '@msgpack/msgpack';
import { assert, isCount } from '../machines/assert.js';
import { isClusterId, recordHardState } from '../machines/cluster-id.js';
import type { Entry } from '../machines/messages.js';
import type { HardState } from '../machines/raft.types.js';
import { isConfigurationData } from './codec.js';

/** A snapshot a follower installed: the state machine at `index` (whose entry had `term`). */
export type WalSnapshot = { index: number; term: number; data: Uint8Array };

export const WAL_FILE_NAME = 'raft.wal';
export const WAL_IDENTITY_FILE_NAME = 'diskeyval.id';
export const WAL_FORMAT_VERSION = 1;
const WAL_MAGIC = new TextEncoder().encode('DKVWAL\r\n');
/** magic + version + idLength; then the nodeId and a crc. */
const HEADER_FIXED_BYTES = WAL_MAGIC.length + 4 + 2;
/** length + crc */
export const WAL_RECORD_HEADER_BYTES = 8;
/** A marker's first 4 bytes; a record's length is always below it. */
export const WAL_MARKER_TAG = 0xffffffff;
export const WAL_MARKER_BYTES = 24;
/** Records are below 2 GiB, so their length never reads as a marker's tag. */
const MAX_RECORD_BODY_BYTES = 0x7fffffff;

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

export type WalCutReason = 'torn' | 'bad-length' | 'bad-crc' | 'bad-marker';

export type WalOpenInfo = {
  path: string;
  /** The file did not exist before this open. */
  created: boolean;
  /** Records replayed. */
  records: number;
  /** Bytes kept (the file's size after any cut). */
  bytes: number;
  /** Where the first bad item started (the new end of the file), or null when none was cut. */
  cutAt: number | null;
  cutReason: WalCutReason | null;
  /** Bytes cut from the tail. */
  cutBytes: number;
  /**
   * Records cut: the bad one, plus the records that followed it when their framing could still be
   * read (a lower bound after a bad length, which hides where the next record starts).
   */
  cutRecords: number;
  /** This process's incarnation: above every incarnation in the file's markers (see `openWal`). */
  incarnation: number;
};

export type WalStats = {
  /** Size of the file in bytes (header and markers included). */
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
  /** Writes a marker and every record of the group with one write and one fdatasync; resolves once durable. */
  append(records: readonly WalRecord[]): Promise<void>;
  /** Replaces the file with `records` (after every append asked for before); resolves once durable. */
  rewrite(records: readonly WalRecord[]): Promise<void>;
  /** Waits for appends in flight, writes a final marker and syncs, then closes the file. Later appends reject. */
  close(): Promise<void>;
  stats(): WalStats;
};

export type WalErrorCode = 'WAL_CORRUPT' | 'WAL_CLOSED';

/** The message starts with the code (as Node's `ENOENT: ...` do), so a log line alone says which refusal it was. */
export const walError = (code: WalErrorCode, message: string): Error & { code: WalErrorCode } =>
  Object.assign(new Error(`${code}: ${message}`), { code });

// ---- encoding ---------------------------------------------------------------------------------

const encoder = new Encoder();

/** The file's header for `nodeId`. */
export const encodeHeader = (nodeId: string): Uint8Array => {
  const id = new TextEncoder().encode(nodeId);
  assert(id.length > 0 && id.length <= 0xffff, 'nodeId of 1..65535 bytes');
  const header = new Uint8Array(HEADER_FIXED_BYTES + id.length + 4);
  const view = new DataView(header.buffer);
  header.set(WAL_MAGIC, 0);
  view.setUint32(WAL_MAGIC.length, WAL_FORMAT_VERSION);
  view.setUint16(WAL_MAGIC.length + 4, id.length);
  header.set(id, HEADER_FIXED_BYTES);
  view.setUint32(HEADER_FIXED_BYTES + id.length, crc32(header.subarray(0, HEADER_FIXED_BYTES + id.length)));
  return header;
};

/** Writes a marker vouching for `syncedEnd` (its own offset in the file) into `out` at `at`. */
export const writeMarker = (out: Uint8Array, at: number, syncedEnd: number, incarnation: number): void => {
  const view = new DataView(out.buffer, out.byteOffset + at, WAL_MARKER_BYTES);
  view.setUint32(0, WAL_MARKER_TAG);
  view.setFloat64(8, syncedEnd);
  view.setFloat64(16, incarnation);
  const marker = out.subarray(at, at + WAL_MARKER_BYTES);
  view.setUint32(4, crc32(marker.subarray(8), crc32(marker.subarray(0, 4))));
};

/** One framed record: header and body, ready to append. */
export const encodeRecord = (record: WalRecord): Uint8Array => frameRecord(record, 0);

/** One framed record after `headroomBytes` left free at the start of the buffer. */
const frameRecord = (record: WalRecord, headroomBytes: number): Uint8Array => {
  // A record with a snapshot is large: a one-off encoder, so the shared one does not keep a buffer
  // of its size for the rest of the process.
  const body = (record.snapshot ? new Encoder() : encoder).encodeSharedRef({
    hardState: record.hardState,
    fromIndex: record.fromIndex,
    entries: record.entries.map((entry) => ({ term: entry.term, kind: entry.kind, data: entry.data })),
    ...(record.snapshot ? { snapshot: record.snapshot } : {}),
  });
  assert(body.length <= MAX_RECORD_BODY_BYTES, 'a WAL record below 2 GiB');
  const out = new Uint8Array(headroomBytes + WAL_RECORD_HEADER_BYTES + body.length);
  const framed = out.subarray(headroomBytes);
  const view = new DataView(out.buffer, headroomBytes);
  view.setUint32(0, body.length);
  framed.set(body, WAL_RECORD_HEADER_BYTES);
  view.setUint32(4, crcOf(framed, body.length));
  return out;
};

/** The crc of a framed record: over its 4 length bytes and its body. */
const crcOf = (framed: Uint8Array, length: number): number =>
  crc32(
    framed.subarray(WAL_RECORD_HEADER_BYTES, WAL_RECORD_HEADER_BYTES + length),
    crc32(framed.subarray(0, 4)),
  );

/**
 * Every record of a group in one buffer, after `headroomBytes` left free at its start (where
 * `append` puts the group's marker once it knows the file's size).
 */
export const encodeGroup = (records: readonly WalRecord[], headroomBytes = 0): Uint8Array => {
  // The common group of one record: framed in place, no copy.
  if (records.length === 1) return frameRecord(records[0]!, headroomBytes);
  const parts = records.map(encodeRecord);
  let size = headroomBytes;
  for (const part of parts) size += part.length;
  const group = new Uint8Array(size);
  let offset = headroomBytes;
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
  const { fromIndex, entries } = value;
  const hardState = decodeHardState(value.hardState);
  if (typeof hardState === 'string') return hardState;
  if (typeof fromIndex !== 'number' || !Number.isSafeInteger(fromIndex) || fromIndex < -1)
    return 'bad fromIndex';
  if (!Array.isArray(entries)) return 'entries is not an array';
  const decoded: Entry[] = new Array(entries.length);
  for (let i = 0; i < entries.length; i += 1) {
    const entry: unknown = entries[i];
    if (!isRecordObject(entry) || !isCount(entry.term)) return `bad entry ${i}`;
    if (entry.kind !== 'noop' && entry.kind !== 'command' && entry.kind !== 'config')
      return `bad entry ${i} kind`;
    if (entry.data !== null && !(entry.data instanceof Uint8Array)) return `bad entry ${i} data`;
    // A config entry becomes the configuration in force when replayed: it must be one.
    if (entry.kind === 'config' && (entry.data === null || !isConfigurationData(entry.data)))
      return `bad entry ${i} configuration`;
    decoded[i] = {
      term: entry.term,
      kind: entry.kind,
      data: entry.data === null ? null : new Uint8Array(entry.data),
    };
  }
  if (fromIndex < 1 && decoded.length > 0) return 'entries without a fromIndex';
  const snapshot = decodeSnapshot(value.snapshot);
  if (typeof snapshot === 'string') return snapshot;
  return { snapshot, hardState, fromIndex, entries: decoded };
};

/** A record's hard state (null: none), or why it is not one. `clusterId` is optional, never null. */
const decodeHardState = (value: unknown): HardState | null | string => {
  if (value === null) return null;
  if (!isRecordObject(value) || !isCount(value.term)) return 'bad hardState';
  const { term, votedFor, clusterId } = value;
  if (votedFor !== null && typeof votedFor !== 'string') return 'bad hardState.votedFor';
  if (clusterId === undefined) return { term, votedFor };
  if (!isClusterId(clusterId)) return 'bad hardState.clusterId';
  return { term, votedFor, clusterId };
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
    const next = recordHardState(state.hardState, record.hardState);
    if (typeof next === 'string') return next;
    state.hardState = next;
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
  /** The node the header names. */
  nodeId: string;
  records: number;
  /** Bytes of good items from the start: where the file is to be cut. */
  goodBytes: number;
  cutReason: WalCutReason | null;
  cutRecords: number;
  /** The highest incarnation in the kept markers; 0 when there is none. */
  maxIncarnation: number;
};

export type WalScanOptions = {
  /** The file's name, for messages. */
  name?: string;
  /**
   * TEST ONLY. false: cut from the first bad item whatever the markers say (the behaviour before
   * format version 1, which silently dropped synced, possibly acknowledged, records); the
   * broken-variant test shows that the bit-flip test catches it.
   */
  checkMarkers?: boolean;
};

const corrupt = (name: string, offset: number, what: string) =>
  walError(
    'WAL_CORRUPT',
    `${name} at byte ${offset}: ${what}; refusing to start (see README "Persistence and recovery")`,
  );

/** The header's nodeId and size; throws WAL_CORRUPT for anything that is not a version 1 header. */
const readHeader = (bytes: Uint8Array, view: DataView, name: string): { nodeId: string; bytes: number } => {
  if (bytes.length === 0) {
    throw corrupt(
      name,
      0,
      'the file is empty, but a diskeyval WAL always starts with a header (it was truncated or replaced)',
    );
  }
  const magicBytes = Math.min(bytes.length, WAL_MAGIC.length);
  for (let i = 0; i < magicBytes; i += 1) {
    if (bytes[i] !== WAL_MAGIC[i]) throw corrupt(name, i, 'not a diskeyval WAL (no magic number)');
  }
  if (bytes.length < HEADER_FIXED_BYTES) throw corrupt(name, bytes.length, 'the header is cut short');
  const version = view.getUint32(WAL_MAGIC.length);
  if (version !== WAL_FORMAT_VERSION) {
    throw corrupt(
      name,
      WAL_MAGIC.length,
      `format version ${version}, this diskeyval reads version ${WAL_FORMAT_VERSION}`,
    );
  }
  const idBytes = view.getUint16(WAL_MAGIC.length + 4);
  const end = HEADER_FIXED_BYTES + idBytes;
  if (idBytes === 0 || end + 4 > bytes.length)
    throw corrupt(name, WAL_MAGIC.length + 4, 'the header is cut short');
  if (crc32(bytes.subarray(0, end)) !== view.getUint32(end))
    throw corrupt(name, 0, 'the header fails its crc');
  return { nodeId: new TextDecoder().decode(bytes.subarray(HEADER_FIXED_BYTES, end)), bytes: end + 4 };
};

/** The incarnation of a valid marker at `at` (crc right, sitting where it claims), or null. */
const markerAt = (bytes: Uint8Array, view: DataView, at: number): number | null => {
  if (at + WAL_MARKER_BYTES > bytes.length || view.getUint32(at) !== WAL_MARKER_TAG) return null;
  const crc = crc32(bytes.subarray(at + 8, at + WAL_MARKER_BYTES), crc32(bytes.subarray(at, at + 4)));
  if (crc !== view.getUint32(at + 4) || view.getFloat64(at + 8) !== at) return null;
  const incarnation = view.getFloat64(at + 16);
  return isCount(incarnation) ? incarnation : null;
};

const TAG_BYTES = Buffer.from([0xff, 0xff, 0xff, 0xff]);

/** The offset of the first valid marker at or after `from`, or null. Only run on a damaged file. */
const findMarker = (bytes: Uint8Array, view: DataView, from: number): number | null => {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = buffer.indexOf(TAG_BYTES, from); at !== -1; at = buffer.indexOf(TAG_BYTES, at + 1)) {
    if (markerAt(bytes, view, at) !== null) return at;
  }
  return null;
};

/** How many framed records start at `offset` (a best-effort count behind a bad item). */
const countFrames = (bytes: Uint8Array, view: DataView, offset: number): number => {
  let count = 0;
  let at = offset;
  while (at < bytes.length) {
    if (at + WAL_RECORD_HEADER_BYTES > bytes.length) return count + 1;
    const length = view.getUint32(at);
    if (length === WAL_MARKER_TAG) {
      at += WAL_MARKER_BYTES;
      continue;
    }
    count += 1;
    if (length === 0) break;
    at += WAL_RECORD_HEADER_BYTES + length;
  }
  return count;
};

/** Records cut from `offset` for `reason` (a lower bound: a bad length hides where the next item starts). */
const cutRecordsAt = (
  bytes: Uint8Array,
  view: DataView,
  offset: number,
  reason: WalCutReason | null,
): number => {
  if (reason === null) return 0;
  if (reason === 'bad-crc') return countFrames(bytes, view, offset);
  if (reason === 'bad-marker') return countFrames(bytes, view, offset + WAL_MARKER_BYTES);
  const isMarker = offset + 4 <= bytes.length && view.getUint32(offset) === WAL_MARKER_TAG;
  return reason === 'torn' && isMarker ? 0 : 1;
};

/** Why the item at `offset` does not read, or null when it is a good record or marker. */
const badItem = (bytes: Uint8Array, view: DataView, offset: number): WalCutReason | null => {
  if (offset + 4 > bytes.length) return 'torn';
  const length = view.getUint32(offset);
  if (length === WAL_MARKER_TAG) {
    if (offset + WAL_MARKER_BYTES > bytes.length) return 'torn';
    return markerAt(bytes, view, offset) === null ? 'bad-marker' : null;
  }
  if (offset + WAL_RECORD_HEADER_BYTES > bytes.length) return 'torn';
  if (length === 0 || length > MAX_RECORD_BODY_BYTES) return 'bad-length';
  if (offset + WAL_RECORD_HEADER_BYTES + length > bytes.length) return 'torn';
  const framed = bytes.subarray(offset, offset + WAL_RECORD_HEADER_BYTES + length);
  return crcOf(framed, length) === view.getUint32(offset + 4) ? null : 'bad-crc';
};

/**
 * Replays the bytes of a WAL file: the state of every good record up to the first bad item, and
 * where and why to cut. Throws WAL_CORRUPT when the header is not a version 1 header, when a
 * valid marker after the first bad item shows that it lies in synced data, and for a well-framed
 * record that is not a persist output.
 */
export const scanWal = (bytes: Uint8Array, options: WalScanOptions = {}): WalScan => {
  const name = options.name ?? 'the WAL';
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const header = readHeader(bytes, view, name);
  const decoder = new Decoder();
  const state: WalState = { hardState: { term: 0, votedFor: null }, snapshot: null, entries: [] };
  let offset = header.bytes;
  let records = 0;
  let maxIncarnation = 0;
  let cutReason: WalCutReason | null = null;
  while (offset < bytes.length) {
    cutReason = badItem(bytes, view, offset);
    if (cutReason !== null) break;
    const length = view.getUint32(offset);
    if (length === WAL_MARKER_TAG) {
      maxIncarnation = Math.max(maxIncarnation, markerAt(bytes, view, offset)!);
      offset += WAL_MARKER_BYTES;
      continue;
    }
    const end = offset + WAL_RECORD_HEADER_BYTES + length;
    const record = decodeBody(decoder, bytes.subarray(offset + WAL_RECORD_HEADER_BYTES, end));
    const problem = typeof record === 'string' ? record : applyRecord(state, record);
    if (problem !== null) throw corrupt(name, offset, `record ${records + 1} has a good crc but ${problem}`);
    records += 1;
    offset = end;
  }
  if (cutReason !== null && options.checkMarkers !== false) {
    const marker = findMarker(bytes, view, offset + 1);
    if (marker !== null) {
      throw corrupt(
        name,
        offset,
        `damaged (${cutReason}) in data that was synced (the sync marker at byte ${marker} vouches for it), so it may hold acknowledged writes`,
      );
    }
  }
  const cutRecords = cutRecordsAt(bytes, view, offset, cutReason);
  return {
    state,
    nodeId: header.nodeId,
    records,
    goodBytes: offset,
    cutReason,
    cutRecords,
    maxIncarnation,
  };
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

/** Makes a directory entry (a created or renamed file) durable. */
const syncDirectory = async (dir: string): Promise<void> => {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
};

/** `path` holds `bytes` or (after a crash) what it held before: tmp file, fdatasync, rename, dir fsync. */
const writeAtomically = async (dir: string, path: string, bytes: Uint8Array): Promise<void> => {
  const tmpPath = `${path}.tmp`;
  const out = await open(tmpPath, 'w');
  try {
    await writeAll(out, bytes);
    await out.datasync();
  } finally {
    await out.close();
  }
  await rename(tmpPath, path);
  await syncDirectory(dir);
};

/** An error of a write or sync, naming the call and the file; keeps the errno `code`. */
const diskError = (call: string, path: string, error: unknown): Error => {
  const cause = error as NodeJS.ErrnoException;
  return Object.assign(new Error(`${call} of ${path} failed: ${cause?.message ?? String(error)}`), {
    code: cause?.code,
    cause,
  });
};

type Identity = { format: number; nodeId: string; createdAt: string };

/** The identity file, or null when there is none; WAL_CORRUPT when it is not one. */
const readIdentity = async (idPath: string): Promise<Identity | null> => {
  let text: string;
  try {
    text = await readFile(idPath, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    const value = JSON.parse(text) as Identity;
    if (value.format === 1 && typeof value.nodeId === 'string' && typeof value.createdAt === 'string')
      return value;
  } catch {
    // reported below
  }
  throw corrupt(idPath, 0, 'not a diskeyval identity file');
};

/** Opens `path` for reading and writing, or null when it does not exist. */
const openIfExists = async (path: string): Promise<FileHandle | null> => {
  try {
    return await open(path, 'r+');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
};

export type OpenWalOptions = {
  /** The clock for the incarnation (tests). */
  nowMs?: () => number;
};

/**
 * Opens (creating `dir` and the file when missing, see "Creation") and replays `<dir>/raft.wal`
 * for node `nodeId`, cuts a torn tail, and returns the handle to append to it. The caller holds
 * the dir's lock (io/dir-lock.ts).
 *
 * Incarnation: max(now in ms, the highest incarnation in the file's markers + 1), so it grows
 * from one start of this node to the next even when the clock goes back; every marker written
 * from now on carries it, starting with one written (and synced) at open.
 */
export const openWal = async (dir: string, nodeId: string, options: OpenWalOptions = {}): Promise<Wal> => {
  assert(typeof nodeId === 'string' && nodeId.length > 0, 'openWal needs the nodeId');
  await mkdir(dir, { recursive: true });
  const path = join(dir, WAL_FILE_NAME);
  const idPath = join(dir, WAL_IDENTITY_FILE_NAME);
  const tmpPath = `${path}.tmp`;
  // A rewrite or creation that crashed before its rename: the file it was to replace is whole.
  await rm(tmpPath, { force: true });
  await rm(`${idPath}.tmp`, { force: true });
  const identity = await readIdentity(idPath);
  if (identity && identity.nodeId !== nodeId) {
    throw corrupt(idPath, 0, `this dir belongs to node ${identity.nodeId}, not to ${nodeId}`);
  }
  let created = false;
  let file = await openIfExists(path);
  if (file === null) {
    if (identity) {
      throw corrupt(
        path,
        0,
        `the file is missing, but ${idPath} says node ${nodeId} created this dir at ${identity.createdAt}; a node that lost its WAL may have acknowledged writes it no longer has`,
      );
    }
    await writeAtomically(dir, path, encodeHeader(nodeId));
    created = true;
    file = await open(path, 'r+');
  }
  let scan: WalScan;
  let fileBytes: number;
  let incarnation = 0;
  try {
    const bytes = await readWhole(file);
    fileBytes = bytes.length;
    scan = scanWal(bytes, { name: path });
    if (scan.nodeId !== nodeId) throw corrupt(path, 0, `the header names node ${scan.nodeId}, not ${nodeId}`);
    incarnation = Math.max((options.nowMs ?? Date.now)(), scan.maxIncarnation + 1);
    if (scan.goodBytes < bytes.length) await file.truncate(scan.goodBytes);
    // The previous process may have died before its last fdatasync: sync what is kept before a
    // marker of this process vouches for it. Then a marker with this start's incarnation, synced,
    // so that the next start sees it even if this one writes nothing else.
    await file.datasync();
    const marker = new Uint8Array(WAL_MARKER_BYTES);
    writeMarker(marker, 0, scan.goodBytes, incarnation);
    await file.write(marker, 0, WAL_MARKER_BYTES, scan.goodBytes);
    await file.datasync();
  } finally {
    await file.close();
  }
  if (identity === null) {
    const text = JSON.stringify({ format: 1, nodeId, createdAt: new Date().toISOString() });
    await writeAtomically(dir, idPath, new TextEncoder().encode(`${text}\n`));
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
    incarnation,
  };
  // O_APPEND puts every write at the end of the (possibly cut) file.
  return walHandle(dir, nodeId, info, scan, await open(path, 'a'));
};

/** A rewrite's whole new file: header, records, and a marker vouching for all of it. */
const encodeWholeWal = (nodeId: string, records: readonly WalRecord[], incarnation: number): Buffer => {
  const header = encodeHeader(nodeId);
  const group = encodeGroup(records, header.length);
  group.set(header, 0);
  // The whole new file is synced before it is renamed into place, so a marker at its end is true.
  const marker = new Uint8Array(WAL_MARKER_BYTES);
  writeMarker(marker, 0, group.length, incarnation);
  return Buffer.concat([group, marker]);
};

/**
 * A final marker at the end of the file (stats.bytes), so that the last group is vouched for too;
 * true when it was written and synced. Best effort: what was appended is durable already; a marker
 * that fails (a full disk) leaves at most a torn marker, cut at the next open.
 */
const appendFinalMarker = async (
  handle: FileHandle,
  stats: WalStats,
  incarnation: number,
): Promise<boolean> => {
  const marker = new Uint8Array(WAL_MARKER_BYTES);
  writeMarker(marker, 0, stats.bytes, incarnation);
  try {
    await writeAll(handle, marker);
    await handle.datasync();
    stats.bytes += WAL_MARKER_BYTES;
    return true;
  } catch {
    return false;
  }
};

/** The append / rewrite / close side of an opened WAL. */
const walHandle = (dir: string, nodeId: string, info: WalOpenInfo, scan: WalScan, file: FileHandle): Wal => {
  const { path, incarnation } = info;
  const stats: WalStats = {
    bytes: scan.goodBytes + WAL_MARKER_BYTES,
    records: scan.records,
    appendedRecords: 0,
    syncs: 0,
    maxGroupRecords: 0,
    rewrites: 0,
  };
  /** The file ends with a marker (openWal wrote one): a final one at close would vouch for nothing new. */
  let vouched = true;
  let tail: Promise<void> = Promise.resolve();
  let failure: Error | null = null;
  let closed = false;
  let handle = file;

  /** Runs `write` after every write asked for before it (never two at once); fail-stop. */
  const enqueue = (call: string, write: () => Promise<void>): Promise<void> => {
    const guarded = async (): Promise<void> => {
      if (failure) throw failure;
      try {
        await write();
      } catch (error) {
        failure = diskError(call, path, error);
        throw failure;
      }
    };
    const done = tail.then(guarded);
    tail = done.catch(() => undefined);
    return done;
  };

  const rewrite = (records: readonly WalRecord[]): Promise<void> => {
    if (closed) return Promise.reject(walError('WAL_CLOSED', `${path} is closed`));
    const whole = encodeWholeWal(nodeId, records, incarnation);
    return enqueue('rewrite', async () => {
      await writeAtomically(dir, path, whole);
      const next = await open(path, 'a');
      await handle.close();
      handle = next;
      vouched = true;
      stats.bytes = whole.length;
      stats.records = records.length;
      stats.syncs += 1;
      stats.rewrites += 1;
    });
  };

  const append = (records: readonly WalRecord[]): Promise<void> => {
    if (closed) return Promise.reject(walError('WAL_CLOSED', `${path} is closed`));
    if (records.length === 0) return tail;
    // Encoded now: the group is what was asked for at this moment. Its marker is filled in when
    // the write runs, after every earlier write was synced: it vouches for the file up to there.
    const group = encodeGroup(records, WAL_MARKER_BYTES);
    return enqueue('append', async () => {
      writeMarker(group, 0, stats.bytes, incarnation);
      await writeAll(handle, group);
      await handle.datasync();
      vouched = false;
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
    // None after a failed write (the file's end is unknown), none when the last marker is at the end.
    if (!failure && !vouched) vouched = await appendFinalMarker(handle, stats, incarnation);
    await handle.close();
  };

  return { path, state: scan.state, info, append, rewrite, close, stats: () => ({ ...stats }) };
};
