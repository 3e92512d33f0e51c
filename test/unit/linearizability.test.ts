import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type CheckResult,
  canonicalValue,
  checkKvHistory,
  describeViolation,
  type KvInput,
  type Operation,
  valuesEqual,
} from '../support/linearizability.js';

/* Builders: times are [call, return]; `clientId` defaults to 0 where it does not matter. */

const set = (key: string, value: unknown, callMs: number, returnMs: number, clientId = 0): Operation => ({
  clientId,
  input: { op: 'set', key, value },
  output: { ok: true },
  callMs,
  returnMs,
});

const get = (key: string, value: unknown, callMs: number, returnMs: number, clientId = 0): Operation => ({
  clientId,
  input: { op: 'get', key },
  output: { value },
  callMs,
  returnMs,
});

const del = (key: string, callMs: number, returnMs: number, clientId = 0): Operation => ({
  clientId,
  input: { op: 'delete', key },
  output: { ok: true },
  callMs,
  returnMs,
});

/** An operation whose client never learnt the outcome (timed out, crashed). */
const lost = (input: KvInput, callMs: number, clientId = 0): Operation => ({
  clientId,
  input,
  output: { unknown: true },
  callMs,
  returnMs: Number.POSITIVE_INFINITY,
});

const verdict = (history: Operation[]): CheckResult['ok'] => checkKvHistory(history).ok;

/** A small seeded PRNG (mulberry32), so generated histories are reproducible. */
const prng = (seed: number): (() => number) => {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

type SimOptions = {
  seed: number;
  clients: number;
  opsPerClient: number;
  keys: number;
  /** Chance that an operation's client never hears back. */
  lostRate?: number;
  maxDuration?: number;
};

/**
 * A correct register run by simulation: each client issues operations one after another, every
 * operation takes effect at a random instant inside its interval (an operation whose outcome is
 * lost takes effect at a random later instant, or never), and the outputs come from applying the
 * operations to a real Map in the order of those instants. Every history it makes is linearizable.
 */
const simulate = (options: SimOptions): Operation[] => {
  const random = prng(options.seed);
  const pick = (n: number): number => Math.floor(random() * n);
  const lostRate = options.lostRate ?? 0;
  const maxDuration = options.maxDuration ?? 20;
  type Pending = { op: Operation; at: number; lost: boolean };
  const pending: Pending[] = [];
  for (let clientId = 0; clientId < options.clients; clientId++) {
    let now = pick(5);
    for (let i = 0; i < options.opsPerClient; i++) {
      const key = `k${pick(options.keys)}`;
      const roll = random();
      const input: KvInput =
        roll < 0.45
          ? { op: 'get', key }
          : roll < 0.9
            ? { op: 'set', key, value: pick(3) === 0 ? { n: pick(50), by: clientId } : pick(1000) }
            : { op: 'delete', key };
      const callMs = now + pick(3);
      const returnMs = callMs + 1 + pick(maxDuration);
      const isLost = random() < lostRate;
      // Integer instants on purpose: they make ties between one operation's return and
      // another's call, which the checker must treat as overlapping.
      const at = isLost
        ? random() < 0.5
          ? Number.POSITIVE_INFINITY
          : callMs + pick(maxDuration * 5)
        : callMs + pick(returnMs - callMs + 1);
      const op: Operation = isLost
        ? { clientId, input, output: { unknown: true }, callMs, returnMs: Number.POSITIVE_INFINITY }
        : { clientId, input, output: { ok: true }, callMs, returnMs };
      pending.push({ op, at, lost: isLost });
      now = returnMs;
    }
  }
  const effective = pending.filter((p) => Number.isFinite(p.at)).sort((a, b) => a.at - b.at);
  const map = new Map<string, unknown>();
  for (const { op, lost: isLost } of effective) {
    const { input } = op;
    if (input.op === 'get') {
      if (!isLost) op.output = { value: map.get(input.key) };
    } else if (input.op === 'set') {
      map.set(input.key, input.value);
    } else {
      map.delete(input.key);
    }
  }
  return pending.map((p) => p.op);
};

/* fast-check: a sequence of map commands run one at a time against a real Map. */

const keyArb = fc.constantFrom('a', 'b', 'c');
const valueArb = fc.oneof(
  fc.integer({ min: 0, max: 5 }),
  fc.constantFrom('x', 'y', null, true),
  fc.record({
    n: fc.integer({ min: 0, max: 3 }),
    tags: fc.array(fc.constantFrom('p', 'q'), { maxLength: 2 }),
  }),
  fc.uint8Array({ maxLength: 3 }),
);
const commandArb: fc.Arbitrary<KvInput> = fc.oneof(
  keyArb.map((key): KvInput => ({ op: 'get', key })),
  fc.tuple(keyArb, valueArb).map(([key, value]): KvInput => ({ op: 'set', key, value })),
  keyArb.map((key): KvInput => ({ op: 'delete', key })),
);

/** Runs the commands back to back (non-overlapping intervals) and records what a real Map answers. */
const sequentialHistory = (commands: KvInput[], clientOf: (i: number) => number): Operation[] => {
  const map = new Map<string, unknown>();
  return commands.map((input, i): Operation => {
    const callMs = 10 * i;
    const returnMs = callMs + 5;
    const clientId = clientOf(i);
    if (input.op === 'get')
      return { clientId, input, output: { value: map.get(input.key) }, callMs, returnMs };
    if (input.op === 'set') map.set(input.key, input.value);
    else map.delete(input.key);
    return { clientId, input, output: { ok: true }, callMs, returnMs };
  });
};

/**
 * The definition, spelled out for tiny histories: try every order of each key's operations that
 * respects real time (unknown-outcome writes may go anywhere after their call, or last, which is
 * the same as never; unknown-outcome reads are left out) and run it against a register.
 */
const linearizableByBruteForce = (history: Operation[]): boolean => {
  const byKey = new Map<string, Operation[]>();
  for (const op of history) {
    if (op.input.op === 'get' && 'unknown' in op.output) continue;
    byKey.set(op.input.key, [...(byKey.get(op.input.key) ?? []), op]);
  }
  const returnOf = (op: Operation): number =>
    'unknown' in op.output ? Number.POSITIVE_INFINITY : op.returnMs;
  return [...byKey.values()].every((ops) => {
    const used = ops.map(() => false);
    const search = (placed: number, value: string | undefined): boolean => {
      if (placed === ops.length) return true;
      return ops.some((op, i) => {
        if (used[i]) return false;
        if (ops.some((other, j) => !used[j] && j !== i && returnOf(other) < op.callMs)) return false;
        let after = value;
        if (op.input.op === 'get') {
          const seen = (op.output as { value: unknown }).value;
          if ((seen === undefined ? undefined : canonicalValue(seen)) !== value) return false;
        } else {
          after = op.input.op === 'set' ? canonicalValue(op.input.value) : undefined;
        }
        used[i] = true;
        const found = search(placed + 1, after);
        used[i] = false;
        return found;
      });
    };
    return search(0, undefined);
  });
};

/** Tiny random histories on two keys with three values, overlapping freely, some outcomes lost. */
const tinyHistoryArb = fc
  .array(
    fc.record({
      key: fc.constantFrom('a', 'a', 'b'),
      op: fc.constantFrom('get', 'get', 'set', 'set', 'delete'),
      value: fc.constantFrom(1, 2, 3),
      seen: fc.constantFrom<unknown>(undefined, 1, 2, 3),
      callMs: fc.integer({ min: 0, max: 10 }),
      duration: fc.integer({ min: 0, max: 5 }),
      lost: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
      clientId: fc.integer({ min: 0, max: 3 }),
    }),
    { maxLength: 7 },
  )
  .map((rows) =>
    rows.map((row): Operation => {
      const input: KvInput =
        row.op === 'get'
          ? { op: 'get', key: row.key }
          : row.op === 'set'
            ? { op: 'set', key: row.key, value: row.value }
            : { op: 'delete', key: row.key };
      if (row.lost) return lost(input, row.callMs, row.clientId);
      const output = row.op === 'get' ? { value: row.seen } : ({ ok: true } as const);
      return {
        clientId: row.clientId,
        input,
        output,
        callMs: row.callMs,
        returnMs: row.callMs + row.duration,
      };
    }),
  );

describe('checkKvHistory: basics', () => {
  it('accepts the empty history', () => {
    const result = checkKvHistory([]);
    expect(result).toMatchObject({ ok: true, keys: 0, operations: 0 });
  });

  it('accepts a sequential write then read', () => {
    const result = checkKvHistory([set('x', 1, 0, 1), get('x', 1, 2, 3)]);
    expect(result).toMatchObject({ ok: true, keys: 1, operations: 2 });
  });

  it('treats a key nobody wrote as absent (undefined), not as null', () => {
    expect(verdict([get('x', undefined, 0, 1)])).toBe(true);
    expect(verdict([get('x', null, 0, 1)])).toBe(false);
    expect(verdict([get('x', 0, 0, 1)])).toBe(false);
  });

  it('throws on malformed operations', () => {
    expect(() => checkKvHistory([set('x', 1, 5, 4)])).toThrow(TypeError);
    expect(() => checkKvHistory([{ ...get('x', 1, 0, 1), output: { ok: true } }])).toThrow(
      /returns \{ value \}/,
    );
    expect(() => checkKvHistory([{ ...set('x', 1, 0, 1), output: { value: 1 } }])).toThrow(TypeError);
    expect(() => checkKvHistory([set('x', 1, Number.NaN, 1)])).toThrow(TypeError);
  });
});

describe('checkKvHistory: classic register histories', () => {
  it('rejects a read that returns a value before the write of it was even called', () => {
    // Herlihy & Wing: the read's response precedes the write's invocation, so it cannot see it.
    const result = checkKvHistory([get('x', 1, 0, 1, 1), set('x', 1, 2, 3, 0)]);
    expect(result.ok).toBe(false);
    if (result.ok !== false) return;
    expect(result.key).toBe('x');
    expect(result.operations).toHaveLength(2);
  });

  it('rejects a stale read after a completed overwrite', () => {
    const history = [set('x', 1, 0, 1, 0), set('x', 2, 2, 3, 0), get('x', 1, 4, 5, 1)];
    expect(verdict(history)).toBe(false);
  });

  it('lets a read that overlaps a write return either the old or the new value', () => {
    const base = [set('x', 1, 0, 1, 0), set('x', 2, 2, 10, 0)];
    expect(verdict([...base, get('x', 1, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', 2, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', 3, 3, 4, 1)])).toBe(false);
  });

  it('rejects the new-old inversion: once a read saw the new value, a later read cannot see the old', () => {
    // Both reads overlap the slow write, but the first returned before the second was called.
    const history = [set('x', 0, 0, 1, 0), set('x', 1, 2, 20, 0), get('x', 1, 3, 4, 1), get('x', 0, 5, 6, 2)];
    expect(verdict(history)).toBe(false);
  });

  it('accepts old-then-new reads during a slow write (the non-inverted order)', () => {
    const history = [set('x', 0, 0, 1, 0), set('x', 1, 2, 20, 0), get('x', 0, 3, 4, 1), get('x', 1, 5, 6, 2)];
    expect(verdict(history)).toBe(true);
  });

  it('rejects two readers that see two concurrent writes in opposite orders', () => {
    const history = [
      set('x', 'a', 0, 10, 0),
      set('x', 'b', 0, 10, 1),
      get('x', 'a', 1, 2, 2),
      get('x', 'b', 3, 4, 2),
      get('x', 'b', 1, 2, 3),
      get('x', 'a', 3, 4, 3),
    ];
    expect(verdict(history)).toBe(false);
  });

  it('accepts two readers that agree on the order of two concurrent writes', () => {
    const history = [
      set('x', 'a', 0, 10, 0),
      set('x', 'b', 0, 10, 1),
      get('x', 'a', 1, 2, 2),
      get('x', 'b', 3, 4, 2),
      get('x', 'a', 1, 2, 3),
      get('x', 'b', 3, 4, 3),
      get('x', 'b', 11, 12, 2),
    ];
    expect(verdict(history)).toBe(true);
  });

  it('rejects a read after both concurrent writes that contradicts the order the readers saw', () => {
    const history = [
      set('x', 'a', 0, 10, 0),
      set('x', 'b', 0, 10, 1),
      get('x', 'a', 1, 2, 2),
      get('x', 'b', 3, 4, 2),
      get('x', 'a', 11, 12, 3),
    ];
    expect(verdict(history)).toBe(false);
  });

  it('treats a return and a call at the same instant as overlapping', () => {
    // The write returns at 5 and the read is called at 5: the read may still see the old value.
    expect(verdict([set('x', 1, 0, 5, 0), get('x', undefined, 5, 6, 1)])).toBe(true);
    // One millisecond later it may not.
    expect(verdict([set('x', 1, 0, 5, 0), get('x', undefined, 6, 7, 1)])).toBe(false);
  });
});

describe('checkKvHistory: deletes', () => {
  it('accepts set, delete, then a read of nothing', () => {
    expect(verdict([set('x', 1, 0, 1), del('x', 2, 3), get('x', undefined, 4, 5, 1)])).toBe(true);
  });

  it('rejects reading a value back after a completed delete', () => {
    expect(verdict([set('x', 1, 0, 1), del('x', 2, 3), get('x', 1, 4, 5, 1)])).toBe(false);
  });

  it('lets a read that overlaps a delete see the value or its absence, but nothing else', () => {
    const base = [set('x', 1, 0, 1), del('x', 2, 10)];
    expect(verdict([...base, get('x', 1, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', undefined, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', undefined, 3, 4, 1), get('x', 1, 5, 6, 1)])).toBe(false);
  });

  it('accepts deleting a key that is already absent', () => {
    expect(verdict([del('x', 0, 1), get('x', undefined, 2, 3), set('x', 2, 4, 5), get('x', 2, 6, 7)])).toBe(
      true,
    );
  });
});

describe('checkKvHistory: unknown outcomes', () => {
  it('lets an unknown-outcome write never take effect', () => {
    const history = [set('x', 1, 0, 1), lost({ op: 'set', key: 'x', value: 2 }, 2), get('x', 1, 5, 6, 1)];
    expect(verdict(history)).toBe(true);
  });

  it('lets an unknown-outcome write take effect long after its client gave up', () => {
    const history = [
      set('x', 1, 0, 1),
      lost({ op: 'set', key: 'x', value: 2 }, 2),
      get('x', 1, 100, 101, 1),
      get('x', 2, 200, 201, 1),
    ];
    expect(verdict(history)).toBe(true);
  });

  it('accepts a read explained only by an unknown-outcome write, and rejects it without that write', () => {
    const withLost = [set('x', 1, 0, 1), lost({ op: 'set', key: 'x', value: 2 }, 2), get('x', 2, 10, 11, 1)];
    expect(verdict(withLost)).toBe(true);
    expect(verdict([withLost[0]!, withLost[2]!])).toBe(false);
  });

  it('does not let an unknown-outcome write take effect before its call', () => {
    const history = [set('x', 1, 0, 1), get('x', 2, 2, 3, 1), lost({ op: 'set', key: 'x', value: 2 }, 4)];
    expect(verdict(history)).toBe(false);
  });

  it('ignores a returnMs given for an unknown outcome: the write may land after it', () => {
    const late: Operation = { ...set('x', 2, 2, 3), output: { unknown: true } };
    expect(verdict([set('x', 1, 0, 1), late, get('x', 1, 5, 6, 1), get('x', 2, 7, 8, 1)])).toBe(true);
  });

  it('rejects a history where an observed unknown-outcome write is then undone', () => {
    const history = [
      lost({ op: 'set', key: 'x', value: 2 }, 0),
      get('x', 2, 1, 2, 1),
      get('x', undefined, 3, 4, 1),
    ];
    expect(verdict(history)).toBe(false);
  });

  it('handles unknown-outcome deletes both ways', () => {
    const base = [set('x', 1, 0, 1), lost({ op: 'delete', key: 'x' }, 2)];
    expect(verdict([...base, get('x', 1, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', undefined, 3, 4, 1)])).toBe(true);
    expect(verdict([...base, get('x', undefined, 3, 4, 1), get('x', 1, 5, 6, 1)])).toBe(false);
  });

  it('drops unknown-outcome gets: they constrain nothing', () => {
    const lostGet = lost({ op: 'get', key: 'x' }, 2);
    expect(verdict([set('x', 1, 0, 1), lostGet, get('x', 1, 5, 6)])).toBe(true);
    expect(verdict([lostGet])).toBe(true);
  });
});

describe('checkKvHistory: keys and values', () => {
  it('checks each key on its own and reports the failing key with only its operations', () => {
    const history = [
      set('a', 1, 0, 1, 0),
      set('b', 1, 0, 1, 1),
      get('a', 1, 2, 3, 0),
      set('b', 2, 2, 3, 1),
      get('b', 1, 4, 5, 2), // stale
      get('a', 1, 4, 5, 3),
    ];
    const result = checkKvHistory(history);
    expect(result.ok).toBe(false);
    if (result.ok !== false) return;
    expect(result.key).toBe('b');
    expect(result.operations.every((op) => op.input.key === 'b')).toBe(true);
    expect(result.operations).toHaveLength(3);
    expect(checkKvHistory(history.filter((op) => op.input.key === 'a'))).toMatchObject({ ok: true, keys: 1 });
  });

  it('does not mix up equal values on different keys', () => {
    // Each key is fine; "a" holding 2 says nothing about "b".
    const history = [set('a', 2, 0, 1), set('b', 1, 0, 1, 1), get('b', 1, 2, 3, 2), get('a', 2, 2, 3, 3)];
    expect(checkKvHistory(history)).toMatchObject({ ok: true, keys: 2, operations: 4 });
    expect(verdict([set('a', 2, 0, 1), get('b', 2, 2, 3, 1)])).toBe(false);
  });

  it('compares values the way a msgpack round trip would', () => {
    expect(verdict([set('x', { a: 1, b: [1, 2] }, 0, 1), get('x', { b: [1, 2], a: 1 }, 2, 3)])).toBe(true);
    expect(verdict([set('x', { a: 1, b: [1, 2] }, 0, 1), get('x', { a: 1, b: [2, 1] }, 2, 3)])).toBe(false);
    expect(verdict([set('x', Buffer.from([1, 2, 3]), 0, 1), get('x', new Uint8Array([1, 2, 3]), 2, 3)])).toBe(
      true,
    );
    expect(verdict([set('x', new Uint8Array([1, 2]), 0, 1), get('x', new Uint8Array([1, 3]), 2, 3)])).toBe(
      false,
    );
    expect(verdict([set('x', { a: undefined }, 0, 1), get('x', { a: null }, 2, 3)])).toBe(true);
    expect(verdict([set('x', undefined, 0, 1), get('x', null, 2, 3)])).toBe(true);
    expect(verdict([set('x', '1', 0, 1), get('x', 1, 2, 3)])).toBe(false);
  });

  it('canonicalValue distinguishes kinds and normalises what msgpack normalises', () => {
    expect(valuesEqual(-0, 0)).toBe(true);
    expect(valuesEqual(Number.NaN, Number.NaN)).toBe(true);
    const sparse: number[] = [1];
    sparse[2] = 3; // index 1 is a hole, which msgpack writes as nil
    expect(valuesEqual(sparse, [1, null, 3])).toBe(true);
    expect(valuesEqual(sparse, [1, 0, 3])).toBe(false);
    expect(valuesEqual(new Float32Array([1.5]), new Uint8Array(new Float32Array([1.5]).buffer))).toBe(true);
    expect(valuesEqual(new Date(5), new Date(5))).toBe(true);
    expect(valuesEqual('null', null)).toBe(false);
    expect(valuesEqual(true, 'true')).toBe(false);
    expect(valuesEqual([], {})).toBe(false);
    expect(valuesEqual(1n, 1)).toBe(false);
    expect(canonicalValue({ b: 1, a: 2 })).toBe(canonicalValue({ a: 2, b: 1 }));
    expect(() => canonicalValue(() => 1)).toThrow(TypeError);
  });
});

describe('checkKvHistory: budgets and reports', () => {
  /**
   * A dense random history on one key: every operation overlaps many others, few distinct values,
   * reads that return random values. Some seeds make the search work hard before it can say no.
   */
  const dense = (seed: number): Operation[] => {
    const random = prng(seed);
    const n = 40 + Math.floor(random() * 60);
    const values = 2 + Math.floor(random() * 3);
    return Array.from({ length: n }, (_, i): Operation => {
      const callMs = Math.floor(random() * n);
      const returnMs = callMs + Math.floor(random() * n * 0.5);
      const isGet = random() < 0.5;
      const value = Math.floor(random() * values);
      return isGet
        ? { clientId: i, input: { op: 'get', key: 'x' }, output: { value }, callMs, returnMs }
        : { clientId: i, input: { op: 'set', key: 'x', value }, output: { ok: true }, callMs, returnMs };
    });
  };

  it('gives up with ok: "unknown" when the state budget runs out', () => {
    const history = dense(38);
    const full = checkKvHistory(history);
    expect(full.ok).toBe(false);
    expect(full.states).toBeGreaterThan(5_000);
    const result = checkKvHistory(history, { maxStates: 1_000 });
    expect(result.ok).toBe('unknown');
    if (result.ok !== 'unknown') return;
    expect(result.key).toBe('x');
    expect(result.reason).toMatch(/1000 states/);
    expect(describeViolation(result)).toMatch(/^inconclusive on key "x"/);
  });

  it('gives up with ok: "unknown" when the time budget runs out', () => {
    // This one needs about 10^5 states, far more than 20 ms of search.
    const slow = checkKvHistory(dense(1031), { timeoutMs: 20 });
    expect(slow.ok).toBe('unknown');
    expect(slow.elapsedMs).toBeLessThan(1_000);
    expect(checkKvHistory([set('x', 1, 0, 1)], { timeoutMs: 0 }).ok).toBe('unknown');
  });

  it('still reports a definite violation on another key when one key runs out of states', () => {
    const history = [...dense(38), set('y', 1, 0, 1), get('y', 2, 2, 3)];
    const result = checkKvHistory(history, { maxStates: 1_000 });
    expect(result.ok).toBe(false);
    if (result.ok === false) expect(result.key).toBe('y');
  });

  it('describes a violation with the key, the longest order found and the stuck operations', () => {
    const history = [set('x', 1, 0, 1, 0), set('x', 2, 2, 3, 0), get('x', 1, 4, 5, 7)];
    const result = checkKvHistory(history);
    expect(result.ok).toBe(false);
    if (result.ok !== false) return;
    expect(result.linearized.map((op) => op.input.op)).toEqual(['set', 'set']);
    expect(result.pending).toEqual([history[2]]);
    const text = describeViolation(result);
    expect(text).toMatch(/^not linearizable on key "x"/);
    expect(text).toContain('the value 2');
    expect(text).toContain('client 7 [4, 5] get("x") -> 1');
    expect(describeViolation(checkKvHistory(history.slice(0, 2)))).toMatch(/^linearizable: 2 operations/);
  });
});

describe('checkKvHistory: generated histories', () => {
  it('accepts thousands of operations from a simulated correct register, quickly', () => {
    // 16 clients on one key, with values that repeat and a few lost operations.
    const history = simulate({ seed: 7, clients: 16, opsPerClient: 500, keys: 1, lostRate: 0.01 });
    expect(history).toHaveLength(8000);
    const result = checkKvHistory(history, { timeoutMs: 20_000 });
    expect(result.ok, describeViolation(result)).toBe(true);
    expect(result.elapsedMs).toBeLessThan(5_000);
  });

  it('accepts a large multi-key simulated history and catches one corrupted read in it', () => {
    const history = simulate({ seed: 11, clients: 16, opsPerClient: 1000, keys: 8, lostRate: 0.02 });
    const result = checkKvHistory(history, { timeoutMs: 20_000 });
    expect(result.ok, describeViolation(result)).toBe(true);

    const index = history.findIndex(
      (op, i) => i > history.length / 2 && op.input.op === 'get' && 'value' in op.output,
    );
    const corrupted = history.map((op, i) =>
      i === index ? { ...op, output: { value: 'never-written' } } : op,
    );
    const bad = checkKvHistory(corrupted, { timeoutMs: 20_000 });
    expect(bad.ok).toBe(false);
    if (bad.ok !== false) return;
    expect(bad.key).toBe(history[index]!.input.key);
    expect(bad.pending).toContain(corrupted[index]);
  });

  it('property: simulated concurrent histories with lost operations are linearizable', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 3 }),
        (seed, clients, keys) => {
          const history = simulate({ seed, clients, opsPerClient: 20, keys, lostRate: 0.1, maxDuration: 10 });
          return checkKvHistory(history).ok === true;
        },
      ),
      { numRuns: 100 },
    );
  });

  it('property: any sequential history produced by a real map is linearizable', () => {
    fc.assert(
      fc.property(
        fc.array(commandArb, { maxLength: 60 }),
        fc.integer({ min: 1, max: 4 }),
        (commands, clients) => {
          const history = sequentialHistory(commands, (i) => i % clients);
          return checkKvHistory(history).ok === true;
        },
      ),
      { numRuns: 200 },
    );
  });

  it('property: changing one read of a sequential history to a never-written value breaks it', () => {
    fc.assert(
      fc.property(
        fc.array(commandArb, { minLength: 1, maxLength: 60 }),
        fc.nat(),
        fc.constantFrom<unknown>('never-written', { never: true }, -1),
        (commands, choice, bogus) => {
          const history = sequentialHistory(commands, (i) => i % 3);
          const gets = history.flatMap((op, i) => (op.input.op === 'get' ? [i] : []));
          fc.pre(gets.length > 0);
          const target = gets[choice % gets.length]!;
          const mutated = history.map((op, i) => (i === target ? { ...op, output: { value: bogus } } : op));
          return checkKvHistory(mutated).ok === false;
        },
      ),
      { numRuns: 200 },
    );
  });

  it('property: agrees with trying every order, on tiny random histories', () => {
    let violations = 0;
    fc.assert(
      fc.property(tinyHistoryArb, (history) => {
        const expected = linearizableByBruteForce(history);
        if (!expected) violations++;
        expect(checkKvHistory(history).ok).toBe(expected);
      }),
      { numRuns: 1_000 },
    );
    // Both verdicts must be well represented for the comparison to mean anything.
    expect(violations).toBeGreaterThan(200);
    expect(violations).toBeLessThan(800);
  });

  it('property: the order of the history array does not change the verdict', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.boolean(), (seed, corrupt) => {
        const history = simulate({ seed, clients: 4, opsPerClient: 15, keys: 2, maxDuration: 8 });
        const index = history.findIndex((op) => op.input.op === 'get');
        const input = history.map((op, i) =>
          corrupt && i === index ? { ...op, output: { value: 'no' } } : op,
        );
        const expected = checkKvHistory(input).ok;
        const random = prng(seed ^ 0x5bd1e995);
        const shuffled = [...input];
        for (let i = shuffled.length - 1; i > 0; i--) {
          const j = Math.floor(random() * (i + 1));
          [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
        }
        return checkKvHistory(shuffled).ok === expected && (!corrupt || index < 0 || expected === false);
      }),
      { numRuns: 100 },
    );
  });
});
