/**
 * The global safety properties of Raft (paper §5.4, Figure 3), checked on the reference spec's
 * cluster state after every step of a model run. A `History` keeps what a single state cannot
 * show: who led which term, what was committed, the vote of each server in each term.
 */
import type { Entry, NodeId, RaftMessage } from '../../src/machines/messages.js';
import type { RaftContext } from '../../src/machines/raft.types.js';
import { peers, type SpecServer, sameEntry, termAt } from './spec.js';
import { configOfEntry, sameConfig } from './spec-config.js';

export type History = {
  /** Election Safety: the one server that led each term. */
  leaderOfTerm: Map<number, NodeId>;
  /**
   * Every committed index, its entry and the lowest term of a server seen holding it committed
   * (the entry was committed in that term or earlier, so every leader of a later term has it).
   */
  committed: Map<number, { entry: Entry; term: number }>;
  /** The highest commitIndex any server ever had (read indexes must reach it). */
  maxCommitted: number;
  lastCommit: Record<NodeId, number>;
  lastTerm: Record<NodeId, number>;
  /** `${server}@${term}` → the vote it cast in that term (one vote per term, across restarts). */
  voteOf: Map<string, NodeId>;
  /** Leader Append-Only: the log a server had when it last was seen leading, and the term. */
  leaderLog: Record<NodeId, { term: number; log: readonly Entry[] } | null>;
  /**
   * `${leader}@${term}>${peer}` → the incarnation of the peer the leader last knew and its match
   * then: within one incarnation of the peer, a leader's match of it only moves forward.
   */
  matchOf: Map<string, { incarnation: number; match: number }>;
};

export const createHistory = (): History => ({
  leaderOfTerm: new Map(),
  committed: new Map(),
  maxCommitted: 0,
  lastCommit: {},
  lastTerm: {},
  voteOf: new Map(),
  leaderLog: {},
  matchOf: new Map(),
});

/** Forgets the volatile history of a server that restarted (its commitIndex starts again at 0). */
export const onRestart = (history: History, id: NodeId): void => {
  history.lastCommit[id] = 0;
  history.leaderLog[id] = null;
};

/**
 * An amnesiac restart (memory mode) also forgets the term: it starts again from 0 (and recovers
 * before it votes, docs/design/recovery.md). One vote per term stays checked across it (`voteOf`).
 */
export const onAmnesia = (history: History, id: NodeId): void => {
  onRestart(history, id);
  history.lastTerm[id] = 0;
};

const describeEntry = (e: Entry | undefined): string =>
  e === undefined ? 'none' : `${e.kind}@${e.term}${e.data ? `:${Buffer.from(e.data).toString('hex')}` : ''}`;

/** Log Matching: two logs with an entry of the same term at an index agree on the whole prefix. */
const logMatching = (a: SpecServer, b: SpecServer): string | null => {
  const shorter = Math.min(a.log.length, b.log.length);
  let highest = 0;
  for (let i = shorter; i >= 1; i -= 1) {
    if (termAt(a.log, i) === termAt(b.log, i)) {
      highest = i;
      break;
    }
  }
  for (let i = 1; i <= highest; i += 1) {
    if (!sameEntry(a.log[i - 1]!, b.log[i - 1]!))
      return `log matching: ${a.id} and ${b.id} share term ${termAt(a.log, highest)} at ${highest} but differ at ${i}: ${describeEntry(a.log[i - 1])} vs ${describeEntry(b.log[i - 1])}`;
  }
  return null;
};

/**
 * Match only moves forward within one incarnation of the follower (a reordered or duplicated
 * answer never moves it back), and a higher incarnation may restart it from 0; the incarnation a
 * leader knows of a follower never goes down.
 */
const matchWithinIncarnation = (s: SpecServer, history: History, problems: string[]): void => {
  // A peer that left the leader's configuration is forgotten: added again, it starts from 0.
  const prefix = `${s.id}@${s.currentTerm}>`;
  const members = peers(s);
  for (const key of history.matchOf.keys())
    if (key.startsWith(prefix) && !members.includes(key.slice(prefix.length))) history.matchOf.delete(key);
  for (const peer of members) {
    if (peer === s.id) continue;
    const key = `${s.id}@${s.currentTerm}>${peer}`;
    const now = { incarnation: s.incarnationOf[peer] ?? 0, match: s.matchIndex[peer] ?? 0 };
    const before = history.matchOf.get(key);
    if (before && now.incarnation < before.incarnation)
      problems.push(
        `${s.id}: incarnation of ${peer} went back from ${before.incarnation} to ${now.incarnation}`,
      );
    if (before && now.incarnation === before.incarnation && now.match < before.match)
      problems.push(
        `${s.id}: match of ${peer} went back from ${before.match} to ${now.match} in incarnation ${now.incarnation}`,
      );
    history.matchOf.set(key, now);
  }
};

/**
 * Checks every property on `servers` (the spec state after a step) and updates `history`.
 * Returns the violations found (empty when all hold).
 */
export const checkSafety = (servers: readonly SpecServer[], history: History): string[] => {
  const problems: string[] = [];
  for (const s of servers) {
    // Terms only grow, restarts included.
    const lastTerm = history.lastTerm[s.id] ?? 0;
    if (s.currentTerm < lastTerm)
      problems.push(`${s.id}: currentTerm went back from ${lastTerm} to ${s.currentTerm}`);
    history.lastTerm[s.id] = s.currentTerm;
    // One vote per term. A vote for itself outside a campaign of its own is no vote cast: it is how
    // a recovered server abstains in the term it adopted (docs/design/recovery.md); a candidate's
    // own vote is recorded while it campaigns.
    const ownCampaign = s.role === 'leader' || (s.role === 'candidate' && s.phase === 'campaign');
    // The recovering mark (RECOVERING_VOTE, '') is no vote either.
    if (s.votedFor !== null && s.votedFor !== '' && !(s.votedFor === s.id && !ownCampaign)) {
      const key = `${s.id}@${s.currentTerm}`;
      const earlier = history.voteOf.get(key);
      if (earlier !== undefined && earlier !== s.votedFor)
        problems.push(`${s.id} voted for ${earlier} and then ${s.votedFor} in term ${s.currentTerm}`);
      history.voteOf.set(key, s.votedFor);
    }
    // Entries carry terms that never decrease along the log and never exceed currentTerm.
    for (let i = 1; i < s.log.length; i += 1) {
      if (s.log[i]!.term < s.log[i - 1]!.term) problems.push(`${s.id}: log terms decrease at ${i + 1}`);
    }
    if (s.log.length > 0 && s.log[s.log.length - 1]!.term > s.currentTerm)
      problems.push(`${s.id}: log holds an entry of a term above currentTerm ${s.currentTerm}`);
    if (s.role === 'leader') matchWithinIncarnation(s, history, problems);
    // commitIndex stays within the log and never moves back (Restart resets it via onRestart).
    if (s.commitIndex > s.log.length)
      problems.push(`${s.id}: commitIndex ${s.commitIndex} > log length ${s.log.length}`);
    const lastCommit = history.lastCommit[s.id] ?? 0;
    if (s.commitIndex < lastCommit)
      problems.push(`${s.id}: commitIndex went back from ${lastCommit} to ${s.commitIndex}`);
    history.lastCommit[s.id] = s.commitIndex;
    history.maxCommitted = Math.max(history.maxCommitted, s.commitIndex);
    // Election Safety: at most one leader per term, over the whole run.
    if (s.role === 'leader') {
      const leader = history.leaderOfTerm.get(s.currentTerm);
      if (leader !== undefined && leader !== s.id)
        problems.push(`election safety: ${leader} and ${s.id} both led term ${s.currentTerm}`);
      history.leaderOfTerm.set(s.currentTerm, s.id);
      // Leader Append-Only: a leader never overwrites or deletes entries of its log.
      const before = history.leaderLog[s.id];
      if (before && before.term === s.currentTerm) {
        if (s.log.length < before.log.length) problems.push(`${s.id}: leader log shrank`);
        for (let i = 0; i < Math.min(before.log.length, s.log.length); i += 1) {
          if (before.log[i] !== s.log[i] && !sameEntry(before.log[i]!, s.log[i]!)) {
            problems.push(`${s.id}: leader changed its entry ${i + 1}`);
            break;
          }
        }
      }
      history.leaderLog[s.id] = { term: s.currentTerm, log: s.log };
    } else {
      history.leaderLog[s.id] = null;
    }
  }
  // State Machine Safety: every server's committed prefix agrees with every other's.
  for (const s of servers) {
    for (let i = 1; i <= Math.min(s.commitIndex, s.log.length); i += 1) {
      const entry = s.log[i - 1]!;
      const known = history.committed.get(i);
      if (known === undefined) history.committed.set(i, { entry, term: s.currentTerm });
      else if (known.entry !== entry && !sameEntry(known.entry, entry))
        problems.push(
          `state machine safety: ${s.id} committed ${describeEntry(entry)} at ${i}, ${describeEntry(known.entry)} was committed there before`,
        );
      else if (s.currentTerm < known.term)
        history.committed.set(i, { entry: known.entry, term: s.currentTerm });
    }
  }
  // Leader Completeness: a leader of a later term holds every committed entry.
  for (const s of servers) {
    if (s.role !== 'leader') continue;
    for (const [index, { entry, term }] of history.committed) {
      if (s.currentTerm <= term) continue;
      const own = s.log[index - 1];
      if (own === undefined || (own !== entry && !sameEntry(own, entry)))
        problems.push(
          `leader completeness: ${s.id} leads term ${s.currentTerm} without the entry committed at ${index} (${describeEntry(entry)}), has ${describeEntry(own)}`,
        );
    }
  }
  // Log Matching, pairwise.
  for (let x = 0; x < servers.length; x += 1) {
    for (let y = x + 1; y < servers.length; y += 1) {
      const problem = logMatching(servers[x]!, servers[y]!);
      if (problem) problems.push(problem);
    }
  }
  return problems;
};

/**
 * A configuration in force is the newest in the log (dissertation §4.1), read off the
 * implementation's own state: its configuration in force is the one of the newest config entry its
 * log holds (committed or not), at that entry's index; with none, the base it started from.
 */
export const implementationConfigProblems = (id: NodeId, context: RaftContext): string[] => {
  const { entries, offset } = context.log;
  const newest = context.configs[context.configs.length - 1];
  for (let i = entries.length - 1; i >= 0; i -= 1) {
    const entry = entries[i]!;
    if (entry.kind !== 'config') continue;
    const index = offset + i + 1;
    const problems: string[] = [];
    if (newest?.index !== index)
      problems.push(
        `${id}: the configuration in force is the one at ${newest?.index}, the newest in its log is at ${index}`,
      );
    if (!sameConfig(configOfEntry(entry), context.config))
      problems.push(`${id}: the configuration in force is not the newest in its log (at ${index})`);
    return problems;
  }
  return newest?.index === context.configs[0]?.index && context.configs.length === 1
    ? []
    : [`${id}: its log holds no config entry, yet ${context.configs.length} configurations are known`];
};

/**
 * A removed server disrupts no one: a server told it is removed (before or in the step) sends no
 * vote request of its own, pre-vote or not, so it bumps no term and changes no leader.
 */
export const removedServerCampaigns = (
  before: SpecServer,
  after: SpecServer,
  sent: readonly RaftMessage[],
): string | null => {
  if (!before.removed && !after.removed) return null;
  const request = sent.find((m) => m.type === 'RequestVote' && m.from === after.id);
  return request === undefined
    ? null
    : `a removed server campaigns: ${after.id} sent a ${request.type} for term ${request.term} after it was told it is removed`;
};
