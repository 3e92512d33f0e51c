/**
 * The log actor: owns what the server has persisted (Figure 2 "Persistent state on all servers":
 * currentTerm, votedFor, log[]). This one keeps it in memory; the write-ahead log will implement the
 * same `persist` contract on disk. A server restarts from `persisted()`.
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
