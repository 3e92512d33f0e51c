/**
 * The peer actor (`<node>/peer:<peerId>`, below) and the transport's coalescing of one tick's
 * AppendEntries for one peer (`dropSupersededAppends`).
 */

import { type AnyActorRef, fromCallback } from 'xstate';
import type { TransportEndpoint, TransportMessage } from '../io/transport.js';
import { assert } from '../machines/assert.js';
import type { AppendEntries, InstallSnapshot, NodeId, RaftMessage } from '../machines/messages.js';
import type { AnyActorSystem } from './events.js';
import { type PeerEvent, relay, type SystemIds } from './events.js';
import {
  type Assembly,
  addChunk,
  applyChunkAck,
  chunkAck,
  isSoundChunk,
  newTransfer,
  pumpTransfer,
  stalled,
  type Transfer,
  type TransferCounters,
  wholeOf,
} from './snapshot-transfer.js';
import type { StoreSnapshot } from './store.js';

export type PeerMetrics = {
  nodeId: NodeId;
  messagesSent: number;
  messagesReceived: number;
  entriesSent: number;
};

export type PeerCounters = TransferCounters & { malformedMessages: number };

export type PeerInput = {
  ids: SystemIds;
  self: NodeId;
  peerId: NodeId;
  /**
   * The wire to the member: this peer writes its messages to the transport itself (as each peer of
   * etcd's rafthttp owns its stream), so a write costs one event on this hop (raft -> peer), not two.
   * The transport endpoint actor sorts what arrives and sends the client calls.
   */
  wire: Pick<TransportEndpoint, 'send'>;
  /** Largest piece of a snapshot in one message, and how many bytes may be unacknowledged. */
  chunkBytes: number;
  windowBytes: number;
  /** Where the node's handle reads this peer's counters (metrics); never written there. */
  views: { peers: Map<NodeId, { metrics: PeerMetrics; counters: PeerCounters }> };
};

type PeerState = {
  input: PeerInput;
  system: AnyActorSystem;
  self: AnyActorRef;
  metrics: PeerMetrics;
  counters: PeerCounters;
  /** What this node knows of its own role: a transfer does not outlive the leadership that began it. */
  leading: { self: boolean; term: number };
  transfer: Transfer | null;
  assembly: Assembly | null;
};

/** Messages to this peer go on its wire (the transport batches a tick's messages per member), counted here. */
const transmit = (state: PeerState, messages: RaftMessage[]): void => {
  const { wire } = state.input;
  for (const message of messages) {
    state.metrics.messagesSent += 1;
    if (message.type === 'AppendEntries') state.metrics.entriesSent += message.entries.length;
    wire.send(message as unknown as TransportMessage);
  }
};

/** The raft machine's messages for this peer; InstallSnapshot requests take the store's snapshot. */
const sendMessages = (state: PeerState, messages: RaftMessage[]): void => {
  let snapshots: InstallSnapshot[] | null = null;
  let out = messages;
  for (const message of messages) {
    if (message.type === 'InstallSnapshot') {
      snapshots ??= [];
      snapshots.push(message);
    } else if (message.type === 'Heartbeat' && state.transfer) state.transfer.heartbeatSent = true;
  }
  if (snapshots !== null) out = messages.filter((message) => message.type !== 'InstallSnapshot');
  transmit(state, out);
  if (snapshots !== null) {
    const { ids } = state.input;
    relay(state.system, state.self, ids.store, {
      type: 'snapshotFor',
      peerId: state.input.peerId,
      requests: snapshots,
    });
  }
};

const pump = (state: PeerState): void => {
  const chunks: InstallSnapshot[] = [];
  const sizes = { chunkBytes: state.input.chunkBytes, windowBytes: state.input.windowBytes };
  pumpTransfer(state.transfer!, sizes, state.counters, (chunk) => chunks.push(chunk));
  transmit(state, chunks);
};

/** The store's snapshot for the machine's InstallSnapshot requests: a transfer starts (or goes on). */
const startTransfer = (state: PeerState, snapshot: StoreSnapshot, requests: InstallSnapshot[]): void => {
  assert(snapshot.data.byteLength > 0, 'an empty store snapshot');
  for (const request of requests) {
    assert(snapshot.index >= request.lastIncludedIndex, 'the store is behind the log snapshot point');
    const transfer = newTransfer(state.transfer, request, snapshot);
    if (transfer === null) continue;
    state.counters.snapshotsSent += 1;
    state.transfer = transfer;
    pump(state);
  }
};

/** Whether this node still leads in the term its transfer began; the transfer ends otherwise. */
const stillLeading = (state: PeerState): boolean => {
  if (state.leading.self && state.leading.term === state.transfer?.request.term) return true;
  state.transfer = null;
  return false;
};

/** The commit index of this node's raft machine (read from its snapshot, read only). */
const commitIndexOf = (state: PeerState): number => {
  const raft = state.system.get(state.input.ids.raft) as AnyActorRef | undefined;
  return (raft?.getSnapshot().context.commitIndex as number | undefined) ?? 0;
};

/**
 * A chunk of the peer's snapshot (it leads). One chunk, or a snapshot this server already holds all
 * of (its commit index is at or past the snapshot's point, e.g. a resent tail after it installed
 * it): acknowledged whole, so the leader's transfer ends, and handed on (the machine answers the
 * latter without its data). Otherwise the chunk joins the assembly, and the whole snapshot goes on
 * once every byte arrived: to the store for a check, or straight to raft when no data is needed.
 */
const receiveChunk = (state: PeerState, message: InstallSnapshot): void => {
  if (!isSoundChunk(message)) {
    state.counters.malformedMessages += 1;
    return;
  }
  const { system, self, input } = state;
  const ack = (receivedBytes: number) => transmitAck(state, chunkAck(input.self, message, receivedBytes));
  const commitIndex = commitIndexOf(state);
  let whole: InstallSnapshot | null = message;
  const oneChunk = message.chunkOffset === 0 && message.data!.byteLength === message.totalBytes;
  if (oneChunk || message.lastIncludedIndex <= commitIndex) {
    ack(message.totalBytes);
    state.assembly = null;
  } else {
    const assembly = addChunk(state.assembly, message);
    state.assembly = assembly;
    ack(assembly.contiguous);
    if (assembly.received < assembly.totalBytes) return;
    state.assembly = null;
    whole = wholeOf(assembly, message);
    if (whole === null) {
      state.counters.malformedMessages += 1;
      return;
    }
  }
  if (whole.lastIncludedIndex <= commitIndex)
    relay(system, self, input.ids.raft, { type: 'message', message: whole });
  else relay(system, self, input.ids.store, { type: 'checkSnapshot', message: whole });
};

const transmitAck = (state: PeerState, ack: RaftMessage | ReturnType<typeof chunkAck>): void => {
  state.metrics.messagesSent += 1;
  state.input.wire.send(ack as unknown as TransportMessage);
};

/** The events of a transfer this node sends (it leads): acks, heartbeat answers, the machine's. */
const onTransferEvent = (state: PeerState, event: PeerEvent): void => {
  if (state.transfer === null) return;
  switch (event.type) {
    case 'chunkAck': {
      const outcome = applyChunkAck(state.transfer, event.ack);
      if (outcome === 'ignored' || !stillLeading(state)) return;
      if (outcome === 'done') state.transfer = null;
      else pump(state);
      return;
    }
    case 'heartbeatAnswered':
      if (stalled(state.transfer) && stillLeading(state)) {
        state.counters.snapshotResends += 1;
        pump(state);
      }
      return;
    case 'snapshotAnswered':
      // The follower answered an InstallSnapshot at or past the transfer's point: nothing more to send.
      if (event.matchIndex >= state.transfer.request.lastIncludedIndex) state.transfer = null;
      return;
  }
};

/**
 * A peer actor (`<node>/peer:<peerId>`): one per remote member, spawned when the node starts and
 * stopped when it ends. It owns the path to that member: the raft machine's messages for it (to the
 * transport, counted), the snapshot transfer to it when this node leads, and the assembly of the
 * snapshot it sends when it leads. The replication pipeline's flow control (what to send next, how
 * much may be in flight) is decided by the raft machine (progress.ts); the peer carries it out.
 */
export const peerActor = fromCallback<PeerEvent, PeerInput>(({ input, receive, system, self }) => {
  const state: PeerState = {
    input,
    system,
    self,
    metrics: { nodeId: input.peerId, messagesSent: 0, messagesReceived: 0, entriesSent: 0 },
    counters: { snapshotsSent: 0, snapshotChunksSent: 0, snapshotResends: 0, malformedMessages: 0 },
    leading: { self: false, term: 0 },
    transfer: null,
    assembly: null,
  };
  input.views.peers.set(input.peerId, { metrics: state.metrics, counters: state.counters });
  receive((event) => {
    switch (event.type) {
      case 'send':
        sendMessages(state, event.messages);
        return;
      case 'snapshotData':
        startTransfer(state, event.snapshot, event.requests);
        return;
      case 'snapshotChunk':
        receiveChunk(state, event.message);
        return;
      case 'leaderChanged':
        if (!event.self || event.term !== state.leading.term) state.transfer = null;
        state.leading = { self: event.self, term: event.term };
        return;
      default:
        onTransferEvent(state, event);
    }
  });
  return () => {
    state.transfer = null;
    state.assembly = null;
  };
});

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
