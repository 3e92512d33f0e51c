/**
 * The raft machine: one XState statechart per server whose top-level states are the roles of
 * Raft (paper §5.1, Figure 4): follower, candidate (with PreVote, dissertation §9.6) and leader.
 *
 * Every message first meets the term rules of "Rules for All Servers" at the root, then is raised
 * again as a typed event (`AppendEntries`, `RequestVote`, ...) for the role to handle. The messages
 * of the replication hot path (AppendEntries and Heartbeat at a follower, their answers at a
 * leader) skip that second step when they are of the current term, the only case in which the root
 * would just route them: the role takes the `message` event itself, in one microstep. Timers are
 * XState delayed transitions (`after`), so the same machine runs on the real clock and on a
 * simulated one; each timer also has an explicit event (`electionTimeout`, `heartbeatTimeout`,
 * `checkQuorum`) so tests and tools can fire it by hand. The follower's election timer is the
 * exception (dissertation §3.4, etcd-io/raft's tick): it is reset by every message from the
 * leader, so it counts `tick` events that the node sends every `tickMs` (ticks.ts) from one clock
 * timer, and the follower starts an election on the tick that reaches its randomized timeout; a
 * reset per message then sets a counter, with no timer and no exit and entry of a state.
 *
 * The machine also decides which outputs may leave before the local persist is durable (`send`'s
 * `beforePersist`, raft.types.ts): the node's outbox only obeys it.
 *
 * The machine is pure: it reads only (context, event) and asks for everything else with emitted
 * outputs (see raft.types.ts). The bookkeeping per entry lives in raft-log.ts and progress.ts.
 */
import { and, enqueueActions, raise, setup } from 'xstate';
import type { RaftMessage } from './messages.js';
import type { Outcome, RaftContext, RaftEmitted, RaftEvent, RaftInput } from './raft.types.js';
import * as rules from './rules/index.js';

type MessageOf<T extends RaftMessage['type']> = Extract<RaftMessage, { type: T }>;

/** Messages whose only root rules are about their term (no PreVote cases): see `isOfCurrentTerm`. */
type HotMessageType = 'AppendEntries' | 'Heartbeat' | 'AppendEntriesResponse' | 'HeartbeatResponse';

/**
 * A rule's messages as `send` outputs in their order, one per run of messages that agree on
 * whether they may leave before the local persist (rules.mayLeaveBeforePersist, raft.types.ts).
 */
const sendOutputs = (messages: RaftMessage[]): RaftEmitted[] => {
  const outputs: RaftEmitted[] = [];
  let start = 0;
  let beforePersist = rules.mayLeaveBeforePersist(messages[0]!);
  for (let index = 1; index <= messages.length; index += 1) {
    const flag = index < messages.length && rules.mayLeaveBeforePersist(messages[index]!);
    if (index < messages.length && flag === beforePersist) continue;
    const run = start === 0 && index === messages.length ? messages : messages.slice(start, index);
    outputs.push({ type: 'send', messages: run, beforePersist });
    start = index;
    beforePersist = flag;
  }
  return outputs;
};

/** Wraps a rule so its outcome becomes XState actions: one assign, the outputs, then the `send` outputs. */
const rule = (decide: (context: RaftContext, event: RaftEvent) => Outcome) =>
  enqueueActions<RaftContext, RaftEvent, undefined, RaftEvent, never, never, never, never, RaftEmitted>(
    ({ context, event, enqueue }) => {
      const outcome = decide(context, event);
      if (outcome.patch && Object.keys(outcome.patch).length > 0) enqueue.assign(outcome.patch);
      for (const emitted of outcome.emitted ?? []) enqueue.emit(emitted);
      if (outcome.send && outcome.send.length > 0)
        for (const output of sendOutputs(outcome.send)) enqueue.emit(output);
    },
  );

const messageOf = <T extends RaftMessage['type']>(event: RaftEvent, type: T): MessageOf<T> => {
  if (event.type === 'message' && event.message.type === type) return event.message as MessageOf<T>;
  if (event.type === type && 'message' in event) return event.message as MessageOf<T>;
  throw new Error(`expected a ${type} event, got ${event.type}`);
};

const incoming = (event: RaftEvent): RaftMessage => {
  if (!('message' in event)) throw new Error(`expected a message event, got ${event.type}`);
  return event.message;
};

export const raftMachine = setup({
  types: {
    context: {} as RaftContext,
    events: {} as RaftEvent,
    input: {} as RaftInput,
    emitted: {} as RaftEmitted,
  },
  delays: {
    electionTimeout: ({ context }) => context.randomizedElectionTimeoutMs,
    heartbeatInterval: ({ context }) => context.heartbeatMs,
    quorumCheckInterval: ({ context }) => context.electionTimeoutMs,
  },
  guards: {
    isRecoveryRequest: ({ event }) => event.type === 'message' && event.message.type === 'RecoveryRequest',
    isRecoveryResponse: ({ event }) => event.type === 'message' && event.message.type === 'RecoveryResponse',
    isRecovering: ({ context }) => context.recovering,
    hasRecovered: ({ context }) => !context.recovering,
    isFromOlderTerm: ({ context, event }) => incoming(event).term < context.currentTerm,
    isPreVoteRequest: ({ event }) => {
      const message = incoming(event);
      return message.type === 'RequestVote' && message.preVote;
    },
    isGrantedPreVote: ({ event }) => {
      const message = incoming(event);
      return message.type === 'RequestVoteResponse' && message.preVote && message.voteGranted;
    },
    isFromNewerTerm: ({ context, event }) => incoming(event).term > context.currentTerm,
    /** A `message` of this type and of the current term: one the root's term rules would only route. */
    isOfCurrentTerm: ({ context, event }, params: { type: HotMessageType }) =>
      event.type === 'message' &&
      event.message.type === params.type &&
      event.message.term === context.currentTerm,
    canGrantVote: ({ context, event }) => rules.canGrantVote(context, messageOf(event, 'RequestVote')),
    isAnswerToOurPreVote: ({ context, event }) =>
      rules.isAnswerToOurPreVote(context, messageOf(event, 'RequestVoteResponse')),
    isAnswerToOurElection: ({ context, event }) =>
      rules.isAnswerToOurElection(context, messageOf(event, 'RequestVoteResponse')),
    hasVoteQuorum: ({ context }) => rules.hasVoteQuorum(context),
    hasRejectionQuorum: ({ context }) => rules.hasRejectionQuorum(context),
    hasLostQuorumContact: ({ context }) => rules.hasLostQuorumContact(context),
    isElectionDue: ({ context }) => rules.isElectionDue(context),
    mayCampaign: ({ context }) => rules.mayCampaign(context),
    isRemovedAnswer: ({ event }) => event.type === 'message' && event.message.type === 'Removed',
    /** A `Removed` this server accepts (membership.ts): a candidate or leader then stops. */
    isAcceptedRemoved: ({ context, event }) =>
      event.type === 'message' &&
      event.message.type === 'Removed' &&
      rules.acceptsRemoved(context, event.message),
    isFromRemovedServer: ({ context, event }) =>
      event.type === 'message' && rules.isFromRemovedServer(context, event.message),
    isRemovedLeader: ({ context }) => rules.isRemovedLeader(context),
    isCatchUpDone: ({ context }) => rules.isCatchUpDone(context),
  },
  actions: {
    adoptHigherTerm: rule((context, event) => rules.adoptHigherTerm(context, incoming(event))),
    answerStaleMessage: rule((context, event) => rules.answerStaleMessage(context, incoming(event))),
    answerPreVote: rule((context, event) => rules.answerPreVote(context, messageOf(event, 'RequestVote'))),
    answerRecovery: rule((context, event) =>
      rules.answerRecovery(context, messageOf(event, 'RecoveryRequest')),
    ),
    recordRecoveryAnswer: rule((context, event) =>
      rules.recordRecoveryAnswer(context, messageOf(event, 'RecoveryResponse')),
    ),
    enterRecovering: rule((context) => rules.enterRecovering(context)),
    noteClusterSeen: rule((context) => rules.noteClusterSeen(context)),
    retryRecovery: rule((context) => rules.retryRecovery(context)),
    appendWhileRecovering: rule((context, event) =>
      rules.appendWhileRecovering(context, messageOf(event, 'AppendEntries')),
    ),
    installWhileRecovering: rule((context, event) =>
      rules.installWhileRecovering(context, messageOf(event, 'InstallSnapshot')),
    ),
    routeByType: raise(({ event }) => {
      const message = incoming(event);
      return { type: message.type, message } as RaftEvent;
    }),
    redeliver: raise(({ event }) => event),
    resetElectionTimer: rule((context) => rules.resetElectionTimer(context)),
    countTick: rule((context) => rules.countTick(context)),
    forgetLeader: rule((context) => rules.forgetLeader(context)),
    grantVote: rule((context, event) => rules.grantVote(context, messageOf(event, 'RequestVote'))),
    rejectVote: rule((context, event) => rules.rejectVote(context, messageOf(event, 'RequestVote'))),
    startPreVote: rule((context) => rules.startPreVote(context)),
    startElection: rule((context) => rules.startElection(context)),
    recordVote: rule((context, event) => rules.recordVote(context, messageOf(event, 'RequestVoteResponse'))),
    appendFromLeader: rule((context, event) =>
      rules.appendFromLeader(context, messageOf(event, 'AppendEntries')),
    ),
    heartbeatFromLeader: rule((context, event) =>
      rules.heartbeatFromLeader(context, messageOf(event, 'Heartbeat')),
    ),
    installSnapshot: rule((context, event) =>
      rules.installSnapshot(context, messageOf(event, 'InstallSnapshot')),
    ),
    handleSnapshotResponse: rule((context, event) =>
      rules.handleSnapshotResponse(context, messageOf(event, 'InstallSnapshotResponse')),
    ),
    compactLog: rule((context, event) =>
      event.type === 'compact' ? rules.compactLog(context, event.index) : {},
    ),
    becomeLeader: rule((context) => rules.becomeLeader(context)),
    abandonLeadership: rule((context) => rules.abandonLeadership(context)),
    appendProposals: rule((context, event) =>
      event.type === 'propose' ? rules.appendProposals(context, event.batchId, event.commands) : {},
    ),
    rejectProposals: rule((context, event) =>
      event.type === 'propose' ? rules.rejectProposals(context, event.batchId) : {},
    ),
    handleAppendResponse: rule((context, event) =>
      rules.handleAppendResponse(context, messageOf(event, 'AppendEntriesResponse')),
    ),
    handleHeartbeatResponse: rule((context, event) =>
      rules.handleHeartbeatResponse(context, messageOf(event, 'HeartbeatResponse')),
    ),
    broadcastHeartbeat: rule((context) => rules.broadcastHeartbeat(context)),
    startReadRound: rule((context, event) =>
      event.type === 'readIndex' ? rules.startReadRound(context, event.ids) : {},
    ),
    rejectReads: rule((context, event) =>
      event.type === 'readIndex' ? rules.rejectReads(context, event.ids) : {},
    ),
    startQuorumRound: rule((context) => rules.startQuorumRound(context)),
    recordPersisted: rule((context, event) =>
      event.type === 'persisted' ? rules.recordPersisted(context, event.index) : {},
    ),
    leaderPersisted: rule((context, event) =>
      event.type === 'persisted' ? rules.leaderPersisted(context, event.index) : {},
    ),
    learnRemoved: rule((context, event) =>
      event.type === 'message' && event.message.type === 'Removed'
        ? rules.learnRemoved(context, event.message)
        : {},
    ),
    answerRemovedServer: rule((context, event) => rules.answerRemovedServer(context, incoming(event))),
    leaveAsRemovedLeader: rule((context) => rules.leaveAsRemovedLeader(context)),
    completeCatchUp: rule((context) => rules.completeCatchUp(context)),
    proposeReconfigure: rule((context, event) =>
      event.type === 'reconfigure'
        ? rules.startReconfigure(context, event.requestId, event.voters, event.addresses)
        : {},
    ),
    rejectReconfigure: rule((context, event) =>
      event.type === 'reconfigure' ? rules.rejectReconfigure(context, event.requestId) : {},
    ),
    assertOneLeaderPerTerm: ({ context, event }) => {
      throw new Error(
        `diskeyval invariant violated: ${context.id} leads term ${context.currentTerm} and got ${event.type} from another leader`,
      );
    },
  },
}).createMachine({
  id: 'raft',
  context: ({ input }) => rules.initialContext(input),
  initial: 'follower',
  on: {
    // Rules for All Servers: the term decides before the role does.
    message: [
      // Membership (membership.ts): a removed server is told so, whatever it sent; outside the term rules.
      { guard: 'isRemovedAnswer', actions: 'learnRemoved' },
      { guard: 'isFromRemovedServer', actions: 'answerRemovedServer' },
      // Recovery messages are outside the term rules (docs/design/recovery.md).
      { guard: 'isRecoveryRequest', actions: 'answerRecovery' },
      { guard: 'isRecoveryResponse', actions: 'recordRecoveryAnswer' },
      { guard: 'isFromOlderTerm', actions: 'answerStaleMessage' },
      { guard: 'isPreVoteRequest', actions: 'answerPreVote' },
      { guard: 'isGrantedPreVote', actions: 'routeByType' },
      { guard: 'isFromNewerTerm', target: '.follower', actions: ['adoptHigherTerm', 'redeliver'] },
      { actions: 'routeByType' },
    ],
    RequestVote: [
      { guard: 'canGrantVote', target: '.follower', actions: 'grantVote' },
      { actions: 'rejectVote' },
    ],
    propose: { actions: 'rejectProposals' },
    readIndex: { actions: 'rejectReads' },
    reconfigure: { actions: 'rejectReconfigure' },
    clusterSeen: { actions: 'noteClusterSeen' },
    persisted: { actions: 'recordPersisted' },
    compact: { actions: 'compactLog' },
  },
  states: {
    follower: {
      initial: 'entering',
      states: {
        entering: { always: [{ guard: 'isRecovering', target: 'recovering' }, { target: 'listening' }] },
        // Entered on becoming a follower, on a new term and on granting a vote: each restarts the count.
        listening: { entry: 'resetElectionTimer' },
        /**
         * A server that started without its earlier state (docs/design/recovery.md): it votes in no
         * election and starts none (the election timer only retries the recovery), its answers are
         * marked and not counted, until it has copied a leader's log as far as that leader reported.
         * Entered again on every new term: a new round, as the leader it copied from may be gone.
         */
        recovering: {
          entry: 'enterRecovering',
          always: { guard: 'hasRecovered', target: 'listening' },
          on: {
            tick: [{ guard: 'isElectionDue', actions: 'retryRecovery' }, { actions: 'countTick' }],
            electionTimeout: { actions: 'retryRecovery' },
            message: [
              {
                guard: { type: 'isOfCurrentTerm', params: { type: 'AppendEntries' } },
                actions: 'appendWhileRecovering',
              },
              {
                guard: { type: 'isOfCurrentTerm', params: { type: 'Heartbeat' } },
                actions: 'heartbeatFromLeader',
              },
            ],
            InstallSnapshot: { actions: 'installWhileRecovering' },
          },
        },
      },
      on: {
        // The election timer (§5.2): the ticks since the last reset reach the drawn timeout. Only a
        // member that was not removed campaigns (membership.ts); another forgets its leader (forgetLeader).
        tick: [
          { guard: and(['isElectionDue', 'mayCampaign']), target: 'candidate' },
          { guard: 'isElectionDue', actions: 'forgetLeader' },
          { actions: 'countTick' },
        ],
        electionTimeout: [{ guard: 'mayCampaign', target: 'candidate' }, { actions: 'forgetLeader' }],
        message: [
          // Hearing from the leader restarts the election timer.
          {
            guard: { type: 'isOfCurrentTerm', params: { type: 'AppendEntries' } },
            actions: ['appendFromLeader', 'resetElectionTimer'],
          },
          {
            guard: { type: 'isOfCurrentTerm', params: { type: 'Heartbeat' } },
            actions: ['heartbeatFromLeader', 'resetElectionTimer'],
          },
        ],
        // A snapshot comes from the leader too (§7): it restarts the election timer as well.
        InstallSnapshot: { actions: ['installSnapshot', 'resetElectionTimer'] },
      },
    },
    candidate: {
      initial: 'preVote',
      on: {
        // Told it was removed (membership.ts): it stops campaigning at once.
        message: { guard: 'isAcceptedRemoved', target: 'follower', actions: 'learnRemoved' },
        // §5.2: a candidate that hears from the leader of its term returns to follower.
        AppendEntries: { target: 'follower', actions: 'appendFromLeader' },
        Heartbeat: { target: 'follower', actions: 'heartbeatFromLeader' },
        InstallSnapshot: { target: 'follower', actions: 'installSnapshot' },
      },
      states: {
        preVote: {
          entry: 'startPreVote',
          after: { electionTimeout: { target: 'preVote', reenter: true } },
          on: {
            electionTimeout: { target: 'preVote', reenter: true },
            RequestVoteResponse: { guard: 'isAnswerToOurPreVote', actions: 'recordVote' },
          },
          always: [
            { guard: 'hasVoteQuorum', target: 'campaign' },
            { guard: 'hasRejectionQuorum', target: '#raft.follower' },
          ],
        },
        campaign: {
          entry: 'startElection',
          after: { electionTimeout: { target: 'preVote' } },
          on: {
            electionTimeout: { target: 'preVote' },
            RequestVoteResponse: { guard: 'isAnswerToOurElection', actions: 'recordVote' },
          },
          always: [
            { guard: 'hasVoteQuorum', target: '#raft.leader' },
            { guard: 'hasRejectionQuorum', target: '#raft.follower' },
          ],
        },
      },
    },
    leader: {
      entry: 'becomeLeader',
      exit: 'abandonLeadership',
      type: 'parallel',
      // §6: a leader outside C_new steps down once C_new is committed. §4.2.1: once the servers a
      // change adds have caught up as learners, C_old,new follows.
      always: [
        { guard: 'isRemovedLeader', target: 'follower', actions: 'leaveAsRemovedLeader' },
        { guard: 'isCatchUpDone', actions: 'completeCatchUp' },
      ],
      on: {
        AppendEntries: { actions: 'assertOneLeaderPerTerm' },
        Heartbeat: { actions: 'assertOneLeaderPerTerm' },
        InstallSnapshot: { actions: 'assertOneLeaderPerTerm' },
        InstallSnapshotResponse: { actions: 'handleSnapshotResponse' },
        message: [
          // Told it was removed by a newer committed configuration (a stale leader): it stops leading.
          { guard: 'isAcceptedRemoved', target: 'follower', actions: 'learnRemoved' },
          {
            guard: { type: 'isOfCurrentTerm', params: { type: 'AppendEntriesResponse' } },
            actions: 'handleAppendResponse',
          },
          {
            guard: { type: 'isOfCurrentTerm', params: { type: 'HeartbeatResponse' } },
            actions: 'handleHeartbeatResponse',
          },
        ],
        propose: { actions: 'appendProposals' },
        readIndex: { actions: 'startReadRound' },
        reconfigure: { actions: 'proposeReconfigure' },
        persisted: { actions: 'leaderPersisted' },
        heartbeatTimeout: { actions: 'broadcastHeartbeat' },
        checkQuorum: [{ guard: 'hasLostQuorumContact', target: 'follower' }, { actions: 'startQuorumRound' }],
      },
      states: {
        heartbeat: {
          initial: 'waiting',
          states: {
            waiting: {
              after: {
                heartbeatInterval: { target: 'waiting', reenter: true, actions: 'broadcastHeartbeat' },
              },
            },
          },
        },
        quorumCheck: {
          initial: 'waiting',
          states: {
            waiting: {
              after: {
                quorumCheckInterval: [
                  { guard: 'hasLostQuorumContact', target: '#raft.follower' },
                  { target: 'waiting', reenter: true, actions: 'startQuorumRound' },
                ],
              },
            },
          },
        },
      },
    },
  },
});

export type RaftMachine = typeof raftMachine;

/** The role a snapshot is in: its top-level state. */
export const roleOf = (value: unknown): 'follower' | 'candidate' | 'leader' => {
  const top = typeof value === 'string' ? value : Object.keys(value as object)[0];
  if (top === 'follower' || top === 'candidate' || top === 'leader') return top;
  throw new Error(`unknown role ${String(top)}`);
};
