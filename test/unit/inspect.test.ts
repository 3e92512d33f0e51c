/**
 * The node seen through the XState inspector, as a user attaches it (`inspect` of the public API):
 * a 3-node cluster (in-process transport, each node with its WAL in a temporary dir) with one
 * inspection callback per node.
 *
 * - Every actor of a node appears, with the system id that names the node and the actor.
 * - The events between actors are the ones ARCHITECTURE.md's table names (it is parsed here, so the
 *   document stays true): every event seen during a write and during a leader change is in the
 *   table, and the write path (handle → requests → raft → log → peers, which write to the wire;
 *   answers from transport to raft; raft → store → requests) is seen hop by hop. No peer hands
 *   its messages to the transport actor as an event (one event per hop: `send`).
 * - Batches on every hop: a burst of N concurrent sets on the leader costs the same number of
 *   events on each hop for N = 10 and N = 1,000.
 * - No snapshot an actor reports is larger than SNAPSHOT_BOUND_BYTES as JSON, after 200 writes of
 *   1 KiB values (the log and the values stay out of snapshots).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { InspectionEvent } from 'xstate';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';
import { anyLeader } from '../support/leader.js';
import { within } from '../support/within.js';

const IDS = ['n1', 'n2', 'n3'] as const;
/** Generous: every node starts blank (recovering, then a bootstrap) on a WAL, on a shared machine. */
const BOUND_MS = 30_000;
/** The largest JSON snapshot any actor may report (the raft machine's is the largest). */
const SNAPSHOT_BOUND_BYTES = 4096;

type Edge = { from: string; to: string; type: string };

const open: DiskeyvalNode[] = [];
const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

const systemIdOf = (ref: unknown): string | undefined => (ref as { systemId?: string } | undefined)?.systemId;

/** The actor part of a system id: `n1/peer:n2` → `peer`, `n1` → `node`; `handle` for no sender. */
const roleOf = (systemId: string | undefined): string => {
  if (systemId === undefined) return 'handle';
  const slash = systemId.indexOf('/');
  if (slash < 0) return 'node';
  return systemId.slice(slash + 1).split(':')[0]!;
};

/** ARCHITECTURE.md's table of events between actors: `| from | to | events |`, events as `a`, `b`. */
const documentedEdges = async (): Promise<Set<string>> => {
  const text = await readFile(new URL('../../ARCHITECTURE.md', import.meta.url), 'utf8');
  const section = text.slice(text.indexOf('## Events between actors'));
  const edges = new Set<string>();
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((cell) => cell.trim());
    if (cells.length < 5 || cells[1] === 'from' || cells[1]!.startsWith('-')) continue;
    for (const match of cells[3]!.matchAll(/`([A-Za-z]+)`/g))
      edges.add(`${cells[1]}→${cells[2]}:${match[1]}`);
  }
  return edges;
};

type Recorder = {
  events: InspectionEvent[];
  edges: () => Edge[];
  clear: () => void;
};

const recorder = (): Recorder => {
  const events: InspectionEvent[] = [];
  return {
    events,
    edges: () =>
      events
        .filter((event) => event.type === '@xstate.event')
        .map((event) => ({
          from: roleOf(systemIdOf(event.sourceRef)),
          to: roleOf(systemIdOf(event.actorRef)),
          type: event.event.type,
        }))
        // XState's own: the init event of each actor as it starts.
        .filter((edge) => !edge.type.startsWith('xstate.')),
    clear: () => {
      events.length = 0;
    },
  };
};

/** `inspectEventsPerSecond` of every node: the default budget unless a test counts every event. */
const startCluster = async (inspectEventsPerSecond?: number) => {
  const transport = createMemoryTransport();
  const recorders = new Map<string, Recorder>();
  const nodes = new Map<string, DiskeyvalNode>();
  for (const [index, nodeId] of IDS.entries()) {
    const dir = await mkdtemp(join(tmpdir(), `diskeyval-inspect-${nodeId}-`));
    dirs.push(dir);
    const record = recorder();
    recorders.set(nodeId, record);
    const node = diskeyval({
      nodeId,
      peers: IDS.filter((id) => id !== nodeId),
      transport,
      electionTimeoutMs: 150,
      heartbeatMs: 30,
      seed: index + 7,
      persistence: { dir },
      inspect: (event) => record.events.push(event),
      ...(inspectEventsPerSecond === undefined ? {} : { inspectEventsPerSecond }),
    });
    open.push(node);
    nodes.set(nodeId, node);
  }
  await Promise.all([...nodes.values()].map((node) => node.start()));
  /** Resolves with the node every one of `among` names as leader, checked on each `leader` event. */
  const leader = async (among: DiskeyvalNode[]): Promise<DiskeyvalNode> => {
    const found = () =>
      among.find((node) => node.isLeader() && among.every((other) => other.leaderId() === node.leaderId()));
    const listeners: Array<() => void> = [];
    const agreed = new Promise<void>((resolve) => {
      const check = () => {
        if (found()) resolve();
      };
      for (const node of among) {
        listeners.push(check);
        node.on('leader', check);
      }
      check();
    });
    await within(agreed, 'a leader every node names', BOUND_MS).finally(() => {
      for (const [index, node] of among.entries()) node.off('leader', listeners[index]!);
    });
    return found()!;
  };
  return { nodes, recorders, leader };
};

/** Checks every 10 ms, within the bound, until no node is recovering (there is no event for it). */
const everyNodeCounts = async (nodes: DiskeyvalNode[]): Promise<void> => {
  const recovering = () => nodes.some((node) => (node.getMetrics() as { recovering?: boolean }).recovering);
  const done = (async () => {
    for (let checks = 0; checks < BOUND_MS / 10 && recovering(); checks += 1)
      await new Promise((resolve) => setTimeout(resolve, 10));
    if (recovering()) throw new Error('a node is still recovering');
  })();
  await within(done, 'every node recovered or bootstrapped', BOUND_MS);
};

const idOf = (nodes: Map<string, DiskeyvalNode>, node: DiskeyvalNode): string =>
  [...nodes].find(([, candidate]) => candidate === node)![0];

describe('the node in the XState inspector', () => {
  it('shows every actor with its system id, and the events of a write and a leader change as ARCHITECTURE.md names them', async () => {
    const documented = await documentedEdges();
    expect(documented.size).toBeGreaterThan(10);
    const { nodes, recorders, leader } = await startCluster();
    const first = await leader([...nodes.values()]);
    const leaderId = idOf(nodes, first);
    const record = recorders.get(leaderId)!;

    // Every actor, with a system id naming the node and the actor.
    const actors = new Set(
      record.events
        .filter((event) => event.type === '@xstate.actor')
        .map((event) => systemIdOf(event.actorRef)),
    );
    const others = IDS.filter((id) => id !== leaderId);
    expect([...actors].sort()).toEqual(
      [
        leaderId,
        ...['raft', 'log', 'store', 'requests', 'transport', 'membership'].map(
          (actor) => `${leaderId}/${actor}`,
        ),
        ...others.map((peer) => `${leaderId}/peer:${peer}`),
      ].sort(),
    );

    // A write on the leader, hop by hop.
    record.clear();
    await within(first.set('key', 'value'), 'a write', BOUND_MS);
    const seen = new Set(record.edges().map((edge) => `${edge.from}→${edge.to}:${edge.type}`));
    for (const hop of [
      'handle→requests:calls',
      'requests→raft:propose',
      'raft→log:persist',
      'raft→peer:send',
      'transport→raft:message',
      'log→raft:persisted',
      'log→store:apply',
      'store→requests:applied',
      'log→requests:proposalsAccepted',
    ])
      expect(seen, hop).toContain(hop);
    for (const edge of seen) expect(documented, `${edge} is in ARCHITECTURE.md`).toContain(edge);
    expect([...seen].filter((edge) => edge.startsWith('peer→transport'))).toEqual([]);

    // A leader change: the leader ends, the other two elect one of them. A node that started a little
    // late may still be finishing its first recovery (README "Restarts, recovery and bootstrap"): it
    // counts toward nothing until then, so the leader ends once every node counts (as the kill -9
    // soak does; a leader lost before that leaves no majority holding the log).
    await everyNodeCounts([...nodes.values()]);
    for (const id of others) recorders.get(id)!.clear();
    await first.end();
    const second = await leader(others.map((id) => nodes.get(id)!));
    const electionEdges = new Set(
      others
        .flatMap((id) => recorders.get(id)!.edges())
        .map((edge) => `${edge.from}→${edge.to}:${edge.type}`),
    );
    expect(electionEdges).toContain('transport→raft:message');
    expect(electionEdges).toContain('raft→peer:send');
    expect(electionEdges).toContain('raft→requests:leaderChanged');
    for (const edge of electionEdges) expect(documented, `${edge} is in ARCHITECTURE.md`).toContain(edge);
    const messages = others
      .flatMap((id) => recorders.get(id)!.events)
      .filter((event) => event.type === '@xstate.event' && event.event.type === 'message')
      .map((event) =>
        event.type === '@xstate.event'
          ? (event.event as unknown as { message: { type: string } }).message.type
          : '',
      );
    expect(messages).toContain('RequestVote');
    expect(second.isLeader()).toBe(true);
    // Role changes reach the inspector as they happen: the raft machine's snapshots whose state
    // changes are never held back (src/actors/inspection.ts), so the winner's campaign is visible.
    const secondId = idOf(nodes, second);
    const roles = recorders
      .get(secondId)!
      .events.filter(
        (event) => event.type === '@xstate.snapshot' && systemIdOf(event.actorRef) === `${secondId}/raft`,
      )
      .map((event) => {
        const value = (event as unknown as { snapshot: { value: unknown } }).snapshot.value;
        return typeof value === 'string' ? value : Object.keys(value as object)[0];
      });
    expect(roles).toContain('candidate');
    expect(roles.at(-1)).toBe('leader');
  }, 90_000);

  it('keeps every snapshot under the bound after 200 writes of 1 KiB, and a burst costs the same events per hop for 10 and 1,000 sets', async () => {
    // Every event counted: no budget (the budget has its own test, inspect-summary.test.ts).
    const { nodes, recorders, leader } = await startCluster(Number.POSITIVE_INFINITY);
    const first = await leader([...nodes.values()]);
    const record = recorders.get(idOf(nodes, first))!;
    const value = 'x'.repeat(1024);
    for (let round = 0; round < 20; round += 1) {
      await within(
        Promise.all(Array.from({ length: 10 }, (_, index) => first.set(`key-${round}-${index}`, value))),
        'ten writes',
        BOUND_MS,
      );
    }
    let largest = 0;
    for (const recorded of recorders.values()) {
      for (const event of recorded.events) {
        if (event.type !== '@xstate.snapshot') continue;
        const bytes = JSON.stringify(event.snapshot).length;
        largest = Math.max(largest, bytes);
        expect(bytes, `a snapshot of ${systemIdOf(event.actorRef)}`).toBeLessThanOrEqual(
          SNAPSHOT_BOUND_BYTES,
        );
      }
    }
    console.info(`largest snapshot: ${largest} bytes (bound ${SNAPSHOT_BOUND_BYTES})`);

    const hopsOfBurst = async (count: number): Promise<Map<string, number>> => {
      record.clear();
      await within(
        Promise.all(Array.from({ length: count }, (_, index) => first.set(`burst-${count}-${index}`, index))),
        `a burst of ${count}`,
        BOUND_MS,
      );
      const hops = new Map<string, number>();
      for (const edge of record.edges()) {
        if (edge.type === 'message' || edge.type === 'heartbeatAnswered') continue; // answers and heartbeats: timing
        const key = `${edge.from}→${edge.to}:${edge.type}`;
        hops.set(key, (hops.get(key) ?? 0) + 1);
      }
      return hops;
    };
    await hopsOfBurst(10); // warm: the first burst after a quiet moment may meet a heartbeat
    const small = await hopsOfBurst(10);
    const large = await hopsOfBurst(1000);
    console.info(`events per hop on the leader, 10 sets: ${JSON.stringify(Object.fromEntries(small))}`);
    console.info(`events per hop on the leader, 1000 sets: ${JSON.stringify(Object.fromEntries(large))}`);
    for (const hop of [
      'handle→requests:calls',
      'requests→raft:propose',
      'raft→log:persist',
      'log→requests:proposalsAccepted',
    ])
      expect(large.get(hop), hop).toBe(small.get(hop));
    const total = (hops: Map<string, number>) => [...hops.values()].reduce((sum, count) => sum + count, 0);
    // A few more AppendEntries rounds for 1,000 entries (512 per AppendEntries), never one per entry.
    expect(total(large)).toBeLessThan(4 * total(small));
  }, 120_000);

  it('counts what the inspector got in getMetrics, and refuses an inspection budget that is not a rate', async () => {
    const { nodes, leader } = await startCluster();
    const first = await leader([...nodes.values()]);
    await within(first.set('counted', 1), 'a write', BOUND_MS);
    const inspection = first.getMetrics().inspection;
    expect(inspection?.sentEvents).toBeGreaterThan(0);
    expect(inspection?.skippedEvents).toBe(0); // a quiet node: a write goes whole

    const transport = createMemoryTransport();
    const plain = diskeyval({ nodeId: 'x1', peers: ['x2'], transport });
    expect(plain.getMetrics().inspection).toBeNull();
    for (const inspectEventsPerSecond of [0, 5, -1, Number.NaN, '100' as unknown as number]) {
      expect(
        () =>
          diskeyval({ nodeId: 'x1', peers: ['x2'], transport, inspect: () => {}, inspectEventsPerSecond }),
        String(inspectEventsPerSecond),
      ).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    diskeyval({ nodeId: 'x1', peers: ['x2'], transport, inspectEventsPerSecond: Number.POSITIVE_INFINITY });
  }, 90_000);

  it('an inspect observer that throws never reaches the node: writes go on, the first error is a warning, every one counted', async () => {
    const transport = createMemoryTransport();
    const nodes = IDS.map((nodeId, index) =>
      diskeyval({
        nodeId,
        peers: IDS.filter((id) => id !== nodeId),
        transport,
        electionTimeoutMs: 150,
        heartbeatMs: 30,
        seed: index + 11,
        inspect: {
          next: () => {
            throw new Error('an inspector bug');
          },
        },
      }),
    );
    open.push(...nodes);
    const warnings = nodes.map(() => [] as Array<{ code: string; message: string }>);
    for (const [index, node] of nodes.entries())
      node.on('warning', (warning) => warnings[index]!.push(warning));
    await Promise.all(nodes.map((node) => node.start()));
    const leaderNode = await anyLeader(nodes, BOUND_MS);
    for (let i = 0; i < 20; i += 1) await within(leaderNode.set(`thrown-${i}`, i), 'a write', BOUND_MS);
    expect(await within(leaderNode.get('thrown-19'), 'a read', BOUND_MS)).toBe(19);
    for (const [index, node] of nodes.entries()) {
      const thrown = warnings[index]!.filter((warning) => warning.code === 'LISTENER_ERROR');
      expect(thrown, node.getMetrics().nodeId).toHaveLength(1);
      expect(thrown[0]!.message).toContain('an inspector bug');
      expect(node.getMetrics().listenerErrors).toBeGreaterThan(1);
    }
  }, 90_000);
});
