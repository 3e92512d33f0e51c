/**
 * Catch-up runs (issue 9, items 2 and 4): a follower whose log got shorter at a restart, or that
 * fell far behind, is caught up while the same leader stays, with no election.
 *
 * - `restartRun`: a follower is restarted again and again while writes go on, losing its whole
 *   memory log ('amnesia', the default mode of a node without persistence) or a tail of it. The
 *   network drops, duplicates and holds back messages for long, so answers the follower sent
 *   before a restart reach the leader after it. An amnesiac follower that then voted could break
 *   safety (another issue's recovery protocol fixes that), so these runs keep the leader up and
 *   reachable and assert that no election happened: the safety checker runs after every step all
 *   the same. Each round must end with the follower applied up to the leader's commit index
 *   within a bound of simulated time.
 * - `farBehindRun`: a follower is cut off while MiBs of large values are written, then healed; it
 *   must catch up within a bound, with no term change, and every AppendEntries the leader sent
 *   must stay within the byte bound (one entry of any size alone, else at most maxAppendBytes).
 */
import { expect } from 'vitest';
import type { RaftMessage } from '../../src/machines/messages.js';
import { SNAPSHOT_RETRY_HEARTBEATS } from '../../src/machines/progress.js';
import { createSimulation, type NetworkFaults, type Proposal } from './simulator.js';

type Simulation = ReturnType<typeof createSimulation>;

/** Drops a few, duplicates some and holds some back for up to 1.5 s (ten heartbeats and more). */
export const CATCHUP_NETWORK: Partial<NetworkFaults> = {
  minDelayMs: 1,
  maxDelayMs: 10,
  dropRate: 0.02,
  duplicateRate: 0.1,
  longDelayRate: 0.05,
  longDelayMaxMs: 1500,
};

/** Long election timeouts against the lossy network: an election would end the run (asserted). */
const TIMINGS = { electionTimeoutMs: 1000, heartbeatMs: 50 };
/** Simulated time a round may take to catch the follower up. */
const CATCH_UP_BOUND_MS = 30_000;

const waitForLeader = async (sim: Simulation): Promise<{ id: string; term: number }> => {
  await sim.runUntil(() => sim.stableLeader() !== null, 20_000, 'a stable leader');
  const id = sim.stableLeader()!;
  return { id, term: sim.status(id)!.term };
};

/** Proposes `count` values at the leader and runs until every one is acknowledged. */
const writeAll = async (sim: Simulation, leader: string, values: string[]): Promise<void> => {
  const proposals: Proposal[] = values.map((value, index) => sim.propose(leader, value, `k${index % 64}`));
  await sim.runUntil(
    () => proposals.every((proposal) => proposal.state !== 'pending'),
    CATCH_UP_BOUND_MS,
    `${values.length} writes acknowledged`,
  );
  const failed = proposals.filter((proposal) => proposal.state === 'failed');
  if (failed.length > 0) sim.fail(`${failed.length} writes failed: ${failed[0]!.error}`);
};

const assertSameLeader = (sim: Simulation, leader: { id: string; term: number }): void => {
  const status = sim.status(leader.id);
  if (status?.role !== 'leader' || status.term !== leader.term) {
    sim.fail(`the leader changed: ${leader.id} led term ${leader.term}, now ${JSON.stringify(status)}`);
  }
  for (const id of sim.ids) {
    const term = sim.status(id)?.term;
    if (term !== undefined && term > leader.term)
      sim.fail(`${id} moved to term ${term} above ${leader.term}`);
  }
};

/**
 * Runs until `follower` applied everything the leader committed (at least `atLeast`) and, after an
 * amnesiac restart, completed its recovery (docs/design/recovery.md): only then does it count again,
 * so only then may another member restart without a majority of the cluster lacking its state.
 */
const awaitCaughtUp = async (sim: Simulation, leader: string, follower: string, atLeast: number) =>
  sim.runUntil(
    () => {
      const lead = sim.status(leader);
      const status = sim.status(follower);
      return (
        lead !== null &&
        status !== null &&
        lead.commitIndex >= atLeast &&
        status.appliedIndex === lead.commitIndex &&
        status.commitIndex === lead.commitIndex &&
        sim.node(follower)?.metrics().recovering === false
      );
    },
    CATCH_UP_BOUND_MS,
    `${follower} caught up with ${leader}`,
  );

export type RestartRunOptions = {
  seed: number;
  /** What the follower loses at each restart. */
  loss: 'amnesia' | 'tail';
  rounds?: number;
  /** Log compaction, so a follower that lost its log needs a (chunked) snapshot. */
  compaction?: { compactEvery: number; keepEntries: number; snapshotChunkBytes: number };
};

export type CatchUpResult = {
  /** Progress resets by a new incarnation, and answers of an old incarnation ignored, at the leader. */
  resets: number;
  staleIgnored: number;
  snapshotsSent: number;
  snapshotChunksSent: number;
  /** Simulated ms the slowest round took to catch the follower up. */
  slowestCatchUpMs: number;
  /** The most bytes of a snapshot sent beyond the follower's ack (flow control), 0 without snapshots. */
  snapshotLeadBytes: number;
};

export const restartRun = async (options: RestartRunOptions): Promise<CatchUpResult> => {
  const sim = createSimulation({
    seed: options.seed,
    nodes: 3,
    ...TIMINGS,
    network: CATCHUP_NETWORK,
    ...(options.compaction ?? {}),
  });
  const snapshotLead = watchSnapshotWindow(sim, options.compaction?.snapshotChunkBytes ?? 1024 * 1024);
  const leader = await waitForLeader(sim);
  const followers = sim.ids.filter((id) => id !== leader.id);
  let written = 0;
  const batch = (count: number) => Array.from({ length: count }, () => `v${written++}`);
  await writeAll(sim, leader.id, batch(40 + sim.rng.int(0, 40)));
  let slowestCatchUpMs = 0;
  for (let round = 0; round < (options.rounds ?? 4); round += 1) {
    const follower = followers[sim.rng.int(0, followers.length)]!;
    const before = sim.persisted(follower).entries.length;
    const loss = options.loss === 'amnesia' ? 'amnesia' : { keptEntries: sim.rng.int(0, before + 1) };
    sim.restart(follower, loss);
    // Writes go on while it restarts; then it must have everything the leader committed.
    await writeAll(sim, leader.id, batch(10 + sim.rng.int(0, 30)));
    const target = sim.status(leader.id)!.commitIndex;
    slowestCatchUpMs = Math.max(slowestCatchUpMs, await awaitCaughtUp(sim, leader.id, follower, target));
    assertSameLeader(sim, leader);
    // Let delayed pre-restart answers arrive while the leader keeps replicating.
    await sim.runFor(sim.rng.int(0, 1500));
  }
  assertSameLeader(sim, leader);
  const metrics = sim.node(leader.id)!.metrics();
  return {
    resets: metrics.incarnationResets,
    staleIgnored: metrics.staleIncarnationAnswers,
    snapshotsSent: metrics.snapshotsSent,
    snapshotChunksSent: metrics.snapshotChunksSent,
    slowestCatchUpMs,
    snapshotLeadBytes: snapshotLead(),
  };
};

export type FarBehindOptions = {
  seed: number;
  valueBytes: number;
  totalBytes: number;
  /** 'partition': cut off and healed; 'amnesia': crashed, restarted empty once the writes are in. */
  mode: 'partition' | 'amnesia';
  maxAppendBytes?: number;
  compaction?: RestartRunOptions['compaction'];
};

/** Snapshot chunks per follower the leader may have sent beyond its last ack (actors/node.ts default). */
const SNAPSHOT_WINDOW_CHUNKS = 4;

/**
 * Flow control of snapshot transfers: a chunk never goes out more than the window beyond what
 * the follower acknowledged of that snapshot (SnapshotChunkAck). Returns the largest lead seen.
 */
const watchSnapshotWindow = (sim: Simulation, chunkBytes: number) => {
  const acked = new Map<string, number>();
  let largestLeadBytes = 0;
  sim.observe((message) => {
    const raw = message as unknown as Record<string, unknown>;
    if (raw.type === 'SnapshotChunkAck') {
      const key = `${raw.to}>${raw.from}@${raw.lastIncludedIndex}`;
      acked.set(key, Math.max(acked.get(key) ?? 0, raw.receivedBytes as number));
    } else if (message.type === 'InstallSnapshot') {
      const key = `${message.from}>${message.to}@${message.lastIncludedIndex}`;
      const lead = message.chunkOffset + (message.data?.byteLength ?? 0) - (acked.get(key) ?? 0);
      largestLeadBytes = Math.max(largestLeadBytes, lead);
      if (lead > SNAPSHOT_WINDOW_CHUNKS * chunkBytes)
        sim.fail(
          `a snapshot chunk went ${lead} bytes beyond the follower's ack (window ${SNAPSHOT_WINDOW_CHUNKS} x ${chunkBytes})`,
        );
    }
  });
  return () => largestLeadBytes;
};

/** What the byte bound allows in one AppendEntries: one entry of any size, or several within it. */
const checkAppendBound = (sim: Simulation, maxAppendBytes: number) => (message: RaftMessage) => {
  if (message.type !== 'AppendEntries' || message.entries.length <= 1) return;
  let bytes = 0;
  for (const entry of message.entries) bytes += entry.data?.byteLength ?? 0;
  if (bytes > maxAppendBytes)
    sim.fail(`an AppendEntries of ${message.entries.length} entries carries ${bytes} bytes`);
};

export const farBehindRun = async (
  options: FarBehindOptions,
): Promise<CatchUpResult & { entries: number; snapshotMessagesAfterCatchUp: number }> => {
  const maxAppendBytes = options.maxAppendBytes ?? 1024 * 1024;
  const sim = createSimulation({
    seed: options.seed,
    nodes: 3,
    ...TIMINGS,
    network: { ...CATCHUP_NETWORK, dropRate: 0.01 },
    ...(options.compaction ?? {}),
  });
  sim.observe(checkAppendBound(sim, maxAppendBytes));
  const snapshotLead = watchSnapshotWindow(sim, options.compaction?.snapshotChunkBytes ?? 1024 * 1024);
  const leader = await waitForLeader(sim);
  const follower = sim.ids.find((id) => id !== leader.id)!;
  const other = sim.ids.find((id) => id !== leader.id && id !== follower)!;
  if (options.mode === 'partition') sim.partition([leader.id, other], [follower]);
  else sim.crash(follower);
  const count = Math.ceil(options.totalBytes / options.valueBytes);
  const filler = 'x'.repeat(options.valueBytes - 16);
  // In batches of about 4 MiB, as a busy client would.
  const perBatch = Math.max(1, Math.floor((4 * 1024 * 1024) / options.valueBytes));
  for (let done = 0; done < count; done += perBatch) {
    const size = Math.min(perBatch, count - done);
    await writeAll(
      sim,
      leader.id,
      Array.from({ length: size }, (_, index) => `${done + index}:${filler}`),
    );
  }
  if (options.mode === 'partition') sim.heal();
  else sim.restart(follower, 'amnesia');
  const target = sim.status(leader.id)!.commitIndex;
  const catchUpMs = await awaitCaughtUp(sim, leader.id, follower, target);
  assertSameLeader(sim, leader);
  expect(sim.node(follower)!.get('k0')).toEqual(sim.node(leader.id)!.get('k0'));
  // Once caught up, a snapshot transfer is over: after a second for what was already in flight,
  // plus the wait after which a leader resends a snapshot whose answer was lost (1% of messages
  // are: SNAPSHOT_RETRY_HEARTBEATS heartbeats, progress.ts), nothing more goes for 10 s (no
  // resend loop).
  await sim.runFor(1000 + 2 * SNAPSHOT_RETRY_HEARTBEATS * TIMINGS.heartbeatMs);
  const snapshotMessagesBefore = sim.sentByType().InstallSnapshot ?? 0;
  await sim.runFor(10_000);
  const snapshotMessagesAfterCatchUp = (sim.sentByType().InstallSnapshot ?? 0) - snapshotMessagesBefore;
  assertSameLeader(sim, leader);
  const metrics = sim.node(leader.id)!.metrics();
  return {
    snapshotMessagesAfterCatchUp,
    entries: target,
    resets: metrics.incarnationResets,
    staleIgnored: metrics.staleIncarnationAnswers,
    snapshotsSent: metrics.snapshotsSent,
    snapshotChunksSent: metrics.snapshotChunksSent,
    slowestCatchUpMs: catchUpMs,
    snapshotLeadBytes: snapshotLead(),
  };
};
