/**
 * What `summarizingInspect` (src/actors/inspection.ts) passes on to the user's observer, driven by
 * hand with a manual clock (no node, no timing):
 *
 * - a callback actor's snapshot (no context, the same object after every event) goes once;
 * - a machine's snapshot goes at once when a milestone changes (status, state value, term, leader,
 *   recovering), in order with the events around it;
 * - a machine's snapshots that change nothing but indexes go at most once per window: the first at
 *   once, the latest of the window at its end, none lost at the end (the observer always ends on
 *   the actor's current snapshot);
 * - events between actors arrive summarized (byte arrays as lengths, deep lists as counts);
 * - an observer object (`{ next }`, as @statelyai/inspect's `inspector.inspect`) gets the same.
 *
 * Broken variants this catches: a wrapper that drops held snapshots at the window's end (the last
 * assertion of the window test), one that holds a role change back (the milestone test), one that
 * forwards every repeated callback snapshot (the first test's count).
 */
import { describe, expect, it } from 'vitest';
import type { InspectionEvent } from 'xstate';
import type { Clock } from '../../src/actors/deadlines.js';
import {
  INSPECT_SLICE_MS,
  type InspectOptions,
  isReplicationTraffic,
  SNAPSHOT_WINDOW_MS,
  summarizingInspect,
} from '../../src/actors/inspection.js';

/** A clock the test advances by hand: timers fire in due order when `advance` passes them. */
const manualClock = () => {
  let nowMs = 0;
  let nextId = 1;
  const timers = new Map<number, { dueMs: number; fn: () => void }>();
  const clock: Clock = {
    setTimeout: (fn, ms) => {
      const id = nextId++;
      timers.set(id, { dueMs: nowMs + ms, fn: fn as () => void });
      return id;
    },
    clearTimeout: (id) => {
      timers.delete(id as number);
    },
  };
  const advance = (ms: number): void => {
    const until = nowMs + ms;
    for (;;) {
      const due = [...timers.entries()]
        .filter(([, timer]) => timer.dueMs <= until)
        .sort((a, b) => a[1].dueMs - b[1].dueMs)[0];
      if (!due) break;
      timers.delete(due[0]);
      nowMs = due[1].dueMs;
      due[1].fn();
    }
    nowMs = until;
  };
  return { clock, advance, pending: () => timers.size };
};

/** No budget (every event goes), a wall clock that stands still, fresh counters. */
const unlimited = (): InspectOptions => ({
  eventsPerSecond: Number.POSITIVE_INFINITY,
  wallClockMs: () => 0,
  counters: { sentEvents: 0, skippedEvents: 0 },
});

const raftRef = { systemId: 'n1/raft' };
const peerRef = { systemId: 'n1/peer:n2' };

type Context = { currentTerm: number; leaderId: string | null; recovering: boolean; commitIndex: number };

const machineSnapshot = (value: unknown, context: Context) =>
  ({
    type: '@xstate.snapshot',
    actorRef: raftRef,
    event: { type: 'message' },
    snapshot: { status: 'active', value, context },
  }) as unknown as InspectionEvent;

const leaderAt = (commitIndex: number): InspectionEvent =>
  machineSnapshot({ leader: 'waiting' }, { currentTerm: 2, leaderId: 'n1', recovering: false, commitIndex });

const commitOf = (event: InspectionEvent): number =>
  (event as unknown as { snapshot: { context: Context } }).snapshot.context.commitIndex;

describe('summarizingInspect', () => {
  it("passes a callback actor's unchanged snapshot once, and every event summarized", () => {
    const { clock } = manualClock();
    const seen: InspectionEvent[] = [];
    const inspect = summarizingInspect((event) => seen.push(event), clock, unlimited());
    const callbackSnapshot = { status: 'active', output: undefined, error: undefined };
    for (let round = 0; round < 5; round += 1) {
      inspect({
        type: '@xstate.event',
        actorRef: peerRef,
        sourceRef: raftRef,
        event: { type: 'send', messages: [{ entries: [new Uint8Array(300)] }], big: new Uint8Array(1000) },
      } as unknown as InspectionEvent);
      inspect({
        type: '@xstate.snapshot',
        actorRef: peerRef,
        event: { type: 'send' },
        snapshot: callbackSnapshot,
      } as unknown as InspectionEvent);
    }
    expect(seen.filter((event) => event.type === '@xstate.event')).toHaveLength(5);
    expect(seen.filter((event) => event.type === '@xstate.snapshot')).toHaveLength(1);
    const first = seen[0] as unknown as { event: Record<string, unknown> };
    expect(first.event).toEqual({
      type: 'send',
      messages: [{ entries: { count: 1 } }],
      big: { bytes: 1000 },
    });
    // A new snapshot object of a callback actor (it stopped) goes.
    inspect({
      type: '@xstate.snapshot',
      actorRef: peerRef,
      event: { type: 'xstate.stop' },
      snapshot: { ...callbackSnapshot, status: 'stopped' },
    } as unknown as InspectionEvent);
    expect(seen.filter((event) => event.type === '@xstate.snapshot')).toHaveLength(2);
  });

  it('sends every milestone at once, in order, even inside a window', () => {
    const { clock } = manualClock();
    const seen: InspectionEvent[] = [];
    const inspect = summarizingInspect({ next: (event) => seen.push(event) }, clock, unlimited());
    const context = { currentTerm: 1, leaderId: null, recovering: false, commitIndex: 0 };
    inspect(machineSnapshot('follower', context));
    inspect(machineSnapshot('candidate', { ...context, currentTerm: 2 }));
    inspect(machineSnapshot({ leader: 'waiting' }, { ...context, currentTerm: 2, leaderId: 'n1' }));
    inspect(machineSnapshot('follower', { ...context, currentTerm: 3, leaderId: 'n2' }));
    const roles = seen.map((event) => (event as unknown as { snapshot: { value: unknown } }).snapshot.value);
    expect(roles).toEqual(['follower', 'candidate', { leader: 'waiting' }, 'follower']);
  });

  it('sends index-only changes at most once per window, the latest at its end, and ends on the current one', () => {
    const { clock, advance, pending } = manualClock();
    const seen: InspectionEvent[] = [];
    const inspect = summarizingInspect((event) => seen.push(event), clock, unlimited());
    for (let commit = 1; commit <= 100; commit += 1) inspect(leaderAt(commit));
    expect(seen.map(commitOf)).toEqual([1]);
    advance(SNAPSHOT_WINDOW_MS);
    expect(seen.map(commitOf)).toEqual([1, 100]);
    // The window that the flush opened passes quietly, then closes: the next snapshot goes at once.
    advance(SNAPSHOT_WINDOW_MS);
    expect(pending()).toBe(0);
    inspect(leaderAt(101));
    expect(seen.map(commitOf)).toEqual([1, 100, 101]);
    // A milestone inside a window replaces the held snapshot and goes at once; nothing older follows it.
    inspect(leaderAt(102));
    inspect(
      machineSnapshot('follower', { currentTerm: 3, leaderId: 'n2', recovering: false, commitIndex: 102 }),
    );
    advance(3 * SNAPSHOT_WINDOW_MS);
    expect(seen.map(commitOf)).toEqual([1, 100, 101, 102]);
    expect((seen.at(-1) as unknown as { snapshot: { value: unknown } }).snapshot.value).toBe('follower');
  });

  it('sends replication traffic up to its budget per slice of the wall clock and what quiet slices saved, counts the rest, and always sends the rest', () => {
    const { clock } = manualClock();
    const seen: InspectionEvent[] = [];
    let wallMs = 10 * INSPECT_SLICE_MS + 3;
    const options: InspectOptions = {
      eventsPerSecond: 50, // 5 per slice, up to 50 saved
      wallClockMs: () => wallMs,
      counters: { sentEvents: 0, skippedEvents: 0 },
    };
    const inspect = summarizingInspect((event) => seen.push(event), clock, options);
    const between = (event: Record<string, unknown>) =>
      inspect({
        type: '@xstate.event',
        actorRef: peerRef,
        sourceRef: raftRef,
        event,
      } as unknown as InspectionEvent);
    const append = { type: 'send', messages: [{ type: 'AppendEntries', entries: [] }] };
    const vote = { type: 'send', messages: [{ type: 'RequestVote' }] };
    const types = () =>
      seen.map((event) => {
        const { event: sent } = event as unknown as {
          event: { type: string; messages?: Array<{ type: string }> };
        };
        return sent.messages ? sent.messages[0]!.type : sent.type;
      });
    const count = (type: string) => types().filter((sent) => sent === type).length;

    // A node that was quiet: its slice's share and a second's worth saved go, the rest is counted.
    for (let i = 0; i < 60; i += 1) between(append);
    between(vote);
    between({ type: 'leaderChanged' });
    between({ type: 'calls' });
    expect(count('AppendEntries')).toBe(55);
    expect(types().slice(-2)).toEqual(['RequestVote', 'leaderChanged']);
    expect(options.counters).toEqual({ sentEvents: 57, skippedEvents: 6 });

    // Under steady load every slice has its share only (nothing was left to save).
    wallMs += INSPECT_SLICE_MS;
    for (let i = 0; i < 8; i += 1) between({ type: 'calls' });
    expect(count('calls')).toBe(5);
    expect(options.counters).toEqual({ sentEvents: 62, skippedEvents: 9 });

    // Two quiet slices pass (their shares saved), then a burst: its slice's share and the two saved.
    wallMs += 3 * INSPECT_SLICE_MS;
    for (let i = 0; i < 20; i += 1) between({ type: 'apply' });
    expect(count('apply')).toBe(15);
    expect(options.counters).toEqual({ sentEvents: 77, skippedEvents: 14 });
  });

  it('counts as replication traffic only the write and read path', () => {
    const traffic = [
      { type: 'calls' },
      { type: 'propose' },
      { type: 'persist' },
      { type: 'apply' },
      { type: 'applied' },
      { type: 'proposalsAccepted' },
      { type: 'message', message: { type: 'AppendEntriesResponse' } },
      { type: 'send', messages: [{ type: 'Heartbeat' }, { type: 'AppendEntries' }] },
      { type: 'client', message: { type: 'ClientPropose' } },
      { type: 'outgoing', messages: [{ type: 'ClientReadResult' }] },
    ];
    const always = [
      { type: 'message', message: { type: 'RequestVote' } },
      { type: 'send', messages: [{ type: 'AppendEntries' }, { type: 'InstallSnapshot' }] },
      { type: 'leaderChanged' },
      { type: 'proposalsRejected' },
      { type: 'reconfigure' },
      { type: 'restore' },
      { type: 'tick' },
      { type: 'xstate.init' },
      { type: 'client', message: { type: 'ClientReconfigure' } },
      { type: 'outgoing', messages: [{ type: 'ClientReconfigureResult' }] },
      { type: 'outgoing', messages: [{ type: 'ClientPropose' }, { type: 'RequestVote' }] },
    ];
    expect(traffic.filter((event) => !isReplicationTraffic(event))).toEqual([]);
    expect(always.filter((event) => isReplicationTraffic(event))).toEqual([]);
  });

  it('keeps a fractional share per slice (15 per second is 15, not 20), and a clock that steps back adds nothing', () => {
    const { clock } = manualClock();
    let wallMs = 0;
    const options: InspectOptions = {
      eventsPerSecond: 15,
      wallClockMs: () => wallMs,
      counters: { sentEvents: 0, skippedEvents: 0 },
    };
    const inspect = summarizingInspect(() => {}, clock, options);
    const calls = () =>
      inspect({
        type: '@xstate.event',
        actorRef: peerRef,
        sourceRef: raftRef,
        event: { type: 'calls' },
      } as unknown as InspectionEvent);
    for (let i = 0; i < 100; i += 1) calls(); // the saved second and the first share go at once
    const first = options.counters.sentEvents;
    expect(first).toBe(16); // 15 + 1.5, whole events
    for (let slice = 1; slice <= 100; slice += 1) {
      wallMs = slice * INSPECT_SLICE_MS;
      for (let i = 0; i < 10; i += 1) calls();
    }
    // Ten seconds at 15 per second, and the half event the first burst left.
    expect(options.counters.sentEvents - first).toBe(150);
    // Back and forth across a slice edge: no new share until the clock passes the last slice.
    const before = options.counters.sentEvents;
    for (let flip = 0; flip < 20; flip += 1) {
      wallMs = (flip % 2 === 0 ? 99 : 100) * INSPECT_SLICE_MS;
      for (let i = 0; i < 10; i += 1) calls();
    }
    expect(options.counters.sentEvents).toBe(before);
  });
});
