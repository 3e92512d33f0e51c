/**
 * scripts/long-functions.mjs (`npm run check:functions`) finds every function over the limit,
 * however it is written, counts nested closures in their enclosing function, and exits 1 then;
 * a tree of short functions passes with exit 0. The broken variant is a 101-line factory made only
 * of short closures (what createPackedMap was): the check must name it.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const SCRIPT = fileURLToPath(new URL('../../scripts/long-functions.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'long-functions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A function of exactly `lines` lines (first and last included), written as `form`. */
const functionOf = (name: string, lines: number, form: 'arrow' | 'declaration' | 'method'): string => {
  const body = Array.from({ length: lines - 2 }, (_, i) => `  const v${i} = ${i};`).join('\n');
  if (form === 'arrow') return `export const ${name} = () => {\n${body}\n};\n`;
  if (form === 'declaration') return `export function ${name}() {\n${body}\n}\n`;
  return `export const holder = {\n${name}() {\n${body}\n},\n};\n`;
};

/** A factory of `closures` closures of 8 lines each: short closures, one long function. */
const factoryOf = (closures: number): string => {
  const inner = Array.from(
    { length: closures },
    (_, i) =>
      `  const c${i} = () => {\n${Array.from({ length: 6 }, (_, k) => `    const v${k} = ${k};`).join('\n')}\n  };`,
  ).join('\n');
  return `export const createThing = () => {\n${inner}\n  return {};\n};\n`;
};

const check = (...args: string[]) => spawnSync(process.execPath, [SCRIPT, ...args], { encoding: 'utf8' });

describe('scripts/long-functions.mjs', () => {
  it('passes a tree whose functions are all at most 100 lines', () => {
    const path = join(dir, 'short');
    mkdirSync(join(path, 'nested'), { recursive: true });
    writeFileSync(join(path, 'a.ts'), functionOf('exactlyHundred', 100, 'arrow'));
    writeFileSync(join(path, 'nested', 'b.ts'), functionOf('short', 10, 'declaration'));
    const run = check(path);
    expect(run.status, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toMatch(/no function over 100 lines/);
  });

  it('names every function over 100 lines, however written, and a factory of short closures (the broken variant)', () => {
    const path = join(dir, 'long');
    mkdirSync(path, { recursive: true });
    for (const form of ['arrow', 'declaration', 'method'] as const) {
      writeFileSync(join(path, `long-${form}.ts`), functionOf('tooLong', 101, form));
    }
    writeFileSync(join(path, 'factory.ts'), factoryOf(13)); // 13 closures of 8 lines: 107 lines in all
    const run = check(path);
    expect(run.status).toBe(1);
    for (const form of ['arrow', 'declaration', 'method']) {
      expect(run.stdout).toMatch(new RegExp(`101\\s+\\S*long-${form}\\.ts:\\d+\\s+tooLong`));
    }
    expect(run.stdout).toMatch(/\s1\d\d\s+\S*factory\.ts:1\s+createThing/);
    expect(run.stdout).not.toMatch(/\bc\d+\b/);
    expect(run.stdout).toMatch(/4 of \d+ functions are over 100 lines/);
  });

  it('honours --max-lines and lists everything with --all', () => {
    const path = join(dir, 'twenty.ts');
    writeFileSync(path, functionOf('twenty', 20, 'arrow'));
    expect(check('--max-lines', '19', path).status).toBe(1);
    const all = check('--all', '--max-lines', '20', path);
    expect(all.status).toBe(0);
    expect(all.stdout).toMatch(/20\s+\S*twenty\.ts:1\s+twenty/);
  });
});
