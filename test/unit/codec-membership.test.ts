/**
 * The wire and the WAL carry membership (issue 13) with the real codec (src/io/codec.ts) and the real
 * WAL format (src/io/wal.ts), property-based (fast-check, seeded):
 *
 * - well-formed `Removed` messages, InstallSnapshot with a `config`, and AppendEntries whose entries
 *   include `config` entries round-trip through encoder and stream decoder unchanged, split into
 *   chunks at random places;
 * - each malformed variant (a config entry whose data is not a configuration, a config entry without
 *   data, an unknown entry kind, an InstallSnapshot config of the wrong shape, a Removed without a
 *   count term or configIndex) fails the frame with MALFORMED_FRAME, and the decoder stays failed (the
 *   transport closes that connection);
 * - what the check guards against: the same bad config entries pass the shape-only check the codec
 *   had before (type, from, to), and the node's own decoder of a config entry
 *   (machines/configuration.ts `decodeConfiguration`) throws on them: without the check
 *   one bad frame would stop the receiving node;
 * - the WAL replays config entries as it writes them, and refuses (WAL_CORRUPT) a well-framed record
 *   whose config entry is not a configuration.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createFrameDecoder,
  createFrameEncoder,
  isConfigurationShape,
  isTransportMessage,
} from '../../src/io/codec.js';
import { encodeHeader, encodeRecord, scanWal, type WalRecord } from '../../src/io/wal.js';
import {
  type Configuration,
  catchUpConfiguration,
  decodeConfiguration,
  encodeConfiguration,
  finalConfiguration,
  jointAfterCatchUp,
  jointConfiguration,
  simpleConfiguration,
} from '../../src/machines/configuration.js';
import type { AppendEntries, Entry, InstallSnapshot, Removed } from '../../src/machines/messages.js';

const SEED = 1313;
const RUNS = 200;

const nodeId = fc.constantFrom('n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'node-7');
const count = fc.integer({ min: 0, max: 2 ** 40 });
const address = fc.record({
  host: fc.constantFrom('127.0.0.1', '::1', 'db-3.internal'),
  port: fc.integer({ min: 1, max: 65_535 }),
});

/**
 * Configurations as the machine makes them: simple, catch-up (learners, when the change adds
 * servers), joint (C_old,new, after a catch-up or at once) and final (C_new, with removed ids).
 */
const configuration: fc.Arbitrary<Configuration> = fc
  .tuple(
    fc.uniqueArray(nodeId, { minLength: 1, maxLength: 5 }),
    fc.uniqueArray(nodeId, { minLength: 1, maxLength: 5 }),
    fc.array(fc.tuple(nodeId, address), { maxLength: 7 }),
    fc.constantFrom('simple', 'catchUp', 'joint', 'final'),
  )
  .map(([before, after, pairs, stage]) => {
    const addresses = Object.fromEntries(pairs);
    const start = simpleConfiguration(before, addresses);
    if (stage === 'simple') return start;
    const adds = after.some((id) => !before.includes(id));
    const catchUp = adds ? catchUpConfiguration(start, after, addresses) : null;
    if (stage === 'catchUp' && catchUp !== null) return catchUp;
    const joint = catchUp !== null ? jointAfterCatchUp(catchUp) : jointConfiguration(start, after, addresses);
    return stage === 'final' ? finalConfiguration(joint) : joint;
  });

const entry: fc.Arbitrary<Entry> = fc.oneof(
  fc.record({ term: count, kind: fc.constant('noop' as const), data: fc.constant(null) }),
  fc.record({ term: count, kind: fc.constant('command' as const), data: fc.uint8Array({ maxLength: 40 }) }),
  fc
    .tuple(count, configuration)
    .map(([term, config]) => ({ term, kind: 'config' as const, data: encodeConfiguration(config) })),
);

const appendEntries: fc.Arbitrary<AppendEntries> = fc.record({
  type: fc.constant('AppendEntries' as const),
  from: fc.constant('n1'),
  to: fc.constant('n2'),
  term: count,
  prevLogIndex: count,
  prevLogTerm: count,
  entries: fc.array(entry, { maxLength: 8 }),
  leaderCommit: count,
});

const removed: fc.Arbitrary<Removed> = fc.record({
  type: fc.constant('Removed' as const),
  from: fc.constant('n1'),
  to: fc.constant('n2'),
  term: count,
  configIndex: count,
});

const installSnapshot: fc.Arbitrary<InstallSnapshot> = fc
  .tuple(count, count, fc.uint8Array({ maxLength: 64 }), fc.option(configuration, { nil: undefined }))
  .map(([index, term, data, config]) => ({
    type: 'InstallSnapshot' as const,
    from: 'n1',
    to: 'n2',
    term,
    lastIncludedIndex: index,
    lastIncludedTerm: term,
    data,
    chunkOffset: 0,
    totalBytes: data.byteLength,
    ...(config ? { config } : {}),
  }));

const message = fc.oneof(appendEntries, removed, installSnapshot);

/** Feeds `bytes` to a fresh decoder (handshake off) in chunks cut at `cuts`; returns its frames. */
const decodeInChunks = (bytes: Uint8Array, cuts: number[]) => {
  const decoder = createFrameDecoder({ handshake: false });
  const points = [...new Set(cuts.map((cut) => cut % (bytes.byteLength + 1)))].sort((a, b) => a - b);
  const frames: unknown[][] = [];
  let at = 0;
  for (const point of [...points, bytes.byteLength]) {
    frames.push(...decoder.push(bytes.subarray(at, point)));
    at = point;
  }
  return { frames, decoder };
};

/** Plain data for comparison (byte views become plain Uint8Arrays of the same bytes). */
const plain = (value: unknown): unknown => structuredClone(value);

const garbageConfigData = fc.oneof(
  fc.constant(new Uint8Array([0xc1])),
  fc.constant(encodeConfiguration(simpleConfiguration(['n1'])).subarray(0, 3)),
  fc.uint8Array({ minLength: 1, maxLength: 12 }).filter((bytes) => {
    try {
      decodeConfiguration(bytes);
      return false;
    } catch {
      return true;
    }
  }),
  // Well-formed msgpack, not a configuration: no voters, voters not strings, a bad address.
  fc.constantFrom(
    new Uint8Array([0x80]),
    Uint8Array.from(Buffer.from('83a17690a16f90a17290', 'hex')),
    Uint8Array.from(Buffer.from('84a17691' + '01' + 'a16f90a17290a16180', 'hex')),
  ),
);

/** A malformed membership message, and what was broken (each is a frame the codec must refuse). */
const malformed = fc.oneof(
  fc.tuple(appendEntries, garbageConfigData, count).map(([append, data, term]) => ({
    what: 'config entry with bad data',
    message: { ...append, entries: [...append.entries, { term, kind: 'config', data }] },
    configData: data as Uint8Array | null,
  })),
  fc.tuple(appendEntries, count).map(([append, term]) => ({
    what: 'config entry without data',
    message: { ...append, entries: [{ term, kind: 'config', data: null }, ...append.entries] },
    configData: null,
  })),
  fc.tuple(appendEntries, fc.constantFrom('conf', 'snapshot', '', 'CONFIG')).map(([append, kind]) => ({
    what: `entry of kind '${kind}'`,
    message: { ...append, entries: [...append.entries, { term: 1, kind, data: null }] },
    configData: null,
  })),
  fc
    .tuple(
      installSnapshot,
      fc.constantFrom<unknown>(
        null,
        'n1,n2',
        { voters: [], outgoing: [], removed: [], addresses: {} },
        { voters: ['n1'], outgoing: [], removed: [] },
        { voters: ['n1', 7], outgoing: [], removed: [], addresses: {} },
        { voters: ['n1'], outgoing: [], removed: [], addresses: { n1: { host: 'h', port: 70_000 } } },
        { voters: ['n1'], outgoing: [], removed: [], addresses: { n1: ['h', 1] } },
        // Catch-up fields missing, a learner that votes, one outside the target, learners while joint.
        { voters: ['n1'], outgoing: [], removed: [], addresses: {} },
        { voters: ['n1'], outgoing: [], removed: [], addresses: {}, learners: ['n1'], target: ['n1'] },
        { voters: ['n1'], outgoing: [], removed: [], addresses: {}, learners: ['n2'], target: ['n1'] },
        { voters: ['n1'], outgoing: ['n3'], removed: [], addresses: {}, learners: ['n2'], target: ['n2'] },
        { voters: ['n1'], outgoing: [], removed: [], addresses: {}, learners: [], target: ['n1'] },
      ),
    )
    .map(([snapshot, config]) => ({
      what: 'InstallSnapshot with a bad config',
      message: { ...snapshot, config },
      configData: null,
    })),
  fc
    .tuple(removed, fc.constantFrom<unknown>(-1, 1.5, '3', null, undefined), fc.boolean())
    .map(([answer, bad, inTerm]) => ({
      what: `Removed with ${inTerm ? 'term' : 'configIndex'} ${String(bad)}`,
      message: inTerm ? { ...answer, term: bad } : { ...answer, configIndex: bad },
      configData: null,
    })),
);

describe('codec: membership messages', () => {
  it('round-trips Removed, InstallSnapshot.config and config entries, in any chunking', () => {
    fc.assert(
      fc.property(
        fc.array(message, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 5 }),
        (messages, cuts) => {
          const frame = createFrameEncoder().messages(messages);
          const { frames } = decodeInChunks(frame, cuts);
          expect(frames).toHaveLength(1);
          expect(plain(frames[0])).toEqual(plain(messages));
          for (const decoded of frames[0] as AppendEntries[]) {
            if (decoded.type !== 'AppendEntries') continue;
            for (const item of decoded.entries) {
              if (item.kind === 'config') expect(() => decodeConfiguration(item.data!)).not.toThrow();
            }
          }
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('refuses every malformed one with MALFORMED_FRAME, and the decoder stays failed', () => {
    fc.assert(
      fc.property(malformed, fc.array(fc.nat(), { maxLength: 3 }), ({ message: bad }, cuts) => {
        const encoder = createFrameEncoder();
        const bytes = Buffer.concat([encoder.messages([bad as never]), encoder.messages([])]);
        let code: unknown;
        let decoder: ReturnType<typeof createFrameDecoder> | undefined;
        try {
          decoder = decodeInChunks(bytes, cuts).decoder;
        } catch (error) {
          code = (error as { code?: unknown }).code;
        }
        expect(decoder).toBeUndefined();
        expect(code).toBe('MALFORMED_FRAME');
      }),
      { seed: SEED, numRuns: RUNS },
    );
    const decoder = createFrameDecoder({ handshake: false });
    const bad = { type: 'Removed', from: 'n1', to: 'n2', term: -1, configIndex: 3 };
    expect(() => decoder.push(createFrameEncoder().messages([bad as never]))).toThrow();
    // Failed for good: even a good frame after it throws.
    expect(() => decoder.push(createFrameEncoder().messages([]))).toThrow(
      expect.objectContaining({ code: 'MALFORMED_FRAME' }),
    );
  });

  it('guards the node: the shape-only check passes bad config entries, and decodeConfiguration throws on them', () => {
    fc.assert(
      fc.property(malformed, ({ message: bad, configData }) => {
        // The codec's check before membership: type, from and to only.
        expect(isTransportMessage(bad)).toBe(true);
        if (configData !== null) expect(() => decodeConfiguration(configData)).toThrow();
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('isConfigurationShape accepts what the machine makes', () => {
    fc.assert(
      fc.property(configuration, (config) => isConfigurationShape(plain(config))),
      { seed: SEED, numRuns: RUNS },
    );
  });
});

describe('WAL: config entries', () => {
  const fileOf = (records: readonly WalRecord[]) =>
    Buffer.concat([encodeHeader('n1'), ...records.map(encodeRecord)]);

  it('replays config entries as written', () => {
    fc.assert(
      fc.property(fc.array(entry, { minLength: 1, maxLength: 10 }), (entries) => {
        const { state } = scanWal(
          fileOf([{ hardState: { term: 1, votedFor: 'n1' }, fromIndex: 1, entries }]),
        );
        expect(plain(state.entries)).toEqual(plain(entries));
        for (const [i, item] of state.entries.entries()) {
          if (item.kind === 'config')
            expect(decodeConfiguration(item.data!)).toEqual(decodeConfiguration(entries[i]!.data!));
        }
      }),
      { seed: SEED, numRuns: 100 },
    );
  });

  it('refuses (WAL_CORRUPT) a well-framed record whose config entry is not a configuration', () => {
    fc.assert(
      fc.property(garbageConfigData, (data) => {
        const record = {
          hardState: null,
          fromIndex: 1,
          entries: [{ term: 1, kind: 'config', data }],
        } as WalRecord;
        expect(() => scanWal(fileOf([record]))).toThrow(expect.objectContaining({ code: 'WAL_CORRUPT' }));
      }),
      { seed: SEED, numRuns: 50 },
    );
  });
});
