/**
 * Snapshot transfer (§7, Figure 13), both ends, as plain data the peer actor owns (peer.ts): one
 * outgoing transfer (this node leads, the peer needs a snapshot) and one incoming assembly (the
 * peer leads and sends us its snapshot in chunks).
 *
 * Sending: chunks go out a window at a time: at most `windowBytes` sent beyond what the follower
 * acknowledged (SnapshotChunkAck), so a large store does not queue its whole snapshot at once ahead
 * of heartbeats and appends. A lost chunk or ack stalls the transfer: after `STALL_HEARTBEATS`
 * heartbeat answers without a new ack, it goes back to the last ack and sends from there (go-back-N).
 * A transfer ends once the follower acknowledged every byte, when the machine asks for another
 * snapshot for that follower (it resends after its own patience ran out, progress.ts), or when
 * this node stops leading.
 */
import { isCount } from '../machines/assert.js';
import type { InstallSnapshot, NodeId, SnapshotChunkAck } from '../machines/messages.js';
import type { StoreSnapshot } from './store.js';

/** Heartbeat answers without a new chunk ack before a snapshot transfer resends from its last ack. */
export const STALL_HEARTBEATS = 3;
/** The largest snapshot a node accepts from a peer (a Node Buffer's limit is near 4 GiB). */
const MAX_SNAPSHOT_BYTES = 2 ** 31 - 1;

export type Transfer = {
  request: InstallSnapshot;
  data: Uint8Array;
  nextOffset: number;
  /** The follower holds every byte before this (its chunk acks). */
  ackedBytes: number;
  /** Heartbeat answers from the follower since the last ack that moved `ackedBytes`. */
  heartbeatsSinceAck: number;
  /** A heartbeat went to the follower since the last answer counted (a burst counts once). */
  heartbeatSent: boolean;
};

export type TransferCounters = { snapshotsSent: number; snapshotChunksSent: number; snapshotResends: number };

/** Sends the transfer's next chunks while the window has room. Bounded by the window. */
export const pumpTransfer = (
  transfer: Transfer,
  sizes: { chunkBytes: number; windowBytes: number },
  counters: TransferCounters,
  send: (chunk: InstallSnapshot) => void,
): void => {
  const { request, data } = transfer;
  const totalBytes = data.byteLength;
  while (transfer.nextOffset < totalBytes && transfer.nextOffset - transfer.ackedBytes < sizes.windowBytes) {
    const chunkOffset = transfer.nextOffset;
    transfer.nextOffset += sizes.chunkBytes;
    counters.snapshotChunksSent += 1;
    send({
      ...request,
      data: data.subarray(chunkOffset, chunkOffset + sizes.chunkBytes),
      chunkOffset,
      totalBytes,
    });
  }
};

/**
 * A transfer for the machine's latest InstallSnapshot request, or null when the current one goes
 * on: it still covers what the follower needs and is moving (acks within the stall bound); starting
 * over would discard the follower's chunks, and a large store could then never get across. The
 * store's state at its applied index is at least as new as the log's snapshot point and covers
 * only committed entries, so it stands in for it.
 */
export const newTransfer = (
  current: Transfer | null,
  request: InstallSnapshot,
  snapshot: StoreSnapshot,
): Transfer | null => {
  if (
    current !== null &&
    current.request.term === request.term &&
    current.request.lastIncludedIndex >= request.lastIncludedIndex &&
    current.heartbeatsSinceAck < STALL_HEARTBEATS
  )
    return null;
  return {
    request: { ...request, lastIncludedIndex: snapshot.index, lastIncludedTerm: snapshot.term },
    data: snapshot.data,
    nextOffset: 0,
    ackedBytes: 0,
    heartbeatsSinceAck: 0,
    heartbeatSent: false,
  };
};

/** Applies a chunk ack; 'done' once the follower holds every byte, 'ignored' for another transfer's. */
export const applyChunkAck = (transfer: Transfer, ack: SnapshotChunkAck): 'done' | 'more' | 'ignored' => {
  const { request, data } = transfer;
  if (
    ack.term !== request.term ||
    ack.lastIncludedIndex !== request.lastIncludedIndex ||
    ack.totalBytes !== data.byteLength
  )
    return 'ignored';
  if (ack.receivedBytes > transfer.ackedBytes) {
    transfer.ackedBytes = Math.min(ack.receivedBytes, data.byteLength);
    transfer.heartbeatsSinceAck = 0;
  } else if (ack.receivedBytes < transfer.ackedBytes) {
    // The follower no longer holds what it acknowledged (it restarted, or it had finished this
    // snapshot and took a resent tail for a new one): send again from what it holds.
    transfer.ackedBytes = ack.receivedBytes;
    transfer.nextOffset = ack.receivedBytes;
  }
  return transfer.ackedBytes >= data.byteLength ? 'done' : 'more';
};

/** A heartbeat answer: true when the transfer stalled and goes back to its last ack. */
export const stalled = (transfer: Transfer): boolean => {
  if (!transfer.heartbeatSent) return false;
  transfer.heartbeatSent = false;
  transfer.heartbeatsSinceAck += 1;
  if (transfer.heartbeatsSinceAck < STALL_HEARTBEATS) return false;
  transfer.heartbeatsSinceAck = 0;
  transfer.nextOffset = transfer.ackedBytes;
  return true;
};

// ---- the receiving end ------------------------------------------------------------------------

/** Snapshot chunks received so far from one leader (Figure 13's offset and done). */
export type Assembly = {
  key: string;
  totalBytes: number;
  parts: Map<number, Uint8Array>;
  received: number;
  /** Every byte before it arrived (what the chunk acks report). */
  contiguous: number;
};

/** Whether a chunk's numbers and bytes are sound (anything else is dropped and counted). */
export const isSoundChunk = (message: InstallSnapshot): boolean => {
  const { data, chunkOffset, totalBytes } = message;
  const counts = [message.term, message.lastIncludedIndex, message.lastIncludedTerm, chunkOffset, totalBytes];
  return (
    counts.every(isCount) &&
    data instanceof Uint8Array &&
    totalBytes <= MAX_SNAPSHOT_BYTES &&
    chunkOffset + data.byteLength <= totalBytes &&
    !(data.byteLength === 0 && totalBytes > 0)
  );
};

/** The ack for `message` once `receivedBytes` of its snapshot arrived. */
export const chunkAck = (
  self: NodeId,
  message: InstallSnapshot,
  receivedBytes: number,
): SnapshotChunkAck => ({
  type: 'SnapshotChunkAck',
  from: self,
  to: message.from,
  term: message.term,
  lastIncludedIndex: message.lastIncludedIndex,
  totalBytes: message.totalBytes,
  receivedBytes,
});

/** Adds a chunk to the assembly (a new one when the snapshot differs); returns the assembly. */
export const addChunk = (assembly: Assembly | null, message: InstallSnapshot): Assembly => {
  const { data, chunkOffset, totalBytes } = message;
  const key = `${message.term}/${message.lastIncludedIndex}/${message.lastIncludedTerm}/${totalBytes}`;
  const current =
    assembly && assembly.key === key
      ? assembly
      : { key, totalBytes, parts: new Map(), received: 0, contiguous: 0 };
  // A duplicate is acknowledged again: the leader resends from the last ack after a stall.
  if (!current.parts.has(chunkOffset)) {
    current.parts.set(chunkOffset, data!);
    current.received += data!.byteLength;
    let part = current.parts.get(current.contiguous);
    while (part !== undefined && part.byteLength > 0) {
      current.contiguous += part.byteLength;
      part = current.parts.get(current.contiguous);
    }
  }
  return current;
};

/** The whole snapshot of a complete assembly, or null when the pieces overlap or leave a gap. */
export const wholeOf = (assembly: Assembly, message: InstallSnapshot): InstallSnapshot | null => {
  const offsets = [...assembly.parts.keys()].sort((a, b) => a - b);
  const whole = new Uint8Array(assembly.totalBytes);
  let next = 0;
  for (const at of offsets) {
    const part = assembly.parts.get(at)!;
    if (at !== next) return null;
    whole.set(part, at);
    next = at + part.byteLength;
  }
  return { ...message, data: whole, chunkOffset: 0 };
};
