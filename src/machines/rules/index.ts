/**
 * The rules of Raft as pure functions of (context, message) → Outcome, grouped the way the paper's
 * Figure 2 is: all servers, followers, candidates, leaders (and what they send), plus read index,
 * snapshots and recovery. Each rule (or an extension etcd-io/raft has) is wired into the statechart
 * as one named action or guard in raft.machine.ts, which reaches them only through this module (so
 * a test can swap one for a broken variant with vi.mock). The log and progress objects are changed
 * in place (they are the machine's own, see raft-log.ts and progress.ts); everything else changes
 * through `patch`.
 */
export * from './all-servers.js';
export * from './candidate.js';
export * from './follower.js';
export * from './leader.js';
export * from './membership.js';
export * from './read-index.js';
export * from './recovery.js';
export * from './replication.js';
export {
  DEFAULT_MAX_APPEND_BYTES,
  DEFAULT_MAX_ENTRIES_PER_APPEND,
  DEFAULT_MAX_INFLIGHT,
  drawElectionTimeout,
  peersOf,
} from './shared.js';
export * from './snapshots.js';
