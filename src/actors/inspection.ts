/**
 * What the inspector sees of a node (README "Watching it in the inspector"). Every event between
 * actors, every actor, every change of a machine's state; less of what changes on every write:
 *
 * - Events between actors go with their type and small fields, every byte array replaced by its
 *   length and every long array by its count, so that watching a node never ships the log's
 *   entries or values. An event with nothing to replace (most of the write path's) goes as itself.
 * - XState's reports of each action run (`@xstate.action`) and each microstep (`@xstate.microstep`)
 *   do not go: the Stately inspector drops them, and on a write they are about as many as
 *   everything else together (each would cost the observer a call and, with
 *   `createWebSocketInspector`, a timer). The raft machine's state changes show in its snapshots.
 * - A callback actor's snapshot goes once (the first time it is reported): XState reports an
 *   actor's snapshot after every event it takes, but a callback actor (every actor of a node but
 *   the root and the raft machine) has no context and keeps the same snapshot object from start
 *   to stop, so the repeats tell the inspector nothing.
 * - A machine's snapshot goes at once when it changes a milestone: its status, its state value,
 *   its term, leader or recovering flag (a role change is seen the moment it happens, in order
 *   with the events around it). Snapshots that change only indexes, progress and counters (a
 *   leader's match indexes move on every write) go at most once per SNAPSHOT_WINDOW_MS per node:
 *   the first at once, then the latest one of the window at its end, so the inspector always ends
 *   on the actor's current snapshot (the raft machine's is about 2 KB as JSON).
 * - Replication traffic has a budget (`createBudget`): the events of the write and read path
 *   (calls, proposals, AppendEntries and Heartbeats and their answers, persists, applies,
 *   forwarded calls and their answers, ...) go at most `eventsPerSecond` per node, counted in
 *   slices of INSPECT_SLICE_MS aligned on the wall clock (what quieter slices left unused is
 *   saved, up to a second's worth); past that, they are counted (`skippedEvents`, in getMetrics)
 *   instead of sent, until the next slice. Every node starts its slices at the same instants, so
 *   under load the writes that open a slice show whole, hop by hop, on every node; a quiet node
 *   shows a burst whole. Everything else goes: actors, snapshots, elections, membership,
 *   snapshot transfers, refusals of the raft machine, timers. Why: @statelyai/inspect's
 *   WebSocket inspector writes each event to its socket on its own, and its server forwards each
 *   on its own, which costs more CPU than the event itself (a write makes about 22 events over
 *   three nodes); without a budget a busy watched cluster runs at about a third of its speed.
 *
 * Only inspected nodes pay for it; without `inspect` nothing here runs. One timer per node at
 * most (the window's), never one per event.
 */
import type { AnyActorRef, InspectionEvent, Observer } from 'xstate';
import { assert } from '../machines/assert.js';
import type { Clock } from './deadlines.js';

export type Inspect = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/** An `inspect` option, observer or function, as the function that takes each report. */
export const inspectFunction = (inspect: Inspect): ((event: InspectionEvent) => void) =>
  typeof inspect === 'function' ? inspect : (event) => inspect.next?.(event);

/** Arrays longer than this show as `{ count }`; shorter ones item by item. */
const MAX_LISTED_ITEMS = 4;
/** Nesting shown; deeper values show as their kind. */
const MAX_DEPTH = 3;
/** Snapshots that change no milestone go at most once per window per node (about 20 per second). */
export const SNAPSHOT_WINDOW_MS = 50;
/** The replication traffic's budget is counted per slice of this length, on the wall clock. */
export const INSPECT_SLICE_MS = 100;
/** Events of replication traffic a node sends the inspector per second, by default. */
export const DEFAULT_INSPECT_EVENTS_PER_SECOND = 250;

/** Events of the write and read path, whatever they carry (ARCHITECTURE.md's table). */
const TRAFFIC_EVENTS = new Set([
  'calls',
  'propose',
  'readIndex',
  'persist',
  'afterPersist',
  'persisted',
  'apply',
  'applied',
  'proposalsAccepted',
  'readsReady',
  'heartbeatAnswered',
]);
/**
 * Messages of replication and of forwarded writes and reads: `send`, `message`, `outgoing` and
 * `client` events that carry only these are traffic too (a RequestVote, a Removed, a membership
 * call always goes).
 */
const TRAFFIC_MESSAGES = new Set([
  'AppendEntries',
  'AppendEntriesResponse',
  'Heartbeat',
  'HeartbeatResponse',
  'ClientPropose',
  'ClientProposeResult',
  'ClientRead',
  'ClientReadResult',
]);

const allTraffic = (messages: unknown): boolean =>
  Array.isArray(messages) &&
  messages.every((message: { type?: unknown }) => TRAFFIC_MESSAGES.has(message?.type as string));

/** Whether an event between actors is replication traffic (the budget applies) or always goes. */
export const isReplicationTraffic = (event: { type: string }): boolean => {
  if (TRAFFIC_EVENTS.has(event.type)) return true;
  const { message, messages } = event as { message?: { type?: unknown }; messages?: unknown };
  if (event.type === 'message' || event.type === 'client')
    return TRAFFIC_MESSAGES.has(message?.type as string);
  if (event.type === 'send' || event.type === 'outgoing') return allTraffic(messages);
  return false;
};

/** What the inspector got and what the budget kept from it (getMetrics().inspection). */
export type InspectionCounters = { sentEvents: number; skippedEvents: number };

export type InspectOptions = {
  /** Replication traffic per second per node; Infinity sends everything. */
  eventsPerSecond: number;
  /** The wall clock in ms (slices start at its multiples of INSPECT_SLICE_MS on every node). */
  wallClockMs: () => number;
  counters: InspectionCounters;
};

/**
 * Whether one more event of replication traffic may go now. A token bucket refilled at the start
 * of each slice of the wall clock with the slice's share (`eventsPerSecond` / 10, fractions kept),
 * holding at most a second's worth and one share: what quieter slices left unused is saved, so a
 * node that was quiet shows a burst whole (a write, an election's aftermath); under steady load
 * every slice gets its share, the same slices on every node. A wall clock that steps back adds
 * nothing until it passes the last slice again.
 */
const createBudget = ({ eventsPerSecond, wallClockMs, counters }: InspectOptions): (() => boolean) => {
  const perSlice = (eventsPerSecond * INSPECT_SLICE_MS) / 1000;
  const capacity = eventsPerSecond + perSlice;
  let slice = Number.NEGATIVE_INFINITY;
  let tokens = 0;
  return () => {
    const now = Math.floor(wallClockMs() / INSPECT_SLICE_MS);
    if (now > slice) {
      tokens = Math.min(capacity, tokens + Math.min(now - slice, 1000 / INSPECT_SLICE_MS + 1) * perSlice);
      slice = now;
    }
    if (tokens >= 1) {
      tokens -= 1;
      return true;
    }
    counters.skippedEvents += 1;
    return false;
  };
};

/**
 * `value` as the inspector may see it: byte arrays as their length, long or deep arrays as their
 * count, maps and sets as their size, functions left out. A value with nothing to replace comes
 * back as itself (most events of the write path carry only numbers and strings: no copy).
 */
const summarize = (value: unknown, depth: number): unknown => {
  if (value === null || typeof value !== 'object') return typeof value === 'function' ? undefined : value;
  if (ArrayBuffer.isView(value)) return { bytes: value.byteLength };
  if (depth >= MAX_DEPTH) return Array.isArray(value) ? { count: value.length } : '{…}';
  if (Array.isArray(value)) {
    if (value.length > MAX_LISTED_ITEMS) return { count: value.length };
    let items: unknown[] | null = null;
    for (let index = 0; index < value.length; index += 1) {
      const item = summarize(value[index], depth + 1);
      if (items === null && item !== value[index]) items = value.slice(0, index);
      items?.push(item);
    }
    return items ?? value;
  }
  if (value instanceof Map || value instanceof Set) return { size: value.size };
  const fields = value as Record<string, unknown>;
  let out: Record<string, unknown> | null = null;
  for (const key in fields) {
    if (!Object.hasOwn(fields, key)) continue;
    const field = fields[key];
    const shown = summarize(field, depth + 1);
    if (out === null && shown !== field) out = { ...fields };
    if (out !== null) out[key] = shown;
  }
  return out ?? value;
};

/**
 * The inspection event with its `event` (the one sent between actors) summarized. XState reports
 * an event as sent and then, right after, in the receiver's snapshot report: the last summary is
 * kept for that (one slot, no table that grows with the traffic; it keeps the last event alive
 * until the next one).
 */
const summarizer = (): ((inspection: InspectionEvent) => InspectionEvent) => {
  let lastEvent: unknown = null;
  let lastSummary: unknown = null;
  const summaryOf = (event: unknown): unknown => {
    if (event !== lastEvent) {
      lastEvent = event;
      lastSummary = summarize(event, 0);
    }
    return lastSummary;
  };
  return (inspection) => {
    switch (inspection.type) {
      case '@xstate.event': {
        const { type, rootId, actorRef, sourceRef, event } = inspection;
        return { type, rootId, actorRef, sourceRef, event: summaryOf(event) } as InspectionEvent;
      }
      case '@xstate.snapshot': {
        const { type, rootId, actorRef, snapshot, event } = inspection;
        return { type, rootId, actorRef, snapshot, event: summaryOf(event) } as InspectionEvent;
      }
      default:
        return inspection;
    }
  };
};

type SnapshotLike = {
  status?: string;
  value?: unknown;
  context?: { currentTerm?: unknown; leaderId?: unknown; recovering?: unknown };
};

/**
 * What must be seen the moment it changes: status, state value, and for the raft machine its
 * term, leader and recovering flag (what a role watcher reads).
 */
type Milestone = { status: unknown; value: unknown; term: unknown; leaderId: unknown; recovering: unknown };

/** Two state values alike: the same string, or nested states alike key by key. */
const sameValue = (a: unknown, b: unknown): boolean => {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  const left = a as Record<string, unknown>;
  const right = b as Record<string, unknown>;
  let keys = 0;
  for (const key in left) {
    if (!(key in right) || !sameValue(left[key], right[key])) return false;
    keys += 1;
  }
  for (const _key in right) keys -= 1;
  return keys === 0;
};

/** Whether `snapshot` has the milestone `last` records (no allocation: it runs on every event). */
const hasMilestone = (last: Milestone | undefined, snapshot: SnapshotLike): boolean =>
  last !== undefined &&
  last.status === snapshot.status &&
  last.term === snapshot.context?.currentTerm &&
  last.leaderId === snapshot.context?.leaderId &&
  last.recovering === snapshot.context?.recovering &&
  sameValue(last.value, snapshot.value);

const milestoneOf = ({ status, value, context }: SnapshotLike): Milestone => ({
  status,
  value,
  term: context?.currentTerm,
  leaderId: context?.leaderId,
  recovering: context?.recovering,
});

type Window = {
  /** Each machine actor's last milestone sent. */
  milestones: WeakMap<object, Milestone>;
  /** Per actor, the latest snapshot held back in the current window. */
  held: Map<object, InspectionEvent>;
  timer: unknown;
};

/** Opens the node's snapshot window; at its end the held snapshots go and, if any did, the next opens. */
const openWindow = (window: Window, clock: Clock, send: (event: InspectionEvent) => void): void => {
  window.timer = clock.setTimeout(() => {
    window.timer = null;
    if (window.held.size === 0) return;
    const held = [...window.held.values()];
    window.held.clear();
    for (const event of held) send(event);
    openWindow(window, clock, send);
  }, SNAPSHOT_WINDOW_MS);
  (window.timer as { unref?: () => void } | null)?.unref?.();
};

/** A machine's snapshot: at once (a milestone, or the window is closed), or held to the window's end. */
const machineSnapshot = (
  window: Window,
  clock: Clock,
  event: InspectionEvent & { type: '@xstate.snapshot' },
  send: (event: InspectionEvent) => void,
): void => {
  const snapshot = event.snapshot as SnapshotLike;
  const changed = !hasMilestone(window.milestones.get(event.actorRef), snapshot);
  if (!changed && window.timer !== null) {
    window.held.set(event.actorRef, event);
    return;
  }
  if (changed) window.milestones.set(event.actorRef, milestoneOf(snapshot));
  window.held.delete(event.actorRef);
  send(event);
  if (window.timer === null) openWindow(window, clock, send);
};

/**
 * Wraps the user's observer or callback as described in the header. `clock` runs the snapshot
 * window (the node's clock: simulated in the simulator).
 */
export const summarizingInspect = (
  inspect: Inspect,
  clock: Clock,
  options: InspectOptions,
): ((event: InspectionEvent) => void) => {
  const next = inspectFunction(inspect);
  const summarized = summarizer();
  const { counters } = options;
  const send = (event: InspectionEvent): void => {
    counters.sentEvents += 1;
    next(summarized(event));
  };
  const mayGo = Number.isFinite(options.eventsPerSecond) ? createBudget(options) : () => true;
  /** Replication traffic past the budget: counted (in mayGo), not sent. */
  const isHeldBack = (event: InspectionEvent): boolean =>
    event.type === '@xstate.event' && isReplicationTraffic(event.event) && !mayGo();
  const seen = new WeakMap<object, unknown>();
  const window: Window = { milestones: new WeakMap(), held: new Map(), timer: null };
  return (event) => {
    if (event.type === '@xstate.action' || event.type === '@xstate.microstep') return;
    if (event.type === '@xstate.snapshot') {
      if ((event.snapshot as SnapshotLike).context !== undefined) {
        machineSnapshot(window, clock, event, send);
        return;
      }
      if (seen.get(event.actorRef) === event.snapshot) return;
      seen.set(event.actorRef, event.snapshot);
    } else if (isHeldBack(event)) return;
    send(event);
  };
};

type InspectedSystem = { _sendInspectionEvent: (event: InspectionEvent) => void };

/**
 * Connects `report` (a `summarizingInspect`) to the actor system of `root`, before it starts.
 * Not through XState's `inspect` option: for each observer XState copies every inspection event
 * it makes (`{ ...event, rootId }`), also the reports of each action run and microstep that
 * `report` drops at once, which was most of what watching cost a node once the budget capped what
 * it sends (about 60 us per write on a leader, a third of its CPU). The system's own hook
 * (`_sendInspectionEvent`, the one XState's observers hang from; it stays called, so observers
 * added through `system.inspect` still see everything) reaches `report` first, uncopied; `rootId`
 * is added only to what goes on. The `@xstate.actor` reports of the root and of the children its
 * initial state invoked, made in `createActor` before any hook could be set, are made here, parents
 * first. test/unit/inspect.test.ts checks that every actor and every hop still shows.
 */
export const inspectSystem = (root: AnyActorRef, report: (event: InspectionEvent) => void): void => {
  const system = root.system as unknown as InspectedSystem;
  const xstateHook = system._sendInspectionEvent;
  // A newer XState without this hook must fail loudly here, not leave an inspector seeing nothing.
  assert(typeof xstateHook === 'function', 'the XState actor system has no _sendInspectionEvent hook');
  const rootId = root.sessionId;
  system._sendInspectionEvent = (event) => {
    xstateHook(event);
    if (event.type === '@xstate.action' || event.type === '@xstate.microstep') return;
    (event as { rootId: string }).rootId = rootId;
    report(event);
  };
  const created = (actorRef: AnyActorRef): void => {
    report({ type: '@xstate.actor', actorRef, rootId } as InspectionEvent);
    const children = (actorRef.getSnapshot() as { children?: Record<string, AnyActorRef> }).children;
    for (const child of Object.values(children ?? {})) created(child);
  };
  created(root);
};
