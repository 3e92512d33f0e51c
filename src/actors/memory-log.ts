/**
 * The log actor: owns what the server has persisted (Figure 2 "Persistent state on all servers":
 * currentTerm, votedFor, log[]; and the snapshot that replaced the log's prefix, §7). This one
 * keeps it in memory; the durable one (wal-log.ts) keeps the same in-memory mirror and writes it
 * to a write-ahead log on disk. A server restarts from `persisted()`.
 *
 * Contract: `persist` and `installSnapshot` outputs are applied in the order the machine emitted
 * them; entries are stored by reference (they are immutable once created). `entries[i]` of
 * `persisted()` is the entry at index `snapshot.index + 1 + i` (or `1 + i` without a snapshot).
 */
import { assert } from '../machines/assert.js';
import { type ClusterId, recordHardState } from '../machines/cluster-id.js';
import type { Entry } from '../machines/messages.js';
import type { HardState, RaftEmitted } from '../machines/raft.types.js';
import type { StoreSnapshot } from './store.js';

export type PersistOutput = Extract<RaftEmitted, { type: 'persist' }>;
export type InstallOutput = Extract<RaftEmitted, { type: 'installSnapshot' }>;

export type PersistedState = {
  hardState: HardState;
  /** The snapshot the entries follow, or null when the log starts at index 1. */
  snapshot: StoreSnapshot | null;
  entries: readonly Entry[];
};

export type MemoryLogOptions = {
  /**
   * Keep a snapshot of the state machine at every compaction, so `persisted()` can restart a
   * server (the simulator's crash and restart). Without it a compacted log cannot restart: a
   * memory node's log dies with its process anyway.
   */
  keepSnapshots?: boolean;
};

/** A hard state `recordHardState` accepted; a refused one (a second cluster id) is a bug here. */
const kept = (recorded: HardState | string): HardState => {
  assert(typeof recorded !== 'string', String(recorded));
  return recorded;
};

/**
 * The cluster id the server applied (committed: machines/cluster-id.ts) joins the hard state as a
 * hard-state-only persist of its own (`persist` of a memory log or a WAL log), and every later hard
 * state keeps it; false, and nothing persisted, when `hardState` holds it already.
 */
export const persistClusterId = (
  hardState: HardState,
  persist: (output: PersistOutput) => void,
  clusterId: ClusterId,
): boolean => {
  if (hardState.clusterId === clusterId) return false;
  persist({ type: 'persist', hardState: { ...hardState, clusterId }, fromIndex: -1, entries: [] });
  return true;
};

export const createMemoryLog = (initial?: PersistedState, memoryOptions: MemoryLogOptions = {}) => {
  let hardState: HardState = initial?.hardState ?? { term: 0, votedFor: null };
  let snapshot: StoreSnapshot | null = initial?.snapshot ?? null;
  /** Index of the last entry compacted away (entries[0] is at offset + 1). */
  let offset = snapshot?.index ?? 0;
  const entries: Entry[] = [...(initial?.entries ?? [])];
  let writes = 0;

  const lastIndex = (): number => offset + entries.length;

  /**
   * Without keepSnapshots, the snapshot a server restarted from is needed only until the store
   * has taken it: dropped at the first change, so the log does not hold a copy of the state.
   */
  const changed = (): void => {
    if (!memoryOptions.keepSnapshots) snapshot = null;
  };

  const persist = (output: PersistOutput): void => {
    changed();
    if (output.hardState) {
      assert(output.hardState.term >= hardState.term, 'persisted term went backwards');
      hardState = kept(recordHardState(hardState, output.hardState));
    }
    if (output.fromIndex > 0) {
      assert(output.fromIndex <= lastIndex() + 1, `persist leaves a gap at ${output.fromIndex}`);
      assert(output.fromIndex > offset, `persist into the snapshot at ${output.fromIndex} <= ${offset}`);
      entries.length = output.fromIndex - 1 - offset;
      for (const entry of output.entries) entries.push(entry);
    }
    writes += 1;
  };

  const dropThrough = (index: number): void => {
    entries.splice(0, Math.min(entries.length, index - offset));
    offset = index;
  };

  /** InstallSnapshot: the log restarts after the snapshot (keeping its suffix if the machine did). */
  const installSnapshot = (output: InstallOutput): void => {
    changed();
    if (output.keptSuffix) {
      assert(output.index <= lastIndex(), `kept a suffix after ${output.index} beyond ${lastIndex()}`);
      dropThrough(output.index);
    } else {
      entries.length = 0;
      offset = output.index;
    }
    // Only a log that restarts servers keeps the data: elsewhere it would hold a whole copy of
    // the state machine (the WAL has its own on disk).
    if (memoryOptions.keepSnapshots) snapshot = { index: output.index, term: output.term, data: output.data };
    writes += 1;
  };

  /** The node compacted the log up to `index`; `take` snapshots the state machine (covering ≥ index). */
  const compact = (index: number, take: () => StoreSnapshot): void => {
    if (index <= offset) return;
    changed();
    assert(index <= lastIndex(), `compact past the end: ${index} > ${lastIndex()}`);
    if (memoryOptions.keepSnapshots) {
      const taken = take();
      assert(taken.index >= index, `a snapshot at ${taken.index} cannot replace entries up to ${index}`);
      snapshot = taken;
      // Keep the entries after the snapshot's index; those between index and it go too.
      dropThrough(Math.min(taken.index, lastIndex()));
      return;
    }
    dropThrough(index);
  };

  /** What a server restarts from. Without keepSnapshots, only until the first change after a snapshot. */
  const persisted = (): PersistedState => {
    assert(
      offset === (snapshot?.index ?? 0),
      'this memory log was compacted (or took a snapshot) without keeping snapshots: it cannot restart a server',
    );
    return { hardState, snapshot, entries: [...entries] };
  };

  /** The hard state and the entries held now, after index `offset` (no copy: read at once). */
  const view = (): { hardState: HardState; offset: number; entries: readonly Entry[] } => ({
    hardState,
    offset,
    entries,
  });

  return {
    persist,
    installSnapshot,
    compact,
    recordClusterId: (clusterId: ClusterId): boolean => persistClusterId(hardState, persist, clusterId),
    persisted,
    view,
    writes: () => writes,
    lastIndex,
    firstIndex: () => offset + 1,
  };
};

export type MemoryLog = ReturnType<typeof createMemoryLog>;

/**
 * What the raft node needs of a log actor. `persist` and `installSnapshot` update what
 * `persisted()` returns at once. A durable log (`durable: true`) also queues the output for disk;
 * `flush()` writes and fsyncs everything queued since the last flush as one group and resolves
 * once it is durable, and the node holds every output emitted after a persist until then
 * (ARCHITECTURE.md rule 4). `compact` forgets entries a snapshot of the state machine covers.
 */
export type LogStorage = {
  persist(output: PersistOutput): void;
  installSnapshot(output: InstallOutput): void;
  compact(index: number, take: () => StoreSnapshot): void;
  /**
   * The server applied its cluster id (committed): it joins the hard state, where every later hard
   * state keeps it, so a restart knows it (machines/cluster-id.ts). True when it was not recorded
   * yet: a durable log then writes it with its next flush. Another id than the recorded one throws.
   */
  recordClusterId(clusterId: ClusterId): boolean;
  persisted(): PersistedState;
  writes(): number;
  lastIndex(): number;
  readonly durable?: true;
  /** This start's incarnation, when the log records them (the WAL: above every earlier start's). */
  readonly incarnation?: number;
  /**
   * Durable logs: the storage was created by this start (a new or emptied dir). A durable log that
   * existed before and holds nothing never acknowledged anything (nothing is before its fsync), so
   * only a fresh one makes its node recover (docs/design/recovery.md).
   */
  readonly fresh?: boolean;
  flush?(): Promise<void>;
  close?(): Promise<void>;
};
