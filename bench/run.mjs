#!/usr/bin/env node
/**
 * `npm run bench` — diskeyval's benchmark (issue 5). See bench/README.md.
 *
 *   npm run bench                          W1 (c=1, 64), W2, W3 on the leader, then a follower;
 *                                          in memory, and with persistence when the nodes support it
 *   npm run bench -- --vs etcd             the same against a 3-member etcd on 127.0.0.1 (mTLS),
 *                                          fsync on and --unsafe-no-fsync, with ratios per row
 *   npm run bench -- --scaling             throughput for 3 and 5 nodes, value sizes, p99 vs concurrency
 *   npm run bench -- --memory              RSS of nodes holding 1,000,000 keys of 100 B vs the raw size
 *   npm run bench -- --mixed               64 writers + 64 linearizable readers at once, on the leader and a
 *                                          follower; read p50/p99 vs reads alone (--ops: reads per phase,
 *                                          --writers N: concurrent writers, 64)
 *   npm run bench -- --profile             --cpu-prof of every node for W1 c=64, W2 and W1 c=1; top self
 *                                          time (--perf: also `perf record` of the leader, real CPU)
 *   npm run bench -- --inspect             W1 c=1 on the leader without an inspector, with
 *                                          @statelyai/inspect's WebSocket inspector on every node (a
 *                                          client reads the socket; default budget, then no budget)
 *                                          and with a plain callback; ratios, events sent and kept
 *                                          back, socket bytes per write, whether the leader held
 *                                          (--ops: 3000, --jit-warmup: 3000, --time-limit S: 60 per phase)
 *   node bench/ab.mjs --a DIR --b DIR      two built checkouts interleaved, with an A-against-A noise floor
 *
 * Options: --ops N (5000) --warmup N (500) --value-size B (100) --concurrency 1,64 (W1 runs at each,
 * W2/W3 at the largest) --nodes 3|5 --quick (1000 ops, 100 warm-up) --modes memory,persistence
 * --no-follower --election-timeout MS (1000, as etcd's default) --keys N (--memory, 1000000)
 * --time-limit S (--memory, 300) --wait-quiet S (wait up to S s for a quiet machine first, 0)
 * --repeat N (1): run every timed phase N times, report the one with the median ops/s (all in the JSON)
 * --jit-warmup N (3000; 1000 with --quick; 0: none): untimed sets/gets on each measured node (and
 * etcd member) before its workloads, so the JIT has settled (see bench/README.md)
 * --perf (with --profile: also `perf record` of the leader) --out DIR (.bench-out).
 * --rows w1c1,w1c64,w2c64,w3c64: only these workloads (W1 sets, W2 linearizable gets, W3 local gets,
 * at concurrency c), instead of W1 at every --concurrency and W2/W3 at the largest.
 * --checkout DIR: run the nodes of another built checkout (its scripts/cluster.mjs, its dist/) with
 * this benchmark (bench/ab.mjs uses it).
 *
 * Exit code 2 when a workload lost or failed a call or saw an election (the row says FLAG).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  backgroundLoad,
  fmtInt,
  fmtMB,
  fmtMs,
  fmtNum,
  MB,
  machineBusySeconds,
  machineInfo,
  markdownTable,
  round,
  sleep,
} from './lib/common.mjs';
import {
  libraryMentionsPersistence,
  rolesOf,
  runDiskeyvalWorkload,
  startDiskeyvalCluster,
  stopDiskeyvalCluster,
  verifyPersistence,
  warmUpDiskeyval,
} from './lib/diskeyval-side.mjs';
import { detectEtcd, INSTALL_HINT, runEtcdWorkload, startEtcdCluster, warmUpEtcd } from './lib/etcd-side.mjs';
import { runInspect } from './lib/inspect.mjs';
import { runMemory } from './lib/memory.mjs';
import { mixedTable, runMixed } from './lib/mixed.mjs';
import { runProfile } from './lib/profile.mjs';
import {
  etcdTable,
  evaluateTargets,
  mainTable,
  targetsTable,
  WORKLOAD_NAMES,
  withRatios,
} from './lib/report.mjs';

const { values: opt } = parseArgs({
  options: {
    ops: { type: 'string' },
    warmup: { type: 'string' },
    'value-size': { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '1,64' },
    nodes: { type: 'string', default: '3' },
    vs: { type: 'string' },
    quick: { type: 'boolean', default: false },
    scaling: { type: 'boolean', default: false },
    memory: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    mixed: { type: 'boolean', default: false },
    writers: { type: 'string', default: '64' },
    modes: { type: 'string' },
    'no-follower': { type: 'boolean', default: false },
    'election-timeout': { type: 'string', default: '1000' },
    keys: { type: 'string', default: '1000000' },
    'time-limit': { type: 'string' },
    'wait-quiet': { type: 'string', default: '0' },
    'jit-warmup': { type: 'string' },
    repeat: { type: 'string', default: '1' },
    perf: { type: 'boolean', default: false },
    inspect: { type: 'boolean', default: false },
    rows: { type: 'string' },
    checkout: { type: 'string' },
    out: { type: 'string', default: '.bench-out' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

const int = (text, name, min = 1) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${text}`);
  return n;
};

const ROW_KINDS = { w1: 'set', w2: 'get', w3: 'getLocal' };

/** `w1c64` -> { kind: 'set', concurrency: 64 } (see --rows). */
const parseRow = (row) => {
  const match = /^(w[123])c(\d+)$/.exec(row);
  if (!match || Number(match[2]) < 1) throw new Error(`--rows: ${row} is not w1cN, w2cN or w3cN`);
  return { kind: ROW_KINDS[match[1]], concurrency: Number(match[2]) };
};

if (opt.help) {
  const { readFile } = await import('node:fs/promises');
  const source = await readFile(new URL(import.meta.url), 'utf8');
  console.log(
    /\/\*\*([\s\S]*?)\*\//
      .exec(source)[1]
      .replace(/^ \* ?/gm, '')
      .trim(),
  );
  process.exit(0);
}

const config = {
  ops: int(opt.ops ?? (opt.quick ? '1000' : '5000'), 'ops'),
  warmup: int(opt.warmup ?? (opt.quick ? '100' : '500'), 'warmup', 0),
  valueBytes: int(opt['value-size'], 'value-size'),
  concurrency: opt.concurrency.split(',').map((c) => int(c.trim(), 'concurrency')),
  nodes: int(opt.nodes, 'nodes', 1),
  keySpace: 10_000,
  vsEtcd: opt.vs === 'etcd',
  modes: (opt.modes ?? 'memory,persistence').split(',').map((m) => m.trim()),
  follower: !opt['no-follower'],
  electionTimeoutMs: int(opt['election-timeout'], 'election-timeout', 10),
  quick: opt.quick,
  repeat: int(opt.repeat, 'repeat'),
  jitWarmup: int(opt['jit-warmup'] ?? (opt.quick ? '1000' : '3000'), 'jit-warmup', 0),
  rows: opt.rows === undefined ? null : opt.rows.split(',').map((row) => parseRow(row.trim())),
  checkout: opt.checkout === undefined ? undefined : resolve(opt.checkout),
};
if (opt.vs !== undefined && opt.vs !== 'etcd') throw new Error(`--vs takes only "etcd", not ${opt.vs}`);
if (![3, 5].includes(config.nodes)) console.warn(`note: --nodes ${config.nodes} (the issue asks for 3 or 5)`);
for (const m of config.modes)
  if (!['memory', 'persistence'].includes(m)) throw new Error(`unknown mode ${m}`);
config.readConcurrency = Math.max(...config.concurrency);
if (config.rows) config.concurrency = [...new Set(config.rows.map((row) => row.concurrency))];

// Ctrl-C / kill: exit through 'exit', whose handlers (cluster.mjs, etcd-side.mjs) kill every child by PID.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));

const OUT_DIR = resolve(opt.out);
const startedAt = new Date();
const t0 = performance.now();
const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
const log = (...a) => console.error('[bench]', ...a);

/** Waits (bounded) until the machine is under 25 % busy over 2 s windows; returns what it saw. */
const waitQuiet = async (seconds) => {
  if (seconds <= 0) return null;
  const deadline = Date.now() + seconds * 1000;
  let pct = 100;
  for (let i = 0; i < 1000 && Date.now() < deadline; i += 1) {
    const a = machineBusySeconds();
    await sleep(2000);
    pct = round((100 * (machineBusySeconds() - a)) / (2 * os.cpus().length), 0);
    if (pct <= 25) return { quiet: true, busyPct: pct };
    log(`machine ${pct}% busy, waiting for quiet (up to ${seconds} s)`);
  }
  return { quiet: false, busyPct: pct };
};

const workloadsFor = (cfg) =>
  cfg.rows ?? [
    ...cfg.concurrency.map((c) => ({ kind: 'set', concurrency: c })),
    { kind: 'get', concurrency: cfg.readConcurrency },
    { kind: 'getLocal', concurrency: cfg.readConcurrency },
  ];

const specOf = (w, cfg) => ({
  ...w,
  ops: cfg.ops,
  warmup: cfg.warmup,
  valueBytes: cfg.valueBytes,
  keySpace: cfg.keySpace,
});

const describe = (r) =>
  `${fmtInt(r.opsPerS)} ops/s p50 ${fmtMs(r.p50Ms)} p99 ${fmtMs(r.p99Ms)} ms, ${r.errors} errors, ` +
  `terms ${JSON.stringify(r.termsAfter)}${r.otherCpuPct > 50 ? `, other load ${r.otherCpuPct}% of a core` : ''}${r.flagged ? '  FLAG' : ''}`;

/** The repetition with the median ops/s, with every repetition's ops/s in `repeats`; flagged if any was. */
const medianOf = (results) => {
  const sorted = [...results].sort((a, b) => (a.opsPerS ?? 0) - (b.opsPerS ?? 0));
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  return {
    ...median,
    repeats: results.map((r) => r.opsPerS),
    flagged: results.some((r) => r.flagged),
    errors: results.reduce((a, r) => a + r.errors, 0),
    lost: results.reduce((a, r) => a + r.lost, 0),
    electionSuspected: results.some((r) => r.electionSuspected),
  };
};

/**
 * Runs `workloads` on a fresh diskeyval cluster (`storage` memory or persistence) and, with
 * `etcdFsync` not null, on a fresh 3-member etcd cluster (fsync on or --unsafe-no-fsync) started
 * beside it: leader first, then a follower (etcd: the member that leads, then one that follows).
 * Each workload runs on diskeyval, then at once on etcd, `cfg.repeat` times in turn, so both see
 * the same background load as far as possible: on a shared machine it drifts over minutes, and
 * the ratios are what this is for. A persistence cluster whose nodes write nothing to disk gives
 * n/a rows (etcd still runs).
 */
const runSideBySide = async (storage, etcdFsync, workloads, cfg) => {
  const roles = cfg.follower ? ['leader', 'follower'] : ['leader'];
  const rows = [];
  const eRows = [];
  let probe = null;
  log(`diskeyval ${storage}: starting ${cfg.nodes} nodes`);
  const run = await startDiskeyvalCluster({
    nodes: cfg.nodes,
    persistence: storage === 'persistence',
    electionTimeoutMs: cfg.electionTimeoutMs,
    checkout: cfg.checkout,
  });
  let etcdCluster = null;
  try {
    const { leader, follower } = await rolesOf(run);
    let dkvOk = true;
    if (storage === 'persistence') {
      await run.cluster.set(leader, 'persistence-probe', 'x');
      probe = await verifyPersistence(run);
      log(`persistence probe: ${probe.files} files, ${probe.bytes} bytes written`);
      if (!probe.supported) {
        dkvOk = false;
        for (const role of roles) {
          for (const w of workloads) {
            rows.push({
              system: 'diskeyval',
              storage,
              role,
              ...w,
              na: true,
              naReason: 'n/a: nodes wrote nothing to disk',
            });
          }
        }
      }
    }
    if (etcdFsync !== null) {
      log(`etcd ${etcdFsync ? 'fsync on' : '--unsafe-no-fsync'}: starting 3 members`);
      etcdCluster = await startEtcdCluster({ fsync: etcdFsync });
    }
    const etcdLabel = etcdFsync ? 'fsync' : 'no-fsync';
    for (const role of roles) {
      const nodeId = role === 'leader' ? leader : follower;
      const member = etcdCluster ? (role === 'leader' ? etcdCluster.leader : etcdCluster.follower) : null;
      if (cfg.jitWarmup > 0) {
        const warm = { count: cfg.jitWarmup, valueBytes: Math.min(cfg.valueBytes, 1024) };
        if (dkvOk) {
          const errors = await warmUpDiskeyval(run, nodeId, warm);
          if (Object.keys(errors).length)
            log(`diskeyval ${storage} ${role}: warm-up errors ${JSON.stringify(errors)}`);
        }
        if (member) {
          const errors = await warmUpEtcd(etcdCluster, member, warm);
          if (Object.keys(errors).length) log(`etcd ${role}: warm-up errors ${JSON.stringify(errors)}`);
        }
      }
      for (const w of workloads) {
        const dkv = [];
        const etc = [];
        for (let i = 0; i < cfg.repeat; i += 1) {
          if (dkvOk) dkv.push(await runDiskeyvalWorkload(run, nodeId, specOf(w, cfg)));
          if (member) etc.push(await runEtcdWorkload(etcdCluster, member, specOf(w, cfg)));
        }
        if (dkvOk) {
          const row = { ...medianOf(dkv), storage, role, nodeId, nodes: cfg.nodes };
          log(`diskeyval ${storage} ${role} ${WORKLOAD_NAMES[w.kind]} c=${w.concurrency}: ${describe(row)}`);
          rows.push(row);
        }
        if (member) {
          const row = { ...medianOf(etc), role, member: member.name, nodes: 3 };
          log(`etcd ${etcdLabel} ${role} ${WORKLOAD_NAMES[w.kind]} c=${w.concurrency}: ${describe(row)}`);
          eRows.push(row);
        }
      }
    }
    if (dkvOk && storage === 'persistence') probe = await verifyPersistence(run);
    return { rows, etcdRows: eRows, probe };
  } finally {
    await etcdCluster?.stop();
    await stopDiskeyvalCluster(run);
  }
};

const diskeyvalRows = (storage, workloads, cfg) => runSideBySide(storage, null, workloads, cfg);

// ---- the modes ------------------------------------------------------------------------------------

const persistenceHint = await libraryMentionsPersistence();

const mainRun = async () => {
  const etcd = config.vsEtcd ? detectEtcd() : null;
  if (config.vsEtcd && !etcd) console.log(`\n${INSTALL_HINT}\nSkipping the etcd part.\n`);
  if (etcd && !etcd.noFsync) {
    log(`this etcd (${etcd.version}) does not accept --unsafe-no-fsync: memory rows have no etcd peer`);
  }
  const workloads = workloadsFor(config);
  const rows = [];
  const eRows = [];
  const probes = {};
  // memory <-> etcd --unsafe-no-fsync, persistence <-> etcd fsync on, side by side.
  for (const storage of config.modes) {
    const fsync = storage === 'persistence';
    const withEtcd = etcd !== null && (fsync || etcd.noFsync);
    const r = await runSideBySide(storage, withEtcd ? fsync : null, workloads, config);
    rows.push(...r.rows);
    eRows.push(...r.etcdRows);
    if (r.probe) probes[storage] = r.probe;
  }
  eRows.sort((a, b) => Number(b.fsync) - Number(a.fsync)); // fsync on first, as printed
  return { etcd, rows: withRatios(rows, eRows), etcdRows: eRows, probes };
};

const scalingRun = async () => {
  const base = { ...config };
  const scaling = { nodes: [], valueSize: [], concurrency: [] };
  const storages = config.modes;
  const run = async (cfg, storage, workloads) => {
    const { rows } = await diskeyvalRows(storage, workloads, { ...cfg, follower: false });
    return rows;
  };
  const readC = 64;
  const three = [
    { kind: 'set', concurrency: 64 },
    { kind: 'get', concurrency: readC },
    { kind: 'getLocal', concurrency: readC },
  ];
  for (const storage of storages) {
    for (const nodes of [3, 5]) {
      scaling.nodes.push(...(await run({ ...base, nodes, readConcurrency: readC }, storage, three)));
    }
    for (const valueBytes of [100, 1024, 65536]) {
      const ops = valueBytes >= 65536 ? Math.min(base.ops, 2000) : base.ops; // bounds memory: the log keeps every entry
      const warmup = Math.min(base.warmup, ops);
      const rows = await run(
        { ...base, nodes: 3, valueBytes, ops, warmup, readConcurrency: readC },
        storage,
        [
          { kind: 'set', concurrency: 64 },
          { kind: 'get', concurrency: readC },
        ],
      );
      scaling.valueSize.push(...rows);
    }
    for (const c of [1, 16, 64, 256]) {
      scaling.concurrency.push(
        ...(await run({ ...base, nodes: 3, concurrency: [c], readConcurrency: c }, storage, [
          { kind: 'set', concurrency: c },
          { kind: 'get', concurrency: c },
          { kind: 'getLocal', concurrency: c },
        ])),
      );
    }
  }
  return scaling;
};

const scalingTables = (scaling) => {
  const out = [];
  const na = (r) => r.na;
  const storages = [...new Set(scaling.nodes.map((r) => r.storage))];
  // Cluster size.
  out.push('### Throughput vs cluster size (leader, c=64, ops/s; p99 ms in brackets)\n');
  out.push(
    markdownTable(
      ['storage', 'nodes', 'W1 set', 'W2 get (lin.)', 'W3 get (local)', 'err / elections'],
      storages.flatMap((s) =>
        [3, 5].map((n) => {
          const rs = scaling.nodes.filter((r) => r.storage === s && r.nodes === n);
          const cell = (kind) => {
            const r = rs.find((x) => x.kind === kind);
            return !r || na(r) ? 'n/a' : `${fmtInt(r.opsPerS)} (${fmtMs(r.p99Ms)})`;
          };
          const errors = rs.reduce((a, r) => a + (r.errors ?? 0) + (r.lost ?? 0), 0);
          const elections = rs.filter((r) => r.electionSuspected).length;
          const integrity = `${errors} / ${elections}${errors + elections > 0 ? ' FLAG' : ''}`;
          return [s, n, cell('set'), cell('get'), cell('getLocal'), rs.some(na) ? 'n/a' : integrity];
        }),
      ),
      ['l', 'r', 'r', 'r', 'r', 'l'],
    ),
  );
  // Value size.
  out.push('\n### Throughput vs value size (3 nodes, leader, c=64)\n');
  out.push(
    markdownTable(
      [
        'storage',
        'value',
        'ops',
        'W1 ops/s',
        'W1 MB/s',
        'W1 p50 / p99 ms',
        'W2 ops/s',
        'W2 p50 / p99 ms',
        'peak RSS MB',
        'flag',
      ],
      storages.flatMap((s) =>
        [100, 1024, 65536].map((v) => {
          const w1 = scaling.valueSize.find((r) => r.storage === s && r.valueBytes === v && r.kind === 'set');
          const w2 = scaling.valueSize.find((r) => r.storage === s && r.valueBytes === v && r.kind === 'get');
          const label = v >= 1024 ? `${v / 1024} KiB` : `${v} B`;
          if (!w1 || na(w1)) return [s, label, '-', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', ''];
          return [
            s,
            label,
            w1.ops,
            fmtInt(w1.opsPerS),
            fmtNum((w1.opsPerS * v) / MB, 1),
            `${fmtMs(w1.p50Ms)} / ${fmtMs(w1.p99Ms)}`,
            fmtInt(w2?.opsPerS),
            `${fmtMs(w2?.p50Ms)} / ${fmtMs(w2?.p99Ms)}`,
            fmtMB(Math.max(w1.peakRssBytesMax, w2?.peakRssBytesMax ?? 0)),
            w1.flagged || w2?.flagged ? 'FLAG' : '',
          ];
        }),
      ),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
    ),
  );
  // Concurrency.
  out.push('\n### Latency vs concurrency (3 nodes, leader; ops/s, p50 / p99 ms)\n');
  out.push(
    markdownTable(
      [
        'storage',
        'c',
        'W1 ops/s',
        'W1 p50 / p99',
        'W2 ops/s',
        'W2 p50 / p99',
        'W3 ops/s',
        'W3 p50 / p99',
        'flag',
      ],
      storages.flatMap((s) =>
        [1, 16, 64, 256].map((c) => {
          const rs = scaling.concurrency.filter((r) => r.storage === s && r.concurrency === c);
          const get = (kind) => rs.find((r) => r.kind === kind);
          const pair = (r) =>
            !r || na(r) ? ['n/a', 'n/a'] : [fmtInt(r.opsPerS), `${fmtMs(r.p50Ms)} / ${fmtMs(r.p99Ms)}`];
          return [
            s,
            c,
            ...pair(get('set')),
            ...pair(get('get')),
            ...pair(get('getLocal')),
            rs.some((r) => r.flagged) ? 'FLAG' : '',
          ];
        }),
      ),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
    ),
  );
  return out.join('\n');
};

// ---- main -------------------------------------------------------------------------------------------

const machine = machineInfo();
const etcdInfo = detectEtcd();
const quiet = await waitQuiet(int(opt['wait-quiet'], 'wait-quiet', 0));
const mode = opt.memory
  ? 'memory'
  : opt.scaling
    ? 'scaling'
    : opt.profile
      ? 'profile'
      : opt.mixed
        ? 'mixed'
        : opt.inspect
          ? 'inspect'
          : 'main';
log(
  `mode ${mode}; ${machine.nproc} CPUs (${machine.cpuModel}), Node ${machine.node}, ` +
    `etcd ${etcdInfo?.version ?? 'not installed'}; load average ${machine.loadAvgAtStart.join(' ')}`,
);
const result = {
  tool: 'diskeyval-bench',
  mode,
  startedAt: startedAt.toISOString(),
  machine: { ...machine, etcd: etcdInfo?.version ?? null },
  config,
  argv: process.argv.slice(2),
  quietWait: quiet,
  persistenceInLibraryTypes: persistenceHint,
};
const printed = [];
const print = (text = '') => {
  console.log(text);
  printed.push(text);
};
let flagged = false;

if (mode === 'main') {
  const { etcd, rows, etcdRows: eRows, probes } = await mainRun();
  const memoryDone = null;
  const targets = evaluateTargets(rows, {
    memory: memoryDone,
    etcdRan: eRows.length > 0,
    w1High: Math.max(...config.concurrency),
    readC: config.readConcurrency,
  });
  Object.assign(result, { rows, etcdRows: eRows, persistenceProbe: probes, targets });
  flagged = [...rows, ...eRows].some((r) => r.flagged);
  print(
    `\n## diskeyval, ${config.nodes} nodes (${config.ops} timed ops after ${config.warmup} warm-up, ` +
      `${config.valueBytes} B values, keys key-<i mod ${config.keySpace}>)\n`,
  );
  print(mainTable(rows, { withEtcd: eRows.length > 0 }));
  print(
    '\nCPU s/1k ops: CPU seconds of all node processes together per 1,000 timed ops (the load runs inside ' +
      'the measured node, so its client side is included). peak RSS: the largest node. err / term: failed ' +
      'or lost calls / Raft term before->after (one value: no election). †: timed phase under 50 ms, where ' +
      'one preemption of a few ms on this shared machine changes the figure (raise --ops).' +
      (config.repeat > 1 ? ` Each row: the median of ${config.repeat} repetitions by ops/s.` : ''),
  );
  if (eRows.length) {
    print(
      '\nRatios: ops/s vs etcd = diskeyval ops/s / etcd ops/s; p99 vs etcd = etcd p99 / diskeyval p99; CPU vs etcd = ' +
        'etcd members CPU per op / diskeyval nodes CPU per op (etcd client CPU excluded). memory rows compare with ' +
        'etcd --unsafe-no-fsync, persistence rows with etcd fsync on; leader with leader, follower with follower.',
    );
    print(`\n## etcd ${etcd.version}, 3 members, etcd3 client in the bench process\n`);
    print(etcdTable(eRows));
  } else if (config.vsEtcd) {
    print(`\n${INSTALL_HINT}`);
  }
  if (!rows.some((r) => r.storage === 'persistence' && !r.na) && config.modes.includes('persistence')) {
    print('\npersistence: n/a — the nodes did not write anything to disk with a persistence directory set.');
  }
  const bg = backgroundLoad([...rows, ...eRows]);
  if (bg) {
    print(
      `\nOther programs on the machine used a median ${bg.medianPct}% (max ${bg.maxPct}%) of one core during the ` +
        `${bg.phases} timed phases of 0.5 s or more (per row in the JSON: otherCpuPct); ${machine.nproc} cores in all.`,
    );
  }
  print('\n## Targets (issue 5)\n');
  print(targetsTable(targets));
} else if (mode === 'scaling') {
  const scaling = await scalingRun();
  result.scaling = scaling;
  flagged = [...scaling.nodes, ...scaling.valueSize, ...scaling.concurrency].some((r) => r.flagged);
  print(`\n## Scaling (diskeyval only; ${config.ops} timed ops per workload, 64 KiB values: at most 2000)\n`);
  print(scalingTables(scaling));
  const bg = backgroundLoad([...scaling.nodes, ...scaling.valueSize, ...scaling.concurrency]);
  if (bg) {
    print(
      `\nOther programs on the machine used a median ${bg.medianPct}% (max ${bg.maxPct}%) of one core during the ` +
        `${bg.phases} timed phases of 0.5 s or more; ${machine.nproc} cores in all.`,
    );
  }
} else if (mode === 'memory') {
  const memory = await runMemory({
    keys: int(opt.keys, 'keys'),
    valueBytes: config.valueBytes,
    nodes: config.nodes,
    timeLimitS: int(opt['time-limit'] ?? '300', 'time-limit'),
    electionTimeoutMs: config.electionTimeoutMs,
    persistence: opt.modes !== undefined && config.modes[0] === 'persistence',
    log,
  });
  result.memory = memory;
  flagged = memory.flagged;
  print(
    `\n## Memory: ${fmtInt(memory.keys)} keys of ${memory.valueBytes} B in ${memory.nodes.length} nodes\n`,
  );
  print(memory.table);
  print(`\n${memory.summary}`);
  result.targets = evaluateTargets([], { memory });
  print('\n');
  print(targetsTable(result.targets.filter((t) => t.target.startsWith('memory'))));
} else if (mode === 'profile') {
  const profile = await runProfile({
    ops: opt.ops ? config.ops : 20_000,
    warmup: config.warmup,
    jitWarmup: config.jitWarmup,
    perf: opt.perf,
    valueBytes: config.valueBytes,
    nodes: config.nodes,
    electionTimeoutMs: config.electionTimeoutMs,
    outDir: join(OUT_DIR, `profile-${stamp}`),
    log,
  });
  result.profile = profile;
  flagged = profile.flagged;
  print(profile.text);
} else if (mode === 'mixed') {
  const mixed = await runMixed({
    reads: opt.ops ? config.ops : 5000,
    writers: int(opt.writers, 'writers', 1),
    valueBytes: config.valueBytes,
    persistence: opt.modes !== undefined && config.modes[0] === 'persistence',
    jitWarmup: config.jitWarmup,
    log,
  });
  result.mixed = mixed;
  flagged = !mixed.target.met;
  print(
    `\n## Reads under write load (${mixed.writers} writers, 64 readers; leader ${mixed.leader}, follower ${mixed.follower}${mixed.persistence ? ', persistence' : ''})\n`,
  );
  print(mixedTable(mixed));
  print(
    `\ntarget: ${mixed.target.rule}: ${mixed.target.met ? 'met' : 'MISSED'} (worst ${mixed.target.worstRatio}x, ${mixed.target.readErrors} failed reads)`,
  );
}

if (mode === 'inspect') {
  const inspect = await runInspect({
    ops: opt.ops ? config.ops : 3000,
    jitWarmup: config.jitWarmup,
    valueBytes: config.valueBytes,
    electionTimeoutMs: config.electionTimeoutMs,
    timeLimitS: opt['time-limit'] === undefined ? 60 : int(opt['time-limit'], 'time-limit'),
    checkout: config.checkout,
    log,
  });
  result.inspect = inspect.rows;
  flagged = inspect.flagged;
  print('\n## W1 c=1 on the leader of a 3-node cluster, with and without an inspector on every node\n');
  print(inspect.table);
  print(
    '\nwebsocket: createWebSocketInspector from @statelyai/inspect (`inspect: inspector.inspect`) on every node, ' +
      'sending to a relay on 127.0.0.1 whose client reads every message, with the default inspection budget ' +
      '(inspectEventsPerSecond 250 per node); websocket-all: the same with inspectEventsPerSecond Infinity (every ' +
      'event); callback: a function that counts the inspection events. events sent / skipped: what the nodes sent ' +
      'their inspector, and the replication traffic the budget kept back (counted, not sent). vs none: ops/s over ' +
      'the run without an inspector (issue 12 wants >= 0.5x). ' +
      'leader held: no term change or election during the warm-up and the timed phase.',
  );
}

const seconds = (performance.now() - t0) / 1000;
result.durationS = round(seconds, 1);
result.flagged = flagged;
print(
  `\nmachine: ${machine.nproc} CPUs, ${machine.cpuModel}, ${machine.memTotalGiB} GiB; Node ${machine.node}; ` +
    `etcd ${etcdInfo?.version ?? 'not installed'}; load average at start ${machine.loadAvgAtStart.join(' ')}`,
);
if (flagged)
  print(
    '\nFLAG: at least one workload lost or failed a call or saw a term change: see the rows marked FLAG.',
  );
await mkdir(OUT_DIR, { recursive: true });
const jsonPath = join(OUT_DIR, `bench-${mode}-${stamp}.json`);
await writeFile(jsonPath, `${JSON.stringify({ ...result, text: printed.join('\n') }, null, 2)}\n`);
print(`\nrun time ${fmtNum(seconds, 1)} s; results in ${jsonPath}`);
process.exitCode = flagged ? 2 : 0;
