#!/usr/bin/env node
/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time by function + file, self time by
 * file / package, and inclusive time of the top functions, optionally for a time window only.
 *
 *   node bench/cpuprofile-summary.mjs FILE.cpuprofile [--from US] [--to US] [--top 30] [--json]
 *
 * --from / --to are absolute timestamps in microseconds of the monotonic clock, the clock of the
 * profile's own timestamps and of `process.hrtime.bigint() / 1000n` in any process on the machine
 * (that is how bench/lib/profile.mjs cuts one workload out of a whole-process profile).
 * Sample i is charged the interval to the next sample.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { markdownTable } from './lib/common.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** A short, stable name for a script URL: package name for node_modules, path in the repo, node:... */
export const shortFile = (url) => {
  if (!url) return '';
  let u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = u.slice(nm + '/node_modules/'.length).split('/');
    const pkg = rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0];
    const file = rest.slice(rest[0].startsWith('@') ? 2 : 1).join('/');
    return `${pkg}:${file.replace(/^(dist|lib|build)\//, '')}`;
  }
  if (u.startsWith(ROOT)) u = u.slice(ROOT.length);
  return u;
};

/** The package or area a file belongs to: a node_modules package, node: internals, or the repo dir. */
export const areaOf = (url) => {
  if (!url) return '(native / VM)';
  const short = shortFile(url);
  if (url.includes('/node_modules/')) return short.split(':')[0];
  if (short.startsWith('node:')) return `${short.split('/').slice(0, 2).join('/')}`;
  return short;
};

const SPECIAL = new Set(['(garbage collector)', '(program)', '(idle)', '(root)']);

/**
 * @param {object} profile  parsed .cpuprofile
 * @param {{ fromUs?: number, toUs?: number, top?: number }} options
 */
export const summarizeProfile = (profile, { fromUs = -Infinity, toUs = Infinity, top = 25 } = {}) => {
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n) => {
    const f = n.callFrame;
    const name = f.functionName || '(anonymous)';
    if (SPECIAL.has(name) || !f.url)
      return {
        key: name,
        name,
        file: f.url ? shortFile(f.url) : '',
        area: SPECIAL.has(name) ? name : '(native / VM)',
      };
    const file = `${shortFile(f.url)}:${f.lineNumber + 1}`;
    return { key: `${name} ${file}`, name, file, area: areaOf(f.url) };
  };
  const keys = new Map(profile.nodes.map((n) => [n.id, keyOf(n)]));
  const self = new Map();
  const callers = new Map(); // self key -> (caller key -> us): who calls the native hot spots
  const inclusive = new Map();
  const areas = new Map();
  let total = 0;
  let idle = 0;
  let t = profile.startTime;
  const samples = profile.samples;
  const deltas = profile.timeDeltas;
  for (let i = 0; i < samples.length; i += 1) {
    t += deltas[i];
    const next = i + 1 < samples.length ? deltas[i + 1] : 0;
    if (t < fromUs || t > toUs) continue;
    const k = keys.get(samples[i]);
    if (k.key === '(idle)') {
      idle += next;
      continue;
    }
    total += next;
    self.set(k.key, (self.get(k.key) ?? 0) + next);
    if (!k.file || SPECIAL.has(k.name)) {
      // Native code: name the first JavaScript frame above it (skipping node: internals).
      let id = parent.get(samples[i]);
      for (let depth = 0; id !== undefined && depth < 40; depth += 1, id = parent.get(id)) {
        const pk = keys.get(id);
        if (pk.file && !pk.file.startsWith('node:')) break;
      }
      const caller = id === undefined ? '(none)' : keys.get(id).key;
      const m = callers.get(k.key) ?? new Map();
      m.set(caller, (m.get(caller) ?? 0) + next);
      callers.set(k.key, m);
    }
    areas.set(k.area, (areas.get(k.area) ?? 0) + next);
    const seen = new Set();
    for (let id = samples[i], depth = 0; id !== undefined && depth < 500; id = parent.get(id), depth += 1) {
      const kk = keys.get(id).key;
      if (seen.has(kk) || kk === '(root)') continue;
      seen.add(kk);
      inclusive.set(kk, (inclusive.get(kk) ?? 0) + next);
    }
  }
  const pct = (x) => (total > 0 ? (100 * x) / total : 0);
  const sorted = (m) => [...m.entries()].sort((a, b) => b[1] - a[1]);
  return {
    busyMs: total / 1000,
    idleMs: idle / 1000,
    selfTop: sorted(self)
      .slice(0, top)
      .map(([key, us]) => ({
        key,
        ms: us / 1000,
        pct: pct(us),
        ...(callers.has(key) && key !== '(garbage collector)' && key !== '(program)'
          ? {
              calledFrom: sorted(callers.get(key))
                .slice(0, 2)
                .map(([c, cu]) => `${c} (${((100 * cu) / us).toFixed(0)}%)`),
            }
          : {}),
      })),
    areas: sorted(areas)
      .slice(0, top)
      .map(([area, us]) => ({ area, ms: us / 1000, pct: pct(us) })),
    inclusiveTop: sorted(inclusive)
      .slice(0, top)
      .map(([key, us]) => ({ key, ms: us / 1000, pct: pct(us) })),
  };
};

export const summaryText = (s, { title = '', top = 25 } = {}) => {
  const lines = [];
  if (title) lines.push(`#### ${title}\n`);
  lines.push(`busy ${s.busyMs.toFixed(0)} ms of CPU samples, idle ${s.idleMs.toFixed(0)} ms\n`);
  lines.push(
    markdownTable(
      ['self %', 'self ms', 'function  file:line'],
      s.selfTop
        .slice(0, top)
        .map((r) => [
          r.pct.toFixed(1),
          r.ms.toFixed(0),
          r.calledFrom ? `${r.key}  <- ${r.calledFrom.join(', ')}` : r.key,
        ]),
      ['r', 'r', 'l'],
    ),
  );
  lines.push('\nself time by package / file:\n');
  lines.push(
    markdownTable(
      ['self %', 'self ms', 'area'],
      s.areas.slice(0, 15).map((r) => [r.pct.toFixed(1), r.ms.toFixed(0), r.area]),
      ['r', 'r', 'l'],
    ),
  );
  return lines.join('\n');
};

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      from: { type: 'string' },
      to: { type: 'string' },
      top: { type: 'string', default: '30' },
      json: { type: 'boolean', default: false },
      inclusive: { type: 'boolean', default: false },
    },
  });
  if (positionals.length === 0) {
    console.error(
      'usage: node bench/cpuprofile-summary.mjs FILE.cpuprofile [--from US] [--to US] [--top N] [--json]',
    );
    process.exit(1);
  }
  for (const file of positionals) {
    const s = summarizeProfile(JSON.parse(readFileSync(file, 'utf8')), {
      fromUs: values.from ? Number(values.from) : -Infinity,
      toUs: values.to ? Number(values.to) : Infinity,
      top: Number(values.top),
    });
    if (values.json) console.log(JSON.stringify(s, null, 2));
    else {
      console.log(summaryText(s, { title: file, top: Number(values.top) }));
      if (values.inclusive) {
        console.log('\ninclusive (self + callees):\n');
        console.log(
          markdownTable(
            ['incl %', 'incl ms', 'function  file:line'],
            s.inclusiveTop.map((r) => [r.pct.toFixed(1), r.ms.toFixed(0), r.key]),
            ['r', 'r', 'l'],
          ),
        );
      }
    }
  }
}
