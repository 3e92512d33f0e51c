/**
 * The safety properties of Raft (paper §5.4, Figure 3), checked by the simulator after every step:
 *
 * - Election Safety: at most one leader per term, over the whole run.
 * - Log Matching: if two logs hold an entry with the same index and term, the logs are identical
 *   up to that index.
 * - Leader Completeness: a leader of term T holds every entry committed in an earlier term.
 * - State Machine Safety / commits never roll back: every server's log holds the committed prefix
 *   up to its commitIndex, identical to what every other server committed there.
 * - A server applies only what it committed: appliedIndex ≤ commitIndex.
 *
 * Logs are compared through prefix hashes, updated incrementally from the first changed index,
 * so a check costs O(changed entries) rather than O(log) per step.
 *
 * Compacted logs (§7): a log that starts after a snapshot point holds only committed state below
 * it, so its prefix hash there is the committed prefix's, and a snapshot point beyond what any
 * server has committed is a violation. Whether the snapshot's *content* is that state is checked
 * by comparing the servers' stores (chaos.ts) and by the client histories' linearizability.
 */
import type { Entry } from '../../src/machines/messages.js';

export type ServerView = {
  id: string;
  alive: boolean;
  role: 'follower' | 'candidate' | 'leader';
  term: number;
  commitIndex: number;
  appliedIndex: number;
  /** The snapshot point: `entries[0]` is at index offset + 1. */
  offset: number;
  entries: readonly Entry[];
  /** The smallest index written since the last check (Infinity when the log did not change). */
  dirtyFrom: number;
  /**
   * Entries at or below `offset` that the running server's machine still holds in memory (its
   * storage may snapshot further than the machine compacted), by index; undefined when it holds none.
   */
  heldBelowOffset?: (index: number) => Entry | undefined;
};

const entryHashes = new WeakMap<Entry, number>();

const hashEntry = (entry: Entry): number => {
  let hash = entryHashes.get(entry);
  if (hash !== undefined) return hash;
  hash = Math.imul(entry.term + 0x9e3779b1, 0x85ebca6b) ^ (entry.kind === 'noop' ? 0x27d4eb2f : 0x165667b1);
  const data = entry.data ?? new Uint8Array(0);
  for (let i = 0; i < data.length; i += 1) hash = Math.imul(hash ^ data[i]!, 0x01000193);
  hash = Math.imul(hash ^ data.length, 0xc2b2ae35) >>> 0;
  entryHashes.set(entry, hash);
  return hash;
};

const mix = (prefix: number, entryHash: number): number =>
  (Math.imul(prefix ^ entryHash, 0x2545f491) + 0x6b43a9b5) >>> 0;

/** What the checker knows of a server's log: prefix hash and term at every index it has seen. */
type Track = { hashes: number[]; terms: number[] };

export type SafetyViolation = { property: string; detail: string };

export const createSafetyChecker = () => {
  const tracks = new Map<string, Track>();
  const leaderOfTerm = new Map<number, string>();
  /** The committed prefix: hash at each index, and the term of the first server that reported it committed. */
  const committedHashes: number[] = [0];
  const committedTerms: number[] = [0];
  const committedReportTerm: number[] = [0];
  let checks = 0;

  const trackOf = (id: string): Track => {
    let track = tracks.get(id);
    if (!track) {
      track = { hashes: [0], terms: [0] };
      tracks.set(id, track);
    }
    return track;
  };

  const lastOf = (server: ServerView): number => server.offset + server.entries.length;
  const entryOf = (server: ServerView, index: number): Entry => server.entries[index - server.offset - 1]!;

  /** Brings a server's prefix hashes up to date; a violation when its snapshot point is not committed. */
  const refresh = (server: ServerView): SafetyViolation | null => {
    const track = trackOf(server.id);
    const from = Math.min(server.dirtyFrom, track.hashes.length);
    track.hashes.length = Math.min(track.hashes.length, Math.max(1, from));
    track.terms.length = track.hashes.length;
    if (track.hashes.length <= server.offset) {
      for (let index = track.hashes.length; index <= server.offset; index += 1) {
        if (index < committedHashes.length) {
          track.hashes.push(committedHashes[index]!);
          track.terms.push(committedTerms[index]!);
          continue;
        }
        // Appended, committed, applied and snapshotted in this one step (a single voter can): only
        // the server's own commit covers it, and its machine must still hold the entry.
        const held = index <= server.commitIndex ? server.heldBelowOffset?.(index) : undefined;
        if (held === undefined) {
          return fail(
            'snapshot within commit',
            `${server.id} holds a snapshot up to ${server.offset}, beyond anything committed (${committedHashes.length - 1})`,
          );
        }
        track.hashes.push(mix(track.hashes[index - 1]!, hashEntry(held)));
        track.terms.push(held.term);
      }
    }
    for (let index = track.hashes.length; index <= lastOf(server); index += 1) {
      const entry = entryOf(server, index);
      track.hashes.push(mix(track.hashes[index - 1]!, hashEntry(entry)));
      track.terms.push(entry.term);
    }
    track.hashes.length = lastOf(server) + 1;
    track.terms.length = lastOf(server) + 1;
    return null;
  };

  const fail = (property: string, detail: string): SafetyViolation => ({ property, detail });

  /** Returns the first violated property, or null. `servers` is every server, dead or alive. */
  const check = (servers: readonly ServerView[]): SafetyViolation | null => {
    checks += 1;
    const changed = servers.filter((server) => server.dirtyFrom !== Number.POSITIVE_INFINITY);
    for (const server of servers) {
      const violation = refresh(server);
      if (violation) return violation;
    }

    // Election Safety.
    for (const server of servers) {
      if (!server.alive || server.role !== 'leader') continue;
      const known = leaderOfTerm.get(server.term);
      if (known !== undefined && known !== server.id) {
        return fail('election safety', `${known} and ${server.id} both lead term ${server.term}`);
      }
      leaderOfTerm.set(server.term, server.id);
    }

    // Log Matching, for every pair in which one log changed.
    for (const a of changed) {
      for (const b of servers) {
        if (a.id === b.id) continue;
        const violation = checkLogMatching(a, b);
        if (violation) return violation;
      }
    }

    // Commits: each server's committed prefix agrees with the global one, which only grows.
    for (const server of servers) {
      const track = trackOf(server.id);
      if (server.commitIndex > lastOf(server)) {
        return fail(
          'commit within log',
          `${server.id} commitIndex ${server.commitIndex} > last ${lastOf(server)}`,
        );
      }
      for (let index = committedHashes.length; index <= server.commitIndex; index += 1) {
        // Compacted entries the checker saw before it still knows; the rest must have been seen.
        committedHashes.push(track.hashes[index]!);
        committedTerms.push(track.terms[index]!);
        committedReportTerm.push(server.term);
      }
      const upTo = Math.min(server.commitIndex, committedHashes.length - 1);
      if (track.hashes[upTo] !== committedHashes[upTo]) {
        return fail(
          'state machine safety',
          `${server.id} committed a different entry at or below ${upTo} than another server (committed entries rolled back or diverged)`,
        );
      }
      if (server.appliedIndex > server.commitIndex) {
        return fail(
          'applied within commit',
          `${server.id} applied ${server.appliedIndex} > commit ${server.commitIndex}`,
        );
      }
    }

    // Leader Completeness: a leader of term T holds every entry first reported committed at a term below T.
    for (const server of servers) {
      if (!server.alive || server.role !== 'leader') continue;
      let mustHold = 0;
      for (let index = committedReportTerm.length - 1; index >= 1; index -= 1) {
        if (committedReportTerm[index]! < server.term) {
          mustHold = index;
          break;
        }
      }
      const track = trackOf(server.id);
      if (mustHold > 0 && track.hashes[mustHold] !== committedHashes[mustHold]) {
        return fail(
          'leader completeness',
          `leader ${server.id} of term ${server.term} lacks committed entries up to ${mustHold}`,
        );
      }
    }
    return null;
  };

  const checkLogMatching = (a: ServerView, b: ServerView): SafetyViolation | null => {
    const ta = trackOf(a.id);
    const tb = trackOf(b.id);
    const lowest = Math.max(a.offset, b.offset) + 1;
    for (let index = Math.min(lastOf(a), lastOf(b)); index >= lowest; index -= 1) {
      if (entryOf(a, index).term !== entryOf(b, index).term) continue;
      if (ta.hashes[index] !== tb.hashes[index]) {
        return fail('log matching', `${a.id} and ${b.id} agree on the term at ${index} but differ before it`);
      }
      return null;
    }
    return null;
  };

  return {
    check,
    checks: () => checks,
    committedLength: () => committedHashes.length - 1,
    committedTermAt: (index: number) => committedTerms[index],
    leaders: () => new Map(leaderOfTerm),
  };
};

export type SafetyChecker = ReturnType<typeof createSafetyChecker>;
