/**
 * Assertions state the contracts at the boundaries (TigerStyle): a failed assertion is a bug in
 * diskeyval, never bad user input (that is rejected with a coded error instead).
 */
export const assert: (condition: unknown, message: string) => asserts condition = (condition, message) => {
  if (!condition) {
    const error = new Error(`diskeyval invariant violated: ${message}`);
    (error as Error & { code: string }).code = 'INVARIANT';
    throw error;
  }
};

/**
 * A non-negative safe integer: what an index, term, sequence number or size read from outside
 * (the network, a file) must be before anything trusts it.
 */
export const isCount = (value: unknown): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
