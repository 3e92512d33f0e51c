/**
 * The leader's side of client calls, as plain data the requests actor owns (requests.ts): every
 * write that reached this leader in a tick, local or forwarded by a follower, becomes one `propose`
 * event for the raft machine, and every read one `readIndex` event; the machine's answers (by
 * batch id, by read id) go back to the callers: the local calls (calls.ts), or the follower that
 * forwarded them, in one message per follower.
 */
import { whyUndecodable } from '../io/command.js';
import type { NodeId } from '../machines/messages.js';
import type { ClientMessage, ClientPropose, ClientRead } from './client-messages.js';

/** Where the commands of one proposal batch came from, in batch order (null: this node). */
type BatchPart = { from: NodeId | null; seqs: number[] };

export type LeaderBatches = {
  id: NodeId;
  nextBatchId: number;
  batches: Map<number, BatchPart[]>;
  proposals: ClientPropose[];
  reads: ClientRead[];
  /**
   * A read batch went to the machine and its answer (`readsReady` or `readsRejected`) has not come
   * back: reads that arrive meanwhile wait and go together in the next batch, when it does (one
   * heartbeat round in flight at a time serves every read queued during it).
   */
  readRoundOpen: boolean;
  nextLocalReadId: number;
  readsForOthers: Map<number, { from: NodeId; id: number }>;
  counters: { proposalBatches: number; readBatches: number; malformedMessages: number };
};

export const createLeaderBatches = (id: NodeId): LeaderBatches => ({
  id,
  nextBatchId: 1,
  batches: new Map(),
  proposals: [],
  reads: [],
  readRoundOpen: false,
  nextLocalReadId: -1,
  readsForOthers: new Map(),
  counters: { proposalBatches: 0, readBatches: 0, malformedMessages: 0 },
});

/** The tick's proposals as one batch: its id and commands (null when there are none). */
export const takeProposals = (b: LeaderBatches): { batchId: number; commands: Uint8Array[] } | null => {
  if (b.proposals.length === 0) return null;
  const parts: BatchPart[] = [];
  const commands: Uint8Array[] = [];
  for (const message of b.proposals) {
    parts.push({ from: message.from === b.id ? null : message.from, seqs: message.seqs });
    for (const command of message.commands) commands.push(command);
  }
  b.proposals = [];
  const batchId = b.nextBatchId++;
  b.batches.set(batchId, parts);
  b.counters.proposalBatches += 1;
  return { batchId, commands };
};

/**
 * The reads queued since the last batch, as one batch of ids (others' reads get local ids below
 * zero); null while none is queued or the last batch is still in the machine (see readRoundOpen).
 */
export const takeReads = (b: LeaderBatches): number[] | null => {
  if (b.reads.length === 0 || b.readRoundOpen) return null;
  b.readRoundOpen = true;
  const ids: number[] = [];
  for (const message of b.reads) {
    for (const id of message.ids) {
      if (message.from === b.id) {
        ids.push(id);
      } else {
        const localId = b.nextLocalReadId--;
        b.readsForOthers.set(localId, { from: message.from, id });
        ids.push(localId);
      }
    }
  }
  b.reads = [];
  b.counters.readBatches += 1;
  return ids;
};

/** The machine's answer to a batch, split by where its parts came from. */
export const answerBatch = (
  b: LeaderBatches,
  batchId: number,
  answer: { firstIndex: number; term: number; leaderId: NodeId | null },
  local: (seqs: number[], firstIndex: number) => void,
  send: (message: ClientMessage) => void,
): void => {
  const parts = b.batches.get(batchId) ?? [];
  b.batches.delete(batchId);
  const { firstIndex, term, leaderId } = answer;
  const accepted = firstIndex > 0;
  let offset = 0;
  for (const part of parts) {
    if (part.from === null) local(part.seqs, accepted ? firstIndex + offset : 0);
    else
      send({
        type: 'ClientProposeResult',
        from: b.id,
        to: part.from,
        seqs: part.seqs,
        firstIndex: accepted ? firstIndex + offset : 0,
        term,
        notLeader: !accepted,
        leaderId,
      });
    offset += part.seqs.length;
  }
};

/** The machine's answer to a read batch (readIndex < 0: refused), split by origin. */
export const answerReads = (
  b: LeaderBatches,
  ids: number[],
  answer: { readIndex: number; leaderId: NodeId | null },
  local: (ids: number[]) => void,
  send: (message: ClientMessage) => void,
): void => {
  const own: number[] = [];
  const byOrigin = new Map<NodeId, number[]>();
  for (const id of ids) {
    const other = b.readsForOthers.get(id);
    if (!other) {
      own.push(id);
      continue;
    }
    b.readsForOthers.delete(id);
    const list = byOrigin.get(other.from) ?? [];
    list.push(other.id);
    byOrigin.set(other.from, list);
  }
  if (own.length > 0) local(own);
  const confirmed = answer.readIndex >= 0;
  for (const [to, remoteIds] of byOrigin) {
    send({
      type: 'ClientReadResult',
      from: b.id,
      to,
      ids: remoteIds,
      readIndex: Math.max(answer.readIndex, 0),
      notLeader: !confirmed,
      leaderId: answer.leaderId,
    });
  }
};

/**
 * A forwarded write is bytes from the network: the leader checks that every command and value
 * decodes before it appends one (the caller checked too, but may run other code). The ones that
 * do not are refused back as invalid, and counted; the rest go on.
 */
export const withoutUndecodable = (
  b: LeaderBatches,
  message: ClientPropose,
  send: (message: ClientMessage) => void,
): ClientPropose => {
  let firstBad = 0;
  while (firstBad < message.commands.length && whyUndecodable(message.commands[firstBad]!) === null)
    firstBad += 1;
  if (firstBad === message.commands.length) return message;
  const seqs = message.seqs.slice(0, firstBad);
  const commands = message.commands.slice(0, firstBad);
  const bad: number[] = [];
  for (let offset = firstBad; offset < message.commands.length; offset += 1) {
    const good = whyUndecodable(message.commands[offset]!) === null;
    (good ? seqs : bad).push(message.seqs[offset]!);
    if (good) commands.push(message.commands[offset]!);
  }
  b.counters.malformedMessages += 1;
  send({
    type: 'ClientProposeResult',
    from: b.id,
    to: message.from,
    seqs: bad,
    firstIndex: 0,
    term: 0,
    notLeader: false,
    leaderId: b.id,
    invalid: true,
  });
  return { ...message, seqs, commands };
};

/** A refusal of a forwarded batch: this node does not lead (it names the leader it knows). */
export const refusal = (
  b: LeaderBatches,
  to: NodeId,
  type: 'ClientProposeResult' | 'ClientReadResult',
  ids: number[],
  leaderId: NodeId | null,
): ClientMessage => {
  const base = { from: b.id, to, firstIndex: 0, readIndex: 0, term: 0, notLeader: true, leaderId };
  return type === 'ClientProposeResult' ? { ...base, type, seqs: ids } : { ...base, type, ids };
};
