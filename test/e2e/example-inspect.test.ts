/**
 * `npm run example:inspect` (examples/inspect.ts) runs as a user would run it: three nodes with
 * mTLS on 127.0.0.1, each with @statelyai/inspect's WebSocket inspector sending to the package's
 * inspector server; writes, the leader ended, a new leader, writes again. It must exit 0 on its own
 * (no --hold-ms), print nothing on stderr, name a new leader other than the first, read back what
 * it wrote, print the URL to open, and report that the server forwarded inspection events of
 * every node's actors (at least one actor per node).
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runBounded } from '../support/run-bounded.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BOUND_MS = 90_000;

/** Runs the example to completion, killing it after BOUND_MS. */
const runExample = () =>
  runBounded(process.execPath, ['--import', 'tsx', 'examples/inspect.ts'], { cwd: ROOT }, BOUND_MS);

describe('npm run example:inspect', () => {
  it(
    'writes, survives the leader ending, prints the inspector URL and exits 0 on its own',
    async () => {
      const { code, stdout, stderr } = await runExample();
      expect(stderr, stdout).toBe('');
      expect(code, stdout).toBe(0);
      const first = /^leader: (node-\d) \(term (\d+)\)$/m.exec(stdout);
      const second = /^new leader: (node-\d) \(term (\d+)\)$/m.exec(stdout);
      expect(first, stdout).not.toBeNull();
      expect(second, stdout).not.toBeNull();
      expect(second![1]).not.toBe(first![1]);
      expect(Number(second![2])).toBeGreaterThan(Number(first![2]));
      expect(stdout).toContain(`ended the leader ${first![1]}`);
      expect(stdout).toContain('read back key-1 = value-1, key-5 = value-5');
      expect(stdout).toMatch(/^Open http:\/\/localhost:\d+ in a browser/m);
      const forwarded = /forwarded (\d+) inspection events from (\d+) actors/.exec(stdout);
      expect(forwarded, stdout).not.toBeNull();
      expect(Number(forwarded![1])).toBeGreaterThan(0);
      expect(Number(forwarded![2])).toBeGreaterThanOrEqual(3);
      expect(stdout.trimEnd().endsWith('done')).toBe(true);
    },
    BOUND_MS + 10_000,
  );
});
