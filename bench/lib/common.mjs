/**
 * Small helpers shared by the benchmark: statistics, /proc readers (CPU and memory of other
 * processes, machine load), formatting, and a bounded polling wait. No state lives here.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

export const MB = 1024 * 1024;

export const round = (x, digits = 3) => {
  if (x === null || x === undefined || Number.isNaN(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

/** Nearest-rank percentile of an ascending array (p in 0..100), null when empty. */
export const percentile = (sorted, p) => {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
};

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A sleep that does not keep the process alive (for bounds raced against an exit). */
export const bound = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref());

/** Polls `check` (async, truthy = done) every `everyMs` until `timeoutMs`; throws with `label` after. */
export const pollUntil = async (check, { timeoutMs, everyMs = 200, label }) => {
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (let attempt = 0; attempt < 10_000 && Date.now() < deadline; attempt += 1) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(everyMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${label}${lastError ? ` (last error: ${lastError.message})` : ''}`,
  );
};

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU seconds of another process from /proc/<pid>/stat (10 ms ticks), null if gone. */
export const procCpuSeconds = (pid) => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return null;
  }
};

/** { rssBytes, peakRssBytes } of another process from /proc/<pid>/status, null if gone. */
export const procMemory = (pid) => {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name) =>
      Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? Number.NaN) * 1024;
    return { rssBytes: kb('VmRSS'), peakRssBytes: kb('VmHWM') };
  } catch {
    return null;
  }
};

/** Busy CPU seconds of the whole machine so far (all cores, from /proc/stat, idle and iowait excluded). */
export const machineBusySeconds = () => {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - fields[3] - fields[4]) / CLK_TCK;
};

/** This process's CPU seconds so far. */
export const selfCpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** The machine, for the report. */
export const machineInfo = () => {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    cpuModel = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpuModel;
  } catch {
    // keep os.cpus()
  }
  let nproc = os.cpus().length;
  try {
    nproc = Number(execFileSync('nproc', { encoding: 'utf8' }).trim()) || nproc;
  } catch {
    // keep os.cpus()
  }
  return {
    nproc,
    cpuModel,
    memTotalGiB: round(os.totalmem() / 1024 ** 3, 1),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadAvgAtStart: os.loadavg().map((x) => round(x, 2)),
  };
};

// ---- formatting ---------------------------------------------------------------------------------

export const fmtInt = (x) =>
  x === null || x === undefined || Number.isNaN(x) ? '-' : Math.round(x).toLocaleString('en-US');
export const fmtMs = (x) => {
  if (x === null || x === undefined || Number.isNaN(x)) return '-';
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  if (x >= 1) return x.toFixed(2);
  if (x < 0.001) return '<0.001'; // the harness reports latencies in whole microseconds
  return x.toFixed(3);
};
export const fmtNum = (x, digits = 2) =>
  x === null || x === undefined || Number.isNaN(x) ? '-' : Number(x).toFixed(digits);
export const fmtRatio = (x) => {
  if (x === null || x === undefined || Number.isNaN(x) || !Number.isFinite(x)) return '-';
  // Truncated, not rounded, so a ratio printed as 10x is at least 10 (targets are thresholds).
  if (x >= 100) return `${Math.floor(x)}x`;
  return `${(Math.floor(x * 10) / 10).toFixed(1)}x`;
};
export const fmtMB = (bytes) => (bytes === null || bytes === undefined ? '-' : (bytes / MB).toFixed(0));

/** A Markdown table (aligned, readable as plain text too). `align` per column: 'l' or 'r'. */
export const markdownTable = (header, rows, align = []) => {
  const cells = [header, ...rows].map((row) => row.map((c) => String(c ?? '')));
  const widths = header.map((_, i) => Math.max(3, ...cells.map((row) => row[i]?.length ?? 0)));
  const pad = (text, i) => (align[i] === 'r' ? text.padStart(widths[i]) : text.padEnd(widths[i]));
  const line = (row) => `| ${row.map((c, i) => pad(c, i)).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (align[i] === 'r' ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(cells[0]), rule, ...cells.slice(1).map(line)].join('\n');
};

/** "median X% (max Y%) of one core": CPU used by other programs during the timed phases of `rows`. */
export const backgroundLoad = (rows) => {
  const values = rows
    .map((r) => r.otherCpuPct)
    .filter((x) => typeof x === 'number')
    .sort((a, b) => a - b);
  if (values.length === 0) return null;
  return { medianPct: percentile(values, 50), maxPct: values[values.length - 1], phases: values.length };
};
