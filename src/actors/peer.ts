/**
 * A peer actor: one per remote member. It owns the path to that member: messages for it go out
 * through the transport endpoint, and it keeps the per-peer counters that metrics report. The
 * replication pipeline's flow control (what to send next, how much may be in flight) is decided by
 * the raft machine (progress.ts); the peer actor carries it out.
 */

import type { TransportEndpoint, TransportMessage } from '../io/transport.js';
import type { AppendEntries, NodeId, RaftMessage } from '../machines/messages.js';

export type PeerMetrics = {
  nodeId: NodeId;
  messagesSent: number;
  messagesReceived: number;
  entriesSent: number;
};

export const createPeer = <M extends { from: string; to: string; type: string }>(
  nodeId: NodeId,
  endpoint: TransportEndpoint<M>,
) => {
  const metrics: PeerMetrics = { nodeId, messagesSent: 0, messagesReceived: 0, entriesSent: 0 };
  const send = (message: RaftMessage): void => {
    metrics.messagesSent += 1;
    if (message.type === 'AppendEntries') metrics.entriesSent += message.entries.length;
    endpoint.send(message as unknown as M);
  };
  const received = (): void => {
    metrics.messagesReceived += 1;
  };
  return { nodeId, send, received, metrics: (): PeerMetrics => ({ ...metrics }) };
};

export type Peer = ReturnType<typeof createPeer>;

const isAppend = (message: TransportMessage): message is TransportMessage & AppendEntries =>
  message.type === 'AppendEntries';

/**
 * A commit-only AppendEntries (no entries: the leader's commit broadcast, or a probe) is superseded
 * by a later AppendEntries of the same term that starts at or after it and carries at least its
 * commit: by log matching the later one tells the follower everything the first did, and the
 * leader's progress needs no answer to the first in particular (any later success frees its
 * inflight slot, any answer ends a probe).
 */
export const supersedes = (later: AppendEntries, earlier: AppendEntries): boolean =>
  earlier.entries.length === 0 &&
  later.term === earlier.term &&
  later.prevLogIndex >= earlier.prevLogIndex &&
  later.leaderCommit >= earlier.leaderCommit;

/**
 * The messages of one tick for one peer, in order, without those a later AppendEntries in the same
 * batch supersedes. At concurrency 1 the commit broadcast of one write and the AppendEntries of the
 * next usually leave in the same tick: the follower then gets, and answers, one message instead of
 * two. Compared with the nearest later AppendEntries kept, which supersedes whatever the ones it
 * superseded did (the rule is transitive): one pass, newest first.
 */
export const dropSupersededAppends = <M extends TransportMessage>(batch: M[]): M[] => {
  let later: AppendEntries | null = null;
  let dropped = 0;
  const kept: M[] = new Array(batch.length);
  for (let index = batch.length - 1; index >= 0; index -= 1) {
    const message = batch[index]!;
    if (isAppend(message)) {
      if (later !== null && supersedes(later, message)) {
        dropped += 1;
        continue;
      }
      later = message;
    }
    kept[index] = message;
  }
  return dropped === 0 ? batch : kept.filter((message) => message !== undefined);
};
