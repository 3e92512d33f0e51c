/**
 * The etcd side of `npm run bench -- --vs etcd`: a 3-member etcd cluster on 127.0.0.1 with mutual
 * TLS for client and peer traffic, its certificates made by diskeyval's own cert tooling
 * (`createClusterCertificates`, ECDSA P-256, PKCS#8 keys, which etcd accepts), and the same
 * workloads driven from this process with the `etcd3` client (one client per endpoint, retries
 * and circuit breakers replaced by no-ops so every failure is counted).
 *
 * Every member is a child of this process, tracked by PID; stop() signals exactly those PIDs
 * (SIGTERM, then SIGKILL after a bound) and removes the temp directory. Nothing listens on etcd's
 * default ports: the ports are free ones picked on 127.0.0.1.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClusterCertificates, writeClusterCertificates } from '../../dist/index.js';
import { freePorts } from '../../scripts/cluster.mjs';
import {
  bound,
  machineBusySeconds,
  percentile,
  pollUntil,
  procCpuSeconds,
  procMemory,
  round,
  selfCpuSeconds,
} from './common.mjs';
import { KEY_PREFIX } from './diskeyval-side.mjs';

export const INSTALL_HINT =
  'etcd is not on the PATH: install it with `apt-get install etcd-server etcd-client` ' +
  '(Debian/Ubuntu; etcd 3.4.x), then run `npm run bench -- --vs etcd` again.';

/** { version, noFsync } of the `etcd` on the PATH, or null when there is none. */
export const detectEtcd = () => {
  const r = spawnSync('etcd', ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) return null;
  const version = /etcd Version:\s*(\S+)/.exec(r.stdout)?.[1] ?? 'unknown';
  // --unsafe-no-fsync is accepted by 3.4.23 though `etcd --help` does not list it: probe flag parsing.
  const probe = spawnSync('etcd', ['--unsafe-no-fsync', '--version'], { timeout: 10_000 });
  return { version, noFsync: !probe.error && probe.status === 0 };
};

/** The environment without ETCD_* / ETCDCTL_* (etcd refuses a flag that an env var duplicates). */
const cleanEnv = () =>
  Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^ETCD(CTL)?_/.test(k)));

const loadEtcd3 = async () => {
  const { Etcd3 } = await import('etcd3');
  const { noop } = await import('cockatiel');
  return { Etcd3, noop };
};

/**
 * Starts `members` etcd members (fresh data, fresh certificates) and waits until all are healthy
 * and agree on a leader. `fsync: false` passes --unsafe-no-fsync.
 */
export const startEtcdCluster = async ({ fsync = true, members = 3, startTimeoutMs = 30_000 } = {}) => {
  const root = await mkdtemp(join(tmpdir(), 'diskeyval-bench-etcd-'));
  const names = Array.from({ length: members }, (_, i) => `etcd-${i + 1}`);
  const procs = [];
  const clients = new Map();
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.off('exit', killNow);
    for (const client of clients.values()) client.close();
    clients.clear();
    await Promise.all(
      procs.map(async (p) => {
        if (p.exitCode !== null) return;
        p.child.kill('SIGTERM');
        const exited = await Promise.race([p.exited.then(() => true), bound(10_000).then(() => false)]);
        if (!exited) {
          p.child.kill('SIGKILL');
          await Promise.race([p.exited, bound(5_000)]);
        }
      }),
    );
    await rm(root, { recursive: true, force: true });
  };
  const killNow = () => {
    for (const p of procs) if (p.exitCode === null) p.child.kill('SIGKILL');
  };
  process.on('exit', killNow);

  try {
    const certDir = join(root, 'certs');
    const certificates = await createClusterCertificates({ nodes: [...names, 'bench-client'] });
    await writeClusterCertificates(certDir, certificates);
    const ca = Buffer.from(certificates.ca.cert);
    const clientCert = Buffer.from(certificates.nodes['bench-client'].cert);
    const clientKey = Buffer.from(certificates.nodes['bench-client'].key);
    const ports = await freePorts(members * 2);
    const clientUrl = (i) => `https://127.0.0.1:${ports[i]}`;
    const peerUrl = (i) => `https://127.0.0.1:${ports[members + i]}`;
    const initialCluster = names.map((name, i) => `${name}=${peerUrl(i)}`).join(',');
    const token = `diskeyval-bench-${process.pid}-${Date.now()}`;
    await mkdir(join(root, 'data'), { recursive: true, mode: 0o700 });
    await mkdir(join(root, 'logs'), { recursive: true });
    const env = cleanEnv();

    names.forEach((name, i) => {
      const logPath = join(root, 'logs', `${name}.log`);
      const fd = openSync(logPath, 'a');
      // biome-ignore format: one flag and its value per line
      const args = [
        '--name', name,
        '--data-dir', join(root, 'data', name),
        '--listen-client-urls', clientUrl(i),
        '--advertise-client-urls', clientUrl(i),
        '--listen-peer-urls', peerUrl(i),
        '--initial-advertise-peer-urls', peerUrl(i),
        '--initial-cluster', initialCluster,
        '--initial-cluster-state', 'new',
        '--initial-cluster-token', token,
        '--client-cert-auth',
        '--trusted-ca-file', join(certDir, 'ca.pem'),
        '--cert-file', join(certDir, `${name}.pem`),
        '--key-file', join(certDir, `${name}.key`),
        '--peer-client-cert-auth',
        '--peer-trusted-ca-file', join(certDir, 'ca.pem'),
        '--peer-cert-file', join(certDir, `${name}.pem`),
        '--peer-key-file', join(certDir, `${name}.key`),
        '--logger', 'zap',
        '--log-outputs', 'stderr',
        ...(fsync ? [] : ['--unsafe-no-fsync']),
      ];
      const child = spawn('etcd', args, { stdio: ['ignore', fd, fd], env });
      closeSync(fd);
      const p = { name, child, pid: child.pid, exitCode: null, url: clientUrl(i), logPath };
      p.exited = new Promise((resolve) => {
        child.once('exit', (code, signal) => {
          p.exitCode = code ?? signal ?? 'exited';
          resolve();
        });
      });
      child.once('error', () => {});
      procs.push(p);
    });

    const { Etcd3, noop } = await loadEtcd3();
    const clientFor = (url) => {
      let client = clients.get(url);
      if (!client) {
        const name = procs.find((p) => p.url === url)?.name;
        client = new Etcd3({
          hosts: [url],
          credentials: { rootCertificate: ca, certChain: clientCert, privateKey: clientKey },
          faultHandling: { host: () => noop, global: noop }, // no hidden retries
          // Verify the member by its DNS name (in its certificate): TLS SNI may not be an IP address.
          ...(name ? { grpcOptions: { 'grpc.ssl_target_name_override': name } } : {}),
        });
        clients.set(url, client);
      }
      return client;
    };

    /** Per member: { name, pid, url, memberId, leader, term, index }. Throws if one does not answer. */
    const status = async () =>
      Promise.all(
        procs.map(async (p) => {
          if (p.exitCode !== null) throw new Error(`${p.name} exited (${p.exitCode}); see ${p.logPath}`);
          const s = await clientFor(p.url).maintenance.status();
          return {
            name: p.name,
            pid: p.pid,
            url: p.url,
            memberId: s.header.member_id,
            leader: s.leader,
            term: Number(s.raftTerm),
            index: Number(s.raftIndex),
          };
        }),
      );

    const agreed = await pollUntil(
      async () => {
        const s = await status();
        const leaders = new Set(s.map((m) => m.leader));
        if (leaders.size !== 1 || s[0].leader === '0') return null;
        return s.some((m) => m.memberId === s[0].leader) ? s : null;
      },
      {
        timeoutMs: startTimeoutMs,
        everyMs: 300,
        label: `etcd (${fsync ? 'fsync on' : 'no fsync'}) to elect a leader`,
      },
    );
    const leader = agreed.find((m) => m.memberId === m.leader);
    const follower = agreed.find((m) => m.memberId !== m.leader);
    return {
      fsync,
      root,
      members: procs.map((p) => ({ name: p.name, pid: p.pid, url: p.url })),
      leader,
      follower,
      status,
      clientFor,
      stop,
    };
  } catch (error) {
    const tails = procs.map((p) => `${p.name}: ${p.logPath}`).join(', ');
    await stop();
    throw new Error(`etcd cluster did not start: ${error.message} (logs were in ${tails})`);
  }
};

/** Runs op(i) for i in [0, n), `concurrency` in flight; stops issuing new calls after `deadline`. */
const runPhase = async (n, concurrency, op, deadline) => {
  const lat = new Float64Array(n);
  let next = 0;
  let ok = 0;
  const errors = {};
  const worker = async () => {
    while (next < n && Date.now() < deadline) {
      const i = next++;
      const t0 = performance.now();
      try {
        await op(i);
        lat[ok++] = performance.now() - t0;
      } catch (error) {
        const code = error?.code ?? error?.constructor?.name ?? 'ERROR';
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(n, 1)) }, worker));
  return { seconds: (performance.now() - t0) / 1000, lat: lat.subarray(0, ok).sort(), ok, errors };
};

const sumErrors = (errors) => Object.values(errors).reduce((a, b) => a + b, 0);

/**
 * One workload against member `target` ({ url }) of `cluster`: W1 put / W2 linearizable get /
 * W3 serializable get, with the same keys and counts as the diskeyval side.
 */
export const runEtcdWorkload = async (
  cluster,
  target,
  { kind, concurrency, ops, warmup, valueBytes, keySpace, boundMs = 300_000 },
) => {
  const client = cluster.clientFor(target.url);
  const value = Buffer.alloc(valueBytes);
  for (let i = 0; i < valueBytes; i += 1) value[i] = 97 + ((i * 31 + 7) % 26);
  const readSpace = Math.min(keySpace, ops);
  const deadline = Date.now() + boundMs;
  if (kind !== 'set' && (cluster.written ?? 0) < readSpace) {
    const r = await runPhase(
      readSpace,
      64,
      (i) => client.put(`${KEY_PREFIX}${i}`).value(value).exec(),
      deadline,
    );
    if (r.ok !== readSpace) throw new Error(`etcd prefill failed: ${JSON.stringify(r.errors)}`);
    cluster.written = readSpace;
  }
  const op =
    kind === 'set'
      ? (i) =>
          client
            .put(`${KEY_PREFIX}${i % keySpace}`)
            .value(value)
            .exec()
      : async (i) => {
          const v = await client
            .get(`${KEY_PREFIX}${i % readSpace}`)
            .serializable(kind === 'getLocal')
            .buffer();
          if (v === null) throw Object.assign(new Error('read returned nothing'), { code: 'MISSING' });
        };
  const before = await cluster.status();
  const warm = warmup > 0 ? await runPhase(warmup, concurrency, op, deadline) : { errors: {} };
  const pids = cluster.members.map((m) => m.pid);
  const cpu0 = pids.map(procCpuSeconds);
  const busy0 = machineBusySeconds();
  const self0 = selfCpuSeconds();
  const r = await runPhase(ops, concurrency, op, deadline);
  const busy1 = machineBusySeconds();
  const self1 = selfCpuSeconds();
  const cpu1 = pids.map(procCpuSeconds);
  const after = await cluster.status();
  if (kind === 'set') cluster.written = Math.max(cluster.written ?? 0, Math.min(ops, keySpace));

  const cpuPerMember = pids.map((_, i) => (cpu1[i] ?? 0) - (cpu0[i] ?? 0));
  const cpuMembers = cpuPerMember.reduce((a, b) => a + b, 0);
  const clientCpu = self1 - self0;
  const memory = pids.map(procMemory);
  const terms = [...before, ...after].map((m) => m.term);
  const electionSuspected = new Set(terms).size !== 1 || new Set(after.map((m) => m.leader)).size !== 1;
  const errors = sumErrors(r.errors) + sumErrors(warm.errors);
  let sum = 0;
  for (const ms of r.lat) sum += ms;
  return {
    system: 'etcd',
    fsync: cluster.fsync,
    kind,
    concurrency,
    ops,
    warmup,
    valueBytes,
    ok: r.ok,
    errors,
    errorsByCode: r.errors,
    warmupErrorsByCode: warm.errors,
    lost: ops - r.ok,
    elapsedS: round(r.seconds),
    opsPerS: r.seconds > 0 ? Math.round(r.ok / r.seconds) : null,
    p50Ms: round(percentile(r.lat, 50)),
    p90Ms: round(percentile(r.lat, 90)),
    p99Ms: round(percentile(r.lat, 99)),
    maxMs: round(r.ok > 0 ? r.lat[r.ok - 1] : null),
    meanMs: round(r.ok > 0 ? sum / r.ok : null),
    cpuS: round(cpuMembers),
    cpuSPer1kOps: round((cpuMembers * 1000) / ops, 4),
    cpuSPerNode: Object.fromEntries(cluster.members.map((m, i) => [m.name, round(cpuPerMember[i])])),
    clientCpuS: round(clientCpu), // the etcd3/grpc-js client in this process: not in cpuS
    clientCpuSPer1kOps: round((clientCpu * 1000) / ops, 4),
    otherCpuS: round(Math.max(0, busy1 - busy0 - cpuMembers - clientCpu)),
    otherCpuPct:
      r.seconds >= 0.5
        ? round((100 * Math.max(0, busy1 - busy0 - cpuMembers - clientCpu)) / r.seconds, 1)
        : null,
    peakRssBytesPerNode: Object.fromEntries(
      cluster.members.map((m, i) => [m.name, memory[i]?.peakRssBytes ?? null]),
    ),
    rssBytesPerNode: Object.fromEntries(cluster.members.map((m, i) => [m.name, memory[i]?.rssBytes ?? null])),
    peakRssBytesMax: Math.max(...memory.map((m) => m?.peakRssBytes ?? 0)),
    termsBefore: Object.fromEntries(before.map((m) => [m.name, m.term])),
    termsAfter: Object.fromEntries(after.map((m) => [m.name, m.term])),
    electionSuspected,
    flagged: errors > 0 || r.ok !== ops || electionSuspected,
  };
};

/** The same untimed warm-up as warmUpDiskeyval (bench/lib/diskeyval-side.mjs), against etcd member `target`. */
export const warmUpEtcd = async (cluster, target, { count, valueBytes }) => {
  const client = cluster.clientFor(target.url);
  const value = Buffer.alloc(valueBytes, 97);
  const deadline = Date.now() + 300_000;
  const errors = {};
  const steps = [
    [
      64,
      count,
      (i) =>
        client
          .put(`warm-${i % 1000}`)
          .value(value)
          .exec(),
    ],
    [
      1,
      Math.ceil(count / 5),
      (i) =>
        client
          .put(`warm-${i % 1000}`)
          .value(value)
          .exec(),
    ],
    [64, count, (i) => client.get(`warm-${i % 1000}`).buffer()],
    [
      64,
      count,
      (i) =>
        client
          .get(`warm-${i % 1000}`)
          .serializable(true)
          .buffer(),
    ],
  ];
  for (const [concurrency, n, op] of steps) {
    const r = await runPhase(n, concurrency, op, deadline);
    for (const [code, k] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + k;
  }
  return errors;
};
