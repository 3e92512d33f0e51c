/**
 * The loopback link proxy of test/support/link-proxy.ts (used by the amnesia e2e tests): it copies
 * bytes both ways, a cut closes the connections it carries and refuses new ones, a heal lets new
 * connections through again, and a mesh cuts exactly the links of the node it isolates.
 * Every wait is on a socket event with a bound.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createLinkProxy, createProxyMesh, type LinkProxy } from '../support/link-proxy.js';

const BOUND_MS = 5000;

const bounded = <T>(promise: Promise<T>, what: string): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${BOUND_MS} ms: ${what}`)), BOUND_MS);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
};

/** An echo server on loopback: answers every chunk with `echo:` + the chunk. */
const startEcho = async (): Promise<{ port: number; close(): Promise<void>; accepted(): number }> => {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted += 1;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    socket.on('data', (chunk) => socket.write(Buffer.concat([Buffer.from('echo:'), chunk])));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted: () => accepted,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};

/** Connects, sends `text`, resolves with the first answer, or with 'closed' if the link closes first. */
const roundTrip = (port: number, text: string): Promise<string> =>
  bounded(
    new Promise<string>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(text));
      socket.on('error', () => undefined);
      socket.once('data', (chunk) => {
        resolve(chunk.toString('utf8'));
        socket.destroy();
      });
      socket.once('close', () => resolve('closed'));
    }),
    `a round trip through port ${port}`,
  );

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('link proxy', () => {
  it('copies bytes both ways; a cut closes open links and refuses new ones; a heal lets them through', async () => {
    const echo = await startEcho();
    cleanups.push(echo.close);
    const proxy: LinkProxy = await createLinkProxy({ port: echo.port });
    cleanups.push(proxy.close);

    expect(await roundTrip(proxy.port, 'a')).toBe('echo:a');

    // An open connection is closed by the cut.
    const open = net.connect({ host: '127.0.0.1', port: proxy.port });
    open.on('error', () => undefined);
    const closed = bounded(
      new Promise<void>((resolve) => open.once('close', () => resolve())),
      'the cut link to close',
    );
    await bounded(new Promise<void>((resolve) => open.once('connect', () => resolve())), 'connect');
    open.write('b');
    await bounded(
      new Promise<void>((resolve) => open.once('data', () => resolve())),
      'the echo before the cut',
    );
    proxy.cut();
    await closed;
    expect(proxy.isCut()).toBe(true);

    const acceptedBefore = echo.accepted();
    expect(await roundTrip(proxy.port, 'c')).toBe('closed');
    expect(echo.accepted(), 'a refused connection never reaches the target').toBe(acceptedBefore);

    proxy.heal();
    expect(await roundTrip(proxy.port, 'd')).toBe('echo:d');
    const stats = proxy.stats();
    expect(stats.refused).toBe(1);
    expect(stats.carried).toBe(3);
    expect(stats.bytesForward).toBe(3);
    expect(stats.bytesBackward).toBe('echo:a'.length + 'echo:b'.length + 'echo:d'.length);
  });

  it('closes the client side when the target is down', async () => {
    const echo = await startEcho();
    const proxy = await createLinkProxy({ port: echo.port });
    cleanups.push(proxy.close);
    await echo.close();
    expect(await roundTrip(proxy.port, 'x')).toBe('closed');
  });

  it('a mesh gives each node its own proxy per peer and isolates exactly one node', async () => {
    const ids = ['a', 'b', 'c'];
    const echoes = await Promise.all(ids.map(() => startEcho()));
    for (const echo of echoes) cleanups.push(echo.close);
    const ports = Object.fromEntries(ids.map((id, i) => [id, echoes[i]!.port]));
    const mesh = await createProxyMesh(ids, ports);
    cleanups.push(mesh.close);

    const peers = mesh.perNodePeers();
    expect(peers.a!.peers.map((p) => p.nodeId)).toEqual(['b', 'c']);
    const allPorts = ids.flatMap((id) => peers[id]!.peers.map((p) => p.port));
    expect(new Set(allPorts).size, 'six directed links, six proxies').toBe(6);
    expect(allPorts.some((port) => Object.values(ports).includes(port))).toBe(false);

    mesh.isolate('c');
    expect(await roundTrip(mesh.proxy('a', 'c').port, '1')).toBe('closed');
    expect(await roundTrip(mesh.proxy('c', 'b').port, '2')).toBe('closed');
    expect(await roundTrip(mesh.proxy('a', 'b').port, '3')).toBe('echo:3');
    expect(await roundTrip(mesh.proxy('b', 'a').port, '4')).toBe('echo:4');
    mesh.rejoin('c');
    expect(await roundTrip(mesh.proxy('c', 'a').port, '5')).toBe('echo:5');
    mesh.cut('a', 'b');
    expect(await roundTrip(mesh.proxy('b', 'a').port, '6')).toBe('closed');
    expect(await roundTrip(mesh.proxy('b', 'c').port, '7')).toBe('echo:7');
  });
});
