/**
 * Two clusters under one CA with the same node ids never mix (issue 11, the cluster id): real
 * processes, real mTLS, a WAL per node (so every node keeps its cluster id across a restart).
 *
 * Cluster X and cluster Y are started from the same certificates (node-1..node-3 of one CA), so
 * mTLS and the membership check let any of them talk to any other. Then the operator's mistake:
 * one node v of Y is restarted in the place of X's node v (X's v is down; Y's v listens on X's v
 * port and lists X's members as its peers). X's leader then sends to it, and it sends to X's
 * members. The cluster id (minted at bootstrap, carried by every message) must keep them apart:
 * X keeps its leader and term and goes on acknowledging writes, both sides count the foreign
 * messages (getMetrics().clusterMismatches) and warn (CLUSTER_MISMATCH, once per peer), Y's node
 * never leads, never takes X's log or X's id, and its calls reject.
 *
 * Every wait is on an event a node reports (warning, metrics, role) or on a reply, with a bound.
 */
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Cluster,
  describeTimeline,
  formatRoleTimeline,
  nowMs,
  outcomeOf,
  startCluster,
  waitForWarning,
} from '../support/amnesia.js';

const IDS = ['node-1', 'node-2', 'node-3'];
const LEADER_BOUND_MS = 10_000;
const MISMATCH_BOUND_MS = 10_000;

const clusters: Cluster[] = [];
const dirs: string[] = [];

afterEach(async (context) => {
  if (context.task.result?.state === 'fail') for (const c of clusters) console.log(describeTimeline(c));
  for (const c of clusters.splice(0)) await c.stop();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const options = { persistence: true, proposalTimeoutMs: 1500, warningEvents: true, watchMetrics: 20 };

describe('amnesia: two clusters under one CA with the same node ids refuse each other', () => {
  it("a node of cluster Y put in the place of X's node: X is undisturbed, both sides count and warn", async () => {
    const x = await startCluster({ ...options, ids: IDS });
    clusters.push(x);
    const yDir = await mkdtemp(join(tmpdir(), 'diskeyval-cluster-y-'));
    dirs.push(yDir);
    for (const file of ['ca.pem', ...IDS.flatMap((id) => [`${id}.pem`, `${id}.key`])]) {
      await copyFile(join(x.dir, file), join(yDir, file));
    }
    const y = await startCluster({ ...options, ids: IDS, dir: yDir, existingCerts: true });
    clusters.push(y);

    const xLeader = await x.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    await y.waitForLeader(LEADER_BOUND_MS, { agreed: true });
    await x.set(xLeader.leaderId, 'owner', 'X');
    await y.set(y.ids[0]!, 'owner', 'Y');
    await y.set(y.ids[0]!, 'only-in-y', 1);
    const xId = (await x.metrics(xLeader.leaderId)).clusterId;
    const yId = (await y.metrics(y.ids[0]!)).clusterId;
    expect(typeof xId === 'string' && typeof yId === 'string', 'both clusters minted an id').toBe(true);
    expect(xId).not.toBe(yId);

    // v: a member of X other than its leader, so that X keeps a majority without it.
    const v = IDS.find((id) => id !== xLeader.leaderId)!;
    const xOthers = IDS.filter((id) => id !== v);
    await x.kill(v, 'SIGKILL');
    await y.kill(v, 'SIGKILL');
    const exposedAt = nowMs();
    await y.restart(v, {
      port: x.ports[v],
      peers: xOthers.map((id) => ({ nodeId: id, host: '127.0.0.1', port: x.ports[id] })),
    });

    for (const id of xOthers) {
      const warning = await waitForWarning(x, id, 'CLUSTER_MISMATCH', {
        sinceMs: exposedAt,
        timeoutMs: MISMATCH_BOUND_MS,
      });
      expect(warning).toMatchObject({ peer: v, theirs: yId, ours: xId });
    }
    const yWarning = await waitForWarning(y, v, 'CLUSTER_MISMATCH', {
      sinceMs: exposedAt,
      timeoutMs: MISMATCH_BOUND_MS,
    });
    expect(yWarning).toMatchObject({ theirs: xId, ours: yId });

    // X goes on as before: same leader, same term, writes acknowledged, nothing of Y in it.
    await x.set(xLeader.leaderId, 'after', 'still X');
    const onY = await outcomeOf(y.set(v, 'from-y', 1));
    expect(onY.ok, "a call on Y's node placed among X's members").toBe(false);
    expect(onY).toMatchObject({ code: 'QUORUM_UNAVAILABLE' });
    const timeline = `\nX:\n${formatRoleTimeline(x.timeline, { t0: x.t0 })}\nY:\n${formatRoleTimeline(y.timeline, { t0: y.t0 })}`;
    expect(x.currentLeader(), timeline).toMatchObject({ leaderId: xLeader.leaderId, term: xLeader.term });
    expect(
      x.timeline
        .filter((e) => e.event === 'role' && e.atMs >= exposedAt)
        .map((e) => `${e.node} ${e.role} ${e.term}`),
      `X's roles do not change${timeline}`,
    ).toEqual([]);
    expect(
      y.timeline.filter(
        (e) => e.node === v && e.event === 'role' && e.role === 'leader' && e.atMs >= exposedAt,
      ),
      timeline,
    ).toEqual([]);
    for (const id of xOthers) {
      const metrics = await x.metrics(id);
      expect(metrics.clusterMismatches, `${id} of X counts Y's messages`).toBeGreaterThan(0);
      expect(metrics.clusterId).toBe(xId);
      expect(await x.get(id, 'owner')).toBe('X');
      expect(await x.get(id, 'only-in-y')).toBeUndefined();
    }
    const vMetrics = await y.metrics(v);
    expect(vMetrics.clusterMismatches, "Y's node counts X's messages").toBeGreaterThan(0);
    expect(vMetrics.clusterId, "Y's node keeps Y's id").toBe(yId);

    // One warning per peer, not one per message.
    const perPeer = x.timeline.filter((e) => e.event === 'warning' && e.code === 'CLUSTER_MISMATCH');
    expect(perPeer.length).toBe(xOthers.length);
    console.log(
      `two clusters: X ${xId} leader ${xLeader.leaderId} term ${xLeader.term} kept; mismatches counted ` +
        `${(await Promise.all(xOthers.map(async (id) => `${id} ${(await x.metrics(id)).clusterMismatches}`))).join(', ')}` +
        `, Y's ${v} ${vMetrics.clusterMismatches}`,
    );
  }, 60_000);
});
