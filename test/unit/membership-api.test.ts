/**
 * The public membership API (src/index.ts, src/validate.ts; README "Membership") on in-memory
 * clusters (`createMemoryTransport()`):
 *
 * - `reconfigure` refuses bad input with INVALID_ARGUMENT before anything is proposed (empty,
 *   duplicates, bad host or port, unknown shapes and keys, ids alone with the TLS transport, two
 *   members at one address, bad options), and rejects with STOPPED before start() and after end();
 * - `getPeers()` lists the whole membership, this node included, with its role and voting part;
 * - a change grows the cluster (a new node started with `peers` naming the whole new membership):
 *   `membership` events report C_old,new then C_new, and the new node serves calls;
 * - a second change while one is in progress rejects with CHANGE_IN_PROGRESS;
 * - a node the change removes stops serving: its calls reject with REMOVED.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  createClusterCertificates,
  createMemoryTransport,
  type DiskeyvalNode,
  type DiskeyvalOptions,
  diskeyval,
  isChangeInProgress,
  isInvalidArgument,
  isRemoved,
  isStopped,
  type MembershipEvent,
  type MemoryTransport,
} from '../../src/index.js';
import { within } from '../support/within.js';

const BOUND_MS = 10_000;
const open: DiskeyvalNode[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
});

const codeOf = async (promise: Promise<unknown>): Promise<string | undefined> => {
  try {
    await promise;
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code;
  }
};

type Member = { node: DiskeyvalNode; id: string; events: MembershipEvent[] };

/** A node on `transport`, its `membership` events recorded. */
const makeNode = (
  transport: MemoryTransport,
  id: string,
  peers: string[],
  extra: Partial<DiskeyvalOptions> = {},
): Member => {
  const node = diskeyval({
    nodeId: id,
    peers,
    transport,
    electionTimeoutMs: 100,
    heartbeatMs: 20,
    seed: id.charCodeAt(1),
    ...extra,
  });
  const events: MembershipEvent[] = [];
  node.on('membership', (event) => events.push(event));
  open.push(node);
  return { node, id, events };
};

/** Resolves once `holds()` is true, checked now and at each `leader` or `membership` event of `nodes`. */
const when = (nodes: readonly DiskeyvalNode[], holds: () => boolean, what: string): Promise<void> => {
  if (holds()) return Promise.resolve();
  const listeners: Array<() => void> = [];
  const done = new Promise<void>((resolve) => {
    for (const node of nodes) {
      const listener = (): void => {
        if (holds()) resolve();
      };
      listeners.push(listener);
      node.on('leader', listener);
      node.on('membership', listener);
    }
  });
  return within(done, what, BOUND_MS).finally(() => {
    nodes.forEach((node, index) => {
      node.off('leader', listeners[index]!);
      node.off('membership', listeners[index]!);
    });
  });
};

const IDS = ['n1', 'n2', 'n3'];

/** Three started nodes with an agreed leader. */
const startThree = async () => {
  const transport = createMemoryTransport();
  const members = IDS.map((id) =>
    makeNode(
      transport,
      id,
      IDS.filter((other) => other !== id),
    ),
  );
  const nodes = members.map((member) => member.node);
  await Promise.all(nodes.map((node) => node.start()));
  await when(
    nodes,
    () =>
      nodes.some((node) => node.isLeader()) &&
      nodes.every((node) => node.leaderId() === nodes[0]!.leaderId()),
    'an agreed leader',
  );
  const leader = (): DiskeyvalNode => nodes.find((node) => node.isLeader())!;
  return { transport, members, nodes, leader };
};

describe('reconfigure: checks', () => {
  it('refuses bad input with INVALID_ARGUMENT, and proposes nothing', async () => {
    const { nodes, leader, members } = await startThree();
    const bad: unknown[] = [
      [],
      undefined,
      null,
      'n1',
      { nodeId: 'n1' },
      ['n1', 'n1'],
      ['n1', { nodeId: 'n1' }],
      [7],
      [null],
      [['n1']],
      [''],
      [{ nodeId: '' }],
      [{ nodeId: 'x'.repeat(1025) }],
      [{ id: 'n1' }],
      [{ nodeId: 'n1', hostname: 'h', port: 1 }],
      [{ nodeId: 'n1', host: 'h' }],
      [{ nodeId: 'n1', port: 7001 }],
      [{ nodeId: 'n1', host: '', port: 7001 }],
      [{ nodeId: 'n1', host: 'h', port: 0 }],
      [{ nodeId: 'n1', host: 'h', port: 65_536 }],
      [{ nodeId: 'n1', host: 'h', port: 70.5 }],
      [{ nodeId: 'n1', host: 'h', port: '7001' }],
      [
        { nodeId: 'n1', host: 'h', port: 7001 },
        { nodeId: 'n2', host: 'H', port: 7001 },
      ],
      Array.from({ length: 65 }, (_, i) => `m${i}`),
    ];
    for (const members of bad) {
      const error = await leader()
        .reconfigure(members as never)
        .then(
          () => null,
          (caught: unknown) => caught,
        );
      expect(isInvalidArgument(error), JSON.stringify(members)?.slice(0, 80)).toBe(true);
    }
    for (const options of [null, 5, { timeoutMs: 0 }, { timeoutMs: Number.NaN }, { forward: false }]) {
      expect(await codeOf(leader().reconfigure(IDS, options as never)), JSON.stringify(options)).toBe(
        'INVALID_ARGUMENT',
      );
    }
    for (const node of nodes) expect(node.getPeers().map((peer) => peer.nodeId)).toEqual(IDS);
    expect(members.flatMap((member) => member.events)).toEqual([]);
  });

  it('with the TLS transport, every member needs { nodeId, host, port }', async () => {
    const certs = await createClusterCertificates({ nodes: ['n1'] });
    const node = diskeyval({
      nodeId: 'n1',
      host: '127.0.0.1',
      port: 7001,
      peers: [{ nodeId: 'n2', host: '127.0.0.1', port: 7002 }],
      tls: { ...certs.nodes.n1!, ca: certs.ca.cert },
    });
    expect(await codeOf(node.reconfigure(['n1', 'n2']))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(node.reconfigure([{ nodeId: 'n1' }]))).toBe('INVALID_ARGUMENT');
    // Well-formed, but the node was never started: STOPPED.
    expect(await codeOf(node.reconfigure([{ nodeId: 'n1', host: '127.0.0.1', port: 7001 }]))).toBe('STOPPED');
    expect(node.getPeers()).toEqual([
      { nodeId: 'n1', host: '127.0.0.1', port: 7001, self: true, role: 'follower', voting: 'voter' },
      { nodeId: 'n2', host: '127.0.0.1', port: 7002, self: false, role: 'follower', voting: 'voter' },
    ]);
  });

  it('rejects with STOPPED after end()', async () => {
    const { members } = await startThree();
    const node = members[0]!.node;
    await node.end();
    const error = await node.reconfigure(IDS).then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(isStopped(error)).toBe(true);
  });

  it('getPeers lists the whole membership, this node included, with roles', async () => {
    const { nodes, leader } = await startThree();
    const leaderId = leader().leaderId();
    for (const [i, node] of nodes.entries()) {
      const peers = node.getPeers();
      expect(peers.map((peer) => peer.nodeId)).toEqual(IDS);
      expect(peers.filter((peer) => peer.self).map((peer) => peer.nodeId)).toEqual([IDS[i]]);
      expect(peers.filter((peer) => peer.role === 'leader').map((peer) => peer.nodeId)).toEqual([leaderId]);
      expect(peers.every((peer) => peer.voting === 'voter' && peer.host === undefined)).toBe(true);
    }
  });
});

describe('reconfigure: changes', () => {
  it('grows 3 -> 4 (the new node started with peers naming the whole membership); events report the catch-up, C_old,new, then C_new', async () => {
    const { transport, members, nodes, leader } = await startThree();
    const n4 = makeNode(transport, 'n4', IDS);
    await n4.node.start();
    const follower = nodes.find((node) => !node.isLeader())!;
    await within(follower.reconfigure([...IDS, 'n4']), 'the change 3 -> 4', BOUND_MS);
    for (const member of [...members, n4]) {
      await when(
        [member.node],
        () => member.events.some((event) => event.voters.length === 4 && event.outgoing.length === 0),
        `${member.id} on C_new`,
      );
    }
    const leaderEvents = members.find((member) => member.node === leader())!.events;
    // The new node catches up as a learner first (voters unchanged), then the joint phase.
    const catchUp = leaderEvents.find((event) => event.learners.length > 0)!;
    expect(catchUp).toMatchObject({ voters: IDS, outgoing: [], learners: ['n4'] });
    const joint = leaderEvents.find((event) => event.outgoing.length > 0)!;
    expect(joint).toMatchObject({ voters: [...IDS, 'n4'], outgoing: IDS, learners: [] });
    expect(joint.index).toBeGreaterThan(catchUp.index);
    const final = leaderEvents.at(-1)!;
    expect(final).toMatchObject({ voters: [...IDS, 'n4'], outgoing: [] });
    expect(final.index).toBeGreaterThan(joint.index);
    expect(n4.node.getPeers().map((peer) => peer.nodeId)).toEqual([...IDS, 'n4']);
    await n4.node.set('from-n4', 1);
    expect(await leader().get('from-n4')).toBe(1);
  });

  it('a change whose new node never comes up waits with it as a learner (no majority needs it); the current members cancel it', async () => {
    const { members, leader } = await startThree();
    await within(leader().set('before', 1), 'a first write', BOUND_MS);
    // n4 is never started: the change cannot get past its catch-up.
    const code = await codeOf(leader().reconfigure([...IDS, 'n4'], { timeoutMs: 500 }));
    expect(code).toBe('QUORUM_UNAVAILABLE');
    const learner = leader()
      .getPeers()
      .find((peer) => peer.nodeId === 'n4');
    expect(learner?.voting).toBe('learner');
    // The cluster still commits without it: it counts toward no majority.
    await within(leader().set('while-catching-up', 1), 'a write during the catch-up', BOUND_MS);
    await within(leader().reconfigure(IDS), 'the cancel', BOUND_MS);
    expect(
      leader()
        .getPeers()
        .map((peer) => [peer.nodeId, peer.voting]),
    ).toEqual(IDS.map((id) => [id, 'voter']));
    const last = members.find((member) => member.node === leader())!.events.at(-1)!;
    expect(last).toMatchObject({ voters: IDS, outgoing: [], learners: [] });
  });

  it('a call whose change is still catching up is replaced by a later one, and rejects with CHANGE_IN_PROGRESS', async () => {
    const { transport, nodes, leader } = await startThree();
    await within(leader().set('before', 1), 'a first write', BOUND_MS);
    const n5 = makeNode(transport, 'n5', IDS);
    const first = codeOf(leader().reconfigure([...IDS, 'n4']));
    // Once the first change's catch-up is committed (n4 never starts), a change to add n5 replaces it.
    await when(
      [leader()],
      () =>
        leader()
          .getPeers()
          .some((peer) => peer.nodeId === 'n4' && peer.voting === 'learner'),
      'the first catch-up in force',
    );
    await n5.node.start();
    let second: string | undefined = 'CHANGE_IN_PROGRESS';
    // From another node (a node takes one call at a time): its leader takes it once the catch-up
    // is committed (until then, CHANGE_IN_PROGRESS).
    const other = nodes.find((node) => node !== leader())!;
    for (let attempt = 0; attempt < 20 && second === 'CHANGE_IN_PROGRESS'; attempt += 1)
      second = await codeOf(other.reconfigure([...IDS, 'n5']));
    expect(second).toBeUndefined();
    expect(await within(first, 'the first call', BOUND_MS)).toBe('CHANGE_IN_PROGRESS');
    expect(
      leader()
        .getPeers()
        .map((peer) => peer.nodeId),
    ).toEqual([...IDS, 'n5']);
  });

  it('a second change while one is in progress rejects with CHANGE_IN_PROGRESS', async () => {
    const { transport, leader } = await startThree();
    const n4 = makeNode(transport, 'n4', IDS);
    const n5 = makeNode(transport, 'n5', IDS);
    await Promise.all([n4.node.start(), n5.node.start()]);
    const first = leader().reconfigure([...IDS, 'n4']);
    const second = await leader()
      .reconfigure([...IDS, 'n5'])
      .then(
        () => null,
        (caught: unknown) => caught,
      );
    expect(isChangeInProgress(second)).toBe(true);
    await within(first, 'the first change', BOUND_MS);
    expect(
      leader()
        .getPeers()
        .map((peer) => peer.nodeId),
    ).toEqual([...IDS, 'n4']);
  });

  it("a removed node's calls reject with REMOVED (after its REMOVED warning)", async () => {
    const { members, leader } = await startThree();
    const removed = members.find((member) => member.node !== leader())!;
    const warned = new Promise<void>((resolve) =>
      removed.node.on('warning', (warning) => {
        if (warning.code === 'REMOVED') resolve();
      }),
    );
    const staying = IDS.filter((id) => id !== removed.id);
    await within(leader().reconfigure(staying), 'the change that removes a follower', BOUND_MS);
    await within(warned, `${removed.id} learns it was removed`, BOUND_MS);
    for (const call of [removed.node.set('k', 1), removed.node.get('k'), removed.node.reconfigure(IDS)]) {
      const error = await call.then(
        () => null,
        (caught: unknown) => caught,
      );
      expect(isRemoved(error)).toBe(true);
    }
    // What it lists of itself, whatever configuration it last held: never a voter.
    const itself = removed.node.getPeers().filter((peer) => peer.self);
    expect(itself.every((peer) => peer.voting === 'leaving')).toBe(true);
    expect(
      leader()
        .getPeers()
        .map((peer) => peer.nodeId),
    ).toEqual(staying);
  });

  it('a call made the moment a node becomes leader (its no-op not committed yet: LEADER_NOT_READY) is tried again within milliseconds, well within a short timeout', async () => {
    const { members, leader } = await startThree();
    const old = leader();
    const survivors = members.filter((member) => member.node !== old);
    const staying = survivors.map((member) => member.id);
    // The first survivor to lead asks, from its `leader` event: before its term's first entry commits.
    let call: Promise<void> | null = null;
    const asked = new Promise<void>((resolve) => {
      for (const { node, id } of survivors)
        node.on('leader', (event) => {
          if (event.nodeId !== id || call !== null) return;
          call = node.reconfigure(staying, { timeoutMs: 600 });
          resolve();
        });
    });
    await old.end();
    await within(asked, 'a survivor leads', BOUND_MS);
    // Refused LEADER_NOT_READY at first; tried again only at rpcTimeoutMs (1,000 ms here) it would
    // reject QUORUM_UNAVAILABLE at its 600 ms deadline.
    await within(call!, 'the change asked at once', BOUND_MS);
    expect(
      leader()
        .getPeers()
        .map((peer) => peer.nodeId),
    ).toEqual(staying);
  });

  it('a node cut off during the change that removed it learns it from the members, and lists itself as leaving, not as a voter', async () => {
    const { transport, members, leader } = await startThree();
    const cutOff = members.find((member) => member.node !== leader())!;
    const staying = IDS.filter((id) => id !== cutOff.id);
    const warned = new Promise<void>((resolve) =>
      cutOff.node.on('warning', (warning) => {
        if (warning.code === 'REMOVED') resolve();
      }),
    );
    transport.isolate(cutOff.id);
    await within(leader().reconfigure(staying), 'the change that removes the cut-off node', BOUND_MS);
    transport.heal();
    // It campaigns with the configuration it had; the members answer Removed.
    await within(warned, `${cutOff.id} learns it was removed`, BOUND_MS);
    const itself = cutOff.node.getPeers().find((peer) => peer.self);
    expect(itself?.voting).toBe('leaving');
    expect(cutOff.node.getPeers().filter((peer) => !peer.self && peer.voting !== 'voter')).toEqual([]);
  });
});
