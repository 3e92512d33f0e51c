/**
 * The reference spec's membership (Raft paper §6; dissertation §4.3, joint consensus), written
 * apart from src/machines/configuration.ts and membership.ts: only the *format* of a config
 * entry's data is shared (a msgpack map {v: C_new, o: C_old while joint, r: removed ids, a: {id:
 * [host, port]}}, then l: learners and t: target only while catching up, so that a configuration
 * without learners encodes as before they existed), because the spec reads the entries the
 * implementation sends.
 *
 * - A configuration is stable (`outgoing` and `learners` empty), catching up (C_learn: `learners`
 *   the servers being added, non-voting, `target` the voters the change goes to; dissertation
 *   §4.2.1) or joint (C_old,new): every majority then needs a majority of C_new and one of C_old.
 *   Learners are replicated to like any member but count toward no majority and are no members
 *   (`isMemberOf`): they never campaign.
 * - The configuration in force is the newest config entry in the log, committed or not, else the
 *   bootstrap voters (`configInForce` scans the log, so a truncation falls back by itself).
 * - A change: C_learn first when it adds servers (`catchUpOf`; C_old,new follows once every learner
 *   holds the log up to C_learn, `afterCatchUp`), then C_old,new (the leader's voters become
 *   `outgoing`, addresses merged, the new voters taken off `removed`), then C_new (C_old's servers
 *   not in C_new join `removed`, at most 64, the newest kept; only C_new's addresses stay). A
 *   request for the voters in force while catching up appends `stableOf` C_learn: it cancels.
 */
import { decode, encode } from '@msgpack/msgpack';
import type { Entry, NodeId } from '../../src/machines/messages.js';

export type SpecAddress = { readonly host: string; readonly port: number };

export type SpecConfig = {
  readonly voters: readonly NodeId[];
  readonly outgoing: readonly NodeId[];
  readonly removed: readonly NodeId[];
  readonly addresses: Readonly<Record<NodeId, SpecAddress>>;
  /** Catching up: the servers being added (non-voting); empty otherwise. */
  readonly learners: readonly NodeId[];
  /** Catching up: the voters the change goes to (learners included); empty otherwise. */
  readonly target: readonly NodeId[];
};

/** The configuration in force and where it came from (index 0: the bootstrap voters). */
export type ConfigInForce = { readonly index: number; readonly term: number; readonly config: SpecConfig };

const REMOVED_KEPT = 64;
export const MOST_VOTERS = 64;

const sorted = (ids: Iterable<NodeId>): NodeId[] => [...new Set(ids)].sort();

export const bootstrapConfig = (voters: readonly NodeId[]): SpecConfig => ({
  voters: sorted(voters),
  outgoing: [],
  removed: [],
  addresses: {},
  learners: [],
  target: [],
});

export const isJointConfig = (c: SpecConfig): boolean => c.outgoing.length > 0;

/** C_learn: a change that adds servers, catching them up before they vote. */
export const isCatchUpConfig = (c: SpecConfig): boolean => c.learners.length > 0;

/** Every server the configuration replicates to: C_new, C_old and the learners. */
export const membersOfConfig = (c: SpecConfig): NodeId[] =>
  sorted([...c.voters, ...c.outgoing, ...c.learners]);

/** A member counts toward majorities and may campaign: C_new or C_old, never a learner. */
export const isMemberOf = (c: SpecConfig, id: NodeId): boolean =>
  c.voters.includes(id) || c.outgoing.includes(id);

/** The voter sets a majority is needed in: C_new, and C_old while joint. */
export const setsOf = (c: SpecConfig): (readonly NodeId[])[] =>
  isJointConfig(c) ? [c.voters, c.outgoing] : [c.voters];

const majorityOf = (n: number): number => Math.floor(n / 2) + 1;

/** A majority of every set holds `has`. */
export const quorumOf = (c: SpecConfig, has: (id: NodeId) => boolean): boolean =>
  setsOf(c).every((set) => set.filter(has).length >= majorityOf(set.length));

/** A majority of some set holds `has` (a majority of refusals in either set loses an election). */
export const someSetMajority = (c: SpecConfig, has: (id: NodeId) => boolean): boolean =>
  setsOf(c).some((set) => set.length > 0 && set.filter(has).length >= majorityOf(set.length));

/**
 * Recovery's answers (docs/design/recovery.md), per set: a majority of the others when the set
 * holds the asker, else enough that every majority of the set meets them; one set is enough.
 */
export const recoveryQuorumOf = (c: SpecConfig, self: NodeId, answered: (id: NodeId) => boolean): boolean =>
  setsOf(c).some((set) => {
    const others = set.filter((id) => id !== self && answered(id)).length;
    return set.includes(self)
      ? others >= majorityOf(set.length - 1)
      : others >= set.length - majorityOf(set.length) + 1;
  });

// ---------------------------------------------------------------------------------------------
// Entries

const parsed = new WeakMap<Uint8Array, SpecConfig>();

const idList = (value: unknown, what: string): NodeId[] => {
  if (!Array.isArray(value) || !value.every((id) => typeof id === 'string'))
    throw new Error(`spec: a config entry's ${what} is not a list of ids`);
  return sorted(value as NodeId[]);
};

/** The configuration a config entry holds (its data decoded; cached by the data's identity). */
export const configOfEntry = (entry: Entry): SpecConfig => {
  if (entry.kind !== 'config' || entry.data === null) throw new Error('spec: not a config entry');
  const known = parsed.get(entry.data);
  if (known) return known;
  const { v, o, r, a, l, t } = decode(entry.data) as Record<string, unknown>;
  const addresses: Record<NodeId, SpecAddress> = {};
  for (const [id, pair] of Object.entries((a ?? {}) as Record<string, [string, number]>))
    addresses[id] = { host: pair[0], port: pair[1] };
  const config: SpecConfig = {
    voters: idList(v, 'v'),
    outgoing: idList(o, 'o'),
    removed: idList(r, 'r'),
    addresses,
    learners: l === undefined ? [] : idList(l, 'l'),
    target: t === undefined ? [] : idList(t, 't'),
  };
  const { voters, outgoing, learners, target } = config;
  const wellFormed =
    learners.length === 0
      ? t === undefined && l === undefined
      : outgoing.length === 0 && learners.every((id) => !voters.includes(id) && target.includes(id));
  if (!wellFormed) throw new Error('spec: a config entry with malformed learners (l) or target (t)');
  parsed.set(entry.data, config);
  return config;
};

export const configEntry = (term: number, c: SpecConfig): Entry => {
  const a: Record<NodeId, [string, number]> = {};
  for (const id of Object.keys(c.addresses).sort()) a[id] = [c.addresses[id]!.host, c.addresses[id]!.port];
  // Keys in this order; l and t only while catching up (byte-identical to the format before learners).
  const data = encode(
    isCatchUpConfig(c)
      ? { v: c.voters, o: c.outgoing, r: c.removed, a, l: c.learners, t: c.target }
      : { v: c.voters, o: c.outgoing, r: c.removed, a },
  );
  parsed.set(data, c);
  return { term, kind: 'config', data };
};

const sameIds = (x: readonly NodeId[], y: readonly NodeId[]): boolean =>
  x.length === y.length && x.every((id, i) => id === y[i]);

const sameAddress = (x: SpecAddress | undefined, y: SpecAddress | undefined): boolean =>
  x === y || (x !== undefined && y !== undefined && x.host === y.host && x.port === y.port);

/** Two configurations say the same (whatever the order of the addresses in their encoding). */
export const sameConfig = (x: SpecConfig, y: SpecConfig): boolean =>
  sameIds(x.voters, y.voters) &&
  sameIds(x.outgoing, y.outgoing) &&
  sameIds(x.removed, y.removed) &&
  sameIds(x.learners, y.learners) &&
  sameIds(x.target, y.target) &&
  sameIds(Object.keys(x.addresses).sort(), Object.keys(y.addresses).sort()) &&
  Object.keys(x.addresses).every((id) => sameAddress(x.addresses[id], y.addresses[id]));

/** Spec logs are never changed in place (a change makes a new array): the answer per log and bootstrap. */
const inForceOf = new WeakMap<readonly Entry[], { bootstrap: readonly NodeId[]; inForce: ConfigInForce }>();

/** The newest config entry of `log`, else the bootstrap voters. */
export const configInForce = (log: readonly Entry[], bootstrap: readonly NodeId[]): ConfigInForce => {
  const known = inForceOf.get(log);
  if (known !== undefined && known.bootstrap === bootstrap) return known.inForce;
  let inForce: ConfigInForce = { index: 0, term: 0, config: bootstrapConfig(bootstrap) };
  for (let i = log.length; i >= 1; i -= 1) {
    const entry = log[i - 1]!;
    if (entry.kind !== 'config') continue;
    inForce = { index: i, term: entry.term, config: configOfEntry(entry) };
    break;
  }
  inForceOf.set(log, { bootstrap, inForce });
  return inForce;
};

/** The configuration in force just before `index` (the newest config entry below it). */
export const configBefore = (log: readonly Entry[], bootstrap: readonly NodeId[], index: number) =>
  configInForce(log.slice(0, index - 1), bootstrap).config;

// ---------------------------------------------------------------------------------------------
// A change

/** The addresses of `current`'s voters and of `voters`: the requested ones first, else the known. */
const mergedAddresses = (
  current: SpecConfig,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): Record<NodeId, SpecAddress> => {
  const merged: Record<NodeId, SpecAddress> = {};
  for (const id of sorted([...current.voters, ...voters])) {
    const address = addresses[id] ?? current.addresses[id];
    if (address) merged[id] = address;
  }
  return merged;
};

/** C_old,new from the `current` voters to `voters`; the addresses of both, the new ones winning. */
export const jointOf = (
  current: SpecConfig,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): SpecConfig => {
  const next = sorted(voters);
  return {
    voters: next,
    outgoing: current.voters,
    removed: current.removed.filter((id) => !next.includes(id)),
    addresses: mergedAddresses(current, next, addresses),
    learners: [],
    target: [],
  };
};

/**
 * The stable configuration under `c` (the base of a change): its voters, its removed list and its
 * voters' addresses; a catch-up loses its learners, its target and the learners' addresses.
 */
export const stableOf = (c: SpecConfig): SpecConfig => {
  if (!isCatchUpConfig(c)) return c;
  const addresses: Record<NodeId, SpecAddress> = {};
  for (const id of c.voters) if (c.addresses[id]) addresses[id] = c.addresses[id]!;
  return { voters: c.voters, outgoing: [], removed: c.removed, addresses, learners: [], target: [] };
};

/**
 * C_learn (dissertation §4.2.1) from the stable `base` to `voters`, which adds servers: the voters
 * stay base's, the added ones are learners, `target` is where the change goes; removed and addresses
 * as C_old,new has them.
 */
export const catchUpOf = (
  base: SpecConfig,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): SpecConfig => {
  const target = sorted(voters);
  return {
    voters: base.voters,
    outgoing: [],
    removed: base.removed.filter((id) => !target.includes(id)),
    addresses: mergedAddresses(base, target, addresses),
    learners: target.filter((id) => !base.voters.includes(id)),
    target,
  };
};

/** C_old,new once C_learn's learners caught up: from its voters to its target, its addresses kept. */
export const afterCatchUp = (catchUp: SpecConfig): SpecConfig =>
  jointOf({ ...catchUp, learners: [], target: [] }, catchUp.target, {});

/** C_new after C_old,new. */
export const finalOf = (joint: SpecConfig): SpecConfig => {
  const leaving = joint.outgoing.filter((id) => !joint.voters.includes(id));
  const removed = [...joint.removed.filter((id) => !leaving.includes(id)), ...leaving].slice(-REMOVED_KEPT);
  const addresses: Record<NodeId, SpecAddress> = {};
  for (const id of joint.voters) if (joint.addresses[id]) addresses[id] = joint.addresses[id]!;
  return {
    voters: joint.voters,
    outgoing: [],
    removed: sorted(removed),
    addresses,
    learners: [],
    target: [],
  };
};

/** Asking for the configuration in force: same voters, and no address that differs or is new. */
export const asksForCurrent = (
  current: SpecConfig,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): boolean =>
  sameIds(sorted(voters), current.voters) &&
  voters.every((id) => addresses[id] === undefined || sameAddress(addresses[id], current.addresses[id]));

/** A catch-up configuration asked for again: the same target voters, no address that differs. */
export const asksForTarget = (
  current: SpecConfig,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, SpecAddress>>,
): boolean =>
  current.learners.length > 0 &&
  sameIds(sorted(voters), current.target) &&
  voters.every((id) => addresses[id] === undefined || sameAddress(addresses[id], current.addresses[id]));
