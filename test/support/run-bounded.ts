/** Runs a child process to completion for e2e tests, killing it after a bound (no test hangs). */
import { spawn } from 'node:child_process';

export type Run = { code: number | null; signal: string | null; stdout: string; stderr: string; ms: number };

/** Runs `command` to completion, killing it after `boundMs` (stderr then says so). */
export const runBounded = (
  command: string,
  args: string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv },
  boundMs: number,
): Promise<Run> =>
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
