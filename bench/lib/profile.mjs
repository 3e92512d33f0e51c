/**
 * `npm run bench -- --profile`: CPU profiles (`node --cpu-prof`) of every node while W1 c=64, W2
 * c=64 (the workloads issue 5 asks about) and W1 c=1 run on the leader, each in a fresh 3-node
 * memory cluster (so one profile file per node per workload), and the top self-time functions of
 * the workload's timed window, for the leader and one follower. The window is cut out of the
 * whole-process profile by timestamp: the profile's clock is the monotonic clock, the same as
 * process.hrtime in this process. Beside each window: frames sent and batches per op, from the
 * nodes' metrics, which tell how well calls are batched.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { summarizeProfile, summaryText } from '../cpuprofile-summary.mjs';
import { bound, fmtInt, fmtMs, fmtNum, markdownTable, sleep } from './common.mjs';
import { startProfiledCluster } from './profiled-cluster.mjs';

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const KEY_PREFIX = 'key-';

const counters = async (cluster) => {
  const ms = await Promise.all(cluster.ids.map((id) => cluster.call(id, { cmd: 'metrics' }, 10_000)));
  const sum = (f) => ms.reduce((a, m) => a + (f(m) ?? 0), 0);
  return {
    framesOut: sum((m) => m.transport?.framesOut),
    bytesOut: sum((m) => m.transport?.bytesOut),
    proposalBatches: sum((m) => (m.role === 'leader' ? m.proposalBatches : 0)),
    readBatches: sum((m) => (m.role === 'leader' ? m.readBatches : 0)),
    elections: sum((m) => m.elections),
  };
};

/**
 * `perf record` of one process (real CPU: native, kernel and JIT code; the nodes run with
 * --perf-basic-prof so JIT frames have names). V8's own sampler charges time spent in native code
 * outside JavaScript (TLS, libuv, the kernel) to the last native entry it saw, `writeBuffer`, and
 * does not see the compiler and GC threads: perf is the cross-check.
 */
const startPerf = async (pid, file) => {
  const child = spawn('perf', ['record', '-F', '999', '-g', '-p', String(pid), '-o', file], {
    stdio: 'ignore',
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.once('error', () => {});
  await sleep(300); // perf attaches
  return {
    stop: async () => {
      child.kill('SIGINT');
      await Promise.race([exited, bound(15_000)]);
      return file;
    },
  };
};

const perfLines = (args) => {
  const r = spawnSync('perf', args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: 120_000 });
  return (r.stdout ?? '').split('\n').filter((l) => /^\s+[\d.]+%/.test(l));
};

/** Where the leader's real CPU went: by binary, and inclusive shares of the parts that matter here. */
const perfSummary = (file, leader) => {
  const dso = perfLines(['report', '-i', file, '--no-children', '--sort', 'dso', '--stdio', '-g', 'none'])
    .slice(0, 5)
    .map((l) => l.trim().replace(/\s+/, ' '));
  const children = perfLines(['report', '-i', file, '--children', '--sort', 'sym', '--stdio', '-g', 'none']);
  const share = (re) => {
    const line = children.find((l) => re.test(l));
    return line ? Number(/^\s+([\d.]+)%/.exec(line)[1]) : 0;
  };
  const parts = [
    ['TLS write path (TLSWrap::DoWrite, kernel send included)', /TLSWrap::DoWrite$/],
    ['TLS read path and all JavaScript it triggers (TLSWrap::ClearOut)', /TLSWrap::ClearOut$/],
    ['JavaScript run from setImmediate (transport flush)', /JS:[*^~]?processImmediate /],
    ['JavaScript run from microtasks (calls, flushes)', /JS:[*^~]?processTicksAndRejections /],
    ['XState macrostep', /JS:[*^~]?macrostep /],
    ['scavenges on the main thread (Heap::Scavenge)', /v8::internal::Heap::Scavenge$/],
    ['GC helper threads (ScavengerCollector::JobTask::Run)', /ScavengerCollector::JobTask::Run$/],
    ['TurboFan compiling on a background thread', /OptimizingCompileDispatcher::CompileTask::RunInternal$/],
    ['system calls (entry_SYSCALL_64)', /entry_SYSCALL_64_after_hwframe$/],
  ];
  return [
    `#### perf (real CPU) of the leader ${leader}: by binary ${dso.join('; ')}\n`,
    markdownTable(
      ['incl. %', 'where'],
      parts.map(([label, re]) => [share(re).toFixed(1), label]),
      ['r', 'l'],
    ),
    `\n(perf report -i ${file} --children --sort sym --stdio for everything)`,
  ].join('\n');
};

export const runProfile = async ({
  ops,
  warmup,
  jitWarmup = 3000,
  valueBytes,
  nodes,
  electionTimeoutMs,
  outDir,
  log,
  perf = false,
}) => {
  const workloads = [
    { name: 'W1 set c=64', kind: 'set', concurrency: 64, ops },
    { name: 'W2 get (linearizable) c=64', kind: 'get', concurrency: 64, ops },
    { name: 'W1 set c=1', kind: 'set', concurrency: 1, ops: Math.min(ops, 5000) },
  ];
  const keySpace = 10_000;
  const windows = [];
  const summaries = [];
  const parts = [
    `## CPU profiles (--cpu-prof; ${nodes} nodes in memory; a fresh cluster per workload; load on the leader)\n`,
  ];
  let flagged = false;
  for (const [index, w] of workloads.entries()) {
    const dir = join(outDir, `${index + 1}-${w.kind}-c${w.concurrency}`);
    await mkdir(dir, { recursive: true });
    const execArgv = ['--cpu-prof', `--cpu-prof-dir=${dir}`, ...(perf ? ['--perf-basic-prof'] : [])];
    const cluster = await startProfiledCluster({ nodes, profileDir: dir, electionTimeoutMs, execArgv });
    let perfFile = null;
    const { leader } = cluster;
    const follower = cluster.ids.find((id) => id !== leader);
    const space = w.kind === 'set' ? keySpace : Math.min(keySpace, w.ops);
    const base = {
      valueBytes,
      keyPrefix: KEY_PREFIX,
      kind: w.kind,
      concurrency: w.concurrency,
      keySpace: space,
    };
    let window;
    try {
      if (w.kind !== 'set') {
        await cluster.load(leader, { ...base, kind: 'set', concurrency: 64, count: space });
      }
      // The same process warm-up as the benchmark's (JIT settled), then the workload's own warm-up.
      for (const [kind, concurrency, n] of [
        ['set', 64, jitWarmup],
        ['set', 1, Math.ceil(jitWarmup / 5)],
        ['get', 64, jitWarmup],
      ]) {
        if (n > 0)
          await cluster.load(leader, {
            valueBytes,
            keyPrefix: 'warm-',
            keySpace: 1000,
            kind,
            concurrency,
            count: n,
          });
      }
      if (warmup > 0) await cluster.load(leader, { ...base, count: warmup });
      const termBefore = (await cluster.status(leader)).term;
      const c0 = await counters(cluster);
      const u0 = await Promise.all(cluster.ids.map((id) => cluster.usage(id)));
      const recorder = perf ? await startPerf(cluster.pids[leader], join(dir, 'perf-leader.data')) : null;
      const fromUs = nowUs();
      const r = await cluster.load(leader, { ...base, count: w.ops });
      const toUs = nowUs();
      if (recorder) perfFile = await recorder.stop();
      const u1 = await Promise.all(cluster.ids.map((id) => cluster.usage(id)));
      const c1 = await counters(cluster);
      // Real CPU (process.cpuUsage, user / system) per op, per node: the profile's sample time is wall
      // time in JS or native code, which includes time the process waited for a CPU.
      const cpuUsPerOp = Object.fromEntries(
        cluster.ids.map((id, i) => [
          id,
          {
            user: ((u1[i].cpuUserS - u0[i].cpuUserS) * 1e6) / w.ops,
            system: ((u1[i].cpuSystemS - u0[i].cpuSystemS) * 1e6) / w.ops,
          },
        ]),
      );
      const termAfter = (await cluster.status(leader)).term;
      const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
      if (errors > 0 || termAfter !== termBefore || r.ok !== w.ops || c1.elections !== c0.elections)
        flagged = true;
      const perOp = Object.fromEntries(Object.keys(c0).map((k) => [k, (c1[k] - c0[k]) / w.ops]));
      window = {
        ...w,
        leader,
        follower,
        fromUs,
        toUs,
        opsPerS: r.opsPerS,
        p50Ms: r.latencyMs.p50,
        p99Ms: r.latencyMs.p99,
        errors: r.errors,
        termBefore,
        termAfter,
        perOp,
        cpuUsPerOp,
      };
      windows.push(window);
      log(
        `profile ${w.name}: ${fmtInt(r.opsPerS)} ops/s (profiler on), p50 ${fmtMs(r.latencyMs.p50)} ms, errors ${errors}`,
      );
    } finally {
      await cluster.stop();
    }
    const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'));
    const fileOf = (id) => files.find((f) => f.split('.').includes(String(cluster.pids[id])));
    const batches = w.kind === 'set' ? window.perOp.proposalBatches : window.perOp.readBatches;
    parts.push(
      `### ${w.name}: ${fmtInt(window.opsPerS)} ops/s with the profiler on, p50 ${fmtMs(window.p50Ms)} ms; ` +
        `per op: ${fmtNum(window.perOp.framesOut, 3)} frames sent (all nodes), ${fmtNum(window.perOp.bytesOut, 0)} bytes, ` +
        `${fmtNum(batches, 3)} leader ${w.kind === 'set' ? 'proposal' : 'read'} batches (${fmtNum(batches > 0 ? 1 / batches : 0, 1)} ops per batch)\n`,
    );
    if (perfFile) parts.push(perfSummary(perfFile, leader), '');
    // perf needed the JIT symbol maps (--perf-basic-prof) until now.
    if (perf)
      for (const pid of Object.values(cluster.pids)) await rm(`/tmp/perf-${pid}.map`, { force: true });
    for (const [role, id] of [
      ['leader', leader],
      ['follower', follower],
    ]) {
      const file = fileOf(id);
      if (!file) {
        parts.push(`(no profile written by ${id})\n`);
        continue;
      }
      const profile = JSON.parse(await readFile(join(dir, file), 'utf8'));
      const s = summarizeProfile(profile, { fromUs: window.fromUs, toUs: window.toUs, top: 25 });
      summaries.push({ workload: w.name, role, nodeId: id, file: join(dir, file), ...s });
      parts.push(
        summaryText(s, {
          title:
            `${role} ${id}: ${((s.busyMs / w.ops) * 1000).toFixed(1)} us of samples per op; process CPU per op ` +
            `${fmtNum(window.cpuUsPerOp[id].user, 1)} us user + ${fmtNum(window.cpuUsPerOp[id].system, 1)} us system`,
          top: role === 'leader' ? 20 : 10,
        }),
        '',
      );
    }
  }
  parts.push(
    "Reading these: V8's sampler charges time spent in native code outside JavaScript (TLS decryption, " +
      'libuv, the kernel) to the last native entry it saw, usually `writeBuffer`, and it does not see the ' +
      'compiler and GC helper threads; `process CPU per op` above is the real figure. `--profile --perf` adds a ' +
      'perf record of the leader (real CPU, kernel included) as a cross-check.\n',
  );
  parts.push(`profiles and this summary: ${outDir}`);
  const text = parts.join('\n');
  await writeFile(join(outDir, 'summary.md'), `${text}\n`);
  await writeFile(join(outDir, 'summary.json'), `${JSON.stringify({ windows, summaries }, null, 2)}\n`);
  return { windows, summaries, outDir, text, flagged };
};
