/**
 * The key/value commands carried in log entries, encoded once by the node that received the call
 * and shipped as bytes from then on: `[op, key, value, session, seq, lowestPending]`.
 *
 * `session` and `seq` name the request so the state machine applies each one at most once, however
 * often it was retried (dissertation §6.3). `lowestPending` is the proposer's smallest unanswered
 * seq when it encoded the command: everything below it is settled, so the store may forget it.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';

export type KvOperation = { op: 'set'; key: string; value: unknown } | { op: 'delete'; key: string };

export type RequestTag = { session: number; seq: number; lowestPending: number };

/** A decoded command: always the same shape (`value` is undefined for a delete). */
export type KvCommand = { op: 'set' | 'delete'; key: string; value: unknown } & RequestTag;

const OP_SET = 1;
const OP_DELETE = 2;

const encoder = new Encoder({ ignoreUndefined: false, useBigInt64: true });
const decoder = new Decoder({ useBigInt64: true });

export const encodeCommand = (operation: KvOperation, tag: RequestTag): Uint8Array =>
  encoder.encode([
    operation.op === 'set' ? OP_SET : OP_DELETE,
    operation.key,
    operation.op === 'set' ? operation.value : null,
    tag.session,
    tag.seq,
    tag.lowestPending,
  ]);

const isCount = (value: unknown): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;

export const decodeCommand = (bytes: Uint8Array): KvCommand => {
  const decoded = decoder.decode(bytes);
  if (!Array.isArray(decoded) || decoded.length !== 6 || typeof decoded[1] !== 'string') {
    throw new Error('malformed command');
  }
  const [op, key, value, session, seq, lowestPending] = decoded as [
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
  return { op: set ? 'set' : 'delete', key, value: set ? value : undefined, session, seq, lowestPending };
};
