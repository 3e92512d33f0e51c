import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import {
  type CertificateAndKey,
  type ClusterCertificates,
  certificateIdentities,
  certificateNamesNode,
  createCertificateAuthority,
  createClusterCertificates,
  issueNodeCertificate,
  loadX509,
  writeClusterCertificates,
} from '../../src/io/certs.js';
import { createFrameEncoder, DEFAULT_MAX_FRAME_BYTES } from '../../src/io/codec.js';
import {
  createTlsTransport,
  type RejectReason,
  type TlsPeer,
  type TlsTransportEndpoint,
  type TlsTransportLogEvent,
  type TlsTransportOptions,
} from '../../src/io/tls-transport.js';

const HOST = '127.0.0.1';
const WAIT_MS = 5000;
const HANDSHAKE_TIMEOUT_MS = 300;

type TestMessage = {
  type: 'Ping' | 'Blob';
  from: string;
  to: string;
  nonce: number;
  seq?: number;
  data?: Uint8Array | null;
};

// ---- event-driven waiting (no fixed sleeps) ---------------------------------------------------

/** Something that changes over time; `until` re-checks a condition on every change, with a bound. */
const createSignal = () => {
  const listeners = new Set<() => void>();
  return {
    notify: () => {
      for (const listener of [...listeners]) listener();
    },
    until: (check: () => boolean, label: string, ms = WAIT_MS): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        if (check()) {
          resolve();
          return;
        }
        const timer = setTimeout(() => {
          listeners.delete(listener);
          reject(new Error(`timed out after ${ms} ms waiting for ${label}`));
        }, ms);
        const listener = (): void => {
          if (!check()) return;
          clearTimeout(timer);
          listeners.delete(listener);
          resolve();
        };
        listeners.add(listener);
      }),
  };
};

const createProbe = () => {
  const events: TlsTransportLogEvent[] = [];
  const signal = createSignal();
  const find = (predicate: (event: TlsTransportLogEvent) => boolean, since: number) =>
    events.slice(since).find(predicate);
  return {
    events,
    log: (event: TlsTransportLogEvent) => {
      events.push(event);
      signal.notify();
    },
    mark: () => events.length,
    waitFor: async (
      predicate: (event: TlsTransportLogEvent) => boolean,
      since: number,
      label: string,
      ms = WAIT_MS,
    ): Promise<TlsTransportLogEvent> => {
      await signal.until(() => find(predicate, since) !== undefined, label, ms);
      return find(predicate, since)!;
    },
  };
};

const createInbox = () => {
  const messages: TestMessage[] = [];
  const signal = createSignal();
  return {
    messages,
    deliver: (message: TestMessage) => {
      messages.push(message);
      signal.notify();
    },
    until: (check: (messages: TestMessage[]) => boolean, label: string, ms = WAIT_MS) =>
      signal.until(() => check(messages), label, ms),
  };
};

const closedWithin = (socket: net.Socket, ms = WAIT_MS): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    if (socket.destroyed && socket.readyState === 'closed') {
      resolve();
      return;
    }
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });

// ---- nodes ------------------------------------------------------------------------------------

type Node = {
  id: string;
  endpoint: TlsTransportEndpoint<TestMessage>;
  transport: ReturnType<typeof createTlsTransport<TestMessage>>;
  inbox: ReturnType<typeof createInbox>;
  probe: ReturnType<typeof createProbe>;
  port: number;
};

const startNode = async (
  id: string,
  credentials: CertificateAndKey,
  ca: string,
  overrides: Partial<TlsTransportOptions> = {},
): Promise<Node> => {
  const inbox = createInbox();
  const probe = createProbe();
  const transport = createTlsTransport<TestMessage>({
    host: HOST,
    port: 0,
    peers: [],
    tls: { cert: credentials.cert, key: credentials.key, ca },
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    reconnect: { initialMs: 20, maxMs: 200 },
    log: probe.log,
    ...overrides,
  });
  const endpoint = await transport.connect(id, inbox.deliver);
  return { id, endpoint, transport, inbox, probe, port: endpoint.address().port };
};

const peersOf = (nodes: readonly Node[]): TlsPeer[] =>
  nodes.map((n) => ({ nodeId: n.id, host: HOST, port: n.port }));

let nonce = 0;

/** Every node sends one Ping to every other node; all of them must arrive. */
const assertExchange = async (nodes: readonly Node[]): Promise<void> => {
  const expected: Array<{ to: Node; from: string; nonce: number }> = [];
  for (const from of nodes) {
    for (const to of nodes) {
      if (from === to) continue;
      const n = ++nonce;
      from.endpoint.send({ type: 'Ping', from: from.id, to: to.id, nonce: n });
      expected.push({ to, from: from.id, nonce: n });
    }
  }
  await Promise.all(
    expected.map(({ to, from, nonce: n }) =>
      to.inbox.until(
        (messages) => messages.some((m) => m.nonce === n && m.from === from),
        `Ping ${n} from ${from} at ${to.id}`,
      ),
    ),
  );
};

const rejectedCount = (node: Node, reason: RejectReason): number =>
  node.endpoint.metrics().rejected[reason] ?? 0;

const isRejection =
  (reason?: RejectReason) =>
  (event: TlsTransportLogEvent): boolean =>
    event.event === 'rejected' && (reason === undefined || event.reason === reason);

// ---- the cluster under test -------------------------------------------------------------------

const MEMBERS = ['node-1', 'node-2', 'node-3', 'node-4'];

let certs: ClusterCertificates;
let cluster: Node[];
/** node-2 is the node the rogue clients attack. */
let victim: Node;
const encoder = createFrameEncoder();

const rogueClient = (
  credentials: CertificateAndKey | null,
  port = victim.port,
  ca = certs.ca.cert,
): tls.TLSSocket => {
  const socket = tls.connect({
    host: HOST,
    port,
    ca,
    minVersion: 'TLSv1.3',
    ...(credentials ? { cert: credentials.cert, key: credentials.key } : {}),
    checkServerIdentity: () => undefined,
  });
  socket.on('error', () => {
    // Expected: the server closes on us.
  });
  // Read (and discard) whatever arrives, so the end of the stream is seen and 'close' follows.
  socket.resume();
  return socket;
};

/** A TLS client with valid node-4 credentials (a member with no running endpoint). */
const validRogue = (onSecure: (socket: tls.TLSSocket) => void): tls.TLSSocket => {
  const socket = rogueClient(certs.nodes['node-4']!);
  socket.once('secureConnect', () => onSecure(socket));
  return socket;
};

/** Runs an attack against the victim and checks: connection closed, reason counted and logged. */
const expectRejected = async (reason: RejectReason, attack: () => net.Socket): Promise<void> => {
  const since = victim.probe.mark();
  const before = rejectedCount(victim, reason);
  const socket = attack();
  await closedWithin(socket);
  const event = await victim.probe.waitFor(isRejection(), since, `a rejection (${reason}) at the victim`);
  expect(event).toMatchObject({ event: 'rejected', reason });
  expect(rejectedCount(victim, reason)).toBe(before + 1);
  // The legitimate nodes are unaffected.
  await assertExchange(cluster);
};

beforeAll(async () => {
  certs = await createClusterCertificates({ nodes: MEMBERS });
  const members = new Set(MEMBERS);
  cluster = await Promise.all(
    ['node-1', 'node-2', 'node-3'].map((id) =>
      startNode(id, certs.nodes[id]!, certs.ca.cert, { isMember: (nodeId) => members.has(nodeId) }),
    ),
  );
  for (const node of cluster) node.endpoint.setPeers(peersOf(cluster));
  victim = cluster[1]!;
});

afterAll(async () => {
  await Promise.all((cluster ?? []).map((node) => node.endpoint.close()));
});

describe('tls transport: exchange', () => {
  it('listens on the port it was given (0 = any) and exchanges messages both ways', async () => {
    for (const node of cluster) {
      expect(node.port).toBeGreaterThan(0);
      expect(node.transport.address()).toEqual({ host: HOST, port: node.port });
    }
    await assertExchange(cluster);
    for (const node of cluster) expect(node.endpoint.metrics().connectionsOpen).toBe(4);
  });

  it('carries many messages in flight, in order, with Uint8Array payloads, batched into few frames', async () => {
    await assertExchange(cluster);
    const perPair = 2000;
    const before = cluster.map((node) => node.endpoint.metrics());
    const base = ++nonce;
    for (const from of cluster) {
      for (const to of cluster) {
        if (from === to) continue;
        for (let seq = 0; seq < perPair; seq++) {
          from.endpoint.send({
            type: 'Blob',
            from: from.id,
            to: to.id,
            nonce: base,
            seq,
            data: seq % 3 === 0 ? null : Uint8Array.of(seq & 0xff, (seq >> 8) & 0xff, 7),
          });
        }
      }
    }
    await Promise.all(
      cluster.map((to) =>
        to.inbox.until(
          (messages) => messages.filter((m) => m.nonce === base).length === perPair * (cluster.length - 1),
          `${perPair * 2} Blobs at ${to.id}`,
        ),
      ),
    );
    cluster.forEach((to, i) => {
      for (const from of cluster) {
        if (from === to) continue;
        const got = to.inbox.messages.filter((m) => m.nonce === base && m.from === from.id);
        expect(got.map((m) => m.seq)).toEqual(Array.from({ length: perPair }, (_, seq) => seq));
        const sample = got[301]!;
        expect(sample.data).toBeInstanceOf(Uint8Array);
        expect([...sample.data!]).toEqual([301 & 0xff, 301 >> 8, 7]);
        expect(got[300]!.data).toBeNull();
      }
      const after = to.endpoint.metrics();
      const sent = after.messagesOut - before[i]!.messagesOut;
      const frames = after.framesOut - before[i]!.framesOut;
      expect(sent).toBe(perPair * 2);
      // Sent in one tick: one frame per peer (a couple more if a write landed in another turn).
      expect(frames).toBeLessThanOrEqual(8);
      expect(after.dropped).toBe(before[i]!.dropped);
    });
  });
});

describe('tls transport: coalesce', () => {
  it("sends, in order, what `coalesce` keeps of each peer's batch", async () => {
    const batches: number[][] = [];
    // Keeps the last Ping of each batch: what a later message makes redundant is dropped.
    const coalesce = <T>(batch: T[]): T[] => {
      batches.push(batch.map((message) => (message as unknown as TestMessage).seq!));
      return batch.filter(
        (message, index) => index === batch.length - 1 || (message as unknown as TestMessage).type === 'Blob',
      );
    };
    const a = await startNode('node-1', certs.nodes['node-1']!, certs.ca.cert, { coalesce });
    const b = await startNode('node-2', certs.nodes['node-2']!, certs.ca.cert);
    a.endpoint.setPeers(peersOf([a, b]));
    b.endpoint.setPeers(peersOf([a, b]));
    try {
      await assertExchange([a, b]);
      const base = ++nonce;
      const before = a.endpoint.metrics();
      for (let seq = 0; seq < 6; seq++) {
        const type = seq === 2 ? 'Blob' : 'Ping';
        a.endpoint.send({ type, from: 'node-1', to: 'node-2', nonce: base, seq });
      }
      await b.inbox.until(
        (messages) => messages.some((m) => m.nonce === base && m.seq === 5),
        'the last Ping',
      );
      expect(b.inbox.messages.filter((m) => m.nonce === base).map((m) => m.seq)).toEqual([2, 5]);
      expect(batches.at(-1)).toEqual([0, 1, 2, 3, 4, 5]);
      expect(a.endpoint.metrics().messagesOut - before.messagesOut).toBe(2);
    } finally {
      await Promise.all([a.endpoint.close(), b.endpoint.close()]);
    }
  });
});

describe('tls transport: rejections', () => {
  it('refuses a client certificate from an unknown CA', async () => {
    const foreignCa = await createCertificateAuthority();
    const foreign = await issueNodeCertificate(foreignCa, 'node-4');
    await expectRejected('certificate-untrusted', () => rogueClient(foreign));
  });

  it('refuses an expired client certificate', async () => {
    const day = 86_400_000;
    const expired = await issueNodeCertificate(certs.ca, 'node-4', {
      notBefore: new Date(Date.now() - 10 * day),
      notAfter: new Date(Date.now() - day),
    });
    await expectRejected('certificate-expired', () => rogueClient(expired));
  });

  it('refuses a client certificate that is not yet valid', async () => {
    const day = 86_400_000;
    const early = await issueNodeCertificate(certs.ca, 'node-4', {
      notBefore: new Date(Date.now() + day),
      notAfter: new Date(Date.now() + 10 * day),
    });
    await expectRejected('certificate-not-yet-valid', () => rogueClient(early));
  });

  it('refuses a client without a certificate', async () => {
    await expectRejected('no-certificate', () => rogueClient(null));
  });

  it('refuses a valid certificate whose identity does not match the claimed nodeId', async () => {
    // node-4's certificate, claiming to be node-3.
    await expectRejected('identity-mismatch', () =>
      validRogue((socket) => socket.write(encoder.handshake('node-3'))),
    );
  });

  it('gives a valid certificate of a node that is not a member the handshake and nothing else', async () => {
    const intruder = await issueNodeCertificate(certs.ca, 'intruder');
    const since = victim.probe.mark();
    const before = victim.endpoint.metrics().nonMemberMessages;
    const socket = rogueClient(intruder);
    const forged: TestMessage = { type: 'Ping', from: 'intruder', to: 'node-2', nonce: -2 };
    socket.once('secureConnect', () =>
      socket.write(Buffer.concat([encoder.handshake('intruder'), encoder.messages([forged])])),
    );
    await victim.probe.waitFor(
      (event) => event.event === 'dropped' && event.reason === 'not-member' && event.nodeId === 'intruder',
      since,
      "the intruder's message dropped",
    );
    expect(victim.endpoint.metrics().nonMemberMessages).toBe(before + 1);
    expect(victim.inbox.messages.some((m) => m.nonce === -2)).toBe(false);
    socket.destroy();
    await assertExchange(cluster);
  });

  it('refuses a plaintext (non-TLS) client', async () => {
    await expectRejected('tls-handshake-failed', () => {
      const socket = net.connect({ host: HOST, port: victim.port });
      socket.on('error', () => {});
      socket.resume();
      socket.once('connect', () => socket.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'));
      return socket;
    });
  });

  it('closes a connection that sends random bytes after a valid TLS handshake', async () => {
    // A 64-byte frame of garbage where the protocol handshake should be (0xc1 is never valid msgpack).
    const garbage = Buffer.concat([Buffer.from([0, 0, 0, 64, 0xc1]), randomBytes(63)]);
    await expectRejected('malformed-frame', () => validRogue((socket) => socket.write(garbage)));
  });

  it('closes a connection that sends garbage frames after a valid protocol handshake', async () => {
    const garbage = Buffer.concat([Buffer.from([0, 0, 0, 32, 0xc1]), randomBytes(31)]);
    await expectRejected('malformed-frame', () =>
      validRogue((socket) => socket.write(Buffer.concat([encoder.handshake('node-4'), garbage]))),
    );
  });

  it('closes a connection that announces an oversized frame, before its body arrives', async () => {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(DEFAULT_MAX_FRAME_BYTES + 1);
    await expectRejected('frame-too-large', () =>
      // Only the header is ever sent: the body never exists, so the check cannot wait for it.
      validRogue((socket) => socket.write(Buffer.concat([encoder.handshake('node-4'), header]))),
    );
  });

  it('closes a half-open connection (TCP connect, no handshake) after the handshake timeout', async () => {
    const started = performance.now();
    await expectRejected('handshake-timeout', () => {
      const socket = net.connect({ host: HOST, port: victim.port });
      socket.on('error', () => {});
      socket.resume();
      return socket;
    });
    expect(performance.now() - started).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 50);
  });

  it('closes a TLS connection that never sends the protocol handshake, after the timeout', async () => {
    await expectRejected('handshake-timeout', () => validRogue(() => {}));
  });

  it('closes a connection whose handshake has the wrong protocol version', async () => {
    await expectRejected('protocol-version', () =>
      validRogue((socket) => socket.write(encoder.handshake('node-4', 2))),
    );
  });

  it('closes a connection whose handshake is not a diskeyval handshake', async () => {
    await expectRejected('bad-handshake', () =>
      validRogue((socket) =>
        socket.write(encoder.frame({ protocol: 'other', version: 1, nodeId: 'node-4' })),
      ),
    );
  });

  it('closes a connection that sends a message from another node than the authenticated one', async () => {
    const forged: TestMessage = { type: 'Ping', from: 'node-1', to: 'node-2', nonce: -1 };
    await expectRejected('sender-mismatch', () =>
      validRogue((socket) =>
        socket.write(Buffer.concat([encoder.handshake('node-4'), encoder.messages([forged])])),
      ),
    );
    expect(victim.inbox.messages.some((m) => m.nonce === -1)).toBe(false);
  });

  it('on the dialing side, refuses a server with the wrong identity, an expired or a foreign certificate', async () => {
    const dialer = cluster[0]!;
    const day = 86_400_000;
    const foreignCa = await createCertificateAuthority();
    const cases: Array<[RejectReason, CertificateAndKey]> = [
      // A valid cluster certificate, but of node-3: not the node-4 we meant to dial.
      ['identity-mismatch', certs.nodes['node-3']!],
      [
        'certificate-expired',
        await issueNodeCertificate(certs.ca, 'node-4', {
          notBefore: new Date(Date.now() - 10 * day),
          notAfter: new Date(Date.now() - day),
        }),
      ],
      ['certificate-untrusted', await issueNodeCertificate(foreignCa, 'node-4')],
    ];
    for (const [reason, credentials] of cases) {
      const server = tls.createServer({ ...credentials, minVersion: 'TLSv1.3' }, (socket) =>
        socket.destroy(),
      );
      server.on('tlsClientError', () => {});
      await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
      const { port } = server.address() as net.AddressInfo;
      const since = dialer.probe.mark();
      dialer.endpoint.setPeers([...peersOf(cluster), { nodeId: 'node-4', host: HOST, port }]);
      dialer.endpoint.send({ type: 'Ping', from: dialer.id, to: 'node-4', nonce: ++nonce });
      const event = await dialer.probe.waitFor(isRejection(), since, `a dial-side rejection (${reason})`);
      expect(event).toMatchObject({ event: 'rejected', reason, direction: 'outbound', nodeId: 'node-4' });
      dialer.endpoint.setPeers(peersOf(cluster));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    await assertExchange(cluster);
  });

  it('has counted every rejection in metrics', () => {
    const { rejected } = victim.endpoint.metrics();
    for (const reason of [
      'certificate-untrusted',
      'certificate-expired',
      'certificate-not-yet-valid',
      'identity-mismatch',
      'tls-handshake-failed',
      'malformed-frame',
      'frame-too-large',
      'handshake-timeout',
      'protocol-version',
    ]) {
      expect(rejected[reason], reason).toBeGreaterThanOrEqual(1);
    }
  });
});

describe('tls transport: failures and bounds', () => {
  it('reconnects after the peer closes and comes back on the same port', async () => {
    const a = await startNode('node-1', certs.nodes['node-1']!, certs.ca.cert);
    let b = await startNode('node-2', certs.nodes['node-2']!, certs.ca.cert);
    const pair = [a, b];
    a.endpoint.setPeers(peersOf(pair));
    b.endpoint.setPeers(peersOf(pair));
    try {
      await assertExchange(pair);
      const since = a.probe.mark();
      await b.endpoint.close();
      await a.probe.waitFor(
        (e) => e.event === 'disconnected' && e.direction === 'outbound' && e.nodeId === 'node-2',
        since,
        'a to notice that b went away',
      );
      // Sent while b is down: queued (bounded), then delivered once b is back.
      const n = ++nonce;
      a.endpoint.send({ type: 'Ping', from: 'node-1', to: 'node-2', nonce: n });
      await a.probe.waitFor(
        (e) => e.event === 'connect-failed' && e.nodeId === 'node-2',
        since,
        'a failed redial',
      );
      b = await startNode('node-2', certs.nodes['node-2']!, certs.ca.cert, { port: b.port });
      b.endpoint.setPeers(peersOf([a, b]));
      await b.inbox.until(
        (messages) => messages.some((m) => m.nonce === n),
        'the queued Ping after reconnect',
      );
      await assertExchange([a, b]);
    } finally {
      await Promise.all([a.endpoint.close(), b.endpoint.close()]);
    }
  });

  it('keeps the queue for a peer that is down within its bound', async () => {
    // A port with nothing listening on it.
    const probeServer = net.createServer();
    await new Promise<void>((resolve) => probeServer.listen(0, HOST, resolve));
    const deadPort = (probeServer.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => probeServer.close(() => resolve()));

    const limit = 16;
    const a = await startNode('node-1', certs.nodes['node-1']!, certs.ca.cert, { maxQueuedMessages: limit });
    a.endpoint.setPeers([{ nodeId: 'node-2', host: HOST, port: deadPort }]);
    try {
      const since = a.probe.mark();
      let sent = 0;
      for (let round = 0; round < 10; round++) {
        for (let i = 0; i < 1000; i++) {
          a.endpoint.send({ type: 'Ping', from: 'node-1', to: 'node-2', nonce: ++nonce });
          sent++;
        }
        expect(a.endpoint.metrics().queued).toBeLessThanOrEqual(limit);
        await new Promise((resolve) => setImmediate(resolve));
      }
      await a.probe.waitFor((e) => e.event === 'connect-failed', since, 'a failed dial');
      const metrics = a.endpoint.metrics();
      expect(metrics.queued).toBe(limit);
      expect(metrics.dropped).toBe(sent - limit);
      // Unknown destinations are dropped too, never queued.
      a.endpoint.send({ type: 'Ping', from: 'node-1', to: 'nobody', nonce: ++nonce });
      expect(a.endpoint.metrics().dropped).toBe(sent - limit + 1);
    } finally {
      await a.endpoint.close();
    }
    expect(a.endpoint.metrics().queued).toBe(0);
  });

  it('refuses to start with a certificate that does not name the node', async () => {
    const transport = createTlsTransport({
      host: HOST,
      port: 0,
      peers: [],
      tls: { cert: certs.nodes['node-1']!.cert, key: certs.nodes['node-1']!.key, ca: certs.ca.cert },
    });
    await expect(transport.connect('node-2', () => {})).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('cert CLI', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diskeyval-certs-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const run = async (argv: string[]) => {
    let stdout = '';
    let stderr = '';
    const code = await main(argv, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
    return { code, stdout, stderr };
  };

  it('writes a CA and node certificates with CN and SAN naming each node', async () => {
    const out = join(dir, 'cluster');
    const result = await run(['certs', '--out', out, '--nodes', 'node-1,node-2,node-3', '--days', '30']);
    expect(result).toMatchObject({ code: 0, stderr: '' });
    const x509 = await loadX509();
    const ca = new x509.X509Certificate(await readFile(join(out, 'ca.pem'), 'utf8'));
    expect(ca.subject).toContain('CN=');
    expect(await ca.isSelfSigned()).toBe(true);
    for (const node of ['node-1', 'node-2', 'node-3']) {
      const pem = await readFile(join(out, `${node}.pem`), 'utf8');
      const key = await readFile(join(out, `${node}.key`), 'utf8');
      expect(key).toContain('-----BEGIN PRIVATE KEY-----');
      expect((await stat(join(out, `${node}.key`))).mode & 0o777).toBe(0o600);
      const cert = new x509.X509Certificate(pem);
      expect(cert.subjectName.getField('CN')).toEqual([node]);
      const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
      const names = san.names.items.map((name) => `${name.type}:${name.value}`);
      expect(names).toEqual(expect.arrayContaining([`dns:${node}`, 'dns:localhost', 'ip:127.0.0.1']));
      const eku = cert.getExtension(x509.ExtendedKeyUsageExtension)!;
      expect(eku.usages).toEqual(
        expect.arrayContaining([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      );
      expect(await cert.verify({ publicKey: ca.publicKey })).toBe(true);
      const days = (cert.notAfter.getTime() - cert.notBefore.getTime()) / 86_400_000;
      expect(days).toBeCloseTo(30, 0);
      // Node's TLS accepts the pair, and reads the same identities.
      tls.createSecureContext({ cert: pem, key, ca: await readFile(join(out, 'ca.pem'), 'utf8') });
      const legacy = new (await import('node:crypto')).X509Certificate(pem).toLegacyObject();
      expect(certificateIdentities(legacy).commonName).toBe(node);
      expect(certificateNamesNode(legacy, node)).toBe(true);
      expect(certificateNamesNode(legacy, node.toUpperCase())).toBe(false);
    }
    expect((await stat(join(out, 'ca.key'))).mode & 0o777).toBe(0o600);
    // It does not silently replace an existing CA.
    expect((await run(['certs', '--out', out, '--nodes', 'node-1'])).code).toBe(1);
    expect((await run(['certs', '--out', out, '--nodes', 'node-1', '--force'])).code).toBe(0);
  });

  it('writeClusterCertificates also takes node ids and leaves no temporary files', async () => {
    const out = join(dir, 'by-ids');
    const { certificates, files } = await writeClusterCertificates(out, ['alpha', 'beta']);
    expect(Object.keys(certificates.nodes)).toEqual(['alpha', 'beta']);
    expect((await readdir(out)).sort()).toEqual([
      'alpha.key',
      'alpha.pem',
      'beta.key',
      'beta.pem',
      'ca.key',
      'ca.pem',
    ]);
    expect(files).toHaveLength(6);
    expect(await readFile(join(out, 'beta.pem'), 'utf8')).toBe(certificates.nodes.beta!.cert);
  });

  it('exits with code 2 and the usage on bad arguments', async () => {
    const cases = [
      [],
      ['frobnicate'],
      ['certs'],
      ['certs', '--nodes', 'a,b'],
      ['certs', '--out', dir],
      ['certs', '--out', dir, '--nodes', ''],
      ['certs', '--out', dir, '--nodes', 'a,a'],
      ['certs', '--out', dir, '--nodes', 'a/b'],
      ['certs', '--out', dir, '--nodes', 'a', '--days', 'ten'],
      ['certs', '--out', dir, '--nodes', 'a', '--days', '0'],
      ['certs', '--out', dir, '--nodes', 'a', '--bogus'],
      ['certs', '--out', dir, '--nodes', 'a', 'extra'],
    ];
    for (const argv of cases) {
      const result = await run(argv);
      expect(result.code, argv.join(' ')).toBe(2);
      expect(result.stderr).toContain('Usage:');
    }
    expect((await run(['--help'])).code).toBe(0);
  });
});
