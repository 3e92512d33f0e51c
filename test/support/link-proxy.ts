/**
 * TCP proxies on loopback that stand between cluster nodes, so that a test can cut and heal the
 * link between two nodes of real processes (real sockets, real mTLS end to end: a proxy only copies
 * bytes, it never sees a key, so a node still authenticates the node behind it).
 *
 * The TLS transport dials one outbound connection per peer and uses inbound connections only to
 * receive (src/io/tls-transport.ts), so the traffic from X to Y flows only over the connection X
 * dialed: one proxy per directed pair (X -> Y) carries exactly that direction's messages, and a
 * mesh of them, with each node's `peers` pointing at its own proxies, lets a test cut any link.
 *
 * A cut destroys the connections the proxy carries and refuses new ones (accepts and closes them at
 * once, as a dead link would) until healed; the dialing node sees a closed connection and re-dials
 * with its back-off. Everything listens on 127.0.0.1 only; close() releases every socket.
 */
import net from 'node:net';

export type LinkProxy = {
  /** The port the proxy listens on (127.0.0.1). */
  readonly port: number;
  /** Destroys every carried connection and refuses new ones until heal(). */
  cut(): void;
  heal(): void;
  isCut(): boolean;
  /** Connections accepted and carried, refused while cut, and bytes copied each way so far. */
  stats(): { carried: number; refused: number; bytesForward: number; bytesBackward: number; open: number };
  close(): Promise<void>;
};

const HOST = '127.0.0.1';

/** A proxy on a free loopback port that forwards each connection to `target.port` on loopback. */
export const createLinkProxy = async (target: { port: number }): Promise<LinkProxy> => {
  if (!Number.isInteger(target.port) || target.port <= 0 || target.port > 65_535) {
    throw new Error(`link proxy: target port ${target.port} is not a TCP port`);
  }
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  let cut = false;
  let carried = 0;
  let refused = 0;
  let bytesForward = 0;
  let bytesBackward = 0;

  const server = net.createServer((client) => {
    client.on('error', () => {
      // The pair is torn down on close.
    });
    if (cut) {
      refused += 1;
      client.destroy();
      return;
    }
    carried += 1;
    const upstream = net.connect({ host: HOST, port: target.port });
    upstream.on('error', () => {
      // The pair is torn down on close.
    });
    const pair = { client, upstream };
    pairs.add(pair);
    const teardown = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk: Buffer) => {
      bytesForward += chunk.length;
    });
    upstream.on('data', (chunk: Buffer) => {
      bytesBackward += chunk.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
    client.once('close', teardown);
    upstream.once('close', teardown);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;

  return {
    port,
    cut: () => {
      cut = true;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    heal: () => {
      cut = false;
    },
    isCut: () => cut,
    stats: () => ({ carried, refused, bytesForward, bytesBackward, open: pairs.size }),
    close: async () => {
      cut = true;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};

export type ProxyMesh = {
  /** For `startCluster({ perNode })`: each node's peers, each reached through its own proxy. */
  perNodePeers(): Record<string, { peers: Array<{ nodeId: string; host: string; port: number }> }>;
  /** The proxy that carries `from`'s messages to `to`. */
  proxy(from: string, to: string): LinkProxy;
  /** Cuts both directions between `a` and `b`. */
  cut(a: string, b: string): void;
  heal(a: string, b: string): void;
  /** Cuts (heals) every link of `id`, both directions. */
  isolate(id: string): void;
  rejoin(id: string): void;
  close(): Promise<void>;
};

/**
 * One proxy per directed pair of `ids`, forwarding to `ports[id]` (the port each node listens on).
 * Nodes only ever reach each other through the mesh when configured with `perNodePeers()`.
 */
export const createProxyMesh = async (
  ids: readonly string[],
  ports: Record<string, number>,
): Promise<ProxyMesh> => {
  const proxies = new Map<string, LinkProxy>();
  const keyOf = (from: string, to: string): string => `${from}->${to}`;
  try {
    for (const from of ids) {
      for (const to of ids) {
        if (from === to) continue;
        const port = ports[to];
        if (port === undefined) throw new Error(`proxy mesh: no port for ${to}`);
        proxies.set(keyOf(from, to), await createLinkProxy({ port }));
      }
    }
  } catch (error) {
    await Promise.all([...proxies.values()].map((p) => p.close()));
    throw error;
  }
  const proxy = (from: string, to: string): LinkProxy => {
    const found = proxies.get(keyOf(from, to));
    if (!found) throw new Error(`proxy mesh: no link ${keyOf(from, to)}`);
    return found;
  };
  const others = (id: string): string[] => ids.filter((other) => other !== id);
  return {
    perNodePeers: () =>
      Object.fromEntries(
        ids.map((id) => [
          id,
          { peers: others(id).map((to) => ({ nodeId: to, host: HOST, port: proxy(id, to).port })) },
        ]),
      ),
    proxy,
    cut: (a, b) => {
      proxy(a, b).cut();
      proxy(b, a).cut();
    },
    heal: (a, b) => {
      proxy(a, b).heal();
      proxy(b, a).heal();
    },
    isolate: (id) => {
      for (const other of others(id)) {
        proxy(id, other).cut();
        proxy(other, id).cut();
      }
    },
    rejoin: (id) => {
      for (const other of others(id)) {
        proxy(id, other).heal();
        proxy(other, id).heal();
      }
    },
    close: async () => {
      await Promise.all([...proxies.values()].map((p) => p.close()));
    },
  };
};
