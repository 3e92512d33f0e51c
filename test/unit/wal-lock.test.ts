/**
 * The persistence dir's lock (src/io/dir-lock.ts), taken by the durable log actor before anything
 * in the dir is read, with real processes (node + tsx on the sources):
 *
 * - two processes opening one fresh dir at the same moment: exactly one gets it, the other
 *   rejects with DIR_LOCKED (5 rounds);
 * - a second process while the first holds the dir: DIR_LOCKED naming the dir, the holder's pid
 *   and node; the dir is byte-identical afterwards (WAL, identity file, a leftover tmp file);
 * - kill -9 of the holder: a new process gets the dir at once (no wait, no retry), although the
 *   killed one left its LOCK socket file behind;
 * - a holder in another network namespace (`unshare -n`, where the abstract socket is not seen):
 *   the LOCK socket file still locks it;
 * - in one process: the second open is refused, and the lock is released by close(); through the
 *   public API, the second node's start() rejects with DIR_LOCKED and end() frees the dir.
 *
 * Every wait is on a child's output line or its exit, with a bound.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createWalLog } from '../../src/actors/wal-log.js';
import { createMemoryTransport, diskeyval, isDirLocked } from '../../src/index.js';
import { LOCK_FILE_NAME } from '../../src/io/dir-lock.js';
import { WAL_FILE_NAME } from '../../src/io/wal.js';

const WAL_LOG_MODULE = fileURLToPath(new URL('../../src/actors/wal-log.ts', import.meta.url));
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CHILD_BOUND_MS = 20_000;

let root: string;
let childScript: string;
let nextDir = 0;
const freshDir = () => join(root, `lock-${nextDir++}`);
const children = new Set<ChildProcess>();

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dkv-lock-'));
  childScript = join(root, 'child.mts');
  // Opens the WAL of node argv[3] in argv[2], says how it went on one line, and holds it until
  // its stdin closes.
  await writeFile(
    childScript,
    `import { createWalLog } from ${JSON.stringify(WAL_LOG_MODULE)};
const [dir, nodeId] = process.argv.slice(2);
try {
  const log = await createWalLog(dir, nodeId);
  log.persist({ type: 'persist', hardState: { term: 1, votedFor: nodeId }, fromIndex: -1, entries: [] });
  await log.flush();
  console.log(JSON.stringify({ ok: true, pid: process.pid }));
  process.stdin.resume();
  process.stdin.on('end', async () => { await log.close(); process.exit(0); });
} catch (error) {
  console.log(JSON.stringify({ ok: false, code: error.code, message: error.message }));
  process.exit(1);
}
`,
  );
});

afterEach(() => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

type Outcome = { ok: boolean; pid?: number; code?: string; message?: string };

/** Starts a child on `dir` as `nodeId` (optionally in a new network namespace). */
const startChild = (dir: string, nodeId: string, options: { netns?: boolean } = {}) => {
  const args = ['--import', 'tsx', childScript, dir, nodeId];
  const child = options.netns
    ? spawn('unshare', ['-n', process.execPath, ...args], { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] })
    : spawn(process.execPath, args, { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] });
  children.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const outcome = new Promise<Outcome>((resolve, reject) => {
    const bound = setTimeout(
      () => reject(new Error(`child ${nodeId} said nothing in ${CHILD_BOUND_MS} ms`)),
      CHILD_BOUND_MS,
    );
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(bound);
      resolve(JSON.parse(line) as Outcome);
    });
    child.once('exit', (code) => {
      clearTimeout(bound);
      reject(new Error(`child ${nodeId} exited (${code}) without a word`));
    });
  });
  // A rejection nobody awaits (the child answered first) is not an error.
  outcome.catch(() => undefined);
  return { child, outcome, exited };
};

/** Every file in `dir` with its bytes (sockets as their names only). */
const snapshotDir = async (dir: string) => {
  const entries = await readdir(dir, { withFileTypes: true });
  const files: Record<string, string> = {};
  for (const entry of entries) {
    files[entry.name] = entry.isFile()
      ? (await readFile(join(dir, entry.name))).toString('base64')
      : 'socket';
  }
  return files;
};

describe('the persistence dir is one process’s alone', () => {
  it('two processes starting at once on one fresh dir: exactly one gets it, the other DIR_LOCKED (5 rounds)', async () => {
    for (let round = 0; round < 5; round += 1) {
      const dir = freshDir();
      const a = startChild(dir, 'n1');
      const b = startChild(dir, 'n1');
      const outcomes = await Promise.all([a.outcome, b.outcome]);
      expect(
        outcomes.filter((outcome) => outcome.ok),
        `round ${round}`,
      ).toHaveLength(1);
      expect(
        outcomes.find((outcome) => !outcome.ok),
        `round ${round}`,
      ).toMatchObject({ code: 'DIR_LOCKED' });
      a.child.stdin!.end();
      b.child.stdin!.end();
      await Promise.all([a.exited, b.exited]);
    }
  });

  it('a second process rejects with DIR_LOCKED naming the holder, and touches nothing; after kill -9 of the holder a new one starts at once', async () => {
    const dir = freshDir();
    const holder = startChild(dir, 'n1');
    const held = await holder.outcome;
    expect(held.ok).toBe(true);
    // A leftover tmp file: the real open would remove it; a refused one must not.
    await writeFile(join(dir, `${WAL_FILE_NAME}.tmp`), 'leftover');
    const before = await snapshotDir(dir);
    expect(Object.keys(before).sort()).toEqual(
      [LOCK_FILE_NAME, WAL_FILE_NAME, `${WAL_FILE_NAME}.tmp`, 'diskeyval.id'].sort(),
    );

    const second = await startChild(dir, 'n1').outcome;
    expect(second).toMatchObject({ ok: false, code: 'DIR_LOCKED' });
    expect(second.message).toContain(dir);
    expect(second.message).toContain(`pid ${held.pid}`);
    expect(second.message).toContain('node n1');
    expect(await snapshotDir(dir)).toEqual(before);

    holder.child.kill('SIGKILL');
    await holder.exited;
    // The killed holder's socket file is still there; the next process takes the dir at once.
    expect((await readdir(dir)).includes(LOCK_FILE_NAME)).toBe(true);
    const next = startChild(dir, 'n1');
    expect(await next.outcome).toMatchObject({ ok: true });
    next.child.stdin!.end();
    await next.exited;
  });

  it('a holder in another network namespace (no shared abstract socket) is still seen through the LOCK file', async () => {
    const dir = freshDir();
    const holder = startChild(dir, 'n1', { netns: true });
    expect(await holder.outcome).toMatchObject({ ok: true });
    const before = await snapshotDir(dir);
    const second = await startChild(dir, 'n1').outcome;
    expect(second).toMatchObject({ ok: false, code: 'DIR_LOCKED' });
    expect(await snapshotDir(dir)).toEqual(before);
    holder.child.stdin!.end();
    await holder.exited;
  });

  it('in one process: the second open is refused until the first one closes', async () => {
    const dir = freshDir();
    await mkdir(dir, { recursive: true });
    const first = await createWalLog(dir, 'n1');
    await expect(createWalLog(dir, 'n1')).rejects.toMatchObject({
      code: 'DIR_LOCKED',
      message: expect.stringContaining(`pid ${process.pid}`),
    });
    await first.close();
    const second = await createWalLog(dir, 'n1');
    await second.close();
  });

  it('through the public API: a second node on the same dir rejects start() with DIR_LOCKED; end() frees the dir', async () => {
    const dir = freshDir();
    const make = () =>
      diskeyval({ nodeId: 'n1', peers: [], transport: createMemoryTransport(), persistence: { dir } });
    const first = make();
    await first.start();
    await first.set('k', 1);
    const second = make();
    const error = await second.start().then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(isDirLocked(error)).toBe(true);
    expect((error as Error).message).toContain(dir);
    await expect(second.set('k', 2)).rejects.toMatchObject({ code: 'STOPPED' });
    await first.end();
    const third = make();
    await third.start();
    expect(await third.get('k')).toBe(1);
    await third.end();
  });
});
