/**
 * The identity check must be what stops an impersonation: with `certificateNamesNode` swapped for
 * one that accepts any name (vi.mock, this file only), a member's valid certificate claiming
 * another member's nodeId gets its forged message delivered, where the real check (see
 * tls-identity.test.ts) refuses it as identity-mismatch.
 */
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type ClusterCertificates, createClusterCertificates } from '../../src/io/certs.js';
import { createFrameEncoder } from '../../src/io/codec.js';
import { createTlsTransport, type TlsTransportEndpoint } from '../../src/io/tls-transport.js';

vi.mock('../../src/io/certs.js', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../../src/io/certs.js')>()),
  certificateNamesNode: () => true,
}));

type Ping = { type: 'Ping'; from: string; to: string; nonce: number };
const BOUND_MS = 5000;

let certs: ClusterCertificates;
let victim: TlsTransportEndpoint<Ping>;
let deliveredFrom: (from: string) => void = () => undefined;

beforeAll(async () => {
  // The transport checks its own certificate with the same function at start: it still starts.
  certs = await createClusterCertificates({ nodes: ['n1', 'n2', 'n3'] });
  const transport = createTlsTransport<Ping>({
    host: '127.0.0.1',
    port: 0,
    peers: [],
    tls: { ...certs.nodes.n1!, ca: certs.ca.cert },
  });
  victim = await transport.connect('n1', (message) => deliveredFrom(message.from));
  victim.setPeers(['n1', 'n2', 'n3'].map((nodeId) => ({ nodeId, host: '127.0.0.1', port: 1 })));
});

afterAll(async () => {
  await victim?.close();
});

describe('a transport without the certificate-names-node check', () => {
  it("delivers a message forged with another member's certificate (the real check refuses it)", async () => {
    const arrived = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nothing delivered within ${BOUND_MS} ms`)), BOUND_MS);
      deliveredFrom = (from) => {
        clearTimeout(timer);
        resolve(from);
      };
    });
    const socket = tls.connect({
      host: '127.0.0.1',
      port: victim.address().port,
      ca: certs.ca.cert,
      ...certs.nodes.n3!,
      minVersion: 'TLSv1.3',
      checkServerIdentity: () => undefined,
    });
    socket.on('error', () => undefined);
    socket.resume();
    const encoder = createFrameEncoder();
    socket.once('secureConnect', () =>
      socket.write(
        Buffer.concat([
          encoder.handshake('n2'),
          encoder.messages([{ type: 'Ping', from: 'n2', to: 'n1', nonce: 1 } as Ping]),
        ]),
      ),
    );
    expect(await arrived).toBe('n2');
    socket.destroy();
    expect(victim.metrics().rejected['identity-mismatch'] ?? 0).toBe(0);
  });
});
