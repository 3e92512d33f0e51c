/**
 * The events between the actors of one node (ARCHITECTURE.md), their system ids, and the one way
 * they are sent. Actor files import only these types and constructors from each other: an actor
 * never calls another's functions, it sends it an event, and every event carries a batch (a
 * proposal burst is one event per hop, never one per entry).
 *
 * Sending goes through the actor system (`relay`), naming the sender, so the XState inspector shows
 * every hop as `sender → receiver: event` (an event an actor sends to another while that one is
 * busy waits in its mailbox and runs right after, in the same tick).
 */
import type { ActorSystem, AnyActorRef, AnyEventObject } from 'xstate';
import type { TransportMessage } from '../io/transport.js';
import type { ClusterId } from '../machines/cluster-id.js';
import { type Configuration, type MemberAddress, membersOf } from '../machines/configuration.js';
import type { Entry, InstallSnapshot, NodeId, RaftMessage, SnapshotChunkAck } from '../machines/messages.js';
import type { RaftEmitted, Role } from '../machines/raft.types.js';
import type { ClientMessage, MembershipMessage } from './client-messages.js';
import type { InstallOutput, PersistOutput } from './memory-log.js';
import type { StoreSnapshot } from './store.js';

/** The system ids of a node's actors: the node id, then the actor (`node-1/raft`, `node-1/peer:node-2`). */
export const systemIdsOf = (nodeId: NodeId) => ({
  root: nodeId,
  raft: `${nodeId}/raft`,
  log: `${nodeId}/log`,
  store: `${nodeId}/store`,
  requests: `${nodeId}/requests`,
  transport: `${nodeId}/transport`,
  membership: `${nodeId}/membership`,
  peer: (peerId: NodeId): string => `${nodeId}/peer:${peerId}`,
});

export type SystemIds = ReturnType<typeof systemIdsOf>;

// biome-ignore lint/suspicious/noExplicitAny: any system: the actors' events are typed per actor
export type AnyActorSystem = ActorSystem<any>;

type Relay = (source: AnyActorRef | undefined, target: AnyActorRef, event: AnyEventObject) => void;

/**
 * Sends `event` to the actor with system id `targetId`, from `source`. Contract: an event is not
 * changed once relayed, by its sender or anyone else: the receiver, the inspector (which may
 * serialize it later) and, with the in-process transport, another node see this very object. XState's own relay (what
 * `sendTo` uses) when the system has it, so the inspector records the sender; `send` otherwise.
 * An actor that is gone (stopped, or a peer no longer a member) gets nothing: returns false.
 */
export const relay = (
  system: AnyActorSystem,
  source: AnyActorRef | undefined,
  targetId: string,
  event: AnyEventObject,
): boolean => {
  const target = system.get(targetId) as AnyActorRef | undefined;
  if (target === undefined) return false;
  const internal = (system as unknown as { _relay?: Relay })._relay;
  if (internal) internal(source, target, event);
  else target.send(event);
  return true;
};

/**
 * Hides an actor's dependencies (state objects, callbacks, the endpoint) from its XState snapshot:
 * a callback actor's snapshot carries its input, and the inspector serializes snapshots. Only
 * `shown` (a few names and counts) appears there.
 */
export const hidden = <T extends object>(deps: T, shown: Record<string, unknown>): T =>
  Object.assign(Object.create({ toJSON: () => shown }) as object, deps) as T;

// ---- events each actor receives -----------------------------------------------------------------

/** The raft machine's outputs as the log actor takes them (the outbox: durable before acknowledged). */
export type LogEvent =
  | { type: 'persist'; output: PersistOutput }
  | { type: 'installSnapshot'; output: InstallOutput }
  /** An output that waits until every persist emitted before it is durable (durable logs). */
  | { type: 'afterPersist'; output: RaftEmitted }
  /** The store snapshotted the state up to `index`: forget the entries it covers. */
  | { type: 'compact'; index: number; take: () => StoreSnapshot }
  /**
   * The store learned the cluster id from a committed source (the applied entry 1, or a snapshot):
   * the log records it in the hard state, so a restart knows it (machines/cluster-id.ts).
   */
  | { type: 'clusterIdLearned'; clusterId: ClusterId };

export type StoreEvent =
  | { type: 'apply'; firstIndex: number; entries: Entry[] }
  | { type: 'restore'; index: number; data: Uint8Array }
  /** A peer needs the store's snapshot for these InstallSnapshot requests of the machine. */
  | { type: 'snapshotFor'; peerId: NodeId; requests: InstallSnapshot[] }
  /** A whole snapshot from the leader: installable (it parses, at the stated point)? */
  | { type: 'checkSnapshot'; message: InstallSnapshot };

export type PeerEvent =
  /** Messages of the raft machine for this peer, in order. */
  | { type: 'send'; messages: RaftMessage[] }
  | { type: 'snapshotData'; snapshot: StoreSnapshot; requests: InstallSnapshot[] }
  /** From this peer: a chunk of a snapshot it sends us (it leads). */
  | { type: 'snapshotChunk'; message: InstallSnapshot }
  | { type: 'chunkAck'; ack: SnapshotChunkAck }
  | { type: 'heartbeatAnswered' }
  | { type: 'snapshotAnswered'; matchIndex: number }
  | LeaderChanged;

/** The raft actor's news for the others: role, term and leader, sent when one of them changes. */
export type LeaderChanged = {
  type: 'leaderChanged';
  role: Role;
  term: number;
  leaderId: NodeId | null;
  self: boolean;
};

/** Calls made on the node's handle in one tick: one event, whatever their number. */
export type NewCall = {
  kind: 'write' | 'read';
  /** Writes: builds the command bytes from the request tag (session, seq, lowest pending). */
  encode: ((tag: { session: number; seq: number; lowestPending: number }) => Uint8Array) | undefined;
  forward: boolean;
  timeoutMs: number | undefined;
  signal: AbortSignal | undefined;
  resolve: () => void;
  reject: (error: Error) => void;
};

export type RequestsEvent =
  | { type: 'calls'; calls: NewCall[] }
  | Extract<RaftEmitted, { type: 'proposalsAccepted' | 'proposalsRejected' | 'readsReady' | 'readsRejected' }>
  /** The store applied up to `appliedIndex`; `seqs`: this session's requests applied in the pass. */
  | { type: 'applied'; appliedIndex: number; seqs: number[] }
  /** The store took a snapshot's state: this session's requests it covers. */
  | { type: 'restored'; appliedIndex: number; settledBelow: number; applied: number[] }
  | { type: 'client'; message: ClientMessage }
  | LeaderChanged
  | { type: 'stop' }
  /** The cluster removed this node: every pending call rejects with REMOVED. */
  | { type: 'removed' };

export type TransportEvent = {
  type: 'outgoing';
  messages: Array<TransportMessage | ClientMessage | MembershipMessage>;
};

/** A membership change asked of this node's handle (the `reconfigure` call). */
export type ReconfigureCall = {
  voters: NodeId[];
  addresses: Record<NodeId, MemberAddress>;
  timeoutMs: number;
  resolve: () => void;
  reject: (error: Error) => void;
};

export type MembershipEvent =
  | { type: 'reconfigureCall'; call: ReconfigureCall }
  | Extract<RaftEmitted, { type: 'reconfigureAccepted' | 'reconfigureRejected' | 'membership' | 'removed' }>
  /** The store applied a configuration (an entry, or a snapshot's) at `index`. */
  | { type: 'configApplied'; index: number; config: Configuration }
  | { type: 'client'; message: MembershipMessage }
  | LeaderChanged
  | { type: 'stop' };

/** The root's own event: the configuration in force changed, so peers are spawned and stopped. */
export type RootEvent = { type: 'membersChanged'; members: NodeId[] };

// ---- where the machine's outputs go -------------------------------------------------------------

/**
 * Messages for one server: through its peer actor, or, for a server outside the configuration in
 * force (no peer actor: a removed server told `Removed`, a leader that is leaving and still awaits
 * answers), straight to the transport.
 */
const sendToPeer = (
  system: AnyActorSystem,
  source: AnyActorRef | undefined,
  ids: SystemIds,
  to: NodeId,
  messages: RaftMessage[],
): void => {
  if (!relay(system, source, ids.peer(to), { type: 'send', messages }))
    relay(system, source, ids.transport, { type: 'outgoing', messages });
};

/**
 * Carries one output of the raft machine to the actor that owns that part of the world: messages
 * to the peer of their destination (one event per peer per output), commits and installed snapshots
 * to the store, answers to the requests actor. Persists are the log actor's and never come here.
 */
export const deliverOutput = (
  system: AnyActorSystem,
  source: AnyActorRef | undefined,
  ids: SystemIds,
  output: RaftEmitted,
): void => {
  switch (output.type) {
    case 'send': {
      const messages = output.messages;
      if (messages.length === 1) {
        sendToPeer(system, source, ids, messages[0]!.to, messages);
        return;
      }
      const byPeer = new Map<NodeId, RaftMessage[]>();
      for (const message of messages) {
        const list = byPeer.get(message.to);
        if (list) list.push(message);
        else byPeer.set(message.to, [message]);
      }
      for (const [to, list] of byPeer) sendToPeer(system, source, ids, to, list);
      return;
    }
    case 'committed':
      relay(system, source, ids.store, {
        type: 'apply',
        firstIndex: output.firstIndex,
        entries: output.entries,
      });
      return;
    case 'installSnapshot':
      relay(system, source, ids.store, { type: 'restore', index: output.index, data: output.data });
      return;
    case 'proposalsAccepted':
    case 'proposalsRejected':
    case 'readsReady':
    case 'readsRejected':
      relay(system, source, ids.requests, output);
      return;
    case 'reconfigureAccepted':
    case 'reconfigureRejected':
    case 'removed':
      relay(system, source, ids.membership, output);
      return;
    case 'membership':
      // Peers first (the root spawns and stops them), so the messages that follow find theirs.
      relay(system, source, ids.root, { type: 'membersChanged', members: membersOf(output.config) });
      relay(system, source, ids.membership, output);
      return;
    default:
      return;
  }
};
