/**
 * `diskeyval certs --add` (src/cli.ts; README "Membership", adding a node): certificates for joining
 * nodes are issued by the CA already in the dir, which stays byte for byte as it was; the new
 * certificate chains to that CA and names its node. Refused (exit 1) without a CA in the dir, and
 * for a node whose key exists unless --force.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';

let root: string;
const out: string[] = [];
const err: string[] = [];
const io = { stdout: (text: string) => out.push(text), stderr: (text: string) => err.push(text) };

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'diskeyval-cli-add-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('diskeyval certs --add', () => {
  it("issues a joining node's certificate with the dir's CA, keeping the CA", async () => {
    const dir = join(root, 'cluster');
    expect(await main(['certs', '--out', dir, '--nodes', 'node-1,node-2,node-3'], io)).toBe(0);
    const caBefore = await readFile(join(dir, 'ca.pem'), 'utf8');
    const caKeyBefore = await readFile(join(dir, 'ca.key'), 'utf8');
    expect(await main(['certs', '--out', dir, '--nodes', 'node-4,node-5', '--add'], io)).toBe(0);
    expect(await readFile(join(dir, 'ca.pem'), 'utf8')).toBe(caBefore);
    expect(await readFile(join(dir, 'ca.key'), 'utf8')).toBe(caKeyBefore);
    const ca = new X509Certificate(caBefore);
    for (const nodeId of ['node-4', 'node-5']) {
      const cert = new X509Certificate(await readFile(join(dir, `${nodeId}.pem`), 'utf8'));
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(cert.checkHost(nodeId, { wildcards: false })).toBe(nodeId);
    }
    expect(out.at(-5)).toMatch(/wrote 4 files for 2 node\(s\)/);
  });

  it('refuses without a CA in the dir, and for an existing node unless --force', async () => {
    const dir = join(root, 'other');
    expect(await main(['certs', '--out', dir, '--nodes', 'node-4', '--add'], io)).toBe(1);
    expect(err.at(-1)).toMatch(/--add needs the cluster CA/);
    expect(await main(['certs', '--out', dir, '--nodes', 'node-1'], io)).toBe(0);
    const before = await readFile(join(dir, 'node-1.pem'), 'utf8');
    expect(await main(['certs', '--out', dir, '--nodes', 'node-1', '--add'], io)).toBe(1);
    expect(err.at(-1)).toMatch(/node-1.key exists; pass --force/);
    expect(await readFile(join(dir, 'node-1.pem'), 'utf8')).toBe(before);
    expect(await main(['certs', '--out', dir, '--nodes', 'node-1', '--add', '--force'], io)).toBe(0);
    expect(await readFile(join(dir, 'node-1.pem'), 'utf8')).not.toBe(before);
  });
});
