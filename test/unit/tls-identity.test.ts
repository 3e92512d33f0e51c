/**
 * The TLS transport's identity check (src/io/tls-transport.ts, src/io/certs.ts), in one process on
 * loopback, no child processes: a connection is accepted only when the peer's certificate chains
 * to the cluster CA and names (CN or SAN DNS, exactly) the nodeId the peer claims in its handshake;
 * a dialing node also checks that the server is the node it dialed. Each refusal closes the
 * connection, delivers nothing, and is counted under its reason. A non-member's certificate of the
 * cluster CA gets the handshake and nothing else: its messages are dropped and counted (membership:
 * tls-membership.test.ts).
 *
 * The peers here are real TLS clients and servers with certificates made for the case: one of
 * another node, one of a non-member, one from another CA, and wildcard ones (`*`, `*.cluster`),
 * which must name nobody: a node id is matched as a literal string, never as a pattern.
 */
import { webcrypto, X509Certificate } from 'node:crypto';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CertificateAndKey,
  type ClusterCertificates,
  certificateNamesNode,
  createCertificateAuthority,
  createClusterCertificates,
  issueNodeCertificate,
  loadX509,
} from '../../src/io/certs.js';
import { createFrameEncoder } from '../../src/io/codec.js';
import {
  createTlsTransport,
  type RejectReason,
  type TlsTransportEndpoint,
  type TlsTransportLogEvent,
} from '../../src/io/tls-transport.js';

const HOST = '127.0.0.1';
const BOUND_MS = 5000;
const MEMBERS = ['n1', 'n2', 'n3'];

type Ping = { type: 'Ping'; from: string; to: string; nonce: number };

/** A certificate signed by `ca` with exactly this CN and these SAN DNS names (wildcards allowed). */
const issueNamed = async (ca: CertificateAndKey, commonName: string, dnsNames: string[]) => {
  const x509 = await loadX509();
  const curve = { name: 'ECDSA', namedCurve: 'P-256' } as const;
  const caCert = new x509.X509Certificate(ca.cert);
  const caKey = await webcrypto.subtle.importKey(
    'pkcs8',
    x509.PemConverter.decodeFirst(ca.key),
    curve,
    false,
    ['sign'],
  );
  const keys = await webcrypto.subtle.generateKey(curve, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0a1b2c3d',
    subject: [{ CN: [commonName] }],
    issuer: caCert.subjectName,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension([
        ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
        { type: 'ip', value: '127.0.0.1' },
      ]),
    ],
  });
  const key = x509.PemConverter.encode(
    await webcrypto.subtle.exportKey('pkcs8', keys.privateKey),
    'PRIVATE KEY',
  );
  return { cert: cert.toString('pem'), key };
};

/** Resolves when `check` holds over the events logged so far; rejects after a bound. */
const createEvents = () => {
  const events: TlsTransportLogEvent[] = [];
  const waiters = new Set<() => void>();
  return {
    events,
    log: (event: TlsTransportLogEvent) => {
      events.push(event);
      for (const waiter of [...waiters]) waiter();
    },
    waitFor: (check: (event: TlsTransportLogEvent) => boolean, what: string): Promise<TlsTransportLogEvent> =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no ${what} within ${BOUND_MS} ms`));
        }, BOUND_MS);
        const waiter = (): void => {
          const found = events.find(check);
          if (!found) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(found);
        };
        waiters.add(waiter);
        waiter();
      }),
  };
};

let certs: ClusterCertificates;
let victim: TlsTransportEndpoint<Ping>;
const victimEvents = createEvents();
const delivered: Ping[] = [];
const onDelivered = new Set<(ping: Ping) => void>();
const encoder = createFrameEncoder();

beforeAll(async () => {
  certs = await createClusterCertificates({ nodes: MEMBERS });
  const members = new Set(MEMBERS);
  const transport = createTlsTransport<Ping>({
    host: HOST,
    port: 0,
    peers: [],
    tls: { ...certs.nodes.n1!, ca: certs.ca.cert },
    isMember: (nodeId) => members.has(nodeId),
    handshakeTimeoutMs: 2000,
    reconnect: { initialMs: 20, maxMs: 200 },
    log: victimEvents.log,
  });
  victim = await transport.connect('n1', (message) => {
    delivered.push(message);
    for (const listener of [...onDelivered]) listener(message);
  });
});

afterAll(async () => {
  await victim?.close();
});

/**
 * A TLS client with `credentials` that, once TLS is up, claims to be `claimed` and sends a Ping
 * from it. Resolves once the socket closed (the victim refused it) or the Ping was delivered.
 */
const attempt = async (credentials: CertificateAndKey, claimed: string, nonce: number): Promise<void> => {
  const socket = tls.connect({
    host: HOST,
    port: victim.address().port,
    ca: certs.ca.cert,
    cert: credentials.cert,
    key: credentials.key,
    minVersion: 'TLSv1.3',
    checkServerIdentity: () => undefined,
  });
  socket.on('error', () => undefined);
  socket.resume();
  socket.once('secureConnect', () => {
    const ping: Ping = { type: 'Ping', from: claimed, to: 'n1', nonce };
    socket.write(Buffer.concat([encoder.handshake(claimed), encoder.messages([ping])]));
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`attempt ${nonce} still open after ${BOUND_MS} ms`)),
      BOUND_MS,
    );
    const arrived = (ping: Ping): void => {
      if (ping.nonce === nonce) socket.destroy();
    };
    onDelivered.add(arrived);
    socket.once('close', () => {
      clearTimeout(timer);
      onDelivered.delete(arrived);
      resolve();
    });
  });
};

const rejectedCount = (reason: RejectReason): number => victim.metrics().rejected[reason] ?? 0;

/** The victim refuses the attempt with `reason`: counted once, logged, and nothing delivered. */
const expectRefused = async (
  reason: RejectReason,
  credentials: CertificateAndKey,
  claimed: string,
  nonce: number,
): Promise<void> => {
  const before = rejectedCount(reason);
  const since = victimEvents.events.length;
  await attempt(credentials, claimed, nonce);
  const event = await victimEvents.waitFor(
    (candidate) => victimEvents.events.indexOf(candidate) >= since && candidate.event === 'rejected',
    `rejection (${reason})`,
  );
  expect(event).toMatchObject({ event: 'rejected', reason, direction: 'inbound' });
  expect(rejectedCount(reason)).toBe(before + 1);
  expect(delivered.some((ping) => ping.nonce === nonce)).toBe(false);
};

/**
 * A non-member's connection is held (the handshake went through) but its Ping is dropped and
 * counted: the counter moves, nothing is delivered, nothing is refused. The attempt is closed here.
 */
const expectDropped = async (
  credentials: CertificateAndKey,
  claimed: string,
  nonce: number,
): Promise<void> => {
  const before = victim.metrics().nonMemberMessages;
  const refusedBefore = Object.values(victim.metrics().rejected).reduce((a, b) => a + b, 0);
  const socket = tls.connect({
    host: HOST,
    port: victim.address().port,
    ca: certs.ca.cert,
    cert: credentials.cert,
    key: credentials.key,
    minVersion: 'TLSv1.3',
    checkServerIdentity: () => undefined,
  });
  socket.on('error', () => undefined);
  socket.resume();
  socket.once('secureConnect', () => {
    const ping: Ping = { type: 'Ping', from: claimed, to: 'n1', nonce };
    socket.write(Buffer.concat([encoder.handshake(claimed), encoder.messages([ping])]));
  });
  await victimEvents.waitFor(
    (event) => event.event === 'dropped' && event.reason === 'not-member' && event.nodeId === claimed,
    `the drop of ${claimed}'s message`,
  );
  expect(victim.metrics().nonMemberMessages).toBe(before + 1);
  expect(socket.closed).toBe(false);
  expect(Object.values(victim.metrics().rejected).reduce((a, b) => a + b, 0)).toBe(refusedBefore);
  expect(delivered.some((ping) => ping.nonce === nonce)).toBe(false);
  socket.destroy();
};

describe('tls identity: inbound', () => {
  it('accepts a member whose certificate names the nodeId it claims (the control case)', async () => {
    await attempt(certs.nodes.n2!, 'n2', 1);
    expect(delivered.map((ping) => ping.nonce)).toContain(1);
  });

  it("refuses a member's valid certificate used to claim another nodeId (identity-mismatch)", async () => {
    await expectRefused('identity-mismatch', certs.nodes.n3!, 'n2', 2);
  });

  it('delivers nothing from a certificate of the cluster CA for a non-member (dropped, counted)', async () => {
    const outsider = await issueNodeCertificate(certs.ca, 'n9');
    await expectDropped(outsider, 'n9', 3);
  });

  it('refuses a certificate naming a member but issued by another CA (certificate-untrusted)', async () => {
    const foreignCa = await createCertificateAuthority();
    await expectRefused('certificate-untrusted', await issueNodeCertificate(foreignCa, 'n2'), 'n2', 4);
  });

  it('refuses wildcard certificates of the cluster CA, whatever they claim', async () => {
    const star = await issueNamed(certs.ca, '*', ['*']);
    const subdomain = await issueNamed(certs.ca, '*.cluster', ['*.cluster', 'n*']);
    await expectRefused('identity-mismatch', star, 'n2', 5);
    await expectRefused('identity-mismatch', subdomain, 'n2', 6);
    // Claiming the wildcard itself: named by the certificate, but no member is called '*'.
    await expectDropped(star, '*', 7);
  });

  it('counted every refusal under its reason, and still talks to the real members', async () => {
    const { rejected } = victim.metrics();
    expect(rejected['identity-mismatch']).toBe(3);
    expect(rejected['not-member']).toBeUndefined();
    expect(victim.metrics().nonMemberMessages).toBe(2);
    expect(rejected['certificate-untrusted']).toBe(1);
    await attempt(certs.nodes.n3!, 'n3', 8);
    expect(delivered.map((ping) => ping.nonce).sort()).toEqual([1, 8]);
  });
});

describe('tls identity: outbound', () => {
  /** A TLS server presenting `credentials`; n1 dials it as `n2`. Returns the dial-side rejection. */
  const dialAs = async (credentials: CertificateAndKey): Promise<TlsTransportLogEvent> => {
    const server = tls.createServer({ ...credentials, minVersion: 'TLSv1.3' }, (socket) => socket.destroy());
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    const { port } = server.address() as net.AddressInfo;
    const since = victimEvents.events.length;
    try {
      victim.setPeers([{ nodeId: 'n2', host: HOST, port }]);
      victim.send({ type: 'Ping', from: 'n1', to: 'n2', nonce: 100 + since });
      return await victimEvents.waitFor(
        (event) =>
          victimEvents.events.indexOf(event) >= since &&
          event.event === 'rejected' &&
          event.direction === 'outbound',
        'dial-side rejection',
      );
    } finally {
      victim.setPeers([]);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  };

  it('refuses a server that is another member, a wildcard, or from another CA', async () => {
    const foreignCa = await createCertificateAuthority();
    const cases: Array<[RejectReason, CertificateAndKey]> = [
      ['identity-mismatch', certs.nodes.n3!],
      ['identity-mismatch', await issueNamed(certs.ca, '*', ['*', 'localhost'])],
      ['certificate-untrusted', await issueNodeCertificate(foreignCa, 'n2')],
    ];
    for (const [reason, credentials] of cases) {
      const before = rejectedCount(reason);
      expect(await dialAs(credentials)).toMatchObject({ reason, nodeId: 'n2' });
      expect(rejectedCount(reason)).toBe(before + 1);
    }
  });
});

describe('certificateNamesNode', () => {
  // Real certificates signed by the cluster CA: the decision is OpenSSL's host matching
  // (X509Certificate.checkHost, wildcards off), never a parse of the certificate's text.
  const peer = async (commonName: string, dnsNames: string[] = []) => {
    const issued = await issueNamed(certs.ca, commonName, dnsNames);
    return new X509Certificate(issued.cert).toLegacyObject();
  };

  it('matches the CN or a SAN DNS name exactly, never as a pattern', async () => {
    expect(certificateNamesNode(await peer('n2'), 'n2')).toBe(true);
    expect(certificateNamesNode(await peer('x', ['n2']), 'n2')).toBe(true);
    expect(certificateNamesNode(await peer('*', ['*']), 'n2')).toBe(false);
    expect(certificateNamesNode(await peer('*.cluster', ['*.cluster', 'n*']), 'n2')).toBe(false);
    expect(certificateNamesNode(await peer('*.cluster', ['*.cluster']), 'n2.cluster')).toBe(false);
    expect(certificateNamesNode(await peer('n2.evil', ['n22']), 'n2')).toBe(false);
  });

  it('names no node from a certificate it cannot read, or for an empty id', async () => {
    const good = await peer('n2');
    expect(certificateNamesNode({ ...good, raw: Buffer.from('not a certificate') }, 'n2')).toBe(false);
    expect(certificateNamesNode({} as tls.PeerCertificate, 'n2')).toBe(false);
    expect(certificateNamesNode(good, '')).toBe(false);
  });
});
