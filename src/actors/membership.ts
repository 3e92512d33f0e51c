/**
 * The membership actor (`<node>/membership`): the `reconfigure` calls of this node's handle, and
 * the ones followers forward to this node when it leads (machines/rules/membership.ts decides; this
 * actor asks and waits).
 *
 * A call asks the raft machine (or, on a follower, the leader's membership actor through the
 * transport) to start a change to the given voters. Once the change's first entry is appended at
 * index i (its catch-up configuration when it adds servers, else C_old,new), the call waits until
 * this node's store applies a simple configuration with exactly those voters at an index from i on
 * (C_new, committed and applied here), or until this node learns that the change removed it. A
 * later change that replaced it while its new servers caught up rejects it (CHANGE_IN_PROGRESS). A change lost with its leader (the entry at i turned out to be another one), a
 * refusal because the new leader has not committed yet or because the asked node no longer leads
 * (tried again within milliseconds, `retrySoon`), and a lost forward are tried again until
 * the call's deadline (then QUORUM_UNAVAILABLE: the change may still complete). One call at a
 * time per node; the leader refuses a second change while one is in progress (CHANGE_IN_PROGRESS).
 *
 * Receives: `reconfigureCall` (handle), `reconfigureAccepted` / `reconfigureRejected` / `membership`
 * / `removed` (raft), `configApplied` (store), `client` (forwarded calls and their answers),
 * `leaderChanged` (raft). Sends: `reconfigure` to raft, `outgoing` to the transport.
 */
import { type AnyActorRef, fromCallback } from 'xstate';
import {
  type Configuration,
  isCatchingUp,
  isJoint,
  type MemberAddress,
  sameVoters,
} from '../machines/configuration.js';
import type { NodeId } from '../machines/messages.js';
import type { ClientReconfigure, ClientReconfigureResult } from './client-messages.js';
import type { Clock } from './deadlines.js';
import type { AnyActorSystem } from './events.js';
import { type MembershipEvent, type ReconfigureCall, relay, type SystemIds } from './events.js';

/** What the node's handle reads: the configuration in force and whether this node was removed. */
export type MembershipView = {
  config: Configuration;
  index: number;
  removed: boolean;
  /** Changes this node's calls made (resolved), and the attempts tried again. */
  changes: number;
  retries: number;
};

export type MembershipInput = {
  ids: SystemIds;
  id: NodeId;
  clock: Clock;
  /** A forward that got no answer within this time goes again. */
  retryMs: number;
  initial: { config: Configuration; index: number };
  onMembership: (config: Configuration, index: number) => void;
  onRemoved: (configIndex: number) => void;
  views: { membership?: MembershipView };
};

type Pending = {
  call: ReconfigureCall;
  requestId: number;
  /** The index of the C_old,new this attempt appended; null until accepted. */
  acceptedIndex: number | null;
  /** An earlier attempt was accepted: a CHANGE_IN_PROGRESS now may be that change going on. */
  everAccepted: number | null;
  deadline: unknown;
  retry: unknown;
  /** Refusals in a row that told where to ask next (NOT_LEADER, LEADER_NOT_READY): the backoff. */
  refusals: number;
};

type State = {
  input: MembershipInput;
  system: AnyActorSystem;
  self: AnyActorRef;
  view: MembershipView;
  leaderId: NodeId | null;
  leading: boolean;
  pending: Pending | null;
  nextRequestId: number;
  /** Changes forwarded by followers, by the request id this node's raft machine knows them by. */
  forwarded: Map<number, { from: NodeId; id: number }>;
};

const codeError = (code: string, message: string, leaderId?: NodeId | null): Error =>
  Object.assign(new Error(message), { code }, leaderId === undefined ? {} : { leaderId });

const finish = (state: State, error: Error | null): void => {
  const pending = state.pending;
  if (pending === null) return;
  state.pending = null;
  state.input.clock.clearTimeout(pending.deadline);
  if (pending.retry !== null) state.input.clock.clearTimeout(pending.retry);
  if (error === null) {
    state.view.changes += 1;
    pending.call.resolve();
  } else pending.call.reject(error);
};

/** The attempt of `pending` goes again in `delayMs` unless accepted by then (one timer per call). */
const scheduleRetry = (state: State, pending: Pending, delayMs: number): void => {
  const { clock } = state.input;
  if (pending.retry !== null) clock.clearTimeout(pending.retry);
  pending.retry = clock.setTimeout(() => {
    pending.retry = null;
    if (state.pending === pending && pending.acceptedIndex === null) retry(state);
  }, delayMs);
};

/** One attempt: this node's machine when it leads (or knows no leader), else the leader's. */
const attempt = (state: State): void => {
  const pending = state.pending;
  if (pending === null) return;
  const { ids, id, retryMs } = state.input;
  pending.requestId = state.nextRequestId++;
  if (pending.acceptedIndex !== null) pending.everAccepted = pending.acceptedIndex;
  pending.acceptedIndex = null;
  scheduleRetry(state, pending, retryMs);
  const { voters, addresses } = pending.call;
  if (state.leaderId === null || state.leaderId === id) {
    relay(state.system, state.self, ids.raft, {
      type: 'reconfigure',
      requestId: pending.requestId,
      voters,
      addresses,
    });
    return;
  }
  const message: ClientReconfigure = {
    type: 'ClientReconfigure',
    from: id,
    to: state.leaderId,
    id: pending.requestId,
    voters,
    addresses,
  };
  relay(state.system, state.self, ids.transport, { type: 'outgoing', messages: [message] });
};

const retry = (state: State): void => {
  state.view.retries += 1;
  attempt(state);
};

/** The first quick retry after a refusal that named a leader (or a leader not ready yet). */
const FIRST_QUICK_RETRY_MS = 10;

/**
 * A refusal that says where to ask next or that the leader is about to be ready (its term's first
 * entry commits within a round trip): try again soon, 10 ms then doubling, never later than the
 * retry timer would. Not at once: a view of the leader that is stale on both sides would ping-pong.
 */
const retrySoon = (state: State, pending: Pending): void => {
  const delayMs = Math.min(state.input.retryMs, FIRST_QUICK_RETRY_MS * 2 ** pending.refusals);
  pending.refusals += 1;
  scheduleRetry(state, pending, delayMs);
};

/** The answer to this node's attempt (from its machine, or the leader's through a forward). */
const answered = (
  state: State,
  requestId: number,
  answer: {
    accepted: boolean;
    unchanged: boolean;
    index: number;
    code: string | null;
    leaderId: NodeId | null;
  },
): void => {
  const pending = state.pending;
  if (pending === null || pending.requestId !== requestId) return;
  if (answer.accepted) {
    pending.refusals = 0;
    if (answer.unchanged) finish(state, null);
    else pending.acceptedIndex = answer.index;
    return;
  }
  // Our own change, accepted by a leader since gone, may be what is in progress: wait for it.
  if (answer.code === 'CHANGE_IN_PROGRESS' && pending.everAccepted !== null) {
    pending.acceptedIndex = pending.everAccepted;
    return;
  }
  if (answer.code === 'NOT_LEADER' || answer.code === 'LEADER_NOT_READY') {
    if (answer.leaderId !== null && answer.leaderId !== state.input.id) state.leaderId = answer.leaderId;
    retrySoon(state, pending);
    return;
  }
  const message =
    answer.code === 'CHANGE_IN_PROGRESS'
      ? 'another membership change is in progress; try again once it completes'
      : `the leader refused the change (${answer.code})`;
  finish(state, codeError(answer.code ?? 'INVALID_ARGUMENT', message));
};

/**
 * A configuration applied here: the call is done when it is its C_new; lost when another took its
 * index (asked again); rejected CHANGE_IN_PROGRESS when a later change replaced it (a call made while
 * its new servers were still catching up, membership.ts).
 */
const configApplied = (state: State, index: number, config: Configuration) => {
  const pending = state.pending;
  if (pending === null || pending.acceptedIndex === null || index < pending.acceptedIndex) return;
  const { voters } = pending.call;
  const simple = !isJoint(config) && !isCatchingUp(config);
  if (simple && sameVoters(config.voters, voters)) return finish(state, null);
  const ours =
    (isJoint(config) && sameVoters(config.voters, voters)) ||
    (isCatchingUp(config) && sameVoters(config.target, voters));
  if (ours) return;
  if (index === pending.acceptedIndex) return retry(state);
  finish(
    state,
    codeError(
      'CHANGE_IN_PROGRESS',
      'another membership change replaced this one before its new nodes caught up',
    ),
  );
};

/** A follower's forwarded change, on the leader: asked of the machine, answered when it answers. */
const forwardedCall = (state: State, message: ClientReconfigure): void => {
  const requestId = state.nextRequestId++;
  state.forwarded.set(requestId, { from: message.from, id: message.id });
  const addresses = message.addresses as Record<NodeId, MemberAddress>;
  relay(state.system, state.self, state.input.ids.raft, {
    type: 'reconfigure',
    requestId,
    voters: message.voters,
    addresses,
  });
};

const answerForwarded = (
  state: State,
  requestId: number,
  answer: Omit<ClientReconfigureResult, 'type' | 'from' | 'to' | 'id'>,
): boolean => {
  const caller = state.forwarded.get(requestId);
  if (caller === undefined) return false;
  state.forwarded.delete(requestId);
  const message: ClientReconfigureResult = {
    type: 'ClientReconfigureResult',
    from: state.input.id,
    to: caller.from,
    id: caller.id,
    ...answer,
  };
  relay(state.system, state.self, state.input.ids.transport, { type: 'outgoing', messages: [message] });
  return true;
};

const startCall = (state: State, call: ReconfigureCall): void => {
  if (state.view.removed) {
    call.reject(codeError('REMOVED', `${state.input.id} was removed from the cluster`));
    return;
  }
  if (state.pending !== null) {
    call.reject(codeError('CHANGE_IN_PROGRESS', 'this node is already making a membership change'));
    return;
  }
  const pending: Pending = {
    call,
    requestId: -1,
    acceptedIndex: null,
    everAccepted: null,
    deadline: null,
    retry: null,
    refusals: 0,
  };
  state.pending = pending;
  pending.deadline = state.input.clock.setTimeout(() => {
    if (state.pending !== pending) return;
    const error = codeError(
      'QUORUM_UNAVAILABLE',
      `the membership change was not confirmed within ${call.timeoutMs} ms (it may still complete)`,
      state.leaderId,
    );
    finish(state, error);
  }, call.timeoutMs);
  attempt(state);
};

const onEvent = (state: State, event: MembershipEvent) => {
  switch (event.type) {
    case 'reconfigureCall':
      return startCall(state, event.call);
    case 'reconfigureAccepted': {
      const answer = { accepted: true, unchanged: event.unchanged, index: event.index, term: event.term };
      if (!answerForwarded(state, event.requestId, { ...answer, code: null, leaderId: state.input.id }))
        answered(state, event.requestId, { ...answer, code: null, leaderId: state.input.id });
      return;
    }
    case 'reconfigureRejected': {
      const answer = { accepted: false, unchanged: false, index: 0, term: 0, code: event.code };
      if (!answerForwarded(state, event.requestId, { ...answer, leaderId: event.leaderId }))
        answered(state, event.requestId, { ...answer, leaderId: event.leaderId });
      return;
    }
    case 'membership':
      state.view.config = event.config;
      state.view.index = event.index;
      state.input.onMembership(event.config, event.index);
      return;
    case 'removed':
      state.view.removed = true;
      // A call whose change removed this node is done; any other cannot be any more.
      if (state.pending !== null && !state.pending.call.voters.includes(state.input.id)) finish(state, null);
      else finish(state, codeError('REMOVED', `${state.input.id} was removed from the cluster`));
      relay(state.system, state.self, state.input.ids.requests, { type: 'removed' });
      state.input.onRemoved(event.configIndex);
      return;
    case 'configApplied':
      return configApplied(state, event.index, event.config);
    case 'client':
      if (event.message.type === 'ClientReconfigure') return forwardedCall(state, event.message);
      return answered(state, event.message.id, event.message);
    case 'leaderChanged': {
      const changed = state.leaderId !== event.leaderId;
      state.leaderId = event.leaderId;
      state.leading = event.self;
      // A new leader: an attempt not yet accepted goes to it; an accepted one is asked again, as
      // its entry may be lost (a CHANGE_IN_PROGRESS answer then means it goes on: keep waiting).
      if (changed && state.pending !== null && event.leaderId !== null) {
        state.pending.refusals = 0; // a new leader: its first refusal backs off from the start again
        retry(state);
      }
      return;
    }
    case 'stop':
      return finish(state, codeError('STOPPED', `${state.input.id} stopped`));
  }
};

export const membershipActor = fromCallback<MembershipEvent, MembershipInput>(
  ({ input, receive, system, self }) => {
    const view: MembershipView = {
      config: input.initial.config,
      index: input.initial.index,
      removed: false,
      changes: 0,
      retries: 0,
    };
    input.views.membership = view;
    const state: State = {
      input,
      system,
      self,
      view,
      leaderId: null,
      leading: false,
      pending: null,
      nextRequestId: 1,
      forwarded: new Map(),
    };
    receive((event) => onEvent(state, event));
    return () => finish(state, codeError('STOPPED', `${input.id} stopped`));
  },
);
