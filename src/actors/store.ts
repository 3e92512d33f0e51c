/**
 * The store actor: owns the key/value map and applies committed entries to it, in log order, once
 * each (Figure 2: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied] to
 * state machine"). Each command names its request (session, seq); a request that was already
 * applied is skipped, so a retried call takes effect at most once (dissertation §6.3). Every
 * applied update is reported as a `change`, every settled request as `applied`.
 */
import { decodeCommand } from '../io/command.js';
import { assert } from '../machines/assert.js';
import type { Entry } from '../machines/messages.js';

export type Change = { key: string; value: unknown; deleted: boolean; index: number };

/** What the store remembers of one session: seqs applied at or above `settledBelow`. */
type Session = { settledBelow: number; applied: Set<number> };

export const createStore = (
  onChange: (change: Change) => void,
  onApplied: (session: number, seq: number, index: number) => void,
  /** False while nobody listens: then no change objects are made (less garbage per entry). */
  wantsChanges: () => boolean = () => true,
) => {
  const map = new Map<string, unknown>();
  const sessions = new Map<number, Session>();
  let appliedIndex = 0;
  let duplicates = 0;

  /** True the first time (session, seq) is seen; forgets what the proposer has settled. */
  const firstTime = (sessionId: number, seq: number, lowestPending: number): boolean => {
    let session = sessions.get(sessionId);
    if (!session) {
      session = { settledBelow: 0, applied: new Set() };
      sessions.set(sessionId, session);
    }
    if (lowestPending > session.settledBelow) {
      session.settledBelow = lowestPending;
      for (const old of session.applied) if (old < lowestPending) session.applied.delete(old);
    }
    if (seq < session.settledBelow || session.applied.has(seq)) return false;
    session.applied.add(seq);
    return true;
  };

  /** Applies entries[0] at `firstIndex`, and so on. Entries at or below appliedIndex are skipped. */
  const apply = (firstIndex: number, entries: readonly Entry[]): void => {
    assert(firstIndex <= appliedIndex + 1, `apply leaves a gap: ${firstIndex} after ${appliedIndex}`);
    for (let offset = appliedIndex + 1 - firstIndex; offset < entries.length; offset += 1) {
      const index = firstIndex + offset;
      const entry = entries[offset]!;
      appliedIndex = index;
      if (entry.kind !== 'command' || entry.data === null) continue;
      const command = decodeCommand(entry.data);
      if (firstTime(command.session, command.seq, command.lowestPending)) {
        const deleted = command.op === 'delete';
        if (deleted) map.delete(command.key);
        else map.set(command.key, command.value);
        if (wantsChanges()) onChange({ key: command.key, value: command.value, deleted, index });
      } else {
        duplicates += 1;
      }
      onApplied(command.session, command.seq, index);
    }
  };

  return {
    apply,
    get: (key: string): unknown => map.get(key),
    has: (key: string): boolean => map.has(key),
    size: (): number => map.size,
    appliedIndex: (): number => appliedIndex,
    duplicates: (): number => duplicates,
  };
};

export type Store = ReturnType<typeof createStore>;
