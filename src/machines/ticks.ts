/**
 * The follower's election timer counts ticks (dissertation §3.4; etcd-io/raft's `tick`): the node
 * sends the machine one `tick` event every `tickMs` from one clock timer, and the machine itself
 * decides when a follower has waited long enough, so a reset (a message from the leader, a granted
 * vote) moves a counter instead of a timer or a state.
 *
 * The tick is a fixed fraction of the election timeout T: tickMs = max(1, floor(T / 10)), and T is
 * `electionTicksOf(T)` = max(1, round(T / tickMs)) ticks (10 for any T >= 10 ms). A follower times
 * out after a whole number of ticks drawn from [T, 2T) (rules/shared.ts, drawElectionTimeout), so
 * its actual wait is that many ticks minus the part of a tick that had passed at the reset.
 */
import { assert } from './assert.js';

/** Ticks in one base election timeout (etcd's default ElectionTick). */
export const TICKS_PER_ELECTION_TIMEOUT = 10;

/** How often the node sends `tick`, from the base election timeout: a tenth of it, at least 1 ms. */
export const tickMsOf = (electionTimeoutMs: number): number => {
  assert(electionTimeoutMs >= 1, `election timeout ${electionTimeoutMs} ms below 1 ms`);
  return Math.max(1, Math.floor(electionTimeoutMs / TICKS_PER_ELECTION_TIMEOUT));
};

/** The base election timeout in ticks of `tickMsOf(electionTimeoutMs)`. */
export const electionTicksOf = (electionTimeoutMs: number): number =>
  Math.max(1, Math.round(electionTimeoutMs / tickMsOf(electionTimeoutMs)));
