/**
 * Messages of the client API between nodes, carried by the same transport as the Raft RPCs. A
 * follower forwards writes and read-index requests to the leader with them; one message carries
 * every call made in the same tick (batching at every hop).
 */
import type { NodeId } from '../machines/messages.js';

/** Writes forwarded to the leader: each command is already encoded and tagged (session, seq). */
export type ClientPropose = {
  type: 'ClientPropose';
  from: NodeId;
  to: NodeId;
  seqs: number[];
  commands: Uint8Array[];
};

/** The leader appended the commands at `firstIndex`.. in `term`, or refused (not the leader). */
export type ClientProposeResult = {
  type: 'ClientProposeResult';
  from: NodeId;
  to: NodeId;
  seqs: number[];
  firstIndex: number;
  term: number;
  notLeader: boolean;
  leaderId: NodeId | null;
  /** The leader refused these commands: they do not decode (the caller rejects INVALID_ARGUMENT). */
  invalid?: boolean;
};

export type ClientRead = { type: 'ClientRead'; from: NodeId; to: NodeId; ids: number[] };

/** The leader confirmed its leadership at `readIndex` for these reads, or refused. */
export type ClientReadResult = {
  type: 'ClientReadResult';
  from: NodeId;
  to: NodeId;
  ids: number[];
  readIndex: number;
  notLeader: boolean;
  leaderId: NodeId | null;
};

/** A membership change forwarded to the leader (machines/rules/membership.ts); `id` is the caller's. */
export type ClientReconfigure = {
  type: 'ClientReconfigure';
  from: NodeId;
  to: NodeId;
  id: number;
  voters: NodeId[];
  addresses: Record<NodeId, { host: string; port: number }>;
};

/** The leader's answer: C_old,new appended at (`index`, `term`), or refused with `code`. */
export type ClientReconfigureResult = {
  type: 'ClientReconfigureResult';
  from: NodeId;
  to: NodeId;
  id: number;
  accepted: boolean;
  unchanged: boolean;
  index: number;
  term: number;
  code: string | null;
  leaderId: NodeId | null;
};

export type MembershipMessage = ClientReconfigure | ClientReconfigureResult;

export type ClientMessage = ClientPropose | ClientProposeResult | ClientRead | ClientReadResult;

const isAddressMap = (value: unknown): boolean =>
  typeof value === 'object' &&
  value !== null &&
  Object.values(value).every(
    (address) =>
      typeof address === 'object' &&
      address !== null &&
      typeof (address as { host?: unknown }).host === 'string' &&
      Number.isInteger((address as { port?: unknown }).port),
  );

/** Checks a membership message from the network before it is trusted; false means drop it. */
export const isWellFormedMembershipMessage = (
  message: { type: string } & Record<string, unknown>,
): boolean => {
  switch (message.type) {
    case 'ClientReconfigure':
      return (
        Number.isSafeInteger(message.id) &&
        Array.isArray(message.voters) &&
        message.voters.length <= 64 &&
        message.voters.every((voter) => typeof voter === 'string' && voter.length > 0) &&
        isAddressMap(message.addresses)
      );
    case 'ClientReconfigureResult':
      return (
        Number.isSafeInteger(message.id) &&
        typeof message.accepted === 'boolean' &&
        Number.isSafeInteger(message.index) &&
        Number.isSafeInteger(message.term)
      );
    default:
      return false;
  }
};

const isIdList = (value: unknown): value is number[] =>
  Array.isArray(value) && value.every((item) => Number.isSafeInteger(item));

/** Checks a client message from the network before it is trusted; false means drop it. */
export const isWellFormedClientMessage = (message: { type: string } & Record<string, unknown>): boolean => {
  switch (message.type) {
    case 'ClientPropose':
      return (
        isIdList(message.seqs) &&
        Array.isArray(message.commands) &&
        message.commands.length === message.seqs.length &&
        message.commands.every((command) => command instanceof Uint8Array)
      );
    case 'ClientProposeResult':
      return (
        isIdList(message.seqs) &&
        Number.isSafeInteger(message.firstIndex) &&
        typeof message.notLeader === 'boolean'
      );
    case 'ClientRead':
      return isIdList(message.ids);
    case 'ClientReadResult':
      return (
        isIdList(message.ids) &&
        Number.isSafeInteger(message.readIndex) &&
        typeof message.notLeader === 'boolean'
      );
    default:
      return false;
  }
};
