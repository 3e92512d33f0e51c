/**
 * Recovery through the public API, on an in-memory cluster of three nodes in one process
 * (README, "Restarts, recovery and bootstrap"):
 *
 * - a fresh cluster bootstraps (every node starts recovering, none holds state);
 * - a node restarted in memory is `recovering` until it has recovered, then holds every write;
 * - when two of three lose their state while the third holds it, the restarted nodes wait: calls
 *   reject with QUORUM_UNAVAILABLE and `recovering: true`, one RECOVERY_BLOCKED warning names what
 *   they wait for; `forceRecovery` recovers from the member that still holds the writes.
 *
 * Every wait is on an event with a bound.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  createMemoryTransport,
  type DiskeyvalNode,
  diskeyval,
  type MemoryTransport,
  type WarningEvent,
} from '../../src/index.js';
import { within as withinBound } from '../support/within.js';

const IDS = ['a', 'b', 'c'] as const;
const BOUND_MS = 8_000;
const open: DiskeyvalNode[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
});

const within = <T>(promise: Promise<T>, what: string, boundMs = BOUND_MS): Promise<T> =>
  withinBound(promise, what, boundMs);

const start = async (
  transport: MemoryTransport,
  nodeId: string,
  extra: { forceRecovery?: boolean } = {},
): Promise<DiskeyvalNode> => {
  const node = diskeyval({
    nodeId,
    peers: IDS.filter((id) => id !== nodeId),
    transport,
    electionTimeoutMs: 100,
    heartbeatMs: 20,
    proposalTimeoutMs: 1_500,
    seed: nodeId.charCodeAt(0),
    ...extra,
  });
  open.push(node);
  await node.start();
  return node;
};

/** Resolves once a `leader` event makes `holds()` true (checked now too). */
const whenLeader = (nodes: readonly DiskeyvalNode[], holds: () => boolean, what: string): Promise<void> => {
  if (holds()) return Promise.resolve();
  return within(
    new Promise<void>((resolve) => {
      for (const node of nodes)
        node.on('leader', () => {
          if (holds()) resolve();
        });
    }),
    what,
  );
};

const agreed = (nodes: readonly DiskeyvalNode[]) => () => {
  const id = nodes[0]!.leaderId();
  return id !== null && nodes.every((node) => node.leaderId() === id) && nodes.some((n) => n.isLeader());
};

/** A linearizable read that succeeds once the node has recovered and caught up. */
const readWhenRecovered = async (node: DiskeyvalNode, key: string): Promise<unknown> => {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    try {
      return await node.get(key);
    } catch {
      // QUORUM_UNAVAILABLE while the node still recovers: the call itself is the bounded wait.
    }
  }
  throw new Error(`${key} could not be read`);
};

describe('recovery through the public API', () => {
  it('a fresh cluster bootstraps; a node restarted in memory recovers and then holds every write', async () => {
    const transport = createMemoryTransport();
    const nodes = await Promise.all(IDS.map((id) => start(transport, id)));
    await whenLeader(nodes, agreed(nodes), 'a first leader');
    for (const node of nodes) expect(node.getMetrics().recovering).toBe(false);
    await nodes[0]!.set('w', 'W');
    const follower = nodes.find((node) => !node.isLeader())!;
    const id = follower.getMetrics().nodeId;
    await follower.end();
    const back = await start(transport, id);
    expect(back.getMetrics().recovering).toBe(true);
    expect(await readWhenRecovered(back, 'w')).toBe('W');
    expect(back.getMetrics().recovering).toBe(false);
  });

  it('two of three restarted empty wait and say so; forceRecovery recovers from the member that kept the writes', async () => {
    const transport = createMemoryTransport();
    const nodes = await Promise.all(IDS.map((id) => start(transport, id)));
    await whenLeader(nodes, agreed(nodes), 'a first leader');
    await nodes[0]!.set('w', 'W');
    const keeper = nodes.find((node) => node.isLeader())!;
    const lost = nodes.filter((node) => node !== keeper);
    const lostIds = lost.map((node) => node.getMetrics().nodeId);
    await Promise.all(lost.map((node) => node.end()));
    const restarted = await Promise.all(lostIds.map((id) => start(transport, id)));
    const blocked = within(
      new Promise<WarningEvent>((resolve) =>
        restarted[0]!.on('warning', (warning) => {
          if (warning.code === 'RECOVERY_BLOCKED') resolve(warning);
        }),
      ),
      'a RECOVERY_BLOCKED warning',
    );
    const error = await restarted[0]!.get('w').catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: 'QUORUM_UNAVAILABLE', recovering: true });
    expect(restarted.every((node) => node.getMetrics().recovering)).toBe(true);
    const warning = await blocked;
    expect(warning.waitingFor).toEqual(expect.arrayContaining([lostIds[1]]));
    // The operator restarts one of them with forceRecovery: it recovers from the keeper.
    await restarted[0]!.end();
    const forced = await start(transport, lostIds[0]!, { forceRecovery: true });
    expect(await readWhenRecovered(forced, 'w')).toBe('W');
    expect(await readWhenRecovered(restarted[1]!, 'w')).toBe('W');
    expect(forced.getMetrics().recovering).toBe(false);
  });
});
