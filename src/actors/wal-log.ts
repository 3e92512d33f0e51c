/**
 * The durable log actor: the memory log's contract (`persist`, `persisted()`, ...) on a
 * write-ahead log file (io/wal.ts). `persist` updates an in-memory mirror at once, so `persisted()`
 * stays synchronous, and queues the output; `flush()` writes everything queued since the last
 * flush as one group, with one write and one fdatasync, and resolves once that group is durable.
 *
 * Until a flush resolves, what `persist` recorded is NOT durable: the raft node holds every output
 * the machine emitted after a persist until the flush that covers it resolves (log-actor.ts).
 *
 * Flushes never overlap: a flush asked for while one is in flight waits for it and then takes
 * everything queued by then (so callers that flush often still get groups). A failed write or
 * sync fails this flush and every later one (fail-stop: the file's state is unknown).
 *
 * Compaction (§7): the mirror forgets compacted entries at once; the file is cut now and then (see
 * `compact`): a flush then writes the whole state as a snapshot and the entries after it, instead
 * of appending the group it would have written.
 */
import { mkdir } from 'node:fs/promises';
import { acquireDirLock } from '../io/dir-lock.js';
import {
  type OpenWalOptions,
  openWal,
  type WalOpenInfo,
  type WalRecord,
  type WalStats,
  walError,
} from '../io/wal.js';
import { assert } from '../machines/assert.js';
import type { ClusterId } from '../machines/cluster-id.js';
import {
  createMemoryLog,
  type InstallOutput,
  type MemoryLog,
  type PersistedState,
  type PersistOutput,
  persistClusterId,
} from './memory-log.js';
import type { StoreSnapshot } from './store.js';

/** The file is cut once it is this many times its size after the last cut ... */
const REWRITE_GROWTH = 4;
/** ... and at least this large. */
const REWRITE_MIN_BYTES = 1024 * 1024;

export type WalLogStats = WalStats & {
  /** Persist outputs recorded but not yet handed to a flush. */
  pendingRecords: number;
};

/**
 * The whole log state as a short history: the hard state and a snapshot of the store (taken
 * now: it covers everything applied, which is durable, ARCHITECTURE.md rule 4), then the
 * entries after the snapshot. Entries still waiting for a flush are in the mirror, so they go
 * into the new file too.
 */
const compactedRecords = (mirror: MemoryLog, take: () => StoreSnapshot): WalRecord[] => {
  const snapshot = take();
  const { hardState, offset, entries } = mirror.view();
  assert(snapshot.index >= offset && snapshot.index <= offset + entries.length, 'snapshot outside the log');
  const after = entries.slice(snapshot.index - offset);
  const records: WalRecord[] = [
    {
      hardState,
      fromIndex: -1,
      entries: [],
      snapshot: { index: snapshot.index, term: snapshot.term, data: snapshot.data, keptSuffix: false },
    },
  ];
  if (after.length > 0) records.push({ hardState: null, fromIndex: snapshot.index + 1, entries: after });
  return records;
};

/**
 * Flushes never overlap: a flush asked for while one is in flight waits for it and then takes
 * everything queued by then. `write` hands what is queued to the WAL; `hasQueued` says whether
 * anything is. A failed write fails this flush and every later one (fail-stop).
 */
const createGroupWriter = (wal: { path: string }, write: () => Promise<void>, hasQueued: () => boolean) => {
  let inFlight: Promise<void> | null = null;
  let queued: Promise<void> | null = null;
  let failure: Error | null = null;
  const writeGroup = (): Promise<void> => {
    if (failure) return Promise.reject(failure);
    const done = write().catch((error: Error) => {
      failure = error;
      throw error;
    });
    inFlight = done;
    const settle = () => {
      if (inFlight === done) inFlight = null;
    };
    done.then(settle, settle);
    return done;
  };
  const flush = (): Promise<void> => {
    if (failure) return Promise.reject(failure);
    if (!hasQueued()) return queued ?? inFlight ?? Promise.resolve();
    if (inFlight === null) return writeGroup();
    if (queued === null) {
      const next = inFlight.then(() => {
        queued = null;
        return writeGroup();
      });
      queued = next;
      next.catch(() => {
        if (queued === next) queued = null;
      });
    }
    return queued;
  };
  return { flush, path: wal.path };
};

/**
 * Opens (creating when missing) the write-ahead log of node `nodeId` in `dir` and replays it into
 * the mirror. The dir's lock (io/dir-lock.ts) is taken before anything in it is read, and held
 * until `close()`: a second process gets DIR_LOCKED and touches nothing.
 */
export const createWalLog = async (dir: string, nodeId: string, options: OpenWalOptions = {}) => {
  await mkdir(dir, { recursive: true });
  const lock = await acquireDirLock(dir, nodeId);
  const wal = await openWal(dir, nodeId, options).catch(async (error: unknown) => {
    await lock.release();
    throw error;
  });
  const mirror = createMemoryLog(wal.state);
  let pending: WalRecord[] = [];
  /** A cut of the file is due at the next flush: how to snapshot the store for it. */
  let pendingRewrite: (() => StoreSnapshot) | null = null;
  /** Size of the file right after the last cut; 0 until this process cut it (the first cut comes early). */
  let bytesAfterRewrite = 0;
  let closed = false;

  const persist = (output: PersistOutput): void => {
    if (closed) throw walError('WAL_CLOSED', `persist after close of ${wal.path}`);
    mirror.persist(output);
    pending.push(output);
  };

  /** An installed snapshot is a record of its own: the log restarts after it. */
  const installSnapshot = (output: InstallOutput): void => {
    if (closed) throw walError('WAL_CLOSED', `installSnapshot after close of ${wal.path}`);
    mirror.installSnapshot(output);
    const { index, term, data, keptSuffix } = output;
    pending.push({
      hardState: null,
      fromIndex: -1,
      entries: [],
      snapshot: { index, term, data, keptSuffix },
    });
  };

  /**
   * The server's own compaction: the mirror forgets the entries at once. The file is cut only when
   * it has grown to 4 times its size after the last cut (and at least 1 MiB), so that writing the
   * whole state again costs at most a quarter of what was appended: the next flush then replaces
   * the file with the store's snapshot and the entries after it (see `compactedRecords`).
   */
  const compact = (index: number, take: () => StoreSnapshot): void => {
    mirror.compact(index, take);
    if (wal.stats().bytes >= Math.max(REWRITE_MIN_BYTES, REWRITE_GROWTH * bytesAfterRewrite)) {
      pendingRewrite = take;
    }
  };

  const { flush } = createGroupWriter(
    wal,
    () => {
      const group = pending;
      pending = [];
      const take = pendingRewrite;
      pendingRewrite = null;
      return take
        ? wal.rewrite(compactedRecords(mirror, take)).then(() => {
            bytesAfterRewrite = wal.stats().bytes;
          })
        : wal.append(group);
    },
    () => pending.length > 0 || pendingRewrite !== null,
  );

  /** Flushes what is queued (best effort), closes the file and releases the dir's lock. */
  const close = async (): Promise<void> => {
    if (closed) return;
    await flush().catch(() => undefined);
    closed = true;
    try {
      await wal.close();
    } finally {
      await lock.release();
    }
  };

  return {
    persist,
    installSnapshot,
    compact,
    /** A hard-state record with the committed cluster id, written with the next flush (io/wal.ts). */
    recordClusterId: (clusterId: ClusterId): boolean =>
      persistClusterId(mirror.view().hardState, persist, clusterId),
    persisted: (): PersistedState => mirror.persisted(),
    writes: mirror.writes,
    lastIndex: mirror.lastIndex,
    durable: true as const,
    flush,
    close,
    /** What opening found: records replayed, and what (if anything) was cut from a bad tail. */
    info: (): WalOpenInfo => wal.info,
    stats: (): WalLogStats => ({ ...wal.stats(), pendingRecords: pending.length }),
    path: wal.path,
    /**
     * This start's incarnation: above every earlier start's of this node (see io/wal.ts `openWal`);
     * every sync marker written from now on carries it.
     */
    incarnation: wal.info.incarnation,
    fresh: wal.info.created,
  };
};

export type WalLog = Awaited<ReturnType<typeof createWalLog>>;
