/**
 * The cluster id (docs/design/recovery.md, "Bootstrap and the cluster id"): 128 random bits, written
 * as 32 lower-case hex digits, that tell one cluster from another even when they share a CA and
 * node ids.
 *
 * - Minted: by the first leader of a new cluster, the one whose log is empty when it wins (only an
 *   all-empty bootstrap elects such a leader: the up-to-date check of §5.4.1 never lets a server
 *   with an empty log win against a majority that holds an entry). Its no-op entry (§8) at index 1
 *   carries the id as its 16 bytes of data. The randomness comes from the node (the machine's input
 *   `newClusterId`), never from inside the machine, so the machine stays pure and replayable.
 * - Learned: only from a committed source. When that entry is applied (committed, so no later
 *   leader can overwrite it: Leader Completeness, §5.4), or from a snapshot (the store's snapshot
 *   header carries the id, so compaction and InstallSnapshot keep it). Never from the log's entry
 *   at index 1 as such: a first leader that crashed before its no-op committed holds an id that a
 *   later leader, its log empty, replaced with its own (that entry 1 is overwritten when it catches
 *   up). Once learned, the id is recorded in the server's hard state (`HardState.clusterId`, in the
 *   WAL or the memory log; see `recordHardState`), so a restart knows it at once; a WAL written
 *   before the field existed starts with no id and learns it again on apply.
 * - Checked: by the transport (tls-transport.ts): the handshake carries each side's id, and a side
 *   that learns its id later announces it on its open connections; a side that knows its id refuses
 *   a peer whose known id differs. An unknown id (null) is accepted: that is how a new or amnesiac
 *   member learns it.
 *
 * Pure functions only; the node keeps the learned id (actors/node.ts, actors/store.ts) and its log
 * makes it durable (actors/log-actor.ts).
 */
import type { Entry } from './messages.js';
import type { HardState } from './raft.types.js';

export type ClusterId = string;

/** 128 bits. */
export const CLUSTER_ID_BYTES = 16;

const CLUSTER_ID_PATTERN = /^[0-9a-f]{32}$/;

/** Whether `value` is a well-formed cluster id (32 lower-case hex digits). */
export const isClusterId = (value: unknown): value is ClusterId =>
  typeof value === 'string' && CLUSTER_ID_PATTERN.test(value);

/** A cluster id from 16 random bytes the caller drew (crypto.randomBytes on a real node). */
export const clusterIdFromBytes = (bytes: Uint8Array): ClusterId => {
  if (bytes.byteLength !== CLUSTER_ID_BYTES) throw new Error(`a cluster id needs ${CLUSTER_ID_BYTES} bytes`);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
};

/**
 * A deterministic cluster id from integers (simulations and tests, which must replay): mixes them
 * into 128 bits with a 32-bit hash per word. Not for real nodes, which draw random bytes.
 */
export const clusterIdFromSeed = (...words: number[]): ClusterId => {
  const out = new Uint8Array(CLUSTER_ID_BYTES);
  const view = new DataView(out.buffer);
  let hash = 0x811c9dc5;
  for (let lane = 0; lane < 4; lane += 1) {
    hash = Math.imul(hash ^ (lane + 0x9e3779b9), 0x01000193);
    for (const word of words) hash = Math.imul(hash ^ (word | 0), 0x85ebca6b) ^ (hash >>> 13);
    view.setUint32(lane * 4, hash >>> 0);
  }
  return clusterIdFromBytes(out);
};

/**
 * The data of the no-op a new leader appends at `index` (§8): the cluster id when the entry is the
 * cluster's first (index 1, so the leader's log was empty) and the node gave one; otherwise null,
 * as every other no-op.
 */
export const noopData = (index: number, newClusterId: ClusterId | undefined): Uint8Array | null =>
  index === 1 && newClusterId !== undefined ? new Uint8Array(Buffer.from(newClusterId, 'hex')) : null;

/** The cluster id an entry at `index` carries: only the no-op at index 1 carries one. */
export const clusterIdOfEntry = (index: number, entry: Entry): ClusterId | null => {
  if (index !== 1 || entry.kind !== 'noop' || entry.data === null) return null;
  if (entry.data.byteLength !== CLUSTER_ID_BYTES) return null;
  return clusterIdFromBytes(entry.data);
};

/**
 * The hard state a log holds after it records `next` over `previous` (the memory log, the WAL's
 * replay): `next` without a cluster id (every hard state the machine persists) keeps the earlier
 * one; an id is set once and never changes, so a `next` with another id than the recorded one is
 * refused: the returned string says why (the WAL then refuses the file as WAL_CORRUPT).
 */
export const recordHardState = (previous: HardState, next: HardState): HardState | string => {
  if (next.clusterId === undefined)
    return previous.clusterId === undefined ? next : { ...next, clusterId: previous.clusterId };
  if (previous.clusterId !== undefined && previous.clusterId !== next.clusterId)
    return `the cluster id changes from ${previous.clusterId} to ${next.clusterId}`;
  return next;
};

/** What a receiver does with a peer's cluster id: accept it, or refuse a different one. */
export const clusterIdVerdict = (ours: ClusterId | null, theirs: ClusterId | null): 'accept' | 'mismatch' =>
  ours !== null && theirs !== null && ours !== theirs ? 'mismatch' : 'accept';
