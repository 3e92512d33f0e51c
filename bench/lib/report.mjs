/**
 * Turns benchmark rows into the printed tables, the diskeyval/etcd ratios and the target verdicts.
 * Pure functions over plain objects: everything printed is also in the JSON.
 */
import { fmtInt, fmtMB, fmtMs, fmtNum, fmtRatio, markdownTable } from './common.mjs';

export const WORKLOAD_NAMES = { set: 'W1 set', get: 'W2 get (linearizable)', getLocal: 'W3 get (local)' };
const ETCD_WORKLOAD_NAMES = {
  set: 'W1 put',
  get: 'W2 get (linearizable)',
  getLocal: 'W3 get (serializable)',
};

/** Timed phases shorter than this are marked †: one preemption of a few ms changes their figure. */
export const SHORT_S = 0.05;

const sameWorkload = (a, b) => a.kind === b.kind && a.concurrency === b.concurrency;

/** The etcd row a diskeyval row compares with: memory <-> --unsafe-no-fsync, persistence <-> fsync on. */
export const etcdPeerOf = (row, etcdRows) =>
  etcdRows.find(
    (e) => sameWorkload(e, row) && e.role === row.role && e.fsync === (row.storage === 'persistence'),
  ) ?? null;

export const withRatios = (rows, etcdRows) =>
  rows.map((row) => {
    const peer = etcdPeerOf(row, etcdRows);
    if (!peer || row.opsPerS === null) return { ...row, vsEtcd: null };
    return {
      ...row,
      vsEtcd: {
        etcd: `${peer.fsync ? 'fsync' : 'no-fsync'} ${peer.role}`,
        etcdOpsPerS: peer.opsPerS,
        opsRatio: peer.opsPerS ? row.opsPerS / peer.opsPerS : null, // >1: diskeyval is faster
        p50Ratio: row.p50Ms ? peer.p50Ms / row.p50Ms : null, // >1: diskeyval's p50 is lower
        p99Ratio: row.p99Ms ? peer.p99Ms / row.p99Ms : null,
        cpuRatio: row.cpuSPer1kOps ? peer.cpuSPer1kOps / row.cpuSPer1kOps : null, // >1: diskeyval uses less
      },
    };
  });

const integrityCell = (row) => {
  const terms = [
    ...new Set([...Object.values(row.termsBefore ?? {}), ...Object.values(row.termsAfter ?? {})]),
  ];
  const t = terms.length === 1 ? `${terms[0]}` : `${terms.join('->')}!`;
  return `${row.errors}${row.lost ? `/${row.lost} lost` : ''} / ${t}`;
};

/** The main table: diskeyval rows (with ratios when etcd ran), grouped by storage and role. */
export const mainTable = (rows, { withEtcd }) => {
  const header = [
    'storage',
    'node',
    'workload',
    'c',
    'ops/s',
    'p50 ms',
    'p99 ms',
    'CPU s/1k ops',
    'peak RSS MB (max node)',
    'err / term',
  ];
  const align = ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'l'];
  if (withEtcd) {
    header.push('etcd ops/s', 'ops/s vs etcd', 'p99 vs etcd', 'CPU vs etcd');
    align.push('r', 'r', 'r', 'r');
  }
  const body = rows.map((r) => {
    if (r.na) {
      const cells = [
        r.storage,
        r.role,
        WORKLOAD_NAMES[r.kind],
        r.concurrency,
        'n/a',
        'n/a',
        'n/a',
        'n/a',
        'n/a',
        r.naReason ?? '',
      ];
      if (withEtcd) cells.push('', '', '', '');
      return cells;
    }
    const cells = [
      r.storage,
      r.role,
      WORKLOAD_NAMES[r.kind],
      r.concurrency,
      `${fmtInt(r.opsPerS)}${r.elapsedS < SHORT_S ? ' †' : ''}`,
      fmtMs(r.p50Ms),
      fmtMs(r.p99Ms),
      fmtNum(r.cpuSPer1kOps, 3),
      fmtMB(r.peakRssBytesMax),
      `${integrityCell(r)}${r.flagged ? ' FLAG' : ''}`,
    ];
    if (withEtcd) {
      const v = r.vsEtcd;
      cells.push(
        v ? fmtInt(v.etcdOpsPerS) : '-',
        v ? fmtRatio(v.opsRatio) : '-',
        v ? fmtRatio(v.p99Ratio) : '-',
        v ? fmtRatio(v.cpuRatio) : '-',
      );
    }
    return cells;
  });
  return markdownTable(header, body, align);
};

export const etcdTable = (etcdRows) => {
  const header = [
    'etcd',
    'member',
    'workload',
    'c',
    'ops/s',
    'p50 ms',
    'p99 ms',
    'CPU s/1k ops',
    'client CPU s/1k',
    'peak RSS MB (max node)',
    'err / term',
  ];
  const body = etcdRows.map((r) => [
    r.fsync ? 'fsync on' : '--unsafe-no-fsync',
    r.role,
    ETCD_WORKLOAD_NAMES[r.kind],
    r.concurrency,
    fmtInt(r.opsPerS),
    fmtMs(r.p50Ms),
    fmtMs(r.p99Ms),
    fmtNum(r.cpuSPer1kOps, 3),
    fmtNum(r.clientCpuSPer1kOps, 3),
    fmtMB(r.peakRssBytesMax),
    `${integrityCell(r)}${r.flagged ? ' FLAG' : ''}`,
  ]);
  return markdownTable(header, body, ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l']);
};

const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'MET' : 'MISSED');

/**
 * The targets of issue 5, each { target, measured, verdict }. Ratios come from the leader rows of
 * this one run; `memory` is the --memory result when that mode ran.
 */
export const evaluateTargets = (rows, { memory = null, etcdRan = false, w1High = 64, readC = 64 } = {}) => {
  const find = (storage, role, kind, concurrency) =>
    rows.find(
      (r) =>
        !r.na && r.storage === storage && r.role === role && r.kind === kind && r.concurrency === concurrency,
    );
  const out = [];
  const ratioTarget = (label, storage, kind, c, min, extra) => {
    const row = find(storage, 'leader', kind, c);
    const ratio = row?.vsEtcd?.opsRatio ?? null;
    if (!row) {
      out.push({
        target: label,
        measured: rows.some((r) => r.na && r.storage === storage)
          ? `${storage}: n/a (the nodes wrote nothing to disk)`
          : 'not run',
        verdict: 'n/a',
      });
      return;
    }
    if (!etcdRan || ratio === null) {
      out.push({ target: label, measured: `${fmtInt(row.opsPerS)} ops/s (etcd not run)`, verdict: 'n/a' });
      return;
    }
    const extraResult = extra ? extra(row) : null;
    const ok = ratio >= min && (extraResult ? extraResult.ok : true);
    out.push({
      target: label,
      measured: `${fmtRatio(ratio)} (${fmtInt(row.opsPerS)} vs ${fmtInt(row.vsEtcd.etcdOpsPerS)} ops/s)${extraResult ? `; ${extraResult.text}` : ''}`,
      verdict: verdict(ok),
    });
  };
  ratioTarget(`W1 c=${w1High} memory >= 10x etcd --unsafe-no-fsync`, 'memory', 'set', w1High, 10);
  ratioTarget(`W1 c=${w1High} persistence >= 10x etcd fsync on`, 'persistence', 'set', w1High, 10);
  ratioTarget(
    'W1 c=1 memory >= 3x etcd --unsafe-no-fsync and p50 < 0.5 ms',
    'memory',
    'set',
    1,
    3,
    (row) => ({
      ok: row.p50Ms !== null && row.p50Ms < 0.5,
      text: `p50 ${fmtMs(row.p50Ms)} ms`,
    }),
  );
  ratioTarget(`W2 c=${readC} memory >= 10x etcd linearizable (no-fsync)`, 'memory', 'get', readC, 10);
  ratioTarget(`W2 c=${readC} persistence >= 10x etcd linearizable (fsync)`, 'persistence', 'get', readC, 10);
  ratioTarget(`W3 c=${readC} memory >= 50x etcd serializable (no-fsync)`, 'memory', 'getLocal', readC, 50);
  ratioTarget(
    `W3 c=${readC} persistence >= 50x etcd serializable (fsync)`,
    'persistence',
    'getLocal',
    readC,
    50,
  );

  // Followers: every workload's ops/s on a follower at least half the leader's.
  for (const storage of ['memory', 'persistence']) {
    const pairs = rows
      .filter((r) => !r.na && r.storage === storage && r.role === 'leader')
      .map((l) => [l, find(storage, 'follower', l.kind, l.concurrency)])
      .filter(([, f]) => f);
    if (pairs.length === 0) {
      out.push({ target: `follower >= 1/2 leader (${storage})`, measured: 'not run', verdict: 'n/a' });
      continue;
    }
    const worst = pairs
      .map(([l, f]) => ({ l, f, share: f.opsPerS / l.opsPerS }))
      .sort((a, b) => a.share - b.share);
    const text = worst
      .map(({ l, share }) => `${WORKLOAD_NAMES[l.kind].split(' ')[0]} c=${l.concurrency} ${fmtNum(share, 2)}`)
      .join(', ');
    out.push({
      target: `follower >= 1/2 leader ops/s, every workload (${storage})`,
      measured: text,
      verdict: verdict(worst[0].share >= 0.5),
    });
  }
  if (memory?.nodes?.length) {
    const worst = Math.max(...memory.nodes.map((n) => n.rssOverRaw));
    out.push({
      target: `memory <= 2x raw data (${fmtInt(memory.keys)} keys of ${memory.valueBytes} B)`,
      measured: `RSS ${fmtNum(worst, 2)}x raw (${fmtMB(memory.rawBytes)} MB raw; worst node)`,
      verdict: verdict(worst <= 2 && memory.keys >= memory.targetKeys),
    });
  } else {
    out.push({
      target: 'memory <= 2x raw data (1,000,000 keys)',
      measured: 'run `npm run bench -- --memory`',
      verdict: 'n/a',
    });
  }
  return out;
};

export const targetsTable = (targets) =>
  markdownTable(
    ['target', 'measured', 'verdict'],
    targets.map((t) => [t.target, t.measured, t.verdict]),
  );
