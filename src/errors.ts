/**
 * Every rejected call rejects with an Error whose `code` says why (ARCHITECTURE.md rule 6).
 */
export const ERROR_CODES = [
  'NOT_LEADER',
  'QUORUM_UNAVAILABLE',
  'TIMEOUT',
  'STOPPED',
  'INVALID_ARGUMENT',
  'ABORTED',
  /** start(): the WAL is damaged at or before its last completed fsync, or is not a WAL; the node refuses to start. */
  'WAL_CORRUPT',
  /** start(): another live process holds this persistence dir. */
  'DIR_LOCKED',
  /** The node stopped itself because a write or fsync of its WAL failed (fail-stop); not the STOPPED of end(). */
  'DISK_FAILED',
  /** reconfigure(): another membership change is in progress (one at a time); try again once it completes. */
  'CHANGE_IN_PROGRESS',
  /** This node was removed from the cluster by a membership change; it serves no call until added again. */
  'REMOVED',
] as const;

export type DiskeyvalErrorCode = (typeof ERROR_CODES)[number];

export type DiskeyvalError = Error & {
  code: DiskeyvalErrorCode;
  leaderId?: string | null;
  /** QUORUM_UNAVAILABLE: the peers this node could not connect to, when it knows, and why. */
  unreachable?: Array<{ nodeId: string; reason: string }>;
};

export const diskeyvalError = (
  code: DiskeyvalErrorCode,
  message: string,
  extra: { leaderId?: string | null; unreachable?: Array<{ nodeId: string; reason: string }> } = {},
): DiskeyvalError => Object.assign(new Error(message), { code }, extra);

export const isDiskeyvalError = (error: unknown, code?: DiskeyvalErrorCode): error is DiskeyvalError => {
  if (!(error instanceof Error)) return false;
  const actual = (error as { code?: unknown }).code;
  return (
    typeof actual === 'string' &&
    (ERROR_CODES as readonly string[]).includes(actual) &&
    (code === undefined || actual === code)
  );
};

export const isNotLeader = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'NOT_LEADER');
export const isTimeout = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'TIMEOUT');
export const isStopped = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'STOPPED');
export const isInvalidArgument = (error: unknown): error is DiskeyvalError =>
  isDiskeyvalError(error, 'INVALID_ARGUMENT');
export const isAborted = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'ABORTED');
export const isWalCorrupt = (error: unknown): error is DiskeyvalError =>
  isDiskeyvalError(error, 'WAL_CORRUPT');
export const isDirLocked = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'DIR_LOCKED');
export const isDiskFailed = (error: unknown): error is DiskeyvalError =>
  isDiskeyvalError(error, 'DISK_FAILED');
export const isQuorumUnavailable = (error: unknown): error is DiskeyvalError =>
  isDiskeyvalError(error, 'QUORUM_UNAVAILABLE');
export const isChangeInProgress = (error: unknown): error is DiskeyvalError =>
  isDiskeyvalError(error, 'CHANGE_IN_PROGRESS');
export const isRemoved = (error: unknown): error is DiskeyvalError => isDiskeyvalError(error, 'REMOVED');
