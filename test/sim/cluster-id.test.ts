/**
 * The cluster id in the simulation (src/machines/cluster-id.ts; docs/design/recovery.md, "Bootstrap
 * and the cluster id"). Every run also checks, after every step, that every server that knows an id
 * knows the same one (simulator.ts `checkClusterId`): one cluster, one id, for the whole run.
 *
 * - Minted once: the first leader of the cluster writes it into its no-op at index 1; after
 *   replication every server knows it and their logs hold the same entry 1.
 * - Kept by compaction and InstallSnapshot: a follower cut off while the log is compacted past it
 *   learns the id from the snapshot it installs (its log no longer holds entry 1).
 * - Kept across a restart from the disk: a durable server whose record of the id is synced knows it
 *   as soon as it restarts; one whose crash lost that record knows none, and learns the same again.
 * - Kept across an amnesiac restart: the server forgets it, recovers, and knows the same id again.
 */
import { describe, expect, it } from 'vitest';
import { clusterIdOfEntry, isClusterId } from '../../src/machines/cluster-id.js';
import {
  agreeAll,
  converged,
  createSimulation,
  type Simulation,
  seedsFor,
  waitForLeader,
} from './simulator.js';

const SEEDS = 12;

/** The id each live server knows now. */
const knownIds = (sim: Simulation): Array<string | null> =>
  sim.ids.filter((id) => sim.isAlive(id)).map((id) => sim.node(id)!.clusterId());

/** The id entry 1 of `id`'s log carries, or null when that entry is gone (compacted) or carries none. */
const idInLog = (sim: Simulation, id: string): string | null => {
  const { entries, snapshot } = sim.persisted(id);
  if (snapshot || entries.length === 0) return null;
  return clusterIdOfEntry(1, entries[0]!);
};

describe('cluster id in the simulation', () => {
  it('is minted once per cluster and identical on every server after replication', async () => {
    const ids = new Set<string>();
    for (const seed of seedsFor(SEEDS, 1101)) {
      const sim = createSimulation({ seed, nodes: seed % 2 === 0 ? 3 : 5, network: { dropRate: 0.05 } });
      await waitForLeader(sim);
      await agreeAll(sim, ['a', 'b', 'c'], sim.ids.length);
      await converged(sim);
      const id = sim.clusterId();
      expect(isClusterId(id), `seed ${seed}: an id was minted`).toBe(true);
      expect(knownIds(sim), `seed ${seed}`).toEqual(sim.ids.map(() => id));
      for (const server of sim.ids) expect(idInLog(sim, server), `seed ${seed} ${server}`).toBe(id);
      ids.add(id!);
    }
    // Different clusters (seeds) mint different ids.
    expect(ids.size).toBe(SEEDS);
  });

  it('survives compaction and InstallSnapshot: a follower cut off learns it from the snapshot', async () => {
    for (const seed of seedsFor(SEEDS / 2, 1102)) {
      const sim = createSimulation({ seed, nodes: 3, compactEvery: 5, keepEntries: 1 });
      const leader = await waitForLeader(sim);
      const follower = sim.ids.find((id) => id !== leader)!;
      sim.crash(follower);
      // Written through the leader (agreeAll reads logs, which compaction cuts): 20 entries, so the
      // log is compacted well past entry 1.
      const proposals = Array.from({ length: 20 }, (_, i) => sim.propose(leader, `v${i}`));
      await sim.runUntil(
        () => proposals.every((proposal) => proposal.state === 'ok'),
        20_000,
        'the writes acknowledged',
      );
      // The follower restarts with an empty memory log (amnesiac: it recovers): entry 1 is gone from
      // the leader's log, so what the follower gets is a snapshot.
      sim.restart(follower, 'amnesia');
      expect(sim.node(follower)!.clusterId()).toBeNull();
      await sim.runUntil(
        () => Boolean(sim.persisted(follower).snapshot) && !sim.node(follower)!.metrics().recovering,
        20_000,
        'the follower to install a snapshot and recover',
      );
      await converged(sim);
      expect(sim.persisted(follower).snapshot, `seed ${seed}: entry 1 is compacted away`).toBeTruthy();
      expect(sim.node(follower)!.clusterId(), `seed ${seed}`).toBe(sim.clusterId());
      expect(sim.node(leader)!.clusterId()).toBe(sim.clusterId());
    }
  });

  it('survives a restart from the disk: known at once once its record is synced, learned again if a crash lost it', async () => {
    let lostRecords = 0;
    for (const seed of seedsFor(SEEDS / 2, 1103)) {
      const sim = createSimulation({ seed, nodes: 3, disk: 'durable' });
      await waitForLeader(sim);
      await agreeAll(sim, ['a', 'b'], 3);
      const id = sim.clusterId();
      expect(isClusterId(id)).toBe(true);
      // Learned on apply, the id goes to disk with the server's next flush: a crash now may lose that
      // record (never anything else). The server then knows no id, and learns the same one again.
      for (const server of sim.ids) {
        sim.restart(server);
        const known = sim.node(server)!.clusterId();
        expect([null, id], `seed ${seed} ${server}`).toContain(known);
        if (known === null) lostRecords += 1;
        await sim.runUntil(() => sim.node(server)!.clusterId() === id, 5_000, `${server} to learn it again`);
      }
      // One more write: every server flushes, and its record with it.
      await agreeAll(sim, ['c'], 3);
      for (const server of sim.ids) {
        sim.restart(server);
        // Before a single step: what the disk holds says it.
        expect(sim.node(server)!.clusterId(), `seed ${seed} ${server}`).toBe(id);
        await waitForLeader(sim, 5_000);
      }
    }
    console.log(`durable restarts right after the id was learned that lost its record: ${lostRecords}`);
    // The seeds include restarts that lost the record (the case is exercised, not assumed).
    if (process.env.DISKEYVAL_SIM_SEED === undefined) expect(lostRecords).toBeGreaterThan(0);
  });

  it('survives an amnesiac restart: the server forgets it, recovers, and knows the same one', async () => {
    for (const seed of seedsFor(SEEDS / 2, 1104)) {
      const sim = createSimulation({ seed, nodes: 3 });
      await waitForLeader(sim);
      await agreeAll(sim, ['a', 'b'], 3);
      const id = sim.clusterId();
      for (const server of sim.ids) {
        sim.restart(server, 'amnesia');
        expect(sim.node(server)!.clusterId()).toBeNull();
        expect(sim.node(server)!.metrics().recovering).toBe(true);
        await sim.runUntil(() => !sim.node(server)!.metrics().recovering, 20_000, `${server} to recover`);
        expect(sim.node(server)!.clusterId(), `seed ${seed} ${server}`).toBe(id);
      }
    }
  });
});
