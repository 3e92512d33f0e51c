/**
 * A snapshot carries the configuration in force at its last index (membership.ts,
 * configsAfterSnapshot): a follower restored from a snapshot that covers config entries it never
 * held must take its members from the snapshot. The model runs never compact a log (the reference
 * spec has no snapshots), so this is a scenario on a few machines (the leader's snapshot is attached
 * the way the node attaches the store's: data and the configuration at its index), with a broken
 * variant: the snapshot goes without its configuration, and the receiver keeps the members its own
 * log knew at that index.
 *
 * The check is configuration matching: two servers that hold the same index (a log entry or a
 * snapshot point) agree on the configuration in force there.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { NodeId, RaftMessage } from '../../src/machines/messages.js';
import { roleOf } from '../../src/machines/raft.machine.js';
import type { RaftEvent } from '../../src/machines/raft.types.js';
import { configAt } from '../../src/machines/rules/membership.js';
import { startServer, type TestServer } from './cluster.js';

/** The broken variant: the node sends its snapshot without the configuration in force at its index. */
let snapshotWithoutConfig = false;

afterEach(() => {
  snapshotWithoutConfig = false;
});

/** Servers wired by one queue; `cut` drops everything from or to those servers. */
const createNet = (voters: Record<NodeId, NodeId[]>) => {
  const queue: RaftMessage[] = [];
  const servers = new Map<NodeId, TestServer>();
  const cut = new Set<NodeId>();
  for (const [position, [id, bootstrap]] of Object.entries(voters).entries())
    servers.set(
      id,
      startServer(
        {
          id,
          voters: bootstrap,
          electionTimeoutMs: 100,
          heartbeatMs: 10,
          seed: position + 1,
          incarnation: 1,
        },
        (messages) => queue.push(...messages),
      ),
    );
  const context = (id: NodeId) => servers.get(id)!.actor.getSnapshot().context;
  const send = (id: NodeId, event: RaftEvent) => {
    servers.get(id)!.actor.send(event);
    const snapshot = servers.get(id)!.actor.getSnapshot();
    if (snapshot.status !== 'active') throw new Error(`${id} stopped: ${String(snapshot.error)}`);
  };
  /** Delivers in order (bounded); an InstallSnapshot gets the data and configuration the node attaches. */
  const settle = (): void => {
    for (let delivered = 0; queue.length > 0; delivered += 1) {
      if (delivered > 10_000) throw new Error('not settled');
      const message = queue.shift()!;
      if (cut.has(message.from) || cut.has(message.to)) continue;
      const attached =
        message.type === 'InstallSnapshot'
          ? {
              ...message,
              data: new Uint8Array([1]),
              ...(snapshotWithoutConfig
                ? {}
                : { config: configAt(context(message.from), message.lastIncludedIndex) }),
            }
          : message;
      send(message.to, { type: 'message', message: attached });
    }
  };
  const role = (id: NodeId) => roleOf(servers.get(id)!.actor.getSnapshot().value);
  const stop = () => {
    for (const server of servers.values()) server.actor.stop();
  };
  return { send, settle, context, role, cut, stop };
};

/**
 * a leads {a,b,c}; c is cut off; the voters become {a,b,c,d} (d catches up by log), both changes
 * commit without c, then a compacts its log and c comes back: it can only be brought up to date
 * by a snapshot past both config entries. Returns c's configuration in force and a's at that index.
 */
const restoredFromSnapshot = () => {
  const net = createNet({
    a: ['a', 'b', 'c'],
    b: ['a', 'b', 'c'],
    c: ['a', 'b', 'c'],
    d: ['a', 'b', 'c', 'd'],
  });
  try {
    net.send('a', { type: 'electionTimeout' });
    net.settle();
    expect(net.role('a')).toBe('leader');
    net.cut.add('c');
    net.send('a', { type: 'reconfigure', requestId: 1, voters: ['a', 'b', 'c', 'd'], addresses: {} });
    net.settle();
    net.send('a', { type: 'propose', batchId: 1, commands: [new Uint8Array([7])] });
    net.settle();
    const leader = net.context('a');
    expect(leader.config.voters).toEqual(['a', 'b', 'c', 'd']);
    expect(leader.config.outgoing).toEqual([]);
    expect(leader.commitIndex).toBe(leader.log.offset + leader.log.entries.length);
    net.send('a', { type: 'compact', index: leader.commitIndex });
    net.cut.delete('c');
    net.send('a', { type: 'heartbeatTimeout' });
    net.settle();
    const c = net.context('c');
    const index = c.log.offset;
    return { index, snapshotIndex: leader.commitIndex, c: c.config, a: configAt(net.context('a'), index) };
  } finally {
    net.stop();
  }
};

describe('a snapshot carries its configuration', () => {
  it('a follower restored from a snapshot past config entries it never held takes its members from it', () => {
    const { index, snapshotIndex, c, a } = restoredFromSnapshot();
    expect(index).toBe(snapshotIndex);
    expect(c).toEqual(a);
    expect(c.voters).toEqual(['a', 'b', 'c', 'd']);
  });

  it('a snapshot without its configuration is caught: the follower keeps the members of its own log', () => {
    snapshotWithoutConfig = true;
    const { index, snapshotIndex, c, a } = restoredFromSnapshot();
    expect(index).toBe(snapshotIndex);
    // Configuration matching fails: at the same index, c counts {a,b,c} and a counts {a,b,c,d}.
    expect(c).not.toEqual(a);
    expect(c.voters).toEqual(['a', 'b', 'c']);
  });
});
