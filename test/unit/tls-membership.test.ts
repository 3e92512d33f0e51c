/**
 * The TLS transport follows the configuration (issue 13; src/io/tls-transport.ts, `setPeers`), in one
 * process on loopback with real mTLS, every certificate from one cluster CA:
 *
 * - a node that is not a member (a new node started before the change that adds it) completes the
 *   handshake, learns the member's cluster id from it (`onPeerClusterId`), and nothing else: its
 *   messages are dropped and counted, never delivered, and nothing is refused;
 * - once `setPeers` lists it (the change is in force), the member dials it at the configuration's
 *   address and delivers its messages, on the connection it already had;
 * - a member taken out is *leaving*: still reachable, its messages still delivered (so that a member
 *   can answer it `Removed`); once a `Removed` message to it was written it is told: its connections
 *   close, it got the `Removed`, its next handshake is refused (`removed`) after the `Removed` is
 *   written to it again, and nothing of it is delivered from then on;
 * - `setPeers(..., { removed })` refuses a node told by another member; listing it again admits it;
 *   the broken variant (a removed member cut at once, as if told already) shows why a leaving member
 *   stays reachable: the `Removed` answer to it is dropped on the spot;
 * - at most MAX_OUTSIDER_CONNECTIONS non-members are held; the next is refused (`not-member`).
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type ClusterCertificates,
  createClusterCertificates,
  issueNodeCertificate,
} from '../../src/io/certs.js';
import {
  createTlsTransport,
  MAX_OUTSIDER_CONNECTIONS,
  type TlsPeer,
  type TlsTransportEndpoint,
  type TlsTransportLogEvent,
} from '../../src/io/tls-transport.js';
import { clusterIdFromSeed } from '../../src/machines/cluster-id.js';
import type { Removed } from '../../src/machines/messages.js';
import { conditions } from '../support/within.js';

const HOST = '127.0.0.1';
const BOUND_MS = 5000;
const CLUSTER = clusterIdFromSeed(13);

type Ping = { type: 'Ping'; from: string; to: string; nonce: number };
type Message = Ping | Removed;

let certs: ClusterCertificates;
const open: TlsTransportEndpoint<Message>[] = [];

beforeAll(async () => {
  certs = await createClusterCertificates({ nodes: ['n1', 'n2', 'n3', 'n4'] });
});

afterEach(async () => {
  for (const endpoint of open.splice(0)) await endpoint.close();
});

/** A node with its endpoint, what it delivered, its events and the cluster ids its peers told it. */
const startNode = async (id: string, clusterId: string | null, peers: TlsPeer[] = []) => {
  const delivered: Message[] = [];
  const events: TlsTransportLogEvent[] = [];
  const heardClusterIds: Array<[string, string]> = [];
  const { notify, until: untilHeld } = conditions(BOUND_MS);
  const transport = createTlsTransport<Message>({
    host: HOST,
    port: 0,
    peers,
    tls: { ...(certs.nodes[id] ?? (await issueNodeCertificate(certs.ca, id))), ca: certs.ca.cert },
    reconnect: { initialMs: 10, maxMs: 40 },
    clusterId: () => clusterId,
    onPeerClusterId: (nodeId, heard) => heardClusterIds.push([nodeId, heard]),
    log: (event) => {
      events.push(event);
      notify();
    },
  });
  const endpoint = await transport.connect(id, (message) => {
    delivered.push(message);
    notify();
  });
  open.push(endpoint);
  const until = (check: () => boolean, what: string): Promise<void> => untilHeld(check, `${id}: ${what}`);
  const address: TlsPeer = { nodeId: id, host: HOST, port: endpoint.address().port };
  const nonces = (from: string): number[] =>
    delivered.filter((m): m is Ping => m.type === 'Ping' && m.from === from).map((m) => m.nonce);
  const removedAnswers = (): Removed[] => delivered.filter((m): m is Removed => m.type === 'Removed');
  return { id, endpoint, delivered, events, heardClusterIds, until, address, nonces, removedAnswers };
};

type TestNode = Awaited<ReturnType<typeof startNode>>;

const ping = (from: TestNode, to: TestNode, nonce: number): void =>
  from.endpoint.send({ type: 'Ping', from: from.id, to: to.id, nonce });

const rejected = (node: TestNode, reason: string): number => node.endpoint.metrics().rejected[reason] ?? 0;

/** n1 and n2 are the cluster (id CLUSTER); `n4` a new node that lists both, knowing no cluster id. */
const clusterAndNewcomer = async () => {
  const n2 = await startNode('n2', CLUSTER);
  const n1 = await startNode('n1', CLUSTER, [n2.address]);
  n2.endpoint.setPeers([n1.address]);
  const n4 = await startNode('n4', null, [n1.address, n2.address]);
  return { n1, n2, n4 };
};

describe('tls transport: membership', () => {
  it('a non-member gets the handshake (and the cluster id) and nothing else: dropped, counted, nothing refused', async () => {
    const { n1, n4 } = await clusterAndNewcomer();
    for (let nonce = 1; nonce <= 3; nonce += 1) ping(n4, n1, nonce);
    await n1.until(() => n1.endpoint.metrics().nonMemberMessages >= 3, "n4's three Pings dropped");
    expect(n1.nonces('n4')).toEqual([]);
    expect(n4.heardClusterIds).toContainEqual(['n1', CLUSTER]);
    expect(
      n1.events.filter((event) => event.event === 'dropped' && event.reason === 'not-member'),
    ).toHaveLength(1);
    expect(n1.endpoint.metrics().rejected).toEqual({});
    expect(n4.endpoint.metrics().rejected).toEqual({});
    // n4's connection is held (n1 and n2 have not talked yet).
    expect(n1.endpoint.metrics().connectionsOpen).toBe(1);
  });

  it('once setPeers lists it, the member dials it at its address and delivers its messages', async () => {
    const { n1, n2, n4 } = await clusterAndNewcomer();
    ping(n4, n1, 1);
    await n1.until(() => n1.endpoint.metrics().nonMemberMessages >= 1, "n4's Ping dropped");
    n1.endpoint.setPeers([n2.address, n4.address]);
    ping(n4, n1, 2);
    ping(n1, n4, 3);
    await n1.until(() => n1.nonces('n4').includes(2), "n4's Ping delivered");
    await n4.until(() => n4.nonces('n1').includes(3), "n1's Ping delivered at n4");
    expect(n1.nonces('n4')).toEqual([2]);
    // n4's Pings went on the connection it had: one inbound connection from it, never replaced.
    expect(n1.events.filter((event) => event.event === 'connected' && event.nodeId === 'n4')).toHaveLength(2);
    expect(n1.events.filter((event) => event.event === 'replaced')).toEqual([]);
  });

  it('a removed member stays reachable until told; told, it is closed and refused, and learns it twice', async () => {
    const { n1, n2 } = await clusterAndNewcomer();
    ping(n2, n1, 1);
    ping(n1, n2, 2);
    await n1.until(() => n1.nonces('n2').includes(1), "n2's Ping");
    await n2.until(() => n2.nonces('n1').includes(2), "n1's Ping");
    // The change that removes n2 is in force at n1: n2 is leaving, not yet told.
    n1.endpoint.setPeers([]);
    ping(n2, n1, 3);
    await n1.until(() => n1.nonces('n2').includes(3), "the leaving n2's Ping (still delivered)");
    const removed: Removed = { type: 'Removed', from: 'n1', to: 'n2', term: 4, configIndex: 17 };
    n1.endpoint.send(removed);
    await n2.until(() => n2.removedAnswers().length === 1, 'the Removed answer at n2');
    await n1.until(
      () => n1.events.some((event) => event.event === 'told-removed' && event.nodeId === 'n2'),
      'n2 told',
    );
    await n1.until(() => n1.endpoint.metrics().connectionsOpen === 0, 'both connections with n2 closed');
    await n2.until(() => n2.endpoint.metrics().connectionsOpen === 0, 'both closed at n2 too');
    expect(n1.endpoint.metrics().toldRemoved).toBe(1);
    // n2 dials again: refused at the identity check, after the Removed is written to it once more.
    ping(n2, n1, 4);
    await n1.until(() => rejected(n1, 'removed') >= 2, 'the handshake of n2 refused');
    await n2.until(() => n2.removedAnswers().length >= 2, 'the Removed written again at the refusal');
    expect(n2.removedAnswers()[1]).toEqual(removed);
    expect(n1.nonces('n2')).toEqual([1, 3]);
    // n1 sends nothing more to n2: it has no link to it.
    const droppedBefore = n1.endpoint.metrics().dropped;
    ping(n1, n2, 5);
    expect(n1.endpoint.metrics().dropped).toBe(droppedBefore + 1);
  });

  it('broken variant: a member cut at once (told before it was sent Removed) never gets its Removed answer', async () => {
    const { n1, n2 } = await clusterAndNewcomer();
    ping(n1, n2, 1);
    await n2.until(() => n2.nonces('n1').includes(1), "n1's Ping");
    // What a transport without the leaving state does: the change closes n2 out at once.
    n1.endpoint.setPeers([], { removed: ['n2'] });
    const droppedBefore = n1.endpoint.metrics().dropped;
    n1.endpoint.send({ type: 'Removed', from: 'n1', to: 'n2', term: 4, configIndex: 17 });
    // Dropped on the spot: no link to n2 any more. n2, never told, would keep campaigning.
    expect(n1.endpoint.metrics().dropped).toBe(droppedBefore + 1);
    expect(n2.removedAnswers()).toEqual([]);
  });

  it('setPeers({ removed }) refuses a node told by another member; listing it again admits it', async () => {
    const { n1, n2 } = await clusterAndNewcomer();
    ping(n2, n1, 1);
    await n1.until(() => n1.nonces('n2').includes(1), "n2's Ping");
    n1.endpoint.setPeers([], { removed: ['n2'] });
    await n1.until(() => rejected(n1, 'removed') >= 1, "n2's connection closed at n1");
    await n2.until(() => n2.endpoint.metrics().connectionsOpen === 0, 'the connection closed at n2');
    ping(n2, n1, 2);
    await n1.until(() => rejected(n1, 'removed') >= 2, "n2's next handshake refused");
    expect(n2.removedAnswers()).toEqual([]);
    const disconnects = () => n2.events.filter((event) => event.event === 'disconnected').length;
    await n2.until(() => disconnects() >= 2, 'the refused connection closed at n2');
    n1.endpoint.setPeers([n2.address]);
    ping(n2, n1, 3);
    await n1.until(() => n1.nonces('n2').includes(3), "n2's Ping once it is a member again");
    expect(n1.nonces('n2')).toEqual([1, 3]);
  });

  it(`holds at most ${MAX_OUTSIDER_CONNECTIONS} non-members' connections; the next is refused (not-member)`, async () => {
    const n1 = await startNode('n1', CLUSTER);
    const outsiders: TestNode[] = [];
    for (let i = 0; i <= MAX_OUTSIDER_CONNECTIONS; i += 1)
      outsiders.push(await startNode(`x${i}`, null, [n1.address]));
    for (const [i, outsider] of outsiders.slice(0, MAX_OUTSIDER_CONNECTIONS).entries()) ping(outsider, n1, i);
    await n1.until(
      () => n1.endpoint.metrics().nonMemberMessages >= MAX_OUTSIDER_CONNECTIONS,
      'every held outsider dropped',
    );
    ping(outsiders.at(-1)!, n1, 99);
    await n1.until(() => rejected(n1, 'not-member') >= 1, 'the next outsider refused');
    expect(n1.delivered).toEqual([]);
  });
});
