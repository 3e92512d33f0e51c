/** Rejects with `what` when `promise` has not settled within `boundMs` (a bound, never a sleep). */
export const within = <T>(promise: Promise<T>, what: string, boundMs: number): Promise<T> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${boundMs} ms waiting for ${what}`)), boundMs);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
};
