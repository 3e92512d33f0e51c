/**
 * The transport contract between a node and the network.
 *
 * A node calls `transport.connect(nodeId, deliver)` once on start. From then on:
 * - `endpoint.send(message)` queues `message` for `message.to`; it never throws and never blocks.
 *   Delivery is best-effort (Raft tolerates loss, duplication and reordering); a transport may
 *   coalesce messages that are sent in the same tick into one write per peer.
 * - `deliver(message)` is called for every message addressed to this node, never re-entrantly
 *   from inside `send`.
 * - `endpoint.close()` stops delivery and releases sockets and timers.
 *
 * Messages are generic so that the client API can carry its own request kinds over the same
 * connections as the Raft RPCs. A message needs `from` and `to` and must survive msgpack.
 */
export type TransportMessage = { readonly from: string; readonly to: string; readonly type: string };

export type TransportEndpoint<M extends TransportMessage = TransportMessage> = {
  send(message: M): void;
  close(): Promise<void>;
};

export type RaftTransport<M extends TransportMessage = TransportMessage> = {
  connect(
    nodeId: string,
    deliver: (message: M) => void,
  ): TransportEndpoint<M> | Promise<TransportEndpoint<M>>;
};
