/**
 * The requests actor (`<node>/requests`): the client side of every node and the leader's side of
 * client calls. It takes the calls made on the node's handle (`calls`, one event per tick, whatever
 * their number), routes them (calls.ts): to its own raft actor as one `propose` / `readIndex` event
 * per tick when this node leads (leader-batches.ts gathers the tick's local and forwarded calls),
 * to the leader as one message per kind otherwise. Reads go to the raft actor one batch at a time:
 * those that come while a batch waits for its heartbeat round go together when it is answered, so
 * one round serves every read queued during the last. It settles them from the answers: the raft
 * actor's (accepted, refused, reads confirmed), the leader's (forwarded calls), the store's
 * (`applied`: a write is done once applied here; a read once the store reached its read index).
 */
import { type AnyActorRef, fromCallback } from 'xstate';
import type { NodeId } from '../machines/messages.js';
import {
  applied,
  type Calls,
  type CallsDeps,
  createCalls,
  leaderChanged,
  onProposeResult,
  onReadResult,
  readsConfirmed,
  readsRefused,
  restored,
  stopCalls,
  takeCalls,
  writesAccepted,
  writesRefused,
} from './calls.js';
import type { ClientMessage, ClientPropose } from './client-messages.js';
import type { Deadlines } from './deadlines.js';
import type { AnyActorSystem } from './events.js';
import { type RequestsEvent, relay, type SystemIds } from './events.js';
import {
  answerBatch,
  answerReads,
  createLeaderBatches,
  type LeaderBatches,
  refusal,
  takeProposals,
  takeReads,
  withoutUndecodable,
} from './leader-batches.js';

export type RequestsView = { calls: Calls; batches: LeaderBatches };

export type RequestsInput = Omit<CallsDeps, 'proposeLocally' | 'readLocally' | 'send'> & {
  ids: SystemIds;
  deadlines: Deadlines;
  /** Where the node's handle reads the counters and pending calls (metrics); never written there. */
  views: { requests?: RequestsView };
};

type Scope = {
  system: AnyActorSystem;
  self: AnyActorRef;
  input: RequestsInput;
  calls: Calls;
  batches: LeaderBatches;
};

const sendOut = (scope: Scope, message: ClientMessage): void => {
  relay(scope.system, scope.self, scope.input.ids.transport, { type: 'outgoing', messages: [message] });
};

/** One `propose` event for every write that reached this leader in the tick, local or forwarded. */
const proposeBatch = (scope: Scope): void => {
  const batch = takeProposals(scope.batches);
  if (batch === null) return;
  const { batchId, commands } = batch;
  relay(scope.system, scope.self, scope.input.ids.raft, { type: 'propose', batchId, commands });
};

/**
 * One `readIndex` event for every read queued since the last one, unless that one is still
 * unanswered: then they go when its answer comes (`readRoundDone`), all together.
 */
const readBatch = (scope: Scope): void => {
  const ids = takeReads(scope.batches);
  if (ids) relay(scope.system, scope.self, scope.input.ids.raft, { type: 'readIndex', ids });
};

/** The machine answered the read batch in flight (or leadership changed): the next may go. */
const readRoundDone = (scope: Scope): void => {
  scope.batches.readRoundOpen = false;
  readBatch(scope);
};

/** A client message from another node (the transport checked its shape). */
const receiveClientMessage = (scope: Scope, message: ClientMessage): void => {
  const { batches, calls, input } = scope;
  const leading = calls.leader.self;
  const refuse = (type: 'ClientProposeResult' | 'ClientReadResult', ids: number[]) =>
    sendOut(scope, refusal(batches, message.from, type, ids, calls.leader.leaderId));
  switch (message.type) {
    case 'ClientPropose': {
      if (!leading) {
        refuse('ClientProposeResult', message.seqs);
        return;
      }
      const valid = withoutUndecodable(batches, message, (answer) => sendOut(scope, answer));
      if (valid.seqs.length === 0) return;
      if (batches.proposals.length === 0) input.defer(() => proposeBatch(scope));
      batches.proposals.push(valid);
      return;
    }
    case 'ClientRead':
      if (!leading) {
        refuse('ClientReadResult', message.ids);
        return;
      }
      if (batches.reads.length === 0) input.defer(() => readBatch(scope));
      batches.reads.push(message);
      return;
    case 'ClientProposeResult':
      onProposeResult(calls, message);
      return;
    case 'ClientReadResult':
      onReadResult(calls, message);
      return;
  }
};

/** The raft machine's answers to this node's batches. */
const onMachineAnswer = (
  scope: Scope,
  event: Extract<RequestsEvent, { type: `proposals${string}` | `reads${string}` }>,
): void => {
  const { batches, calls, input } = scope;
  const send = (message: ClientMessage) => sendOut(scope, message);
  switch (event.type) {
    case 'proposalsAccepted':
    case 'proposalsRejected': {
      const accepted = event.type === 'proposalsAccepted';
      const answer = accepted
        ? { firstIndex: event.firstIndex, term: event.term, leaderId: input.id }
        : { firstIndex: 0, term: 0, leaderId: event.leaderId };
      const local = (seqs: number[], firstIndex: number) =>
        firstIndex > 0 ? writesAccepted(calls, seqs, firstIndex) : writesRefused(calls, seqs);
      answerBatch(batches, event.batchId, answer, local, send);
      return;
    }
    case 'readsReady':
      answerReads(
        batches,
        event.ids,
        { readIndex: event.readIndex, leaderId: input.id },
        (own) => readsConfirmed(calls, own, event.readIndex),
        send,
      );
      readRoundDone(scope);
      return;
    case 'readsRejected':
      answerReads(
        batches,
        event.ids,
        { readIndex: -1, leaderId: event.leaderId },
        (own) => readsRefused(calls, own),
        send,
      );
      readRoundDone(scope);
      return;
  }
};

export const requestsActor = fromCallback<RequestsEvent, RequestsInput>(
  ({ input, receive, system, self }) => {
    const batches = createLeaderBatches(input.id);
    const scope = { system, self, input, batches } as Scope;
    scope.calls = createCalls({
      ...input,
      proposeLocally: (seqs: number[], commands: Uint8Array[]) => {
        const own: ClientPropose = { type: 'ClientPropose', from: input.id, to: input.id, seqs, commands };
        batches.proposals.unshift(own);
        proposeBatch(scope);
      },
      readLocally: (ids: number[]) => {
        batches.reads.unshift({ type: 'ClientRead', from: input.id, to: input.id, ids });
        readBatch(scope);
      },
      send: (message) => sendOut(scope, message as unknown as ClientMessage),
    });
    const { calls } = scope;
    input.views.requests = { calls, batches };
    receive((event) => {
      switch (event.type) {
        case 'calls':
          takeCalls(calls, event.calls);
          return;
        case 'applied':
          applied(calls, event.appliedIndex, event.seqs);
          return;
        case 'restored':
          restored(calls, event.appliedIndex, event.settledBelow, event.applied);
          return;
        case 'leaderChanged':
          leaderChanged(calls, { self: event.self, leaderId: event.self ? input.id : event.leaderId });
          // The machine answered or rejected the batch in flight as its role changed; the reads
          // queued behind it go now (a machine that no longer leads rejects them at once).
          readRoundDone(scope);
          return;
        case 'client':
          receiveClientMessage(scope, event.message);
          return;
        case 'stop':
          stopCalls(calls);
          return;
        case 'removed':
          stopCalls(calls, 'REMOVED');
          return;
        default:
          onMachineAnswer(scope, event);
      }
    });
    return () => stopCalls(calls);
  },
);

export type { NodeId };
