/**
 * The durable log actor: the memory log's contract (`persist`, `persisted()`, ...) on a
 * write-ahead log file (io/wal.ts). `persist` updates an in-memory mirror at once, so `persisted()`
 * stays synchronous, and queues the output; `flush()` writes everything queued since the last
 * flush as one group, with one write and one fdatasync, and resolves once that group is durable.
 *
 * Until a flush resolves, what `persist` recorded is NOT durable: the raft node holds every output
 * the machine emitted after a persist until the flush that covers it resolves (raft-node.ts).
 *
 * Flushes never overlap: a flush asked for while one is in flight waits for it and then takes
 * everything queued by then (so callers that flush often still get groups). A failed write or
 * sync fails this flush and every later one (fail-stop: the file's state is unknown).
 */
import { openWal, type WalOpenInfo, type WalRecord, type WalStats, walError } from '../io/wal.js';
import { createMemoryLog, type InstallOutput, type PersistedState, type PersistOutput } from './log.js';
import type { StoreSnapshot } from './store.js';

export type WalLogStats = WalStats & {
  /** Persist outputs recorded but not yet handed to a flush. */
  pendingRecords: number;
};

/** Opens (creating when missing) the write-ahead log in `dir` and replays it into the mirror. */
export const createWalLog = async (dir: string) => {
  const wal = await openWal(dir);
  const mirror = createMemoryLog(wal.state);
  let pending: WalRecord[] = [];
  let inFlight: Promise<void> | null = null;
  let queued: Promise<void> | null = null;
  let failure: Error | null = null;
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
   * The server's own compaction: the mirror forgets the entries, the file keeps them (a restart
   * replays them and applies them again). Writing the snapshot and cutting the file is to come.
   */
  const compact = (index: number, take: () => StoreSnapshot): void => mirror.compact(index, take);

  /** Hands what is queued now to the WAL as one group. */
  const writeGroup = (): Promise<void> => {
    if (failure) return Promise.reject(failure);
    const group = pending;
    pending = [];
    const done = wal.append(group).catch((error: Error) => {
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
    if (pending.length === 0) return queued ?? inFlight ?? Promise.resolve();
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

  /** Flushes what is queued (best effort) and closes the file. */
  const close = async (): Promise<void> => {
    if (closed) return;
    await flush().catch(() => undefined);
    closed = true;
    await wal.close();
  };

  return {
    persist,
    installSnapshot,
    compact,
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
  };
};

export type WalLog = Awaited<ReturnType<typeof createWalLog>>;
