/**
 * A seeded pseudo-random generator (mulberry32) as a pure function over a 32-bit state, so a
 * machine can keep the state in its context and a simulation replays exactly from its seed.
 */
export type RngState = number;

/** Returns a float in [0, 1) and the next state. */
export const nextRandom = (state: RngState): [value: number, next: RngState] => {
  const next = (state + 0x6d2b79f5) | 0;
  let t = next;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  const value = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  return [value, next];
};

/** An integer in [minInclusive, maxExclusive) and the next state. */
export const nextInt = (
  state: RngState,
  minInclusive: number,
  maxExclusive: number,
): [value: number, next: RngState] => {
  const [value, next] = nextRandom(state);
  return [minInclusive + Math.floor(value * (maxExclusive - minInclusive)), next];
};

/** A stateful generator for code that lives outside machines (simulator, tests). */
export const createRng = (seed: number) => {
  let state: RngState = seed | 0;
  const float = (): number => {
    const [value, next] = nextRandom(state);
    state = next;
    return value;
  };
  const int = (minInclusive: number, maxExclusive: number): number =>
    minInclusive + Math.floor(float() * (maxExclusive - minInclusive));
  const chance = (probability: number): boolean => float() < probability;
  const pick = <T>(items: readonly T[]): T => {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[int(0, items.length)] as T;
  };
  return { float, int, chance, pick };
};

export type Rng = ReturnType<typeof createRng>;
