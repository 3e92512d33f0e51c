/**
 * The transport endpoint actor (`<node>/transport`): owns this node's endpoint of the transport
 * (mTLS, in-process or simulated). It sends what the peers and the requests actor hand it
 * (`outgoing`, a batch each) and sorts what arrives: Raft messages to the raft actor, snapshot
 * chunks and chunk acks to the peer of their sender (and heartbeat and snapshot answers too, for
 * that peer's transfer), client calls and answers to the requests actor. It counts messages per
 * sender, and drops a message of an unknown type (counted as malformed).
 */
import { type AnyActorRef, fromCallback } from 'xstate';
import type { TransportEndpoint, TransportMessage } from '../io/transport.js';
import {
  type InstallSnapshot,
  isChunkAck,
  type NodeId,
  RAFT_MESSAGE_TYPES,
  type RaftMessage,
} from '../machines/messages.js';
import {
  type ClientMessage,
  isWellFormedClientMessage,
  isWellFormedMembershipMessage,
  type MembershipMessage,
} from './client-messages.js';
import type { AnyActorSystem } from './events.js';
import { relay, type SystemIds, type TransportEvent } from './events.js';

const RAFT_TYPES = new Set<string>(RAFT_MESSAGE_TYPES);
const CLIENT_TYPES = new Set<string>([
  'ClientPropose',
  'ClientProposeResult',
  'ClientRead',
  'ClientReadResult',
]);

export type TransportCounters = { malformedMessages: number; receivedFrom: Map<NodeId, number> };

export type TransportInput = {
  ids: SystemIds;
  endpoint: TransportEndpoint;
  /** Sets where the endpoint's arriving messages go (the endpoint was connected before the system ran). */
  onReceive: (deliver: ((message: TransportMessage) => void) | null) => void;
  /** Where the node's handle reads the counters (metrics); never written there. */
  views: { transportCounters?: TransportCounters };
};

/** One arriving message, to the actor that handles its kind. */
const route = (
  system: AnyActorSystem,
  self: AnyActorRef,
  ids: SystemIds,
  counters: TransportCounters,
  message: TransportMessage,
): void => {
  const { from, type } = message;
  counters.receivedFrom.set(from, (counters.receivedFrom.get(from) ?? 0) + 1);
  if (type === 'InstallSnapshot') {
    relay(system, self, ids.peer(from), {
      type: 'snapshotChunk',
      message: message as unknown as InstallSnapshot,
    });
  } else if (type === 'SnapshotChunkAck') {
    if (isChunkAck(message)) relay(system, self, ids.peer(from), { type: 'chunkAck', ack: message });
    else counters.malformedMessages += 1;
  } else if (RAFT_TYPES.has(type)) {
    const raft = message as unknown as RaftMessage;
    if (raft.type === 'HeartbeatResponse') relay(system, self, ids.peer(from), { type: 'heartbeatAnswered' });
    else if (raft.type === 'InstallSnapshotResponse')
      relay(system, self, ids.peer(from), { type: 'snapshotAnswered', matchIndex: raft.matchIndex });
    relay(system, self, ids.raft, { type: 'message', message: raft });
  } else if (type === 'ClientReconfigure' || type === 'ClientReconfigureResult') {
    if (isWellFormedMembershipMessage(message as unknown as { type: string } & Record<string, unknown>))
      relay(system, self, ids.membership, {
        type: 'client',
        message: message as unknown as MembershipMessage,
      });
    else counters.malformedMessages += 1;
  } else if (
    CLIENT_TYPES.has(type) &&
    isWellFormedClientMessage(message as unknown as { type: string } & Record<string, unknown>)
  ) {
    relay(system, self, ids.requests, { type: 'client', message: message as unknown as ClientMessage });
  } else {
    counters.malformedMessages += 1;
  }
};

export const transportActor = fromCallback<TransportEvent, TransportInput>(
  ({ input, receive, system, self }) => {
    const counters: TransportCounters = { malformedMessages: 0, receivedFrom: new Map() };
    input.views.transportCounters = counters;
    const { endpoint, ids } = input;
    let open = true;
    input.onReceive((message) => {
      if (open) route(system, self, ids, counters, message);
    });
    receive((event) => {
      if (!open) return;
      for (const message of event.messages) endpoint.send(message as TransportMessage);
    });
    return () => {
      open = false;
      input.onReceive(null);
    };
  },
);
