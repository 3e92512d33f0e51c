import { describe, expect, it } from 'vitest';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';

const waitFor = async (predicate: () => boolean, what: string, boundMs = 5000): Promise<void> => {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > boundMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

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
    await Promise.all(nodes.map((node) => node.start()));
    await waitFor(() => nodes.some((node) => node.isLeader()), 'a leader');
    const leader = nodes.find((node) => node.isLeader())!;
    await leader.set('k', 'v');
    expect(await leader.get('k')).toBe('v');
    await Promise.all(nodes.map((node) => node.end()));
  });
});
