/**
 * The store actor: owns the key/value map and applies committed entries to it, in log order, once
 * each (Figure 2: "If commitIndex > lastApplied: increment lastApplied, apply log[lastApplied] to
 * state machine"). Values stay as the msgpack bytes the command carried, in a packed map off the
 * JS heap (packed-map.ts), and are decoded again when read (decoded once at apply too, so that an
 * entry that does not decode is a no-op everywhere): a million small values cost about their own
 * size. Each command names its request (session, seq); a request that was already applied is
 * skipped, so a retried call takes effect at most once (dissertation §6.3). Every applied update is
 * reported as a `change`, every settled request as `applied`; a snapshot that replaces the state
 * (§7) reports one `change` per key it changed.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { decodeRawCommand, decodeValue, type RawKvCommand } from '../io/command.js';
import { assert, isCount } from '../machines/assert.js';
import { clusterIdOfEntry, isClusterId } from '../machines/cluster-id.js';
import {
  type Configuration,
  configurationData,
  configurationFrom,
  decodeConfiguration,
} from '../machines/configuration.js';
import type { Entry } from '../machines/messages.js';
import { createPackedMap, type PackedMap, readSnapshot, writeSnapshot } from './packed-map.js';

export type Change = { key: string; value: unknown; deleted: boolean; index: number };

/** What the store remembers of one session: seqs applied at or above `settledBelow`. */
type Session = { settledBelow: number; applied: Set<number> };

/** The state machine's snapshot (§7): everything it applied up to `index`, whose entry had `term`. */
export type StoreSnapshot = { index: number; term: number; data: Uint8Array };

const SNAPSHOT_VERSION = 2;

type ParsedSnapshot = {
  index: number;
  term: number;
  map: PackedMap;
  sessions: Map<number, Session>;
  clusterId: string | null;
  config: Configuration | null;
};
const snapshotEncoder = new Encoder({ useBigInt64: true });
const snapshotDecoder = new Decoder({ useBigInt64: true });

const malformedSnapshot = (why: string): Error =>
  Object.assign(new Error(`malformed snapshot: ${why}`), { code: 'MALFORMED_SNAPSHOT' });

/**
 * What a listener must hear when a snapshot replaces the state: one change per key whose value
 * differs (set) or that is gone (deleted), all at the snapshot's index. The updates in between
 * were applied elsewhere; their net effect is what the listener learns.
 */
const textOf = (utf8: Uint8Array): string =>
  Buffer.from(utf8.buffer, utf8.byteOffset, utf8.byteLength).toString();

const differences = (before: PackedMap, after: PackedMap, index: number): Change[] => {
  const changes: Change[] = [];
  for (const [keyBytes, value] of after.entries()) {
    const key = textOf(keyBytes);
    const old = before.get(key);
    if (old !== undefined && Buffer.compare(old, value) === 0) continue;
    changes.push({ key, value: decodeValue(new Uint8Array(value)), deleted: false, index });
  }
  for (const [keyBytes] of before.entries()) {
    const key = textOf(keyBytes);
    if (!after.has(key)) changes.push({ key, value: undefined, deleted: true, index });
  }
  return changes;
};

/**
 * A store snapshot is `[u32 header length][msgpack [version, index, term, sessions]]` followed by
 * the packed map's own snapshot (packed-map.ts), written in one buffer.
 */
export const splitSnapshot = (data: Uint8Array): { header: Uint8Array; pairs: Uint8Array } => {
  if (data.byteLength < 4) throw malformedSnapshot(`${data.byteLength} bytes`);
  const headerBytes = new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(0);
  if (headerBytes > data.byteLength - 4) throw malformedSnapshot('header runs past the end');
  return { header: data.subarray(4, 4 + headerBytes), pairs: data.subarray(4 + headerBytes) };
};

/**
 * A command and its value decoded, or why they cannot be. Every node decodes the value of every
 * set it applies, listeners or not, so whether an entry is applied never depends on a node's
 * listeners: the outcome is a function of the bytes alone, the same on every node and on every
 * replay of the WAL.
 */
const decodeEntry = (data: Uint8Array): { command: RawKvCommand; value: unknown } | string => {
  try {
    const command = decodeRawCommand(data);
    return { command, value: command.valueBytes === null ? undefined : decodeValue(command.valueBytes) };
  } catch (error) {
    return (error as Error)?.message ?? String(error);
  }
};

type StoreCallbacks = {
  onChange: (change: Change) => void;
  onApplied: (session: number, seq: number, index: number) => void;
  wantsChanges: () => boolean;
  onUndecodable: (index: number, reason: string) => void;
};

type StoreState = StoreCallbacks & {
  map: PackedMap;
  sessions: Map<number, Session>;
  appliedIndex: number;
  appliedTerm: number;
  duplicates: number;
  undecodable: number;
  /** The cluster id of the applied log (its first entry's, or the snapshot's); null until known. */
  clusterId: string | null;
  /**
   * The configuration of the last config entry applied (or the snapshot's), and its index: a
   * snapshot carries it (machines/configuration.ts); null while the cluster was never reconfigured.
   */
  config: Configuration | null;
  configIndex: number;
  /** A snapshot parsed by `prepare`, kept for the `restore` of the same bytes that follows. */
  prepared: { data: Uint8Array; state: ParsedSnapshot } | null;
};

/** True the first time (session, seq) is seen; forgets what the proposer has settled. */
const firstTime = (s: StoreState, sessionId: number, seq: number, lowestPending: number): boolean => {
  let session = s.sessions.get(sessionId);
  if (!session) {
    session = { settledBelow: 0, applied: new Set() };
    s.sessions.set(sessionId, session);
  }
  if (lowestPending > session.settledBelow) {
    session.settledBelow = lowestPending;
    for (const old of session.applied) if (old < lowestPending) session.applied.delete(old);
  }
  if (seq < session.settledBelow || session.applied.has(seq)) return false;
  session.applied.add(seq);
  return true;
};

/** Applies one decoded command at `index` (once per request), reporting the change and the settle. */
const applyCommand = (s: StoreState, index: number, command: RawKvCommand, value: unknown): void => {
  if (firstTime(s, command.session, command.seq, command.lowestPending)) {
    const { valueBytes } = command;
    if (valueBytes === null) s.map.delete(command.key);
    else s.map.set(command.key, valueBytes);
    if (s.wantsChanges()) s.onChange({ key: command.key, value, deleted: valueBytes === null, index });
  } else {
    s.duplicates += 1;
  }
  s.onApplied(command.session, command.seq, index);
};

/** Applies entries[0] at `firstIndex`, and so on. Entries at or below appliedIndex are skipped. */
const apply = (s: StoreState, firstIndex: number, entries: readonly Entry[]): void => {
  assert(firstIndex <= s.appliedIndex + 1, `apply leaves a gap: ${firstIndex} after ${s.appliedIndex}`);
  for (let offset = s.appliedIndex + 1 - firstIndex; offset < entries.length; offset += 1) {
    const index = firstIndex + offset;
    const entry = entries[offset]!;
    s.appliedIndex = index;
    s.appliedTerm = entry.term;
    if (entry.kind !== 'command' || entry.data === null) {
      s.clusterId ??= clusterIdOfEntry(index, entry);
      if (entry.kind === 'config' && entry.data !== null) {
        s.config = decodeConfiguration(entry.data);
        s.configIndex = index;
      }
      continue;
    }
    const decoded = decodeEntry(entry.data);
    if (typeof decoded === 'string') {
      s.undecodable += 1;
      s.onUndecodable(index, decoded);
      continue;
    }
    applyCommand(s, index, decoded.command, decoded.value);
  }
};

/**
 * The whole state at the applied index: the map and the sessions' dedup tables (they are state
 * machine state too: a retry after a snapshot must still apply once, dissertation §6.3).
 */
const snapshotOf = (s: StoreState): StoreSnapshot => {
  const tables: unknown[] = [];
  for (const [id, session] of s.sessions) tables.push(id, session.settledBelow, [...session.applied]);
  const header = snapshotEncoder.encode([
    SNAPSHOT_VERSION,
    s.appliedIndex,
    s.appliedTerm,
    tables,
    s.clusterId,
    s.config === null ? null : configurationData(s.config),
  ]);
  const prefix = new Uint8Array(4 + header.byteLength);
  new DataView(prefix.buffer).setUint32(0, header.byteLength);
  prefix.set(header, 4);
  return { index: s.appliedIndex, term: s.appliedTerm, data: writeSnapshot(s.map, prefix) };
};

/** Replaces the whole state with a snapshot's (InstallSnapshot rule 8, or a restart). */
const restore = (s: StoreState, data: Uint8Array): { index: number; term: number } => {
  const parsed = s.prepared?.data === data ? s.prepared.state : parseSnapshot(data);
  s.prepared = null;
  const { index, term, map: nextMap, sessions: nextSessions } = parsed;
  const changes = s.wantsChanges() ? differences(s.map, nextMap, index) : [];
  s.map.clear();
  s.map = nextMap;
  s.sessions.clear();
  for (const [id, session] of nextSessions) s.sessions.set(id, session);
  s.appliedIndex = index;
  s.appliedTerm = term;
  s.clusterId = parsed.clusterId ?? s.clusterId;
  if (parsed.config !== null) {
    s.config = parsed.config;
    s.configIndex = index;
  }
  for (const change of changes) s.onChange(change);
  return { index, term };
};

/** Parses and checks a snapshot without touching any state: throws MALFORMED_SNAPSHOT on bad bytes. */
const parseSnapshot = (data: Uint8Array): ParsedSnapshot => {
  const { header, pairs } = splitSnapshot(data);
  let decoded: unknown;
  try {
    decoded = snapshotDecoder.decode(header);
  } catch (error) {
    throw malformedSnapshot((error as Error).message);
  }
  const { index, term, tables, clusterId, config } = headerFields(decoded);
  if (tables.length % 3 !== 0) throw malformedSnapshot('odd table length');
  const nextSessions = new Map<number, Session>();
  for (let i = 0; i < tables.length; i += 3) {
    const [id, settledBelow, applied] = [tables[i], tables[i + 1], tables[i + 2]];
    if (!isCount(id) || !isCount(settledBelow) || !Array.isArray(applied) || !applied.every(isCount))
      throw malformedSnapshot(`bad session ${i / 3}`);
    nextSessions.set(id, { settledBelow, applied: new Set(applied) });
  }
  let nextMap: PackedMap;
  try {
    nextMap = readSnapshot(pairs);
  } catch (error) {
    throw malformedSnapshot((error as Error).message);
  }
  return { index, term, map: nextMap, sessions: nextSessions, clusterId, config };
};

/**
 * The header's fields, checked. Snapshots written before the cluster id existed have 4 fields; the
 * fifth is the id (or null), the sixth the configuration (or null: never reconfigured).
 */
const headerFields = (decoded: unknown) => {
  if (!Array.isArray(decoded) || decoded.length < 4 || decoded.length > 6 || decoded[0] !== SNAPSHOT_VERSION)
    throw malformedSnapshot(`not a version ${SNAPSHOT_VERSION} snapshot`);
  const [, index, term, tables, clusterId = null, configData = null] = decoded as unknown[];
  if (!isCount(index) || !isCount(term) || !Array.isArray(tables)) throw malformedSnapshot('bad header');
  if (clusterId !== null && !isClusterId(clusterId)) throw malformedSnapshot('bad cluster id');
  const config = configData === null ? null : configurationFrom(configData);
  if (configData !== null && config === null) throw malformedSnapshot('bad configuration');
  return { index, term, tables, clusterId: clusterId as string | null, config };
};

/** The configuration a snapshot's header carries (null when none or unreadable): restarts read it. */
export const configOfSnapshot = (data: Uint8Array): Configuration | null => {
  try {
    return headerFields(snapshotDecoder.decode(splitSnapshot(data).header)).config;
  } catch {
    return null;
  }
};

/** Whether (session, seq) has been applied (or settled) in the current state. */
const wasApplied = (s: StoreState, sessionId: number, seq: number): boolean => {
  const session = s.sessions.get(sessionId);
  return session !== undefined && (seq < session.settledBelow || session.applied.has(seq));
};

/** What the current state settled of one session: every seq below `settledBelow`, and `applied`. */
const sessionOf = (s: StoreState, sessionId: number): { settledBelow: number; applied: number[] } => {
  const session = s.sessions.get(sessionId);
  return { settledBelow: session?.settledBelow ?? 0, applied: session ? [...session.applied] : [] };
};

export const createStore = (
  onChange: (change: Change) => void,
  onApplied: (session: number, seq: number, index: number) => void,
  /** False while nobody listens: then no change objects are made (less garbage per entry). */
  wantsChanges: () => boolean = () => true,
  /**
   * An entry whose command or value does not decode (written by a faulty or foreign proposer): it
   * is applied as a no-op (the applied index moves past it, nothing else changes) on every node,
   * so no entry can stop the cluster or stop it again on every replay; this reports it.
   */
  onUndecodable: (index: number, reason: string) => void = () => undefined,
) => {
  const s: StoreState = {
    onChange,
    onApplied,
    wantsChanges,
    onUndecodable,
    map: createPackedMap(),
    sessions: new Map(),
    appliedIndex: 0,
    appliedTerm: 0,
    duplicates: 0,
    undecodable: 0,
    clusterId: null,
    config: null,
    configIndex: 0,
    prepared: null,
  };
  return {
    apply: (firstIndex: number, entries: readonly Entry[]): void => apply(s, firstIndex, entries),
    snapshot: (): StoreSnapshot => snapshotOf(s),
    /** Parses a snapshot (throws MALFORMED_SNAPSHOT) and keeps the parse for the `restore` that follows. */
    prepare: (data: Uint8Array): { index: number; term: number; config: Configuration | null } => {
      const state = parseSnapshot(data);
      s.prepared = { data, state };
      return { index: state.index, term: state.term, config: state.config };
    },
    restore: (data: Uint8Array) => restore(s, data),
    wasApplied: (sessionId: number, seq: number): boolean => wasApplied(s, sessionId, seq),
    sessionOf: (sessionId: number) => sessionOf(s, sessionId),
    appliedTerm: (): number => s.appliedTerm,
    /** The value at `key`, decoded from its bytes (a fresh copy each time). */
    get: (key: string): unknown => {
      const bytes = s.map.get(key);
      // A copy first: binary parts of the value would otherwise be views into the arena.
      return bytes === undefined ? undefined : decodeValue(new Uint8Array(bytes));
    },
    /** The packed map's own figures (bytes live, dead, held). */
    mapStats: () => s.map.stats(),
    has: (key: string): boolean => s.map.has(key),
    size: (): number => s.map.size(),
    appliedIndex: (): number => s.appliedIndex,
    /** The cluster id of the applied state (cluster-id.ts), null until its first entry is applied. */
    clusterId: (): string | null => s.clusterId,
    /** The configuration of the applied state and its index (null: never reconfigured). */
    config: (): { config: Configuration; index: number } | null =>
      s.config === null ? null : { config: s.config, index: s.configIndex },
    duplicates: (): number => s.duplicates,
    /** Entries applied as no-ops because they did not decode. */
    undecodable: (): number => s.undecodable,
  };
};

export type Store = ReturnType<typeof createStore>;
