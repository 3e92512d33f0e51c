/**
 * The public API on an in-memory cluster of three nodes (`createMemoryTransport()`): set, get and
 * delete on every node, local reads, `change` and `leader` events, NOT_LEADER, STOPPED,
 * INVALID_ARGUMENT (nothing proposed), TIMEOUT, ABORTED, QUORUM_UNAVAILABLE, the type guards and
 * the metrics. Every wait is bounded and driven by events or by the call under test, never by a
 * fixed sleep.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type ChangeEvent,
  createMemoryTransport,
  type DiskeyvalNode,
  type DiskeyvalOptions,
  diskeyval,
  ERROR_CODES,
  isAborted,
  isDiskeyvalError,
  isInvalidArgument,
  isNotLeader,
  isQuorumUnavailable,
  isStopped,
  isTimeout,
  type LeaderEvent,
  MAX_KEY_BYTES,
  type MemoryTransport,
} from '../../src/index.js';
import type { TransportEndpoint } from '../../src/io/transport.js';
import { within as withinBound } from '../support/within.js';

const IDS = ['n1', 'n2', 'n3'] as const;
const BOUND_MS = 5_000;

type Cluster = {
  transport: MemoryTransport;
  nodes: DiskeyvalNode[];
  /** Every change each node emitted, by node id, in order. */
  changes: Map<string, ChangeEvent[]>;
  /** Every leader event each node emitted, by node id, in order. */
  leaders: Map<string, LeaderEvent[]>;
  byId: (id: string) => DiskeyvalNode;
  leader: () => DiskeyvalNode;
  followers: () => DiskeyvalNode[];
  idOf: (node: DiskeyvalNode) => string;
};

const open: DiskeyvalNode[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
});

/** Rejects with `what` when `promise` has not settled within `boundMs` (this file's bound by default). */
const within = <T>(promise: Promise<T>, what: string, boundMs = BOUND_MS): Promise<T> =>
  withinBound(promise, what, boundMs);

/** Resolves once `holds()` is true, checked now and on every `event` of any of `nodes`. */
const whenEvent = (
  nodes: readonly DiskeyvalNode[],
  event: 'change' | 'leader',
  holds: () => boolean,
  what: string,
  boundMs = BOUND_MS,
): Promise<void> => {
  if (holds()) return Promise.resolve();
  const listeners: Array<() => void> = [];
  const done = new Promise<void>((resolve) => {
    for (const node of nodes) {
      const listener = (): void => {
        if (holds()) resolve();
      };
      listeners.push(listener);
      node.on(event as 'change', listener);
    }
  });
  return within(done, what, boundMs).finally(() => {
    nodes.forEach((node, index) => {
      node.off(event, listeners[index]!);
    });
  });
};

/** Resolves with the leader's id once every node in `nodes` names the same leader. */
const agreedLeader = async (nodes: readonly DiskeyvalNode[], boundMs = BOUND_MS): Promise<string> => {
  const agreed = (): boolean => {
    const id = nodes[0]!.leaderId();
    return (
      id !== null && nodes.every((node) => node.leaderId() === id) && nodes.some((node) => node.isLeader())
    );
  };
  await whenEvent(nodes, 'leader', agreed, 'every node to name the same leader', boundMs);
  return nodes[0]!.leaderId()!;
};

const createCluster = (extra: Partial<DiskeyvalOptions> = {}): Cluster => {
  const transport = createMemoryTransport();
  const changes = new Map<string, ChangeEvent[]>();
  const leaders = new Map<string, LeaderEvent[]>();
  const nodes = IDS.map((nodeId, index) => {
    const node = diskeyval({
      nodeId,
      peers: IDS.filter((id) => id !== nodeId),
      transport,
      electionTimeoutMs: 100,
      heartbeatMs: 20,
      seed: index + 11,
      ...extra,
    });
    changes.set(nodeId, []);
    leaders.set(nodeId, []);
    node.on('change', (change) => changes.get(nodeId)!.push(change));
    node.on('leader', (leader) => leaders.get(nodeId)!.push(leader));
    open.push(node);
    return node;
  });
  const idOf = (node: DiskeyvalNode): string => IDS[nodes.indexOf(node)]!;
  const byId = (id: string): DiskeyvalNode => nodes[IDS.indexOf(id as (typeof IDS)[number])]!;
  const leader = (): DiskeyvalNode => {
    const found = nodes.find((node) => node.isLeader());
    if (!found) throw new Error('no leader');
    return found;
  };
  return {
    transport,
    nodes,
    changes,
    leaders,
    byId,
    leader,
    followers: () => nodes.filter((node) => !node.isLeader()),
    idOf,
  };
};

/** A started cluster with a leader every node knows. */
const startCluster = async (extra: Partial<DiskeyvalOptions> = {}): Promise<Cluster> => {
  const cluster = createCluster(extra);
  await Promise.all(cluster.nodes.map((node) => node.start()));
  await agreedLeader(cluster.nodes);
  return cluster;
};

/** Resolves once `node` emitted at least `count` changes. */
const changesOn = (cluster: Cluster, node: DiskeyvalNode, count: number): Promise<void> =>
  whenEvent(
    [node],
    'change',
    () => cluster.changes.get(cluster.idOf(node))!.length >= count,
    `${count} changes on ${cluster.idOf(node)}`,
  );

/** Resolves once every node emitted at least `count` changes. */
const changesEverywhere = async (cluster: Cluster, count: number): Promise<void> => {
  await Promise.all(cluster.nodes.map((node) => changesOn(cluster, node, count)));
};

/** The rejection of `promise` (fails when it resolves). */
const rejectionOf = async (promise: Promise<unknown>, what = 'the call'): Promise<unknown> => {
  try {
    await within(promise, what);
  } catch (error) {
    return error;
  }
  throw new Error(`${what} resolved, a rejection was expected`);
};

const codeOf = async (promise: Promise<unknown>, what?: string): Promise<string | undefined> =>
  ((await rejectionOf(promise, what)) as { code?: string }).code;

/**
 * Calls `reject` (expected to reject with `code`), then makes one valid write through the leader:
 * it must land right after what was there before, on every node, and be the only change, so the
 * rejected call proposed nothing.
 */
const expectNothingProposed = async (
  cluster: Cluster,
  code: string,
  reject: () => Promise<unknown>,
): Promise<void> => {
  const before = cluster.nodes.map((node) => node.getMetrics().lastIndex);
  const changesBefore = cluster.nodes.map((node) => cluster.changes.get(cluster.idOf(node))!.length);
  expect(await codeOf(reject())).toBe(code);
  const marker = `marker-${Math.random()}`;
  await cluster.leader().set('marker', marker);
  await Promise.all(cluster.nodes.map((node, index) => changesOn(cluster, node, changesBefore[index]! + 1)));
  cluster.nodes.forEach((node, index) => {
    const metrics = node.getMetrics();
    expect(metrics.lastIndex, `${cluster.idOf(node)}'s log grew by the valid write only`).toBe(
      before[index]! + 1,
    );
    expect(metrics.commitIndex).toBe(before[index]! + 1);
    const after = cluster.changes.get(cluster.idOf(node))!.slice(changesBefore[index]!);
    expect(after.map((change) => change.value)).toEqual([marker]);
  });
};

describe('public API on an in-memory cluster', () => {
  describe('leadership', () => {
    it('elects one leader that every node names, with leader events carrying its id and term', async () => {
      const cluster = await startCluster();
      const leaderId = cluster.leader().leaderId();
      expect(cluster.nodes.filter((node) => node.isLeader())).toHaveLength(1);
      for (const node of cluster.nodes) {
        expect(node.leaderId()).toBe(leaderId);
        const last = cluster.leaders.get(cluster.idOf(node))!.at(-1)!;
        expect(last.nodeId).toBe(leaderId);
        expect(last.term).toBe(cluster.leader().getMetrics().term);
        expect(last.term).toBeGreaterThan(0);
      }
    });

    it('emits leader events for a new leader with a higher term when the leader is cut off', async () => {
      const cluster = await startCluster();
      const old = cluster.leader();
      const oldId = cluster.idOf(old);
      const oldTerm = old.getMetrics().term;
      const others = cluster.nodes.filter((node) => node !== old);
      cluster.transport.isolate(oldId);
      await whenEvent(
        others,
        'leader',
        () => {
          const id = others[0]!.leaderId();
          return id !== null && id !== oldId && others.every((node) => node.leaderId() === id);
        },
        'the others to agree on a new leader',
      );
      const newId = others[0]!.leaderId()!;
      for (const node of others) {
        const last = cluster.leaders.get(cluster.idOf(node))!.at(-1)!;
        expect(last.nodeId).toBe(newId);
        expect(last.term).toBeGreaterThan(oldTerm);
      }
      cluster.transport.heal();
      await agreedLeader(cluster.nodes);
      expect(cluster.nodes.filter((node) => node.isLeader())).toHaveLength(1);
    });
  });

  describe('set, get and delete on every node', () => {
    it('a set on the leader is read back by a linearizable get on every node', async () => {
      const cluster = await startCluster();
      await cluster.leader().set('k', 'v1');
      for (const node of cluster.nodes) expect(await node.get('k')).toBe('v1');
    });

    it('a set on a follower is forwarded, applied there before it resolves, and read on every node', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      await follower.set('k', { from: 'follower' });
      // Applied on the node that was called before the promise resolved (read-your-writes).
      expect(await follower.get('k', { consistency: 'local' })).toEqual({ from: 'follower' });
      for (const node of cluster.nodes) expect(await node.get('k')).toEqual({ from: 'follower' });
      expect(follower.getMetrics().forwardedWrites).toBe(1);
    });

    it('a delete on a follower removes the key on every node', async () => {
      const cluster = await startCluster();
      await cluster.leader().set('k', 1);
      const follower = cluster.followers()[1]!;
      await follower.delete('k');
      for (const node of cluster.nodes) expect(await node.get('k')).toBeUndefined();
      // Deleting a missing key is a committed update too.
      await follower.delete('never-set');
      expect(await follower.get('never-set')).toBeUndefined();
    });

    it('a get of a key never written resolves undefined on every node', async () => {
      const cluster = await startCluster();
      for (const node of cluster.nodes) expect(await node.get('missing')).toBeUndefined();
      expect(cluster.followers()[0]!.getMetrics().forwardedReads).toBeGreaterThan(0);
    });

    it("a follower's linearizable get sees a write another follower just completed", async () => {
      const cluster = await startCluster();
      const [a, b] = cluster.followers() as [DiskeyvalNode, DiskeyvalNode];
      for (let round = 0; round < 5; round += 1) {
        await a.set('shared', round);
        expect(await b.get('shared')).toBe(round);
        await b.set('shared', `b${round}`);
        expect(await a.get('shared')).toBe(`b${round}`);
      }
    });

    it("get with consistency 'local' reads the node's applied state without a round trip", async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const readsBefore = follower.getMetrics().forwardedReads;
      expect(await follower.get('k', { consistency: 'local' })).toBeUndefined();
      await cluster.leader().set('k', 'v');
      await changesOn(cluster, follower, 1);
      expect(await follower.get('k', { consistency: 'local' })).toBe('v');
      expect(follower.getMetrics().forwardedReads).toBe(readsBefore);
      // A node cut off from the others still answers local reads, from what it applied.
      cluster.transport.isolate(cluster.idOf(follower));
      expect(await follower.get('k', { consistency: 'local' })).toBe('v');
    });

    it('values survive the round trip: objects, arrays, null, numbers, booleans, bytes, dates', async () => {
      const cluster = await startCluster();
      const values: Record<string, unknown> = {
        object: { a: 1, nested: { b: [1, 2, { c: 'x' }] } },
        array: [1, 'two', null, true],
        null: null,
        number: -12.5,
        zero: 0,
        boolean: false,
        empty: '',
        bytes: new Uint8Array([1, 2, 3]),
        date: new Date(1_700_000_000_000),
      };
      const follower = cluster.followers()[0]!;
      for (const [key, value] of Object.entries(values)) await follower.set(key, value);
      for (const node of cluster.nodes) {
        for (const [key, value] of Object.entries(values)) {
          expect(await node.get(key)).toEqual(value);
        }
      }
    });

    it('a 64-bit bigint value (allowed by the README and validate.ts) is stored and read back unchanged', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const values = [2n ** 60n + 1n, -(2n ** 63n), 2n ** 64n - 1n];
      for (const [index, value] of values.entries()) {
        const outcome = await follower.set(`big-${index}`, value).then(
          () => 'stored',
          (error: { code?: string; message?: string }) =>
            `rejected with code ${error.code} (${error.message})`,
        );
        expect(outcome, `set(${value}n)`).toBe('stored');
        expect(await follower.get(`big-${index}`)).toBe(value);
      }
    });

    it('concurrent writes from every node all apply, once each', async () => {
      const cluster = await startCluster();
      const calls = cluster.nodes.flatMap((node, index) =>
        Array.from({ length: 10 }, (_, n) => node.set(`key-${n % 3}`, `${cluster.idOf(node)}-${index}-${n}`)),
      );
      await within(Promise.all(calls), 'every concurrent write');
      await changesEverywhere(cluster, 30);
      for (const node of cluster.nodes) {
        const values = cluster.changes.get(cluster.idOf(node))!.map((change) => change.value);
        expect(values).toHaveLength(30);
        expect(new Set(values).size).toBe(30);
      }
      // Every node reads the same last value of each key.
      for (let key = 0; key < 3; key += 1) {
        const seen = await Promise.all(cluster.nodes.map((node) => node.get(`key-${key}`)));
        expect(new Set(seen).size).toBe(1);
      }
    });

    it('a write forwarded by a follower completes across a leader change', async () => {
      const cluster = await startCluster();
      const old = cluster.leader();
      const follower = cluster.followers()[0]!;
      // The leader is cut off as the write leaves the follower: it goes to the next leader.
      cluster.transport.isolate(cluster.idOf(old));
      await within(follower.set('k', 'after-change'), 'the forwarded write');
      expect(await follower.get('k')).toBe('after-change');
      cluster.transport.heal();
      await changesOn(cluster, old, 1);
      expect(await old.get('k')).toBe('after-change');
      expect(cluster.changes.get(cluster.idOf(old))!.filter((c) => c.value === 'after-change')).toHaveLength(
        1,
      );
    });
  });

  describe('change events', () => {
    it('fire once per update on every node, in the same order, with deleted: true for deletes', async () => {
      const cluster = await startCluster();
      const [a, b] = cluster.followers() as [DiskeyvalNode, DiskeyvalNode];
      await a.set('x', 1);
      await b.set('y', 2);
      await cluster.leader().delete('x');
      await a.set('x', 3);
      await b.delete('y');
      await changesEverywhere(cluster, 5);
      const expected = [
        { key: 'x', value: 1, deleted: false },
        { key: 'y', value: 2, deleted: false },
        { key: 'x', value: undefined, deleted: true },
        { key: 'x', value: 3, deleted: false },
        { key: 'y', value: undefined, deleted: true },
      ];
      const reference = cluster.changes.get(IDS[0])!;
      for (const node of cluster.nodes) {
        const changes = cluster.changes.get(cluster.idOf(node))!;
        expect(changes.map(({ key, value, deleted }) => ({ key, value, deleted }))).toEqual(expected);
        // The same log index for the same update everywhere, increasing.
        expect(changes.map((change) => change.index)).toEqual(reference.map((change) => change.index));
        for (let i = 1; i < changes.length; i += 1)
          expect(changes[i]!.index).toBeGreaterThan(changes[i - 1]!.index);
      }
    });

    it('off removes a listener', async () => {
      const cluster = await startCluster();
      const node = cluster.leader();
      const seen: ChangeEvent[] = [];
      const listener = (change: ChangeEvent): void => {
        seen.push(change);
      };
      node.on('change', listener);
      await node.set('a', 1);
      node.off('change', listener);
      await node.set('b', 2);
      expect(seen.map((change) => change.key)).toEqual(['a']);
      expect(cluster.changes.get(cluster.idOf(node))!.map((change) => change.key)).toEqual(['a', 'b']);
    });
  });

  describe('NOT_LEADER', () => {
    it('forward: false on a follower rejects set and delete with NOT_LEADER naming the leader, and proposes nothing', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const leaderId = cluster.idOf(cluster.leader());
      const error = await rejectionOf(follower.set('k', 'v', { forward: false }));
      expect(isNotLeader(error)).toBe(true);
      expect((error as { leaderId?: string }).leaderId).toBe(leaderId);
      await expectNothingProposed(cluster, 'NOT_LEADER', () => follower.set('k', 'v', { forward: false }));
      await expectNothingProposed(cluster, 'NOT_LEADER', () => follower.delete('marker', { forward: false }));
      expect(await follower.get('k')).toBeUndefined();
    });

    it('forward: false on a follower rejects a get with NOT_LEADER; on the leader it serves everything', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      expect(await codeOf(follower.get('k', { forward: false }))).toBe('NOT_LEADER');
      const leader = cluster.leader();
      await leader.set('k', 'v', { forward: false });
      expect(await leader.get('k', { forward: false })).toBe('v');
      await leader.delete('k', { forward: false });
      expect(await leader.get('k', { forward: false })).toBeUndefined();
    });
  });

  describe('STOPPED', () => {
    it('calls before start reject with STOPPED', async () => {
      const cluster = createCluster();
      const node = cluster.nodes[0]!;
      expect(await codeOf(node.set('k', 'v'))).toBe('STOPPED');
      expect(await codeOf(node.get('k'))).toBe('STOPPED');
      expect(await codeOf(node.get('k', { consistency: 'local' }))).toBe('STOPPED');
      expect(await codeOf(node.delete('k'))).toBe('STOPPED');
      expect(node.isLeader()).toBe(false);
      expect(node.leaderId()).toBeNull();
      // Nothing was proposed: once started, the cluster's first update is the first write.
      await Promise.all(cluster.nodes.map((other) => other.start()));
      await agreedLeader(cluster.nodes);
      await node.set('first', 1);
      await changesEverywhere(cluster, 1);
      for (const other of cluster.nodes) {
        expect(cluster.changes.get(cluster.idOf(other))!.map((change) => change.key)).toEqual(['first']);
      }
    });

    it('calls after end reject with STOPPED, pending calls too, and start after end rejects', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      cluster.transport.isolate(cluster.idOf(follower));
      const pending = follower.set('k', 'pending');
      const pendingRead = follower.get('k');
      await follower.end();
      expect(await codeOf(pending)).toBe('STOPPED');
      expect(await codeOf(pendingRead)).toBe('STOPPED');
      expect(await codeOf(follower.set('k', 'v'))).toBe('STOPPED');
      expect(await codeOf(follower.get('k'))).toBe('STOPPED');
      expect(await codeOf(follower.delete('k'))).toBe('STOPPED');
      expect(await codeOf(follower.start())).toBe('STOPPED');
      await follower.end(); // twice is fine
      expect(follower.isLeader()).toBe(false);
      expect(follower.leaderId()).toBeNull();
    });
  });

  describe('INVALID_ARGUMENT: nothing is proposed', () => {
    it('rejects invalid keys (empty, not a string, over 1024 bytes) on set, get and delete', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const longAscii = 'k'.repeat(MAX_KEY_BYTES + 1);
      const longUtf8 = '€'.repeat(Math.ceil((MAX_KEY_BYTES + 1) / 3)); // 3 bytes each
      const badKeys: unknown[] = ['', 42, null, undefined, {}, ['k'], Symbol('k'), longAscii, longUtf8];
      for (const key of badKeys) {
        for (const node of [follower, cluster.leader()]) {
          await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () => node.set(key as string, 'v'));
          expect(await codeOf(node.get(key as string))).toBe('INVALID_ARGUMENT');
          expect(await codeOf(node.delete(key as string))).toBe('INVALID_ARGUMENT');
        }
      }
      // The limit itself is fine, in bytes.
      await follower.set('k'.repeat(MAX_KEY_BYTES), 'edge');
      expect(await follower.get('k'.repeat(MAX_KEY_BYTES))).toBe('edge');
    });

    it('rejects values that do not survive msgpack: functions, symbols, undefined, cycles, class instances', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const cyclic: Record<string, unknown> = { a: 1 };
      cyclic.self = cyclic;
      const cyclicArray: unknown[] = [1];
      cyclicArray.push(cyclicArray);
      const withPrototype = Object.create({ inherited: true }) as Record<string, unknown>;
      withPrototype.own = 1;
      const badValues: Array<[string, unknown]> = [
        ['function', () => 1],
        ['symbol', Symbol('s')],
        ['undefined', undefined],
        ['undefined in an object', { a: undefined }],
        ['undefined in an array', [1, undefined]],
        ['function in an object', { f: () => 1 }],
        ['symbol in an array', [Symbol('s')]],
        ['cyclic object', cyclic],
        ['cyclic array', cyclicArray],
        ['a Map', new Map([['a', 1]])],
        ['a Set', new Set([1])],
        ['a URL', new URL('https://example.com')],
        ['an Error', new Error('e')],
        ['an object with a prototype', withPrototype],
        ['a bigint over 64 bits', 2n ** 70n],
      ];
      for (const [what, value] of badValues) {
        const error = await rejectionOf(follower.set('k', value), what);
        expect(isInvalidArgument(error), what).toBe(true);
      }
      // And none of them was proposed.
      await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () => follower.set('k', { a: [() => 1] }));
      await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () => cluster.leader().set('k', cyclic));
      expect(await follower.get('k')).toBeUndefined();
    });

    it('rejects a value above maxValueBytes and takes one at the limit', async () => {
      const cluster = await startCluster({ maxValueBytes: 100 });
      const follower = cluster.followers()[0]!;
      // msgpack: a str8 header is 2 bytes, so 98 characters encode to exactly 100 bytes.
      await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () => follower.set('big', 'x'.repeat(99)));
      await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () =>
        cluster.leader().set('big', { nested: 'x'.repeat(200) }),
      );
      await follower.set('big', 'x'.repeat(98));
      expect(await follower.get('big')).toBe('x'.repeat(98));
    });

    it('rejects invalid call options', async () => {
      const cluster = await startCluster();
      const node = cluster.followers()[0]!;
      const badOptions: unknown[] = [
        null,
        'fast',
        { timeoutMs: 0 },
        { timeoutMs: -5 },
        { timeoutMs: Number.POSITIVE_INFINITY },
        { timeoutMs: '100' },
        { signal: {} },
        { forward: 'no' },
        { consistency: 'eventual' },
      ];
      for (const options of badOptions) {
        await expectNothingProposed(cluster, 'INVALID_ARGUMENT', () => node.set('k', 'v', options as never));
        expect(await codeOf(node.get('k', options as never))).toBe('INVALID_ARGUMENT');
        expect(await codeOf(node.delete('k', options as never))).toBe('INVALID_ARGUMENT');
      }
    });

    it('rejects invalid node options synchronously, and reconfigure', async () => {
      const transport = createMemoryTransport();
      const make = (options: Partial<DiskeyvalOptions>) => () =>
        diskeyval({ nodeId: 'a', peers: ['b', 'c'], transport, ...options } as DiskeyvalOptions);
      const cases: Array<Partial<DiskeyvalOptions>> = [
        { nodeId: '' },
        { nodeId: 7 as unknown as string },
        { peers: 'b' as unknown as string[] },
        { peers: ['b', 'b'] },
        { peers: ['a', 'b'] },
        { peers: ['', 'b'] },
        { heartbeatMs: 200, electionTimeoutMs: 100 },
        { heartbeatMs: 0 },
        { transport: undefined },
      ];
      for (const options of cases) {
        let thrown: unknown = null;
        try {
          make(options)();
        } catch (error) {
          thrown = error;
        }
        expect(isInvalidArgument(thrown), JSON.stringify(options)).toBe(true);
      }
      const cluster = await startCluster();
      // reconfigure's own checks are in membership-api.test.ts.
      expect(await codeOf(cluster.leader().reconfigure(['n1', 'n1']))).toBe('INVALID_ARGUMENT');
      expect(
        cluster
          .byId('n1')
          .getPeers()
          .map((peer) => peer.nodeId),
      ).toEqual(['n1', 'n2', 'n3']);
    });
  });

  describe('TIMEOUT, ABORTED, QUORUM_UNAVAILABLE', () => {
    it('timeoutMs rejects set, delete and get with TIMEOUT on a partitioned node; the write never applies', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      cluster.transport.isolate(cluster.idOf(follower));
      const started = performance.now();
      const error = await rejectionOf(follower.set('k', 'lost', { timeoutMs: 150 }));
      expect(isTimeout(error)).toBe(true);
      expect(performance.now() - started).toBeGreaterThanOrEqual(140);
      expect(await codeOf(follower.delete('k', { timeoutMs: 50 }))).toBe('TIMEOUT');
      expect(await codeOf(follower.get('k', { timeoutMs: 50 }))).toBe('TIMEOUT');
      expect(follower.getMetrics().pendingWrites).toBe(0);
      expect(follower.getMetrics().pendingReads).toBe(0);
      // The forwarded messages were dropped by the partition: after healing the write is not applied.
      cluster.transport.heal();
      await agreedLeader(cluster.nodes);
      await follower.set('after', 1);
      await changesEverywhere(cluster, 1);
      expect(await follower.get('k')).toBeUndefined();
      for (const node of cluster.nodes) {
        expect(cluster.changes.get(cluster.idOf(node))!.map((change) => change.key)).toEqual(['after']);
      }
    });

    it('an already-aborted signal rejects with ABORTED and proposes nothing', async () => {
      const cluster = await startCluster();
      const controller = new AbortController();
      controller.abort();
      for (const node of [cluster.followers()[0]!, cluster.leader()]) {
        await expectNothingProposed(cluster, 'ABORTED', () =>
          node.set('k', 'v', { signal: controller.signal }),
        );
        await expectNothingProposed(cluster, 'ABORTED', () =>
          node.delete('k', { signal: controller.signal }),
        );
        const error = await rejectionOf(node.get('k', { signal: controller.signal }));
        expect(isAborted(error)).toBe(true);
      }
    });

    it('a signal aborted while the call waits rejects with ABORTED', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      cluster.transport.isolate(cluster.idOf(follower));
      const controller = new AbortController();
      const write = follower.set('k', 'v', { signal: controller.signal });
      const read = follower.get('k', { signal: controller.signal });
      const both = Promise.allSettled([write, read]);
      // Abort once the calls were routed (the follower forwarded them into the partition).
      await new Promise<void>((resolve) => setImmediate(resolve));
      expect(follower.getMetrics().pendingWrites).toBe(1);
      expect(follower.getMetrics().pendingReads).toBe(1);
      controller.abort();
      const [writeResult, readResult] = await within(both, 'the aborted calls');
      expect(writeResult.status === 'rejected' && isAborted(writeResult.reason)).toBe(true);
      expect(readResult.status === 'rejected' && isAborted(readResult.reason)).toBe(true);
      expect(follower.getMetrics().pendingWrites).toBe(0);
      expect(follower.getMetrics().pendingReads).toBe(0);
    });

    it('rejects with QUORUM_UNAVAILABLE after proposalTimeoutMs when the majority is out of reach', async () => {
      const cluster = await startCluster({ proposalTimeoutMs: 300 });
      const leader = cluster.leader();
      const follower = cluster.followers()[0]!;
      // The leader alone: it cannot commit or confirm a read.
      cluster.transport.isolate(cluster.idOf(leader));
      const errors = await Promise.all([
        rejectionOf(leader.set('k', 'v')),
        rejectionOf(leader.get('k')),
        rejectionOf(leader.delete('k')),
      ]);
      for (const error of errors) expect(isQuorumUnavailable(error)).toBe(true);
      cluster.transport.heal();
      await agreedLeader(cluster.nodes);
      // A follower alone: the same.
      cluster.transport.isolate(cluster.idOf(follower));
      const started = performance.now();
      expect(await codeOf(follower.set('k', 'v'))).toBe('QUORUM_UNAVAILABLE');
      expect(await codeOf(follower.get('k'))).toBe('QUORUM_UNAVAILABLE');
      expect(performance.now() - started).toBeGreaterThanOrEqual(290);
      // A call's own timeout longer than proposalTimeoutMs still ends at proposalTimeoutMs.
      expect(await codeOf(follower.set('k', 'v', { timeoutMs: 10_000 }))).toBe('QUORUM_UNAVAILABLE');
    });
  });

  describe('errors and metrics', () => {
    it('every rejection carries a code, and the type guards tell them apart', async () => {
      expect([...ERROR_CODES].sort()).toEqual(
        [
          'ABORTED',
          'INVALID_ARGUMENT',
          'NOT_LEADER',
          'QUORUM_UNAVAILABLE',
          'STOPPED',
          'TIMEOUT',
          'WAL_CORRUPT',
          'DIR_LOCKED',
          'DISK_FAILED',
          'CHANGE_IN_PROGRESS',
          'REMOVED',
        ].sort(),
      );
      const cluster = await startCluster({ proposalTimeoutMs: 300 });
      const follower = cluster.followers()[0]!;
      const aborted = new AbortController();
      aborted.abort();
      const errors: Record<string, unknown> = {
        NOT_LEADER: await rejectionOf(follower.set('k', 1, { forward: false })),
        INVALID_ARGUMENT: await rejectionOf(follower.set('', 1)),
        ABORTED: await rejectionOf(follower.set('k', 1, { signal: aborted.signal })),
      };
      cluster.transport.isolate(cluster.idOf(follower));
      errors.TIMEOUT = await rejectionOf(follower.set('k', 1, { timeoutMs: 20 }));
      errors.QUORUM_UNAVAILABLE = await rejectionOf(follower.set('k', 1));
      await follower.end();
      errors.STOPPED = await rejectionOf(follower.set('k', 1));
      const guards = {
        NOT_LEADER: isNotLeader,
        INVALID_ARGUMENT: isInvalidArgument,
        ABORTED: isAborted,
        TIMEOUT: isTimeout,
        QUORUM_UNAVAILABLE: isQuorumUnavailable,
        STOPPED: isStopped,
      } as const;
      for (const [code, error] of Object.entries(errors)) {
        expect(error).toBeInstanceOf(Error);
        expect((error as { code: string }).code).toBe(code);
        expect(isDiskeyvalError(error)).toBe(true);
        expect(isDiskeyvalError(error, code as (typeof ERROR_CODES)[number])).toBe(true);
        for (const [guardCode, guard] of Object.entries(guards))
          expect(guard(error)).toBe(guardCode === code);
      }
      for (const guard of Object.values(guards)) {
        expect(guard(new Error('plain'))).toBe(false);
        expect(guard(Object.assign(new Error('other'), { code: 'ENOENT' }))).toBe(false);
        expect(guard({ code: 'TIMEOUT' })).toBe(false);
        expect(guard(null)).toBe(false);
        expect(guard('TIMEOUT')).toBe(false);
      }
      expect(isDiskeyvalError(errors.TIMEOUT, 'ABORTED')).toBe(false);
    });

    it('malformed snapshot chunks are dropped and counted; the node keeps serving', async () => {
      const cluster = await startCluster();
      const follower = cluster.followers()[0]!;
      const to = cluster.idOf(follower);
      const leaderId = cluster.idOf(cluster.leader());
      await follower.set('before', 1);
      const base = {
        type: 'InstallSnapshot',
        from: leaderId,
        to,
        term: follower.getMetrics().term,
        lastIncludedIndex: 1_000,
        lastIncludedTerm: 1,
      };
      const bad = [
        { ...base, data: 'not bytes', chunkOffset: 0, totalBytes: 9 },
        { ...base, data: new Uint8Array(4), chunkOffset: 8, totalBytes: 9 },
        { ...base, data: new Uint8Array(4), chunkOffset: -1, totalBytes: 9 },
        { ...base, data: new Uint8Array(4), chunkOffset: 0, totalBytes: 2 ** 40 },
        { ...base, lastIncludedIndex: 1.5, data: new Uint8Array(4), chunkOffset: 0, totalBytes: 4 },
        // Whole, well framed, but not a snapshot: dropped before the machine sees it.
        { ...base, data: new Uint8Array([1, 2, 3, 4]), chunkOffset: 0, totalBytes: 4 },
      ];
      // Two pieces that overlap instead of tiling the snapshot: one bad snapshot.
      const overlapping = [
        { ...base, data: new Uint8Array(4), chunkOffset: 0, totalBytes: 6 },
        { ...base, data: new Uint8Array(4), chunkOffset: 2, totalBytes: 6 },
      ];
      const endpoint = cluster.transport.connect('intruder', () => {}) as TransportEndpoint;
      for (const message of [...bad, ...overlapping]) endpoint.send(message as never);
      // The transport delivers in order: once a later write went through, the chunks were seen.
      await follower.set('after', 2);
      expect(follower.getMetrics().malformedMessages).toBe(bad.length + 1);
      expect(follower.getMetrics().commitIndex).toBeLessThan(1_000);
      await endpoint.close();
      expect(follower.getMetrics().snapshotsInstalled).toBe(0);
      await follower.set('after', 3);
      expect(await follower.get('after')).toBe(3);
      expect(await follower.get('before')).toBe(1);
    });

    it('getMetrics reports role, term, indexes, forwarded calls, keys and peers', async () => {
      const cluster = await startCluster();
      const leader = cluster.leader();
      const follower = cluster.followers()[0]!;
      await follower.set('a', 1);
      await follower.set('b', 2);
      await follower.delete('a');
      expect(await follower.get('b')).toBe(2);
      await changesEverywhere(cluster, 3);
      const leaderMetrics = leader.getMetrics();
      const followerMetrics = follower.getMetrics();
      expect(leaderMetrics.nodeId).toBe(cluster.idOf(leader));
      expect(leaderMetrics.role).toBe('leader');
      expect(followerMetrics.role).toBe('follower');
      expect(followerMetrics.term).toBe(leaderMetrics.term);
      expect(followerMetrics.leaderId).toBe(cluster.idOf(leader));
      expect(leaderMetrics.elections).toBeGreaterThanOrEqual(1);
      expect(followerMetrics.elections).toBe(0);
      for (const metrics of [leaderMetrics, followerMetrics]) {
        expect(metrics.appliedIndex).toBeLessThanOrEqual(metrics.commitIndex);
        expect(metrics.commitIndex).toBeLessThanOrEqual(metrics.lastIndex);
        expect(metrics.keys).toBe(1);
        expect(metrics.pendingWrites).toBe(0);
        expect(metrics.pendingReads).toBe(0);
        expect(metrics.transport).toBeNull();
        expect(metrics.malformedMessages).toBe(0);
        expect(metrics.duplicatesSkipped).toBe(0);
        expect(metrics.peers.map((peer) => peer.nodeId).sort()).toEqual(
          IDS.filter((id) => id !== metrics.nodeId).sort(),
        );
      }
      // Three commands and the leader's no-op, at least.
      expect(leaderMetrics.commitIndex).toBeGreaterThanOrEqual(4);
      expect(followerMetrics.forwardedWrites).toBe(3);
      expect(followerMetrics.forwardedReads).toBe(1);
      expect(leaderMetrics.proposalBatches).toBeGreaterThanOrEqual(3);
      expect(leaderMetrics.readBatches).toBeGreaterThanOrEqual(1);
      for (const peer of leaderMetrics.peers) {
        expect(peer.messagesSent).toBeGreaterThan(0);
        expect(peer.messagesReceived).toBeGreaterThan(0);
        expect(peer.entriesSent).toBeGreaterThanOrEqual(4);
      }
      // Before start: zeros, and a follower with no leader.
      const idle = diskeyval({ nodeId: 'x', peers: ['y'], transport: createMemoryTransport() });
      open.push(idle);
      const idleMetrics = idle.getMetrics();
      expect(idleMetrics).toMatchObject({
        nodeId: 'x',
        role: 'follower',
        term: 0,
        leaderId: null,
        commitIndex: 0,
      });
    });

    it('start is idempotent on a running node', async () => {
      const cluster = await startCluster();
      await cluster.leader().start();
      await cluster.leader().set('k', 'v');
      expect(await cluster.followers()[1]!.get('k')).toBe('v');
    });
  });
});
