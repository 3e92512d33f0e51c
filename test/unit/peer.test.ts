/**
 * The peer actor's batch rule: a commit-only AppendEntries that a later AppendEntries of the same
 * batch supersedes is not sent (the follower learns the same from the later one).
 */
import { describe, expect, it } from 'vitest';
import { dropSupersededAppends, supersedes } from '../../src/actors/peer.js';
import type { AppendEntries, Entry, RaftMessage } from '../../src/machines/messages.js';

const entry: Entry = { term: 2, kind: 'command', data: Uint8Array.of(1) };

const append = (prevLogIndex: number, entries: Entry[], leaderCommit: number, term = 2): AppendEntries => ({
  type: 'AppendEntries',
  from: 'a',
  to: 'b',
  term,
  prevLogIndex,
  prevLogTerm: 2,
  entries,
  leaderCommit,
});

const heartbeat: RaftMessage = { type: 'Heartbeat', from: 'a', to: 'b', term: 2, commit: 4, seq: 1 };

describe('peer: superseded AppendEntries', () => {
  it('drops the commit broadcast that the next AppendEntries with entries follows', () => {
    const commit = append(5, [], 5);
    const next = append(5, [entry], 5);
    expect(dropSupersededAppends([commit, next])).toEqual([next]);
  });

  it('keeps every message of a batch with nothing superseded, as the same array', () => {
    const batch: RaftMessage[] = [append(5, [entry], 4), append(6, [entry], 5), heartbeat];
    expect(dropSupersededAppends(batch)).toBe(batch);
  });

  it('drops only an AppendEntries without entries', () => {
    const first = append(5, [entry], 4);
    expect(supersedes(append(5, [entry], 5), first)).toBe(false);
    expect(dropSupersededAppends([first, append(5, [entry], 5)])).toHaveLength(2);
  });

  it('keeps an empty AppendEntries that the later one does not cover', () => {
    const commit = append(5, [], 5);
    // Starts before it (nextIndex went back), carries less commit, or is of another term.
    for (const later of [append(4, [entry], 5), append(5, [entry], 4), append(5, [entry], 5, 3)]) {
      expect(supersedes(later, commit)).toBe(false);
      expect(dropSupersededAppends([commit, later])).toEqual([commit, later]);
    }
  });

  it('keeps other messages in their order and compares with the nearest later AppendEntries kept', () => {
    const first = append(5, [], 4);
    const second = append(5, [], 5);
    const next = append(5, [entry], 5);
    expect(dropSupersededAppends([first, heartbeat, second, next])).toEqual([heartbeat, next]);
    // A later AppendEntries that starts before an earlier empty one hides nothing behind it.
    const back = append(3, [entry], 5);
    expect(dropSupersededAppends([second, back, next])).toEqual([second, back, next]);
  });
});
