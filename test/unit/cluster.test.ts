import { describe, expect, it } from 'vitest';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';

/** Resolves with the first node that announces itself leader; rejects after `boundMs`. */
const firstLeader = (nodes: DiskeyvalNode[], boundMs = 5000): Promise<DiskeyvalNode> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no leader within ${boundMs} ms`)), boundMs);
    for (const node of nodes) {
      node.on('leader', ({ nodeId }) => {
        const leader = nodes.find((candidate) => candidate.isLeader() && candidate.leaderId() === nodeId);
        if (leader) {
          clearTimeout(timer);
          resolve(leader);
        }
      });
    }
  });

describe('in-memory cluster', () => {
  it('elects a leader and replicates a set', async () => {
    const transport = createMemoryTransport();
    const ids = ['n1', 'n2', 'n3'];
    const nodes: DiskeyvalNode[] = ids.map((nodeId, i) =>
      diskeyval({
        nodeId,
        peers: ids.filter((id) => id !== nodeId),
        transport,
        seed: i + 1,
        electionTimeoutMs: 100,
        heartbeatMs: 20,
      }),
    );
    const leaderElected = firstLeader(nodes);
    await Promise.all(nodes.map((node) => node.start()));
    const leader = await leaderElected;
    await leader.set('k', 'v');
    expect(await leader.get('k')).toBe('v');
    for (const node of nodes) expect(await node.get('k')).toBe('v');
    await Promise.all(nodes.map((node) => node.end()));
  });
});
