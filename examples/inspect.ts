/**
 * Watching a diskeyval cluster in the XState inspector (README.md, "Watching it in the inspector").
 *
 *   npm run example:inspect                      runs through and exits 0 (about 5-10 s)
 *   npm run example:inspect -- --hold-ms 600000  keeps the cluster running 10 minutes for a browser
 *   npm run example:inspect -- --port 8080       the inspector server's port (default: a free one)
 *
 * Three nodes in this process, on free ports of 127.0.0.1 with mutual TLS (certificates from
 * createClusterCertificates, in memory; no persistence), each with `inspect` set to one
 * @statelyai/inspect WebSocket inspector. The inspector sends to @statelyai/inspect's own server
 * (`createInspectorServer`), which serves a page at http://localhost:<port> that embeds the
 * Stately inspector and forwards every inspection event to it. The example writes a few keys,
 * ends the leader, waits for the new leader, writes again, prints the URL to open and how many
 * inspection events went through the server (a WebSocket client of the server counts them), and
 * exits 0 on its own: every wait has a bound, and a watchdog ends the process with exit code 1
 * if the whole run takes longer than 60 s plus --hold-ms.
 *
 * In your own project, import from 'diskeyval' instead of '../src/index.js'.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createWebSocketInspector, createWebSocketReceiver } from '@statelyai/inspect';
import { createInspectorServer } from '@statelyai/inspect/server';
import { createClusterCertificates, type DiskeyvalNode, diskeyval, type LeaderEvent } from '../src/index.js';

const RUN_BOUND_MS = 60_000;
const STEP_BOUND_MS = 15_000;

const { values: args } = parseArgs({
  options: { 'hold-ms': { type: 'string', default: '0' }, port: { type: 'string' } },
});
const holdMs = Number(args['hold-ms']);
if (!Number.isInteger(holdMs) || holdMs < 0) throw new Error('--hold-ms wants a whole number of ms');

const watchdog = setTimeout(() => {
  console.error(`example:inspect did not finish within ${RUN_BOUND_MS + holdMs} ms`);
  process.exit(1);
}, RUN_BOUND_MS + holdMs);

/** `count` free TCP ports of 127.0.0.1 (listen on port 0, note the port, close). */
const freePorts = async (count: number): Promise<number[]> => {
  const servers = Array.from({ length: count }, () => net.createServer());
  await Promise.all(
    servers.map((server) => new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))),
  );
  const ports = servers.map((server) => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
};

/** Resolves with the first `leader` event of any node that `accept`s; rejects after STEP_BOUND_MS. */
const nextLeader = (nodes: DiskeyvalNode[], accept: (event: LeaderEvent) => boolean): Promise<LeaderEvent> =>
  new Promise((resolve, reject) => {
    const listeners = nodes.map((node) => {
      const listener = (event: LeaderEvent) => {
        if (event.nodeId === null || !accept(event)) return;
        done();
        resolve(event);
      };
      node.on('leader', listener);
      return listener;
    });
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no leader within ${STEP_BOUND_MS} ms`));
    }, STEP_BOUND_MS);
    const done = () => {
      clearTimeout(timer);
      nodes.forEach((node, i) => {
        node.off('leader', listeners[i]!);
      });
    };
  });

const ids = ['node-1', 'node-2', 'node-3'];
const [inspectorPort, ...nodePorts] = await freePorts(4);
const port = args.port === undefined ? inspectorPort! : Number(args.port);

// The inspector server, and a client of it that counts what it forwards (a browser would show it).
const server = createInspectorServer({ port, autoOpen: false });
const seen = { events: 0, actors: new Set<string>() };
createWebSocketReceiver({ server: `ws://127.0.0.1:${port}` }).subscribe((event) => {
  seen.events += 1;
  if (event.type === '@xstate.actor') seen.actors.add(event.sessionId);
});

const inspector = createWebSocketInspector({ url: `ws://127.0.0.1:${port}` });
const certs = await createClusterCertificates({ nodes: ids });
const members = ids.map((nodeId, i) => ({ nodeId, host: '127.0.0.1', port: nodePorts[i]! }));
const nodes = members.map(({ nodeId, host, port: nodePort }) =>
  diskeyval({
    nodeId,
    host,
    port: nodePort,
    peers: members.filter((member) => member.nodeId !== nodeId),
    tls: { cert: certs.nodes[nodeId]!.cert, key: certs.nodes[nodeId]!.key, ca: certs.ca.cert },
    // As README.md shows: the inspector's Observer, seeing every actor of the node.
    inspect: inspector.inspect,
  }),
);
const byId = new Map(ids.map((id, i) => [id, nodes[i]!]));

const firstLeader = nextLeader(nodes, () => true);
await Promise.all(nodes.map((node) => node.start()));
const first = await firstLeader;
console.log(`leader: ${first.nodeId} (term ${first.term})`);
for (let i = 1; i <= 3; i += 1) await byId.get(ids[i % 3]!)!.set(`key-${i}`, `value-${i}`);
console.log('wrote key-1 .. key-3 (through every node; followers forward to the leader)');

const survivors = nodes.filter((node) => node !== byId.get(first.nodeId!));
const newLeader = nextLeader(survivors, (event) => event.nodeId !== first.nodeId);
await byId.get(first.nodeId!)!.end();
console.log(`ended the leader ${first.nodeId}`);
const second = await newLeader;
console.log(`new leader: ${second.nodeId} (term ${second.term})`);
for (let i = 4; i <= 5; i += 1) await survivors[i % 2]!.set(`key-${i}`, `value-${i}`);
const values = await Promise.all([1, 5].map((i) => survivors[0]!.get(`key-${i}`)));
console.log(`wrote key-4, key-5; read back key-1 = ${values[0]}, key-5 = ${values[1]}`);

console.log(
  `\nOpen http://localhost:${port} in a browser to watch the nodes in the Stately inspector ` +
    `(the page embeds https://stately.ai/inspect; run with --hold-ms 600000 to keep the cluster up).`,
);
if (holdMs > 0) {
  console.log(`holding for ${holdMs} ms`);
  await new Promise((resolve) => setTimeout(resolve, holdMs));
}
await Promise.all(survivors.map((node) => node.end()));
console.log(
  `the inspector server forwarded ${seen.events} inspection events from ${seen.actors.size} actors`,
);
inspector.stop();
server.stop();
clearTimeout(watchdog);
console.log('done');
process.exit(0);
