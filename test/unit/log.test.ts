/**
 * The machine's log with a compacted prefix (src/machines/raft-log.ts, Raft §7) against a reference: a
 * plain array holding every entry. After any sequence of appends, merges (AppendEntries rules 3
 * and 4), compactions and snapshot restores, every question the rules ask of the log (termAt,
 * slice, conflictHint, lastIndexOfTerm, isUpToDate) gets the reference's answer wherever the
 * compacted log still knows it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Entry } from '../../src/machines/messages.js';
import {
  append,
  compactTo,
  conflictHint,
  createLog,
  isUpToDate,
  lastIndex,
  lastIndexOfTerm,
  lastTerm,
  mergeEntries,
  type RaftLog,
  restoreTo,
  slice,
  termAt,
} from '../../src/machines/raft-log.js';

type Step =
  | { kind: 'append'; terms: number[] }
  | { kind: 'merge'; back: number; terms: number[] }
  | { kind: 'compact'; back: number }
  | { kind: 'restore'; ahead: number; sameTerm: boolean };

const entry = (term: number): Entry => ({ term, kind: 'command', data: new Uint8Array([term]) });

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('append' as const),
    terms: fc.array(fc.integer({ min: 0, max: 2 }), { maxLength: 4 }),
  }),
  fc.record({
    kind: fc.constant('merge' as const),
    back: fc.integer({ min: 0, max: 6 }),
    terms: fc.array(fc.integer({ min: -1, max: 2 }), { maxLength: 5 }),
  }),
  fc.record({ kind: fc.constant('compact' as const), back: fc.integer({ min: 0, max: 6 }) }),
  fc.record({
    kind: fc.constant('restore' as const),
    ahead: fc.integer({ min: -3, max: 4 }),
    sameTerm: fc.boolean(),
  }),
);

/** Terms only grow along a log: a step's terms are offsets from the current last term. */
const run = (steps: Step[]) => {
  const log: RaftLog = createLog();
  /** The reference: every entry ever in the log at each index (index i at reference[i - 1]). */
  let reference: Entry[] = [];
  let term = 1;
  for (const s of steps) {
    if (s.kind === 'append') {
      const entries: Entry[] = [];
      for (const bump of s.terms) {
        term += bump;
        entries.push(entry(term));
      }
      append(log, entries);
      reference.push(...entries);
    } else if (s.kind === 'merge') {
      // An AppendEntries from a leader whose log agrees with ours up to prevLogIndex.
      const prevLogIndex = Math.max(log.offset, lastIndex(log) - s.back);
      let t = termAt(log, prevLogIndex)!;
      const entries: Entry[] = [];
      for (const bump of s.terms) {
        t = Math.max(t, t + bump);
        entries.push(entry(t));
      }
      const before = reference.slice(0, prevLogIndex);
      const { lastNewIndex } = mergeEntries(log, prevLogIndex, entries);
      expect(lastNewIndex).toBe(prevLogIndex + entries.length);
      // Reference rules 3 and 4, entry by entry.
      const next = [...reference];
      for (let i = 0; i < entries.length; i += 1) {
        const index = prevLogIndex + 1 + i;
        if (next.length >= index && next[index - 1]!.term !== entries[i]!.term) next.length = index - 1;
        if (next.length < index) next.push(entries[i]!);
      }
      expect(next.slice(0, prevLogIndex)).toEqual(before);
      reference = next;
      term = Math.max(term, lastTerm(log));
    } else if (s.kind === 'compact') {
      const index = Math.max(log.offset, lastIndex(log) - s.back);
      compactTo(log, index);
    } else {
      const index = Math.max(log.offset + 1, lastIndex(log) + s.ahead);
      const held = index <= lastIndex(log);
      if (!(held && s.sameTerm)) term += 1;
      const snapshotTerm = held && s.sameTerm ? termAt(log, index)! : term;
      const kept = restoreTo(log, index, snapshotTerm);
      expect(kept).toBe(held && s.sameTerm);
      if (!kept) {
        // Below the snapshot point nothing is asked any more: pad, then the snapshot's last entry.
        const below = reference.slice(0, index - 1);
        while (below.length < index - 1) below.push(entry(snapshotTerm));
        reference = [...below, entry(snapshotTerm)];
      }
    }
    check(log, reference);
  }
};

const refTerm = (reference: Entry[], index: number): number | undefined =>
  index === 0 ? 0 : reference[index - 1]?.term;

const check = (log: RaftLog, reference: Entry[]): void => {
  expect(lastIndex(log)).toBe(reference.length);
  expect(lastTerm(log)).toBe(refTerm(reference, reference.length));
  for (let index = 0; index <= reference.length + 1; index += 1) {
    const known = index >= log.offset;
    expect(termAt(log, index)).toBe(known ? refTerm(reference, index) : undefined);
    if (index > log.offset && index <= reference.length) {
      expect(slice(log, index, index + 2)).toEqual(reference.slice(index - 1, index + 2));
    }
    if (known && index <= reference.length) {
      // The hint never points into the compacted prefix, and names the term held at index.
      const hint = conflictHint(log, index);
      expect(hint.conflictTerm).toBe(refTerm(reference, index));
      expect(hint.conflictIndex).toBeGreaterThanOrEqual(Math.min(index, log.offset + 1));
      let first = index;
      while (first > log.offset + 1 && refTerm(reference, first - 1) === hint.conflictTerm) first -= 1;
      if (index > 0) expect(hint.conflictIndex).toBe(first);
    }
  }
  for (let t = 0; t <= lastTerm(log) + 1; t += 1) {
    const found = lastIndexOfTerm(log, t);
    if (found > 0) expect(refTerm(reference, found)).toBe(t);
    let last = reference.length;
    while (last > 0 && reference[last - 1]!.term !== t) last -= 1;
    if (last >= log.offset && last > 0) expect(found).toBe(last);
  }
  expect(isUpToDate(log, reference.length, refTerm(reference, reference.length)!)).toBe(true);
};

describe('the compacted log', () => {
  it('answers like a log that kept every entry, above its snapshot point', () => {
    let compactions = 0;
    let restores = 0;
    fc.assert(
      fc.property(fc.array(step, { maxLength: 40 }), (steps) => {
        compactions += steps.filter((s) => s.kind === 'compact').length;
        restores += steps.filter((s) => s.kind === 'restore').length;
        run(steps);
      }),
      { numRuns: 600 },
    );
    expect(compactions).toBeGreaterThan(100);
    expect(restores).toBeGreaterThan(100);
  });

  it('refuses to slice or merge into the compacted prefix', () => {
    const log = createLog([entry(1), entry(1), entry(2)]);
    compactTo(log, 2);
    expect(log).toMatchObject({ offset: 2, offsetTerm: 1 });
    expect(() => slice(log, 2, 3)).toThrow(/compacted/);
    expect(() => mergeEntries(log, 1, [entry(1)])).toThrow(/snapshot point/);
    expect(mergeEntries(log, 2, [entry(2), entry(3)])).toEqual({ firstWrittenIndex: 4, lastNewIndex: 4 });
  });
});
