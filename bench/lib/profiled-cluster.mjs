/**
 * A minimal cluster launcher for profiling. scripts/cluster.mjs forks every node with
 * `execArgv: []` and Node 20 refuses `--cpu-prof` in NODE_OPTIONS, so this forks the same
 * `scripts/cluster-node.mjs` itself with `execArgv: ['--cpu-prof', '--cpu-prof-dir=DIR']`, reusing
 * cluster.mjs's `freePorts` and `nodeIds`, the library's `writeClusterCertificates`, and the node
 * protocol documented in cluster-node.mjs (config JSON in argv[2], commands over IPC). Each node
 * writes `CPU.<date>.<pid>.0.001.cpuprofile` into DIR when it exits normally (`end` command), so
 * stop() always ends nodes politely first. Every wait is bounded.
 */
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeClusterCertificates } from '../../dist/index.js';
import { freePorts, nodeIds } from '../../scripts/cluster.mjs';
import { bound, pollUntil } from './common.mjs';

const NODE_SCRIPT = fileURLToPath(new URL('../../scripts/cluster-node.mjs', import.meta.url));

export const startProfiledCluster = async ({
  nodes = 3,
  profileDir,
  electionTimeoutMs,
  extraConfig = {},
  execArgv = ['--cpu-prof', `--cpu-prof-dir=${profileDir}`],
}) => {
  const ids = nodeIds(nodes);
  const certDir = await mkdtemp(join(tmpdir(), 'diskeyval-bench-prof-'));
  await writeClusterCertificates(certDir, ids);
  const ports = await freePorts(ids.length);
  const children = new Map();
  let nextId = 1;

  const killNow = () => {
    for (const c of children.values()) if (c.alive) c.child.kill('SIGKILL');
  };
  process.on('exit', killNow);

  const spawnNode = (id, index) => {
    const config = {
      nodeId: id,
      host: '127.0.0.1',
      port: ports[index],
      peers: ids
        .filter((o) => o !== id)
        .map((o) => ({ nodeId: o, host: '127.0.0.1', port: ports[ids.indexOf(o)] })),
      certDir,
      traceRoles: false,
      transportEvents: 'none',
      ...(electionTimeoutMs ? { electionTimeoutMs } : {}),
      ...extraConfig,
    };
    const child = fork(NODE_SCRIPT, [JSON.stringify(config)], {
      execArgv,
      // Node's --perf-basic-prof makes V8 write isolate-*-v8.log into the working directory.
      ...(profileDir ? { cwd: profileDir } : {}),
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    const c = { id, child, pid: child.pid, alive: true, ready: false, pending: new Map(), stderr: '' };
    c.exited = new Promise((resolve) => {
      child.once('exit', () => {
        c.alive = false;
        for (const p of c.pending.values()) p.reject(new Error(`${id} exited`));
        c.pending.clear();
        resolve();
      });
    });
    child.stderr.on('data', (d) => {
      c.stderr = (c.stderr + d.toString()).slice(-4000);
    });
    child.on('message', (m) => {
      if (m?.event === 'ready') c.ready = true;
      if (m?.id !== undefined && m.event === undefined) {
        const p = c.pending.get(m.id);
        if (!p) return;
        c.pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.result);
        else p.reject(Object.assign(new Error(`${id}: ${m.error?.message}`), { code: m.error?.code }));
      }
    });
    children.set(id, c);
  };

  const call = (id, command, timeoutMs = 600_000) => {
    const c = children.get(id);
    if (!c?.alive) return Promise.reject(new Error(`${id} is not running`));
    const callId = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        c.pending.delete(callId);
        reject(new Error(`${id} did not answer ${command.cmd} within ${timeoutMs} ms`));
      }, timeoutMs);
      c.pending.set(callId, { resolve, reject, timer });
      c.child.send({ ...command, id: callId });
    });
  };

  const stop = async () => {
    process.off('exit', killNow);
    await Promise.all(
      [...children.values()].map(async (c) => {
        if (!c.alive) return;
        if (c.child.connected) c.child.send({ cmd: 'end', id: 0 });
        else c.child.kill('SIGTERM');
        await Promise.race([c.exited, bound(10_000)]);
        if (c.alive) {
          c.child.kill('SIGKILL');
          await Promise.race([c.exited, bound(5_000)]);
        }
      }),
    );
    await rm(certDir, { recursive: true, force: true });
  };

  try {
    ids.forEach(spawnNode);
    await pollUntil(() => [...children.values()].every((c) => c.ready), {
      timeoutMs: 20_000,
      everyMs: 50,
      label: `profiled nodes to start (${[...children.values()].map((c) => c.stderr).join(' ')})`,
    });
    const leader = await pollUntil(
      async () => {
        const s = await Promise.all(ids.map((id) => call(id, { cmd: 'status' }, 5_000)));
        const leaders = new Set(s.map((x) => x.leaderId));
        const l = s.find((x) => x.isLeader);
        return l && leaders.size === 1 ? l.nodeId : null;
      },
      { timeoutMs: 20_000, everyMs: 100, label: 'a leader every node follows' },
    );
    return {
      ids,
      leader,
      pids: Object.fromEntries([...children.values()].map((c) => [c.id, c.pid])),
      call,
      status: (id) => call(id, { cmd: 'status' }, 10_000),
      usage: (id) => call(id, { cmd: 'usage' }, 10_000),
      load: (id, options, timeoutMs = 600_000) => call(id, { ...options, cmd: 'load' }, timeoutMs),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
};
