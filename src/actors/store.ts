/**
 * The store actor: owns the key/value map and applies committed entries to it, in log order, once
 * each (Figure 2: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied] to
 * state machine"). It reports every applied update as a `change`.
 */
import { decodeCommand } from '../io/command.js';
import { assert } from '../machines/assert.js';
import type { Entry } from '../machines/messages.js';

export type Change = { key: string; value: unknown; deleted: boolean; index: number };

export const createStore = (onChange: (change: Change) => void) => {
  const map = new Map<string, unknown>();
  let appliedIndex = 0;

  /** Applies entries[0] at `firstIndex`, and so on. Entries at or below appliedIndex are skipped. */
  const apply = (firstIndex: number, entries: readonly Entry[]): void => {
    assert(firstIndex <= appliedIndex + 1, `apply leaves a gap: ${firstIndex} after ${appliedIndex}`);
    for (let offset = appliedIndex + 1 - firstIndex; offset < entries.length; offset += 1) {
      const index = firstIndex + offset;
      const entry = entries[offset]!;
      appliedIndex = index;
      if (entry.kind !== 'command' || entry.data === null) continue;
      const command = decodeCommand(entry.data);
      if (command.op === 'set') {
        map.set(command.key, command.value);
        onChange({ key: command.key, value: command.value, deleted: false, index });
      } else {
        map.delete(command.key);
        onChange({ key: command.key, value: undefined, deleted: true, index });
      }
    }
  };

  return {
    apply,
    get: (key: string): unknown => map.get(key),
    has: (key: string): boolean => map.has(key),
    size: (): number => map.size,
    appliedIndex: (): number => appliedIndex,
  };
};

export type Store = ReturnType<typeof createStore>;
