/**
 * Membership changes by joint consensus (Raft paper §6; dissertation §4.3), on configuration.ts:
 *
 * - **The newest configuration in the log is in force**, committed or not (§4.1): every write to
 *   the log (a leader's append, AppendEntries, InstallSnapshot, compaction) goes through
 *   `configsAfterWrite` / `configsAfterSnapshot` / `configsAfterCompact`, which keep `configs` (the
 *   base and one per config entry held) and fall back to the configuration before when a
 *   truncation removes the newest.
 * - **A change**: the leader appends C_old,new (`proposeReconfigure`); once that is committed it
 *   appends C_new (`completeJointChange`, also run by a new leader that finds a committed joint
 *   configuration). One change at a time: a configuration that is joint or not yet committed, or a
 *   leader that has not yet committed an entry of its term, refuses another (CHANGE_IN_PROGRESS).
 * - **Catching up new servers first** (dissertation §4.2.1): a change that adds servers appends a
 *   catch-up configuration instead (C_old's voters, the new servers as learners, the target
 *   voters). Learners get the log but count toward nothing; once every learner holds the log up to
 *   that entry, answers in its current incarnation and no longer recovers, the leader appends
 *   C_old,new (`completeCatchUp`, run after every event a leader takes, so a new leader goes on too).
 *   Until then no majority depends on a server that is still copying the log, so losing the leader
 *   in that window stalls nothing. A committed catch-up is replaced by a new call (a call for the
 *   current voters cancels it): that is how a change whose new servers never come up is undone.
 * - **Removal**: a leader outside C_new replicates C_new without counting itself and steps down
 *   once it is committed (`isRemovedLeader`); when C_new commits the leader tells the servers it
 *   removed, and every member answers a removed server's messages with `Removed` (as etcd does), so
 *   it learns (`learnRemoved`) and stops campaigning (`mayCampaign`).
 */
import {
  type Configuration,
  catchUpConfiguration,
  decodeConfiguration,
  encodeConfiguration,
  finalConfiguration,
  isCatchingUp,
  isJoint,
  isMember,
  isRemoved,
  jointAfterCatchUp,
  jointConfiguration,
  MAX_VOTERS,
  type MemberAddress,
  membersOf,
  sameVoters,
  withoutLearners,
} from '../configuration.js';
import type { Entry, NodeId, RaftMessage, Removed } from '../messages.js';
import { createProgress, type Progress } from '../progress.js';
import type { ConfigAt, Outcome, RaftContext, RaftEmitted } from '../raft.types.js';
import { append, lastIndex, termAt } from '../raft-log.js';
import { hasCommittedInCurrentTerm } from './read-index.js';
import { appendsFor } from './replication.js';
import { merge, peersOf } from './shared.js';

const newest = (configs: readonly ConfigAt[]): ConfigAt => configs[configs.length - 1]!;

/** The index of the entry holding the configuration in force (0 for the bootstrap one). */
export const configIndexOf = (context: Pick<RaftContext, 'configs'>): number => newest(context.configs).index;

/** Whether the configuration in force is committed (a committed C_new ends a change). */
export const isConfigCommitted = (context: RaftContext): boolean =>
  configIndexOf(context) <= context.commitIndex;

/**
 * `configs` replace the log's configurations; a change of the one in force is announced. A server
 * told it was removed is a member again once a newer configuration in its log includes it.
 */
const changed = (context: RaftContext, configs: ConfigAt[]): Outcome => {
  const last = newest(configs);
  const before = newest(context.configs);
  const inForce = last.index !== before.index || last.config !== before.config;
  const rejoined =
    context.removed &&
    inForce &&
    (isMember(last.config, context.id) || last.config.learners.includes(context.id));
  return {
    patch: rejoined ? { configs, config: last.config, removed: false } : { configs, config: last.config },
    emitted: inForce ? [{ type: 'membership', config: last.config, index: last.index }] : [],
  };
};

/**
 * The log was written from `fromIndex` on with `entries` (what was there from `fromIndex` on is
 * gone): configurations at or after `fromIndex` are dropped (counted: a truncation removed them),
 * and every config entry written is added. A no-op when neither happened.
 */
export const configsAfterWrite = (
  context: RaftContext,
  fromIndex: number,
  entries: readonly Entry[],
): Outcome => {
  let configs: ConfigAt[] | null = null;
  if (newest(context.configs).index >= fromIndex && context.configs.length > 1) {
    configs = context.configs.filter((at, position) => position === 0 || at.index < fromIndex);
    context.membershipCounters.truncated += context.configs.length - configs.length;
  }
  for (let offset = 0; offset < entries.length; offset += 1) {
    const entry = entries[offset]!;
    if (entry.kind !== 'config' || entry.data === null) continue;
    configs ??= [...context.configs];
    configs.push({ index: fromIndex + offset, config: decodeConfiguration(entry.data) });
  }
  return configs === null ? {} : changed(context, configs);
};

/** The configuration in force at `index`: the newest one held at or below it. */
export const configAt = (context: Pick<RaftContext, 'configs'>, index: number): Configuration => {
  let found = context.configs[0]!.config;
  for (const at of context.configs) if (at.index <= index) found = at.config;
  return found;
};

/** Compaction up to `index` (§7): the configuration in force there becomes the base. */
export const configsAfterCompact = (context: RaftContext, index: number): Outcome => {
  if (context.configs.length === 1 || context.configs[1]!.index > index) return {};
  const base: ConfigAt = { index, config: configAt(context, index) };
  return { patch: { configs: [base, ...context.configs.filter((at) => at.index > index)] } };
};

/**
 * A snapshot was installed at `index`: its configuration (carried with the snapshot) is the base;
 * the configurations of a kept suffix stay. Without one (a cluster never reconfigured, or an
 * older snapshot) the configuration this log knew at `index` stays the base.
 */
export const configsAfterSnapshot = (
  context: RaftContext,
  index: number,
  config: Configuration | undefined,
  keptSuffix: boolean,
): Outcome => {
  if (config !== undefined) context.membershipCounters.fromSnapshot += 1;
  const base: ConfigAt = { index, config: config ?? configAt(context, index) };
  const suffix = keptSuffix ? context.configs.filter((at) => at.index > index) : [];
  return changed(context, [base, ...suffix]);
};

/** The leader's progress follows the configuration: new members get one, removed members lose theirs. */
export const syncProgress = (context: RaftContext, config: Configuration): Outcome => {
  const progress: Record<NodeId, Progress> = {};
  const last = lastIndex(context.log);
  for (const member of membersOf(config)) {
    if (member === context.id) continue;
    progress[member] = context.progress[member] ?? createProgress(last, context.crashVector[member] ?? 0);
  }
  return { patch: { progress } };
};

/** Appends a config entry as the leader: log, persist, the configuration in force, progress, appends. */
const appendConfig = (context: RaftContext, config: Configuration): { outcome: Outcome; index: number } => {
  const entry: Entry = { term: context.currentTerm, kind: 'config', data: encodeConfiguration(config) };
  const index = append(context.log, [entry]);
  const configs = changed(context, [...context.configs, { index, config }]);
  const synced = syncProgress(context, config);
  const next = { ...context, ...configs.patch, ...synced.patch } as RaftContext;
  const persist: RaftEmitted = { type: 'persist', hardState: null, fromIndex: index, entries: [entry] };
  const appends = peersOf(next).flatMap((peer) => appendsFor(next, peer, false));
  return { outcome: merge(configs, synced, { emitted: [persist], send: appends }), index };
};

const rejection = (
  context: RaftContext,
  requestId: number,
  code: 'NOT_LEADER' | 'LEADER_NOT_READY' | 'CHANGE_IN_PROGRESS' | 'INVALID_ARGUMENT',
): Outcome => ({
  emitted: [{ type: 'reconfigureRejected', requestId, code, leaderId: context.leaderId }],
});

/** Any server but the leader: the caller should ask the leader. */
export const rejectReconfigure = (context: RaftContext, requestId: number): Outcome =>
  rejection(context, requestId, 'NOT_LEADER');

/**
 * The leader starts a change to `voters` (§6): C_old,new goes into the log, in force at once, or,
 * when the change adds servers, the catch-up configuration that makes them learners first (§4.2.1).
 * A change whose voters and addresses equal the configuration in force is answered at once; the
 * same call during a catch-up cancels it. A committed catch-up is replaced by a new change; asked for
 * again (a call retried after a leader change), it goes on under its entry.
 */
export const proposeReconfigure = (
  context: RaftContext,
  requestId: number,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): Outcome => {
  const unique = new Set(voters);
  if (voters.length === 0 || unique.size !== voters.length || voters.length > MAX_VOTERS)
    return rejection(context, requestId, 'INVALID_ARGUMENT');
  if (isJoint(context.config) || !isConfigCommitted(context))
    return rejection(context, requestId, 'CHANGE_IN_PROGRESS');
  // A configuration of the last leader may still be uncommitted elsewhere: wait for our own commit.
  if (!hasCommittedInCurrentTerm(context)) return rejection(context, requestId, 'LEADER_NOT_READY');
  const base = withoutLearners(context.config);
  const catchingUp = isCatchingUp(context.config);
  if (sameVoters(voters, base.voters) && sameAddresses(base, voters, addresses)) {
    if (!catchingUp) return acceptedInForce(context, requestId, true);
    context.membershipCounters.catchUpsCancelled += 1;
    return accepted(context, requestId, appendConfig(context, base));
  }
  // The same change asked again (a call retried after a leader change): the catch-up goes on.
  if (
    catchingUp &&
    sameVoters(voters, context.config.target) &&
    sameAddresses(context.config, voters, addresses)
  )
    return acceptedInForce(context, requestId, false);
  const adds = voters.some((id) => !base.voters.includes(id));
  if (adds) context.membershipCounters.catchUps += 1;
  const next = adds
    ? catchUpConfiguration(base, voters, addresses)
    : jointConfiguration(base, voters, addresses);
  return accepted(context, requestId, appendConfig(context, next));
};

/** The call is answered with the configuration in force: asked for as it is, or a catch-up going on. */
const acceptedInForce = (context: RaftContext, requestId: number, unchanged: boolean): Outcome => {
  const index = configIndexOf(context);
  const term = termAt(context.log, index) ?? 0;
  return { emitted: [{ type: 'reconfigureAccepted', requestId, index, term, unchanged }] };
};

const accepted = (
  context: RaftContext,
  requestId: number,
  { outcome, index }: { outcome: Outcome; index: number },
): Outcome =>
  merge(outcome, {
    emitted: [{ type: 'reconfigureAccepted', requestId, index, term: context.currentTerm, unchanged: false }],
  });

/**
 * Whether the leader's catch-up is done (§4.2.1): the catch-up configuration is committed, and every
 * learner holds the log up to it, in answers of its current incarnation that are not recovering.
 */
export const isCatchUpDone = (context: RaftContext): boolean => {
  if (!isCatchingUp(context.config) || !isConfigCommitted(context)) return false;
  const index = configIndexOf(context);
  return context.config.learners.every((id) => {
    const progress = context.progress[id];
    return progress !== undefined && !progress.recovering && progress.matchIndex >= index;
  });
};

/** The learners caught up: C_old,new goes into the log (the change goes on as any other). */
export const completeCatchUp = (context: RaftContext): Outcome => {
  context.membershipCounters.catchUpsCompleted += 1;
  return appendConfig(context, jointAfterCatchUp(context.config)).outcome;
};

const sameAddresses = (
  config: Configuration,
  voters: readonly NodeId[],
  addresses: Readonly<Record<NodeId, MemberAddress>>,
): boolean =>
  voters.every((id) => {
    const next = addresses[id];
    const known = config.addresses[id];
    return (
      next === undefined || (known !== undefined && known.host === next.host && known.port === next.port)
    );
  });

/**
 * The leader, once C_old,new is committed, appends C_new (§6: "once C_old,new has been committed,
 * the leader creates a log entry describing C_new"); a new leader that finds a committed joint
 * configuration finishes the change the same way. Returns whether it appended.
 */
export const completeJointChange = (context: RaftContext): Outcome | null => {
  if (!isJoint(context.config) || !isConfigCommitted(context)) return null;
  return appendConfig(context, finalConfiguration(context.config)).outcome;
};

/**
 * When the commit index passes a C_new, the leader tells the servers it removed (they no longer get
 * its AppendEntries, so they would not learn otherwise).
 */
export const tellRemoved = (context: RaftContext, previousCommitIndex: number): Outcome => {
  const index = configIndexOf(context);
  if (isJoint(context.config) || index <= previousCommitIndex || index > context.commitIndex) return {};
  const before = context.configs.length > 1 ? context.configs[context.configs.length - 2]!.config : null;
  if (before === null) return {};
  // A learner of the configuration in force is still being added: not told (§4.2.1).
  const staying = membersOf(context.config);
  const leaving = membersOf(before).filter((id) => !staying.includes(id) && id !== context.id);
  return { send: leaving.map((id) => removedAnswer(context, id)) };
};

const removedAnswer = (context: RaftContext, to: NodeId): Removed => ({
  type: 'Removed',
  from: context.id,
  to,
  term: context.currentTerm,
  configIndex: configIndexOf(context),
});

/** A message from a server that a committed configuration removed (not a `Removed` answer itself). */
export const isFromRemovedServer = (context: RaftContext, message: RaftMessage): boolean =>
  message.type !== 'Removed' && isRemoved(context.config, message.from) && isConfigCommitted(context);

/** Members answer a removed server with `Removed`, whatever it sent (counted; campaigns counted apart). */
export const answerRemovedServer = (context: RaftContext, message: RaftMessage): Outcome => {
  context.membershipCounters.removedAnswers += 1;
  if (message.type === 'RequestVote') context.membershipCounters.removedCampaigns += 1;
  return { send: [removedAnswer(context, message.from)] };
};

/**
 * Whether a `Removed` message tells this server something: it was not told already, and its own
 * log holds no newer configuration that includes it (as a learner too: it is being added again). A candidate or a leader that accepts one stops
 * at once (raft.machine.ts): a removed server neither campaigns nor leads.
 */
export const acceptsRemoved = (context: RaftContext, message: Removed): boolean =>
  !context.removed &&
  !(membersOf(context.config).includes(context.id) && configIndexOf(context) > message.configIndex);

/**
 * A member says a committed configuration removed this server. Ignored when this server's own log
 * holds a newer configuration that includes it (it was added again since).
 */
export const learnRemoved = (context: RaftContext, message: Removed): Outcome => {
  if (!acceptsRemoved(context, message)) return {};
  return {
    patch: { removed: true },
    emitted: [{ type: 'removed', configIndex: message.configIndex }],
  };
};

/** A leader outside a committed C_new steps down (§6: "steps down once C_new is committed"). */
export const isRemovedLeader = (context: RaftContext): boolean =>
  !isJoint(context.config) && !context.config.voters.includes(context.id) && isConfigCommitted(context);

export const leaveAsRemovedLeader = (context: RaftContext): Outcome => {
  context.membershipCounters.leaderRemoved += 1;
  return {
    patch: { removed: true },
    emitted: [{ type: 'removed', configIndex: configIndexOf(context) }],
  };
};

/**
 * Only a voter of the configuration in force that was not told it is removed starts elections
 * (etcd-io/raft's "promotable"): a server being added before its log holds the change, or one
 * removed, stays quiet. One exception: while a C_new that leaves this server out is not known to be
 * committed, a member of the configuration before it still campaigns (counting votes under C_new):
 * a leader that appended C_new and restarted may hold the only copy of it, and without it C_old,new
 * (which needs its vote) could elect no one; once elected it commits C_new and steps down.
 */
export const mayCampaign = (context: RaftContext): boolean => {
  if (context.removed) return false;
  if (isMember(context.config, context.id)) return true;
  const before = context.configs.length > 1 ? context.configs[context.configs.length - 2]!.config : null;
  return !isConfigCommitted(context) && before !== null && isMember(before, context.id);
};
