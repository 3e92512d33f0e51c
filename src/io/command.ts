/**
 * The key/value commands carried in log entries, encoded once by the node that received the call
 * and shipped as bytes from then on: `[op, key, value, session, seq, lowestPending]`, where
 * `value` is itself the msgpack encoding of the user's value, carried as a msgpack `bin`. The
 * store keeps those bytes as they are (store.ts): applying a write decodes the value once (to
 * prove it decodes, the same on every node) and never re-encodes it.
 *
 * `session` and `seq` name the request so the state machine applies each one at most once, however
 * often it was retried (dissertation §6.3). `lowestPending` is the proposer's smallest unanswered
 * seq when it encoded the command: everything below it is settled, so the store may forget it.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { isCount } from '../machines/assert.js';

/** A set may carry its value already encoded (`encodeValue`), so it is encoded only once. */
export type KvOperation =
  | { op: 'set'; key: string; value: unknown; encodedValue?: Uint8Array }
  | { op: 'delete'; key: string };

export type RequestTag = { session: number; seq: number; lowestPending: number };

/** A command as the store applies it: the value still encoded (null for a delete). */
export type RawKvCommand = { op: 'set' | 'delete'; key: string; valueBytes: Uint8Array | null } & RequestTag;

/** A decoded command: always the same shape (`value` is undefined for a delete). */
export type KvCommand = { op: 'set' | 'delete'; key: string; value: unknown } & RequestTag;

const OP_SET = 1;
const OP_DELETE = 2;

const encoder = new Encoder({ ignoreUndefined: false, useBigInt64: true });
const valueEncoder = new Encoder({ ignoreUndefined: false, useBigInt64: true });
const decoder = new Decoder({ useBigInt64: true });
const valueDecoder = new Decoder({ useBigInt64: true });

/** A user's value as the bytes a command carries (a fresh copy). */
export const encodeValue = (value: unknown): Uint8Array => valueEncoder.encode(value);

/** The user's value back from its bytes. */
export const decodeValue = (bytes: Uint8Array): unknown => valueDecoder.decode(bytes);

export const encodeCommand = (operation: KvOperation, tag: RequestTag): Uint8Array =>
  encoder.encode([
    operation.op === 'set' ? OP_SET : OP_DELETE,
    operation.key,
    operation.op === 'set' ? (operation.encodedValue ?? encodeValue(operation.value)) : null,
    tag.session,
    tag.seq,
    tag.lowestPending,
  ]);

/** The command without decoding its value (what the store applies). */
export const decodeRawCommand = (bytes: Uint8Array): RawKvCommand => {
  const decoded = decoder.decode(bytes);
  if (!Array.isArray(decoded) || decoded.length !== 6 || typeof decoded[1] !== 'string') {
    throw new Error('malformed command');
  }
  const [op, key, valueBytes, session, seq, lowestPending] = decoded as [
    unknown,
    string,
    unknown,
    unknown,
    unknown,
    unknown,
  ];
  if (!isCount(session) || !isCount(seq) || !isCount(lowestPending)) throw new Error('malformed command tag');
  if (op !== OP_SET && op !== OP_DELETE) throw new Error(`unknown command op ${String(op)}`);
  const set = op === OP_SET;
  if (set && !(valueBytes instanceof Uint8Array)) throw new Error('malformed command value');
  return {
    op: set ? 'set' : 'delete',
    key,
    valueBytes: set ? (valueBytes as Uint8Array) : null,
    session,
    seq,
    lowestPending,
  };
};

/** The command with its value decoded (tests and tools). */
export const decodeCommand = (bytes: Uint8Array): KvCommand => {
  const { valueBytes, ...rest } = decodeRawCommand(bytes);
  return { ...rest, value: valueBytes === null ? undefined : decodeValue(valueBytes) };
};

/**
 * Why `bytes` cannot be applied (the command or its value does not decode), or null when they
 * can. A leader checks every forwarded command with it before appending (a forwarded write is
 * bytes from the network); the store applies what fails it as a no-op.
 */
export const whyUndecodable = (bytes: Uint8Array): string | null => {
  try {
    const { valueBytes } = decodeRawCommand(bytes);
    if (valueBytes !== null) decodeValue(valueBytes);
    return null;
  } catch (error) {
    return (error as Error)?.message ?? String(error);
  }
};
