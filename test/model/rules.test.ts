/**
 * Rule by rule: hand-written scenarios run on the raft machine and on the reference spec at once.
 * Every step checks that both agree (state and the messages that are not a leader's replication
 * traffic), then the test states what the rule demands.
 */

import { describe, expect, it } from 'vitest';
import { createActor } from 'xstate';
import type {
  AppendEntries,
  AppendEntriesResponse,
  Entry,
  Heartbeat,
  NodeId,
  RaftMessage,
  RequestVote,
  RequestVoteResponse,
} from '../../src/machines/messages.js';
import { raftMachine, roleOf } from '../../src/machines/raft.machine.js';
import type { RaftEmitted, RaftEvent } from '../../src/machines/raft.types.js';
import { compareWithSpec, createWorld, runCmd, stopWorld } from './harness.js';
import { FIGURE_8_CONFIG, FIGURE_8_MATCH_STEPS, figure8Script } from './scenarios.js';
import * as spec from './spec.js';

// ---------------------------------------------------------------------------------------------
// One machine and one spec server, stepped together

const frozenClock = { setTimeout: () => 0, clearTimeout: () => {} };
const bytes = (text: string) => new TextEncoder().encode(text);
const cmd = (term: number, text = `x${term}`): Entry => ({ term, kind: 'command', data: bytes(text) });
const noop = (term: number): Entry => ({ term, kind: 'noop', data: null });
const termsOf = (log: readonly Entry[]) => log.map((e) => e.term);

type Persisted = { term: number; votedFor: NodeId | null; log: Entry[] };

const server = (
  id: NodeId,
  voters: NodeId[],
  persisted: Persisted = { term: 0, votedFor: null, log: [] },
) => {
  const outputs: RaftEmitted[] = [];
  const actor = createActor(raftMachine, {
    input: {
      id,
      voters,
      electionTimeoutMs: 100,
      heartbeatMs: 10,
      seed: 1,
      hardState: { term: persisted.term, votedFor: persisted.votedFor },
      entries: persisted.log,
      maxEntriesPerAppend: 1,
      incarnation: 1,
    },
    clock: frozenClock,
  });
  actor.on('*', (emitted) => outputs.push(emitted as RaftEmitted));
  actor.subscribe({ error: () => {} });
  actor.start();
  let model = spec.initServer(id, voters, persisted);

  const run = (event: RaftEvent, action: (s: spec.SpecServer) => spec.SpecStep) => {
    outputs.length = 0;
    actor.send(event);
    const snapshot = actor.getSnapshot();
    expect(snapshot.status, String(snapshot.error)).toBe('active');
    const step = action(model);
    model = step.server;
    expect(compareWithSpec(model, snapshot.value, snapshot.context)).toEqual([]);
    const sent = outputs.flatMap((o) => (o.type === 'send' ? o.messages : []));
    const replies = sent.filter((m) => m.type !== 'AppendEntries' && m.type !== 'Heartbeat');
    expect(replies).toEqual(step.send);
    for (const m of sent) {
      if (m.type === 'AppendEntries' || m.type === 'Heartbeat')
        expect(spec.leaderMayHaveSent(model, m)).toBeNull();
    }
    return { sent, outputs: [...outputs] };
  };

  return {
    deliver: (message: RaftMessage) => run({ type: 'message', message }, (s) => spec.receive(s, message)),
    timeout: () => run({ type: 'electionTimeout' }, spec.timeout),
    checkQuorum: () => run({ type: 'checkQuorum' }, spec.checkQuorum),
    heartbeat: () => run({ type: 'heartbeatTimeout' }, spec.heartbeatTimeout),
    propose: (...texts: string[]) => {
      const commands = texts.map(bytes);
      return run({ type: 'propose', batchId: 1, commands }, (s) => spec.clientRequest(s, commands));
    },
    read: (ids: number[]) => run({ type: 'readIndex', ids }, (s) => ({ server: s, send: [] })),
    context: () => actor.getSnapshot().context,
    role: () => roleOf(actor.getSnapshot().value),
    spec: () => model,
  };
};

type Server = ReturnType<typeof server>;

const requestVote = (
  from: NodeId,
  to: NodeId,
  term: number,
  last: [number, number],
  preVote = false,
): RequestVote => ({
  type: 'RequestVote',
  from,
  to,
  term,
  lastLogIndex: last[0],
  lastLogTerm: last[1],
  preVote,
});

/**
 * A vote answer as the rules build it: it carries the voter's incarnation (1 here) and crash vector
 * (docs/design/recovery.md); assertions match it with toMatchObject, leaving the vector's content
 * to the recovery tests.
 */
const voteAnswer = (
  from: NodeId,
  to: NodeId,
  term: number,
  granted: boolean,
  preVote = false,
): RequestVoteResponse => ({
  type: 'RequestVoteResponse',
  from,
  to,
  term,
  voteGranted: granted,
  preVote,
  incarnation: 1,
});

const appendEntries = (
  from: NodeId,
  to: NodeId,
  term: number,
  prev: [number, number],
  entries: Entry[],
  leaderCommit = 0,
): AppendEntries => ({
  type: 'AppendEntries',
  from,
  to,
  term,
  prevLogIndex: prev[0],
  prevLogTerm: prev[1],
  entries,
  leaderCommit,
});

const heartbeat = (from: NodeId, to: NodeId, term: number, commit: number): Heartbeat => ({
  type: 'Heartbeat',
  from,
  to,
  term,
  commit,
  seq: 0,
});

const appendAnswer = (from: NodeId, to: NodeId, term: number, matchIndex: number): AppendEntriesResponse => ({
  type: 'AppendEntriesResponse',
  incarnation: 1,
  from,
  to,
  term,
  success: true,
  matchIndex,
  rejectedIndex: 0,
  conflictIndex: 0,
  conflictTerm: 0,
});

const ABC = ['a', 'b', 'c'];

/** Server a of {a, b, c} elected leader of term `term` + 1 with b's votes. */
const leaderA = (persisted?: Persisted): Server => {
  const a = server('a', ABC, persisted);
  const term = (persisted?.term ?? 0) + 1;
  a.timeout();
  a.deliver(voteAnswer('b', 'a', term, true, true));
  a.deliver(voteAnswer('b', 'a', term, true));
  expect(a.role()).toBe('leader');
  return a;
};

// ---------------------------------------------------------------------------------------------

describe('RequestVote', () => {
  it('refuses a stale RequestVote with its own term', () => {
    const b = server('b', ABC, { term: 3, votedFor: null, log: [] });
    const { sent } = b.deliver(requestVote('a', 'b', 2, [5, 2]));
    expect(sent).toMatchObject([voteAnswer('b', 'a', 3, false)]);
    expect(b.context().currentTerm).toBe(3);
    expect(b.context().votedFor).toBeNull();
  });

  it('votes once per term: refuses a second candidate, grants the same one again', () => {
    const c = server('c', ABC, { term: 1, votedFor: null, log: [] });
    expect(c.deliver(requestVote('a', 'c', 1, [0, 0])).sent).toMatchObject([voteAnswer('c', 'a', 1, true)]);
    expect(c.deliver(requestVote('b', 'c', 1, [0, 0])).sent).toMatchObject([voteAnswer('c', 'b', 1, false)]);
    expect(c.deliver(requestVote('a', 'c', 1, [0, 0])).sent).toMatchObject([voteAnswer('c', 'a', 1, true)]);
    expect(c.context().votedFor).toBe('a');
  });

  it('refuses a candidate whose last term is lower, even with a longer log', () => {
    const c = server('c', ABC, { term: 3, votedFor: null, log: [cmd(1), cmd(3)] });
    expect(c.deliver(requestVote('a', 'c', 4, [9, 2])).sent).toMatchObject([voteAnswer('c', 'a', 4, false)]);
    expect(c.context().votedFor).toBeNull();
  });

  it('refuses the same last term with a shorter log, grants it with an equal one', () => {
    const c = server('c', ABC, { term: 2, votedFor: null, log: [cmd(1), cmd(2), cmd(2)] });
    expect(c.deliver(requestVote('a', 'c', 3, [2, 2])).sent).toMatchObject([voteAnswer('c', 'a', 3, false)]);
    expect(c.deliver(requestVote('b', 'c', 3, [3, 2])).sent).toMatchObject([voteAnswer('c', 'b', 3, true)]);
  });

  it('grants a candidate whose last term is higher, even with a shorter log', () => {
    const c = server('c', ABC, { term: 2, votedFor: null, log: [cmd(1), cmd(1), cmd(2)] });
    expect(c.deliver(requestVote('a', 'c', 4, [1, 3])).sent).toMatchObject([voteAnswer('c', 'a', 4, true)]);
  });

  it('a higher-term request moves the receiver to that term; the vote is persisted before the grant', () => {
    const b = server('b', ABC, { term: 1, votedFor: 'c', log: [] });
    const { outputs } = b.deliver(requestVote('a', 'b', 5, [0, 0]));
    expect(b.context().currentTerm).toBe(5);
    expect(b.context().votedFor).toBe('a');
    const lastPersist = outputs.map((o) => o.type).lastIndexOf('persist');
    const firstSend = outputs.findIndex((o) => o.type === 'send');
    expect(outputs[lastPersist]).toMatchObject({ type: 'persist', hardState: { term: 5, votedFor: 'a' } });
    expect(lastPersist).toBeLessThan(firstSend);
  });
});

describe('AppendEntries', () => {
  it('refuses a stale AppendEntries and a stale Heartbeat with its own term', () => {
    const b = server('b', ABC, { term: 4, votedFor: null, log: [cmd(1), cmd(2)] });
    expect(b.deliver(appendEntries('a', 'b', 3, [2, 2], [])).sent).toEqual([
      expect.objectContaining({ type: 'AppendEntriesResponse', term: 4, success: false, rejectedIndex: 2 }),
    ]);
    expect(b.deliver(heartbeat('a', 'b', 3, 2)).sent).toEqual([
      { type: 'HeartbeatResponse', from: 'b', to: 'a', term: 4, seq: 0, incarnation: 1 },
    ]);
    expect(b.context().leaderId).toBeNull();
    expect(b.context().commitIndex).toBe(0);
  });

  it('rejects when its log is too short, hinting lastIndex + 1', () => {
    const b = server('b', ABC, { term: 2, votedFor: null, log: [cmd(1)] });
    const { sent } = b.deliver(appendEntries('a', 'b', 2, [4, 2], [cmd(2)]));
    expect(sent).toEqual([
      expect.objectContaining({ success: false, rejectedIndex: 4, conflictTerm: 0, conflictIndex: 2 }),
    ]);
    expect(b.context().leaderId).toBe('a');
  });

  it('rejects on a term mismatch, hinting the term there and the first index of that term', () => {
    const b = server('b', ABC, { term: 3, votedFor: null, log: [cmd(1), cmd(2), cmd(2), cmd(2)] });
    const { sent } = b.deliver(appendEntries('a', 'b', 3, [4, 3], []));
    expect(sent).toEqual([
      expect.objectContaining({ success: false, rejectedIndex: 4, conflictTerm: 2, conflictIndex: 2 }),
    ]);
    expect(termsOf(b.context().log.entries)).toEqual([1, 2, 2, 2]);
  });

  it('deletes a conflicting entry and everything after it, then appends', () => {
    const b = server('b', ABC, { term: 3, votedFor: null, log: [cmd(1), cmd(1), cmd(2), cmd(2)] });
    const { sent, outputs } = b.deliver(appendEntries('a', 'b', 3, [2, 1], [cmd(3, 'new')]));
    expect(termsOf(b.context().log.entries)).toEqual([1, 1, 3]);
    expect(sent).toEqual([appendAnswer('b', 'a', 3, 3)]);
    expect(outputs[0]).toMatchObject({ type: 'persist', fromIndex: 3, entries: [{ term: 3 }] });
  });

  it('a duplicate or stale AppendEntries does not truncate a matching log', () => {
    const log = [cmd(1, 'p'), cmd(1, 'q'), cmd(1, 'r')];
    const b = server('b', ABC, { term: 1, votedFor: null, log });
    const { sent, outputs } = b.deliver(appendEntries('a', 'b', 1, [0, 0], [log[0]!]));
    expect(b.context().log.entries).toHaveLength(3);
    expect(sent).toEqual([appendAnswer('b', 'a', 1, 1)]);
    expect(outputs.some((o) => o.type === 'persist')).toBe(false);
  });

  it('commits min(leaderCommit, index of the last new entry)', () => {
    const b = server('b', ABC, { term: 1, votedFor: null, log: [cmd(1), cmd(1), cmd(1)] });
    b.deliver(appendEntries('a', 'b', 1, [0, 0], [cmd(1)], 3));
    expect(b.context().commitIndex).toBe(1);
    b.deliver(appendEntries('a', 'b', 1, [1, 1], [cmd(1)], 3));
    expect(b.context().commitIndex).toBe(2);
  });

  it('never moves commitIndex back on an AppendEntries with a lower leaderCommit', () => {
    const b = server('b', ABC, { term: 1, votedFor: null, log: [cmd(1), cmd(1)] });
    b.deliver(appendEntries('a', 'b', 1, [2, 1], [], 2));
    expect(b.context().commitIndex).toBe(2);
    b.deliver(appendEntries('a', 'b', 1, [0, 0], [], 0));
    expect(b.context().commitIndex).toBe(2);
  });

  it('a Heartbeat names the leader and commits min(commit, lastIndex)', () => {
    const b = server('b', ABC, { term: 2, votedFor: null, log: [cmd(1), cmd(2)] });
    const { sent } = b.deliver(heartbeat('a', 'b', 2, 5));
    expect(b.context().commitIndex).toBe(2);
    expect(b.context().leaderId).toBe('a');
    expect(sent).toEqual([
      { type: 'HeartbeatResponse', from: 'b', to: 'a', term: 2, seq: 0, incarnation: 1 },
    ]);
  });

  it('a candidate that hears from the leader of its term returns to follower', () => {
    const b = server('b', ABC, { term: 2, votedFor: null, log: [] });
    b.timeout();
    expect(b.role()).toBe('candidate');
    b.deliver(appendEntries('a', 'b', 2, [0, 0], [noop(2)]));
    expect(b.role()).toBe('follower');
    expect(b.context().leaderId).toBe('a');
  });
});

describe('PreVote', () => {
  it('a timeout polls at term + 1 without bumping the term or the vote', () => {
    const a = server('a', ABC, { term: 4, votedFor: 'c', log: [cmd(2)] });
    const { sent, outputs } = a.timeout();
    expect(a.role()).toBe('candidate');
    expect(a.context().currentTerm).toBe(4);
    expect(a.context().votedFor).toBe('c');
    expect(sent).toEqual([requestVote('a', 'b', 5, [1, 2], true), requestVote('a', 'c', 5, [1, 2], true)]);
    expect(outputs.some((o) => o.type === 'persist')).toBe(false);
  });

  it('grants a pre-vote with the proposed term and changes nothing; refuses a stale log', () => {
    const b = server('b', ABC, { term: 1, votedFor: 'c', log: [cmd(1)] });
    expect(b.deliver(requestVote('a', 'b', 2, [1, 1], true)).sent).toMatchObject([
      voteAnswer('b', 'a', 2, true, true),
    ]);
    expect(b.context().currentTerm).toBe(1);
    expect(b.context().votedFor).toBe('c');
    expect(b.deliver(requestVote('c', 'b', 2, [0, 0], true)).sent).toMatchObject([
      voteAnswer('b', 'c', 1, false, true),
    ]);
  });

  it('refuses a pre-vote while it knows a leader', () => {
    const b = server('b', ABC, { term: 1, votedFor: null, log: [] });
    b.deliver(heartbeat('a', 'b', 1, 0));
    expect(b.deliver(requestVote('c', 'b', 2, [0, 0], true)).sent).toMatchObject([
      voteAnswer('b', 'c', 1, false, true),
    ]);
  });

  it('a granted pre-vote of a higher term does not move the term; a majority starts the campaign', () => {
    const a = server('a', ABC, { term: 2, votedFor: null, log: [] });
    a.timeout();
    const { sent } = a.deliver(voteAnswer('b', 'a', 3, true, true));
    expect(a.context().currentTerm).toBe(3);
    expect(a.context().votedFor).toBe('a');
    expect(a.spec().phase).toBe('campaign');
    expect(sent).toEqual([requestVote('a', 'b', 3, [0, 0]), requestVote('a', 'c', 3, [0, 0])]);
  });

  it('a majority of refusals sends a pre-candidate back to follower', () => {
    const a = server('a', ABC, { term: 2, votedFor: null, log: [] });
    a.timeout();
    a.deliver(voteAnswer('b', 'a', 2, false, true));
    expect(a.role()).toBe('candidate');
    a.deliver(voteAnswer('c', 'a', 2, false, true));
    expect(a.role()).toBe('follower');
    expect(a.context().currentTerm).toBe(2);
  });

  it('a refused pre-vote of a higher term makes the pre-candidate adopt that term', () => {
    const a = server('a', ABC, { term: 2, votedFor: 'a', log: [] });
    a.timeout();
    a.deliver(voteAnswer('b', 'a', 7, false, true));
    expect(a.role()).toBe('follower');
    expect(a.context().currentTerm).toBe(7);
    expect(a.context().votedFor).toBeNull();
  });
});

describe('leaders', () => {
  it('a new leader appends a no-op of its term and sends it to every peer', () => {
    const a = leaderA({ term: 1, votedFor: null, log: [cmd(1)] });
    expect(a.context().log.entries).toEqual([cmd(1), noop(2)]);
    expect(a.context().commitIndex).toBe(0);
    expect(a.context().leaderId).toBe('a');
  });

  it('CheckQuorum: a leader steps down when no peer answered since the last check', () => {
    const a = leaderA();
    a.checkQuorum();
    a.deliver(appendAnswer('b', 'a', 1, 1));
    a.checkQuorum();
    expect(a.role()).toBe('leader');
    a.checkQuorum();
    expect(a.role()).toBe('follower');
    expect(a.context().leaderId).toBeNull();
    expect(a.context().currentTerm).toBe(1);
  });

  it('a higher-term answer makes a leader step down', () => {
    const a = leaderA();
    a.deliver({ ...appendAnswer('b', 'a', 3, 0), success: false });
    expect(a.role()).toBe('follower');
    expect(a.context().currentTerm).toBe(3);
    expect(a.context().leaderId).toBeNull();
  });

  it('commits once a majority matches an entry of its term, and heartbeats carry min(match, commit)', () => {
    const a = leaderA();
    a.deliver(appendAnswer('b', 'a', 1, 1));
    expect(a.context().commitIndex).toBe(1);
    const { sent } = a.heartbeat();
    expect(sent).toEqual([heartbeat('a', 'b', 1, 1), heartbeat('a', 'c', 1, 0)]);
  });

  it('a single-server cluster elects itself and commits on propose', () => {
    const s = server('s', ['s']);
    s.timeout();
    expect(s.role()).toBe('leader');
    expect(s.context().commitIndex).toBe(1);
    const { outputs } = s.propose('x', 'y');
    expect(outputs).toContainEqual({ type: 'proposalsAccepted', batchId: 1, firstIndex: 2, term: 1 });
    expect(outputs).toContainEqual({ type: 'committed', firstIndex: 2, entries: [cmd(1, 'x'), cmd(1, 'y')] });
    expect(s.context().commitIndex).toBe(3);
  });

  it('proposals on a follower are rejected, naming the leader it knows', () => {
    const b = server('b', ABC, { term: 1, votedFor: null, log: [] });
    b.deliver(heartbeat('a', 'b', 1, 0));
    const { outputs } = b.propose('x');
    expect(outputs).toEqual([{ type: 'proposalsRejected', batchId: 1, leaderId: 'a' }]);
    expect(b.context().log.entries).toEqual([]);
  });

  it('readIndex on a leader before its first commit waits, then needs a heartbeat quorum', () => {
    const a = leaderA();
    expect(a.read([7]).outputs.filter((o) => o.type === 'readsReady')).toEqual([]);
    const committed = a.deliver(appendAnswer('b', 'a', 1, 1));
    expect(a.context().commitIndex).toBe(1);
    expect(committed.outputs.filter((o) => o.type === 'readsReady')).toEqual([]);
    const round = committed.sent.find((m): m is Heartbeat => m.type === 'Heartbeat');
    expect(round).toBeDefined();
    const { outputs } = a.deliver({
      type: 'HeartbeatResponse',
      incarnation: 1,
      from: 'c',
      to: 'a',
      term: 1,
      seq: round!.seq,
    });
    expect(outputs).toContainEqual({ type: 'readsReady', ids: [7], readIndex: 1 });
  });

  it('readIndex on a follower is rejected', () => {
    const b = server('b', ABC);
    expect(b.read([1]).outputs).toEqual([{ type: 'readsRejected', ids: [1], leaderId: null }]);
  });
});

describe('whole clusters (harness)', () => {
  it('Figure 8: a leader does not commit entries of an earlier term by counting replicas', () => {
    const world = createWorld(FIGURE_8_CONFIG);
    try {
      figure8Script.forEach((command, step) => {
        runCmd(world, command);
        const a = world.spec.a!;
        if (step === FIGURE_8_MATCH_STEPS.one) expect([a.matchIndex.b, a.commitIndex]).toEqual([1, 0]);
        if (step === FIGURE_8_MATCH_STEPS.two) expect([a.matchIndex.b, a.commitIndex]).toEqual([2, 0]);
      });
      const a = world.impl.a!.actor.getSnapshot().context;
      expect(termsOf(a.log.entries)).toEqual([1, 1, 2]);
      expect(a.commitIndex).toBe(3);
    } finally {
      stopWorld(world);
    }
  });

  it('Restart keeps term, vote and log, and forgets commitIndex and the leader', () => {
    const world = createWorld({ servers: 3, maxInflight: 8, maxEntriesPerAppend: 512, seed: 3 });
    try {
      runCmd(world, { kind: 'timeout', server: 0 });
      runCmd(world, { kind: 'deliverMany', count: 8 });
      runCmd(world, { kind: 'propose', server: 'leader', count: 2 });
      runCmd(world, { kind: 'deliverMany', count: 12 });
      const before = world.impl.b!.actor.getSnapshot().context;
      expect(before.commitIndex).toBe(3);
      expect(before.leaderId).toBe('a');
      const [term, vote, log] = [before.currentTerm, before.votedFor, [...before.log.entries]];
      runCmd(world, { kind: 'restart', server: 1 });
      const after = world.impl.b!.actor.getSnapshot().context;
      expect([after.currentTerm, after.votedFor, after.log.entries]).toEqual([term, vote, log]);
      expect([after.commitIndex, after.leaderId]).toEqual([0, null]);
    } finally {
      stopWorld(world);
    }
  });
});

describe('the spec alone', () => {
  it('AdvanceCommitIndex counts the leader itself and needs an entry of the current term', () => {
    const base = spec.initServer('a', ABC, { term: 2, votedFor: 'a', log: [cmd(1), noop(2)] });
    const leader: spec.SpecServer = { ...base, role: 'leader', leaderId: 'a', matchIndex: { b: 1, c: 0 } };
    expect(spec.advanceCommitIndex(leader).commitIndex).toBe(0);
    expect(spec.advanceCommitIndex({ ...leader, matchIndex: { b: 2, c: 0 } }).commitIndex).toBe(2);
  });

  it('the conflict hint is (0, lastIndex + 1) past the end and the first index of the term otherwise', () => {
    const log = [cmd(1), cmd(2), cmd(2), cmd(3)];
    expect(spec.conflictHint(log, 7)).toEqual({ conflictTerm: 0, conflictIndex: 5 });
    expect(spec.conflictHint(log, 3)).toEqual({ conflictTerm: 2, conflictIndex: 2 });
    expect(spec.conflictHint(log, 1)).toEqual({ conflictTerm: 1, conflictIndex: 1 });
  });

  it('leaderMayHaveSent refuses AppendEntries that do not match the leader log or overstate the commit', () => {
    const base = spec.initServer('a', ABC, { term: 2, votedFor: 'a', log: [cmd(1), noop(2)] });
    const leader: spec.SpecServer = { ...base, role: 'leader', leaderId: 'a', matchIndex: { b: 0, c: 0 } };
    expect(spec.leaderMayHaveSent(leader, appendEntries('a', 'b', 2, [1, 1], [noop(2)]))).toBeNull();
    expect(spec.leaderMayHaveSent(leader, appendEntries('a', 'b', 2, [1, 2], [noop(2)]))).toMatch(
      /prevLogTerm/,
    );
    expect(spec.leaderMayHaveSent(leader, appendEntries('a', 'b', 2, [1, 1], [cmd(2)]))).toMatch(/differs/);
    expect(spec.leaderMayHaveSent(leader, appendEntries('a', 'b', 2, [0, 0], [], 1))).toMatch(/leaderCommit/);
    expect(spec.leaderMayHaveSent({ ...leader, role: 'follower' }, heartbeat('a', 'b', 2, 0))).toMatch(
      /not a leader/,
    );
  });
});
