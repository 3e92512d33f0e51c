/**
 * The README's first example works as written, pasted into a file: it is taken from README.md (the
 * first ```typescript block of "## Using it"), run as TypeScript (through tsx) from a temp
 * directory in which `import diskeyval from 'diskeyval'` resolves to this package (a
 * node_modules/diskeyval symlink to the repository root, so the package's `exports` and the built
 * dist/ are used). One change only: the ports 8050-8052 become free ports. It must exit 0 and print
 * exactly what the README says it prints, with nothing on stderr (no warning). The same file is
 * also type-checked against the package's published types.
 *
 * Before: the first example started one node whose two peers never ran, so it could only reject
 * with QUORUM_UNAVAILABLE after 5 s.
 */
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runBounded as run } from '../support/run-bounded.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const { freePorts } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  freePorts(count: number, host?: string): Promise<number[]>;
};

/** The first typescript block of the README's "## Using it" section, and the sentence after it. */
const readmeExample = async (): Promise<{ code: string; prints: string }> => {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Using it\n'));
  const match = /```typescript\n([\s\S]*?)```\n\nIt prints ([^\n]*)/.exec(section);
  if (!match) throw new Error('README.md: no typescript block followed by "It prints" under "## Using it"');
  return { code: match[1]!, prints: match[2]! };
};

describe('the README API example', () => {
  let dir: string;
  let examplePath: string;
  let expectedLines: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diskeyval-readme-'));
    await mkdir(join(dir, 'node_modules', '@types'), { recursive: true });
    await symlink(ROOT, join(dir, 'node_modules', 'diskeyval'), 'dir');
    await symlink(join(ROOT, 'node_modules', 'tsx'), join(dir, 'node_modules', 'tsx'), 'dir');
    await symlink(
      join(ROOT, 'node_modules', '@types', 'node'),
      join(dir, 'node_modules', '@types', 'node'),
      'dir',
    );
    await writeFile(
      join(dir, 'package.json'),
      JSON.stringify({ name: 'readme-example', type: 'module', private: true }),
    );

    const { code: example, prints } = await readmeExample();
    // "It prints `changed testkey testvalue1 false`, then `testvalue1`."
    expectedLines = [...prints.matchAll(/`([^`]*)`/g)].map((match) => match[1]!);
    expect(expectedLines.length).toBeGreaterThan(0);
    expect(example).toContain("from 'diskeyval'");
    const [p1, p2, p3] = (await freePorts(3)) as [number, number, number];
    const code = example
      .replaceAll('8050', String(p1))
      .replaceAll('8051', String(p2))
      .replaceAll('8052', String(p3));
    expect(code).not.toContain('805');
    examplePath = join(dir, 'example.mts');
    await writeFile(examplePath, code);
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('runs as pasted: exits 0, prints what the README says, nothing on stderr', async () => {
    const example = await run(process.execPath, ['--import', 'tsx', examplePath], { cwd: dir }, 30_000);
    console.log(`README example: exit ${example.code} in ${example.ms} ms; stdout: ${example.stdout.trim()}`);
    expect(example.stderr).not.toContain('[killed');
    expect(example.code, `stderr:\n${example.stderr}`).toBe(0);
    expect(example.stdout.trim().split('\n')).toEqual(expectedLines);
    expect(example.stderr).toBe('');
  });

  it('`diskeyval certs` writes the files the README names', async () => {
    const certs = await run(
      process.execPath,
      [join(ROOT, 'dist', 'cli.js'), 'certs', '--out', join(dir, 'certs'), '--nodes', 'node-1,node-2,node-3'],
      { cwd: dir },
      15_000,
    );
    expect(certs.code, certs.stderr).toBe(0);
    for (const name of ['ca.pem', 'ca.key', 'node-1.pem', 'node-1.key', 'node-3.key']) {
      expect((await readFile(join(dir, 'certs', name), 'utf8')).length, name).toBeGreaterThan(0);
    }
  });

  it('type-checks against the package types', async () => {
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const result = await run(
      process.execPath,
      [
        tsc,
        '--noEmit',
        '--strict',
        '--target',
        'ES2022',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--types',
        'node',
        '--skipLibCheck',
        examplePath,
      ],
      { cwd: dir },
      30_000,
    );
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
  });
});
