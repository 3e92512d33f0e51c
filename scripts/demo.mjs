#!/usr/bin/env node
/**
 * `npm run demo`: a three-node diskeyval cluster on this machine, one process per node, mutual TLS
 * on 127.0.0.1. It writes and reads on every node, kills the leader with SIGKILL, shows the new
 * leader taking over and writes going on, restarts the killed node, and prints the timeline of
 * role transitions. Everything it starts (processes, a temp dir) is cleaned up, also on failure.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatRoleTimeline, nowMs, startCluster } from './cluster.mjs';

const DEMO_BOUND_MS = 30_000;
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const demoStart = nowMs();

const say = (text = '') => process.stdout.write(`${text}\n`);
const heading = (n, text) => say(`\n${n}. ${text}`);
const ms = (x) => `${Math.round(x)} ms`;
const show = (value) => (typeof value === 'string' ? JSON.stringify(value) : JSON.stringify(value));

let cluster;
let dir;
let cleaning;

const cleanup = () => {
  cleaning ??= (async () => {
    try {
      await cluster?.stop({ timeoutMs: 2000 });
    } finally {
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  })();
  return cleaning;
};

const fail = async (error) => {
  process.stderr.write(`\ndemo failed: ${error?.stack ?? error}\n`);
  await cleanup().catch(() => undefined);
  process.exit(1);
};

const watchdog = setTimeout(
  () => void fail(new Error(`the demo did not finish within ${DEMO_BOUND_MS / 1000} s`)),
  DEMO_BOUND_MS,
);
watchdog.unref();
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => void cleanup().finally(() => process.exit(130)));
}

/** Runs the diskeyval CLI as a user would, bounded. */
const runCli = (args) =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
    });
    child.stderr.on('data', (chunk) => {
      output += chunk;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`diskeyval ${args.join(' ')} exited ${code}:\n${output}`));
    });
  });

const timed = async (fn) => {
  const started = nowMs();
  const result = await fn();
  return { result, ms: nowMs() - started };
};

const main = async () => {
  say('diskeyval demo: a Raft-replicated key/value store, three nodes, each in its own process,');
  say('talking mutual TLS on 127.0.0.1. Every node serves every call: followers forward to the leader.');

  heading(1, 'Certificates: a private cluster CA and one certificate per node');
  dir = await mkdtemp(join(tmpdir(), 'diskeyval-demo-'));
  const ids = ['node-1', 'node-2', 'node-3'];
  say(`   $ diskeyval certs --out ${dir} --nodes ${ids.join(',')}`);
  const output = await runCli(['certs', '--out', dir, '--nodes', ids.join(',')]);
  for (const line of output.trim().split('\n')) say(`   ${line}`);

  heading(2, 'Starting three nodes');
  cluster = await startCluster({ ids, dir, existingCerts: true, changeEvents: false });
  for (const id of ids) say(`   ${id}  127.0.0.1:${cluster.ports[id]}  pid ${cluster.state(id).pid}`);
  const first = await cluster.waitForLeader(5000, { agreed: true });
  say(`   -> ${first.leaderId} was elected leader for term ${first.term}, ${ms(first.relMs)} after launch`);

  heading(3, 'A write on every node (a set resolves once a majority has it)');
  const values = {};
  for (const id of ids) {
    const key = `greeting:${id}`;
    values[key] = `hello from ${id}`;
    const { ms: took } = await timed(() => cluster.set(id, key, values[key]));
    const how = id === first.leaderId ? 'on the leader' : `forwarded to ${first.leaderId}`;
    say(`   ${id}  set ${key.padEnd(16)} = ${show(values[key]).padEnd(20)} ${how.padEnd(20)} ${ms(took)}`);
  }
  say('\n   Every key read back on every node (linearizable get):');
  say(`   ${''.padEnd(18)}${ids.map((id) => id.padEnd(10)).join('')}`);
  for (const key of Object.keys(values)) {
    const cells = [];
    for (const id of ids) cells.push((await cluster.get(id, key)) === values[key] ? 'ok' : 'MISSING');
    say(`   ${key.padEnd(18)}${cells.map((cell) => cell.padEnd(10)).join('')}`);
    if (cells.some((cell) => cell !== 'ok')) throw new Error(`${key} was not read back on every node`);
  }

  heading(4, `kill -9 the leader, ${first.leaderId} (pid ${cluster.state(first.leaderId).pid})`);
  const killed = await cluster.kill(first.leaderId, 'SIGKILL');
  const second = await cluster.waitForLeader(5000, { exclude: [first.leaderId] });
  say(
    `   -> ${second.leaderId} took over as leader for term ${second.term}, ${ms(second.atMs - killed.atMs)} after the kill`,
  );

  heading(5, 'Writes go on with two of three nodes (still a majority)');
  const survivors = ids.filter((id) => id !== first.leaderId);
  for (const id of survivors) {
    const key = `after-kill:${id}`;
    values[key] = `written on ${id} while ${first.leaderId} was down`;
    const { ms: took } = await timed(() => cluster.set(id, key, values[key]));
    say(`   ${id}  set ${key.padEnd(18)} ${ms(took)}`);
  }
  for (const id of survivors) {
    for (const key of Object.keys(values)) {
      if ((await cluster.get(id, key)) !== values[key]) throw new Error(`${key} is missing on ${id}`);
    }
  }
  say(`   every key (${Object.keys(values).length}) reads back on ${survivors.join(' and ')}`);

  heading(6, `Restart ${first.leaderId}: it comes back empty (memory only) and catches up from the leader`);
  const { ms: restartMs } = await timed(() => cluster.restart(first.leaderId));
  await cluster.waitForLeader(5000, { agreed: true });
  const caughtUp = [];
  for (const key of Object.keys(values)) {
    if ((await cluster.get(first.leaderId, key)) === values[key]) caughtUp.push(key);
  }
  say(
    `   restarted in ${ms(restartMs)}; it follows ${second.leaderId} and reads ${caughtUp.length} of ${
      Object.keys(values).length
    } keys, including those written while it was down`,
  );
  if (caughtUp.length !== Object.keys(values).length) throw new Error(`${first.leaderId} did not catch up`);

  heading(7, 'Timeline of role transitions (ms since launch)');
  say(formatRoleTimeline(cluster.timeline, { t0: cluster.t0, indent: '   ' }));

  await cleanup();
  say(
    `\nDone in ${((nowMs() - demoStart) / 1000).toFixed(1)} s; all node processes stopped and the temp dir removed.`,
  );
};

main().then(
  () => {
    clearTimeout(watchdog);
    process.exit(0);
  },
  (error) => fail(error),
);
