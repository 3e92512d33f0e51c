/**
 * What the inspector sees of the events between actors: their type and small fields, with every
 * byte array replaced by its length and every long array by its count, so that watching a node
 * never ships the log's entries or values (README "Watching it in the inspector"). Only inspected
 * events pay for it; without `inspect` nothing here runs.
 */
import type { InspectionEvent, Observer } from 'xstate';

export type Inspect = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/** Arrays longer than this show as `{ count }`; shorter ones item by item. */
const MAX_LISTED_ITEMS = 4;
/** Nesting shown; deeper values show as their kind. */
const MAX_DEPTH = 3;

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

/** The inspection event with its `event` (the one sent between actors) summarized. */
const summarized = (inspection: InspectionEvent): InspectionEvent => {
  if (!('event' in inspection) || inspection.event === undefined) return inspection;
  return { ...inspection, event: summarize(inspection.event, 0) } as InspectionEvent;
};

/** Wraps the user's observer or callback so that it receives summarized events. */
export const summarizingInspect = (inspect: Inspect): ((event: InspectionEvent) => void) => {
  if (typeof inspect === 'function') return (event) => inspect(summarized(event));
  return (event) => inspect.next?.(summarized(event));
};
