/**
 * The README's inspector, as a new user attaches it: `inspect: inspector.inspect` of
 * `createWebSocketInspector` from @statelyai/inspect (this line typechecks: the option takes an
 * observer), sending to a WebSocket server on a loopback port that counts what arrives. A 3-node
 * in-process cluster with the inspector on every node keeps one leader through 200 sequential
 * writes, and the bytes sent per write stay under a bound (snapshots are summaries: no entries, no
 * values). The figures are printed.
 */
import { createWebSocketInspector } from '@statelyai/inspect';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';
import { within } from '../support/within.js';

const IDS = ['w1', 'w2', 'w3'] as const;
const WRITES = 200;
/** Inspector bytes per write, all three nodes together (events and snapshots of every actor). */
const BYTES_PER_WRITE_BOUND = 128 * 1024;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('createWebSocketInspector on every node', () => {
  it('keeps the leader through 200 writes and sends a bounded number of bytes per write', async () => {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise<void>((resolve) => server.once('listening', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    let bytes = 0;
    let frames = 0;
    let largestFrame = 0;
    /** Resolves when a frame holding this text arrives (frames arrive in the order they were sent). */
    const markers = new Map<string, () => void>();
    server.on('connection', (socket) => {
      socket.on('message', (data: Buffer) => {
        bytes += data.byteLength;
        frames += 1;
        largestFrame = Math.max(largestFrame, data.byteLength);
        for (const [marker, resolve] of markers) if (data.includes(marker)) resolve();
      });
    });
    const { port } = server.address() as { port: number };
    const inspector = createWebSocketInspector({ url: `ws://127.0.0.1:${port}` });
    cleanups.push(() => inspector.stop());
    const connected = new Promise<void>((resolve) => server.once('connection', () => resolve()));
    const transport = createMemoryTransport();
    const nodes: DiskeyvalNode[] = IDS.map((nodeId, index) =>
      diskeyval({
        nodeId,
        peers: IDS.filter((id) => id !== nodeId),
        transport,
        electionTimeoutMs: 300,
        heartbeatMs: 50,
        seed: index + 3,
        inspect: inspector.inspect,
      }),
    );
    cleanups.push(() => Promise.all(nodes.map((node) => node.end())).then(() => undefined));
    await within(connected, 'the inspector to connect', 10_000);
    await Promise.all(nodes.map((node) => node.start()));
    const leaderEvents: string[] = [];
    for (const node of nodes)
      node.on('leader', (leader) => leaderEvents.push(`${leader.nodeId}/${leader.term}`));
    const agreed = () =>
      nodes.find((node) => node.isLeader() && nodes.every((o) => o.leaderId() === node.leaderId()));
    await within(
      new Promise<void>((resolve) => {
        const check = () => (agreed() ? resolve() : undefined);
        for (const node of nodes) node.on('leader', check);
        check();
      }),
      'a leader',
      15_000,
    );
    const leader = agreed()!;
    const term = leader.getMetrics().term;
    leaderEvents.length = 0;
    const before = bytes;
    const startedMs = performance.now();
    for (let index = 0; index < WRITES; index += 1)
      await leader.set(`key-${index % 20}`, { index, text: 'v'.repeat(100) });
    const tookMs = performance.now() - startedMs;
    // A marker frame after the writes: once it arrived, so did every frame of the writes.
    const marker = 'end-of-the-measured-writes';
    const arrived = new Promise<void>((resolve) => markers.set(marker, resolve));
    inspector.actor(marker);
    await within(arrived, 'the inspector frames to arrive', 10_000);
    const perWrite = (bytes - before) / WRITES;
    console.info(
      `inspector over ws: ${WRITES} sequential writes in ${Math.round(tookMs)} ms, ${Math.round(perWrite)} bytes per write (3 nodes), ${frames} frames, largest ${largestFrame} bytes`,
    );
    expect(leader.isLeader()).toBe(true);
    expect(leader.getMetrics().term).toBe(term);
    expect(leaderEvents).toEqual([]);
    expect(perWrite).toBeLessThan(BYTES_PER_WRITE_BOUND);
  }, 120_000);
});
