import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createPackedMap,
  type PackedMap,
  type PackedMapOptions,
  readSnapshot,
  writeSnapshot,
} from '../../src/actors/packed-map.js';

const varintBytes = (n: number): number => (n < 2 ** 7 ? 1 : n < 2 ** 14 ? 2 : n < 2 ** 21 ? 3 : 4);

/** What the map should count as live for one entry: varint lengths, key, value, padded to 4 bytes. */
const recordBytes = (key: string, value: Uint8Array): number => {
  const keyBytes = Buffer.byteLength(key);
  return (
    Math.ceil((varintBytes(2 * keyBytes) + keyBytes + varintBytes(value.byteLength) + value.byteLength) / 4) *
    4
  );
};

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

/** The map's contents as sorted [key, value hex] pairs, read through entries(). */
const contentsOf = (map: PackedMap): [string, string][] => {
  const out: [string, string][] = [];
  for (const [key, value] of map.entries()) out.push([Buffer.from(key).toString('utf8'), hex(value)]);
  return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
};

const modelContents = (model: Map<string, Uint8Array>): [string, string][] =>
  [...model].map(([k, v]): [string, string] => [k, hex(v)]).sort((a, b) => (a[0] < b[0] ? -1 : 1));

/** Checks every observable of `map` against the model. */
const expectSame = (map: PackedMap, model: Map<string, Uint8Array>): void => {
  expect(map.size()).toBe(model.size);
  expect(contentsOf(map)).toEqual(modelContents(model));
  const stats = map.stats();
  let live = 0;
  for (const [key, value] of model) live += recordBytes(key, value);
  expect(stats.liveBytes).toBe(live);
  expect(stats.deadBytes).toBeGreaterThanOrEqual(0);
  expect(stats.liveBytes + stats.deadBytes).toBeLessThanOrEqual(stats.arenaBytes);
};

type Op =
  | { op: 'set'; key: string; value: Uint8Array }
  | { op: 'get'; key: string }
  | { op: 'has'; key: string }
  | { op: 'delete'; key: string };

const longKeys = ['x'.repeat(300), 'ü'.repeat(1400), 'k'.repeat(5000), '日本語'.repeat(30)];
const smallKeys = ['a', 'b', 'c', 'ab', 'é', '日本', '🙂', 'm12-34567', '', ...longKeys];
const keyArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...smallKeys) },
  // Well-formed strings only: keys are compared by their UTF-8 bytes (see packed-map.ts).
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 60, maxLength: 200 }) },
);
const valueArb = fc.oneof(
  { weight: 8, arbitrary: fc.uint8Array({ maxLength: 60 }) },
  { weight: 4, arbitrary: fc.uint8Array({ maxLength: 300 }) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 300, maxLength: 2000 }) },
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('set' as const), key: keyArb, value: valueArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('get' as const), key: keyArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('has' as const), key: keyArb }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('delete' as const), key: keyArb }) },
);
const optionsArb: fc.Arbitrary<PackedMapOptions> = fc.record({
  chunkSizeBytes: fc.constantFrom(64, 256, 512, 1024),
  reclaimBelowLiveFraction: fc.constantFrom(0.25, 0.5, 0.75, 0.9),
  initialIndexSlots: fc.constantFrom(1, 16, 64),
});

/** Runs `ops` against a fresh map and a Map, comparing after every step. */
const runModel = (options: PackedMapOptions, ops: readonly Op[]): PackedMap => {
  const map = createPackedMap(options);
  const model = new Map<string, Uint8Array>();
  for (const step of ops) {
    switch (step.op) {
      case 'set': {
        const value = Uint8Array.from(step.value);
        map.set(step.key, value);
        value.fill(0xee); // The map copied the value in.
        model.set(step.key, step.value);
        break;
      }
      case 'get': {
        const got = map.get(step.key);
        const want = model.get(step.key);
        expect(got === undefined ? undefined : hex(got)).toBe(want === undefined ? undefined : hex(want));
        break;
      }
      case 'has':
        expect(map.has(step.key)).toBe(model.has(step.key));
        break;
      case 'delete':
        expect(map.delete(step.key)).toBe(model.delete(step.key));
        break;
    }
    expectSame(map, model);
  }
  const copy = readSnapshot(writeSnapshot(map), options);
  expectSame(copy, model);
  for (const [key, value] of model) expect(hex(copy.get(key)!)).toBe(hex(value));
  return map;
};

describe('packed map', () => {
  it('behaves like a Map<string, Uint8Array> under random set/get/has/delete (and reclaims)', () => {
    let reclaimedChunks = 0;
    let movedBytes = 0;
    fc.assert(
      fc.property(optionsArb, fc.array(opArb, { maxLength: 250, size: 'max' }), (options, ops) => {
        const stats = runModel(options, ops).stats();
        reclaimedChunks += stats.reclaimedChunks;
        movedBytes += stats.movedBytes;
      }),
      { numRuns: 300 },
    );
    // Not vacuous: chunks were reclaimed, and some of them had live records to move.
    expect(reclaimedChunks).toBeGreaterThan(100);
    expect(movedBytes).toBeGreaterThan(10_000);
  });

  it('keeps the arena bounded under overwrite churn by reclaiming chunk by chunk', () => {
    const map = createPackedMap({ chunkSizeBytes: 4096 });
    const model = new Map<string, Uint8Array>();
    for (let round = 0; round < 40; round += 1) {
      for (let i = 0; i < 500; i += 1) {
        const value = new Uint8Array(20 + ((i * 7 + round) % 60)).fill(round);
        map.set(`key-${i}`, value);
        model.set(`key-${i}`, value);
      }
      for (let i = round % 3; i < 500; i += 3) {
        map.delete(`key-${i}`);
        model.delete(`key-${i}`);
      }
    }
    expectSame(map, model);
    const stats = map.stats();
    expect(stats.reclaimedChunks).toBeGreaterThan(100);
    expect(stats.movedBytes).toBeGreaterThan(0);
    // Every sealed chunk is at least 3/4 live (the default), bar the active chunk and the spare.
    expect(stats.arenaBytes).toBeLessThanOrEqual(stats.liveBytes / 0.75 + 2 * 4096);
  });

  it('overwrites a same-size value in place, leaving nothing dead', () => {
    const map = createPackedMap({ chunkSizeBytes: 1024 });
    for (let i = 0; i < 100; i += 1) map.set(`k${i}`, new Uint8Array(10).fill(1));
    for (let i = 0; i < 100; i += 1) map.set(`k${i}`, new Uint8Array(10).fill(2));
    expect(map.stats().deadBytes).toBe(0);
    expect([...map.get('k7')!]).toEqual(new Array(10).fill(2));
  });

  it('gives a record larger than a chunk a chunk of its own, and frees it when it dies', () => {
    const map = createPackedMap({ chunkSizeBytes: 64 });
    const big = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
    map.set('big', big);
    map.set('small', new Uint8Array([1]));
    expect(hex(map.get('big')!)).toBe(hex(big));
    expect(map.stats().chunks).toBe(2);
    map.delete('big');
    expect(map.stats().chunks).toBe(1);
    expect(map.stats().arenaBytes).toBeLessThan(1000);
  });

  it('refuses to go on iterating entries() after a mutation', () => {
    const map = createPackedMap();
    map.set('a', new Uint8Array([1]));
    map.set('b', new Uint8Array([2]));
    expect(() => {
      for (const _ of map.entries()) map.set('c', new Uint8Array([3]));
    }).toThrow(/mutated during entries/);
  });

  it('clears', () => {
    const map = createPackedMap({ chunkSizeBytes: 64 });
    for (let i = 0; i < 50; i += 1) map.set(`k${i}`, new Uint8Array(30));
    map.clear();
    expect(map.size()).toBe(0);
    expect(map.get('k1')).toBeUndefined();
    expect(map.stats()).toMatchObject({ liveBytes: 0, deadBytes: 0, arenaBytes: 0, chunks: 0 });
    map.set('k1', new Uint8Array([9]));
    expect([...map.get('k1')!]).toEqual([9]);
  });

  it('rejects a bad chunk size', () => {
    expect(() => createPackedMap({ chunkSizeBytes: 1000 })).toThrow(/power of two/);
  });
});

describe('packed map snapshots', () => {
  const sample = (): Uint8Array => {
    const map = createPackedMap({ chunkSizeBytes: 256 });
    map.set('alpha', new Uint8Array([1, 2, 3]));
    map.set('日本', new Uint8Array(0));
    map.set('', new Uint8Array(300).fill(7));
    return writeSnapshot(map);
  };

  it('round-trips an empty map', () => {
    const copy = readSnapshot(writeSnapshot(createPackedMap()));
    expect(copy.size()).toBe(0);
  });

  it('rejects every truncation of a valid snapshot', () => {
    const bytes = sample();
    expect(readSnapshot(bytes).size()).toBe(3);
    for (let length = 0; length < bytes.byteLength; length += 1) {
      expect(() => readSnapshot(bytes.subarray(0, length))).toThrow(/malformed packed map snapshot/);
    }
  });

  /** A snapshot written by hand: "DKPM", version 1, count, entries. */
  const build = (entries: [Uint8Array, Uint8Array][]): Uint8Array => {
    const parts: Buffer[] = [Buffer.from('DKPM'), Buffer.alloc(8)];
    parts[1]!.writeUInt32LE(1, 0);
    parts[1]!.writeUInt32LE(entries.length, 4);
    for (const [key, value] of entries) {
      for (const field of [key, value]) {
        const length = Buffer.alloc(4);
        length.writeUInt32LE(field.byteLength);
        parts.push(length, Buffer.from(field));
      }
    }
    return Buffer.concat(parts);
  };

  it('reads a snapshot written by hand', () => {
    const map = readSnapshot(build([[Buffer.from('k'), Buffer.from([5, 6])]]));
    expect([...map.get('k')!]).toEqual([5, 6]);
  });

  const patched = (at: number, u32: number): Uint8Array => {
    const bytes = Buffer.from(sample());
    bytes.writeUInt32LE(u32, at);
    return bytes;
  };

  it('rejects bad magic, version, counts, lengths, keys and trailing bytes', () => {
    const cases: [Uint8Array, RegExp][] = [
      [patched(0, 0x12345678), /bad magic/],
      [patched(4, 2), /unknown version 2/],
      [patched(8, 0xffffffff), /cannot fit/],
      [patched(8, 4), /runs past the end/],
      [patched(8, 2), /bytes after the last entry/],
      [patched(12, 0xfffffff0), /key of 4294967280 bytes runs past the end/],
      [Buffer.concat([sample(), Buffer.from([0])]), /1 bytes after the last entry/],
    ];
    for (const [bytes, message] of cases) expect(() => readSnapshot(bytes)).toThrow(message);

    const truncatedValue = Buffer.from(build([[Buffer.from('k'), Buffer.from([1, 2])]]));
    truncatedValue.writeUInt32LE(0x7fffffff, 12 + 4 + 1);
    expect(() => readSnapshot(truncatedValue)).toThrow(
      /entry 0: value of 2147483647 bytes runs past the end/,
    );
    expect(() => readSnapshot(build([[Buffer.from([0x61, 0xff]), Buffer.from([1])]]))).toThrow(
      /entry 0: key is not valid UTF-8/,
    );
    const key = Buffer.from('ab');
    expect(() =>
      readSnapshot(
        build([
          [key, Buffer.from([1])],
          [key, Buffer.from([2])],
        ]),
      ),
    ).toThrow(/entry 1: duplicate key/);
  });

  it('on arbitrary or corrupted bytes, returns a map or throws its own Error', () => {
    const valid = sample();
    const corrupted = fc
      .tuple(fc.nat({ max: valid.byteLength - 1 }), fc.integer({ min: 0, max: 255 }))
      .map(([at, byte]) => {
        const bytes = Uint8Array.from(valid);
        bytes[at] = byte;
        return bytes;
      });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), corrupted), (bytes) => {
        try {
          const map = readSnapshot(bytes);
          expect(map.size()).toBeLessThanOrEqual(3);
        } catch (error) {
          expect((error as Error).message).toMatch(/^malformed packed map snapshot: /);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
