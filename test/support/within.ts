/** Rejects with `what` when `promise` has not settled within `boundMs` (a bound, never a sleep). */
export const within = <T>(promise: Promise<T>, what: string, boundMs: number): Promise<T> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${boundMs} ms waiting for ${what}`)), boundMs);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
};

/**
 * Conditions over state that events change: call `notify()` after every change; `until(check,
 * what)` resolves once `check()` holds (checked at once, then at each notify) and rejects with
 * `what` after `boundMs`. Nothing polls, nothing sleeps.
 */
export const conditions = (boundMs: number) => {
  const waiters = new Set<() => void>();
  return {
    notify: (): void => {
      for (const waiter of [...waiters]) waiter();
    },
    until: (check: () => boolean, what: string): Promise<void> => {
      let waiter = (): void => {};
      const held = new Promise<void>((resolve) => {
        waiter = (): void => {
          if (!check()) return;
          waiters.delete(waiter);
          resolve();
        };
        waiters.add(waiter);
        waiter();
      });
      return within(held, what, boundMs).finally(() => waiters.delete(waiter));
    },
  };
};
