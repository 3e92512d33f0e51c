/**
 * Shared pieces of the amnesia e2e tests (test/e2e/amnesia-*.test.ts): the cluster library of
 * scripts/cluster.mjs typed for what they use, the outcome of a call as data, waits on the
 * `metrics` and `warning` events the nodes report, and the "no two leaders in one term" check over
 * the harness timeline.
 *
 * The amnesia contract (notes: contract-amnesia.md) these tests hold the library to:
 * getMetrics().recovering / clusterId / clusterMismatches, `warning` events RECOVERY_BLOCKED and
 * CLUSTER_MISMATCH, options `join` and `forceRecovery`, QUORUM_UNAVAILABLE with `recovering: true`.
 */

export type TimelineEntry = {
  event: string;
  node: string;
  atMs: number;
  relMs: number;
  pid?: number;
} & Record<string, unknown>;
export type Leader = { leaderId: string; term: number; atMs: number; relMs: number };
export type LeaderFilter = { exclude?: string[]; minTerm?: number; agreed?: boolean };
export type Metrics = {
  role: string;
  term: number;
  leaderId: string | null;
  commitIndex: number;
  lastIndex: number;
  recovering?: boolean;
  clusterId?: string | null;
  clusterMismatches?: number;
};
export type Cluster = {
  ids: string[];
  dir: string;
  ports: Record<string, number>;
  t0: number;
  timeline: TimelineEntry[];
  set(id: string, key: string, value: unknown, options?: object): Promise<void>;
  get(
    id: string,
    key: string,
    options?: { consistency?: 'linearizable' | 'local'; timeoutMs?: number },
  ): Promise<unknown>;
  metrics(id: string): Promise<Metrics>;
  waitFor<T>(
    check: (event: TimelineEntry | null) => T | null | undefined | false,
    options?: { timeoutMs?: number; label?: string },
  ): Promise<T>;
  waitForLeader(timeoutMs?: number, filter?: LeaderFilter): Promise<Leader>;
  currentLeader(filter?: LeaderFilter): Leader | null;
  kill(id: string, signal?: string): Promise<{ atMs: number; relMs: number }>;
  restart(id: string, overrides?: Record<string, unknown>): Promise<void>;
  stop(): Promise<void>;
  isLive(id: string): boolean;
  liveIds(): string[];
  state(id: string): {
    alive: boolean;
    ready: boolean;
    role?: string;
    term?: number;
    leaderId: string | null;
  };
  output(id: string): string;
};
type ClusterModule = {
  startCluster(options: Record<string, unknown>): Promise<Cluster>;
  freePorts(count: number): Promise<number[]>;
  formatRoleTimeline(timeline: TimelineEntry[], options?: { t0?: number }): string;
};

export const { startCluster, freePorts, formatRoleTimeline } = (await import(
  new URL('../../scripts/cluster.mjs', import.meta.url).href
)) as ClusterModule;

/** What a call did: resolved with a value, or rejected with a code (and `recovering` when given). */
export type Outcome =
  | { ok: true; value: unknown }
  | { ok: false; code: string; recovering?: boolean; message: string };

export const outcomeOf = async (promise: Promise<unknown>): Promise<Outcome> => {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    const e = error as { code?: unknown; recovering?: unknown; message?: unknown };
    return {
      ok: false,
      code: String(e.code),
      message: String(e.message),
      ...(typeof e.recovering === 'boolean' ? { recovering: e.recovering } : {}),
    };
  }
};

export const nowMs = (): number => performance.timeOrigin + performance.now();

/**
 * Waits until the node's latest `metrics` event (watchMetrics) since `sinceMs` satisfies `check`;
 * the events say when recovering, clusterId or clusterMismatches changed.
 */
export const waitForMetrics = (
  cluster: Cluster,
  id: string,
  check: (m: {
    recovering: boolean | null;
    clusterId: string | null;
    clusterMismatches: number | null;
  }) => boolean,
  { sinceMs, timeoutMs, label }: { sinceMs: number; timeoutMs: number; label: string },
): Promise<TimelineEntry> =>
  cluster.waitFor(
    () => {
      const mine = cluster.timeline.filter(
        (e) => e.node === id && e.event === 'metrics' && e.atMs >= sinceMs,
      );
      const latest = mine[mine.length - 1];
      return latest && check(latest as never) ? latest : null;
    },
    { timeoutMs, label: `${id}: ${label}` },
  );

/** The first `warning` event with `code` from `id` at or after `sinceMs`. */
export const waitForWarning = (
  cluster: Cluster,
  id: string,
  code: string,
  { sinceMs, timeoutMs }: { sinceMs: number; timeoutMs: number },
): Promise<TimelineEntry> =>
  cluster.waitFor(
    () =>
      cluster.timeline.find(
        (e) => e.node === id && e.event === 'warning' && e.code === code && e.atMs >= sinceMs,
      ),
    { timeoutMs, label: `a ${code} warning from ${id}` },
  );

/**
 * Terms in which two different node incarnations (node id and process) became leader, from the
 * `role` events of the harness timeline. A memory node restarted under its old id is a different
 * incarnation: leading again in a term it led before it forgot is a second leader in that term.
 */
export const twoLeadersInATerm = (timeline: readonly TimelineEntry[]): string[] => {
  const leaders = new Map<number, Set<string>>();
  for (const e of timeline) {
    if (e.event !== 'role' || e.role !== 'leader' || typeof e.term !== 'number') continue;
    const set = leaders.get(e.term) ?? new Set<string>();
    set.add(`${e.node}(pid ${e.pid ?? '?'})`);
    leaders.set(e.term, set);
  }
  return [...leaders]
    .filter(([, set]) => set.size > 1)
    .map(([term, set]) => `term ${term}: ${[...set].join(' and ')}`);
};

/**
 * Linearizable get(key) on every live node in turn, over and over until stop() (bounded by
 * `maxRounds`): records every outcome. The amnesia safety claim: a node answers `expected` or
 * rejects (the cluster waits); it never answers anything else.
 */
export const startProbe = (cluster: Cluster, key: string, { maxRounds = 500 } = {}) => {
  const outcomes: Array<{ node: string; atMs: number; outcome: Outcome }> = [];
  let stopping = false;
  let rounds = 0;
  const waiters = new Set<() => void>();
  const loop = async (): Promise<void> => {
    while (rounds < maxRounds && !stopping) {
      // Only started nodes: a process still starting its node is not asked.
      const live = cluster.liveIds().filter((id) => cluster.state(id).ready);
      if (live.length === 0) return;
      await Promise.all(
        live.map(async (id) => {
          const outcome = await outcomeOf(cluster.get(id, key));
          outcomes.push({ node: id, atMs: nowMs(), outcome });
        }),
      );
      // Every live node answered (or rejected) once this round; nothing is waited on by time.
      rounds += 1;
      for (const waiter of [...waiters]) waiter();
    }
  };
  const done = loop();
  return {
    outcomes,
    rounds: () => rounds,
    /** Resolves once `count` more rounds than now are complete; rejects after `timeoutMs`. */
    moreRounds: (count: number, timeoutMs: number): Promise<void> => {
      const target = rounds + count;
      return new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (rounds < target) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`probe of ${key}: ${rounds} rounds, waited for ${target} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    stop: async (): Promise<void> => {
      stopping = true;
      await done;
    },
  };
};

/** Outcomes that break the amnesia safety claim: a value other than `expected`. */
export const wrongAnswers = (
  outcomes: ReadonlyArray<{ node: string; outcome: Outcome }>,
  expected: unknown,
): string[] =>
  outcomes
    .filter(({ outcome }) => outcome.ok && outcome.value !== expected)
    .map(({ node, outcome }) => `${node} answered ${JSON.stringify((outcome as { value: unknown }).value)}`);

/** A short text of outcomes by node and kind, for logs and failure messages. */
export const summarizeOutcomes = (outcomes: ReadonlyArray<{ node: string; outcome: Outcome }>): string => {
  const counts = new Map<string, number>();
  for (const { node, outcome } of outcomes) {
    const kind = outcome.ok ? `value ${JSON.stringify(outcome.value)}` : outcome.code;
    const k = `${node} ${kind}`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return [...counts]
    .sort()
    .map(([k, n]) => `${k} x${n}`)
    .join(', ');
};

/**
 * The timeline as text for a failed test: roles (formatRoleTimeline), plus every warning and
 * metrics event, kill and restart, in time order, ms since the cluster started.
 */
export const describeTimeline = (cluster: Cluster): string => {
  const shown = new Set(['role', 'warning', 'metrics', 'kill', 'restart', 'exit', 'fatal']);
  return cluster.timeline
    .filter((e) => shown.has(e.event))
    .map((e) => {
      const at = `${String(Math.round(e.atMs - cluster.t0)).padStart(6)} ms  ${String(e.node).padEnd(8)}`;
      switch (e.event) {
        case 'role':
          return `${at} ${String(e.role).padEnd(9)} term ${e.term} leader ${e.leaderId ?? '-'} (pid ${e.pid ?? '?'})`;
        case 'warning':
          return `${at} warning ${e.code}: ${e.message}`;
        case 'metrics':
          return `${at} metrics recovering ${e.recovering} clusterId ${e.clusterId} mismatches ${e.clusterMismatches}`;
        case 'fatal':
          return `${at} FATAL ${JSON.stringify(e.error)}`;
        default:
          return `${at} *** ${e.event}${e.signal ? ` ${e.signal}` : ''}${e.overrides ? ` with ${JSON.stringify(e.overrides)}` : ''} ***`;
      }
    })
    .join('\n');
};
