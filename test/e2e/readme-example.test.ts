/**
 * The API example of the README works as written: two nodes of a three-node configuration, with
 * certificates made by `diskeyval certs` and passed in NODE1_CERT_PEM, NODE1_KEY_PEM,
 * NODE2_CERT_PEM, NODE2_KEY_PEM and CLUSTER_CA_PEM.
 *
 * The example is run verbatim as TypeScript (through tsx) from a temp directory in which
 * `import diskeyval from 'diskeyval'` resolves to this package (a node_modules/diskeyval symlink
 * to the repository root, so the package's `exports` and the built dist/ are used). Two changes
 * only: the ports 8050-8052 become free ports, and one line prints the value that was read.
 * The same file is also type-checked against the package's published types.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const { freePorts } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  freePorts(count: number, host?: string): Promise<number[]>;
};

/** The README's "API Example", character for character. */
const README_EXAMPLE = `import diskeyval from 'diskeyval';

const node1 = diskeyval({
nodeId: 'node-1',
host: '127.0.0.1',
port: 8050,
peers: [
{ nodeId: 'node-2', host: '127.0.0.1', port: 8051 },
{ nodeId: 'node-3', host: '127.0.0.1', port: 8052 }
],
tls: {
cert: process.env.NODE1_CERT_PEM!,
key: process.env.NODE1_KEY_PEM!,
ca: process.env.CLUSTER_CA_PEM!
}
});

const node2 = diskeyval({
nodeId: 'node-2',
host: '127.0.0.1',
port: 8051,
peers: [
{ nodeId: 'node-1', host: '127.0.0.1', port: 8050 },
{ nodeId: 'node-3', host: '127.0.0.1', port: 8052 }
],
tls: {
cert: process.env.NODE2_CERT_PEM!,
key: process.env.NODE2_KEY_PEM!,
ca: process.env.CLUSTER_CA_PEM!
}
});

await node1.start();
await node2.start();

await node1.set('testkey', 'testvalue1');
const value = await node1.get('testkey');

node1.on('change', ({ key, value }) => {
console.log('changed', key, value);
});

await node1.end();
await node2.end();
`;

type Run = { code: number | null; signal: string | null; stdout: string; stderr: string; ms: number };

/** Runs a command to completion, killing it after `boundMs`. */
const run = (
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv },
  boundMs: number,
) =>
  new Promise<Run>((resolve) => {
    const started = performance.now();
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    const timer = setTimeout(() => {
      stderr += `\n[killed: still running after ${boundMs} ms]`;
      child.kill('SIGKILL');
    }, boundMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Math.round(performance.now() - started) });
    });
  });

describe('the README API example', () => {
  let dir: string;
  let examplePath: string;

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

    const [p1, p2, p3] = (await freePorts(3)) as [number, number, number];
    const code = README_EXAMPLE.replaceAll('8050', String(p1))
      .replaceAll('8051', String(p2))
      .replaceAll('8052', String(p3))
      .replace(
        "const value = await node1.get('testkey');\n",
        "const value = await node1.get('testkey');\nconsole.log('value:', value);\n",
      );
    expect(code).toContain("console.log('value:', value);");
    examplePath = join(dir, 'example.ts');
    await writeFile(examplePath, code);
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('runs with certificates from `diskeyval certs`, exits 0 and prints the value', async () => {
    const certs = await run(
      process.execPath,
      [join(ROOT, 'dist', 'cli.js'), 'certs', '--out', join(dir, 'certs'), '--nodes', 'node-1,node-2,node-3'],
      { cwd: dir },
      15_000,
    );
    expect(certs.code, certs.stderr).toBe(0);
    expect(certs.stdout).toContain('node-1.pem');
    const pem = (name: string) => readFile(join(dir, 'certs', name), 'utf8');
    const env = {
      ...process.env,
      NODE1_CERT_PEM: await pem('node-1.pem'),
      NODE1_KEY_PEM: await pem('node-1.key'),
      NODE2_CERT_PEM: await pem('node-2.pem'),
      NODE2_KEY_PEM: await pem('node-2.key'),
      CLUSTER_CA_PEM: await pem('ca.pem'),
    };

    const example = await run(process.execPath, ['--import', 'tsx', examplePath], { cwd: dir, env }, 20_000);
    console.log(`README example: exit ${example.code} in ${example.ms} ms; stdout: ${example.stdout.trim()}`);
    expect(example.stderr).not.toContain('[killed');
    expect(example.code, `stderr:\n${example.stderr}`).toBe(0);
    expect(example.stdout.trim().split('\n')).toEqual(['value: testvalue1']);
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
