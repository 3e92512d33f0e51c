/**
 * The wire protocol between diskeyval nodes.
 *
 * A stream is a sequence of frames: a 4-byte big-endian body length followed by a msgpack body.
 * The first frame in each direction is a handshake `{ protocol: 'diskeyval', version: 1, nodeId,
 * clusterId }` (`clusterId`: the sender's cluster id, machines/cluster-id.ts, or null while it knows
 * none; a missing one reads as null);
 * every later frame body is an array of messages (everything a node sends to one peer in one tick
 * travels as one frame). Each message is a map with string `type`, `from` and `to`.
 *
 * Decoding is defensive: the body length is checked against the maximum frame size as soon as the
 * 4 header bytes are in, before any of the body is buffered, and every failure is an Error with a
 * `code` (`FRAME_TOO_LARGE`, `MALFORMED_FRAME`, `BAD_HANDSHAKE`, `PROTOCOL_VERSION`). A decoder that
 * has thrown stays failed: the connection it serves is to be closed.
 *
 * The fields that end up in the log, the WAL or the configuration in force are checked here, at the
 * boundary, because a bad one would be persisted or break an assertion inside the node (`raftMessageProblem`):
 * every AppendEntries entry (a count `term`, a `kind` of noop/command/config, `data` bytes or null,
 * and a config entry's data a well-formed configuration, machines/configuration.ts), an
 * InstallSnapshot's `config` when present, and a `Removed` message's `term` and `configIndex`.
 * A frame holding a message that fails is malformed: the connection closes.
 *
 * Binary values (`Uint8Array`, such as entry `data`) decode as views into the received bytes, not
 * copies: a holder of such a view keeps that frame's memory alive.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { isCount } from '../machines/assert.js';
import { isClusterId } from '../machines/cluster-id.js';
import { configurationFrom, isSoundCatchUp, MAX_REMOVED_IDS, MAX_VOTERS } from '../machines/configuration.js';
import type { TransportMessage } from './transport.js';

export const PROTOCOL_NAME = 'diskeyval';
export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 4;
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** The handshake is tiny; a bigger first frame is refused before it is buffered. */
export const MAX_HANDSHAKE_FRAME_BYTES = 4096;
const MAX_NODE_ID_LENGTH = 1024;
/** The length prefix is an unsigned 32-bit integer. */
const MAX_FRAME_LIMIT = 0xffff_ffff;

export type Handshake = {
  readonly protocol: typeof PROTOCOL_NAME;
  readonly version: number;
  readonly nodeId: string;
  /** The sender's cluster id when it sent the handshake, or null (machines/cluster-id.ts). */
  readonly clusterId: string | null;
};

export type CodecErrorCode = 'FRAME_TOO_LARGE' | 'MALFORMED_FRAME' | 'BAD_HANDSHAKE' | 'PROTOCOL_VERSION';

export type CodecError = Error & { readonly code: CodecErrorCode };

export const codecError = (code: CodecErrorCode, message: string, cause?: unknown): CodecError =>
  Object.assign(new Error(message, cause === undefined ? undefined : { cause }), { code });

const CODEC_ERROR_CODES: ReadonlySet<string> = new Set<CodecErrorCode>([
  'FRAME_TOO_LARGE',
  'MALFORMED_FRAME',
  'BAD_HANDSHAKE',
  'PROTOCOL_VERSION',
]);

export const isCodecError = (error: unknown): error is CodecError =>
  error instanceof Error && CODEC_ERROR_CODES.has((error as { code?: unknown }).code as string);

const checkMaxFrameBytes = (maxFrameBytes: number): number => {
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 1 || maxFrameBytes > MAX_FRAME_LIMIT) {
    throw Object.assign(new Error(`maxFrameBytes must be an integer in 1..${MAX_FRAME_LIMIT}`), {
      code: 'INVALID_ARGUMENT',
    });
  }
  return maxFrameBytes;
};

// ---------------------------------------------------------------------------------------------
// Encoding

export type FrameEncoder = {
  /** One frame (header + body) holding `messages`. The result is a fresh buffer, safe to queue. */
  messages(messages: readonly TransportMessage[]): Uint8Array;
  /** One message's msgpack encoding, as a fresh buffer (an element of a frame body's array). */
  message(message: TransportMessage): Uint8Array;
  /** The handshake frame for `nodeId` (tests pass another `version` to provoke a mismatch). */
  handshake(nodeId: string, version?: number, clusterId?: string | null): Uint8Array;
  /** A frame around an arbitrary msgpack body (for tests and tools). */
  frame(body: unknown): Uint8Array;
};

/**
 * A frame encoder around one reused msgpack `Encoder`: the body is encoded into the encoder's
 * shared buffer, then copied once into a buffer that also holds the 4-byte header.
 * `undefined` properties are left out, as a missing property.
 */
export const createFrameEncoder = (): FrameEncoder => {
  const encoder = new Encoder({ ignoreUndefined: true });
  const frame = (body: unknown): Uint8Array => {
    const encoded = encoder.encodeSharedRef(body);
    const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + encoded.byteLength);
    out.writeUInt32BE(encoded.byteLength, 0);
    out.set(encoded, FRAME_HEADER_BYTES);
    return out;
  };
  return {
    messages: (messages) => frame(messages),
    message: (message) => encoder.encode(message),
    handshake: (nodeId, version = PROTOCOL_VERSION, clusterId = null) =>
      frame({ protocol: PROTOCOL_NAME, version, nodeId, clusterId }),
    frame,
  };
};

/** Bytes a msgpack array header takes at most (0xdd and a 32-bit count). */
const MAX_ARRAY_HEADER_BYTES = 5;

/** A frame around already encoded array elements: header, msgpack array header, the elements. */
const packFrame = (parts: readonly Uint8Array[], partsBytes: number): Uint8Array => {
  const count = parts.length;
  const arrayHeader = count < 16 ? 1 : count < 0x10000 ? 3 : 5;
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + arrayHeader + partsBytes);
  out.writeUInt32BE(arrayHeader + partsBytes, 0);
  if (arrayHeader === 1) out[4] = 0x90 | count;
  else if (arrayHeader === 3) {
    out[4] = 0xdc;
    out.writeUInt16BE(count, 5);
  } else {
    out[4] = 0xdd;
    out.writeUInt32BE(count, 5);
  }
  let at = FRAME_HEADER_BYTES + arrayHeader;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
};

export type EncodedFrames<M> = {
  /** The frames, in order: their messages in the batch's order. */
  frames: Uint8Array[];
  /** Messages the frames hold. */
  sent: number;
  /** Messages left out: alone they encode over the frame limit / they cannot be encoded at all. */
  tooLarge: M[];
  unencodable: M[];
};

/**
 * Encodes a batch of messages into frames whose bodies are at most `maxFrameBytes`, in order. The
 * common case is one frame for the whole batch (one encoding, one copy). A batch over the limit is
 * encoded message by message and packed greedily: a new frame starts when the next message would
 * overflow the current one, so no frame is ever over the limit and nothing that fits is dropped.
 * A message that alone does not fit is left out and returned (a bug upstream: the raft machine
 * bounds what one message carries well under the limit), and so is one that cannot be encoded.
 */
export const encodeFrames = <M extends TransportMessage>(
  encoder: FrameEncoder,
  messages: readonly M[],
  maxFrameBytes: number,
): EncodedFrames<M> => {
  const result: EncodedFrames<M> = { frames: [], sent: 0, tooLarge: [], unencodable: [] };
  if (messages.length === 0) return result;
  try {
    const whole = encoder.messages(messages);
    if (whole.byteLength - FRAME_HEADER_BYTES <= maxFrameBytes) {
      result.frames.push(whole);
      result.sent = messages.length;
      return result;
    }
  } catch {
    // One of them cannot be encoded: found below.
  }
  let parts: Uint8Array[] = [];
  let partsBytes = 0;
  for (const message of messages) {
    let encoded: Uint8Array;
    try {
      encoded = encoder.message(message);
    } catch {
      result.unencodable.push(message);
      continue;
    }
    if (encoded.byteLength + MAX_ARRAY_HEADER_BYTES > maxFrameBytes) {
      result.tooLarge.push(message);
      continue;
    }
    if (parts.length > 0 && partsBytes + encoded.byteLength + MAX_ARRAY_HEADER_BYTES > maxFrameBytes) {
      result.frames.push(packFrame(parts, partsBytes));
      parts = [];
      partsBytes = 0;
    }
    parts.push(encoded);
    partsBytes += encoded.byteLength;
    result.sent += 1;
  }
  if (parts.length > 0) result.frames.push(packFrame(parts, partsBytes));
  return result;
};

/** The body length of an encoded frame. */
export const frameBodyLength = (frame: Uint8Array): number =>
  frame.byteLength < FRAME_HEADER_BYTES
    ? 0
    : ((frame[0]! << 24) >>> 0) + (frame[1]! << 16) + (frame[2]! << 8) + frame[3]!;

// ---------------------------------------------------------------------------------------------
// Decoding

export type FrameDecoderOptions = {
  /** Largest accepted body, in bytes (default 16 MiB). */
  readonly maxFrameBytes?: number;
  /** Whether the first frame must be a handshake (default true). */
  readonly handshake?: boolean;
  /**
   * Called with the peer's handshake as soon as it is decoded, before any later frame is looked
   * at. Throwing from it fails the decoder (the error propagates out of `push`).
   */
  readonly onHandshake?: (handshake: Handshake) => void;
};

export type FrameDecoder<M extends TransportMessage = TransportMessage> = {
  /**
   * Feeds one chunk of the stream. Returns the message arrays of every frame the chunk completed
   * (often none, often one). Throws a `CodecError` on bad input; after that it always throws.
   */
  push(chunk: Uint8Array): M[][];
  /** The peer's handshake once decoded. */
  handshake(): Handshake | null;
  /** Bytes held while waiting for the rest of a frame. */
  bufferedBytes(): number;
  /** Whether a frame has begun (some of its bytes arrived) and is not complete yet. */
  partial(): boolean;
};

const asPlainBytes = (chunk: Uint8Array): Uint8Array =>
  // Node Buffers subclass Uint8Array; a plain view keeps decoded binaries plain Uint8Arrays.
  Object.getPrototypeOf(chunk) === Uint8Array.prototype
    ? chunk
    : new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);

/** Whether `value` has the shape every message needs: an object with string `type`, `from`, `to`. */
export const isTransportMessage = (value: unknown): value is TransportMessage =>
  isRecord(value) &&
  typeof value.type === 'string' &&
  typeof value.from === 'string' &&
  typeof value.to === 'string';

const validateHandshake = (body: unknown): Handshake => {
  if (!isRecord(body) || body.protocol !== PROTOCOL_NAME) {
    throw codecError('BAD_HANDSHAKE', `expected a ${PROTOCOL_NAME} handshake`);
  }
  const { version, nodeId, clusterId = null } = body;
  if (typeof version !== 'number' || !Number.isInteger(version)) {
    throw codecError('BAD_HANDSHAKE', 'handshake without an integer version');
  }
  if (version !== PROTOCOL_VERSION) {
    throw codecError(
      'PROTOCOL_VERSION',
      `peer speaks protocol version ${version}, this node ${PROTOCOL_VERSION}`,
    );
  }
  if (typeof nodeId !== 'string' || nodeId.length === 0 || nodeId.length > MAX_NODE_ID_LENGTH) {
    throw codecError('BAD_HANDSHAKE', 'handshake without a valid nodeId');
  }
  if (clusterId !== null && !isClusterId(clusterId)) {
    throw codecError('BAD_HANDSHAKE', 'handshake with a malformed clusterId');
  }
  return { protocol: PROTOCOL_NAME, version, nodeId, clusterId };
};

const configDecoder = new Decoder();

/** Whether `data` (a config entry's) decodes to a configuration (configuration.ts, `encodeConfiguration`). */
export const isConfigurationData = (data: Uint8Array): boolean => {
  try {
    return configurationFrom(configDecoder.decode(data)) !== null;
  } catch {
    return false;
  }
};

const MAX_PORT = 65_535;

const isIdList = (value: unknown, max: number): value is string[] =>
  Array.isArray(value) &&
  value.length <= max &&
  value.every((id) => typeof id === 'string' && id.length > 0 && id.length <= MAX_NODE_ID_LENGTH);

/** Whether `value` is a Configuration object as InstallSnapshot carries it (configuration.ts). */
export const isConfigurationShape = (value: unknown): boolean => {
  if (!isRecord(value)) return false;
  const { voters, outgoing, removed, addresses, learners, target } = value;
  if (!isIdList(voters, MAX_VOTERS) || voters.length === 0 || !isIdList(outgoing, MAX_VOTERS)) return false;
  if (!isIdList(removed, MAX_REMOVED_IDS) || !isRecord(addresses)) return false;
  if (!isIdList(learners, MAX_VOTERS) || !isIdList(target, MAX_VOTERS)) return false;
  if (!isSoundCatchUp(voters, outgoing, learners, target)) return false;
  return Object.values(addresses).every(
    (address) =>
      isRecord(address) &&
      typeof address.host === 'string' &&
      Number.isInteger(address.port) &&
      (address.port as number) >= 0 &&
      (address.port as number) <= MAX_PORT,
  );
};

/** The problem with an AppendEntries' entries, or null: each one persisted as it is (WAL, log). */
const entriesProblem = (entries: unknown): string | null => {
  if (!Array.isArray(entries)) return 'entries is not an array';
  for (let i = 0; i < entries.length; i++) {
    const entry: unknown = entries[i];
    if (!isRecord(entry) || !isCount(entry.term)) return `entry ${i} lacks a count term`;
    const { kind, data } = entry;
    if (data !== null && !(data instanceof Uint8Array)) return `entry ${i} data is neither bytes nor null`;
    if (kind === 'config') {
      if (data === null || !isConfigurationData(data)) return `entry ${i} holds a malformed configuration`;
    } else if (kind !== 'noop' && kind !== 'command') return `entry ${i} has an unknown kind`;
  }
  return null;
};

/**
 * What is wrong with a Raft message's fields that the node would persist or act on at once (see the
 * module comment), or null. Other message types (and the client calls) are not looked at here.
 */
export const raftMessageProblem = (message: TransportMessage): string | null => {
  const fields = message as unknown as Record<string, unknown>;
  switch (message.type) {
    case 'AppendEntries':
      return entriesProblem(fields.entries);
    case 'InstallSnapshot':
      return fields.config === undefined || isConfigurationShape(fields.config)
        ? null
        : 'config is not a configuration';
    case 'Removed':
      return isCount(fields.term) && isCount(fields.configIndex)
        ? null
        : 'term or configIndex is not a count';
    default:
      return null;
  }
};

const validateMessages = <M extends TransportMessage>(body: unknown): M[] => {
  if (!Array.isArray(body)) throw codecError('MALFORMED_FRAME', 'frame body is not an array of messages');
  for (let i = 0; i < body.length; i++) {
    const message: unknown = body[i];
    if (!isTransportMessage(message)) {
      throw codecError('MALFORMED_FRAME', `message ${i} lacks a string type, from or to`);
    }
    const problem = raftMessageProblem(message);
    if (problem !== null) throw codecError('MALFORMED_FRAME', `message ${i} (${message.type}): ${problem}`);
  }
  return body as M[];
};

/**
 * The bytes a decoder has received and not consumed: chunks kept as a list, `head` the first
 * unconsumed one and `offset` the read position in it, `buffered` the bytes left in all of them.
 */
type ChunkQueue = { chunks: Uint8Array[]; head: number; offset: number; buffered: number };

/** Drops fully consumed chunks (by index: no per-chunk shifting of the array). */
const dropConsumed = (q: ChunkQueue): void => {
  if (q.offset === q.chunks[q.head]!.byteLength) {
    q.head++;
    q.offset = 0;
  }
  if (q.head === q.chunks.length) {
    q.chunks.length = 0;
    q.head = 0;
  } else if (q.head > 64) {
    q.chunks.splice(0, q.head);
    q.head = 0;
  }
};

/** Removes `n` (<= q.buffered) bytes from the front; a view when they lie in one chunk. */
const takeBytes = (q: ChunkQueue, n: number): Uint8Array => {
  const first = q.chunks[q.head]!;
  let out: Uint8Array;
  if (first.byteLength - q.offset >= n) {
    out = first.subarray(q.offset, q.offset + n);
    q.offset += n;
  } else {
    out = new Uint8Array(n);
    let filled = 0;
    for (;;) {
      const chunk = q.chunks[q.head]!;
      const count = Math.min(chunk.byteLength - q.offset, n - filled);
      out.set(chunk.subarray(q.offset, q.offset + count), filled);
      filled += count;
      q.offset += count;
      if (filled === n) break;
      q.head++;
      q.offset = 0;
    }
  }
  dropConsumed(q);
  q.buffered -= n;
  return out;
};

/** The body length a frame header announces, checked against the limit (a handshake's is smaller). */
const checkedFrameLength = (
  header: Uint8Array,
  awaitingHandshake: boolean,
  maxFrameBytes: number,
): number => {
  const length = ((header[0]! << 24) >>> 0) + (header[1]! << 16) + (header[2]! << 8) + header[3]!;
  const limit = awaitingHandshake ? Math.min(maxFrameBytes, MAX_HANDSHAKE_FRAME_BYTES) : maxFrameBytes;
  if (length > limit) {
    throw codecError(
      'FRAME_TOO_LARGE',
      `${awaitingHandshake ? 'handshake ' : ''}frame of ${length} bytes exceeds the limit of ${limit}`,
    );
  }
  if (length === 0) throw codecError('MALFORMED_FRAME', 'empty frame');
  return length;
};

/**
 * A stream decoder. Chunks are kept as a list and only concatenated when a frame spans several of
 * them; a frame inside one chunk is decoded from a view of that chunk.
 */
export const createFrameDecoder = <M extends TransportMessage = TransportMessage>(
  options: FrameDecoderOptions = {},
): FrameDecoder<M> => {
  const maxFrameBytes = checkMaxFrameBytes(options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
  const onHandshake = options.onHandshake;
  const decoder = new Decoder();
  let awaitingHandshake = options.handshake ?? true;
  let handshake: Handshake | null = null;
  const queue: ChunkQueue = { chunks: [], head: 0, offset: 0, buffered: 0 };
  /** Body length of the frame being read, or -1 while its header is incomplete. */
  let expected = -1;
  let failure: unknown = null;

  const decodeBody = (body: Uint8Array): unknown => {
    try {
      return decoder.decode(body);
    } catch (error) {
      throw codecError(
        'MALFORMED_FRAME',
        `frame body is not valid msgpack: ${(error as Error).message}`,
        error,
      );
    }
  };

  const push = (chunk: Uint8Array): M[][] => {
    if (failure !== null) throw failure;
    const frames: M[][] = [];
    if (chunk.byteLength === 0) return frames;
    queue.chunks.push(asPlainBytes(chunk));
    queue.buffered += chunk.byteLength;
    try {
      for (;;) {
        if (expected < 0) {
          if (queue.buffered < FRAME_HEADER_BYTES) break;
          expected = checkedFrameLength(
            takeBytes(queue, FRAME_HEADER_BYTES),
            awaitingHandshake,
            maxFrameBytes,
          );
        }
        if (queue.buffered < expected) break;
        const body = decodeBody(takeBytes(queue, expected));
        expected = -1;
        if (awaitingHandshake) {
          handshake = validateHandshake(body);
          awaitingHandshake = false;
          onHandshake?.(handshake);
        } else {
          frames.push(validateMessages<M>(body));
        }
      }
    } catch (error) {
      failure = error;
      queue.chunks.length = 0;
      queue.head = 0;
      queue.offset = 0;
      queue.buffered = 0;
      throw error;
    }
    return frames;
  };

  return {
    push,
    handshake: () => handshake,
    bufferedBytes: () => queue.buffered,
    partial: () => queue.buffered > 0 || expected >= 0,
  };
};

/**
 * Decodes a whole sequence of chunks, yielding each frame's message array in order (the handshake
 * frame, when expected, is consumed and passed to `onHandshake`). Throws a `CodecError` on bad input.
 */
export function* decodeFrames<M extends TransportMessage = TransportMessage>(
  chunks: Iterable<Uint8Array>,
  options: FrameDecoderOptions = {},
): Generator<M[], void, undefined> {
  const decoder = createFrameDecoder<M>(options);
  for (const chunk of chunks) yield* decoder.push(chunk);
  if (decoder.partial()) throw codecError('MALFORMED_FRAME', 'stream ends inside a frame');
}
