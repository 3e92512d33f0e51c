#!/usr/bin/env node
/**
 * Memory and speed of src/actors/packed-map.ts against a plain Map, for N keys `m<c>-<i>` (as
 * `npm run bench -- --memory` writes them: c counts chunks of 50,000) with 100-byte values.
 *
 *   npm run build && node --expose-gc bench/packed-map-memory.mjs [--keys 1000000] [--value-bytes 100]
 *     [--only packed,map-str,map-buf] [--node-flags=--max-semi-space-size=1]
 *
 * Every variant runs in a child process of its own (so one's garbage does not count against the
 * other): insert N keys, then overwrite every other key (50%) — with values of the same size (the
 * packed map overwrites those in place) and, separately, of sizes 90..110 B (appended; the old
 * records die and chunks are reclaimed) — measuring RSS and heap after a full GC at each stage.
 * Then set and get throughput (keys are built on the fly in every timed loop, for both maps).
 *
 *   packed   createPackedMap(), values are 100-byte Uint8Arrays (what msgpack gives the store)
 *   map-str  Map<string, string>, values are distinct flat 100-char strings (the store today)
 *   map-buf  Map<string, Uint8Array>, values are 100-byte Uint8Arrays
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    keys: { type: 'string', default: '1000000' },
    'value-bytes': { type: 'string', default: '100' },
    child: { type: 'string' },
    overwrite: { type: 'string', default: 'same' },
    'node-flags': { type: 'string', default: '' },
    only: { type: 'string', default: '' },
  },
});
const N = Number(args.keys);
const VALUE_BYTES = Number(args['value-bytes']);
const PER_CHUNK = 50_000;
const keyOf = (n) => `m${Math.floor(n / PER_CHUNK)}-${n % PER_CHUNK}`;
const MiB = 1024 * 1024;

const usage = () => {
  for (let i = 0; i < 4; i += 1) globalThis.gc();
  const u = process.memoryUsage();
  return { rss: u.rss, heapUsed: u.heapUsed, heapTotal: u.heapTotal, external: u.external };
};

const child = async (impl, overwrite) => {
  const { createPackedMap } = await import('../dist/actors/packed-map.js');
  const scratch = Buffer.alloc(VALUE_BYTES + 16, 'v');
  /** A value whose bytes depend on n and round (so no two are shared), `bytes` long. */
  const valueBytes = (n, round, bytes) => {
    scratch.write(`${round}:${n}:`, 0, 'latin1');
    return scratch.subarray(0, bytes);
  };
  let map;
  let set;
  let get;
  if (impl === 'packed') {
    map = createPackedMap();
    set = (key, bytes) => map.set(key, bytes);
    get = (key) => map.get(key);
  } else if (impl === 'map-str') {
    map = new Map();
    set = (key, bytes) => map.set(key, bytes.toString('latin1'));
    get = (key) => map.get(key);
  } else {
    map = new Map();
    set = (key, bytes) => map.set(key, Uint8Array.from(bytes));
    get = (key) => map.get(key);
  }
  const sizeAt = (n, round) =>
    overwrite === 'resize' && round > 0 ? VALUE_BYTES - 10 + (n % 21) : VALUE_BYTES;

  const baseline = usage();
  let rawBytes = 0;
  let t = process.hrtime.bigint();
  for (let n = 0; n < N; n += 1) {
    const key = keyOf(n);
    set(key, valueBytes(n, 0, VALUE_BYTES));
    rawBytes += key.length + VALUE_BYTES;
  }
  const insertS = Number(process.hrtime.bigint() - t) / 1e9;
  const inserted = usage();
  const statsInserted = impl === 'packed' ? map.stats() : null;

  t = process.hrtime.bigint();
  for (let n = 0; n < N; n += 2) set(keyOf(n), valueBytes(n, 1, sizeAt(n, 1)));
  const overwriteS = Number(process.hrtime.bigint() - t) / 1e9;
  const overwritten = usage();
  const statsOverwritten = impl === 'packed' ? map.stats() : null;

  // get: every key once, in a scattered order (stride through the key space).
  const stride = 7919;
  let found = 0;
  t = process.hrtime.bigint();
  for (let k = 0, n = 0; k < N; k += 1, n = (n + stride) % N) {
    const value = get(keyOf(n));
    if (value !== undefined) found += value.length > 0 ? 1 : 0;
  }
  const getS = Number(process.hrtime.bigint() - t) / 1e9;
  if (found !== N) throw new Error(`get found ${found} of ${N}`);
  // A second overwrite pass over the same keys, timed again now the JIT has settled.
  t = process.hrtime.bigint();
  for (let n = 0; n < N; n += 1) set(keyOf(n), valueBytes(n, 2, sizeAt(n, 2)));
  const setAllS = Number(process.hrtime.bigint() - t) / 1e9;
  const settled = usage();

  process.stdout.write(
    JSON.stringify({
      impl,
      overwrite,
      keys: N,
      rawBytes,
      baseline,
      inserted,
      overwritten,
      settled,
      statsInserted,
      statsOverwritten,
      statsSettled: impl === 'packed' ? map.stats() : null,
      insertOpsPerS: N / insertS,
      overwriteOpsPerS: N / 2 / overwriteS,
      getOpsPerS: N / getS,
      setAllOpsPerS: N / setAllS,
    }),
  );
};

const fmtMB = (bytes) => (bytes / MiB).toFixed(1);
const fmtK = (n) => `${Math.round(n / 1000)}k`;

const main = () => {
  const rows = [];
  for (const [impl, overwrite] of [
    ['packed', 'same'],
    ['packed', 'resize'],
    ['map-str', 'same'],
    ['map-buf', 'same'],
  ]) {
    if (args.only && !args.only.split(',').includes(impl)) continue;
    const run = spawnSync(
      process.execPath,
      [
        '--expose-gc',
        ...args['node-flags'].split(' ').filter(Boolean),
        fileURLToPath(import.meta.url),
        '--child',
        impl,
        '--overwrite',
        overwrite,
        '--keys',
        String(N),
        '--value-bytes',
        String(VALUE_BYTES),
      ],
      { encoding: 'utf8', maxBuffer: 1 << 24 },
    );
    if (run.status !== 0) throw new Error(`${impl} failed: ${run.stderr}`);
    rows.push(JSON.parse(run.stdout));
  }
  const raw = rows[0].rawBytes;
  if (args['node-flags']) console.log(`children run with ${args['node-flags']}`);
  console.log(
    `${N.toLocaleString('en')} keys, ${VALUE_BYTES} B values, raw ${fmtMB(raw)} MiB (keys + values)`,
  );
  console.log('RSS MiB (x raw) / heapUsed MiB / external MiB; per key = (stage - baseline) / keys');
  const stage = (r, name) => {
    const u = r[name];
    const rssPerKey = Math.round((u.rss - r.baseline.rss) / r.keys) || 0;
    const heapPerKey = Math.round((u.heapUsed - r.baseline.heapUsed) / r.keys) || 0;
    return `${fmtMB(u.rss)} (${(u.rss / raw).toFixed(2)}x) / ${fmtMB(u.heapUsed)} / ${fmtMB(u.external)}  [${rssPerKey} B rss, ${heapPerKey} B heap per key]`;
  };
  for (const r of rows) {
    console.log(`\n${r.impl}${r.impl === 'packed' ? ` (overwrite: ${r.overwrite})` : ''}`);
    console.log(`  baseline     ${fmtMB(r.baseline.rss)} MiB RSS, ${fmtMB(r.baseline.heapUsed)} MiB heap`);
    console.log(`  inserted     ${stage(r, 'inserted')}`);
    console.log(`  50% overwr.  ${stage(r, 'overwritten')}`);
    console.log(`  all overwr.  ${stage(r, 'settled')}`);
    console.log(
      `  ops/s: insert ${fmtK(r.insertOpsPerS)}, overwrite ${fmtK(r.overwriteOpsPerS)}, get ${fmtK(r.getOpsPerS)}, set (2nd pass) ${fmtK(r.setAllOpsPerS)}`,
    );
    for (const name of ['statsInserted', 'statsOverwritten', 'statsSettled']) {
      const s = r[name];
      if (!s) continue;
      console.log(
        `  ${name.slice(5).padEnd(11)} live ${fmtMB(s.liveBytes)} MiB, dead ${fmtMB(s.deadBytes)} MiB, arena ${fmtMB(s.arenaBytes)} MiB in ${s.chunks} chunks, index ${fmtMB(s.indexBytes)} MiB, ${s.reclaimedChunks} reclaimed (${fmtMB(s.movedBytes)} MiB moved)`,
      );
    }
  }
};

if (args.child) await child(args.child, args.overwrite);
else main();
