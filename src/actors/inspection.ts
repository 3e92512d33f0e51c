/**
 * What the inspector sees of a node (README "Watching it in the inspector"). Every event between
 * actors, every actor, every change of a machine's state; less of what changes on every write:
 *
 * - Events between actors go with their type and small fields, every byte array replaced by its
 *   length and every long array by its count, so that watching a node never ships the log's
 *   entries or values. An event is summarized once, however many inspection events carry it.
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
 *   on the actor's current snapshot. This is what keeps a watched node at more than half its
 *   speed: the raft machine's snapshot (about 2 KB as JSON) is most of the bytes an inspector
 *   serializes and sends per write.
 *
 * Only inspected nodes pay for it; without `inspect` nothing here runs. One timer per node at
 * most (the window's), never one per event.
 */
import type { InspectionEvent, Observer } from 'xstate';
import type { Clock } from './deadlines.js';

export type Inspect = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/** Arrays longer than this show as `{ count }`; shorter ones item by item. */
const MAX_LISTED_ITEMS = 4;
/** Nesting shown; deeper values show as their kind. */
const MAX_DEPTH = 3;
/** Snapshots that change no milestone go at most once per window per node (about 20 per second). */
export const SNAPSHOT_WINDOW_MS = 50;

const summarize = (value: unknown, depth: number): unknown => {
  if (value === null || typeof value !== 'object') return typeof value === 'function' ? undefined : value;
  if (ArrayBuffer.isView(value)) return { bytes: value.byteLength };
  if (depth >= MAX_DEPTH) return Array.isArray(value) ? { count: value.length } : '{…}';
  if (Array.isArray(value)) {
    if (value.length > MAX_LISTED_ITEMS) return { count: value.length };
    return value.map((item) => summarize(item, depth + 1));
  }
  if (value instanceof Map || value instanceof Set) return { size: value.size };
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value))
    out[key] = summarize((value as Record<string, unknown>)[key], depth + 1);
  return out;
};

/** The inspection event with its `event` (the one sent between actors) summarized, once per event. */
const summarized = (inspection: InspectionEvent, summaries: WeakMap<object, unknown>): InspectionEvent => {
  if (!('event' in inspection) || inspection.event === undefined) return inspection;
  const event = inspection.event as object;
  let summary = summaries.get(event);
  if (summary === undefined) {
    summary = summarize(event, 0);
    summaries.set(event, summary);
  }
  return { ...inspection, event: summary } as InspectionEvent;
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

const milestoneOf = (snapshot: unknown): Milestone => {
  const { status, value, context } = snapshot as SnapshotLike;
  return {
    status,
    // A state value is a string or a small object (a nested state): compared as JSON then.
    value: typeof value === 'object' && value !== null ? JSON.stringify(value) : value,
    term: context?.currentTerm,
    leaderId: context?.leaderId,
    recovering: context?.recovering,
  };
};

const sameMilestone = (a: Milestone | undefined, b: Milestone): boolean =>
  a !== undefined &&
  a.status === b.status &&
  a.value === b.value &&
  a.term === b.term &&
  a.leaderId === b.leaderId &&
  a.recovering === b.recovering;

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
  const milestone = milestoneOf(event.snapshot);
  const changed = !sameMilestone(window.milestones.get(event.actorRef), milestone);
  if (!changed && window.timer !== null) {
    window.held.set(event.actorRef, event);
    return;
  }
  window.milestones.set(event.actorRef, milestone);
  window.held.delete(event.actorRef);
  send(event);
  if (window.timer === null) openWindow(window, clock, send);
};

/**
 * Wraps the user's observer or callback as described in the header. `clock` runs the snapshot
 * window (the node's clock: simulated in the simulator).
 */
export const summarizingInspect = (inspect: Inspect, clock: Clock): ((event: InspectionEvent) => void) => {
  const next = typeof inspect === 'function' ? inspect : (event: InspectionEvent) => inspect.next?.(event);
  const summaries = new WeakMap<object, unknown>();
  const send = (event: InspectionEvent): void => next(summarized(event, summaries));
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
    }
    send(event);
  };
};
