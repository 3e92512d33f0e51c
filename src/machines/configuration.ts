/**
 * Cluster membership (Raft paper §6; dissertation §4.3, joint consensus): which servers vote, and
 * where they listen.
 *
 * - A configuration is either simple (`outgoing` empty: the majorities of `voters`) or joint
 *   (C_old,new: `voters` is C_new, `outgoing` is C_old, and every majority the server relies on,
 *   for elections, commitment, read-index confirmation, CheckQuorum and recovery answers, needs a
 *   majority of both sets).
 * - Configurations travel in the log as entries of kind `config` whose data is
 *   `encodeConfiguration(config)`. Each server uses the newest configuration in its log, committed
 *   or not (dissertation §4.1), and falls back to the one before when a truncation removes it.
 * - A snapshot carries the configuration in force at its last index, so a log that was compacted
 *   (or restored from a snapshot) still knows its members.
 * - `removed` lists the servers taken out by earlier changes (cumulative, bounded): members answer
 *   their messages with a `Removed` message so they stop campaigning (as etcd answers a removed
 *   member). Adding a server again takes it off the list.
 * - `addresses` says where each member listens, so a server's transport can reach members it was
 *   never configured with; an entry may lack an address (custom transports route by id).
 * - **Learners** (dissertation §4.2.1, "catching up new servers"): a change that adds servers first
 *   goes through a catch-up configuration, `learners` the servers being added and `target` the
 *   voters the change goes to (`voters` still C_old). Learners get the log like any peer, but count
 *   toward no majority and never campaign; once they hold the log the leader appends C_old,new.
 *
 * Pure functions only; `quorum.ts` has the majority arithmetic of one set.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import { assert } from './assert.js';
import type { NodeId } from './messages.js';
import { isMajority, majorityOf, quorumMatchIndex } from './quorum.js';

export type MemberAddress = { readonly host: string; readonly port: number };

export type Configuration = {
  /** C_new: the voters (sorted). */
  readonly voters: readonly NodeId[];
  /** C_old while the configuration is joint (sorted), empty otherwise. */
  readonly outgoing: readonly NodeId[];
  /** Servers removed by earlier changes (sorted, at most MAX_REMOVED_IDS, newest kept). */
  readonly removed: readonly NodeId[];
  /** Where members listen, by id (absent for members reached by id alone). */
  readonly addresses: Readonly<Record<NodeId, MemberAddress>>;
  /** While a change catches up new servers: those servers (sorted), non-voting; empty otherwise. */
  readonly learners: readonly NodeId[];
  /** While a change catches up new servers: the voters it goes to (sorted, ⊇ learners); else empty. */
  readonly target: readonly NodeId[];
};

/** The `removed` list keeps at most this many ids (the oldest go first). */
export const MAX_REMOVED_IDS = 64;

/** Most voters in one configuration (a bound on every per-member loop). */
export const MAX_VOTERS = 64;

export const simpleConfiguration = (
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>> = {},
): Configuration => ({
  voters: [...voters].sort(),
  outgoing: [],
  removed: [],
  addresses: { ...addresses },
  learners: [],
  target: [],
});

export const isJoint = (config: Configuration): boolean => config.outgoing.length > 0;

/** A change catching up new servers (learners) before its C_old,new. */
export const isCatchingUp = (config: Configuration): boolean => config.learners.length > 0;

/**
 * Every server the configuration replicates to: C_new ∪ C_old ∪ learners (sorted, no duplicates).
 * Majorities count only voters (`hasQuorum`, `quorumIndex`); `isMember` leaves learners out.
 */
export const membersOf = (config: Configuration): NodeId[] => {
  if (config.outgoing.length === 0 && config.learners.length === 0) return config.voters as NodeId[];
  return [...new Set([...config.voters, ...config.outgoing, ...config.learners])].sort();
};

/** The configuration without its catch-up: the voters and their addresses (a simple one stays as is). */
export const withoutLearners = (config: Configuration): Configuration => {
  if (!isCatchingUp(config)) return config;
  const addresses: Record<NodeId, MemberAddress> = {};
  for (const id of config.voters)
    if (config.addresses[id] !== undefined) addresses[id] = config.addresses[id];
  return { ...config, addresses, learners: [], target: [] };
};

/**
 * C_learn for a change from the simple `current` to `voters`, which adds `learners` (§4.2.1): the
 * voters stay C_old; addresses merged as for C_old,new.
 */
export const catchUpConfiguration = (
  current: Configuration,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): Configuration => {
  assert(!isJoint(current) && !isCatchingUp(current), 'a catch-up starts from a simple configuration');
  const target = [...voters].sort();
  const learners = target.filter((id) => !current.voters.includes(id));
  assert(learners.length > 0, 'a catch-up adds servers');
  return {
    voters: current.voters,
    outgoing: [],
    removed: current.removed.filter((id) => !target.includes(id)),
    addresses: mergedAddresses(current, target, addresses),
    learners,
    target,
  };
};

export const isMember = (config: Configuration, id: NodeId): boolean =>
  config.voters.includes(id) || config.outgoing.includes(id);

export const isRemoved = (config: Configuration, id: NodeId): boolean =>
  !isMember(config, id) && config.removed.includes(id);

/** Whether the servers for which `has` holds form a majority of C_new and, when joint, of C_old. */
export const hasQuorum = (config: Configuration, has: (id: NodeId) => boolean): boolean => {
  const inSet = (set: readonly NodeId[]): boolean =>
    isMajority(set.filter((id) => has(id)).length, set.length);
  return inSet(config.voters) && (config.outgoing.length === 0 || inSet(config.outgoing));
};

/** Members of `set` listed in `ids` (both short: a loop, no allocation). */
const countListed = (set: readonly NodeId[], ids: readonly NodeId[]): number => {
  let count = 0;
  for (const id of set) if (ids.includes(id)) count += 1;
  return count;
};

/**
 * `hasQuorum` for a list of ids (the read-index acks, on the read path): whether they hold a
 * majority of C_new and, when joint, of C_old. No closure, no array made per call.
 */
export const listsQuorum = (config: Configuration, ids: readonly NodeId[]): boolean =>
  isMajority(countListed(config.voters, ids), config.voters.length) &&
  (config.outgoing.length === 0 || isMajority(countListed(config.outgoing, ids), config.outgoing.length));

/**
 * The largest index matched by a majority of C_new and, when joint, of C_old (Figure 2's commit rule
 * under joint consensus: the smaller of the two sets' quorum indexes).
 */
export const quorumIndex = (config: Configuration, matchOf: (id: NodeId) => number): number => {
  const inSet = (set: readonly NodeId[]): number => quorumMatchIndex(set.map(matchOf));
  const incoming = inSet(config.voters);
  return config.outgoing.length === 0 ? incoming : Math.min(incoming, inSet(config.outgoing));
};

/**
 * Recovery's majority of answers (docs/design/recovery.md): enough answers from the other members
 * of one set that any majority of that set meets them. Every decision of a joint configuration
 * needs both sets, so one set suffices.
 */
export const hasRecoveryQuorum = (config: Configuration, self: NodeId, answered: (id: NodeId) => boolean) => {
  const enough = (set: readonly NodeId[]): boolean => {
    if (set.length === 0) return false;
    const others = set.filter((id) => id !== self && answered(id)).length;
    // A majority of the others when the set holds this server (it forgot its own part), else
    // enough that every majority of the set meets them.
    return set.includes(self)
      ? others >= majorityOf(set.length - 1)
      : others >= set.length - majorityOf(set.length) + 1;
  };
  return enough(config.voters) || enough(config.outgoing);
};

/** C_old,new for a change from `current` to the voters of `next` (joint consensus, §6). */
export const jointConfiguration = (
  current: Configuration,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): Configuration => {
  assert(!isJoint(current) && !isCatchingUp(current), 'a change starts from a simple configuration');
  const sorted = [...voters].sort();
  return {
    voters: sorted,
    outgoing: current.voters,
    removed: current.removed.filter((id) => !sorted.includes(id)),
    addresses: mergedAddresses(current, sorted, addresses),
    learners: [],
    target: [],
  };
};

/** Addresses of C_old's voters and of `voters`, the new ones first (`addresses`), else the known. */
const mergedAddresses = (
  current: Configuration,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): Record<NodeId, MemberAddress> => {
  const merged: Record<NodeId, MemberAddress> = {};
  for (const id of [...current.voters, ...voters]) {
    const address = addresses[id] ?? current.addresses[id];
    if (address !== undefined) merged[id] = address;
  }
  return merged;
};

/** C_old,new once a catch-up is done: its learners become voters with the rest of the target. */
export const jointAfterCatchUp = (catchUp: Configuration): Configuration => {
  assert(isCatchingUp(catchUp), 'C_old,new after a catch-up');
  return jointConfiguration({ ...catchUp, learners: [], target: [] }, catchUp.target, {});
};

/** C_new after C_old,new: the servers of C_old not in C_new join `removed`. */
export const finalConfiguration = (joint: Configuration): Configuration => {
  assert(isJoint(joint), 'C_new follows a joint configuration');
  const leaving = joint.outgoing.filter((id) => !joint.voters.includes(id));
  const removed = [...joint.removed.filter((id) => !leaving.includes(id)), ...leaving].slice(
    -MAX_REMOVED_IDS,
  );
  const addresses: Record<NodeId, MemberAddress> = {};
  for (const id of joint.voters) if (joint.addresses[id] !== undefined) addresses[id] = joint.addresses[id];
  return { voters: joint.voters, outgoing: [], removed: removed.sort(), addresses, learners: [], target: [] };
};

export const sameVoters = (a: readonly NodeId[], b: readonly NodeId[]): boolean =>
  a.length === b.length && [...a].sort().every((id, i) => id === [...b].sort()[i]);

const encoder = new Encoder();
const decoder = new Decoder();

/** The data of a `config` entry (and of a snapshot header's configuration). */
export const encodeConfiguration = (config: Configuration): Uint8Array =>
  encoder.encode(configurationData(config));

const isIdList = (value: unknown): value is NodeId[] =>
  Array.isArray(value) &&
  value.length <= MAX_VOTERS + MAX_REMOVED_IDS &&
  value.every((id) => typeof id === 'string' && id.length > 0);

/**
 * Whether the catch-up fields agree with the rest (for every decoder of a configuration): a target
 * only with learners; a catch-up is not joint; its learners are not voters and are in its target.
 */
export const isSoundCatchUp = (
  voters: readonly NodeId[],
  outgoing: readonly NodeId[],
  learners: readonly NodeId[],
  target: readonly NodeId[],
): boolean =>
  learners.length === 0
    ? target.length === 0
    : outgoing.length === 0 && learners.every((id) => !voters.includes(id) && target.includes(id));

/** Parses a configuration from plain data (an entry's decoded data, a snapshot header); null when malformed. */
export const configurationFrom = (value: unknown): Configuration | null => {
  if (typeof value !== 'object' || value === null) return null;
  const { v, o, r, a, l = [], t = [] } = value as Record<string, unknown>;
  if (!isIdList(v) || !isIdList(o) || !isIdList(r) || !isIdList(l) || !isIdList(t) || v.length === 0)
    return null;
  if (!isSoundCatchUp(v, o, l, t)) return null;
  if (typeof a !== 'object' || a === null) return null;
  const addresses: Record<NodeId, MemberAddress> = {};
  for (const [id, pair] of Object.entries(a as Record<string, unknown>)) {
    if (!Array.isArray(pair) || typeof pair[0] !== 'string' || !Number.isInteger(pair[1])) return null;
    addresses[id] = { host: pair[0], port: pair[1] as number };
  }
  return {
    voters: [...v].sort(),
    outgoing: [...o].sort(),
    removed: [...r].sort(),
    addresses,
    learners: [...l].sort(),
    target: [...t].sort(),
  };
};

export const decodeConfiguration = (data: Uint8Array): Configuration => {
  const config = configurationFrom(decoder.decode(data));
  assert(config !== null, 'a config entry holds a malformed configuration');
  return config;
};

/**
 * The plain-data form of a configuration (what `encodeConfiguration` writes), for snapshot headers:
 * `{v, o, r, a}`, then `l` and `t` only while catching up (a configuration without learners encodes
 * as it did before learners existed).
 */
export const configurationData = (config: Configuration): unknown => {
  const data: Record<string, unknown> = {
    v: config.voters,
    o: config.outgoing,
    r: config.removed,
    a: Object.fromEntries(Object.entries(config.addresses).map(([id, a]) => [id, [a.host, a.port]])),
  };
  if (config.learners.length > 0) {
    data.l = config.learners;
    data.t = config.target;
  }
  return data;
};
