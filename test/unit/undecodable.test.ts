/**
 * No entry can stop the cluster. Entries whose bytes do not decode (a value with an own `__proto__`
 * key, which @msgpack/msgpack refuses to decode; bytes that are not a command at all) are in the
 * log of every node, as an older or faulty proposer could have left them. Every node applies them
 * as no-ops, says so once per entry (warning ENTRY_UNDECODABLE, metric undecodableEntries), applies
 * the entries around them, and does the same again on a restart from the same log. Before this,
 * the apply step threw (DecodeError: The key __proto__ is not allowed) and took the node down, on
 * every replay.
 *
 * And a leader checks forwarded writes before it appends them: a ClientPropose whose command does
 * not decode is refused back as invalid (the caller's write rejects with INVALID_ARGUMENT), and
 * the valid commands of the same message are appended.
 */
import { Encoder } from '@msgpack/msgpack';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createMemoryLog,
  createMemoryTransport,
  type DiskeyvalNode,
  diskeyval,
  type MemoryLog,
  type WarningEvent,
} from '../../src/index.js';
import { encodeCommand } from '../../src/io/command.js';
import type { TransportMessage } from '../../src/io/transport.js';
import type { Entry } from '../../src/machines/messages.js';
import { within as withinBound } from '../support/within.js';

const IDS = ['n1', 'n2', 'n3'] as const;
const BOUND_MS = 5_000;
const open: DiskeyvalNode[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.end()));
});

const within = <T>(promise: Promise<T>, what: string, boundMs = BOUND_MS): Promise<T> =>
  withinBound(promise, what, boundMs);

/** A set command as a proposer that skipped the value checks would encode it. */
const rawSet = (key: string, valueBytes: Uint8Array, seq: number): Uint8Array =>
  new Encoder().encode([1, key, valueBytes, 77, seq, 1]);

/** {"__proto__": {"x": 1}} in msgpack: what JSON.parse gives, encoded as the old `set` did. */
const PROTO_VALUE = new Encoder().encode(JSON.parse('{"__proto__": {"x": 1}}'));

const goodSet = (key: string, value: unknown, seq: number): Uint8Array =>
  encodeCommand({ op: 'set', key, value }, { session: 77, seq, lowestPending: 1 });

/** Index 1..4: a good set, a __proto__ value, bytes that are no command, a good set. */
const poisonedEntries = (): Entry[] => [
  { term: 1, kind: 'command', data: goodSet('a', 1, 1) },
  { term: 1, kind: 'command', data: rawSet('evil', PROTO_VALUE, 2) },
  { term: 1, kind: 'command', data: new Uint8Array([0xc1, 0xff, 0x00]) },
  { term: 1, kind: 'command', data: goodSet('b', { two: 2 }, 3) },
];

const startCluster = async (logs: Map<string, MemoryLog>) => {
  const transport = createMemoryTransport();
  const warnings = new Map<string, WarningEvent[]>();
  const nodes = IDS.map((nodeId, index) => {
    const node = diskeyval({
      nodeId,
      peers: IDS.filter((id) => id !== nodeId),
      transport,
      electionTimeoutMs: 100,
      heartbeatMs: 20,
      seed: index + 3,
      log: logs.get(nodeId)!,
    });
    warnings.set(nodeId, []);
    node.on('warning', (warning) => warnings.get(nodeId)!.push(warning));
    open.push(node);
    return node;
  });
  await Promise.all(nodes.map((node) => node.start()));
  return { nodes, warnings };
};

describe('entries that do not decode', () => {
  it('are applied as no-ops on every node, reported once each, and again after a restart', async () => {
    const logs = new Map(
      IDS.map((id) => [
        id,
        createMemoryLog({
          hardState: { term: 1, votedFor: null },
          snapshot: null,
          entries: poisonedEntries(),
        }),
      ]),
    );
    for (let run = 1; run <= 2; run += 1) {
      const { nodes, warnings } = await startCluster(logs);
      // A linearizable read waits for a leader, whose no-op (index 5) commits everything before it.
      for (const node of nodes) {
        expect(await node.get('a')).toBe(1);
        expect(await node.get('b')).toEqual({ two: 2 });
        expect(await node.get('evil')).toBeUndefined();
        expect(node.getMetrics().undecodableEntries).toBe(2);
        // The cluster goes on taking writes.
        await node.set(`after-${run}`, run);
      }
      for (const id of IDS) {
        const codes = warnings.get(id)!.filter((warning) => warning.code === 'ENTRY_UNDECODABLE');
        expect(codes.map((warning) => warning.index)).toEqual([2, 3]);
        expect(codes[0]!.message).toContain('__proto__');
      }
      await Promise.all(open.splice(0).map((node) => node.end()));
    }
  });
});

describe("the leader's check of forwarded writes", () => {
  it('refuses a forwarded command that does not decode, and appends the valid ones of the same message', async () => {
    const transport = createMemoryTransport();
    // n1 and n2 are a majority of three; n3 is a hand-driven endpoint that skips every client check.
    const nodes = (['n1', 'n2'] as const).map((nodeId, index) => {
      const node = diskeyval({
        nodeId,
        peers: IDS.filter((id) => id !== nodeId),
        transport,
        electionTimeoutMs: 100,
        heartbeatMs: 20,
        seed: index + 5,
      });
      open.push(node);
      return node;
    });
    let refused: (message: TransportMessage) => void = () => undefined;
    const refusal = within(
      new Promise<TransportMessage>((resolve) => {
        refused = resolve;
      }),
      'the refusal',
    );
    const rogue = transport.connect('n3', (message) => {
      if (message.type === 'ClientProposeResult' && (message as { invalid?: boolean }).invalid)
        refused(message);
    });
    if (rogue instanceof Promise) throw new Error('the memory transport connects synchronously');
    await Promise.all(nodes.map((node) => node.start()));
    await nodes[0]!.set('warm-up', 0); // resolves once there is a leader that committed in its term
    const leader = nodes.find((node) => node.isLeader())!;
    const leaderId = leader.leaderId()!;
    const before = leader.getMetrics();
    rogue.send({
      type: 'ClientPropose',
      from: 'n3',
      to: leaderId,
      seqs: [1, 2, 3],
      commands: [goodSet('ok-1', 'one', 1), rawSet('evil', PROTO_VALUE, 2), goodSet('ok-2', 'two', 3)],
    } as unknown as TransportMessage);
    expect(((await refusal) as unknown as { seqs: number[] }).seqs).toEqual([2]);
    expect(await leader.get('ok-1')).toBe('one');
    expect(await leader.get('ok-2')).toBe('two');
    expect(await leader.get('evil')).toBeUndefined();
    const after = leader.getMetrics();
    expect(after.malformedMessages).toBe(before.malformedMessages + 1);
    expect(after.undecodableEntries).toBe(0); // never appended
    await rogue.close();
  });
});
