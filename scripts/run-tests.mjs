// Runs every vitest suite once and ends with the plain summary line "N passed, M failed".
// A run that executed no test fails, so CI can tell an empty run from a green one.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dir = mkdtempSync(join(tmpdir(), 'diskeyval-tests-'));
const report = join(dir, 'report.json');
const args = ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`];
const run = spawnSync('npx', [...args, ...process.argv.slice(2)], { stdio: 'inherit' });

let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const result = JSON.parse(readFileSync(report, 'utf8'));
  passed = result.numPassedTests;
  failed = result.numFailedTests;
  skipped = result.numPendingTests + result.numTodoTests;
} catch (error) {
  console.error(`could not read the test report: ${error.message}`);
  failed += 1;
}
rmSync(dir, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
const ok = run.status === 0 && failed === 0 && passed > 0 && skipped === 0;
process.exit(ok ? 0 : 1);
