import { describe, expect, it } from 'vitest';
import {
  createFrameDecoder,
  createFrameEncoder,
  DEFAULT_MAX_FRAME_BYTES,
  decodeFrames,
  FRAME_HEADER_BYTES,
  type FrameDecoderOptions,
  frameBodyLength,
  type Handshake,
  MAX_HANDSHAKE_FRAME_BYTES,
  PROTOCOL_VERSION,
} from '../../src/io/codec.js';
import type { TransportMessage } from '../../src/io/transport.js';
import type {
  AppendEntries,
  AppendEntriesResponse,
  RaftMessage,
  RequestVote,
} from '../../src/machines/messages.js';

const appendEntries = (n: number, seed = 0): AppendEntries => ({
  type: 'AppendEntries',
  from: 'node-1',
  to: 'node-2',
  term: 3,
  prevLogIndex: 41 + seed,
  prevLogTerm: 2,
  entries: Array.from({ length: n }, (_, i) => ({
    term: 3,
    kind: i === 0 ? 'noop' : 'command',
    data: i === 0 ? null : Uint8Array.from({ length: (i % 7) + 1 }, (_, j) => (i * 31 + j + seed) & 0xff),
  })),
  leaderCommit: 40,
});

const vote: RequestVote = {
  type: 'RequestVote',
  from: 'node-1',
  to: 'node-2',
  term: 7,
  lastLogIndex: 12,
  lastLogTerm: 6,
  preVote: true,
};

const ack: AppendEntriesResponse = {
  type: 'AppendEntriesResponse',
  incarnation: 1_764_000_000_123,
  from: 'node-2',
  to: 'node-1',
  term: 3,
  success: false,
  matchIndex: 0,
  rejectedIndex: 9,
  conflictIndex: 5,
  conflictTerm: 2,
};

const concat = (parts: readonly Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
};

const header = (length: number): Uint8Array => {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, length);
  return out;
};

const decodeAll = (chunks: Iterable<Uint8Array>, options?: FrameDecoderOptions): TransportMessage[][] => [
  ...decodeFrames(chunks, options),
];

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(Error);
    return (error as { code?: string }).code;
  }
  return undefined;
};

describe('frame encoding', () => {
  it('prefixes a big-endian body length', () => {
    const frame = createFrameEncoder().messages([vote]);
    expect(frameBodyLength(frame)).toBe(frame.byteLength - FRAME_HEADER_BYTES);
    expect(new DataView(frame.buffer, frame.byteOffset).getUint32(0)).toBe(frame.byteLength - 4);
  });

  it('returns independent buffers although the msgpack encoder is reused', () => {
    const encoder = createFrameEncoder();
    const first = encoder.messages([vote]);
    const copy = Uint8Array.from(first);
    encoder.messages([appendEntries(20)]);
    expect(Uint8Array.from(first)).toEqual(copy);
  });
});

describe('frame decoding: round trips', () => {
  const encoder = createFrameEncoder();

  it('round-trips the handshake and Raft messages, including Uint8Array entry data', () => {
    const messages: RaftMessage[] = [vote, appendEntries(5), ack];
    let seen: Handshake | null = null;
    const decoder = createFrameDecoder({ onHandshake: (h) => (seen = h) });
    const frames = decoder.push(concat([encoder.handshake('node-1'), encoder.messages(messages)]));
    expect(seen).toEqual({
      protocol: 'diskeyval',
      version: PROTOCOL_VERSION,
      nodeId: 'node-1',
      clusterId: null,
    });
    expect(decoder.handshake()?.nodeId).toBe('node-1');
    const id = '0123456789abcdef0123456789abcdef';
    const withId = createFrameDecoder();
    withId.push(encoder.handshake('node-2', PROTOCOL_VERSION, id));
    expect(withId.handshake()?.clusterId).toBe(id);
    expect(frames).toEqual([messages]);
    const entries = (frames[0]![1] as AppendEntries).entries;
    expect(entries[0]!.data).toBeNull();
    expect(entries[1]!.data).toBeInstanceOf(Uint8Array);
    expect(Object.getPrototypeOf(entries[1]!.data)).toBe(Uint8Array.prototype);
    expect(entries[3]!.data).toEqual(appendEntries(5).entries[3]!.data);
  });

  it('carries many messages in one frame (batching)', () => {
    const messages = Array.from({ length: 500 }, (_, i) => ({ ...vote, term: i }));
    const frames = decodeAll([encoder.handshake('a'), encoder.messages(messages)]);
    expect(frames).toHaveLength(1);
    expect(frames[0]).toHaveLength(500);
    expect(frames[0]).toEqual(messages);
  });

  it('decodes several frames delivered in one chunk, in order', () => {
    const batches = [[vote], [appendEntries(3, 1), ack], [appendEntries(64, 2)], [ack, ack, vote]];
    const chunk = concat([encoder.handshake('n'), ...batches.map((b) => encoder.messages(b))]);
    expect(decodeAll([chunk])).toEqual(batches);
  });

  it('decodes a stream split at every byte boundary, and byte by byte', () => {
    const batches = [[vote, ack], [appendEntries(10, 3)], [ack]];
    const stream = concat([encoder.handshake('node-9'), ...batches.map((b) => encoder.messages(b))]);
    for (let cut = 0; cut <= stream.byteLength; cut++) {
      const decoder = createFrameDecoder();
      const frames = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      expect(frames).toEqual(batches);
      expect(decoder.partial()).toBe(false);
    }
    const decoder = createFrameDecoder();
    const frames: TransportMessage[][] = [];
    for (let i = 0; i < stream.byteLength; i++) frames.push(...decoder.push(stream.subarray(i, i + 1)));
    expect(frames).toEqual(batches);
  });

  it('accepts Node Buffers and decodes binaries as plain Uint8Array views (no copy)', () => {
    const stream = Buffer.from(concat([encoder.handshake('x'), encoder.messages([appendEntries(3)])]));
    const [frame] = createFrameDecoder().push(stream);
    const data = (frame![0] as AppendEntries).entries[1]!.data!;
    expect(Object.getPrototypeOf(data)).toBe(Uint8Array.prototype);
    expect(data.buffer).toBe(stream.buffer);
  });

  it('keeps unknown message kinds (the client API rides the same connections)', () => {
    const custom = { type: 'ClientRequest', from: 'a', to: 'b', id: 7, ops: [{ k: 'x', v: null }] };
    expect(decodeAll([encoder.handshake('a'), encoder.messages([custom])])).toEqual([[custom]]);
  });

  it('can decode without a handshake', () => {
    expect(decodeAll([encoder.messages([vote])], { handshake: false })).toEqual([[vote]]);
  });
});

describe('frame decoding: errors', () => {
  const encoder = createFrameEncoder();
  const handshake = encoder.handshake('node-1');

  it('FRAME_TOO_LARGE as soon as the header announces too much, before the body arrives', () => {
    const decoder = createFrameDecoder({ maxFrameBytes: 1024 });
    decoder.push(handshake);
    expect(codeOf(() => decoder.push(header(1025)))).toBe('FRAME_TOO_LARGE');
    // The default limit is 16 MiB: a header announcing exactly that waits for the body.
    const fresh = createFrameDecoder();
    fresh.push(handshake);
    expect(fresh.push(header(DEFAULT_MAX_FRAME_BYTES))).toEqual([]);
    expect(fresh.partial()).toBe(true);
    expect(fresh.bufferedBytes()).toBe(0);
    const big = createFrameDecoder();
    big.push(handshake);
    expect(codeOf(() => big.push(header(DEFAULT_MAX_FRAME_BYTES + 1)))).toBe('FRAME_TOO_LARGE');
    // A frame exactly at the limit is fine.
    const atLimit = createFrameDecoder({ maxFrameBytes: encoder.messages([vote]).byteLength - 4 });
    atLimit.push(handshake);
    expect(atLimit.push(encoder.messages([vote]))).toEqual([[vote]]);
  });

  it('FRAME_TOO_LARGE for an oversized handshake frame', () => {
    expect(codeOf(() => createFrameDecoder().push(header(MAX_HANDSHAKE_FRAME_BYTES + 1)))).toBe(
      'FRAME_TOO_LARGE',
    );
  });

  it('MALFORMED_FRAME for bytes that are not msgpack, trailing bytes, empty frames and bad messages', () => {
    const bad = (body: Uint8Array | unknown, options?: FrameDecoderOptions): string | undefined => {
      const decoder = createFrameDecoder(options);
      decoder.push(handshake);
      const frame =
        body instanceof Uint8Array ? concat([header(body.byteLength), body]) : encoder.frame(body);
      return codeOf(() => decoder.push(frame));
    };
    expect(bad(Uint8Array.of(0xc1, 0xc1, 0xc1))).toBe('MALFORMED_FRAME');
    expect(bad(Uint8Array.of(0x90, 0x90))).toBe('MALFORMED_FRAME');
    expect(bad(Uint8Array.of(0x92, 0x01))).toBe('MALFORMED_FRAME');
    expect(bad(new Uint8Array(0))).toBe('MALFORMED_FRAME');
    expect(bad({ type: 'x', from: 'a', to: 'b' })).toBe('MALFORMED_FRAME');
    expect(bad([{ type: 'x', from: 'a' }])).toBe('MALFORMED_FRAME');
    expect(bad([{ type: 1, from: 'a', to: 'b' }])).toBe('MALFORMED_FRAME');
    expect(bad([vote, null])).toBe('MALFORMED_FRAME');
    expect(bad([vote, ['RequestVote', 'a', 'b']])).toBe('MALFORMED_FRAME');
    expect(bad([vote, new Uint8Array(3)])).toBe('MALFORMED_FRAME');
    // msgpack maps with a __proto__ key are refused by the msgpack decoder.
    expect(bad(Uint8Array.of(0x91, 0x81, 0xa9, ...Buffer.from('__proto__'), 0xc0))).toBe('MALFORMED_FRAME');
  });

  it('BAD_HANDSHAKE when the first frame is not a diskeyval handshake', () => {
    const first = (body: unknown): string | undefined =>
      codeOf(() => createFrameDecoder().push(encoder.frame(body)));
    expect(first([vote])).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'other', version: 1, nodeId: 'a' })).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'diskeyval', version: '1', nodeId: 'a' })).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'diskeyval', version: 1 })).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'diskeyval', version: 1, nodeId: '' })).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'diskeyval', version: 1, nodeId: 42 })).toBe('BAD_HANDSHAKE');
    // The cluster id (machines/cluster-id.ts): null, absent or 32 lower-case hex digits.
    expect(first({ protocol: 'diskeyval', version: 1, nodeId: 'a', clusterId: 'ABC' })).toBe('BAD_HANDSHAKE');
    expect(first({ protocol: 'diskeyval', version: 1, nodeId: 'a', clusterId: 7 })).toBe('BAD_HANDSHAKE');
    expect(codeOf(() => createFrameDecoder().push(concat([header(2), Uint8Array.of(0xc1, 0xc1)])))).toBe(
      'MALFORMED_FRAME',
    );
  });

  it('PROTOCOL_VERSION on a version mismatch', () => {
    expect(codeOf(() => createFrameDecoder().push(encoder.handshake('node-1', 2)))).toBe('PROTOCOL_VERSION');
    expect(codeOf(() => createFrameDecoder().push(encoder.handshake('node-1', 0)))).toBe('PROTOCOL_VERSION');
  });

  it('stays failed after an error, and lets onHandshake refuse a peer', () => {
    const decoder = createFrameDecoder();
    expect(codeOf(() => decoder.push(encoder.handshake('n', 9)))).toBe('PROTOCOL_VERSION');
    expect(codeOf(() => decoder.push(handshake))).toBe('PROTOCOL_VERSION');
    const refusing = createFrameDecoder({
      onHandshake: () => {
        throw Object.assign(new Error('no'), { code: 'NOPE' });
      },
    });
    expect(codeOf(() => refusing.push(concat([handshake, encoder.messages([vote])])))).toBe('NOPE');
  });

  it('reports a stream that ends inside a frame', () => {
    const frame = encoder.messages([vote]);
    expect(codeOf(() => decodeAll([handshake, frame.subarray(0, 6)]))).toBe('MALFORMED_FRAME');
    expect(codeOf(() => decodeAll([handshake, frame.subarray(0, 4)]))).toBe('MALFORMED_FRAME');
  });

  it('rejects an invalid maxFrameBytes option', () => {
    expect(codeOf(() => createFrameDecoder({ maxFrameBytes: 0 }))).toBe('INVALID_ARGUMENT');
  });
});
