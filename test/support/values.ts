/**
 * Values for the property tests of `set` (test/e2e/values.test.ts, test/e2e/broken-values.test.ts):
 * every kind `set` must accept, and near-misses it must refuse because msgpack would not give them
 * back the same, each hidden at the top, in an array or deep in an object.
 */
import fc from 'fast-check';

/** Every kind `set` must accept, including ones that come back in another form (Buffer, null prototype). */
const leaf = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.integer(),
  fc.maxSafeInteger(),
  fc.double().filter((x) => !Object.is(x, -0)),
  fc.boolean(),
  fc.constant(null),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
  fc.uint8Array({ maxLength: 40 }),
  fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)),
  fc.date({ noInvalidDate: true }),
);

export const { value: goodValue } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(
      fc.string({ maxLength: 8 }).filter((key) => key !== '__proto__'),
      tie('value'),
      { maxKeys: 5 },
    ),
  ),
}));

/** What cannot be carried faithfully; each is made fresh for every run. */
export const NEAR_MISSES: Array<[string, () => unknown]> = [
  ['-0', () => -0],
  ['a lone high surrogate', () => 'a\ud800'],
  ['a lone low surrogate', () => '\udfffb'],
  ['a lone surrogate in a long string', () => `${'x'.repeat(300)}\ud800`],
  ['a lone surrogate in an object key', () => ({ 'k\udc00': 1 })],
  ['an invalid Date', () => new Date(Number.NaN)],
  ['an own __proto__ key', () => JSON.parse('{"__proto__": {"x": 1}}')],
  ['a nested own __proto__ key', () => JSON.parse('{"a": [{"__proto__": null}]}')],
  ['a hole in an array', () => Object.assign(new Array(3), { 0: 1, 2: 2 })],
  ['undefined in an object', () => ({ a: undefined })],
  ['a bigint of 2^64', () => 2n ** 64n],
  ['a bigint below -2^63', () => -(2n ** 63n) - 1n],
  ['a symbol key', () => ({ [Symbol('s')]: 1 })],
  ['a non-enumerable property', () => Object.defineProperty({}, 'hidden', { value: 1, enumerable: false })],
  ['an array with an extra property', () => Object.assign([1, 2], { extra: true })],
  ['a Float64Array', () => new Float64Array([1.5])],
  ['a Map', () => new Map([['a', 1]])],
];

export const nearMiss = fc
  .tuple(goodValue, fc.nat(NEAR_MISSES.length - 1), fc.nat(2))
  .map(([good, which, where]) => {
    const [what, make] = NEAR_MISSES[which]!;
    const bad = make();
    const value = where === 0 ? bad : where === 1 ? [good, bad] : { good, deep: { bad } };
    return { what, value };
  });

/** The value as every node must give it back: byte arrays as Uint8Array, objects plain. */
export const expected = (value: unknown): unknown => {
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (value instanceof Date || typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(expected);
  return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, expected(item)]));
};
