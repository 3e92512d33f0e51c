/**
 * An in-process transport: every node of a cluster in one process shares one of these. It is
 * what the unit tests use and what users can use for their own tests. Messages are delivered
 * asynchronously, a tick later, in one pass per tick (never re-entrantly from `send`). Links can
 * be cut to test partitions: `partition(['a'], ['b', 'c'])`, `isolate('a')`, `heal()`.
 */
import type { RaftTransport, TransportEndpoint, TransportMessage } from './transport.js';

export type MemoryTransport = RaftTransport & {
  /** Only nodes in the same group can talk; nodes in no group are cut off. */
  partition(...groups: string[][]): void;
  isolate(nodeId: string): void;
  heal(): void;
  /** Messages delivered so far, by type. */
  stats(): { delivered: number; dropped: number; byType: Record<string, number> };
};

export const createMemoryTransport = (
  schedule: (fn: () => void) => void = (fn) => setImmediate(fn),
): MemoryTransport => {
  const endpoints = new Map<string, (message: TransportMessage) => void>();
  let groupOf: Map<string, number> | null = null;
  let queue: TransportMessage[] = [];
  let scheduled = false;
  const stats = { delivered: 0, dropped: 0, byType: {} as Record<string, number> };

  const canTalk = (a: string, b: string): boolean => {
    if (groupOf === null) return true;
    const ga = groupOf.get(a);
    return ga !== undefined && ga === groupOf.get(b);
  };

  const flush = (): void => {
    scheduled = false;
    const batch = queue;
    queue = [];
    for (const message of batch) {
      const deliver = endpoints.get(message.to);
      if (!deliver || !canTalk(message.from, message.to)) {
        stats.dropped += 1;
        continue;
      }
      stats.delivered += 1;
      stats.byType[message.type] = (stats.byType[message.type] ?? 0) + 1;
      deliver(message);
    }
  };

  const connect = (nodeId: string, deliver: (message: TransportMessage) => void): TransportEndpoint => {
    if (endpoints.has(nodeId)) throw new Error(`node ${nodeId} is already connected to this transport`);
    endpoints.set(nodeId, deliver);
    let open = true;
    return {
      send(message) {
        if (!open) return;
        queue.push(message);
        if (!scheduled) {
          scheduled = true;
          schedule(flush);
        }
      },
      async close() {
        open = false;
        if (endpoints.get(nodeId) === deliver) endpoints.delete(nodeId);
      },
    };
  };

  const partition = (...groups: string[][]): void => {
    const next = new Map<string, number>();
    groups.forEach((group, index) => {
      for (const nodeId of group) next.set(nodeId, index);
    });
    groupOf = next;
  };

  return {
    connect,
    partition,
    isolate: (nodeId) =>
      partition(
        [nodeId],
        [...endpoints.keys()].filter((id) => id !== nodeId),
      ),
    heal: () => {
      groupOf = null;
    },
    stats: () => ({ ...stats, byType: { ...stats.byType } }),
  };
};
