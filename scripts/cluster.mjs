/**
 * A local diskeyval cluster of real processes, for tests, `npm run demo` and the benchmark.
 *
 *   import { startCluster } from './cluster.mjs';
 *   const cluster = await startCluster({ nodes: 3 });
 *   const { leaderId } = await cluster.waitForLeader(5000);
 *   await cluster.call('node-2', { cmd: 'set', key: 'a', value: 1 });   // a follower forwards
 *   await cluster.kill(leaderId);                                        // SIGKILL by default
 *   await cluster.waitForLeader(5000, { exclude: [leaderId] });
 *   await cluster.restart(leaderId);
 *   await cluster.stop();
 *
 * With `persistence: true` every node keeps a write-ahead log in `<dir>/data/<nodeId>` (the
 * library's `persistence: { dir }` option); the directory is kept across `kill` and `restart`, so a
 * restarted node comes back with its term, vote and log, and is removed with the temp dir by stop().
 *
 * `startCluster` writes fresh certificates (the project's own cert tooling, from the built
 * `dist/`), picks free ports on 127.0.0.1, and forks `scripts/cluster-node.mjs` once per node; the
 * protocol between parent and node is documented there. Run `npm run build` first.
 *
 * Every wait has a bound and fails with an Error that says what it waited for and what each node
 * last reported. Errors that come from a node carry the node's `code` (QUORUM_UNAVAILABLE, ...);
 * the cluster's own failures use CALL_TIMEOUT, NODE_DOWN, NODE_EXITED, WAIT_TIMEOUT, START_FAILED.
 *
 * Everything a node reports (ready, leader, role, transport, fatal) and what the parent does
 * (spawn, kill, exit) lands in `cluster.timeline` with `atMs` (wall clock, fractional ms,
 * comparable across processes) and `relMs` (since startCluster was called). Change events, when
 * enabled, go to `cluster.changes(nodeId)` and to `cluster.on` listeners, not to the timeline.
 */
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { writeClusterCertificates } from '../dist/index.js';

const NODE_SCRIPT = fileURLToPath(new URL('./cluster-node.mjs', import.meta.url));
const OUTPUT_TAIL_BYTES = 8192;

/** Wall-clock ms with sub-ms precision; the same clock the node processes report with. */
export const nowMs = () => performance.timeOrigin + performance.now();

const codedError = (code, message, extra = {}) => Object.assign(new Error(message), { code }, extra);

/**
 * `count` distinct free TCP ports on `host`: each is found by listening on port 0; all servers stay
 * open until every port is known, so the ports differ, then all are closed.
 */
export const freePorts = async (count, host = '127.0.0.1') => {
  const servers = [];
  try {
    for (let i = 0; i < count; i += 1) {
      const server = net.createServer();
      servers.push(server);
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, host, () => resolve(undefined));
      });
    }
    return servers.map((server) => /** @type {import('node:net').AddressInfo} */ (server.address()).port);
  } finally {
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(() => resolve()))));
  }
};

/** Node ids of a cluster of `n`: node-1 ... node-n. */
export const nodeIds = (n) => Array.from({ length: n }, (_, i) => `node-${i + 1}`);

/**
 * Starts a cluster and resolves once every node has started (its transport listens).
 *
 * @param {object} [options]
 * @param {number} [options.nodes=3]            cluster size (3 or 5 usually)
 * @param {string[]} [options.ids]              node ids (default node-1 ... node-n)
 * @param {string} [options.host='127.0.0.1']
 * @param {number} [options.basePort]           ports basePort, basePort+1, ... (default: free ports)
 * @param {number[]} [options.ports]            the port of each node, in the order of `ids` (wins
 *                                              over basePort; e.g. picked with freePorts() first so
 *                                              proxies can stand in front of the nodes)
 * @param {string} [options.dir]                where to write certificates (default: a fresh temp
 *                                              dir, removed by stop())
 * @param {boolean} [options.existingCerts=false] use the ca.pem, <id>.pem and <id>.key already in
 *                                              `dir` (from `diskeyval certs`) instead of writing new
 * @param {number} [options.electionTimeoutMs]  node options; absent ones keep the library defaults
 * @param {number} [options.heartbeatMs]
 * @param {number} [options.proposalTimeoutMs]
 * @param {number} [options.rpcTimeoutMs]
 * @param {number} [options.maxValueBytes]
 * @param {boolean} [options.join]              node options (the amnesia/bootstrap contract):
 * @param {boolean} [options.forceRecovery]     never bootstrap / force recovery (per node: perNode)
 * @param {boolean} [options.warningEvents=false] forward every node's `warning` events to the timeline
 * @param {boolean} [options.membershipEvents=false] forward every node's `membership` events to the timeline
 * @param {number} [options.watchMetrics=0]    report recovering / clusterId / clusterMismatches as
 *                                              `metrics` timeline events when they change (checked
 *                                              in the node every that many ms)
 * @param {boolean | { compactEvery?: number }} [options.persistence=false] a WAL per node in
 *                                              `<dir>/data/<nodeId>`, kept across restarts
 * @param {boolean} [options.traceRoles=true]   exact role/term transitions (XState inspection)
 * @param {boolean} [options.changeEvents=false] forward every applied change to the parent
 * @param {'none'|'rejected'|'all'} [options.transportEvents='rejected']
 * @param {Record<string, object>} [options.perNode] extra config for one node id
 * @param {string[]} [options.deferred]        ids not started now (listed members that are down
 *                                              from the beginning); start one later with restart(id)
 * @param {number} [options.startTimeoutMs=15000] bound for all nodes to start
 * @param {number} [options.callTimeoutMs=15000] default bound of call()
 * @param {(line: string) => void} [options.onOutput] each line a node prints (stdout/stderr)
 */
export const startCluster = async (options = {}) => {
  const t0 = nowMs();
  const size = options.nodes ?? 3;
  const ids = options.ids ?? nodeIds(size);
  const host = options.host ?? '127.0.0.1';
  const callTimeoutMs = options.callTimeoutMs ?? 15_000;
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'diskeyval-cluster-')));

  const timeline = [];
  const listeners = new Set();
  const nodes = new Map();
  let stopping = false;
  let nextCallId = 1;

  const record = (entry) => {
    const atMs = entry.atMs ?? nowMs();
    const full = { ...entry, atMs, relMs: Math.round((atMs - t0) * 10) / 10 };
    if (full.event !== 'change') timeline.push(full);
    for (const listener of [...listeners]) listener(full);
    return full;
  };

  const cleanup = async () => {
    if (ownDir) await rm(dir, { recursive: true, force: true });
  };

  let ports;
  try {
    if (!(options.existingCerts && options.dir !== undefined)) await writeClusterCertificates(dir, ids);
    if (options.ports !== undefined && options.ports.length !== ids.length)
      throw codedError(
        'INVALID_ARGUMENT',
        `options.ports needs ${ids.length} ports, got ${options.ports.length}`,
      );
    ports =
      options.ports ??
      (options.basePort === undefined
        ? await freePorts(ids.length, host)
        : ids.map((_, i) => options.basePort + i));
  } catch (error) {
    await cleanup();
    throw error;
  }

  /** Where node `id` keeps its WAL when `persistence` is on (kept across restarts). */
  const dataDirOf = (id) => join(dir, 'data', id);

  const configOf = (id, overrides = {}) => {
    const index = ids.indexOf(id);
    const config = {
      nodeId: id,
      host,
      port: ports[index],
      peers: ids
        .filter((other) => other !== id)
        .map((other) => ({ nodeId: other, host, port: ports[ids.indexOf(other)] })),
      certDir: dir,
      traceRoles: options.traceRoles ?? true,
      changeEvents: options.changeEvents ?? false,
      transportEvents: options.transportEvents ?? 'rejected',
    };
    for (const key of [
      'electionTimeoutMs',
      'heartbeatMs',
      'proposalTimeoutMs',
      'rpcTimeoutMs',
      'maxValueBytes',
      'join',
      'forceRecovery',
      'warningEvents',
      'watchMetrics',
      'membershipEvents',
    ]) {
      if (options[key] !== undefined) config[key] = options[key];
    }
    if (options.persistence) {
      config.persistence = {
        dir: dataDirOf(id),
        ...(typeof options.persistence === 'object' ? options.persistence : {}),
      };
    }
    return { ...config, ...(options.perNode?.[id] ?? {}), ...overrides };
  };

  const describeNodes = () =>
    ids
      .map((id) => {
        const n = nodes.get(id);
        if (!n?.alive) return `${id}: down`;
        return `${id}: ${n.ready ? (n.role ?? '?') : 'starting'} term ${n.term ?? '?'} leader ${n.leaderId ?? '-'}`;
      })
      .join('; ');

  /**
   * Resolves with the first truthy value of `check()`, evaluated now and after every event, or
   * rejects with WAIT_TIMEOUT after `timeoutMs`.
   */
  const waitFor = (check, { timeoutMs = 10_000, label = 'a condition' } = {}) =>
    new Promise((resolve, reject) => {
      let settled = false;
      const finish = (fn, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        listeners.delete(listener);
        fn(value);
      };
      const evaluate = (event) => {
        try {
          const value = check(event ?? null);
          if (value) finish(resolve, value);
        } catch (error) {
          finish(reject, error);
        }
      };
      const listener = (event) => evaluate(event);
      const timer = setTimeout(
        () =>
          finish(
            reject,
            codedError(
              'WAIT_TIMEOUT',
              `timed out after ${timeoutMs} ms waiting for ${label} (${describeNodes()})`,
            ),
          ),
        timeoutMs,
      );
      listeners.add(listener);
      evaluate(null);
    });

  const onNodeMessage = (n, message) => {
    if (message === null || typeof message !== 'object') return;
    if (message.id !== undefined && message.event === undefined) {
      const pending = n.pending.get(message.id);
      if (!pending) return;
      n.pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.ok) pending.resolve(message.result);
      else
        pending.reject(
          codedError(message.error?.code ?? 'ERROR', `${n.id} ${pending.cmd}: ${message.error?.message}`, {
            nodeId: n.id,
            cmd: pending.cmd,
            ...(typeof message.error?.recovering === 'boolean'
              ? { recovering: message.error.recovering }
              : {}),
          }),
        );
      return;
    }
    switch (message.event) {
      case 'ready':
        n.ready = true;
        break;
      case 'role':
        n.role = message.role;
        n.term = message.term;
        n.leaderId = message.leaderId;
        n.recovering = message.recovering === true;
        if (message.role === 'leader') n.leaderSinceMs = message.atMs;
        break;
      case 'leader':
        n.leaderId = message.nodeId;
        if (typeof message.term === 'number' && (n.term === undefined || message.term > n.term))
          n.term = message.term;
        break;
      case 'change':
        n.changes.push(message);
        break;
      default:
        break;
    }
    const { from, ...rest } = message;
    // pid tells one incarnation of a node from the next (a restarted memory node forgot everything).
    record({ pid: n.pid, ...rest, node: from ?? n.id });
  };

  const keepTail = (n, chunk) => {
    n.output = (n.output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
    if (options.onOutput) {
      for (const line of chunk.toString('utf8').split('\n'))
        if (line.length > 0) options.onOutput(`[${n.id}] ${line}`);
    }
  };

  /** Forks the process of `id`; resolves when it reports ready. */
  const spawnNode = (id, overrides) => {
    const child = fork(NODE_SCRIPT, [JSON.stringify(configOf(id, overrides))], {
      execArgv: [],
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const n = {
      id,
      child,
      pid: child.pid,
      alive: true,
      ready: false,
      role: undefined,
      term: undefined,
      leaderId: null,
      leaderSinceMs: undefined,
      pending: new Map(),
      changes: [],
      output: '',
    };
    nodes.set(id, n);
    n.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        n.alive = false;
        n.ready = false;
        n.role = undefined;
        n.leaderId = null;
        for (const pending of n.pending.values()) {
          clearTimeout(pending.timer);
          pending.reject(
            codedError('NODE_EXITED', `${id} exited (${signal ?? code}) before answering ${pending.cmd}`, {
              nodeId: id,
            }),
          );
        }
        n.pending.clear();
        record({ event: 'exit', node: id, pid: child.pid, code, signal });
        resolve({ code, signal });
      });
    });
    child.stdout.on('data', (chunk) => keepTail(n, chunk));
    child.stderr.on('data', (chunk) => keepTail(n, chunk));
    child.on('message', (message) => onNodeMessage(n, message));
    child.on('error', (error) => record({ event: 'process-error', node: id, error: error.message }));
    record({ event: 'spawn', node: id, pid: child.pid });
    return waitFor(
      () => {
        if (n.ready) return n;
        if (!n.alive) {
          throw codedError('START_FAILED', `${id} exited before it was ready:\n${n.output}`, { nodeId: id });
        }
        return null;
      },
      { timeoutMs: options.startTimeoutMs ?? 15_000, label: `${id} to start` },
    );
  };

  const nodeOf = (id) => {
    const n = nodes.get(id);
    if (!n) throw codedError('INVALID_ARGUMENT', `no node ${JSON.stringify(id)} (nodes: ${ids.join(', ')})`);
    return n;
  };

  /**
   * Sends one command to a node and resolves with its result; rejects with the node's error (and
   * its code), NODE_DOWN, NODE_EXITED, or CALL_TIMEOUT after `timeoutMs`.
   */
  const call = (id, command, { timeoutMs = callTimeoutMs } = {}) => {
    const n = nodeOf(id);
    if (!n.alive || !n.child.connected) {
      return Promise.reject(codedError('NODE_DOWN', `${id} is not running`, { nodeId: id }));
    }
    const callId = nextCallId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        n.pending.delete(callId);
        reject(
          codedError('CALL_TIMEOUT', `${id} did not answer ${command.cmd} within ${timeoutMs} ms`, {
            nodeId: id,
          }),
        );
      }, timeoutMs);
      n.pending.set(callId, { resolve, reject, timer, cmd: command.cmd });
      try {
        n.child.send({ ...command, id: callId });
      } catch (error) {
        clearTimeout(timer);
        n.pending.delete(callId);
        reject(codedError('NODE_DOWN', `${id}: ${error.message}`, { nodeId: id }));
      }
    });
  };

  const isLive = (id) => nodes.get(id)?.alive === true;
  /** A live node that started without its state and has not recovered yet (reported with its role). */
  const isRecovering = (id) => nodes.get(id)?.alive === true && nodes.get(id)?.recovering === true;

  /** The leader as the live nodes report it now, or null: a live node in role leader whose term no live node exceeds. */
  const currentLeader = ({ exclude = [], minTerm = 0, agreed = false } = {}) => {
    const live = ids.filter((id) => nodes.get(id)?.alive && nodes.get(id)?.ready);
    const maxTerm = Math.max(-1, ...live.map((id) => nodes.get(id).term ?? -1));
    const leaderId = live.find((id) => {
      const n = nodes.get(id);
      return n.role === 'leader' && n.term === maxTerm && n.term >= minTerm && !exclude.includes(id);
    });
    if (leaderId === undefined) return null;
    if (agreed && !live.every((id) => nodes.get(id).leaderId === leaderId)) return null;
    const n = nodes.get(leaderId);
    return { leaderId, term: n.term, atMs: n.leaderSinceMs, relMs: n.leaderSinceMs - t0 };
  };

  /**
   * Waits until a live node leads (see currentLeader): `exclude` ids that may not count (a node
   * just killed), `minTerm`, and `agreed: true` to also wait until every live node follows it.
   */
  const waitForLeader = (timeoutMs = 10_000, filter = {}) =>
    waitFor(() => currentLeader(filter), {
      timeoutMs,
      label: `a leader${filter.exclude?.length ? ` other than ${filter.exclude.join(', ')}` : ''}${
        filter.agreed ? ' that every live node follows' : ''
      }`,
    });

  /** Sends `signal` (default SIGKILL) and resolves once the process has exited, with the kill time. */
  const kill = async (id, signal = 'SIGKILL', { timeoutMs = 5000 } = {}) => {
    const n = nodeOf(id);
    if (!n.alive) throw codedError('NODE_DOWN', `${id} is not running`, { nodeId: id });
    const entry = record({ event: 'kill', node: id, pid: n.child.pid, signal });
    n.child.kill(signal);
    let timer;
    const bound = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(codedError('WAIT_TIMEOUT', `${id} did not exit within ${timeoutMs} ms of ${signal}`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([n.exited, bound]);
    } finally {
      clearTimeout(timer);
    }
    return { atMs: entry.atMs, relMs: entry.relMs };
  };

  /**
   * Starts a stopped or killed node again: with `persistence` it replays its WAL (term, vote, log)
   * and catches up from there; without, it starts with empty memory and catches up from the leader.
   * `overrides` replace parts of the node's config for this start only (e.g. `{ forceRecovery: true }`
   * or other `peers`); a later restart without them goes back to the node's usual config.
   */
  const restart = async (id, overrides) => {
    const n = nodes.get(id) ?? (options.deferred?.includes(id) ? { alive: false } : nodeOf(id));
    if (n.alive) throw codedError('INVALID_ARGUMENT', `${id} is still running; kill it first`);
    record({ event: 'restart', node: id, ...(overrides ? { overrides: Object.keys(overrides) } : {}) });
    await spawnNode(id, overrides);
  };

  /** Ends every node (politely, then SIGKILL after the bound) and removes the temp dir. Idempotent. */
  const stop = async ({ timeoutMs = 5000 } = {}) => {
    if (stopping) return;
    stopping = true;
    process.off('exit', killAllNow);
    const live = [...nodes.values()].filter((n) => n.alive);
    await Promise.all(
      live.map(async (n) => {
        let timer;
        try {
          if (n.child.connected) n.child.send({ cmd: 'end', id: 0 });
          else n.child.kill('SIGTERM');
          await Promise.race([
            n.exited,
            new Promise((resolve) => {
              timer = setTimeout(resolve, timeoutMs);
            }),
          ]);
        } catch {
          // Falls through to SIGKILL.
        } finally {
          clearTimeout(timer);
        }
        if (n.alive) {
          n.child.kill('SIGKILL');
          await n.exited;
        }
      }),
    );
    listeners.clear();
    await cleanup();
  };

  /** Last resort when the parent exits without stop(): no child outlives it. */
  const killAllNow = () => {
    for (const n of nodes.values()) if (n.alive) n.child.kill('SIGKILL');
  };
  process.on('exit', killAllNow);

  try {
    await Promise.all(ids.filter((id) => !options.deferred?.includes(id)).map((id) => spawnNode(id)));
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    ids,
    host,
    dir,
    /** nodeId -> its WAL directory, when `persistence` is on. */
    dataDirs: options.persistence ? Object.fromEntries(ids.map((id) => [id, dataDirOf(id)])) : null,
    /** nodeId -> port */
    ports: Object.fromEntries(ids.map((id, i) => [id, ports[i]])),
    t0,
    timeline,
    call,
    set: (id, key, value, callOptions) => call(id, { cmd: 'set', key, value, options: callOptions }),
    get: (id, key, getOptions) => call(id, { cmd: 'get', key, options: getOptions }),
    delete: (id, key, callOptions) => call(id, { cmd: 'delete', key, options: callOptions }),
    status: (id) => call(id, { cmd: 'status' }),
    metrics: (id) => call(id, { cmd: 'metrics' }),
    /** Runs a bulk load inside the node (see cluster-node.mjs); the bound defaults to 10 minutes. */
    load: (id, loadOptions, { timeoutMs = 600_000 } = {}) =>
      call(id, { ...loadOptions, cmd: 'load' }, { timeoutMs }),
    waitFor,
    waitForLeader,
    currentLeader,
    kill,
    restart,
    stop,
    isLive,
    isRecovering,
    liveIds: () => ids.filter(isLive),
    /** What the parent last heard from a node: { alive, ready, pid, role, term, leaderId }. */
    state: (id) => {
      const n = nodeOf(id);
      return {
        alive: n.alive,
        ready: n.ready,
        pid: n.child.pid,
        role: n.role,
        term: n.term,
        leaderId: n.leaderId,
      };
    },
    /** Change events the node reported since it was last (re)started (needs changeEvents: true). */
    changes: (id) => nodeOf(id).changes,
    /** The last output of a node (stdout and stderr), for diagnostics. */
    output: (id) => nodeOf(id).output,
    /** Subscribes to every recorded event (change events included); returns an unsubscribe function. */
    on: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
};

/**
 * The role transitions of a timeline as lines of text, in time order: ms since `t0` (default: the
 * first entry), node, role, term and a short note; the parent's kills and restarts in between.
 * A candidate that keeps its term is in PreVote (it asks whether it could win, without disturbing
 * anyone); one that raised its term campaigns. A follower is annotated with the leader it learned
 * of in that term, when it did.
 *
 * @param {Array<Record<string, any>>} timeline  `cluster.timeline`
 * @param {{ t0?: number, indent?: string }} [options]
 */
export const formatRoleTimeline = (timeline, { t0, indent = '' } = {}) => {
  const entries = [...timeline].sort((a, b) => a.atMs - b.atMs);
  const start = t0 ?? entries[0]?.atMs ?? 0;
  const lastTerm = new Map();
  const leaderLearned = (from, node, term) => {
    for (let j = from + 1; j < entries.length; j += 1) {
      const next = entries[j];
      if (next.node !== node) continue;
      if (next.event === 'role' || next.event === 'exit') return null;
      if (next.event === 'leader' && next.nodeId && next.term === term) return next.nodeId;
    }
    return null;
  };
  const lines = [];
  entries.forEach((entry, i) => {
    const at = `${indent}${String(Math.round(entry.atMs - start)).padStart(6)} ms  ${String(entry.node).padEnd(8)}`;
    if (entry.event === 'role') {
      let note = '';
      if (entry.role === 'leader') note = '<- leader';
      else if (entry.role === 'candidate') {
        note =
          entry.term > (lastTerm.get(entry.node) ?? -1) && lastTerm.has(entry.node)
            ? 'campaigns: votes for itself, asks the others'
            : 'heard no leader: pre-vote, could it win?';
      } else {
        const leader = entry.leaderId ?? leaderLearned(i, entry.node, entry.term);
        if (leader) note = `follows ${leader}`;
      }
      lastTerm.set(entry.node, entry.term);
      lines.push(`${at} ${entry.role.padEnd(9)} term ${String(entry.term).padEnd(4)} ${note}`.trimEnd());
    } else if (entry.event === 'kill') {
      lines.push(`${at} *** killed with ${entry.signal} ***`);
      lastTerm.delete(entry.node);
    } else if (entry.event === 'restart') {
      lines.push(`${at} *** restarting ***`);
    }
  });
  return lines.join('\n');
};
