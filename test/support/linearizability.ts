/**
 * A linearizability checker for key/value histories, in the manner of Porcupine (Athalye) and
 * Knossos: Wing & Gong's search for a sequential order, as refined by Lowe ("Testing for
 * linearizability", 2017) with a cache of already-explored configurations, plus a few moves that
 * only a register allows (see `checkKey`), which keep histories with thousands of operations per
 * key and a dozen or more concurrent clients in the tens of milliseconds.
 *
 * A history is a list of operations, each with the real-time interval [callMs, returnMs] in
 * which a client saw it run. The history is linearizable iff every operation can be given a
 * single instant inside its interval such that, taken in the order of those instants, the
 * operations behave like a plain map. Linearizability is local (Herlihy & Wing, Theorem 1), so
 * the history is split by key and each key is checked on its own as a single register.
 *
 * Choices worth knowing:
 * - Ties. Intervals are closed: two operations are ordered only when one returns strictly before
 *   the other is called. A return at time t and a call at the same t count as concurrent (calls
 *   are placed before returns that share their timestamp). This is the permissive reading; a
 *   checker that ordered them would report violations a coarse clock can produce on its own.
 * - Unknown outcomes (`output: { unknown: true }`, a timed-out or crashed client). Such an
 *   operation may take effect at any time after its call, or never: its return is moved to +∞,
 *   whatever `returnMs` says, and a write placed after everything else is the same as a write
 *   that never happened. A get with an unknown outcome constrains nothing and is dropped.
 * - Values compare by a canonical encoding that agrees with a msgpack round trip: object keys
 *   in any order, `undefined` inside objects and arrays equal to `null`, -0 equal to 0, NaN equal
 *   to NaN, any typed array or Buffer equal to a Uint8Array with the same bytes, Dates by their
 *   time. At the top level a get's `undefined` means "key absent", which differs from a stored
 *   `null`; a set of `undefined` stores what msgpack would store, `null`.
 * - Work is bounded: `maxStates` caps the explored configurations per key and `timeoutMs` the
 *   whole check. Running out gives `ok: 'unknown'`, never a hang.
 */

export type KvInput =
  | { op: 'get'; key: string }
  | { op: 'set'; key: string; value: unknown }
  | { op: 'delete'; key: string };

/** A get returns `{ value }` (`undefined` when absent); a set or delete returns `{ ok: true }`. */
export type KvOutput = { value: unknown } | { ok: true } | { unknown: true };

/** One client operation. `returnMs` may be `Infinity` when the outcome is unknown. */
export type Operation = {
  clientId: number;
  input: KvInput;
  output: KvOutput;
  callMs: number;
  returnMs: number;
};

export type CheckOptions = {
  /** Wall-clock budget for the whole check. Default 10 000 ms. */
  timeoutMs?: number;
  /**
   * Most configurations (operations taken, register value) to cache for one key. Default 500 000.
   * Each costs from about a hundred bytes to a few kilobytes, growing with concurrency.
   */
  maxStates?: number;
};

export type CheckOk = {
  ok: true;
  keys: number;
  operations: number;
  /** Configurations explored, summed over keys. */
  states: number;
  elapsedMs: number;
};

export type CheckViolation = {
  ok: false;
  key: string;
  reason: string;
  /** Every operation on the failing key, in call order. */
  operations: Operation[];
  /** The longest order of operations the search could build before it got stuck. */
  linearized: Operation[];
  /** Operations that could have come next after `linearized`; none leads to a complete order. */
  pending: Operation[];
  states: number;
  elapsedMs: number;
};

export type CheckUnknown = {
  ok: 'unknown';
  /** The first key whose search ran out of budget. */
  key: string;
  reason: string;
  keys: number;
  operations: number;
  states: number;
  elapsedMs: number;
};

export type CheckResult = CheckOk | CheckViolation | CheckUnknown;

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_STATES = 500_000;
/** How many search steps run between clock readings. */
const CLOCK_STRIDE = 1024;

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */
/* ------------------------------------------------------------------------------------------ */

const hexOf = (view: ArrayBufferView): string => {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let out = '';
  for (const byte of bytes) out += byte.toString(16).padStart(2, '0');
  return out;
};

/**
 * A string that two values share iff they are equal after a msgpack round trip. Each kind of
 * value gets its own leading tag, so no two kinds can produce the same text.
 */
export const canonicalValue = (value: unknown): string => {
  if (value === null || value === undefined) return 'n';
  switch (typeof value) {
    case 'boolean':
      return value ? 't' : 'f';
    case 'number':
      if (Number.isNaN(value)) return 'N';
      return 'd' + (Object.is(value, -0) ? '0' : String(value));
    case 'bigint':
      return 'i' + value.toString();
    case 'string':
      return JSON.stringify(value);
    case 'object': {
      if (ArrayBuffer.isView(value)) return 'x' + hexOf(value);
      if (value instanceof Date) return 'D' + String(value.getTime());
      if (Array.isArray(value)) {
        const parts: string[] = [];
        // An index loop, not map(): holes in a sparse array encode as nil, like undefined.
        for (let i = 0; i < value.length; i++) parts.push(canonicalValue(value[i]));
        return '[' + parts.join(',') + ']';
      }
      // Plain objects (and anything else msgpack would write as a map of its own enumerable keys).
      const record = value as Record<string, unknown>;
      const keys = Object.keys(record).sort();
      return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonicalValue(record[k])).join(',') + '}';
    }
    default:
      throw new TypeError(`linearizability: cannot compare a value of type ${typeof value}`);
  }
};

/** Deep equality as seen through a msgpack round trip (see `canonicalValue`). */
export const valuesEqual = (a: unknown, b: unknown): boolean => canonicalValue(a) === canonicalValue(b);

const isUnknownOutput = (output: KvOutput): boolean =>
  'unknown' in output && (output as { unknown: unknown }).unknown === true;

/* ------------------------------------------------------------------------------------------ */
/* Formatting                                                                                 */
/* ------------------------------------------------------------------------------------------ */

const showValue = (value: unknown): string => {
  if (value === undefined) return 'undefined';
  if (ArrayBuffer.isView(value)) return `bytes(${hexOf(value)})`;
  if (typeof value === 'bigint') return value.toString() + 'n';
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 60 ? text.slice(0, 57) + '...' : text;
  } catch {
    return String(value);
  }
};

const showTime = (ms: number): string => (Number.isFinite(ms) ? String(ms) : 'inf');

/** One operation on one line, e.g. `client 2 [10, 14] get("x") -> 1`. */
export const formatOperation = (op: Operation): string => {
  const key = JSON.stringify(op.input.key);
  const call = op.input.op === 'set' ? `set(${key}, ${showValue(op.input.value)})` : `${op.input.op}(${key})`;
  const result = isUnknownOutput(op.output)
    ? '?'
    : 'value' in op.output
      ? showValue((op.output as { value: unknown }).value)
      : 'ok';
  return `client ${op.clientId} [${showTime(op.callMs)}, ${showTime(op.returnMs)}] ${call} -> ${result}`;
};

const listOperations = (ops: readonly Operation[], limit: number, fromEnd: boolean): string[] => {
  if (ops.length <= limit) return ops.map((op) => '    ' + formatOperation(op));
  const shown = fromEnd ? ops.slice(ops.length - limit) : ops.slice(0, limit);
  const lines = shown.map((op) => '    ' + formatOperation(op));
  const more = `    ... ${ops.length - limit} more`;
  return fromEnd ? [more, ...lines] : [...lines, more];
};

/** A short text for a check result, meant for test failure messages. */
export const describeViolation = (result: CheckResult): string => {
  if (result.ok === true) {
    return `linearizable: ${result.operations} operations on ${result.keys} keys (${result.states} states, ${Math.round(result.elapsedMs)} ms)`;
  }
  if (result.ok === 'unknown') {
    return `inconclusive on key ${JSON.stringify(result.key)}: ${result.reason}`;
  }
  return [
    `not linearizable on key ${JSON.stringify(result.key)}: ${result.reason}`,
    `  longest order found (${result.linearized.length} operations):`,
    ...listOperations(result.linearized, 6, true),
    `  could come next, but none completes an order (${result.pending.length}):`,
    ...listOperations(result.pending, 8, false),
  ].join('\n');
};

/* ------------------------------------------------------------------------------------------ */
/* The search for one key                                                                     */
/* ------------------------------------------------------------------------------------------ */

const GET = 0;
const SET = 1;
const DELETE = 2;
/** Register value id for "key absent"; stored values get ids from 1 up. */
const ABSENT = 0;
/** Stands in the cache key for any value that no read left can see: all such values act alike. */
const UNSEEN = -1;

type KeyOutcome =
  | { kind: 'ok'; states: number }
  | { kind: 'violation'; states: number; reason: string; linearized: Operation[]; pending: Operation[] }
  | { kind: 'budget'; states: number; reason: string; outOfTime: boolean };

const byCallTime = (a: Operation, b: Operation): number => a.callMs - b.callMs;

/**
 * Searches for a linearization of one key's operations, with the key as a single register.
 *
 * The call and return events sit in a doubly linked list in time order (after Lowe). Operations
 * whose call comes before the first return still in the list are the ones that could take effect
 * next; taking one removes its two events from the list. A depth-first search picks which one,
 * and a cache of (set of operations taken, register value) pairs keeps it from exploring a
 * configuration twice, since the future depends on nothing else.
 *
 * Three facts about registers keep the branching down; each one says that some move is never
 * worse than the alternatives, so the search makes it without branching:
 * 1. A read that could go next and sees the current value can go now. It changes nothing, and
 *    no operation left returned before it was called, so an order that places it later still
 *    works with it moved to the front.
 * 2. A write whose value no read left will see (a "dead" write) can go now, once no read can go.
 *    The next operation of any order is then a write, which hides it; and an order that places
 *    it later still works without it there, since nobody sees it.
 * 3. When every read is taken, the writes left can follow in real-time order: nobody sees them.
 * So the search only ever branches on writes that some read left may see. Prunes cut it further:
 * - a read left whose value is not in the register needs a write of that value still to come,
 *   called before the read returns; when there is none, the configuration is a dead end at once;
 * - when the first operation that must go is a read, the last write before it writes its value:
 *   writes of that value are tried first (and if none could go next, that is a dead end too);
 * - among writes of the same value that could go next, only the one that returns first is tried:
 *   swapping it for any of the others in a working order leaves a working order;
 * - an unknown-outcome write is only tried when a read that could go next wants its value. In a
 *   working order, such a write that no read sees right after it can be dropped (it "never
 *   happened"), and one that a read sees right after it could go when that read could.
 */
const checkKey = (ops: readonly Operation[], deadline: number, maxStates: number): KeyOutcome => {
  // Unknown-outcome gets say nothing and are dropped.
  const kept = ops.filter((op) => !(op.input.op === 'get' && isUnknownOutput(op.output)));
  const known = kept.filter((op) => !isUnknownOutput(op.output)).sort(byCallTime);
  const readCount = known.filter((op) => op.input.op === 'get').length;
  // Writes alone are always linearizable (see fact 3).
  if (readCount === 0) return { kind: 'ok', states: 0 };

  // Values are interned to small integers. A value that only a read mentions gets an id that no
  // write produces, so that read can never be taken.
  const valueIds = new Map<string, number>();
  const sampleValues: unknown[] = [undefined];
  const intern = (value: unknown): number => {
    const text = canonicalValue(value);
    let id = valueIds.get(text);
    if (id === undefined) {
      id = sampleValues.length;
      valueIds.set(text, id);
      sampleValues.push(value === undefined ? null : value);
    }
    return id;
  };
  const valueIdOf = (op: Operation): number => {
    if (op.input.op === 'set') return intern(op.input.value);
    if (op.input.op === 'delete') return ABSENT;
    const seen = (op.output as { value: unknown }).value;
    return seen === undefined ? ABSENT : intern(seen);
  };

  // Operation numbering, which shapes the cache keys. Known operations come first, in call
  // order, so the known ones taken are always "all of a prefix, then a short window". The
  // unknown-outcome writes follow, grouped by value (groups ordered by their first call) and in
  // call order within a group. The search always takes the earliest-called write of a value
  // first, so per value the ones taken form a prefix, and the region reads as few runs.
  const knownValues = known.map(valueIdOf);
  const unknownRows = kept
    .filter((op) => isUnknownOutput(op.output))
    .sort(byCallTime)
    .map((op) => ({ op, value: valueIdOf(op), group: 0 }));
  const groupStart = new Map<number, number>();
  for (const row of unknownRows) {
    if (!groupStart.has(row.value)) groupStart.set(row.value, row.op.callMs);
    row.group = groupStart.get(row.value)!;
  }
  unknownRows.sort((x, y) => x.group - y.group || x.value - y.value || x.op.callMs - y.op.callMs);
  const order = [...known, ...unknownRows.map((row) => row.op)];
  const n = order.length;
  const knownCount = known.length;
  const kind = new Uint8Array(n);
  /** For a write, the value id it stores (ABSENT for a delete); for a read, the value id it saw. */
  const arg = Int32Array.from([...knownValues, ...unknownRows.map((row) => row.value)]);
  for (let i = 0; i < n; i++) {
    const op = order[i]!.input.op;
    kind[i] = op === 'get' ? GET : op === 'set' ? SET : DELETE;
  }
  const valueCount = sampleValues.length;

  // Events: node 2i is the call of operation i, node 2i + 1 its return; HEAD and TAIL are sentinels.
  const HEAD = 2 * n;
  const TAIL = 2 * n + 1;
  const time = new Float64Array(2 * n);
  for (let i = 0; i < n; i++) {
    time[2 * i] = order[i]!.callMs;
    time[2 * i + 1] = i < knownCount ? order[i]!.returnMs : Number.POSITIVE_INFINITY;
  }
  const events = Array.from({ length: 2 * n }, (_, node) => node);
  events.sort((a, b) => {
    const ta = time[a]!;
    const tb = time[b]!;
    if (ta !== tb) return ta < tb ? -1 : 1;
    // Same instant: calls (even nodes) before returns, so the two operations overlap.
    const ra = a & 1;
    const rb = b & 1;
    return ra !== rb ? ra - rb : a - b;
  });
  const next = new Int32Array(2 * n + 2);
  const prev = new Int32Array(2 * n + 2);
  let last = HEAD;
  for (const node of events) {
    next[last] = node;
    prev[node] = last;
    last = node;
  }
  next[last] = TAIL;
  prev[TAIL] = last;

  // Unlink a call and its return; relinking in the opposite order restores the list exactly.
  const lift = (call: number): void => {
    const ret = call + 1;
    next[prev[call]!] = next[call]!;
    prev[next[call]!] = prev[call]!;
    next[prev[ret]!] = next[ret]!;
    prev[next[ret]!] = prev[ret]!;
  };
  const unlift = (call: number): void => {
    const ret = call + 1;
    prev[next[ret]!] = ret;
    next[prev[ret]!] = ret;
    prev[next[call]!] = call;
    next[prev[call]!] = call;
  };

  // The set of operations taken, as a bitset: known operations in words [0, knownWords),
  // unknown-outcome writes after them.
  const knownWords = (knownCount + 31) >>> 5;
  const totalWords = knownWords + ((n - knownCount + 31) >>> 5);
  const bits = new Uint32Array(totalWords);
  const wordOf = new Int32Array(n);
  const maskOf = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const j = i < knownCount ? i : i - knownCount;
    wordOf[i] = (i < knownCount ? 0 : knownWords) + (j >>> 5);
    maskOf[i] = (1 << (j & 31)) >>> 0;
  }

  // For each value id, how many reads of it are not yet taken (a write of a value with none
  // left is dead, see fact 2).
  const readsLeft = new Int32Array(valueCount);
  for (let op = 0; op < n; op++) if (kind[op] === GET) readsLeft[arg[op]!] = readsLeft[arg[op]!]! + 1;

  // Starvation. A read left whose value is not in the register needs a write of that value still
  // to come, and that write must be called before the read returns. So a value is starved when
  // the earliest return among its reads left comes before the earliest call among its writes left
  // (deletes for ABSENT): its reads can then go only while it is the value in the register. Per
  // value, its reads sorted by return and its writes sorted by call sit in two flat lists, with a
  // cursor at the first one not taken.
  const taken = new Uint8Array(n);
  const readStart = new Int32Array(valueCount + 1);
  const writeStart = new Int32Array(valueCount + 1);
  for (let op = 0; op < n; op++) {
    const counts = kind[op] === GET ? readStart : writeStart;
    counts[arg[op]! + 1] = counts[arg[op]! + 1]! + 1;
  }
  for (let v = 0; v < valueCount; v++) {
    readStart[v + 1]! += readStart[v]!;
    writeStart[v + 1]! += writeStart[v]!;
  }
  const readList = new Int32Array(readStart[valueCount]!);
  const writeList = new Int32Array(writeStart[valueCount]!);
  const readFill = readStart.slice(0, valueCount);
  const writeFill = writeStart.slice(0, valueCount);
  // Reads are all known, so their return times are finite; writes are ordered by call.
  const ids = Array.from({ length: n }, (_, op) => op);
  const reads = ids
    .filter((op) => kind[op] === GET)
    .sort((x, y) => time[2 * x + 1]! - time[2 * y + 1]! || x - y);
  for (const op of reads) readList[readFill[arg[op]!]!++] = op;
  const writes = ids.filter((op) => kind[op] !== GET).sort((x, y) => time[2 * x]! - time[2 * y]! || x - y);
  for (const op of writes) writeList[writeFill[arg[op]!]!++] = op;
  /** Where each operation sits in its list. */
  const place = new Int32Array(n);
  readList.forEach((op, i) => {
    place[op] = i;
  });
  writeList.forEach((op, i) => {
    place[op] = i;
  });
  const readCursor = readStart.slice(0, valueCount);
  const writeCursor = writeStart.slice(0, valueCount);
  const isStarved = (v: number): boolean => {
    const r = readCursor[v]!;
    if (r === readStart[v + 1]) return false;
    const w = writeCursor[v]!;
    return w === writeStart[v + 1] || time[2 * readList[r]! + 1]! < time[2 * writeList[w]!]!;
  };
  const starved = new Set<number>();
  for (let v = 0; v < valueCount; v++) if (isStarved(v)) starved.add(v);
  /** Moves the cursors of the value of `op` after it was taken (or given back) and updates `starved`. */
  const restarve = (op: number): void => {
    const v = arg[op]!;
    const was = starved.has(v);
    if (kind[op] === GET) {
      if (taken[op] === 0) readCursor[v] = Math.min(readCursor[v]!, place[op]!);
      else
        while (readCursor[v]! < readStart[v + 1]! && taken[readList[readCursor[v]!]!] === 1) readCursor[v]!++;
    } else if (taken[op] === 0) {
      writeCursor[v] = Math.min(writeCursor[v]!, place[op]!);
    } else {
      while (writeCursor[v]! < writeStart[v + 1]! && taken[writeList[writeCursor[v]!]!] === 1)
        writeCursor[v]!++;
    }
    const now = isStarved(v);
    if (was !== now) {
      if (now) starved.add(v);
      else starved.delete(v);
    }
  };

  // The path: operations taken, in order, each with the register value before it.
  const stackCall = new Int32Array(n);
  const stackState = new Int32Array(n);
  let depth = 0;
  let state = ABSENT;
  let readsTaken = 0;
  // Bounds kept for cacheKey, per region of the bitset (known, then unknown-outcome operations):
  // every word of the region below its low bound is full, every one above its high bound empty.
  let lowWord = 0;
  let highWord = -1;
  let lowWordU = knownWords;
  let highWordU = knownWords - 1;

  const push = (call: number): void => {
    const op = call >>> 1;
    stackCall[depth] = call;
    stackState[depth] = state;
    depth++;
    if (kind[op] === GET) {
      readsLeft[arg[op]!] = readsLeft[arg[op]!]! - 1;
      readsTaken++;
    } else {
      state = arg[op]!;
    }
    taken[op] = 1;
    restarve(op);
    bits[wordOf[op]!] = bits[wordOf[op]!]! ^ maskOf[op]!;
    if (op < knownCount) highWord = Math.max(highWord, wordOf[op]!);
    else highWordU = Math.max(highWordU, wordOf[op]!);
    lift(call);
  };
  const popTo = (target: number): void => {
    while (depth > target) {
      depth--;
      const call = stackCall[depth]!;
      const op = call >>> 1;
      state = stackState[depth]!;
      if (kind[op] === GET) {
        readsLeft[arg[op]!] = readsLeft[arg[op]!]! + 1;
        readsTaken--;
      }
      taken[op] = 0;
      restarve(op);
      bits[wordOf[op]!] = bits[wordOf[op]!]! ^ maskOf[op]!;
      if (op < knownCount) lowWord = Math.min(lowWord, wordOf[op]!);
      else lowWordU = Math.min(lowWordU, wordOf[op]!);
      unlift(call);
    }
    if (depth < lowWater) lowWater = depth;
  };

  /** Exact cache key: skip the run of full words at the front and the zero words at the back. */
  const cacheKey = (): string => {
    while (lowWord < knownWords && bits[lowWord] === 0xffffffff) lowWord++;
    while (highWord >= lowWord && bits[highWord] === 0) highWord--;
    let key = (readsLeft[state] === 0 ? UNSEEN : state) + ':' + lowWord;
    for (let w = lowWord; w <= highWord; w++) key += ',' + bits[w];
    if (totalWords > knownWords) {
      // The unknown-outcome region as run lengths, starting with a run of ones at lowWordU.
      while (lowWordU < totalWords && bits[lowWordU] === 0xffffffff) lowWordU++;
      while (highWordU >= lowWordU && bits[highWordU] === 0) highWordU--;
      key += '|' + lowWordU;
      let bit = 1;
      let run = 0;
      for (let w = lowWordU; w <= highWordU; w++) {
        const word = bits[w]!;
        if (word === 0 || word === 0xffffffff) {
          const whole = word === 0 ? 0 : 1;
          if (whole !== bit) {
            key += ',' + run;
            bit = whole;
            run = 0;
          }
          run += 32;
          continue;
        }
        for (let b = 0; b < 32; b++) {
          if (((word >>> b) & 1) !== bit) {
            key += ',' + run;
            bit ^= 1;
            run = 0;
          }
          run++;
        }
      }
      key += ',' + run;
    }
    return key;
  };

  // The explanation of a violation: the deepest dead end, what could have come next there, and
  // the value some read wanted but could no longer get (or -1).
  let bestDepth = -1;
  /** Holds the path at the deepest dead end in [0, bestDepth); it agrees with the current path below lowWater. */
  const bestStack = new Int32Array(n);
  let lowWater = 0;
  let bestPending: number[] = [];
  let bestState = ABSENT;
  let bestStarved = -1;
  const noteDeadEnd = (): void => {
    if (depth <= bestDepth) return;
    bestStack.set(stackCall.subarray(lowWater, depth), lowWater);
    lowWater = depth;
    bestDepth = depth;
    bestState = state;
    bestPending = [];
    let at = next[HEAD]!;
    for (; (at & 1) === 0; at = next[at]!) bestPending.push(at >>> 1);
    bestStarved = -1;
    for (const v of starved) if (v !== state) bestStarved = v;
  };

  // One frame per configuration on the path: the depth it starts at and the writes still to try
  // from it, held in one shared pool.
  const frameDepth: number[] = [];
  const frameStart: number[] = [];
  const frameCursor: number[] = [];
  const frameEnd: number[] = [];
  const choices: number[] = [];
  const seen = new Set<string>();
  // Per value id: the best write of it in the current window, and whether a read in the window
  // wants it (both stamped, to skip clearing).
  const sameValueStamp = new Int32Array(valueCount);
  const sameValueBest = new Int32Array(valueCount);
  const wantedStamp = new Int32Array(valueCount);
  let stamp = 0;

  /**
   * Arrives at a configuration: makes the moves of facts 1 and 2, then returns 'done' when every
   * read is taken, 'dead' when the configuration was seen before or cannot lead anywhere, and
   * otherwise 'open' after pushing a frame with the writes to try.
   */
  const enter = (): 'done' | 'dead' | 'open' => {
    // Each pass goes down the list once: taking an operation changes nothing that would make an
    // earlier call eligible, and the calls it unblocks lie after it.
    let at = next[HEAD]!;
    while ((at & 1) === 0) {
      const op = at >>> 1;
      if (kind[op] === GET && arg[op] === state) {
        const after = next[at] === at + 1 ? next[at + 1]! : next[at]!;
        push(at);
        at = after;
      } else {
        at = next[at]!;
      }
    }
    if (readsTaken === readCount) return 'done';
    at = next[HEAD]!;
    while ((at & 1) === 0) {
      const op = at >>> 1;
      if (kind[op] !== GET && readsLeft[arg[op]!] === 0) {
        const after = next[at] === at + 1 ? next[at + 1]! : next[at]!;
        push(at);
        at = after;
      } else {
        at = next[at]!;
      }
    }

    const key = cacheKey();
    if (seen.has(key)) return 'dead';
    seen.add(key);
    if (starved.size > (starved.has(state) ? 1 : 0)) {
      noteDeadEnd();
      return 'dead';
    }

    // `at` is now the first return in the list: that operation has to go before any call after it.
    const first = at >>> 1;
    const needed = kind[first] === GET ? arg[first]! : -1;
    stamp++;
    for (let call = next[HEAD]!; call !== at; call = next[call]!) {
      const op = call >>> 1;
      const v = arg[op]!;
      if (kind[op] === GET) {
        wantedStamp[v] = stamp;
        continue;
      }
      if (sameValueStamp[v] !== stamp || time[call + 1]! < time[sameValueBest[v]! + 1]!) {
        sameValueStamp[v] = stamp;
        sameValueBest[v] = call;
      }
    }
    const start = choices.length;
    if (needed !== -1 && sameValueStamp[needed] === stamp) choices.push(sameValueBest[needed]!);
    if (needed === -1 || choices.length > start) {
      for (let call = next[HEAD]!; call !== at; call = next[call]!) {
        const op = call >>> 1;
        if (kind[op] === GET || arg[op] === needed || sameValueBest[arg[op]!] !== call) continue;
        if (op < knownCount || wantedStamp[arg[op]!] === stamp) choices.push(call);
      }
    }
    if (choices.length === start) {
      noteDeadEnd();
      return 'dead';
    }
    frameDepth.push(depth);
    frameStart.push(start);
    frameCursor.push(start);
    frameEnd.push(choices.length);
    return 'open';
  };

  let steps = 0;
  let arrived = enter();
  for (;;) {
    if (arrived === 'done') return { kind: 'ok', states: seen.size };
    if (seen.size > maxStates) {
      return {
        kind: 'budget',
        states: seen.size,
        reason: `explored more than ${maxStates} states`,
        outOfTime: false,
      };
    }
    if (++steps % CLOCK_STRIDE === 0 && performance.now() > deadline) {
      return { kind: 'budget', states: seen.size, reason: 'ran out of time', outOfTime: true };
    }
    const top = frameDepth.length - 1;
    if (top < 0) break;
    const cursor = frameCursor[top]!;
    if (cursor < frameEnd[top]!) {
      // Try the next write from this configuration.
      frameCursor[top] = cursor + 1;
      push(choices[cursor]!);
      arrived = enter();
      if (arrived === 'dead') popTo(frameDepth[top]!);
      continue;
    }
    // Every write from here failed: leave this configuration, undoing the write that led to it.
    noteDeadEnd();
    choices.length = frameStart.pop()!;
    frameDepth.pop();
    frameCursor.pop();
    frameEnd.pop();
    popTo(top > 0 ? frameDepth[top - 1]! : 0);
    arrived = 'dead';
  }

  const describe = (v: number): string => (v === ABSENT ? 'absent' : showValue(sampleValues[v]));
  const bestLinearized = Array.from(bestStack.subarray(0, Math.max(bestDepth, 0)), (call) => call >>> 1);
  const takenAtBest = new Set(bestLinearized);
  // When a starved value ended the deepest path, name the reads that could not get it.
  let blocked: number[] = [];
  if (bestStarved !== -1) {
    let firstWriteCall = Number.POSITIVE_INFINITY;
    for (let op = 0; op < n; op++) {
      if (kind[op] !== GET && arg[op] === bestStarved && !takenAtBest.has(op)) {
        firstWriteCall = Math.min(firstWriteCall, time[2 * op]!);
      }
    }
    blocked = order.flatMap((_, op) =>
      kind[op] === GET &&
      arg[op] === bestStarved &&
      !takenAtBest.has(op) &&
      time[2 * op + 1]! < firstWriteCall
        ? [op]
        : [],
    );
  }
  const pending = [...new Set([...bestPending, ...blocked])].sort((a, b) => a - b);
  const held = bestState === ABSENT ? 'the key absent' : `the value ${describe(bestState)}`;
  const why =
    bestStarved === -1
      ? `none of the ${pending.length} operations that could come next completes it`
      : `${blocked.length} read(s) of ${describe(bestStarved)} are left that no write still to come can explain`;
  return {
    kind: 'violation',
    states: seen.size,
    reason:
      `no order of the ${n} operations fits both real time and a single register; the longest ` +
      `order found takes ${bestDepth} of them and leaves ${held}, and ${why}`,
    linearized: bestLinearized.map((op) => order[op]!),
    pending: pending.map((op) => order[op]!),
  };
};

/* ------------------------------------------------------------------------------------------ */
/* Whole histories                                                                            */
/* ------------------------------------------------------------------------------------------ */

const validate = (op: Operation, index: number): void => {
  const fail = (problem: string): never => {
    throw new TypeError(`linearizability: operation ${index} (${formatOperation(op)}): ${problem}`);
  };
  if (!Number.isFinite(op.callMs)) fail('callMs must be a finite number');
  if (Number.isNaN(op.returnMs) || op.returnMs < op.callMs) fail('returnMs must not be before callMs');
  if (typeof op.input.key !== 'string') fail('key must be a string');
  if (isUnknownOutput(op.output)) return;
  switch (op.input.op) {
    case 'get':
      if (!('value' in op.output)) fail('a get returns { value }');
      return;
    case 'set':
    case 'delete':
      if (!('ok' in op.output) || op.output.ok !== true) fail(`a ${op.input.op} returns { ok: true }`);
      return;
    default:
      fail(`unknown operation ${String((op.input as { op: unknown }).op)}`);
  }
};

/**
 * Checks that a key/value history is linearizable. Throws a TypeError on malformed operations
 * (a return before its call, an output that does not fit the input).
 */
export const checkKvHistory = (history: readonly Operation[], options: CheckOptions = {}): CheckResult => {
  const started = performance.now();
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxStates = options.maxStates ?? DEFAULT_MAX_STATES;
  const deadline = started + timeoutMs;
  const elapsed = (): number => performance.now() - started;

  history.forEach(validate);
  const byKey = new Map<string, Operation[]>();
  for (const op of history) {
    const list = byKey.get(op.input.key);
    if (list === undefined) byKey.set(op.input.key, [op]);
    else list.push(op);
  }

  let states = 0;
  let inconclusive: { key: string; reason: string } | undefined;
  for (const [key, ops] of byKey) {
    if (performance.now() >= deadline) {
      inconclusive ??= { key, reason: `ran out of time (${timeoutMs} ms) before checking this key` };
      break;
    }
    const outcome = checkKey(ops, deadline, maxStates);
    states += outcome.states;
    if (outcome.kind === 'violation') {
      return {
        ok: false,
        key,
        reason: outcome.reason,
        operations: [...ops].sort(byCallTime),
        linearized: outcome.linearized,
        pending: outcome.pending,
        states,
        elapsedMs: elapsed(),
      };
    }
    if (outcome.kind === 'budget') {
      inconclusive ??= { key, reason: `${outcome.reason} on ${ops.length} operations` };
      // Out of time: every later key would be cut short too. Out of states: the other keys may
      // still turn up a definite violation, which is worth more than "unknown".
      if (outcome.outOfTime) break;
    }
  }

  if (inconclusive !== undefined) {
    return {
      ok: 'unknown',
      key: inconclusive.key,
      reason: inconclusive.reason,
      keys: byKey.size,
      operations: history.length,
      states,
      elapsedMs: elapsed(),
    };
  }
  return { ok: true, keys: byKey.size, operations: history.length, states, elapsedMs: elapsed() };
};
