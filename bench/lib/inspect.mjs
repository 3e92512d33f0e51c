/**
 * `npm run bench -- --inspect`: what watching a cluster in the XState inspector costs (issue 12,
 * item 3). W1 c=1 (sequential sets on the leader) on three fresh 3-node clusters, one after the
 * other in one run:
 *
 *   none           no inspector
 *   websocket      every node with @statelyai/inspect's createWebSocketInspector, as README.md shows
 *                  (`inspect: inspector.inspect`, the default inspection budget), sending to a relay
 *                  on 127.0.0.1 that forwards every message to a connected ws client, which reads
 *                  and counts them (as the Stately inspector's own server does for a browser)
 *   websocket-all  the same with `inspectEventsPerSecond: Infinity` (every event, no budget)
 *   callback       every node with a plain callback that counts the inspection events (default budget)
 *
 * Per variant: ops/s, p50/p99, the ratio to `none`, whether the leader held (no term change, no
 * election, one leader before and after), and for `websocket` the messages and bytes the client
 * read (per write, and the largest message). A phase that runs past `timeLimitS` stops starting
 * calls and reports what it did (`timeLimited`), so a slow inspector cannot hang the run.
 */
import { WebSocket, WebSocketServer } from 'ws';
import { freePorts } from '../../scripts/cluster.mjs';
import { fmtInt, fmtMs, fmtNum, markdownTable, pollUntil, round } from './common.mjs';
import {
  rolesOf,
  runDiskeyvalWorkload,
  startDiskeyvalCluster,
  stopDiskeyvalCluster,
} from './diskeyval-side.mjs';

export const INSPECT_VARIANTS = ['none', 'websocket', 'websocket-all', 'callback'];

/**
 * A WebSocket relay on 127.0.0.1 (what @statelyai/inspect/server does, without its HTTP page and
 * bound to loopback only) and one client of it that counts what it reads. Nodes connect and send;
 * every message goes to the other connections. `counts` since the last `reset()`.
 */
const startRelay = async () => {
  const [port] = await freePorts(1);
  const server = new WebSocketServer({ host: '127.0.0.1', port });
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const counts = { messages: 0, bytes: 0, maxMessageBytes: 0 };
  let viewer = null;
  server.on('connection', (socket) => {
    socket.on('message', (data) => {
      for (const client of server.clients) {
        if (client !== socket && client.readyState === WebSocket.OPEN) client.send(data);
      }
    });
  });
  viewer = new WebSocket(`ws://127.0.0.1:${port}`);
  await new Promise((resolve, reject) => {
    viewer.once('open', resolve);
    viewer.once('error', reject);
  });
  viewer.on('message', (data) => {
    const bytes = data.byteLength ?? data.length;
    counts.messages += 1;
    counts.bytes += bytes;
    if (bytes > counts.maxMessageBytes) counts.maxMessageBytes = bytes;
  });
  return {
    url: `ws://127.0.0.1:${port}`,
    counts,
    /** Connections other than the viewer (the nodes' inspectors). */
    senders: () => server.clients.size - 1,
    reset: () => Object.assign(counts, { messages: 0, bytes: 0, maxMessageBytes: 0 }),
    stop: async () => {
      viewer.terminate();
      for (const client of server.clients) client.terminate();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
};

/** The inspector of a variant; `eventsPerSecond: null` is Infinity (cluster-node.mjs). */
const inspectorOf = (variant, relay) => {
  if (variant === 'websocket') return { kind: 'websocket', url: relay.url };
  if (variant === 'websocket-all') return { kind: 'websocket', url: relay.url, eventsPerSecond: null };
  return { kind: 'callback' };
};
const isWebSocket = (variant) => variant.startsWith('websocket');

/** One variant: a fresh cluster, the JIT warm-up, then W1 c=1 on the leader. */
const runVariant = async (variant, relay, cfg) => {
  const ids = ['node-1', 'node-2', 'node-3'];
  const perNode =
    variant === 'none'
      ? undefined
      : Object.fromEntries(ids.map((id) => [id, { inspector: inspectorOf(variant, relay) }]));
  const run = await startDiskeyvalCluster({
    nodes: 3,
    electionTimeoutMs: cfg.electionTimeoutMs,
    checkout: cfg.checkout,
    perNode,
  });
  try {
    if (isWebSocket(variant)) {
      await pollUntil(() => relay.senders() >= ids.length, {
        timeoutMs: 10_000,
        everyMs: 20,
        label: `${ids.length} inspectors to connect to the relay`,
      });
    }
    const { leader, term } = await rolesOf(run);
    const spec = { kind: 'set', concurrency: 1, valueBytes: cfg.valueBytes, keySpace: 10_000 };
    const timeLimitMs = cfg.timeLimitS * 1000;
    if (cfg.jitWarmup > 0) {
      await runDiskeyvalWorkload(run, leader, { ...spec, ops: cfg.jitWarmup, warmup: 0, timeLimitMs });
    }
    relay.reset();
    const row = await runDiskeyvalWorkload(run, leader, { ...spec, ops: cfg.ops, warmup: 0, timeLimitMs });
    const socket = isWebSocket(variant) ? { ...relay.counts } : null;
    const callbacks =
      variant === 'callback'
        ? await Promise.all(
            ids.map((id) => run.cluster.call(id, { cmd: 'inspected' }, { timeoutMs: 10_000 })),
          )
        : null;
    const { leader: leaderAfter, term: termAfter } = await rolesOf(run);
    const leaderHeld = !row.electionSuspected && leaderAfter === leader && termAfter === term;
    return { variant, leader, term, leaderHeld, socket, callbacks, ...row };
  } finally {
    await stopDiskeyvalCluster(run);
  }
};

/** Runs every variant (`cfg.variants`, default all) and returns { rows, table, flagged }. */
export const runInspect = async (cfg) => {
  const relay = await startRelay();
  const rows = [];
  try {
    for (const variant of cfg.variants ?? INSPECT_VARIANTS) {
      cfg.log(`inspect: W1 c=1 with inspector ${variant}`);
      const row = await runVariant(variant, relay, cfg);
      cfg.log(
        `inspect ${variant}: ${fmtInt(row.opsPerS)} ops/s, p99 ${fmtMs(row.p99Ms)} ms, ${row.ok} ok` +
          `${row.timeLimited ? ' (time limit)' : ''}, leader ${row.leaderHeld ? 'held' : 'CHANGED'}`,
      );
      rows.push(row);
    }
  } finally {
    await relay.stop();
  }
  const none = rows.find((r) => r.variant === 'none');
  const table = markdownTable(
    [
      'inspector',
      'writes',
      'ops/s',
      'vs none',
      'p50 / p99 ms',
      'leader held',
      'events sent / skipped per write',
      'socket msgs / write',
      'socket KB / write',
      'largest msg KB',
    ],
    rows.map((r) => [
      r.variant,
      `${r.ok}${r.timeLimited ? ` (stopped at ${cfg.timeLimitS} s)` : ''}`,
      fmtInt(r.opsPerS),
      none?.opsPerS ? `${fmtNum(r.opsPerS / none.opsPerS, 2)}x` : 'n/a',
      `${fmtMs(r.p50Ms)} / ${fmtMs(r.p99Ms)}`,
      r.leaderHeld ? 'yes' : 'NO',
      r.variant === 'none'
        ? '-'
        : `${fmtNum(r.perOp.inspectionSent ?? 0, 1)} / ${fmtNum(r.perOp.inspectionSkipped ?? 0, 1)}`,
      r.socket ? fmtNum(r.socket.messages / Math.max(r.ok, 1), 1) : '-',
      r.socket ? fmtNum(r.socket.bytes / 1024 / Math.max(r.ok, 1), 2) : '-',
      r.socket ? fmtNum(r.socket.maxMessageBytes / 1024, 1) : '-',
    ]),
    ['l', 'r', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'r'],
  );
  const flagged = rows.some((r) => !r.leaderHeld || r.errors > 0);
  return {
    rows: rows.map((r) => ({ ...r, ratioToNone: none?.opsPerS ? round(r.opsPerS / none.opsPerS, 3) : null })),
    table,
    flagged,
  };
};
