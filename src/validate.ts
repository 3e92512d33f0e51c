/**
 * Checks of user input, before anything is proposed: a rejected call changes nothing anywhere.
 */
import { diskeyvalError } from './errors.js';

/** Keys are non-empty strings of at most this many UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** A value's msgpack encoding may be at most this many bytes (configurable per node). */
export const DEFAULT_MAX_VALUE_BYTES = 1024 * 1024;
const MAX_DEPTH = 64;

export const validateKey = (key: unknown): string => {
  if (typeof key !== 'string' || key.length === 0) {
    throw diskeyvalError('INVALID_ARGUMENT', 'key must be a non-empty string');
  }
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) {
    throw diskeyvalError('INVALID_ARGUMENT', `key is longer than ${MAX_KEY_BYTES} bytes`);
  }
  return key;
};

/**
 * A value must survive a msgpack round trip unchanged: no functions, symbols, bigints beyond 64
 * bits, `undefined` inside objects or arrays, class instances other than Date and byte arrays,
 * or cycles.
 */
export const validateValue = (value: unknown): void => {
  if (value === undefined) throw diskeyvalError('INVALID_ARGUMENT', 'value is undefined: use delete(key)');
  const seen = new Set<object>();
  const visit = (item: unknown, path: string, depth: number): void => {
    if (depth > MAX_DEPTH)
      throw diskeyvalError('INVALID_ARGUMENT', `value nests deeper than ${MAX_DEPTH} at ${path}`);
    switch (typeof item) {
      case 'string':
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
    seen.add(object);
    if (Array.isArray(object)) {
      for (let index = 0; index < object.length; index += 1)
        visit(object[index], `${path}[${index}]`, depth + 1);
    } else {
      const prototype = Object.getPrototypeOf(object);
      if (prototype !== Object.prototype && prototype !== null) {
        throw diskeyvalError('INVALID_ARGUMENT', `only plain objects can be stored (at ${path})`);
      }
      for (const [key, element] of Object.entries(object)) visit(element, `${path}.${key}`, depth + 1);
    }
    seen.delete(object);
  };
  visit(value, 'value', 0);
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
