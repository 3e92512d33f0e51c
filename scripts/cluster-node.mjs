#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
/**
 * One diskeyval node in its own process, driven by a parent over Node's IPC channel. The parent is
 * normally `scripts/cluster.mjs` (tests, `npm run demo`, the benchmark), which forks this file with
 * `serialization: 'advanced'` (structured clone: Uint8Array, Date, Map survive the trip).
 *
 * Config: a JSON object in argv[2] or in the environment variable DISKEYVAL_NODE_CONFIG:
 *   {
 *     nodeId: 'node-1', host: '127.0.0.1', port: 8050,
 *     peers: [{ nodeId: 'node-2', host: '127.0.0.1', port: 8051 }, ...],
 *     certDir: '/tmp/x',            // holds ca.pem, <nodeId>.pem, <nodeId>.key (`diskeyval certs`)
 *     electionTimeoutMs?, heartbeatMs?, proposalTimeoutMs?, rpcTimeoutMs?, maxValueBytes?, seed?,
 *     persistence?: { dir, compactEvery? },  // the library option: a WAL in dir, replayed on start
 *     join?, forceRecovery?,        // the library options: never bootstrap / force recovery
 *     traceRoles?: true,            // report every role/term change via XState inspection (default
 *                                   //   true; the benchmark may turn it off: inspection costs CPU)
 *     inspector?: { kind: 'websocket', url, eventsPerSecond? } | { kind: 'callback', eventsPerSecond? },
 *                                   // attach an inspector to the node (`npm run bench -- --inspect`):
 *                                   //   @statelyai/inspect's createWebSocketInspector sending to url,
 *                                   //   or a plain callback that counts the inspection events
 *     changeEvents?: false,         // forward every applied change to the parent
 *     transportEvents?: 'rejected'  // 'none' | 'rejected' | 'all': which transport events to forward
 *     warningEvents?: false,        // forward the node's `warning` events
 *     membershipEvents?: false,     // forward the node's `membership` events
 *     watchMetrics?: 0,             // every that many ms, report { event: 'metrics', recovering,
 *                                   //   clusterId, clusterMismatches } when one of them changed
 *                                   //   (0: never); turns the amnesia contract's metrics into events
 *     throwingListeners?: false,    // add `change` and `leader` listeners that always throw (tests)
 *     keepRunningOnUncaught?: false // an application-wide uncaughtException handler that reports
 *                                   //   { event: 'uncaught' } and keeps the process running
 *   }
 *
 * Child -> parent (every message has `from` = this node and `atMs` = wall-clock ms, fractional,
 * `performance.timeOrigin + performance.now()`, comparable across processes on one machine):
 *   { event: 'ready', pid }                                 the node started (transport listening)
 *   { event: 'leader', nodeId, term }                       the node's view of the leader changed
 *                                                           (the library's `leader` event; nodeId
 *                                                           is the leader, null when unknown)
 *   { event: 'role', role, term, leaderId }                 role or term changed (follower,
 *                                                           candidate, leader)
 *   { event: 'change', key, value, deleted, index }         only with changeEvents
 *   { event: 'membership', voters, outgoing, index }        only with membershipEvents
 *   { event: 'transport', ...TlsTransportLogEvent }         per transportEvents
 *   { event: 'fatal', error: { code, message } }            an uncaught error; the process exits 1
 *   { id, ok: true, result } | { id, ok: false, error: { code, message } }   the answer to a command
 *
 * Parent -> child: commands `{ id, cmd, ... }`, each answered once with the same id:
 *   { cmd: 'set', key, value, options? }        -> undefined
 *   { cmd: 'get', key, options? }               -> the value (options.consistency 'local' for a
 *                                                  local read; linearizable by default)
 *   { cmd: 'delete', key, options? }            -> undefined
 *   { cmd: 'status' }                           -> { nodeId, pid, role, term, leaderId, isLeader,
 *                                                    commitIndex, appliedIndex, lastIndex, keys }
 *   { cmd: 'metrics' }                          -> node.getMetrics()
 *   { cmd: 'usage', gc? }                       -> { cpuUserS, cpuSystemS, rssBytes, peakRssBytes,
 *                                                    heapUsedBytes } (totals since process start;
 *                                                    diff two answers for a phase); with `gc: true`
 *                                                    after a full garbage collection
 *   { cmd: 'load', ... }                        -> a load report, see runLoad below
 *   { cmd: 'inspected' }                        -> { events, snapshots } seen by a `callback` inspector
 *   { cmd: 'reconfigure', members, options? }   -> undefined (node.reconfigure)
 *   { cmd: 'peers' }                            -> node.getPeers()
 *   { cmd: 'endNode' }                          -> undefined: node.end(), the process stays (calls
 *                                                  on the ended node reject with STOPPED)
 *   { cmd: 'end' }                              -> undefined; then the node ends and the process exits 0
 * Errors are answered with the error's `code` (QUORUM_UNAVAILABLE, TIMEOUT, STOPPED,
 * INVALID_ARGUMENT, NOT_LEADER, ...; BAD_COMMAND for an unknown command).
 *
 * The process ends the node and exits 0 on 'end', when the parent disconnects, or on SIGTERM/SIGINT.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { diskeyval } from '../dist/index.js';

const nowMs = () => performance.timeOrigin + performance.now();

/** Sends to the parent; resolves once the message is handed to the channel (or cannot be). */
const send = (message) =>
  new Promise((resolve) => {
    if (!process.connected) {
      resolve();
      return;
    }
    try {
      process.send({ ...message, from: config?.nodeId, atMs: message.atMs ?? nowMs() }, undefined, {}, () =>
        resolve(),
      );
    } catch {
      // The channel closed between the check and the send: the parent is gone, exit follows.
      resolve();
    }
  });

const errorOf = (error) => ({
  code: typeof error?.code === 'string' ? error.code : 'ERROR',
  message: error instanceof Error ? error.message : String(error),
  // QUORUM_UNAVAILABLE from a node that is itself recovering says so (amnesia contract).
  ...(typeof error?.recovering === 'boolean' ? { recovering: error.recovering } : {}),
});

const readConfig = () => {
  const text = process.argv[2] ?? process.env.DISKEYVAL_NODE_CONFIG;
  if (!text) throw new Error('cluster-node: pass the config as JSON in argv[2] or DISKEYVAL_NODE_CONFIG');
  const parsed = JSON.parse(text);
  for (const field of ['nodeId', 'host', 'port', 'peers', 'certDir']) {
    if (parsed[field] === undefined) throw new Error(`cluster-node: config.${field} is missing`);
  }
  return parsed;
};

let config;
let node;
let ending = false;

// ---- the bulk load runner ---------------------------------------------------------------------

const percentile = (sorted, p) => {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
};

const round3 = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

/**
 * Runs `count` operations of one kind inside this process, `concurrency` at a time, after `warmup`
 * unmeasured ones, and reports:
 *   { kind, count, concurrency, valueBytes, keySpace, warmup,
 *     ok, errors: { CODE: n }, elapsedS, opsPerS (completed ok ops / elapsed),
 *     latencyMs: { p50, p90, p99, max, mean } (of ok ops only, per call, including queueing in the node),
 *     cpuS: { user, system, total } (process.cpuUsage delta over the measured phase),
 *     rssBytes (at the end), peakRssBytes (the process's peak so far, resourceUsage().maxRSS) }
 *
 * Options (all but kind optional):
 *   kind: 'set' | 'get' | 'getLocal'   set(key, value) | linearizable get | get with consistency local
 *   count = 1000, concurrency = 64, valueBytes = 100 (a Uint8Array of that size), keySpace = count,
 *   warmup = 0, keyPrefix = 'k', timeoutMs (per-call option, default none: the node's proposalTimeoutMs),
 *   timeLimitMs (no new call starts after this long in the timed phase; `ok` + errors then count
 *   the calls made, fewer than `count`)
 * Keys are `${keyPrefix}${i % keySpace}`; op i goes to worker (i mod concurrency) order-free: every
 * worker takes the next op number when its previous call settles.
 */
const runLoad = async (options) => {
  const kind = options.kind;
  if (kind !== 'set' && kind !== 'get' && kind !== 'getLocal') {
    throw Object.assign(new Error(`load: kind must be set, get or getLocal, not ${kind}`), {
      code: 'BAD_COMMAND',
    });
  }
  const count = options.count ?? 1000;
  const concurrency = Math.max(1, Math.min(options.concurrency ?? 64, Math.max(count, 1)));
  const valueBytes = options.valueBytes ?? 100;
  const keySpace = Math.max(1, options.keySpace ?? count);
  const warmup = options.warmup ?? 0;
  const keyPrefix = options.keyPrefix ?? 'k';
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i += 1) value[i] = (i * 31 + 7) & 0xff;
  const callOptions = options.timeoutMs === undefined ? undefined : { timeoutMs: options.timeoutMs };
  const getOptions = kind === 'getLocal' ? { ...callOptions, consistency: 'local' } : callOptions;

  const call = (i) => {
    const key = `${keyPrefix}${i % keySpace}`;
    return kind === 'set' ? node.set(key, value, callOptions) : node.get(key, getOptions);
  };

  const timeLimitMs = options.timeLimitMs ?? Number.POSITIVE_INFINITY;
  let deadline = Number.POSITIVE_INFINITY;
  const phase = async (total, record) => {
    let next = 0;
    const worker = async () => {
      while (next < total && (deadline === Number.POSITIVE_INFINITY || performance.now() < deadline)) {
        const i = next++;
        const started = performance.now();
        try {
          await call(i);
          record?.ok(performance.now() - started);
        } catch (error) {
          record?.error(errorOf(error).code);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(total, 1)) }, worker));
  };

  if (warmup > 0) await phase(warmup, null);

  const latencies = new Float64Array(count);
  let ok = 0;
  const errors = {};
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  deadline = started + timeLimitMs;
  await phase(count, {
    ok: (ms) => {
      latencies[ok++] = ms;
    },
    error: (code) => {
      errors[code] = (errors[code] ?? 0) + 1;
    },
  });
  const elapsedS = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const sorted = latencies.subarray(0, ok).sort();
  let sum = 0;
  for (const ms of sorted) sum += ms;
  return {
    kind,
    count,
    concurrency,
    valueBytes,
    keySpace,
    warmup,
    ok,
    errors,
    elapsedS: round3(elapsedS),
    opsPerS: elapsedS > 0 ? Math.round(ok / elapsedS) : null,
    latencyMs: {
      p50: round3(percentile(sorted, 50)),
      p90: round3(percentile(sorted, 90)),
      p99: round3(percentile(sorted, 99)),
      max: round3(ok > 0 ? sorted[ok - 1] : null),
      mean: round3(ok > 0 ? sum / ok : null),
    },
    cpuS: {
      user: round3(cpu.user / 1e6),
      system: round3(cpu.system / 1e6),
      total: round3((cpu.user + cpu.system) / 1e6),
    },
    rssBytes: process.memoryUsage.rss(),
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
};

/** Inspection events seen by a `callback` inspector (the `inspector` command reports them). */
const inspected = { events: 0, snapshots: 0 };

/**
 * Sets `options.inspect` to the inspector `spec` names, beside the role tracing when that is on.
 * A websocket inspector is @statelyai/inspect's own, given as README.md shows (`inspector.inspect`,
 * an Observer); the library's `inspect` option is typed as a function today, which XState's
 * createActor accepts either way.
 */
const attachInspector = async (options, spec) => {
  let observe;
  if (spec.kind === 'websocket') {
    const { createWebSocketInspector } = await import('@statelyai/inspect');
    const inspector = createWebSocketInspector({ url: spec.url });
    observe = inspector.inspect;
  } else if (spec.kind === 'callback') {
    observe = (event) => {
      inspected.events += 1;
      if (event.type === '@xstate.snapshot') inspected.snapshots += 1;
    };
  } else {
    throw new Error(`cluster-node: unknown inspector kind ${spec.kind}`);
  }
  // The inspection budget (README "Watching it in the inspector"); null: Infinity (every event).
  if (spec.eventsPerSecond !== undefined)
    options.inspectEventsPerSecond = spec.eventsPerSecond ?? Number.POSITIVE_INFINITY;
  const trace = options.inspect;
  if (trace === undefined) options.inspect = observe;
  else {
    const next = typeof observe === 'function' ? observe : (event) => observe.next(event);
    options.inspect = (event) => {
      trace(event);
      next(event);
    };
  }
};

// ---- commands ---------------------------------------------------------------------------------

/** A full garbage collection, without starting the process with --expose-gc. */
const collectGarbage = () => {
  v8.setFlagsFromString('--expose-gc');
  runInNewContext('gc')();
};

const usage = (gc) => {
  if (gc) collectGarbage();
  const cpu = process.cpuUsage();
  const memory = process.memoryUsage();
  return {
    cpuUserS: cpu.user / 1e6,
    cpuSystemS: cpu.system / 1e6,
    rssBytes: memory.rss,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    heapUsedBytes: memory.heapUsed,
    heapTotalBytes: memory.heapTotal,
    arrayBuffersBytes: memory.arrayBuffers,
    /** V8's heap spaces (new, old, code, large objects...): committed bytes by space. */
    spaces: Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, s.physical_space_size])),
  };
};

const status = () => {
  const metrics = node.getMetrics();
  return {
    nodeId: config.nodeId,
    pid: process.pid,
    role: metrics.role,
    term: metrics.term,
    leaderId: metrics.leaderId,
    isLeader: node.isLeader(),
    commitIndex: metrics.commitIndex,
    appliedIndex: metrics.appliedIndex,
    lastIndex: metrics.lastIndex,
    keys: metrics.keys,
  };
};

const execute = async (message) => {
  switch (message.cmd) {
    case 'set':
      return node.set(message.key, message.value, message.options);
    case 'get':
      return node.get(message.key, message.options);
    case 'delete':
      return node.delete(message.key, message.options);
    case 'status':
      return status();
    case 'metrics':
      return node.getMetrics();
    case 'usage':
      return usage(message.gc === true);
    case 'load':
      return runLoad(message);
    case 'inspected':
      return { ...inspected };
    case 'reconfigure':
      return node.reconfigure(message.members, message.options);
    case 'peers':
      return node.getPeers();
    case 'endNode':
      return node.end();
    default:
      throw Object.assign(new Error(`unknown command ${JSON.stringify(message.cmd)}`), {
        code: 'BAD_COMMAND',
      });
  }
};

/** Ends the node (bounded) and exits with `code`. */
const shutdown = async (code, reply) => {
  if (ending) return;
  ending = true;
  const bound = setTimeout(() => process.exit(code), 3000);
  bound.unref();
  try {
    await node?.end();
  } catch {
    // Exiting anyway.
  }
  // Let the reply leave before the channel closes.
  if (reply) await send(reply);
  if (process.connected) process.disconnect();
  process.exit(code);
};

const onMessage = (message) => {
  if (message === null || typeof message !== 'object') return;
  const { id } = message;
  if (message.cmd === 'end') {
    void shutdown(0, { id, ok: true });
    return;
  }
  if (ending) {
    send({ id, ok: false, error: { code: 'STOPPED', message: `${config.nodeId} is ending` } });
    return;
  }
  execute(message).then(
    (result) => send({ id, ok: true, result }),
    (error) => send({ id, ok: false, error: errorOf(error) }),
  );
};

// ---- start ------------------------------------------------------------------------------------

const fatal = (error) => {
  if (config?.keepRunningOnUncaught && !ending) {
    send({ event: 'uncaught', error: errorOf(error) });
    return;
  }
  process.stderr.write(`cluster-node ${config?.nodeId ?? '?'}: ${error?.stack ?? error}\n`);
  const bound = setTimeout(() => process.exit(1), 500);
  bound.unref();
  send({
    event: 'fatal',
    error: errorOf(error),
    stack: error instanceof Error ? error.stack : undefined,
  }).then(() => process.exit(1));
};

process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);
process.on('disconnect', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
process.on('SIGINT', () => void shutdown(0));

const main = async () => {
  config = readConfig();
  if (!process.send) throw new Error('cluster-node: start me with child_process.fork (an IPC channel)');
  const pem = (name) => readFileSync(join(config.certDir, name), 'utf8');
  const tlsTransportEvents = config.transportEvents ?? 'rejected';

  let lastRole = null;
  let lastTerm = -1;
  let lastRecovering;
  const reportRole = (role, term, leaderId, recovering = false) => {
    if (role === lastRole && term === lastTerm && recovering === lastRecovering) return;
    lastRole = role;
    lastTerm = term;
    lastRecovering = recovering;
    send({ event: 'role', role, term, leaderId, recovering });
  };
  const roleOf = (value) => (typeof value === 'string' ? value : Object.keys(value ?? {})[0]);

  const options = {
    nodeId: config.nodeId,
    host: config.host,
    port: config.port,
    peers: config.peers,
    tls: { cert: pem(`${config.nodeId}.pem`), key: pem(`${config.nodeId}.key`), ca: pem('ca.pem') },
  };
  for (const key of [
    'electionTimeoutMs',
    'heartbeatMs',
    'proposalTimeoutMs',
    'rpcTimeoutMs',
    'maxValueBytes',
    'seed',
    'persistence',
    'join',
    'forceRecovery',
  ]) {
    if (config[key] !== undefined) options[key] = config[key];
  }
  if (tlsTransportEvents !== 'none') {
    options.onTransportEvent = (event) => {
      if (tlsTransportEvents === 'all' || event.event === 'rejected') {
        const { error, ...rest } = event;
        send({
          ...rest,
          transportEvent: event.event,
          event: 'transport',
          ...(error ? { error: errorOf(error) } : {}),
        });
      }
    };
  }
  if (config.traceRoles !== false) {
    // XState inspection runs synchronously on every snapshot: the exact moment of each transition.
    // The role machine is the node's raft actor (system id `<nodeId>/raft`, ARCHITECTURE.md).
    const raftSystemId = `${options.nodeId}/raft`;
    options.inspect = (inspection) => {
      if (inspection.type !== '@xstate.snapshot' || inspection.actorRef?.systemId !== raftSystemId) return;
      const snapshot = inspection.snapshot;
      const role = roleOf(snapshot?.value);
      const term = snapshot?.context?.currentTerm;
      if ((role === 'follower' || role === 'candidate' || role === 'leader') && typeof term === 'number') {
        reportRole(role, term, snapshot.context.leaderId ?? null, snapshot.context.recovering === true);
      }
    };
  }

  if (config.inspector) await attachInspector(options, config.inspector);
  node = diskeyval(options);
  node.on('leader', ({ nodeId, term }) => {
    send({ event: 'leader', nodeId, term });
    if (config.traceRoles === false) {
      const metrics = node.getMetrics();
      reportRole(metrics.role, metrics.term, metrics.leaderId);
    }
  });
  if (config.changeEvents) {
    node.on('change', (change) => send({ event: 'change', ...change }));
  }
  if (config.warningEvents) {
    // The warning's own `event` (which listener threw) travels as `listenerEvent`.
    node.on('warning', ({ error, event, ...warning }) =>
      send({
        ...warning,
        event: 'warning',
        listenerEvent: event,
        ...(error ? { error: errorOf(error) } : {}),
      }),
    );
  }
  if (config.membershipEvents) {
    node.on('membership', (membership) => send({ event: 'membership', ...membership }));
  }
  if (config.throwingListeners) {
    node.on('change', ({ key }) => {
      throw new Error(`a user's change listener failed on ${key}`);
    });
    node.on('leader', () => {
      throw new Error(`a user's leader listener failed`);
    });
  }
  process.on('message', onMessage);
  await node.start();
  send({ event: 'ready', pid: process.pid });
  if (config.watchMetrics > 0) watchMetrics(config.watchMetrics);
};

/**
 * Reports the amnesia contract's metrics (recovering, clusterId, clusterMismatches) as an event
 * whenever one of them changed, checked every `everyMs` (the process's own timer, unref'd; the
 * parent then waits on events, never polls). Absent fields (older builds) are reported as null.
 */
const watchMetrics = (everyMs) => {
  let last = '';
  const check = () => {
    if (ending) return;
    const metrics = node.getMetrics();
    const watched = {
      recovering: typeof metrics.recovering === 'boolean' ? metrics.recovering : null,
      clusterId: metrics.clusterId ?? null,
      clusterMismatches: typeof metrics.clusterMismatches === 'number' ? metrics.clusterMismatches : null,
    };
    const text = JSON.stringify(watched);
    if (text === last) return;
    last = text;
    send({ event: 'metrics', ...watched });
  };
  check();
  setInterval(check, everyMs).unref();
};

main().catch(fatal);
