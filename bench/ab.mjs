#!/usr/bin/env node
/**
 * A/B benchmark of two built checkouts of diskeyval (issue 12, item 6), with the noise floor.
 *
 *   node bench/ab.mjs --a DIR --b DIR [--runs 5] [--rows w1c1,w1c64,w2c64,w3c64] [--modes memory]
 *     [--follower] [--ops 2000] [--warmup 200] [--jit-warmup 1000] [--no-aa] [--out .bench-out]
 *
 * DIR is the root of a checkout after `npm ci && npm run build` (e.g. a `git worktree` of the commit
 * before a change). Every run is one `node bench/run.mjs --checkout DIR --rows ...` of THIS
 * checkout's benchmark (the same workloads and measurement for both; each checkout's own
 * scripts/cluster.mjs, cluster-node.mjs and dist/ run the nodes), on a fresh cluster, in its own
 * process. The runs are interleaved in rounds: A, B and A' (a second set of runs of A, the
 * A-against-A pass), the order rotated every round (A B A', B A' A, A' A B, ...) so drift of the
 * shared machine's load spreads over all three. Per row it prints the median ops/s and p99 of each
 * side over the runs, B/A, and A'/A: how far two run sets of the same code land apart here, the
 * noise floor. Verdict: "faster" when B/A > 1.1, "within 10%" when B/A >= 0.9; "within noise"
 * when B/A is below that but no further from 1 than A'/A is; else "SLOWER".
 *
 * Beside the throughput, the CPU the three node processes spent per operation in the timed phase
 * (median of the runs, and B/A, A'/A): on a shared, loaded machine ops/s swings with what else runs,
 * the CPU an operation costs much less, so it tells a real change from the machine's noise.
 * Output: the markdown table (paste it into the closing note) on stdout, the progress on stderr,
 * every run's figures in `<out>/ab-<timestamp>.json`. Exit code 1 on a failed run, 2 when a run
 * flagged a row (lost or failed calls, an election). One pass with the defaults (3 x 5 runs of 4
 * rows in memory, leader only) takes about 5-10 minutes on 2 shared cores. A row whose timed phase
 * lasts under 50 ms is marked †: W3 (local gets) at --ops 2000 does; measure it apart, e.g.
 * `--rows w3c64,w2c64 --ops 40000` (about 5 minutes).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fmtInt, fmtMs, markdownTable, round } from './lib/common.mjs';

const RUN_SCRIPT = fileURLToPath(new URL('./run.mjs', import.meta.url));
const RUN_BOUND_MS = 15 * 60_000;
/** A timed phase shorter than this is one preemption away from another figure (marked †). */
const SHORT_PHASE_S = 0.05;

const { values: opt } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    runs: { type: 'string', default: '5' },
    rows: { type: 'string', default: 'w1c1,w1c64,w2c64,w3c64' },
    modes: { type: 'string', default: 'memory' },
    follower: { type: 'boolean', default: false },
    ops: { type: 'string', default: '2000' },
    warmup: { type: 'string', default: '200' },
    'jit-warmup': { type: 'string', default: '1000' },
    'no-aa': { type: 'boolean', default: false },
    out: { type: 'string', default: '.bench-out' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

const log = (...a) => console.error('[ab]', ...a);

const usageText = async () => {
  const source = await readFile(new URL(import.meta.url), 'utf8');
  return /\/\*\*([\s\S]*?)\*\//
    .exec(source)[1]
    .replace(/^ \* ?/gm, '')
    .trim();
};

/** The checkout at `dir`, checked: it must hold a built dist/ and the cluster harness. */
const checkoutOf = (label, dir) => {
  if (!dir) throw new Error(`--${label} DIR is required (a built checkout)`);
  const root = resolve(dir);
  for (const need of ['dist/index.js', 'scripts/cluster.mjs', 'scripts/cluster-node.mjs']) {
    if (!existsSync(join(root, need)))
      throw new Error(`${root} has no ${need}: run npm ci && npm run build there`);
  }
  let commit = 'unknown';
  try {
    const git = (...args) => execFileSync('git', ['-C', root, ...args], { encoding: 'utf8' }).trim();
    commit = `${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain').length ? '+dirty' : ''}`;
  } catch {
    // not a git checkout: the commit stays unknown
  }
  return { label, root, commit };
};

/** One run of bench/run.mjs for `checkout`; resolves with its JSON result and exit code. */
const runOnce = async (checkout, args, outRoot, index) => {
  const out = join(outRoot, `run-${index}-${checkout.label}`);
  const child = spawn(process.execPath, [RUN_SCRIPT, '--checkout', checkout.root, ...args, '--out', out], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const bound = setTimeout(() => child.kill('SIGTERM'), RUN_BOUND_MS);
  const code = await new Promise((done) => child.once('exit', (exitCode) => done(exitCode ?? 1)));
  clearTimeout(bound);
  const files = existsSync(out) ? (await readdir(out)).filter((f) => f.endsWith('.json')) : [];
  if (files.length !== 1) {
    throw new Error(
      `run ${index} of ${checkout.label} (exit ${code}) wrote no result; its stderr:\n${stderr}`,
    );
  }
  return { code, result: JSON.parse(await readFile(join(out, files[0]), 'utf8')) };
};

const median = (values) => {
  const sorted = values.filter((v) => typeof v === 'number').sort((x, y) => x - y);
  if (sorted.length === 0) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const rowKey = (r) =>
  `${r.storage} ${r.role} ${{ set: 'W1', get: 'W2', getLocal: 'W3' }[r.kind]} c=${r.concurrency}`;

/** Per row: the ops/s and p99 of every run of each side. */
const collect = (runs) => {
  const byRow = new Map();
  for (const { side, result } of runs) {
    for (const r of result.rows ?? []) {
      if (r.na) continue;
      const key = rowKey(r);
      if (!byRow.has(key)) byRow.set(key, { key, A: [], B: [], A2: [] });
      byRow.get(key)[side].push({
        opsPerS: r.opsPerS,
        p99Ms: r.p99Ms,
        elapsedS: r.elapsedS,
        flagged: r.flagged,
        cpuUsPerOp: typeof r.cpuSPer1kOps === 'number' ? r.cpuSPer1kOps * 1000 : null,
      });
    }
  }
  return [...byRow.values()];
};

const verdictOf = (ratio, noise) => {
  if (ratio === null) return 'n/a';
  if (ratio > 1.1) return 'faster (> 10%)';
  if (ratio >= 0.9) return 'within 10%';
  const floor = noise === null ? 0 : Math.abs(1 - noise);
  return Math.abs(1 - ratio) <= floor ? `within noise (${Math.round(floor * 100)}%)` : 'SLOWER';
};

const summarize = (rows, withAA) =>
  rows.map((row) => {
    const side = (name) => ({
      ops: median(row[name].map((r) => r.opsPerS)),
      p99: median(row[name].map((r) => r.p99Ms)),
      runs: row[name].length,
      elapsedS: median(row[name].map((r) => r.elapsedS)),
      cpuUs: median(row[name].map((r) => r.cpuUsPerOp).filter((x) => x !== null)),
      flagged: row[name].some((r) => r.flagged),
    });
    const a = side('A');
    const b = side('B');
    const a2 = side('A2');
    const ratio = a.ops && b.ops ? b.ops / a.ops : null;
    const noise = withAA && a.ops && a2.ops ? a2.ops / a.ops : null;
    const short = [a, b].some((x) => x.elapsedS !== null && x.elapsedS < SHORT_PHASE_S);
    const p99Ratio = a.p99 && b.p99 ? b.p99 / a.p99 : null;
    const cpuRatio = a.cpuUs && b.cpuUs ? b.cpuUs / a.cpuUs : null;
    const cpuNoise = withAA && a.cpuUs && a2.cpuUs ? a2.cpuUs / a.cpuUs : null;
    return { key: row.key, a, b, a2, ratio, noise, p99Ratio, short, cpuRatio, cpuNoise };
  });

const tableOf = (summary, withAA) => {
  const fmtRatio = (x) => (x === null ? 'n/a' : `${x.toFixed(2)}x`);
  const header = ['row', 'A ops/s', 'B ops/s', 'B/A', 'A p99 ms', 'B p99 ms', 'B/A p99'];
  if (withAA) header.push("A' ops/s", "A'/A (noise)");
  header.push('A / B CPU us per op', 'B/A CPU');
  if (withAA) header.push("A'/A CPU");
  header.push('verdict');
  return markdownTable(
    header,
    summary.map((s) => {
      const flag = s.a.flagged || s.b.flagged || s.a2.flagged ? ' FLAG' : '';
      const cells = [
        `${s.key}${s.short ? ' †' : ''}`,
        fmtInt(s.a.ops),
        fmtInt(s.b.ops),
        fmtRatio(s.ratio),
        fmtMs(s.a.p99),
        fmtMs(s.b.p99),
        fmtRatio(s.p99Ratio),
      ];
      if (withAA) cells.push(fmtInt(s.a2.ops), fmtRatio(s.noise));
      const fmtCpu = (x) => (x === null ? 'n/a' : x.toFixed(1));
      cells.push(`${fmtCpu(s.a.cpuUs)} / ${fmtCpu(s.b.cpuUs)}`, fmtRatio(s.cpuRatio));
      if (withAA) cells.push(fmtRatio(s.cpuNoise));
      cells.push(verdictOf(s.ratio, s.noise) + flag);
      return cells;
    }),
    [
      'l',
      'r',
      'r',
      'r',
      'r',
      'r',
      'r',
      ...(withAA ? ['r', 'r'] : []),
      'r',
      'r',
      ...(withAA ? ['r'] : []),
      'l',
    ],
  );
};

const main = async () => {
  if (opt.help) {
    console.log(await usageText());
    return 0;
  }
  const A = checkoutOf('a', opt.a);
  const B = checkoutOf('b', opt.b);
  const runs = Number(opt.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 50) throw new Error('--runs must be an integer in 1..50');
  const withAA = !opt['no-aa'];
  const args = ['--rows', opt.rows, '--modes', opt.modes, '--ops', opt.ops, '--warmup', opt.warmup];
  args.push('--jit-warmup', opt['jit-warmup']);
  if (!opt.follower) args.push('--no-follower');
  const sides = withAA ? ['A', 'B', 'A2'] : ['A', 'B'];
  const checkoutFor = { A, B, A2: { ...A, label: 'a2' } };
  const outRoot = await mkdtemp(join(os.tmpdir(), 'diskeyval-ab-'));
  const startedAt = new Date();
  const loadAtStart = os.loadavg().map((x) => round(x, 2));
  log(`A ${A.root} (${A.commit}), B ${B.root} (${B.commit}); ${runs} rounds of ${sides.join(' ')}`);
  const done = [];
  let failedRuns = 0;
  try {
    for (let round_ = 0; round_ < runs; round_ += 1) {
      // Rotate the order every round: A B A', B A' A, A' A B, ...
      const order = sides.map((_, i) => sides[(i + round_) % sides.length]);
      for (const side of order) {
        const t0 = performance.now();
        const { code, result } = await runOnce(checkoutFor[side], args, outRoot, round_);
        if (code !== 0 && code !== 2) failedRuns += 1;
        done.push({ side, round: round_, code, result });
        const brief = (result.rows ?? []).map((r) => `${fmtInt(r.opsPerS)}`).join(' ');
        log(
          `round ${round_ + 1}/${runs} ${side}: ${brief} ops/s (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
        );
      }
    }
  } finally {
    await rm(outRoot, { recursive: true, force: true });
  }
  const summary = summarize(collect(done), withAA);
  const table = tableOf(summary, withAA);
  const minutes = (Date.now() - startedAt.getTime()) / 60_000;
  console.log(
    `\nA = ${A.commit} (${A.root}), B = ${B.commit} (${B.root}); ${runs} runs each, interleaved` +
      `${withAA ? `, A' = A again (noise floor)` : ''}; medians over the runs; W1 set, W2 linearizable get, ` +
      `W3 local get on a fresh 3-node cluster per run (--ops ${opt.ops}, --jit-warmup ${opt['jit-warmup']}); ` +
      `load average at start ${loadAtStart.join(' ')}, at end ${os
        .loadavg()
        .map((x) => round(x, 2))
        .join(' ')}; ` +
      `${minutes.toFixed(1)} min.\n`,
  );
  console.log(table);
  if (summary.some((s) => s.short)) {
    console.log(
      `\n†: the median timed phase lasted under ${SHORT_PHASE_S * 1000} ms: raise --ops for this row.`,
    );
  }
  await mkdir(resolve(opt.out), { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  const jsonPath = join(resolve(opt.out), `ab-${stamp}.json`);
  const perRun = done.map(({ side, round: r, code, result }) => ({
    side,
    round: r,
    code,
    rows: (result.rows ?? []).map((x) => ({
      row: rowKey(x),
      opsPerS: x.opsPerS,
      p99Ms: x.p99Ms,
      flagged: x.flagged,
    })),
  }));
  await writeFile(
    jsonPath,
    `${JSON.stringify({ a: A, b: B, args, summary, runs: perRun, table }, null, 2)}\n`,
  );
  console.log(`\nevery run in ${jsonPath}`);
  if (failedRuns > 0) return 1;
  return done.some((d) => d.code === 2) ? 2 : 0;
};

process.exitCode = await main();
