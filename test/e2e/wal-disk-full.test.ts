/**
 * A full disk, for real: a node's persistence dir on a 2 MiB tmpfs (mounted here; CI runs as
 * root), filled with writes until a write of the WAL fails with ENOSPC.
 *
 * - the node stops itself (fail-stop): the `failed` event fires exactly once with code
 *   DISK_FAILED and a message naming the errno and the WAL's path; every waiting and later call
 *   rejects with DISK_FAILED (not the STOPPED of end()); getMetrics().walError says why;
 * - once the dir has space again (the tmpfs remounted larger), a new node on the same dir starts
 *   and holds every write that was acknowledged, under its key with its value.
 *
 * No sleeps: every wait is on a call's settlement or an event.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMemoryTransport, type DiskeyvalNode, diskeyval, type FailedEvent } from '../../src/index.js';

let mountPoint: string;

const run = (command: string, args: string[]) => {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr}`);
};

beforeAll(async () => {
  mountPoint = await mkdtemp(join(tmpdir(), 'dkv-full-'));
  run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint]);
});

afterAll(async () => {
  run('umount', [mountPoint]);
  await rm(mountPoint, { recursive: true, force: true });
});

const soloNode = (dir: string): DiskeyvalNode =>
  diskeyval({
    nodeId: 'solo',
    peers: [],
    transport: createMemoryTransport(),
    electionTimeoutMs: 60,
    heartbeatMs: 15,
    // No compaction: the WAL only grows.
    persistence: { dir, compactEvery: 1_000_000 },
  });

const VALUE = 'x'.repeat(8 * 1024);
/** More than 2 MiB of values: the disk fills up well before. */
const MAX_WRITES = 400;
/** Writes in flight at once, so that groups form as they do under load. */
const CONCURRENCY = 8;

describe('a full disk: the node stops itself and says so (DISK_FAILED)', () => {
  it('fills a 2 MiB tmpfs: failed fires once, calls reject DISK_FAILED; with space again a restart holds every acknowledged write', async () => {
    const dir = join(mountPoint, 'node');
    await mkdir(dir);
    const node = soloNode(dir);
    const failures: FailedEvent[] = [];
    node.on('failed', (failure) => failures.push(failure));
    await node.start();

    const acknowledged: string[] = [];
    const rejections: Array<{ code?: string; message: string }> = [];
    let next = 0;
    const worker = async () => {
      while (next < MAX_WRITES && failures.length === 0) {
        const key = `k${next++}`;
        try {
          await node.set(key, `${key}:${VALUE}`);
          acknowledged.push(key);
        } catch (error) {
          rejections.push(error as { code?: string; message: string });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));

    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatchObject({ code: 'DISK_FAILED' });
    expect(failures[0]!.message).toContain('ENOSPC');
    expect(failures[0]!.message).toContain(join(dir, 'raft.wal'));
    expect(failures[0]!.error).toBeInstanceOf(Error);
    // What was waiting when the disk filled up was told why.
    expect(rejections.length).toBeGreaterThan(0);
    for (const rejection of rejections) expect(rejection.code).toBe('DISK_FAILED');
    expect(acknowledged.length).toBeGreaterThan(50);
    // Later calls: DISK_FAILED too, and the failed event does not fire again.
    await expect(node.set('after', 1)).rejects.toMatchObject({ code: 'DISK_FAILED' });
    await expect(node.get('k0')).rejects.toMatchObject({ code: 'DISK_FAILED' });
    await expect(node.delete('k0')).rejects.toMatchObject({ code: 'DISK_FAILED' });
    expect(node.getMetrics().walError).toContain('ENOSPC');
    await node.end();
    expect(failures).toHaveLength(1);

    // Space again: the same dir, a new node, everything acknowledged is there.
    run('mount', ['-o', 'remount,size=16m', mountPoint]);
    const restarted = soloNode(dir);
    await restarted.start();
    // A group torn by the full disk was never acknowledged: cut, and reported.
    const recovery = restarted.getMetrics().walRecovery;
    if (recovery !== null) expect(recovery.reason).toBe('torn');
    try {
      for (const key of acknowledged) expect(await restarted.get(key), key).toBe(`${key}:${VALUE}`);
      await restarted.set('after-restart', 1);
      expect(await restarted.get('after-restart')).toBe(1);
    } finally {
      await restarted.end();
    }
  });
});
