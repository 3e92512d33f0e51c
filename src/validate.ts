/**
 * Checks of user input, before anything is proposed: a rejected call changes nothing anywhere.
 */
import { diskeyvalError } from './errors.js';
import { decodeValue, encodeValue } from './io/command.js';

/** Keys are non-empty strings of at most this many UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** A value's msgpack encoding may be at most this many bytes (configurable per node). */
export const DEFAULT_MAX_VALUE_BYTES = 1024 * 1024;
const MAX_DEPTH = 64;

/**
 * An unpaired UTF-16 surrogate: msgpack carries it (as WTF-8) in short strings and replaces it
 * with U+FFFD in long ones, so it is refused everywhere, in keys and values alike.
 */
const LONE_SURROGATE = /\p{Cs}/u;

export const validateKey = (key: unknown): string => {
  if (typeof key !== 'string' || key.length === 0) {
    throw diskeyvalError('INVALID_ARGUMENT', 'key must be a non-empty string');
  }
  if (LONE_SURROGATE.test(key)) throw diskeyvalError('INVALID_ARGUMENT', 'key holds an unpaired surrogate');
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) {
    throw diskeyvalError('INVALID_ARGUMENT', `key is longer than ${MAX_KEY_BYTES} bytes`);
  }
  return key;
};

/**
 * A value must survive a msgpack round trip unchanged: no functions, symbols, bigints beyond 64
 * bits, `undefined` inside objects or arrays, class instances other than Date and byte arrays,
 * cycles, or properties msgpack does not carry (symbol keys, non-enumerable ones, extra properties
 * on arrays). An own `__proto__` key is refused too: the decoder on every node refuses it (it is the
 * prototype-pollution vector of any reader that merges the value into another object), so it could
 * be proposed but never applied. This check gives the reason and the path; `encodeCheckedValue`
 * then proves the round trip on the real codec.
 */
export const validateValue = (value: unknown): void => {
  if (value === undefined) throw diskeyvalError('INVALID_ARGUMENT', 'value is undefined: use delete(key)');
  const seen = new Set<object>();
  const visit = (item: unknown, path: string, depth: number): void => {
    if (depth > MAX_DEPTH)
      throw diskeyvalError('INVALID_ARGUMENT', `value nests deeper than ${MAX_DEPTH} at ${path}`);
    switch (typeof item) {
      case 'string':
        if (LONE_SURROGATE.test(item))
          throw diskeyvalError('INVALID_ARGUMENT', `string holds an unpaired surrogate at ${path}`);
        return;
      case 'boolean':
        return;
      case 'number':
        return;
      case 'bigint':
        if (item < -(2n ** 63n) || item >= 2n ** 64n) {
          throw diskeyvalError('INVALID_ARGUMENT', `bigint out of 64-bit range at ${path}`);
        }
        return;
      case 'undefined':
        throw diskeyvalError('INVALID_ARGUMENT', `undefined does not survive msgpack at ${path}`);
      case 'function':
      case 'symbol':
        throw diskeyvalError('INVALID_ARGUMENT', `a ${typeof item} cannot be stored (at ${path})`);
    }
    if (item === null || item instanceof Uint8Array || item instanceof Date) return;
    const object = item as object;
    if (seen.has(object)) throw diskeyvalError('INVALID_ARGUMENT', `value is cyclic at ${path}`);
    const enumerable = Object.keys(object).length;
    const carried = Array.isArray(object) ? object.length : Object.getOwnPropertyNames(object).length;
    const names = Object.getOwnPropertyNames(object).length - (Array.isArray(object) ? 1 : 0);
    if (Object.getOwnPropertySymbols(object).length > 0 || enumerable !== carried || names !== enumerable) {
      throw diskeyvalError(
        'INVALID_ARGUMENT',
        `symbol-keyed, non-enumerable or extra array properties are not carried (at ${path})`,
      );
    }
    seen.add(object);
    if (Array.isArray(object)) {
      for (let index = 0; index < object.length; index += 1)
        visit(object[index], `${path}[${index}]`, depth + 1);
    } else {
      const prototype = Object.getPrototypeOf(object);
      if (prototype !== Object.prototype && prototype !== null) {
        throw diskeyvalError('INVALID_ARGUMENT', `only plain objects can be stored (at ${path})`);
      }
      if (Object.hasOwn(object, '__proto__'))
        throw diskeyvalError('INVALID_ARGUMENT', `an own __proto__ key cannot be stored (at ${path})`);
      for (const [key, element] of Object.entries(object)) {
        if (LONE_SURROGATE.test(key))
          throw diskeyvalError('INVALID_ARGUMENT', `object key holds an unpaired surrogate at ${path}`);
        visit(element, `${path}.${key}`, depth + 1);
      }
    }
    seen.delete(object);
  };
  visit(value, 'value', 0);
};

/**
 * Where `decoded` differs from `original`, or null when they are the same value: same types, same
 * numbers (Object.is: -0 is not 0), same strings, same Date times, same bytes (any Uint8Array
 * comes back as a plain Uint8Array), same arrays and same own keys. Both are trees (no cycles).
 */
export const firstDifference = (original: unknown, decoded: unknown, path = 'value'): string | null => {
  if (original instanceof Uint8Array) {
    return decoded instanceof Uint8Array && Buffer.compare(original, decoded) === 0 ? null : path;
  }
  if (original instanceof Date) {
    return decoded instanceof Date && Object.is(original.getTime(), decoded.getTime()) ? null : path;
  }
  if (typeof original !== 'object' || original === null) return Object.is(original, decoded) ? null : path;
  if (typeof decoded !== 'object' || decoded === null) return path;
  if (Array.isArray(original)) {
    if (!Array.isArray(decoded) || decoded.length !== original.length) return path;
    for (let index = 0; index < original.length; index += 1) {
      const difference = firstDifference(original[index], decoded[index], `${path}[${index}]`);
      if (difference !== null) return difference;
    }
    return null;
  }
  const keys = Object.keys(original);
  if (Array.isArray(decoded) || Object.keys(decoded).length !== keys.length) return path;
  for (const key of keys) {
    if (!Object.hasOwn(decoded, key)) return `${path}.${key}`;
    const difference = firstDifference(
      (original as Record<string, unknown>)[key],
      (decoded as Record<string, unknown>)[key],
      `${path}.${key}`,
    );
    if (difference !== null) return difference;
  }
  return null;
};

/**
 * The bytes a `set` proposes, after proving on this node that every node can carry them: the value
 * is checked (validateValue), encoded with the command codec, size-checked, decoded again and
 * compared with the original. Anything that would not come back as the same value (a lone UTF-16
 * surrogate, -0, an invalid Date, ...) rejects with INVALID_ARGUMENT before anything is proposed.
 */
export const encodeCheckedValue = (value: unknown, maxValueBytes: number): Uint8Array => {
  validateValue(value);
  let bytes: Uint8Array;
  let decoded: unknown;
  try {
    bytes = encodeValue(value);
  } catch (error) {
    throw diskeyvalError('INVALID_ARGUMENT', `value does not survive msgpack: ${(error as Error).message}`);
  }
  // The size first: a value refused for its size is not decoded again.
  if (bytes.byteLength > maxValueBytes) {
    throw diskeyvalError(
      'INVALID_ARGUMENT',
      `value encodes to ${bytes.byteLength} bytes, above ${maxValueBytes}`,
    );
  }
  try {
    decoded = decodeValue(bytes);
  } catch (error) {
    throw diskeyvalError('INVALID_ARGUMENT', `value does not survive msgpack: ${(error as Error).message}`);
  }
  const difference = firstDifference(value, decoded);
  if (difference !== null) {
    throw diskeyvalError(
      'INVALID_ARGUMENT',
      `value does not come back the same from msgpack at ${difference} (e.g. -0, a lone surrogate, an invalid Date)`,
    );
  }
  return bytes;
};

export const validateCallOptions = (options: unknown): void => {
  if (options === undefined) return;
  if (options === null || typeof options !== 'object') {
    throw diskeyvalError('INVALID_ARGUMENT', 'options must be an object');
  }
  const { timeoutMs, signal, forward, consistency } = options as Record<string, unknown>;
  if (
    timeoutMs !== undefined &&
    !(typeof timeoutMs === 'number' && timeoutMs > 0 && Number.isFinite(timeoutMs))
  ) {
    throw diskeyvalError('INVALID_ARGUMENT', 'timeoutMs must be a positive finite number');
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw diskeyvalError('INVALID_ARGUMENT', 'signal must be an AbortSignal');
  }
  if (forward !== undefined && typeof forward !== 'boolean') {
    throw diskeyvalError('INVALID_ARGUMENT', 'forward must be a boolean');
  }
  if (consistency !== undefined && consistency !== 'linearizable' && consistency !== 'local') {
    throw diskeyvalError('INVALID_ARGUMENT', "consistency must be 'linearizable' or 'local'");
  }
};

/** A member of a membership change (reconfigure): where it listens, unless a custom transport routes by id. */
export type MemberInput = { nodeId: string; host?: string; port?: number };

/** Most members one configuration holds (machines/configuration.ts MAX_VOTERS). */
export const MAX_MEMBERS = 64;
/** A node id travels in every handshake (io/codec.ts): at most this many characters. */
const MAX_NODE_ID_LENGTH = 1024;
/** Keys a member may carry: its own, and those getPeers() adds (so its entries can be passed back). */
const MEMBER_KEYS = new Set(['nodeId', 'host', 'port', 'self', 'role', 'voting']);

const memberOf = (member: unknown, at: string, needsAddress: boolean): MemberInput => {
  if (typeof member === 'string') {
    if (needsAddress)
      throw diskeyvalError(
        'INVALID_ARGUMENT',
        `${at}: with the TLS transport a member is { nodeId, host, port }`,
      );
    return memberOf({ nodeId: member }, at, false);
  }
  if (typeof member !== 'object' || member === null || Array.isArray(member))
    throw diskeyvalError('INVALID_ARGUMENT', `${at} must be { nodeId, host, port }`);
  const unknown = Object.keys(member).filter((key) => !MEMBER_KEYS.has(key));
  if (unknown.length > 0)
    throw diskeyvalError('INVALID_ARGUMENT', `${at} has unknown keys: ${unknown.join(', ')}`);
  const { nodeId, host, port } = member as Record<string, unknown>;
  if (typeof nodeId !== 'string' || nodeId.length === 0 || nodeId.length > MAX_NODE_ID_LENGTH)
    throw diskeyvalError(
      'INVALID_ARGUMENT',
      `${at}.nodeId must be a non-empty string (at most ${MAX_NODE_ID_LENGTH} characters)`,
    );
  if (host === undefined && port === undefined && !needsAddress) return { nodeId };
  if (typeof host !== 'string' || host.length === 0 || host.includes('\0'))
    throw diskeyvalError('INVALID_ARGUMENT', `${at}.host must be a non-empty host name or address`);
  if (!Number.isInteger(port) || (port as number) < 1 || (port as number) > 65_535)
    throw diskeyvalError('INVALID_ARGUMENT', `${at}.port must be an integer from 1 to 65535`);
  return { nodeId, host, port: port as number };
};

/**
 * The new voting membership of a `reconfigure` call, checked: a non-empty array of at most
 * MAX_MEMBERS distinct members, each `{ nodeId, host, port }` (a bare id, or `{ nodeId }`, only
 * with a custom transport, `needsAddress` false), no two at one address.
 */
export const validateMembers = (members: unknown, needsAddress: boolean): MemberInput[] => {
  if (!Array.isArray(members) || members.length === 0)
    throw diskeyvalError('INVALID_ARGUMENT', 'members must be a non-empty array (the whole new membership)');
  if (members.length > MAX_MEMBERS)
    throw diskeyvalError('INVALID_ARGUMENT', `members may list at most ${MAX_MEMBERS} nodes`);
  const checked = members.map((member, i) => memberOf(member, `members[${i}]`, needsAddress));
  const ids = new Set<string>();
  const addresses = new Set<string>();
  for (const { nodeId, host, port } of checked) {
    if (ids.has(nodeId)) throw diskeyvalError('INVALID_ARGUMENT', `members lists ${nodeId} twice`);
    ids.add(nodeId);
    if (host === undefined) continue;
    const address = `${host.toLowerCase()}:${port}`;
    if (addresses.has(address)) throw diskeyvalError('INVALID_ARGUMENT', `two members listen at ${address}`);
    addresses.add(address);
  }
  return checked;
};

/** The options of `reconfigure`: only `timeoutMs` (how long to wait for C_new to be committed). */
export const validateReconfigureOptions = (options: unknown): { timeoutMs?: number } => {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw diskeyvalError('INVALID_ARGUMENT', 'options must be an object { timeoutMs? }');
  const unknown = Object.keys(options).filter((key) => key !== 'timeoutMs');
  if (unknown.length > 0)
    throw diskeyvalError('INVALID_ARGUMENT', `unknown reconfigure options: ${unknown.join(', ')}`);
  const { timeoutMs } = options as { timeoutMs?: unknown };
  if (
    timeoutMs !== undefined &&
    !(typeof timeoutMs === 'number' && timeoutMs > 0 && Number.isFinite(timeoutMs))
  )
    throw diskeyvalError('INVALID_ARGUMENT', 'timeoutMs must be a positive finite number');
  return timeoutMs === undefined ? {} : { timeoutMs };
};
