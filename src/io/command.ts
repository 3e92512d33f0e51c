/**
 * The key/value commands carried in log entries, encoded once by the proposer with msgpack and
 * shipped as bytes from then on: `[op, key, value?]`.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';

export type KvCommand = { op: 'set'; key: string; value: unknown } | { op: 'delete'; key: string };

const OP_SET = 1;
const OP_DELETE = 2;

const encoder = new Encoder({ ignoreUndefined: false });
const decoder = new Decoder();

export const encodeCommand = (command: KvCommand): Uint8Array =>
  command.op === 'set'
    ? encoder.encode([OP_SET, command.key, command.value])
    : encoder.encode([OP_DELETE, command.key]);

export const decodeCommand = (bytes: Uint8Array): KvCommand => {
  const decoded = decoder.decode(bytes);
  if (!Array.isArray(decoded) || typeof decoded[1] !== 'string') throw new Error('malformed command');
  if (decoded[0] === OP_SET) return { op: 'set', key: decoded[1], value: decoded[2] };
  if (decoded[0] === OP_DELETE) return { op: 'delete', key: decoded[1] };
  throw new Error(`unknown command op ${String(decoded[0])}`);
};
