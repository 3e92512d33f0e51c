/**
 * A key → bytes map that keeps keys and values off the JS heap, for a store holding millions of
 * small entries: a `Map<string, …>` costs ~200 bytes of heap per entry plus GC slack, this costs
 * the record bytes plus ~8-16 bytes of index.
 *
 * Layout:
 * - The arena: records `[keyHeader][key utf8][valueLen][value]`, padded to 4 bytes, appended
 *   into fixed-size chunks (`Buffer.allocUnsafeSlow`, outside the V8 heap). Only the active chunk is
 *   written; a record that does not fit seals it and opens the next one; a large record (over
 *   1 - reclaimBelowLiveFraction of a chunk, 1 MiB by default) gets a chunk of its own, of its size. Both lengths are LEB128 varints (1 byte below
 *   128); `keyHeader` is 2 * key length, plus 1 once the record is dead (overwritten or deleted),
 *   so a record dies by setting bit 0 of its first byte.
 * - The index: open addressing with linear probing over one Uint32Array, `slots`: a record's
 *   location plus one (chunk number in the high bits, offset / 4 in the low bits; 0 = empty). No
 *   hash is stored (4 bytes a slot, not 8): a probe compares the key in the arena, and the rare
 *   steps that need a slot's home (grow, delete) hash the key found there again. Doubles at load
 *   > 0.7; deletion shifts the following entries back (no tombstones).
 * - Reclamation: every chunk counts its live bytes. When a sealed chunk's live bytes drop below
 *   `reclaimBelowLiveFraction` of a chunk, it is queued; after each mutation at most one queued
 *   chunk is reclaimed — its live records are copied to the active chunk and it is freed — so a
 *   pause is bounded by one chunk, never the whole arena. A freed standard chunk is kept as the
 *   spare for the next chunk, so steady overwrite churn does not allocate.
 *
 * Keys are compared by their UTF-8 encoding (Buffer's: a lone surrogate becomes U+FFFD, so two
 * strings that differ only in lone surrogates are the same key).
 *
 * View contract: `get` and `entries` hand out views into the arena, not copies. A view is valid
 * until the next mutation (`set`, `setBytes`, `delete`, `clear`): a mutation may overwrite a
 * record in place, or move it and reuse its chunk. Decode or copy a view at once. Mutating the map
 * while iterating `entries()` throws on the iterator's next step.
 */
import { isUtf8 } from 'node:buffer';
import { assert } from '../machines/assert.js';

export type PackedMapOptions = {
  /** Size of a standard arena chunk: a power of two, 64 B .. 1 GiB. Default 4 MiB. */
  chunkSizeBytes?: number;
  /**
   * A sealed chunk is reclaimed once its live bytes fall below this fraction of a chunk (0 < f ≤
   * 0.9). Default 0.75: at most ~1/4 of the arena is dead at rest, at the price of copying up to 3
   * live bytes per dead byte freed.
   */
  reclaimBelowLiveFraction?: number;
  /** Index slots to start with (rounded up to a power of two, at least 16). */
  initialIndexSlots?: number;
};

export type PackedMapStats = {
  /** Bytes of live records (headers and padding included). */
  liveBytes: number;
  /** Bytes of dead records still held in chunks (overwritten or deleted, not yet reclaimed). */
  deadBytes: number;
  /** Bytes of all chunk buffers held, the spare included. */
  arenaBytes: number;
  /** Bytes of the index's typed arrays. */
  indexBytes: number;
  /** Chunks in use (the spare not counted). */
  chunks: number;
  /** Chunks reclaimed so far (live records moved out, chunk freed). */
  reclaimedChunks: number;
  /** Record bytes copied by reclamation so far. */
  movedBytes: number;
};

export type PackedMap = {
  set(key: string, value: Uint8Array): void;
  /** As `set`, with the key already UTF-8 encoded (it must be valid UTF-8). */
  setBytes(keyUtf8: Uint8Array, value: Uint8Array): void;
  /** A view into the arena, valid until the next mutation (see the module comment). */
  get(key: string): Uint8Array | undefined;
  has(key: string): boolean;
  delete(key: string): boolean;
  size(): number;
  clear(): void;
  /** Every (key utf8, value) pair once, in index order; views valid until the next mutation. */
  entries(): Iterable<[key: Uint8Array, value: Uint8Array]>;
  stats(): PackedMapStats;
};

export const DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024 * 1024;
const DEFAULT_RECLAIM_BELOW_LIVE_FRACTION = 0.75;
const MAX_LOAD = 0.7;
const MAX_KEY_BYTES = 0x7fffffff;
const RECORD_ALIGN_BYTES = 4;
const SCRATCH_BYTES = 4096;

type Chunk = {
  buffer: Buffer;
  /** Bytes written so far (the next record goes here in the active chunk). */
  usedBytes: number;
  liveBytes: number;
  queued: boolean;
};

const alignUp = (n: number): number => (n + RECORD_ALIGN_BYTES - 1) & ~(RECORD_ALIGN_BYTES - 1);

/** Bytes of n as an unsigned LEB128 varint (n < 2^35). */
const varintBytes = (n: number): number =>
  n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;

/** Writes n as a LEB128 varint at `at`; returns the offset after it. */
const writeVarint = (buffer: Uint8Array, at: number, n: number): number => {
  let rest = n;
  let to = at;
  while (rest >= 0x80) {
    buffer[to] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
    to += 1;
  }
  buffer[to] = rest;
  return to + 1;
};

/** A record's size in the arena: both varints, key, value, padding. */
const recordBytes = (keyBytes: number, valueBytes: number): number =>
  alignUp(varintBytes(keyBytes * 2) + keyBytes + varintBytes(valueBytes) + valueBytes);

/** FNV-1a over the bytes, then murmur3's finalizer so the low bits (the home slot) are well mixed. Never 0. */
const hashBytes = (bytes: Uint8Array, start: number, length: number): number => {
  let h = 0x811c9dc5;
  for (let i = start, end = start + length; i < end; i += 1) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  h >>>= 0;
  return h === 0 ? 1 : h;
};

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Set by readVarint: the offset after the varint just read. */
let varintEnd = 0;
/**
 * Reads the LEB128 varint at `at` and sets varintEnd. Module-wide out-variables (here and in
 * readRecord) keep the hot path allocation-free; every map reads them right after the call that
 * set them, with no other map's call in between (all of it is synchronous).
 */
const readVarint = (buffer: Uint8Array, at: number): number => {
  let byte = buffer[at]!;
  if (byte < 0x80) {
    varintEnd = at + 1;
    return byte;
  }
  let n = byte & 0x7f;
  let scale = 0x80;
  let from = at + 1;
  for (;;) {
    byte = buffer[from]!;
    from += 1;
    n += (byte & 0x7f) * scale;
    if (byte < 0x80) break;
    scale *= 0x80;
  }
  varintEnd = from;
  return n;
};

// The record read last by readRecord.
let recordDead = false;
let recordKeyAt = 0;
let recordKeyBytes = 0;
let recordValueAt = 0;
let recordValueBytes = 0;
/** Reads the header of the record at `at` into the record* variables. */
const readRecord = (buffer: Uint8Array, at: number): void => {
  const keyHeader = readVarint(buffer, at);
  recordDead = keyHeader % 2 === 1;
  recordKeyBytes = Math.floor(keyHeader / 2);
  recordKeyAt = varintEnd;
  recordValueBytes = readVarint(buffer, recordKeyAt + recordKeyBytes);
  recordValueAt = varintEnd;
};

/**
 * Everything one map holds. One object of one shape (every field set by createState), so the
 * functions below, which take it first, see monomorphic property loads on the hot path.
 */
type MapState = {
  chunkSizeBytes: number;
  /** A sealed chunk with fewer live bytes than this is queued for reclamation. */
  reclaimBelowLiveBytes: number;
  /** A record larger than this gets a chunk of its own. */
  largeRecordBytes: number;
  initialSlots: number;
  /** A location is chunkNumber * 2^offsetBits + offset / 4: 32 bits in all. */
  offsetBits: number;
  offsetMask: number;
  maxChunks: number;
  /** The index: a record's location + 1 per slot, 0 = empty. */
  slots: Uint32Array;
  mask: number;
  count: number;
  chunks: (Chunk | null)[];
  freeChunkNumbers: number[];
  /** The chunk records are appended to, -1 before the first. */
  active: number;
  /** A freed standard chunk kept for the next one. */
  spare: Buffer | null;
  reclaimQueue: number[];
  reclaimedChunks: number;
  movedBytes: number;
  /** Bumped by every mutation, so an iterator can tell it went stale. */
  version: number;
  scratch: Buffer;
  /** The key of the current call: keyBuffer[0, keyLength) (see encodeKey). */
  keyBuffer: Uint8Array;
  keyLength: number;
};

/** A new, empty map's state; asserts the options. */
const createState = (options: PackedMapOptions): MapState => {
  const chunkSizeBytes = options.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE_BYTES;
  assert(
    isPowerOfTwo(chunkSizeBytes) && chunkSizeBytes >= 64 && chunkSizeBytes <= 2 ** 30,
    `chunkSizeBytes must be a power of two in 64 .. 2^30, not ${chunkSizeBytes}`,
  );
  const reclaimBelowLiveFraction = options.reclaimBelowLiveFraction ?? DEFAULT_RECLAIM_BELOW_LIVE_FRACTION;
  assert(
    reclaimBelowLiveFraction > 0 && reclaimBelowLiveFraction <= 0.9,
    `reclaimBelowLiveFraction must be in (0, 0.9], not ${reclaimBelowLiveFraction}`,
  );
  let initialSlots = 16;
  while (initialSlots < (options.initialIndexSlots ?? 16)) initialSlots *= 2;
  const offsetBits = Math.log2(chunkSizeBytes) - 2;
  const scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
  return {
    chunkSizeBytes,
    reclaimBelowLiveBytes: Math.floor(chunkSizeBytes * reclaimBelowLiveFraction),
    // Records above (1 - f) of a chunk (at most half) get a chunk of their own: then a chunk sealed
    // for want of room is at least f full, so sealing alone never makes a chunk due for reclamation.
    largeRecordBytes: Math.floor(chunkSizeBytes * Math.min(0.5, 1 - reclaimBelowLiveFraction)),
    initialSlots,
    offsetBits,
    offsetMask: 2 ** offsetBits - 1,
    // One location is left over, so that location + 1 (what a slot holds) fits in 32 bits.
    maxChunks: 2 ** (32 - offsetBits) - 1,
    slots: new Uint32Array(initialSlots),
    mask: initialSlots - 1,
    count: 0,
    chunks: [],
    freeChunkNumbers: [],
    active: -1,
    spare: null,
    reclaimQueue: [],
    reclaimedChunks: 0,
    movedBytes: 0,
    version: 0,
    scratch,
    keyBuffer: scratch,
    keyLength: 0,
  };
};

const locationOf = (s: MapState, chunkNumber: number, offsetBytes: number): number =>
  chunkNumber * 2 ** s.offsetBits + offsetBytes / RECORD_ALIGN_BYTES;
const chunkNumberOf = (s: MapState, location: number): number => location >>> s.offsetBits;
const offsetOf = (s: MapState, location: number): number => (location & s.offsetMask) * RECORD_ALIGN_BYTES;
const locationIn = (s: MapState, slot: number): number => s.slots[slot]! - 1;

const chunkAt = (s: MapState, chunkNumber: number): Chunk => {
  const chunk = s.chunks[chunkNumber];
  assert(chunk, `location names freed chunk ${chunkNumber}`);
  return chunk;
};

/** Puts the key's UTF-8 bytes in s.keyBuffer[0, s.keyLength). */
const encodeKey = (s: MapState, key: string): void => {
  const n = key.length;
  const scratch = s.scratch;
  if (n <= 64) {
    let ascii = true;
    for (let i = 0; i < n; i += 1) {
      const c = key.charCodeAt(i);
      if (c >= 0x80) {
        ascii = false;
        break;
      }
      scratch[i] = c;
    }
    if (ascii) {
      s.keyBuffer = scratch;
      s.keyLength = n;
      return;
    }
  }
  if (n * 3 <= SCRATCH_BYTES) {
    s.keyBuffer = scratch;
    s.keyLength = scratch.write(key, 0, 'utf8');
    return;
  }
  const encoded = Buffer.from(key, 'utf8');
  s.keyBuffer = encoded;
  s.keyLength = encoded.byteLength;
};

// The index: open addressing, linear probing, no stored hashes (see the module comment).

/** The hash of the key of the record at `location`. */
const keyHashAt = (s: MapState, location: number): number => {
  const buffer = chunkAt(s, chunkNumberOf(s, location)).buffer;
  const keyHeader = readVarint(buffer, offsetOf(s, location));
  return hashBytes(buffer, varintEnd, Math.floor(keyHeader / 2));
};

/** The slot holding s.keyBuffer[0, s.keyLength) with hash h, or -1. */
const findSlot = (s: MapState, h: number): number => {
  const slots = s.slots;
  const mask = s.mask;
  const keyBuffer = s.keyBuffer;
  const keyLength = s.keyLength;
  for (let slot = h & mask; ; slot = (slot + 1) & mask) {
    if (slots[slot] === 0) return -1;
    const location = slots[slot]! - 1;
    const buffer = chunkAt(s, chunkNumberOf(s, location)).buffer;
    const keyHeader = readVarint(buffer, offsetOf(s, location));
    if (keyHeader !== keyLength * 2) continue;
    let same = true;
    for (let i = 0, k = varintEnd; i < keyLength; i += 1, k += 1) {
      if (buffer[k] !== keyBuffer[i]) {
        same = false;
        break;
      }
    }
    if (same) return slot;
  }
};

/** The slot whose location is `location` (the record's key hashes to h), or -1. */
const findSlotOfLocation = (s: MapState, h: number, location: number): number => {
  const slots = s.slots;
  for (let slot = h & s.mask; ; slot = (slot + 1) & s.mask) {
    if (slots[slot] === 0) return -1;
    if (slots[slot] === location + 1) return slot;
  }
};

/** Puts `location` in the first free slot from h's home (the key is not in the index yet). */
const insertSlot = (s: MapState, h: number, location: number): void => {
  let free = h & s.mask;
  while (s.slots[free] !== 0) free = (free + 1) & s.mask;
  s.slots[free] = location + 1;
};

/** Twice the slots; every key is hashed again to find its new home. */
const grow = (s: MapState): void => {
  const old = s.slots;
  s.slots = new Uint32Array(old.length * 2);
  s.mask = s.slots.length - 1;
  for (let i = 0; i < old.length; i += 1) {
    if (old[i] === 0) continue;
    insertSlot(s, keyHashAt(s, old[i]! - 1), old[i]! - 1);
  }
};

/** Empties `slot` and shifts the entries after it back, so no probe sequence is broken. */
const removeSlot = (s: MapState, slot: number): void => {
  const slots = s.slots;
  const mask = s.mask;
  let hole = slot;
  for (let next = (hole + 1) & mask; slots[next] !== 0; next = (next + 1) & mask) {
    const home = keyHashAt(s, locationIn(s, next)) & mask;
    // The entry at `next` may fill the hole if the hole lies on its probe path (home .. next).
    if (((next - home) & mask) >= ((next - hole) & mask)) {
      slots[hole] = slots[next]!;
      hole = next;
    }
  }
  slots[hole] = 0;
};

// The arena: chunks of records, live-byte counts, reclamation (see the module comment).

const newChunkNumber = (s: MapState, chunk: Chunk): number => {
  const reused = s.freeChunkNumbers.pop();
  if (reused !== undefined) {
    s.chunks[reused] = chunk;
    return reused;
  }
  if (s.chunks.length >= s.maxChunks) {
    throw new Error(`packed map arena is full: ${s.maxChunks} chunks of ${s.chunkSizeBytes} bytes`);
  }
  s.chunks.push(chunk);
  return s.chunks.length - 1;
};

const maybeQueue = (s: MapState, chunkNumber: number): void => {
  const chunk = chunkAt(s, chunkNumber);
  if (chunkNumber !== s.active && !chunk.queued && chunk.liveBytes < s.reclaimBelowLiveBytes) {
    chunk.queued = true;
    s.reclaimQueue.push(chunkNumber);
  }
};

/** Room for a record of `size` bytes: the location to write it at, its chunk's usedBytes bumped. */
const allocate = (s: MapState, size: number): number => {
  if (size > s.largeRecordBytes) {
    const buffer = Buffer.allocUnsafeSlow(size);
    return locationOf(s, newChunkNumber(s, { buffer, usedBytes: size, liveBytes: 0, queued: false }), 0);
  }
  let chunk = s.active >= 0 ? chunkAt(s, s.active) : null;
  if (chunk === null || chunk.usedBytes + size > s.chunkSizeBytes) {
    const sealed = s.active;
    const buffer = s.spare ?? Buffer.allocUnsafeSlow(s.chunkSizeBytes);
    s.spare = null;
    chunk = { buffer, usedBytes: 0, liveBytes: 0, queued: false };
    s.active = newChunkNumber(s, chunk);
    if (sealed >= 0) maybeQueue(s, sealed);
  }
  const offset = chunk.usedBytes;
  chunk.usedBytes += size;
  return locationOf(s, s.active, offset);
};

/** Appends a record and returns its location; its chunk counts it live. */
const appendRecord = (s: MapState, key: Uint8Array, keyBytes: number, value: Uint8Array): number => {
  assert(keyBytes <= MAX_KEY_BYTES, `key of ${keyBytes} bytes is too long`);
  const size = recordBytes(keyBytes, value.byteLength);
  const location = allocate(s, size);
  const chunk = chunkAt(s, chunkNumberOf(s, location));
  const buffer = chunk.buffer;
  let at = writeVarint(buffer, offsetOf(s, location), keyBytes * 2);
  buffer.set(key.subarray(0, keyBytes), at);
  at = writeVarint(buffer, at + keyBytes, value.byteLength);
  buffer.set(value, at);
  chunk.liveBytes += size;
  return location;
};

/** Marks the record at `location` dead; its chunk may become due for reclamation. */
const killRecord = (s: MapState, location: number): void => {
  const chunkNumber = chunkNumberOf(s, location);
  const chunk = chunkAt(s, chunkNumber);
  const at = offsetOf(s, location);
  readRecord(chunk.buffer, at);
  assert(!recordDead, `record at ${location} is already dead`);
  chunk.buffer[at]! |= 1;
  chunk.liveBytes -= recordBytes(recordKeyBytes, recordValueBytes);
  assert(chunk.liveBytes >= 0, `chunk ${chunkNumber} counts negative live bytes`);
  maybeQueue(s, chunkNumber);
};

const freeChunk = (s: MapState, chunkNumber: number): void => {
  const chunk = chunkAt(s, chunkNumber);
  if (s.spare === null && chunk.buffer.byteLength === s.chunkSizeBytes) s.spare = chunk.buffer;
  s.chunks[chunkNumber] = null;
  s.freeChunkNumbers.push(chunkNumber);
};

/** Copies the live record of `size` bytes at `at` of chunk `chunkNumber` to the active chunk. */
const moveRecord = (s: MapState, chunkNumber: number, at: number, size: number): void => {
  const buffer = chunkAt(s, chunkNumber).buffer;
  const slot = findSlotOfLocation(
    s,
    hashBytes(buffer, recordKeyAt, recordKeyBytes),
    locationOf(s, chunkNumber, at),
  );
  assert(slot >= 0, `live record at ${at} of chunk ${chunkNumber} is not in the index`);
  const to = allocate(s, size);
  const target = chunkAt(s, chunkNumberOf(s, to));
  buffer.copy(target.buffer, offsetOf(s, to), at, at + size);
  target.liveBytes += size;
  s.slots[slot] = to + 1;
  s.movedBytes += size;
};

/** Moves the live records of one queued chunk to the active chunk and frees it. */
const reclaimOne = (s: MapState): void => {
  const chunkNumber = s.reclaimQueue.shift();
  if (chunkNumber === undefined) return;
  const chunk = chunkAt(s, chunkNumber);
  assert(chunk.queued && chunkNumber !== s.active, `chunk ${chunkNumber} is not due for reclamation`);
  let liveSeen = 0;
  for (let at = 0; at < chunk.usedBytes; ) {
    readRecord(chunk.buffer, at);
    const size = recordBytes(recordKeyBytes, recordValueBytes);
    if (!recordDead) {
      moveRecord(s, chunkNumber, at, size);
      liveSeen += size;
    }
    at += size;
  }
  assert(
    liveSeen === chunk.liveBytes,
    `chunk ${chunkNumber} held ${liveSeen} live bytes, counted ${chunk.liveBytes}`,
  );
  freeChunk(s, chunkNumber);
  s.reclaimedChunks += 1;
};

/** After a mutation: frees every queued chunk that is all dead, and reclaims at most one other. */
const afterMutation = (s: MapState): void => {
  s.version += 1;
  const queue = s.reclaimQueue;
  while (queue.length > 0 && chunkAt(s, queue[0]!).liveBytes === 0) {
    freeChunk(s, queue.shift()!);
    s.reclaimedChunks += 1;
  }
  reclaimOne(s);
};

// The operations, each for the key in s.keyBuffer[0, s.keyLength) where they take one.

const setEncoded = (s: MapState, value: Uint8Array): void => {
  const h = hashBytes(s.keyBuffer, 0, s.keyLength);
  const slot = findSlot(s, h);
  if (slot >= 0) {
    const old = locationIn(s, slot);
    const buffer = chunkAt(s, chunkNumberOf(s, old)).buffer;
    readRecord(buffer, offsetOf(s, old));
    if (recordValueBytes === value.byteLength) {
      buffer.set(value, recordValueAt); // Same size: overwrite in place, nothing dies.
    } else {
      const location = appendRecord(s, s.keyBuffer, s.keyLength, value);
      killRecord(s, old);
      s.slots[slot] = location + 1;
    }
  } else {
    if (s.count + 1 > s.slots.length * MAX_LOAD) grow(s);
    insertSlot(s, h, appendRecord(s, s.keyBuffer, s.keyLength, value));
    s.count += 1;
  }
  afterMutation(s);
};

const getEncoded = (s: MapState): Uint8Array | undefined => {
  const slot = findSlot(s, hashBytes(s.keyBuffer, 0, s.keyLength));
  if (slot < 0) return undefined;
  const location = locationIn(s, slot);
  const buffer = chunkAt(s, chunkNumberOf(s, location)).buffer;
  readRecord(buffer, offsetOf(s, location));
  return buffer.subarray(recordValueAt, recordValueAt + recordValueBytes);
};

const deleteEncoded = (s: MapState): boolean => {
  const slot = findSlot(s, hashBytes(s.keyBuffer, 0, s.keyLength));
  if (slot < 0) return false;
  killRecord(s, locationIn(s, slot));
  removeSlot(s, slot);
  s.count -= 1;
  afterMutation(s);
  return true;
};

const clearState = (s: MapState): void => {
  s.slots = new Uint32Array(s.initialSlots);
  s.mask = s.initialSlots - 1;
  s.count = 0;
  s.chunks.length = 0;
  s.freeChunkNumbers.length = 0;
  s.reclaimQueue.length = 0;
  s.active = -1;
  s.spare = null;
  s.version += 1;
};

function* entriesOf(s: MapState): Generator<[Uint8Array, Uint8Array]> {
  const startVersion = s.version;
  for (let slot = 0; slot < s.slots.length; slot += 1) {
    if (s.version !== startVersion) throw new Error('packed map was mutated during entries()');
    if (s.slots[slot] === 0) continue;
    const location = locationIn(s, slot);
    const buffer = chunkAt(s, chunkNumberOf(s, location)).buffer;
    readRecord(buffer, offsetOf(s, location));
    yield [
      buffer.subarray(recordKeyAt, recordKeyAt + recordKeyBytes),
      buffer.subarray(recordValueAt, recordValueAt + recordValueBytes),
    ];
  }
}

const statsOf = (s: MapState): PackedMapStats => {
  let liveBytes = 0;
  let usedBytes = 0;
  let arenaBytes = s.spare?.byteLength ?? 0;
  let inUse = 0;
  for (const chunk of s.chunks) {
    if (chunk === null) continue;
    inUse += 1;
    liveBytes += chunk.liveBytes;
    usedBytes += chunk.usedBytes;
    arenaBytes += chunk.buffer.byteLength;
  }
  return {
    liveBytes,
    deadBytes: usedBytes - liveBytes,
    arenaBytes,
    indexBytes: s.slots.byteLength,
    chunks: inUse,
    reclaimedChunks: s.reclaimedChunks,
    movedBytes: s.movedBytes,
  };
};

export const createPackedMap = (options: PackedMapOptions = {}): PackedMap => {
  const s = createState(options);
  return {
    set: (key, value) => {
      encodeKey(s, key);
      setEncoded(s, value);
    },
    setBytes: (keyUtf8, value) => {
      s.keyBuffer = keyUtf8;
      s.keyLength = keyUtf8.byteLength;
      setEncoded(s, value);
    },
    get: (key) => {
      encodeKey(s, key);
      return getEncoded(s);
    },
    has: (key) => {
      encodeKey(s, key);
      return findSlot(s, hashBytes(s.keyBuffer, 0, s.keyLength)) >= 0;
    },
    delete: (key) => {
      encodeKey(s, key);
      return deleteEncoded(s);
    },
    size: () => s.count,
    clear: () => clearState(s),
    entries: () => ({ [Symbol.iterator]: () => entriesOf(s) }),
    stats: () => statsOf(s),
  };
};

// Snapshots: "DKPM", u32 version, u32 entry count, then per entry [u32 keyLen][key][u32 valueLen][value].
const SNAPSHOT_MAGIC = 0x4d504b44; // "DKPM" read as little-endian u32
const SNAPSHOT_VERSION = 1;
const SNAPSHOT_HEADER_BYTES = 12;
const MAX_SNAPSHOT_BYTES = 2 ** 32 - 1;

/**
 * All (key, value) pairs of the map in one buffer, after `prefix` (the caller's own header, so a
 * large snapshot is written once, never copied into a bigger one).
 */
export const writeSnapshot = (map: PackedMap, prefix: Uint8Array = new Uint8Array(0)): Uint8Array => {
  let totalBytes = prefix.byteLength + SNAPSHOT_HEADER_BYTES;
  let entryCount = 0;
  for (const [key, value] of map.entries()) {
    totalBytes += 8 + key.byteLength + value.byteLength;
    entryCount += 1;
  }
  assert(entryCount === map.size(), `entries() yielded ${entryCount} of ${map.size()} entries`);
  if (totalBytes > MAX_SNAPSHOT_BYTES) throw new Error(`snapshot of ${totalBytes} bytes is too large`);
  const out = Buffer.allocUnsafeSlow(totalBytes);
  out.set(prefix, 0);
  out.writeUInt32LE(SNAPSHOT_MAGIC, prefix.byteLength);
  out.writeUInt32LE(SNAPSHOT_VERSION, prefix.byteLength + 4);
  out.writeUInt32LE(entryCount, prefix.byteLength + 8);
  let at = prefix.byteLength + SNAPSHOT_HEADER_BYTES;
  for (const [key, value] of map.entries()) {
    out.writeUInt32LE(key.byteLength, at);
    out.set(key, at + 4);
    at += 4 + key.byteLength;
    out.writeUInt32LE(value.byteLength, at);
    out.set(value, at + 4);
    at += 4 + value.byteLength;
  }
  assert(at === totalBytes, `snapshot wrote ${at} of ${totalBytes} bytes`);
  return out;
};

/** The map a snapshot describes. Throws an Error naming the problem on malformed bytes. */
export const readSnapshot = (bytes: Uint8Array, options?: PackedMapOptions): PackedMap => {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (what: string): never => {
    throw new Error(`malformed packed map snapshot: ${what}`);
  };
  if (view.byteLength < SNAPSHOT_HEADER_BYTES) fail(`${view.byteLength} bytes is shorter than the header`);
  if (view.readUInt32LE(0) !== SNAPSHOT_MAGIC) fail('bad magic');
  const version = view.readUInt32LE(4);
  if (version !== SNAPSHOT_VERSION) fail(`unknown version ${version}`);
  const entryCount = view.readUInt32LE(8);
  // Every entry takes at least 8 bytes: a count beyond that cannot be right (and must not size an index).
  if (entryCount > (view.byteLength - SNAPSHOT_HEADER_BYTES) / 8) fail(`${entryCount} entries cannot fit`);
  const map = createPackedMap({ ...options, initialIndexSlots: Math.ceil(entryCount / MAX_LOAD) + 1 });
  let at = SNAPSHOT_HEADER_BYTES;
  const field = (what: string, index: number): Uint8Array => {
    if (view.byteLength - at < 4) fail(`entry ${index}: ${what} length runs past the end`);
    const length = view.readUInt32LE(at);
    if (view.byteLength - at - 4 < length)
      fail(`entry ${index}: ${what} of ${length} bytes runs past the end`);
    const out = view.subarray(at + 4, at + 4 + length);
    at += 4 + length;
    return out;
  };
  for (let index = 0; index < entryCount; index += 1) {
    const key = field('key', index);
    if (key.byteLength > MAX_KEY_BYTES) fail(`entry ${index}: key of ${key.byteLength} bytes`);
    if (!isUtf8(key)) fail(`entry ${index}: key is not valid UTF-8`);
    const value = field('value', index);
    const sizeBefore = map.size();
    map.setBytes(key, value);
    if (map.size() !== sizeBefore + 1) fail(`entry ${index}: duplicate key`);
  }
  if (at !== view.byteLength) fail(`${view.byteLength - at} bytes after the last entry`);
  return map;
};
