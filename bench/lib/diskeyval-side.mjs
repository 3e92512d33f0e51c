/**
 * The diskeyval side of the benchmark: a cluster of real node processes from scripts/cluster.mjs
 * (mTLS on 127.0.0.1, fresh certificates), and workloads that run INSIDE one node's process with
 * the harness's bulk `load` command, so no IPC sits on the measured path.
 *
 * Per workload the parent takes, around the timed phase only (the warm-up is a separate `load`
 * call before it): `usage` of every node (CPU of all node processes together, peak RSS per node)
 * and `status` of every node (term, leader), so a run with errors or an election is flagged.
 */
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startCluster as ownStartCluster } from '../../scripts/cluster.mjs';
import { machineBusySeconds, round, selfCpuSeconds } from './common.mjs';

export const KEY_PREFIX = 'key-';

/** Files (not directories) under `dir`, recursively, with their sizes; [] if it does not exist. */
const filesUnder = async (dir, depth = 0) => {
  if (depth > 6) return [];
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out = [];
  for (const entry of entries.slice(0, 10_000)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(path, depth + 1)));
    else if (entry.isFile()) out.push({ path, size: (await stat(path)).size });
  }
  return out;
};

const isCertFile = (path) => /\.(pem|key)$/.test(path) || /\/\.[^/]*\.tmp$/.test(path);

/**
 * Starts a cluster and waits until every node follows one leader.
 *
 * `persistence: true` asks the harness for a write-ahead log per node (startCluster's
 * `persistence: true`: the library option `persistence: { dir: <cluster dir>/data/<id> }`, on the
 * same file system as etcd's data dir, /tmp). A harness or library without persistence ignores the
 * option, so whether it took effect is checked afterwards with `verifyPersistence`, never assumed.
 *
 * `checkout`: the root of another built checkout of diskeyval, whose own scripts/cluster.mjs (and
 * so its cluster-node.mjs and dist/) runs the nodes: `bench/ab.mjs` measures two versions with
 * this one benchmark. `perNode`: extra node config per id (e.g. an `inspector`, see
 * scripts/cluster-node.mjs).
 */
export const startDiskeyvalCluster = async ({
  nodes = 3,
  persistence = false,
  electionTimeoutMs,
  heartbeatMs,
  onOutput,
  checkout,
  perNode,
}) => {
  const startCluster = checkout
    ? (await import(pathToFileURL(join(resolve(checkout), 'scripts', 'cluster.mjs')).href)).startCluster
    : ownStartCluster;
  const ids = Array.from({ length: nodes }, (_, i) => `node-${i + 1}`);
  const options = {
    nodes,
    ids,
    traceRoles: false, // XState inspection costs CPU on every event; roles come from 'leader' events
    transportEvents: 'rejected',
    ...(persistence ? { persistence: true } : {}),
    ...(electionTimeoutMs ? { electionTimeoutMs } : {}),
    ...(heartbeatMs ? { heartbeatMs } : {}),
    ...(onOutput ? { onOutput } : {}),
    ...(perNode ? { perNode } : {}),
  };
  const cluster = await startCluster(options);
  try {
    const { leaderId, term } = await cluster.waitForLeader(20_000, { agreed: true });
    return { cluster, ids, leaderId, term, persistence };
  } catch (error) {
    await cluster.stop().catch(() => {});
    throw error;
  }
};

export const stopDiskeyvalCluster = async (run) => {
  await run.cluster.stop().catch(() => {});
};

/**
 * Whether the nodes of `run` really write to disk: after some writes, files with data in the
 * cluster's directory other than certificates, or the library's own counter (metrics().walBytes,
 * null without a WAL). Returns { supported, files, bytes, walBytes }.
 */
export const verifyPersistence = async (run) => {
  const files = (await filesUnder(run.cluster.dir)).filter((f) => !isCertFile(f.path));
  const bytes = files.reduce((sum, f) => sum + f.size, 0);
  // The library's own word, when it has one: metrics().walBytes is null without a WAL.
  const metrics = await metricsAll(run).catch(() => []);
  const walBytes = metrics.map((m) => m?.walBytes ?? null);
  const everyNodeHasWal = walBytes.length > 0 && walBytes.every((b) => typeof b === 'number' && b > 0);
  return { supported: bytes > 0 || everyNodeHasWal, files: files.length, bytes, walBytes };
};

/** Whether the built library even mentions a `persistence` option (a hint, printed; never decisive). */
export const libraryMentionsPersistence = async () => {
  try {
    const { readFile } = await import('node:fs/promises');
    const dts = await readFile(new URL('../../dist/index.d.ts', import.meta.url), 'utf8');
    return /\bpersistence\??\s*:/.test(dts);
  } catch {
    return false;
  }
};

const metricsAll = (run) =>
  Promise.all(run.ids.map((id) => run.cluster.call(id, { cmd: 'metrics' }, { timeoutMs: 10_000 })));

/** Counters summed over nodes (transport frames/bytes, WAL syncs) and the leader's batch counts. */
const countersOf = (metrics) => {
  const sum = (f) => metrics.reduce((a, m) => a + (f(m) ?? 0), 0);
  return {
    framesOut: sum((m) => m.transport?.framesOut),
    bytesOut: sum((m) => m.transport?.bytesOut),
    walSyncs: sum((m) => m.walSyncs),
    proposalBatches: sum((m) => (m.role === 'leader' ? m.proposalBatches : 0)),
    readBatches: sum((m) => (m.role === 'leader' ? m.readBatches : 0)),
    elections: sum((m) => m.elections),
    // With an inspector (--inspect): inspection events sent, and traffic its budget kept back.
    inspectionSent: sum((m) => m.inspection?.sentEvents),
    inspectionSkipped: sum((m) => m.inspection?.skippedEvents),
  };
};

const statusAll = (run) =>
  Promise.all(
    run.ids.map((id) =>
      run.cluster
        .call(id, { cmd: 'status' }, { timeoutMs: 10_000 })
        .catch((error) => ({ nodeId: id, error: error.message })),
    ),
  );
const usageAll = (run) =>
  Promise.all(run.ids.map((id) => run.cluster.call(id, { cmd: 'usage' }, { timeoutMs: 10_000 })));

const termsOf = (statuses) => Object.fromEntries(statuses.map((s) => [s.nodeId, s.term ?? null]));
const leadersOf = (statuses) => Object.fromEntries(statuses.map((s) => [s.nodeId, s.leaderId ?? null]));

/**
 * Makes sure keys key-0 .. key-(n-1) exist (untimed writes of the ones not written yet), so reads
 * only hit existing keys. `run.written` counts the prefix of keys known to exist.
 */
export const ensureKeys = async (run, nodeId, n, valueBytes) => {
  const have = run.written ?? 0;
  if (have >= n) return;
  const r = await run.cluster.load(
    nodeId,
    { kind: 'set', count: n, concurrency: 64, valueBytes, keySpace: n, keyPrefix: KEY_PREFIX },
    { timeoutMs: 300_000 },
  );
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  if (errors > 0) throw new Error(`prefill of ${n} keys on ${nodeId} failed: ${JSON.stringify(r.errors)}`);
  run.written = n;
};

const sumErrors = (errors) => Object.values(errors ?? {}).reduce((a, b) => a + b, 0);

/**
 * One workload on node `nodeId`: `warmup` untimed calls, then `ops` timed ones at `concurrency`.
 * kind: 'set' (W1) | 'get' (W2, linearizable) | 'getLocal' (W3, local read).
 * Keys are key-<i mod keySpace>; reads use key-<i mod min(keySpace, ops)>, all written before.
 * `timeLimitMs` (optional) stops the warm-up and the timed phase from starting calls after that
 * long: the row then counts the calls made (`made`, `timeLimited: true`), not `ops`.
 */
export const runDiskeyvalWorkload = async (
  run,
  nodeId,
  { kind, concurrency, ops, warmup, valueBytes, keySpace, boundMs = 300_000, timeLimitMs },
) => {
  const readSpace = Math.min(keySpace, ops);
  const space = kind === 'set' ? keySpace : readSpace;
  if (kind !== 'set') await ensureKeys(run, nodeId, readSpace, valueBytes);
  const base = {
    concurrency,
    valueBytes,
    keySpace: space,
    keyPrefix: KEY_PREFIX,
    ...(timeLimitMs ? { timeLimitMs } : {}),
  };
  const before = await statusAll(run);
  let warmupErrors = {};
  if (warmup > 0) {
    const w = await run.cluster.load(nodeId, { ...base, kind, count: warmup }, { timeoutMs: boundMs });
    warmupErrors = w.errors;
  }
  const usage0 = await usageAll(run);
  const counters0 = countersOf(await metricsAll(run));
  const busy0 = machineBusySeconds();
  const self0 = selfCpuSeconds();
  const r = await run.cluster.load(nodeId, { ...base, kind, count: ops }, { timeoutMs: boundMs });
  const busy1 = machineBusySeconds();
  const self1 = selfCpuSeconds();
  const usage1 = await usageAll(run);
  const counters1 = countersOf(await metricsAll(run));
  const after = await statusAll(run);
  if (kind === 'set') run.written = Math.max(run.written ?? 0, Math.min(ops, keySpace));

  const cpuPerNode = run.ids.map(
    (_, i) => usage1[i].cpuUserS + usage1[i].cpuSystemS - usage0[i].cpuUserS - usage0[i].cpuSystemS,
  );
  const cpuNodes = cpuPerNode.reduce((a, b) => a + b, 0);
  // CPU the rest of the machine used meanwhile (other programs): a large value means a disturbed run.
  const otherCpuS = Math.max(0, busy1 - busy0 - cpuNodes - (self1 - self0));
  const termsBefore = termsOf(before);
  const termsAfter = termsOf(after);
  const termValues = [...Object.values(termsBefore), ...Object.values(termsAfter)];
  const leadersAfter = leadersOf(after);
  const leaderSet = new Set(Object.values(leadersAfter));
  const errors = sumErrors(r.errors) + sumErrors(warmupErrors);
  const electionSuspected =
    counters1.elections !== counters0.elections ||
    new Set(termValues).size !== 1 ||
    leaderSet.size !== 1 ||
    before.some((s) => s.error) ||
    after.some((s) => s.error);
  const made = timeLimitMs ? r.ok + sumErrors(r.errors) : ops;
  const lost = made - r.ok;
  return {
    system: 'diskeyval',
    kind,
    concurrency,
    ops,
    warmup,
    valueBytes,
    ok: r.ok,
    made,
    timeLimited: made < ops,
    errors,
    errorsByCode: { ...r.errors },
    warmupErrorsByCode: { ...warmupErrors },
    lost,
    elapsedS: r.elapsedS,
    opsPerS: r.opsPerS,
    p50Ms: r.latencyMs.p50,
    p90Ms: r.latencyMs.p90,
    p99Ms: r.latencyMs.p99,
    maxMs: r.latencyMs.max,
    meanMs: r.latencyMs.mean,
    cpuS: round(cpuNodes),
    cpuSPer1kOps: round((cpuNodes * 1000) / Math.max(made, 1), 4),
    cpuSPerNode: Object.fromEntries(run.ids.map((id, i) => [id, round(cpuPerNode[i])])),
    runnerCpuS: r.cpuS.total, // the node that ran the load (client calls included)
    otherCpuS: round(otherCpuS),
    // Meaningless for very short phases (10 ms CPU ticks): null below half a second.
    otherCpuPct: r.elapsedS >= 0.5 ? round((100 * otherCpuS) / r.elapsedS, 1) : null,
    peakRssBytesPerNode: Object.fromEntries(run.ids.map((id, i) => [id, usage1[i].peakRssBytes])),
    rssBytesPerNode: Object.fromEntries(run.ids.map((id, i) => [id, usage1[i].rssBytes])),
    peakRssBytesMax: Math.max(...usage1.map((u) => u.peakRssBytes)),
    // Per timed op, all nodes: frames and bytes sent, WAL fdatasyncs; leader: proposal / read batches.
    perOp: Object.fromEntries(
      Object.keys(counters0).map((k) => [k, round((counters1[k] - counters0[k]) / Math.max(made, 1), 4)]),
    ),
    electionsDuring: counters1.elections - counters0.elections,
    termsBefore,
    termsAfter,
    leaderAfter: [...leaderSet].join(','),
    electionSuspected,
    flagged: errors > 0 || lost > 0 || electionSuspected,
  };
};

/** The ids of the leader and of one follower, from the nodes' own status. */
export const rolesOf = async (run) => {
  const statuses = await statusAll(run);
  const leader = statuses.find((s) => s.isLeader)?.nodeId ?? run.leaderId;
  const follower = run.ids.find((id) => id !== leader);
  return { leader, follower, term: statuses.find((s) => s.nodeId === leader)?.term };
};

/**
 * Untimed process warm-up on node `nodeId` before its workloads: the JIT needs far more than the
 * 500 warm-up calls of one workload to settle (with 500 only, W1 c=1 ran ~300 TurboFan compiles
 * inside its timed phase and used ~1.5x the CPU). Sets at c=64 and c=1, linearizable and local
 * gets, on keys `warm-<i mod 1000>` (not the benchmark's keys). Returns the errors by code.
 */
export const warmUpDiskeyval = async (run, nodeId, { count, valueBytes }) => {
  const errors = {};
  const base = { valueBytes, keySpace: 1000, keyPrefix: 'warm-' };
  for (const [kind, concurrency, n] of [
    ['set', 64, count],
    ['set', 1, Math.ceil(count / 5)],
    ['get', 64, count],
    ['getLocal', 64, count],
  ]) {
    const r = await run.cluster.load(
      nodeId,
      { ...base, kind, concurrency, count: n },
      { timeoutMs: 300_000 },
    );
    for (const [code, k] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + k;
  }
  return errors;
};
