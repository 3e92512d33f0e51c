/**
 * The in-memory Raft log (Raft paper §5.3). Indexes start at 1; index 0 is the empty prefix with
 * term 0. The log is owned by the raft machine and changed in place, once per batch, by the
 * functions here: a caller must never keep a reference to `entries` across events.
 */
import { assert } from './assert.js';
import type { Entry } from './messages.js';

export type RaftLog = { entries: Entry[] };

export const createLog = (entries: readonly Entry[] = []): RaftLog => ({ entries: [...entries] });

export const lastIndex = (log: RaftLog): number => log.entries.length;

/** Term of the entry at `index`; 0 for index 0; undefined past the end. */
export const termAt = (log: RaftLog, index: number): number | undefined => {
  if (index === 0) return 0;
  if (index < 0 || index > log.entries.length) return undefined;
  return log.entries[index - 1]!.term;
};

export const lastTerm = (log: RaftLog): number => termAt(log, lastIndex(log)) ?? 0;

/** Entries in [fromIndex, toIndex], inclusive, clamped to the log. */
export const slice = (log: RaftLog, fromIndex: number, toIndex: number): Entry[] => {
  assert(fromIndex >= 1, `slice from ${fromIndex}`);
  return log.entries.slice(fromIndex - 1, Math.min(toIndex, log.entries.length));
};

/** A leader appends new entries at the end (Leader Append-Only, Figure 3). */
export const append = (log: RaftLog, entries: readonly Entry[]): number => {
  for (const entry of entries) log.entries.push(entry);
  return log.entries.length;
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
 */
export const mergeEntries = (
  log: RaftLog,
  prevLogIndex: number,
  entries: readonly Entry[],
): { firstWrittenIndex: number; lastNewIndex: number } => {
  assert(prevLogIndex <= lastIndex(log), `merge after a gap: prev ${prevLogIndex} > last ${lastIndex(log)}`);
  let offset = 0;
  while (offset < entries.length) {
    const index = prevLogIndex + 1 + offset;
    const existing = termAt(log, index);
    if (existing === undefined) break;
    if (existing !== entries[offset]!.term) {
      log.entries.length = index - 1;
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
 * term of its entry there and the first index of that term, or (0, lastIndex + 1) when its log
 * is too short. This is the "fast backup" optimisation of §5.3.
 */
export const conflictHint = (
  log: RaftLog,
  prevLogIndex: number,
): { conflictTerm: number; conflictIndex: number } => {
  const term = termAt(log, prevLogIndex);
  if (term === undefined) return { conflictTerm: 0, conflictIndex: lastIndex(log) + 1 };
  let index = prevLogIndex;
  while (index > 1 && log.entries[index - 2]!.term === term) index -= 1;
  return { conflictTerm: term, conflictIndex: index };
};

/** The last index holding an entry of `term`, or 0 when the log has none. */
export const lastIndexOfTerm = (log: RaftLog, term: number): number => {
  for (let index = lastIndex(log); index >= 1; index -= 1) {
    const entryTerm = log.entries[index - 1]!.term;
    if (entryTerm === term) return index;
    if (entryTerm < term) return 0;
  }
  return 0;
};
