/**
 * The package as a user gets it: `npm pack` of this repository, unpacked into a fresh project's
 * node_modules/diskeyval (its dependencies linked from this repository's node_modules, so no
 * network is needed), then imported with `import` and loaded with `require` in separate Node
 * processes, each starting a one-node cluster and doing a set and a get.
 *
 * Defects this catches: `require('diskeyval')` failing with ERR_PACKAGE_PATH_NOT_EXPORTED (no
 * `default` condition in `exports`); no LICENSE in the package; source maps shipped that point to
 * sources that are not; a dependency nothing imports (reflect-metadata); `engines` below what the
 * code needs (zlib.crc32 arrived in Node 20.15 and 22.2).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const packageJson = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as {
  engines: { node: string };
  dependencies: Record<string, string>;
  files: string[];
};

/** Whether this Node loads ES modules from `require` without a flag (20.19+, 22.12+, 23+). */
const requireLoadsEsm = (): boolean => {
  const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
  return (major === 20 && minor >= 19) || (major === 22 && minor >= 12) || major >= 23;
};

const ONE_NODE = `
  const node = diskeyval({ nodeId: 'solo', peers: [], transport: createMemoryTransport(), electionTimeoutMs: 100, heartbeatMs: 20 });
  await node.start();
  await node.set('k', { packed: true });
  console.log(JSON.stringify(await node.get('k')));
  await node.end();
`;

let dir: string;
let files: string[];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'diskeyval-pack-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir, '--ignore-scripts'], {
    cwd: ROOT,
  });
  const [packed] = JSON.parse(stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  files = packed!.files.map((file) => file.path);
  const app = join(dir, 'app');
  const target = join(app, 'node_modules', 'diskeyval');
  await mkdir(target, { recursive: true });
  await run('tar', ['-xzf', join(dir, packed!.filename), '-C', target, '--strip-components=1']);
  for (const dependency of Object.keys(packageJson.dependencies)) {
    const link = join(app, 'node_modules', dependency);
    await mkdir(join(link, '..'), { recursive: true });
    await symlink(join(ROOT, 'node_modules', dependency), link, 'dir');
  }
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
}, 60_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the packed package', () => {
  it('ships dist and LICENSE, no source maps, no sources', () => {
    expect(files).toContain('LICENSE');
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.d.ts');
    expect(files.filter((file) => file.endsWith('.map'))).toEqual([]);
    expect(files.filter((file) => file.startsWith('src/') || file.startsWith('test/'))).toEqual([]);
    expect(packageJson.files).toContain('LICENSE');
  });

  it('declares only dependencies the code imports, and engines that have zlib.crc32', async () => {
    const sources = await readdir(join(ROOT, 'src'), { recursive: true });
    let text = '';
    for (const file of sources.filter((name) => name.endsWith('.ts')))
      text += await readFile(join(ROOT, 'src', file), 'utf8');
    for (const dependency of Object.keys(packageJson.dependencies)) {
      expect(text.includes(`'${dependency}'`), `${dependency} is imported`).toBe(true);
    }
    expect(packageJson.dependencies['reflect-metadata']).toBeUndefined();
    expect(packageJson.engines.node).toBe('^20.15.0 || >=22.2.0');
    expect(typeof (await import('node:zlib')).crc32).toBe('function');
  });

  it('works with import', async () => {
    const script = `import diskeyval, { createMemoryTransport } from 'diskeyval';\n${ONE_NODE}`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
      cwd: join(dir, 'app'),
    });
    expect(stdout.trim()).toBe('{"packed":true}');
  });

  it(`works with require (this Node, ${process.versions.node}, ${requireLoadsEsm() ? 'loads' : 'does not load'} ES modules from require)`, async () => {
    const script = `const { diskeyval, createMemoryTransport } = require('diskeyval');\n(async () => {${ONE_NODE}})();`;
    const result = await run(process.execPath, ['-e', script], { cwd: join(dir, 'app') }).then(
      ({ stdout }) => ({ ok: true, output: stdout }),
      (error: { stderr: string }) => ({ ok: false, output: error.stderr }),
    );
    if (requireLoadsEsm()) {
      expect(result.output.trim()).toBe('{"packed":true}');
    } else {
      // Older Nodes: the documented limit, with Node's own error (not a missing export).
      expect(result.output).toContain('ERR_REQUIRE_ESM');
    }
    expect(result.output).not.toContain('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });
});
