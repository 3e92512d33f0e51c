import type { DiskeyvalNode } from '../../src/index.js';
import { within } from './within.js';

/** Resolves with the first of `nodes` that leads, checked now and at every `leader` event, within `boundMs`. */
export const anyLeader = (nodes: readonly DiskeyvalNode[], boundMs: number): Promise<DiskeyvalNode> => {
  const listeners: Array<() => void> = [];
  const found = new Promise<DiskeyvalNode>((resolve) => {
    const check = (): void => {
      const leader = nodes.find((node) => node.isLeader());
      if (leader) resolve(leader);
    };
    for (const node of nodes) {
      listeners.push(check);
      node.on('leader', check);
    }
    check();
  });
  return within(found, 'a leader', boundMs).finally(() => {
    nodes.forEach((node, index) => {
      node.off('leader', listeners[index]!);
    });
  });
};
