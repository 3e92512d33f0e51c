/**
 * The store actor: owns the key/value map and applies committed entries to it, in log order, once
 * each (Figure 2: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied] to
 * state machine"). Each command names its request (session, seq); a request that was already
 * applied is skipped, so a retried call takes effect at most once (dissertation §6.3). Every
 * applied update is reported as a `change`, every settled request as `applied`.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { decodeCommand } from '../io/command.js';
import { assert } from '../machines/assert.js';
import type { Entry } from '../machines/messages.js';

export type Change = { key: string; value: unknown; deleted: boolean; index: number };

/** What the store remembers of one session: seqs applied at or above `settledBelow`. */
type Session = { settledBelow: number; applied: Set<number> };

/** The state machine's snapshot (§7): everything it applied up to `index`, whose entry had `term`. */
export type StoreSnapshot = { index: number; term: number; data: Uint8Array };

const SNAPSHOT_VERSION = 1;
const snapshotEncoder = new Encoder({ useBigInt64: true });
const snapshotDecoder = new Decoder({ useBigInt64: true });

const malformedSnapshot = (why: string): Error =>
  Object.assign(new Error(`malformed snapshot: ${why}`), { code: 'MALFORMED_SNAPSHOT' });

const isCount = (value: unknown): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;

export const createStore = (
  onChange: (change: Change) => void,
  onApplied: (session: number, seq: number, index: number) => void,
  /** False while nobody listens: then no change objects are made (less garbage per entry). */
  wantsChanges: () => boolean = () => true,
) => {
  const map = new Map<string, unknown>();
  const sessions = new Map<number, Session>();
  let appliedIndex = 0;
  let appliedTerm = 0;
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
      appliedTerm = entry.term;
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

  /**
   * The whole state at the applied index: the map and the sessions' dedup tables (they are state
   * machine state too: a retry after a snapshot must still apply once, dissertation §6.3).
   */
  const snapshot = (): StoreSnapshot => {
    const pairs: unknown[] = [];
    for (const [key, value] of map) pairs.push(key, value);
    const tables: unknown[] = [];
    for (const [id, session] of sessions) tables.push(id, session.settledBelow, [...session.applied]);
    const data = snapshotEncoder.encode([SNAPSHOT_VERSION, appliedIndex, appliedTerm, tables, pairs]);
    return { index: appliedIndex, term: appliedTerm, data };
  };

  /** Replaces the whole state with a snapshot's (InstallSnapshot rule 8, or a restart). */
  const restore = (data: Uint8Array): { index: number; term: number } => {
    let decoded: unknown;
    try {
      decoded = snapshotDecoder.decode(data);
    } catch (error) {
      throw malformedSnapshot((error as Error).message);
    }
    if (!Array.isArray(decoded) || decoded.length !== 5 || decoded[0] !== SNAPSHOT_VERSION)
      throw malformedSnapshot('not a version 1 snapshot');
    const [, index, term, tables, pairs] = decoded as [number, unknown, unknown, unknown, unknown];
    if (!isCount(index) || !isCount(term) || !Array.isArray(tables) || !Array.isArray(pairs))
      throw malformedSnapshot('bad header');
    if (tables.length % 3 !== 0 || pairs.length % 2 !== 0) throw malformedSnapshot('odd table length');
    const nextSessions = new Map<number, Session>();
    for (let i = 0; i < tables.length; i += 3) {
      const [id, settledBelow, applied] = [tables[i], tables[i + 1], tables[i + 2]];
      if (!isCount(id) || !isCount(settledBelow) || !Array.isArray(applied) || !applied.every(isCount))
        throw malformedSnapshot(`bad session ${i / 3}`);
      nextSessions.set(id, { settledBelow, applied: new Set(applied) });
    }
    const nextMap = new Map<string, unknown>();
    for (let i = 0; i < pairs.length; i += 2) {
      const key = pairs[i];
      if (typeof key !== 'string') throw malformedSnapshot(`bad key ${i / 2}`);
      nextMap.set(key, pairs[i + 1]);
    }
    map.clear();
    for (const [key, value] of nextMap) map.set(key, value);
    sessions.clear();
    for (const [id, session] of nextSessions) sessions.set(id, session);
    appliedIndex = index;
    appliedTerm = term;
    return { index, term };
  };

  /** Whether (session, seq) has been applied (or settled) in the current state. */
  const wasApplied = (sessionId: number, seq: number): boolean => {
    const session = sessions.get(sessionId);
    return session !== undefined && (seq < session.settledBelow || session.applied.has(seq));
  };

  return {
    apply,
    snapshot,
    restore,
    wasApplied,
    appliedTerm: (): number => appliedTerm,
    get: (key: string): unknown => map.get(key),
    has: (key: string): boolean => map.has(key),
    size: (): number => map.size,
    appliedIndex: (): number => appliedIndex,
    duplicates: (): number => duplicates,
  };
};

export type Store = ReturnType<typeof createStore>;
