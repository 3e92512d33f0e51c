/**
 * The machine decides what may leave before the local persist (dissertation §10.2.1, etcd-io/raft's
 * messages-after-append; raft.types.ts): only a leader's AppendEntries and Heartbeat carry
 * `beforePersist: true`; every answer and vote request waits. The broken variant that lets answers
 * go early is caught by test/sim/broken-durability.test.ts, which mocks this very rule.
 */
import { describe, expect, it } from 'vitest';
import type { RaftMessage } from '../../src/machines/messages.js';
import { goesBeforePersist, type RaftEmitted } from '../../src/machines/raft.types.js';
import { mayLeaveBeforePersist } from '../../src/machines/rules/index.js';
import { createCluster } from './cluster.js';

const VOTERS = ['s1', 's2', 's3'];
const EARLY = new Set<RaftMessage['type']>(['AppendEntries', 'Heartbeat']);

/** Every send output of every server: the flag, and the message types, in emission order. */
const sends = (outputs: RaftEmitted[]) =>
  outputs.flatMap((output) =>
    output.type === 'send'
      ? [{ beforePersist: output.beforePersist, types: output.messages.map((m) => m.type) }]
      : [],
  );

describe('persist order, as the machine states it', () => {
  it('marks exactly the leader replication messages, through a whole election, writes and a recovery', () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    cluster.settle();
    expect(cluster.role('s1')).toBe('leader');
    cluster.send('s1', { type: 'propose', batchId: 1, commands: [new Uint8Array([1]), new Uint8Array([2])] });
    cluster.send('s1', { type: 'heartbeatTimeout' });
    cluster.settle();
    const seen = new Set<string>();
    for (const id of VOTERS) {
      for (const send of sends(cluster.server(id).outputs)) {
        for (const type of send.types) {
          expect(EARLY.has(type), `${id} ${type}`).toBe(send.beforePersist);
          seen.add(`${type}:${send.beforePersist}`);
        }
      }
    }
    expect([...seen].sort()).toEqual([
      'AppendEntries:true',
      'AppendEntriesResponse:false',
      'Heartbeat:true',
      'HeartbeatResponse:false',
      'RequestVote:false',
      'RequestVoteResponse:false',
    ]);
    for (const type of EARLY) expect(mayLeaveBeforePersist({ type } as RaftMessage)).toBe(true);
    cluster.stop();
  });

  it("a follower's answer comes after the persist it acknowledges, in its own output", () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    cluster.settle();
    cluster.server('s2').outputs.length = 0;
    cluster.send('s1', { type: 'propose', batchId: 1, commands: [new Uint8Array([7])] });
    cluster.settle();
    const outputs = cluster.server('s2').outputs;
    const persist = outputs.findIndex((output) => output.type === 'persist' && output.entries.length > 0);
    const answer = outputs.findIndex(
      (output) => output.type === 'send' && output.messages.some((m) => m.type === 'AppendEntriesResponse'),
    );
    expect(persist).toBeGreaterThanOrEqual(0);
    expect(answer).toBeGreaterThan(persist);
    expect(goesBeforePersist(outputs[answer]!)).toBe(false);
    expect(outputs.filter(goesBeforePersist)).toEqual([]);
    cluster.stop();
  });

  it('splits one rule that sends both kinds into runs, keeping their order', () => {
    const cluster = createCluster(VOTERS);
    cluster.send('s1', { type: 'electionTimeout' });
    cluster.settle();
    cluster.server('s1').outputs.length = 0;
    // A leader answers a RecoveryRequest and probes the asker at once: an answer, then an append.
    cluster.send('s1', {
      type: 'message',
      message: { type: 'RecoveryRequest', from: 's2', to: 's1', term: 0, incarnation: 5, round: 1 },
    });
    expect(sends(cluster.server('s1').outputs)).toEqual([
      { beforePersist: false, types: ['RecoveryResponse'] },
      { beforePersist: true, types: ['AppendEntries'] },
    ]);
    cluster.stop();
  });

  it('never marks an output other than a send, and goesBeforePersist reads only the flag', () => {
    const others: RaftEmitted[] = [
      { type: 'persist', hardState: { term: 1, votedFor: null }, fromIndex: -1, entries: [] },
      { type: 'committed', firstIndex: 1, entries: [] },
      { type: 'proposalsAccepted', batchId: 1, firstIndex: 1, term: 1 },
      { type: 'readsReady', ids: [1], readIndex: 1 },
    ];
    for (const output of others) expect(goesBeforePersist(output)).toBe(false);
    expect(goesBeforePersist({ type: 'send', messages: [], beforePersist: true })).toBe(true);
    expect(goesBeforePersist({ type: 'send', messages: [], beforePersist: false })).toBe(false);
  });
});
