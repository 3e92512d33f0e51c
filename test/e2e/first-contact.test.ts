/**
 * What a new user meets when the peers are not running: one node over real mTLS on 127.0.0.1 whose
 * two peers never start (their ports are free, so every dial is refused). Before, `set` rejected
 * after proposalTimeoutMs with QUORUM_UNAVAILABLE and nothing said why (the refused dials were
 * transport events nobody listened to). Now the node says so once, as a `warning` { code:
 * 'PEERS_UNREACHABLE', peers } and a `peers-unreachable` transport event, and the
 * QUORUM_UNAVAILABLE error names the peers it cannot connect to (`error.unreachable`, and the
 * message). Then one peer starts: the error of a call after that no longer names it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  createClusterCertificates,
  type DiskeyvalError,
  type DiskeyvalNode,
  diskeyval,
  isQuorumUnavailable,
  type TlsTransportLogEvent,
  type WarningEvent,
} from '../../src/index.js';

const { freePorts } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  freePorts(count: number, host?: string): Promise<number[]>;
};

const nodes: DiskeyvalNode[] = [];
afterAll(async () => {
  await Promise.all(nodes.map((node) => node.end()));
});

describe('a node whose peers do not run', () => {
  it('warns once that it reaches no peer, and QUORUM_UNAVAILABLE says which peers and why', async () => {
    const ids = ['a', 'b', 'c'];
    const certs = await createClusterCertificates({ nodes: ids });
    const ports = await freePorts(3);
    const peers = ids.map((nodeId, index) => ({ nodeId, host: '127.0.0.1', port: ports[index]! }));
    const make = (nodeId: string, onTransportEvent?: (event: TlsTransportLogEvent) => void) => {
      const node = diskeyval({
        nodeId,
        host: '127.0.0.1',
        port: peers.find((peer) => peer.nodeId === nodeId)!.port,
        peers: peers.filter((peer) => peer.nodeId !== nodeId),
        tls: { cert: certs.nodes[nodeId]!.cert, key: certs.nodes[nodeId]!.key, ca: certs.ca.cert },
        electionTimeoutMs: 150,
        heartbeatMs: 30,
        proposalTimeoutMs: 2000,
        ...(onTransportEvent ? { onTransportEvent } : {}),
      });
      nodes.push(node);
      return node;
    };
    const transportEvents: TlsTransportLogEvent[] = [];
    const lone = make('a', (event) => transportEvents.push(event));
    const warnings: WarningEvent[] = [];
    lone.on('warning', (warning) => warnings.push(warning));
    await lone.start();

    const error = (await lone.set('k', 'v').then(
      () => null,
      (rejection: unknown) => rejection,
    )) as DiskeyvalError;
    expect(isQuorumUnavailable(error)).toBe(true);
    console.log(`first contact: ${error.message}`);
    expect(error.unreachable?.map((peer) => peer.nodeId).sort()).toEqual(['b', 'c']);
    expect(error.unreachable?.every((peer) => peer.reason.includes('ECONNREFUSED'))).toBe(true);
    expect(error.message).toMatch(/cannot connect to b \(ECONNREFUSED.*\), c \(ECONNREFUSED/);

    // One warning (within proposalTimeoutMs / 2 of the first failed dial), and the transport event.
    const unreachable = warnings.filter((warning) => warning.code === 'PEERS_UNREACHABLE');
    expect(unreachable).toHaveLength(1);
    expect((unreachable[0]!.peers as Array<{ nodeId: string }>).map((peer) => peer.nodeId).sort()).toEqual([
      'b',
      'c',
    ]);
    expect(unreachable[0]!.message).toContain('has reached no peer');
    expect(transportEvents.filter((event) => event.event === 'peers-unreachable')).toHaveLength(1);
    const refused = transportEvents.filter((event) => event.event === 'connect-failed').length;
    console.log(`first contact: ${refused} refused dials, 1 warning: ${unreachable[0]!.message}`);

    // b starts: a and b are a majority, and a call that still fails could no longer blame b.
    await make('b').start();
    await lone.set('k', 'v');
    expect(await lone.get('k')).toBe('v');
    expect(warnings.filter((warning) => warning.code === 'PEERS_UNREACHABLE')).toHaveLength(1);
  });
});
