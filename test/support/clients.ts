/**
 * Clients of a cluster of real processes, for the e2e suites that change the cluster under load
 * (amnesia-rolling, membership): writers, each with its own keys (so a key's writes are ordered by
 * its one writer and "a later write" is exact), and readers of random keys, each call on the next
 * node `targets()` names. Every call is recorded as a client history for the linearizability
 * checker (a rejected write has an unknown outcome: it may have taken effect); every write attempt
 * per key, acknowledged or not; the acknowledged writes with their times; rejections by code.
 * Nothing sleeps: `progress` waits on acknowledgements, with a bound.
 */
import { createRng } from '../../src/machines/rng.js';
import { nowMs, type Outcome, outcomeOf } from './amnesia.js';
import type { Operation } from './linearizability.js';

export type Attempt = { value: string; acknowledged: boolean };
/** An acknowledged write: when it was called and when it returned (ms, the test's clock). */
export type AckedWrite = { callMs: number; ackMs: number };

export type ClientsOptions = {
  /** Seeds the readers' key pick. */
  seed: number;
  writers: number;
  readers: number;
  keysPerWriter: number;
  /** Keys are `<keyPrefix>-<writer>-<n>`. */
  keyPrefix: string;
  /** The nodes calls go to now (the live ones); a client stops when there are none. */
  targets: () => string[];
  maxCallsPerClient: number;
  /** How long `progress` waits for its acknowledgements. */
  progressBoundMs: number;
  /** The command that replays the run, for `progress`'s error. */
  replay: () => string;
};

export type Clients = {
  history: Operation[];
  attempts: Map<string, Attempt[]>;
  writes: AckedWrite[];
  /** Rejections (writes and reads) by error code. */
  codes: Map<string, number>;
  /** Writes whose outcome is unknown (rejected). */
  unknown: () => number;
  /** Resolves once `count` more writes were acknowledged than now; rejects after the bound. */
  progress: (count: number, what: string) => Promise<void>;
  stop: () => Promise<void>;
};

/** What the clients call: a set and a get on the node with that id (scripts/cluster.mjs). */
export type ClientTarget = {
  set(id: string, key: string, value: unknown): Promise<unknown>;
  get(id: string, key: string): Promise<unknown>;
};

export const startClients = (cluster: ClientTarget, options: ClientsOptions): Clients => {
  const { writers, readers, keysPerWriter, keyPrefix, maxCallsPerClient } = options;
  const history: Operation[] = [];
  const attempts = new Map<string, Attempt[]>();
  const writes: AckedWrite[] = [];
  const codes = new Map<string, number>();
  const waiters = new Set<() => void>();
  const rng = createRng(options.seed);
  let stopping = false;
  let unknown = 0;

  const keyOf = (writer: number, n: number): string => `${keyPrefix}-${writer}-${n % keysPerWriter}`;
  const pick = (i: number): string | undefined => {
    const live = options.targets();
    return live.length === 0 ? undefined : live[i % live.length];
  };
  const failed = (outcome: Outcome): void => {
    if (!outcome.ok) codes.set(outcome.code, (codes.get(outcome.code) ?? 0) + 1);
  };

  const writer = async (w: number): Promise<void> => {
    for (let n = 0; !stopping && n < maxCallsPerClient; n += 1) {
      const target = pick(w + n);
      if (target === undefined) return;
      const key = keyOf(w, n);
      const attempt: Attempt = { value: `w${w}-${n}`, acknowledged: false };
      attempts.set(key, [...(attempts.get(key) ?? []), attempt]);
      const callMs = nowMs();
      const outcome = await outcomeOf(cluster.set(target, key, attempt.value));
      const returnMs = nowMs();
      attempt.acknowledged = outcome.ok;
      history.push({
        clientId: w,
        input: { op: 'set', key, value: attempt.value },
        output: outcome.ok ? { ok: true } : { unknown: true },
        callMs,
        returnMs: outcome.ok ? returnMs : Number.POSITIVE_INFINITY,
      });
      failed(outcome);
      if (!outcome.ok) {
        unknown += 1;
        continue;
      }
      writes.push({ callMs, ackMs: returnMs });
      for (const waiter of [...waiters]) waiter();
    }
  };

  const reader = async (r: number): Promise<void> => {
    for (let n = 0; !stopping && n < maxCallsPerClient; n += 1) {
      const target = pick(r + n);
      if (target === undefined) return;
      const key = keyOf(rng.int(0, writers), rng.int(0, keysPerWriter));
      const callMs = nowMs();
      const outcome = await outcomeOf(cluster.get(target, key));
      failed(outcome);
      if (!outcome.ok) continue;
      history.push({
        clientId: writers + r,
        input: { op: 'get', key },
        output: { value: outcome.value },
        callMs,
        returnMs: nowMs(),
      });
    }
  };

  const done = Promise.all([
    ...Array.from({ length: writers }, (_, w) => writer(w)),
    ...Array.from({ length: readers }, (_, r) => reader(r)),
  ]);
  const progress = (count: number, what: string): Promise<void> => {
    const target = writes.length + count;
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (writes.length < target) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(
            `${what}: ${writes.length} acknowledged, waited for ${target} (replay: ${options.replay()})`,
          ),
        );
      }, options.progressBoundMs);
      waiters.add(check);
      check();
    });
  };
  const stop = async (): Promise<void> => {
    stopping = true;
    await done;
  };
  return { history, attempts, writes, codes, unknown: () => unknown, progress, stop };
};

/** Why `value` at a key is neither its last acknowledged write nor a later one (or null). */
export const violation = (attempts: readonly Attempt[], value: unknown): string | null => {
  const last = attempts.map((a) => a.acknowledged).lastIndexOf(true);
  if (last === -1 && value === undefined) return null;
  const allowed = attempts.slice(Math.max(0, last)).map((a) => a.value);
  if (allowed.includes(value as string)) return null;
  return `holds ${JSON.stringify(value)}, last acknowledged ${JSON.stringify(attempts[last]?.value)}`;
};

/** The longest gap between acknowledged writes over [fromMs, toMs], counting the last ack before it. */
export const longestGapMs = (writes: readonly AckedWrite[], fromMs: number, toMs: number): number => {
  const acks = writes.map((write) => write.ackMs).sort((a, b) => a - b);
  let previous = acks.filter((t) => t < fromMs).pop() ?? fromMs;
  let gap = 0;
  for (const t of acks.filter((at) => at >= fromMs && at <= toMs)) {
    gap = Math.max(gap, t - previous);
    previous = t;
  }
  return Math.round(Math.max(gap, toMs - previous));
};

/**
 * Reads every key the writers wrote on each of `ids` (after `stop()`): each read joins the client
 * history as a client of its own, and a value that is neither the key's last acknowledged write nor
 * a later one is a lost write. Returns the lost writes, `<id> <key>: why`.
 */
export const readBack = async (
  cluster: ClientTarget,
  ids: readonly string[],
  clients: Clients,
): Promise<string[]> => {
  const lost: string[] = [];
  let reads = 0;
  for (const id of ids) {
    for (const [key, attempts] of clients.attempts) {
      const callMs = nowMs();
      const value = await cluster.get(id, key);
      clients.history.push({
        clientId: 100 + reads,
        input: { op: 'get', key },
        output: { value },
        callMs,
        returnMs: nowMs(),
      });
      reads += 1;
      const why = violation(attempts, value);
      if (why) lost.push(`${id} ${key}: ${why}`);
    }
  }
  return lost;
};
