/**
 * A simulated durable disk for the simulator: the LogStorage contract of src/actors/memory-log.ts with
 * `durable: true`, on the simulated clock, so the raft node takes its real outbox path (persist,
 * hold, flush, release: actors/log-actor.ts, ARCHITECTURE.md) as it does on the WAL.
 *
 * Two states: the mirror (what `persisted()` returns, the machine's view, changed at once by
 * `persist`, `installSnapshot` and `compact`) and the synced state (what survives a crash). Every
 * change is also queued as an operation; `flush()` hands the queued operations to an fsync that
 * completes after a seeded random simulated delay, and applies them to the synced state, in order,
 * when it completes. So after the k-th operation is synced, the synced state is exactly the mirror
 * as it was after that operation (the same invariant as a write-ahead log replayed to its last
 * sync).
 *
 * A crash (`crash()`) keeps the synced state and loses every operation not covered by a completed
 * fsync; of the fsyncs in flight, a seeded prefix made it to the platter anyway (the process died
 * before it heard back). The handle the crashed node held goes dead: whatever it does later is
 * ignored, so an old incarnation cannot write into the next one's disk. `open()` gives the next
 * incarnation a handle whose mirror starts from the synced state.
 */
import type {
  InstallOutput,
  LogStorage,
  PersistedState,
  PersistOutput,
} from '../../src/actors/memory-log.js';
import { createMemoryLog, type MemoryLog } from '../../src/actors/memory-log.js';
import type { StoreSnapshot } from '../../src/actors/store.js';
import type { ClusterId } from '../../src/machines/cluster-id.js';
import type { HardState } from '../../src/machines/raft.types.js';
import type { Rng } from '../../src/machines/rng.js';

export type SimDiskEnvironment = {
  rng: Rng;
  nowMs: () => number;
  /** Runs `fn` at simulated time `atMs` (the simulator's agenda). */
  schedule: (atMs: number, fn: () => void) => void;
  /** A promise was settled: the simulator must let its callbacks run before the next step. */
  wake: () => void;
  /** Simulated fsync latency, drawn per flush in [minMs, maxMs]. */
  fsyncMs: { minMs: number; maxMs: number };
};

/** What a disk counted: the proof that the hard cases of durability happened in a run. */
export type SimDiskCounters = {
  flushes: number;
  /** Crashes that lost at least one persist (entries or hard state) that was not synced. */
  crashesLosingPersists: number;
  /** Persist operations lost to crashes. */
  persistsLost: number;
  /** Crashes that lost a vote (votedFor) that was recorded but not synced. */
  crashesLosingVotes: number;
  /** Fsyncs in flight at a crash that made it to disk anyway. */
  inFlightSurvived: number;
};

type Operation = { apply: (synced: MemoryLog) => void; hardState: HardState | null; isPersist: boolean };
type InFlight = { operations: Operation[]; resolve: () => void };

export const createSimDisk = (environment: SimDiskEnvironment) => {
  const synced = createMemoryLog(undefined, { keepSnapshots: true });
  let mirror = createMemoryLog(undefined, { keepSnapshots: true });
  let queued: Operation[] = [];
  let inFlight: InFlight[] = [];
  let lastCompletionMs = 0;
  let handle = 0;
  /** The last vote a persist recorded, as `term/candidate` (the wire check counts fresh grants). */
  let lastVote = '';
  const counters: SimDiskCounters = {
    flushes: 0,
    crashesLosingPersists: 0,
    persistsLost: 0,
    crashesLosingVotes: 0,
    inFlightSurvived: 0,
  };

  const completeOldest = (): void => {
    const done = inFlight.shift();
    if (!done) return;
    for (const operation of done.operations) operation.apply(synced);
    counters.flushes += 1;
    done.resolve();
    environment.wake();
  };

  /** A handle for one incarnation of the server; every call on a dead handle is ignored. */
  const open = (): LogStorage => {
    handle += 1;
    const mine = handle;
    const live = (): boolean => mine === handle;
    mirror = createMemoryLog(synced.persisted(), { keepSnapshots: true });
    const enqueue = (operation: Operation): void => {
      if (live()) queued.push(operation);
    };
    return {
      durable: true,
      persist(output: PersistOutput) {
        if (!live()) return;
        const before = mirror.view().hardState;
        const vote = output.hardState;
        if (vote?.votedFor && (vote.term !== before.term || vote.votedFor !== before.votedFor))
          lastVote = `${vote.term}/${vote.votedFor}`;
        mirror.persist(output);
        enqueue({ apply: (log) => log.persist(output), hardState: output.hardState, isPersist: true });
      },
      installSnapshot(output: InstallOutput) {
        if (!live()) return;
        mirror.installSnapshot(output);
        enqueue({ apply: (log) => log.installSnapshot(output), hardState: null, isPersist: true });
      },
      compact(index: number, take: () => StoreSnapshot) {
        if (!live()) return;
        let taken: StoreSnapshot | null = null;
        mirror.compact(index, () => {
          taken = take();
          return taken;
        });
        // The same snapshot, taken now, replaces the same entries on disk once synced.
        enqueue({
          apply: (log) => log.compact(index, () => taken ?? take()),
          hardState: null,
          isPersist: false,
        });
      },
      recordClusterId(clusterId: ClusterId) {
        if (!live() || !mirror.recordClusterId(clusterId)) return false;
        // Not a persist of the machine: losing it loses no promise (the id is learned again).
        enqueue({ apply: (log) => log.recordClusterId(clusterId), hardState: null, isPersist: false });
        return true;
      },
      persisted: (): PersistedState => mirror.persisted(),
      writes: () => mirror.writes(),
      lastIndex: () => mirror.lastIndex(),
      flush() {
        return new Promise<void>((resolve) => {
          if (!live()) return; // a dead process hears nothing back
          const operations = queued;
          queued = [];
          const { minMs, maxMs } = environment.fsyncMs;
          // Fsyncs complete in the order they were issued (one file, one queue).
          const atMs = Math.max(
            lastCompletionMs,
            environment.nowMs() + environment.rng.int(minMs, maxMs + 1),
          );
          lastCompletionMs = atMs;
          inFlight.push({ operations, resolve });
          environment.schedule(atMs, () => {
            if (live()) completeOldest();
          });
        });
      },
      close: async () => undefined,
    };
  };

  /**
   * The process dies: a seeded prefix of the fsyncs in flight reached the disk; every other
   * operation not synced is lost. The mirror falls back to the synced state.
   */
  const crash = (): void => {
    handle += 1;
    const survivors = environment.rng.int(0, inFlight.length + 1);
    for (const flight of inFlight.slice(0, survivors)) {
      for (const operation of flight.operations) operation.apply(synced);
      counters.inFlightSurvived += 1;
    }
    const lost = [...inFlight.slice(survivors).flatMap((flight) => flight.operations), ...queued];
    inFlight = [];
    queued = [];
    lastCompletionMs = 0;
    const lostPersists = lost.filter((operation) => operation.isPersist).length;
    if (lostPersists > 0) counters.crashesLosingPersists += 1;
    counters.persistsLost += lostPersists;
    const before = synced.persisted().hardState;
    if (lost.some((operation) => operation.hardState !== null && operation.hardState.votedFor !== null)) {
      const lostVote = lost.some(
        (operation) =>
          operation.hardState !== null &&
          (operation.hardState.term !== before.term || operation.hardState.votedFor !== before.votedFor),
      );
      if (lostVote) counters.crashesLosingVotes += 1;
    }
    mirror = createMemoryLog(synced.persisted(), { keepSnapshots: true });
  };

  return {
    open,
    crash,
    /** The server's log as the checker sees it: the mirror while it runs, the synced state once it crashed. */
    persisted: (): PersistedState => mirror.persisted(),
    /** What survives a crash now. */
    synced: (): PersistedState => synced.persisted(),
    /** Operations recorded and not yet synced (queued or in flight). */
    unsyncedCount: (): number =>
      queued.length + inFlight.reduce((sum, flight) => sum + flight.operations.length, 0),
    counters: (): SimDiskCounters => ({ ...counters }),
    lastVoteRecorded: (): string => lastVote,
  };
};

export type SimDisk = ReturnType<typeof createSimDisk>;
