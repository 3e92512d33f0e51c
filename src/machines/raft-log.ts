/**
 * The raft machine's in-memory view of the log (Raft paper §5.3) with a compacted prefix (§7); what
 * is on disk is the log actor's (src/actors). Indexes start at 1.
 * Entries at or below `offset` were compacted into a snapshot: only the term of the last of them
 * (`offsetTerm`) is kept, so the consistency check still works at the snapshot point. Index 0 is
 * the empty prefix with term 0 (offset 0, offsetTerm 0 for a log that never compacted).
 *
 * The log is owned by the raft machine and changed in place, once per batch, by the functions
 * here: a caller must never keep a reference to `entries` across events. `entries[i]` is the
 * entry at index `offset + 1 + i`.
 *
 * A snapshot of the machine (XState's inspector serializes it with JSON) shows the log as a
 * `LogSummary`, never its entries: the log's `toJSON` computes it from the live log when called,
 * so an in-place change can never leave it stale.
 */
import { assert } from './assert.js';
import type { Entry } from './messages.js';

export type RaftLog = { entries: Entry[]; offset: number; offsetTerm: number };

/** What JSON shows of a log: its bounds and the number of entries held, in O(1). */
export type LogSummary = {
  /** The snapshot point: entries up to it were compacted; its term is kept. */
  snapshotIndex: number;
  snapshotTerm: number;
  /** The first index still held (lastIndex + 1 when none is). */
  firstIndex: number;
  lastIndex: number;
  lastTerm: number;
  /** Entries held: lastIndex - snapshotIndex. */
  entryCount: number;
};

export const summarizeLog = (log: RaftLog): LogSummary => ({
  snapshotIndex: log.offset,
  snapshotTerm: log.offsetTerm,
  firstIndex: firstIndex(log),
  lastIndex: lastIndex(log),
  lastTerm: lastTerm(log),
  entryCount: log.entries.length,
});

/** Shared by every log (not enumerable, so structural comparisons ignore it). */
function logToJSON(this: RaftLog): LogSummary {
  return summarizeLog(this);
}

export const createLog = (entries: readonly Entry[] = [], offset = 0, offsetTerm = 0): RaftLog => {
  assert(offset >= 0 && (offset > 0 || offsetTerm === 0), `bad log offset ${offset}/${offsetTerm}`);
  return Object.defineProperty({ entries: [...entries], offset, offsetTerm }, 'toJSON', { value: logToJSON });
};

export const lastIndex = (log: RaftLog): number => log.offset + log.entries.length;

/** The first index whose entry is still held (lastIndex + 1 when none is). */
export const firstIndex = (log: RaftLog): number => log.offset + 1;

/** Whether the entry at `index` was compacted away (its term is no longer known). */
export const isCompacted = (log: RaftLog, index: number): boolean => index < log.offset;

/** Term of the entry at `index`; 0 for index 0; undefined past the end or below the snapshot point. */
export const termAt = (log: RaftLog, index: number): number | undefined => {
  if (index === log.offset) return log.offsetTerm;
  if (index < log.offset || index > lastIndex(log)) return undefined;
  return log.entries[index - log.offset - 1]!.term;
};

export const lastTerm = (log: RaftLog): number => termAt(log, lastIndex(log)) ?? 0;

/** The entry at `index` (which must be held). */
export const entryAt = (log: RaftLog, index: number): Entry => {
  assert(index > log.offset && index <= lastIndex(log), `no entry held at ${index}`);
  return log.entries[index - log.offset - 1]!;
};

/** Entries in [fromIndex, toIndex], inclusive, clamped to the end of the log. */
export const slice = (log: RaftLog, fromIndex: number, toIndex: number): Entry[] => {
  assert(fromIndex > log.offset, `slice from ${fromIndex}, compacted up to ${log.offset}`);
  return log.entries.slice(
    fromIndex - log.offset - 1,
    Math.max(0, Math.min(toIndex, lastIndex(log)) - log.offset),
  );
};

/**
 * Like `slice`, but stops before the entry that would take the data bytes past `maxBytes`; the
 * first entry is always taken (an AppendEntries carries at least one entry, however large).
 */
export const sliceBounded = (log: RaftLog, fromIndex: number, toIndex: number, maxBytes: number): Entry[] => {
  assert(fromIndex > log.offset, `slice from ${fromIndex}, compacted up to ${log.offset}`);
  const last = Math.min(toIndex, lastIndex(log));
  let bytes = 0;
  let end = fromIndex;
  for (; end <= last; end += 1) {
    bytes += log.entries[end - log.offset - 1]!.data?.byteLength ?? 0;
    if (bytes > maxBytes && end > fromIndex) break;
  }
  return log.entries.slice(fromIndex - log.offset - 1, end - log.offset - 1);
};

/** A leader appends new entries at the end (Leader Append-Only, Figure 3). */
export const append = (log: RaftLog, entries: readonly Entry[]): number => {
  for (const entry of entries) log.entries.push(entry);
  return lastIndex(log);
};

/** Cuts the log after `index` (index ≥ offset): the entries from index + 1 on are gone. */
const truncateAfter = (log: RaftLog, index: number): void => {
  assert(index >= log.offset, `truncate into the snapshot: ${index} < ${log.offset}`);
  log.entries.length = index - log.offset;
};

/**
 * §5.4.1 election restriction: a candidate's log is at least as up-to-date as ours when its last
 * term is higher, or the same with a last index at least as large.
 */
export const isUpToDate = (log: RaftLog, candidateLastIndex: number, candidateLastTerm: number): boolean => {
  const ourLastTerm = lastTerm(log);
  return (
    candidateLastTerm > ourLastTerm ||
    (candidateLastTerm === ourLastTerm && candidateLastIndex >= lastIndex(log))
  );
};

/** AppendEntries receiver rule 2: the log must contain an entry at prevLogIndex whose term matches. */
export const matchesAt = (log: RaftLog, index: number, term: number): boolean => termAt(log, index) === term;

/**
 * AppendEntries receiver rules 3 and 4: delete a conflicting entry and all that follow it, then
 * append any new entries not already in the log. Entries already present with the same term are
 * kept (a stale or duplicated AppendEntries must never truncate). Returns the index of the first
 * entry that was written or -1 when nothing changed, and the last index the request covers.
 * `prevLogIndex` must be at or above the snapshot point (the caller trims what lies below it).
 */
export const mergeEntries = (
  log: RaftLog,
  prevLogIndex: number,
  entries: readonly Entry[],
): { firstWrittenIndex: number; lastNewIndex: number } => {
  assert(prevLogIndex <= lastIndex(log), `merge after a gap: prev ${prevLogIndex} > last ${lastIndex(log)}`);
  assert(prevLogIndex >= log.offset, `merge below the snapshot point: ${prevLogIndex} < ${log.offset}`);
  let offset = 0;
  while (offset < entries.length) {
    const index = prevLogIndex + 1 + offset;
    const existing = termAt(log, index);
    if (existing === undefined) break;
    if (existing !== entries[offset]!.term) {
      truncateAfter(log, index - 1);
      break;
    }
    offset += 1;
  }
  const firstWrittenIndex = offset < entries.length ? prevLogIndex + 1 + offset : -1;
  for (let i = offset; i < entries.length; i += 1) log.entries.push(entries[i]!);
  return { firstWrittenIndex, lastNewIndex: prevLogIndex + entries.length };
};

/**
 * The conflict hint a follower returns when the consistency check fails at `prevLogIndex`: the
 * term of its entry there and the first index of that term (never below the snapshot point), or
 * (0, lastIndex + 1) when its log is too short. This is the "fast backup" optimisation of §5.3.
 */
export const conflictHint = (
  log: RaftLog,
  prevLogIndex: number,
): { conflictTerm: number; conflictIndex: number } => {
  const term = termAt(log, prevLogIndex);
  if (term === undefined) return { conflictTerm: 0, conflictIndex: lastIndex(log) + 1 };
  let index = prevLogIndex;
  while (index > log.offset + 1 && termAt(log, index - 1) === term) index -= 1;
  return { conflictTerm: term, conflictIndex: index };
};

/** The last index holding an entry of `term` (the snapshot point counts), or 0 when none is known. */
export const lastIndexOfTerm = (log: RaftLog, term: number): number => {
  for (let index = lastIndex(log); index >= log.offset; index -= 1) {
    const entryTerm = termAt(log, index)!;
    if (entryTerm === term) return index;
    if (entryTerm < term) return 0;
  }
  return 0;
};

/**
 * Log compaction (§7): forgets the entries up to `index` (which the state machine has applied and
 * a snapshot covers), keeping the term at `index` for the consistency check.
 */
export const compactTo = (log: RaftLog, index: number): void => {
  assert(index <= lastIndex(log), `compact past the end: ${index} > ${lastIndex(log)}`);
  if (index <= log.offset) return;
  log.offsetTerm = termAt(log, index)!;
  log.entries.splice(0, index - log.offset);
  log.offset = index;
};

/**
 * InstallSnapshot receiver rules 6 and 7 (Figure 13): if the log holds the snapshot's last entry
 * (same index and term), keep the entries that follow it; otherwise discard the whole log. Returns
 * whether the suffix was kept.
 */
export const restoreTo = (log: RaftLog, index: number, term: number): boolean => {
  if (index >= log.offset && termAt(log, index) === term) {
    compactTo(log, index);
    return true;
  }
  log.entries.length = 0;
  log.offset = index;
  log.offsetTerm = term;
  return false;
};
