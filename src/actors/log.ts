/**
 * The log actor: owns what the server has persisted (Figure 2 "Persistent state on all servers":
 * currentTerm, votedFor, log[]). This one keeps it in memory; the durable one (wal-log.ts) keeps
 * the same in-memory mirror and writes it to a write-ahead log on disk. A server restarts from
 * `persisted()`.
 *
 * Contract: `persist` outputs are applied in the order the machine emitted them; entries are stored
 * by reference (they are immutable once created).
 */
import { assert } from '../machines/assert.js';
import type { Entry } from '../machines/messages.js';
import type { HardState, RaftEmitted } from '../machines/raft.types.js';

export type PersistOutput = Extract<RaftEmitted, { type: 'persist' }>;

export type PersistedState = { hardState: HardState; entries: readonly Entry[] };

export const createMemoryLog = (initial?: PersistedState) => {
  let hardState: HardState = initial?.hardState ?? { term: 0, votedFor: null };
  const entries: Entry[] = [...(initial?.entries ?? [])];
  let writes = 0;

  const persist = (output: PersistOutput): void => {
    if (output.hardState) {
      assert(output.hardState.term >= hardState.term, 'persisted term went backwards');
      hardState = output.hardState;
    }
    if (output.fromIndex > 0) {
      assert(output.fromIndex <= entries.length + 1, `persist leaves a gap at ${output.fromIndex}`);
      entries.length = output.fromIndex - 1;
      for (const entry of output.entries) entries.push(entry);
    }
    writes += 1;
  };

  const persisted = (): PersistedState => ({ hardState, entries: [...entries] });

  return { persist, persisted, writes: () => writes, lastIndex: () => entries.length };
};

export type MemoryLog = ReturnType<typeof createMemoryLog>;

/**
 * What the raft node needs of a log actor. `persist` updates what `persisted()` returns at once. A
 * durable log (`durable: true`) also queues the output for disk; `flush()` writes and fsyncs
 * everything queued since the last flush as one group and resolves once it is durable, and the node
 * holds every output emitted after a persist until then (ARCHITECTURE.md rule 4).
 */
export type LogActor = {
  persist(output: PersistOutput): void;
  persisted(): PersistedState;
  writes(): number;
  lastIndex(): number;
  readonly durable?: true;
  flush?(): Promise<void>;
  close?(): Promise<void>;
};
