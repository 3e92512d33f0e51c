/**
 * Deadlines for waiting callers with one timer in total (no timer per call): waiters are kept in
 * deadline order, and the single timer is armed for the earliest one.
 */
export type Clock = {
  setTimeout: (fn: (...args: unknown[]) => void, timeoutMs: number) => unknown;
  clearTimeout: (id: unknown) => void;
};

/** `expire` gets the deadline itself: a caller's object may be its own deadline (`insert`). */
export type Deadline = { dueMs: number; expire: (deadline: Deadline) => void; done: boolean };

export const createDeadlines = (clock: Clock, nowMs: () => number) => {
  // Every deadline is now + a timeout; with mixed timeouts insertion keeps the order.
  const queue: Deadline[] = [];
  let timer: unknown = null;
  let armedForMs = Number.POSITIVE_INFINITY;

  const fire = (): void => {
    timer = null;
    armedForMs = Number.POSITIVE_INFINITY;
    const now = nowMs();
    while (queue.length > 0 && (queue[0]!.done || queue[0]!.dueMs <= now)) {
      const deadline = queue.shift()!;
      if (!deadline.done) {
        deadline.done = true;
        deadline.expire(deadline);
      }
    }
    arm();
  };

  const arm = (): void => {
    while (queue.length > 0 && queue[0]!.done) queue.shift();
    const first = queue[0];
    if (!first || first.dueMs >= armedForMs) return;
    if (timer !== null) clock.clearTimeout(timer);
    armedForMs = first.dueMs;
    timer = clock.setTimeout(fire, Math.max(0, first.dueMs - nowMs()));
  };

  const add = (timeoutMs: number, expire: () => void): Deadline =>
    insert({ dueMs: 0, expire, done: false }, timeoutMs);

  /** Queues the caller's own deadline object, due in `timeoutMs` (no object or closure made here). */
  const insert = <D extends Deadline>(deadline: D, timeoutMs: number): D => {
    deadline.dueMs = nowMs() + timeoutMs;
    let position = queue.length;
    while (position > 0 && queue[position - 1]!.dueMs > deadline.dueMs) position -= 1;
    queue.splice(position, 0, deadline);
    arm();
    return deadline;
  };

  const clear = (): void => {
    if (timer !== null) clock.clearTimeout(timer);
    timer = null;
    armedForMs = Number.POSITIVE_INFINITY;
    queue.length = 0;
  };

  return { add, insert, clear, pending: (): number => queue.filter((deadline) => !deadline.done).length };
};

export type Deadlines = ReturnType<typeof createDeadlines>;
