/**
 * A peer actor: one per remote member. It owns the path to that member: messages for it go out
 * through the transport endpoint, and it keeps the per-peer counters that metrics report. The
 * replication pipeline's flow control (what to send next, how much may be in flight) is decided by
 * the raft machine (progress.ts); the peer actor carries it out.
 */

import type { TransportEndpoint } from '../io/transport.js';
import type { NodeId, RaftMessage } from '../machines/messages.js';

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
