/**
 * Node identity is OpenSSL's host matching (X509Certificate.checkHost) with wildcards off: a
 * certificate for `*.cluster.example`, even one the cluster CA signed, names no node. Shown three ways:
 * the check itself (where Node's default, wildcards on, would have matched: the broken variant),
 * a transport that refuses to start with such a certificate, and a node that refuses an inbound
 * connection whose wildcard certificate claims a member's id (identity-mismatch).
 */
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import {
  createCertificateAuthority,
  createTlsTransport,
  issueNodeCertificate,
  type TlsTransportLogEvent,
} from '../../src/index.js';
import { certificateNamesNode } from '../../src/io/certs.js';
import { createFrameEncoder } from '../../src/io/codec.js';

const { freePorts } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  freePorts(count: number, host?: string): Promise<number[]>;
};

const closers: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const close of closers.splice(0)) await close();
});

describe('certificate identity', () => {
  it('a wildcard certificate names no node, though checkHost with its defaults would match it', async () => {
    const ca = await createCertificateAuthority();
    const wildcard = await issueNodeCertificate(ca, '*.cluster.example');
    const exact = await issueNodeCertificate(ca, 'node-1.cluster.example');
    const wildcardX509 = new X509Certificate(wildcard.cert);
    // The broken variant: Node's default (wildcards on) lets *.cluster.example claim any node id below it.
    expect(wildcardX509.checkHost('node-1.cluster.example')).toBe('*.cluster.example');
    expect(certificateNamesNode(wildcardX509.toLegacyObject(), 'node-1.cluster.example')).toBe(false);
    expect(certificateNamesNode(wildcardX509.toLegacyObject(), 'x.cluster.example')).toBe(false);
    const exactLegacy = new X509Certificate(exact.cert).toLegacyObject();
    expect(certificateNamesNode(exactLegacy, 'node-1.cluster.example')).toBe(true);
    expect(certificateNamesNode(exactLegacy, 'NODE-1.cluster.example')).toBe(false); // ids are exact
    expect(certificateNamesNode(exactLegacy, 'node-2.cluster.example')).toBe(false);
    expect(certificateNamesNode(exactLegacy, '127.0.0.1')).toBe(false); // IP SANs name no node
    expect(certificateNamesNode(exactLegacy, 'localhost')).toBe(true); // why `localhost` is reserved
  });

  it('a transport refuses to start as a node its wildcard certificate does not name', async () => {
    const ca = await createCertificateAuthority();
    const wildcard = await issueNodeCertificate(ca, '*.cluster.example');
    const [port] = await freePorts(1);
    const transport = createTlsTransport({
      host: '127.0.0.1',
      port: port!,
      peers: [],
      tls: { ...wildcard, ca: ca.cert },
    });
    const error = await Promise.resolve(transport.connect('node-1.cluster.example', () => undefined)).then(
      () => null,
      (rejection: unknown) => rejection as { code?: string; message: string },
    );
    expect(error?.code).toBe('INVALID_ARGUMENT');
    expect(error?.message).toContain('does not name node node-1.cluster.example');
  });

  it('a node refuses an inbound connection whose wildcard certificate claims a member id', async () => {
    const ca = await createCertificateAuthority();
    const real = await issueNodeCertificate(ca, 'a.cluster.example');
    const wildcard = await issueNodeCertificate(ca, '*.cluster.example');
    const [port] = await freePorts(1);
    const events: TlsTransportLogEvent[] = [];
    let rejected: (event: TlsTransportLogEvent) => void = () => undefined;
    const rejection = new Promise<TlsTransportLogEvent>((resolve) => {
      rejected = resolve;
    });
    const transport = createTlsTransport({
      host: '127.0.0.1',
      port: port!,
      peers: [{ nodeId: 'b.cluster.example', host: '127.0.0.1', port: 1 }],
      tls: { ...real, ca: ca.cert },
      log: (event) => {
        events.push(event);
        if (event.event === 'rejected') rejected(event);
      },
    });
    const endpoint = await transport.connect('a.cluster.example', () => undefined);
    closers.push(() => endpoint.close());
    // A client with the CA-signed wildcard certificate says it is member b.cluster.example.
    const socket = tls.connect({
      host: '127.0.0.1',
      port: port!,
      cert: wildcard.cert,
      key: wildcard.key,
      ca: ca.cert,
      checkServerIdentity: () => undefined,
    });
    closers.push(async () => {
      socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.once('secureConnect', () => socket.write(createFrameEncoder().handshake('b.cluster.example')));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const event = await Promise.race([
      rejection,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no rejection within 5000 ms')), 5000);
      }),
    ]).finally(() => clearTimeout(timer));
    expect(event).toMatchObject({ event: 'rejected', reason: 'identity-mismatch', direction: 'inbound' });
    expect(events.some((e) => e.event === 'connected')).toBe(false);
  });
});
