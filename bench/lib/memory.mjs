/**
 * `npm run bench -- --memory`: how much memory a node needs to hold N keys (default 1,000,000) of
 * 100-byte values, against the raw data size (key bytes + value bytes).
 *
 * The keys are written through the leader in chunks of 50,000 (the harness's bulk `load`, 256 in
 * flight; chunk c writes keys `m<c>-0` .. `m<c>-49999`), bounded by `timeLimitS`: when the time is
 * up the run stops early and says how many keys it reached. Then it waits (bounded) until every
 * node has applied everything, and reads RSS and heap of every node after a full garbage
 * collection (so the figure is what the node holds, not garbage the collector has not reached).
 * The log is compacted every 10,000 entries (it keeps the last 5,000 applied), and values live
 * as their msgpack bytes in the store's packed map, off the JS heap.
 */
import { fmtInt, fmtMB, fmtNum, markdownTable, round } from './common.mjs';
import {
  rolesOf,
  startDiskeyvalCluster,
  stopDiskeyvalCluster,
  verifyPersistence,
} from './diskeyval-side.mjs';

const CHUNK = 50_000;
const REST_STEP_MS = 5_000;
const REST_MIN_MS = 30_000;
const REST_LIMIT_MS = 90_000;

export const runMemory = async ({
  keys,
  valueBytes,
  nodes,
  timeLimitS,
  electionTimeoutMs,
  persistence,
  log,
}) => {
  const run = await startDiskeyvalCluster({ nodes, persistence, electionTimeoutMs });
  const started = Date.now();
  const deadline = started + timeLimitS * 1000;
  try {
    const { leader } = await rolesOf(run);
    const usage = (extra = {}) =>
      Promise.all(
        run.ids.map((id) => run.cluster.call(id, { cmd: 'usage', ...extra }, { timeoutMs: 30_000 })),
      );
    const statuses = () =>
      Promise.all(run.ids.map((id) => run.cluster.call(id, { cmd: 'status' }, { timeoutMs: 30_000 })));
    const baseline = await usage();
    const termBefore = (await statuses()).map((s) => s.term);
    let written = 0;
    let rawBytes = 0;
    const errors = {};
    let stoppedEarly = false;
    for (let chunk = 0; written < keys && chunk < Math.ceil(keys / CHUNK) + 1; chunk += 1) {
      const remainingMs = deadline - Date.now();
      if (remainingMs < 5_000) {
        stoppedEarly = true;
        log(`memory: time limit reached after ${fmtInt(written)} keys`);
        break;
      }
      const count = Math.min(CHUNK, keys - written);
      const keyPrefix = `m${chunk}-`;
      const r = await run.cluster.load(
        leader,
        { kind: 'set', count, concurrency: 256, valueBytes, keySpace: count, keyPrefix },
        { timeoutMs: remainingMs + 30_000 },
      );
      for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + n;
      written += r.ok;
      for (let i = 0; i < count; i += 1) rawBytes += Buffer.byteLength(`${keyPrefix}${i}`) + valueBytes;
      if (chunk % 4 === 3)
        log(`memory: ${fmtInt(written)} keys, ${fmtInt(r.opsPerS)} sets/s in the last chunk`);
    }
    const loadS = (Date.now() - started) / 1000;
    // Every node applied everything (bounded wait).
    let final = await statuses();
    for (let i = 0; i < 300 && Date.now() < deadline + 60_000; i += 1) {
      const target = Math.max(...final.map((s) => s.commitIndex));
      if (final.every((s) => s.appliedIndex >= target)) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
      final = await statuses();
    }
    // At rest: quiet until V8's memory reducer has shrunk the young generation that the load grew
    // (it runs after ~10 s of low allocation): RSS read every 5 s until no node's fell by more
    // than 1 MB (at least REST_MIN_MS, at most REST_LIMIT_MS), then a full collection in every node.
    const busy = await usage();
    let rest = busy;
    for (let waitedMs = REST_STEP_MS; waitedMs <= REST_LIMIT_MS; waitedMs += REST_STEP_MS) {
      await new Promise((resolve) => setTimeout(resolve, REST_STEP_MS));
      const now = await usage();
      const settled = now.every((u, i) => rest[i].rssBytes - u.rssBytes < 1_000_000);
      rest = now;
      if (settled && waitedMs >= REST_MIN_MS) break;
    }
    const after = await usage({ gc: true });
    final = await statuses();
    const probe = persistence ? await verifyPersistence(run) : null;
    const perNode = run.ids.map((id, i) => {
      const s = final[i];
      return {
        nodeId: id,
        role: s.role,
        keys: s.keys,
        logEntries: s.lastIndex,
        rssBytes: after[i].rssBytes,
        rssRightAfterLoadBytes: busy[i].rssBytes,
        peakRssBytes: after[i].peakRssBytes,
        heapUsedBytes: after[i].heapUsedBytes,
        heapTotalBytes: after[i].heapTotalBytes,
        arrayBuffersBytes: after[i].arrayBuffersBytes,
        heapSpaces: after[i].spaces,
        baselineRssBytes: baseline[i].rssBytes,
        rssOverRaw: round(after[i].rssBytes / rawBytes, 2),
        growthOverRaw: round((after[i].rssBytes - baseline[i].rssBytes) / rawBytes, 2),
        heapOverRaw: round(after[i].heapUsedBytes / rawBytes, 2),
      };
    });
    const termAfter = final.map((s) => s.term);
    const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
    const electionSuspected = new Set([...termBefore, ...termAfter]).size !== 1;
    const table = markdownTable(
      [
        'node',
        'role',
        'keys',
        'log entries',
        'RSS MB',
        'heap used MB',
        'RSS before MB',
        'RSS / raw',
        '(RSS - before) / raw',
        'heap / raw',
      ],
      perNode.map((n) => [
        n.nodeId,
        n.role,
        fmtInt(n.keys),
        fmtInt(n.logEntries),
        fmtMB(n.rssBytes),
        fmtMB(n.heapUsedBytes),
        fmtMB(n.baselineRssBytes),
        fmtNum(n.rssOverRaw, 2),
        fmtNum(n.growthOverRaw, 2),
        fmtNum(n.heapOverRaw, 2),
      ]),
      ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    );
    const worst = Math.max(...perNode.map((n) => n.rssOverRaw));
    const summary =
      `raw data: ${fmtInt(written)} keys, ${fmtMB(rawBytes)} MB (key bytes + ${valueBytes} B values); ` +
      `loaded in ${fmtNum(loadS, 1)} s (${fmtInt(written / loadS)} sets/s at c=256)${stoppedEarly ? ', STOPPED EARLY (time limit)' : ''}; ` +
      `worst node RSS = ${fmtNum(worst, 2)}x raw (target <= 2x); errors ${errorCount}; terms ${[...new Set(termAfter)].join(',')}` +
      `${electionSuspected ? ' (CHANGED)' : ''}. ${persistence ? `persistence: ${probe?.supported ? `${fmtMB(probe.bytes)} MB on disk` : 'n/a'}.` : 'In memory.'}`;
    return {
      targetKeys: keys,
      keys: written,
      valueBytes,
      rawBytes,
      loadS: round(loadS, 1),
      stoppedEarly,
      errors,
      termBefore,
      termAfter,
      persistence,
      persistenceProbe: probe,
      nodes: perNode,
      table,
      summary,
      flagged: errorCount > 0 || electionSuspected,
    };
  } finally {
    await stopDiskeyvalCluster(run);
  }
};
