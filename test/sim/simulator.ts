/**
 * A deterministic whole-cluster simulator: every server of a cluster runs its real code (raft
 * machine, actors) in one process on one simulated clock, over a seeded network that drops,
 * delays, duplicates, reorders and partitions messages, with crashes and restarts. After every
 * step the safety checker runs. A run is a pure function of its seed: any failure prints the seed
 * and a one-line command that replays it.
 */
import { expect } from 'vitest';
import {
  createMemoryLog,
  type LogStorage,
  type MemoryLog,
  type PersistedState,
} from '../../src/actors/memory-log.js';
import { createNode, type Node as RaftNode } from '../../src/actors/node.js';
import { decodeCommand } from '../../src/io/command.js';
import type { RaftTransport, TransportMessage } from '../../src/io/transport.js';
import { assert } from '../../src/machines/assert.js';
import { clusterIdFromSeed } from '../../src/machines/cluster-id.js';
import { type Entry, isRequest, type RaftMessage } from '../../src/machines/messages.js';
import { entryAt, lastIndex } from '../../src/machines/raft-log.js';
import { createRng } from '../../src/machines/rng.js';
import { createSafetyChecker, type ServerView } from './invariants.js';
import { createAgenda, type Scheduled } from './queue.js';
import { createSimDisk, type SimDisk, type SimDiskCounters } from './sim-disk.js';

export type NetworkFaults = {
  minDelayMs: number;
  maxDelayMs: number;
  dropRate: number;
  duplicateRate: number;
  /** Share of messages held back for a long time (reordering far beyond the usual delay). */
  longDelayRate: number;
  longDelayMaxMs: number;
};

export const RELIABLE: NetworkFaults = {
  minDelayMs: 1,
  maxDelayMs: 5,
  dropRate: 0,
  duplicateRate: 0,
  longDelayRate: 0,
  longDelayMaxMs: 0,
};

/** The lab suites' "unreliable" network: 10% loss, up to 27 ms of delay, some long reordering. */
export const UNRELIABLE: NetworkFaults = {
  minDelayMs: 1,
  maxDelayMs: 27,
  dropRate: 0.1,
  duplicateRate: 0.05,
  longDelayRate: 0.02,
  longDelayMaxMs: 400,
};

export type SimOptions = {
  seed: number;
  nodes: number;
  electionTimeoutMs?: number;
  heartbeatMs?: number;
  proposalTimeoutMs?: number;
  network?: Partial<NetworkFaults>;
  maxInflight?: number;
  maxEntriesPerAppend?: number;
  /** Log compaction (actors/store-actor.ts): off (0) unless given. */
  compactEvery?: number;
  keepEntries?: number;
  snapshotChunkBytes?: number;
  /**
   * Steps between two yields to the promise queue, where callers' promise callbacks run. Client
   * histories want 1, so a call's return is recorded at the simulated time it happened.
   */
  yieldEvery?: number;
  /**
   * The servers' logs. 'memory' (default): a memory log that survives crashes whole (as if every
   * write were synced at once). 'durable': a simulated disk (sim-disk.ts) whose fsync completes a
   * seeded while later and whose crash loses what was not synced, so the raft node takes its
   * durable outbox path (hold every answer until its persist is synced).
   */
  disk?: 'memory' | 'durable';
  /** Simulated fsync latency of the durable disk (default 1 to 8 ms). */
  fsyncMs?: { minMs: number; maxMs: number };
  /**
   * Durable disks: fail the run when a server answers a vote or an append before the state the
   * answer promises is synced (default true). Off, only the Raft safety properties judge a run.
   */
  checkDurability?: boolean;
  /**
   * The first start of every server: 'bootstrapped' (default) starts them as members of a cluster
   * already formed, so scenarios time their first election from 0; 'blank' starts them as a new
   * cluster really starts (recovering, then bootstrap; docs/design/recovery.md). An amnesiac restart
   * always recovers.
   */
  firstStart?: 'bootstrapped' | 'blank';
  /**
   * Broken variant only (test/sim/amnesia.test.ts): false starts an amnesiac server as an ordinary
   * member that votes at once, as diskeyval did before recovery existed.
   */
  amnesiacRecovers?: boolean;
  /**
   * Membership (issue 13): this many more servers (`s{nodes+1}`..) start blank with `join`, outside
   * the configuration, as a user starts a node before adding it; `reconfigure` adds them.
   */
  spares?: number;
  /**
   * Spares start as new servers that trust they hold nothing to forget (not recovering: their
   * answers count at once). Only for broken-variant scenarios that need caught-up servers outside
   * the configuration; by default spares recover like any blank start.
   */
  sparesTrusted?: boolean;
};

/** Durable-disk runs: the proof that the hard cases happened, summed over the servers. */
export type DurabilityCounters = SimDiskCounters & {
  /** Votes granted (not pre-votes) by durable servers, each checked against the synced vote. */
  voteGrantsChecked: number;
  /** Of those, grants of a vote this incarnation recorded, so an fsync had to come first. */
  freshVoteGrants: number;
  /** Successful append answers by durable servers, each checked against the synced log. */
  appendAcksChecked: number;
  /** Outputs the raft nodes held in their outbox until a flush (summed over incarnations). */
  heldOutputs: number;
};

export type Proposal = { value: string; state: 'pending' | 'ok' | 'failed'; error?: string };

type Server = {
  id: string;
  node: RaftNode | null;
  /** The log handed to the running node (for a durable disk: this incarnation's handle). */
  log: LogStorage;
  /** The durable disk, or null when the server runs the memory log. */
  disk: SimDisk | null;
  dirtyFrom: number;
  timers: Set<Scheduled>;
  incarnation: number;
};

/** The replay line printed with every failure of the test that is running. */
export const replayCommand = (seed: number): string => {
  const state = expect.getState();
  const file = state.testPath ? state.testPath.replace(`${process.cwd()}/`, '') : 'test/sim';
  // vitest matches -t against the names joined by spaces, as a regular expression.
  const name = (state.currentTestName ?? '').replace(/ > /g, ' ').replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return `DISKEYVAL_SIM_SEED=${seed} npx vitest run ${file} -t '${name.replace(/'/g, "'\\''")}'`;
};

export const createSimulation = (options: SimOptions) => {
  const rng = createRng(options.seed);
  const agenda = createAgenda();
  const checker = createSafetyChecker();
  const ids = Array.from({ length: options.nodes + (options.spares ?? 0) }, (_, index) => `s${index + 1}`);
  /** The bootstrap voters: the first `nodes` servers; spares are added by `reconfigure`. */
  const initialVoters = ids.slice(0, options.nodes);
  const isSpare = (id: string): boolean => !initialVoters.includes(id);
  const servers = new Map<string, Server>();
  const endpoints = new Map<string, (message: TransportMessage) => void>();
  let network: NetworkFaults = { ...RELIABLE, ...options.network };
  let groupOf: Map<string, number> | null = null;
  let nowMs = 0;
  let steps = 0;
  let requestsSent = 0;
  const sentByType: Record<string, number> = {};
  /** Test hooks (scenarios): every message sent (before the network drops it), and every step. */
  const messageListeners = new Set<(message: RaftMessage, atMs: number) => void>();
  const stepListeners = new Set<() => void>();
  const durable = options.disk === 'durable';
  const durability = { voteGrantsChecked: 0, freshVoteGrants: 0, appendAcksChecked: 0, heldOutputs: 0 };
  /** A promise settled in the last step (durable disks): its callbacks run before the next step. */
  let woken = false;
  /**
   * A durability violation seen at the wire. Sends happen inside the machine's emit handlers and
   * promise callbacks, which do not pass exceptions on: it fails the run at the next check.
   */
  let durabilityViolation: string | null = null;

  const fail = (reason: string): never => {
    throw new Error(
      `simulation failed at ${nowMs} ms (seed ${options.seed}): ${reason}\n  replay: ${replayCommand(options.seed)}`,
    );
  };

  const canTalk = (from: string, to: string): boolean => {
    if (groupOf === null) return true;
    const group = groupOf.get(from);
    return group !== undefined && group === groupOf.get(to);
  };

  const deliverLater = (message: TransportMessage, delayMs: number): void => {
    agenda.push(nowMs + delayMs, () => {
      const deliver = endpoints.get(message.to);
      if (deliver && canTalk(message.from, message.to)) deliver(message);
    });
  };

  const transport: RaftTransport = {
    connect(nodeId, deliver) {
      endpoints.set(nodeId, deliver);
      return {
        send(message) {
          if (endpoints.get(nodeId) !== deliver) return;
          const raft = message as unknown as RaftMessage;
          if (durable) checkDurable(raft);
          sentByType[raft.type] = (sentByType[raft.type] ?? 0) + 1;
          for (const listener of messageListeners) listener(raft, nowMs);
          if (isRequest(raft)) requestsSent += 1;
          if (rng.chance(network.dropRate)) return;
          const copies = rng.chance(network.duplicateRate) ? 2 : 1;
          for (let copy = 0; copy < copies; copy += 1) {
            const delayMs = rng.chance(network.longDelayRate)
              ? rng.int(network.maxDelayMs, Math.max(network.maxDelayMs + 1, network.longDelayMaxMs))
              : rng.int(network.minDelayMs, network.maxDelayMs + 1);
            deliverLater(message, delayMs);
          }
        },
        async close() {
          if (endpoints.get(nodeId) === deliver) endpoints.delete(nodeId);
        },
      };
    },
  };

  const clockFor = (server: Server) => ({
    setTimeout: (fn: (...args: unknown[]) => void, timeoutMs: number) => {
      const item = agenda.push(nowMs + timeoutMs, () => {
        server.timers.delete(item);
        fn();
      });
      server.timers.add(item);
      return item;
    },
    clearTimeout: (item: unknown) => {
      (item as Scheduled).cancelled = true;
      server.timers.delete(item as Scheduled);
    },
  });

  /**
   * Durable before acknowledged (ARCHITECTURE.md rule 4), checked at the wire: a granted vote
   * needs its term and votedFor synced, a successful append answer its term and entries up to
   * matchIndex. A later term already synced makes an old answer harmless (it is stale).
   */
  const checkDurable = (message: RaftMessage): void => {
    const disk = servers.get(message.from)?.disk;
    if (!disk) return;
    const synced = disk.synced();
    const { term, votedFor } = synced.hardState;
    if (message.type === 'RequestVoteResponse' && message.voteGranted && !message.preVote) {
      durability.voteGrantsChecked += 1;
      if (disk.lastVoteRecorded() === `${message.term}/${message.to}`) durability.freshVoteGrants += 1;
      if (
        options.checkDurability !== false &&
        !(term > message.term || (term === message.term && votedFor === message.to))
      )
        durabilityViolation ??= `durability: ${message.from} granted its vote in term ${message.term} to ${message.to} before it was synced (disk: term ${term}, votedFor ${votedFor})`;
    } else if (message.type === 'AppendEntriesResponse' && message.success) {
      durability.appendAcksChecked += 1;
      const syncedLast = (synced.snapshot?.index ?? 0) + synced.entries.length;
      if (
        options.checkDurability !== false &&
        term <= message.term &&
        !(term === message.term && syncedLast >= message.matchIndex)
      )
        durabilityViolation ??= `durability: ${message.from} acknowledged entries up to ${message.matchIndex} in term ${message.term} before they were synced (disk: term ${term}, last index ${syncedLast})`;
    }
  };

  /** The log a server's next incarnation runs on, watched for the checker's dirtyFrom. */
  const logFor = (server: Server): LogStorage => {
    const log = server.disk ? server.disk.open() : server.log;
    const persist = log.persist.bind(log);
    const installSnapshot = log.installSnapshot.bind(log);
    return {
      ...log,
      persist: (output) => {
        if (output.fromIndex > 0) server.dirtyFrom = Math.min(server.dirtyFrom, output.fromIndex);
        persist(output);
      },
      installSnapshot: (output) => {
        // A log replaced by a snapshot: the checker takes the prefix again (see invariants.ts).
        server.dirtyFrom = output.keptSuffix ? Math.min(server.dirtyFrom, output.index + 1) : 1;
        installSnapshot(output);
      },
    };
  };

  const boot = (server: Server): void => {
    server.incarnation += 1;
    if (server.disk) server.log = logFor(server);
    const amnesiac = server.incarnation > 1 && isBlankLog(server);
    const node = createNode({
      id: server.id,
      voters: bootVotersOf(server.id, amnesiac),
      transport,
      electionTimeoutMs: options.electionTimeoutMs ?? 150,
      heartbeatMs: options.heartbeatMs ?? 50,
      proposalTimeoutMs: options.proposalTimeoutMs ?? 60_000,
      seed: rng.int(1, 2 ** 31),
      session: rng.int(1, 2 ** 31),
      incarnation: server.incarnation,
      // Deterministic per seed, server and start (a real node draws 16 random bytes).
      newClusterId: clusterIdFromSeed(options.seed, ids.indexOf(server.id), server.incarnation),
      ...(startsTrusted(server) ? { recovering: false } : {}),
      // A server started to be added never bootstraps a cluster of its own.
      ...(isSpare(server.id) ? { join: true } : {}),
      log: server.log,
      clock: clockFor(server),
      nowMs: () => nowMs,
      defer: durable
        ? (fn) => {
            // The outbox's flushes wait on deferred promises: let their callbacks run at once.
            agenda.push(nowMs, () => {
              fn();
              woken = true;
            });
          }
        : (fn) => {
            agenda.push(nowMs, fn);
          },
      ...(options.maxInflight ? { maxInflight: options.maxInflight } : {}),
      ...(options.maxEntriesPerAppend ? { maxEntriesPerAppend: options.maxEntriesPerAppend } : {}),
      compactEvery: options.compactEvery ?? 0,
      ...(options.keepEntries !== undefined ? { keepEntries: options.keepEntries } : {}),
      ...(options.snapshotChunkBytes ? { snapshotChunkBytes: options.snapshotChunkBytes } : {}),
    });
    server.node = node;
    void node.start();
  };

  /** A start that is not recovering (see `firstStart`, `amnesiacRecovers`, `sparesTrusted`). */
  function startsTrusted(server: Server): boolean {
    if (isSpare(server.id)) return options.sparesTrusted === true && server.incarnation === 1;
    return (server.incarnation === 1 && options.firstStart !== 'blank') || options.amnesiacRecovers === false;
  }

  /** Whether the server's disk holds nothing at all (its restart is amnesiac, or it never ran). */
  function isBlankLog(server: Server): boolean {
    const persisted = persistedOf(server);
    return persisted.hardState.term === 0 && persisted.entries.length === 0 && persisted.snapshot === null;
  }

  /**
   * The members a server is started with, as an operator would: the bootstrap voters at first; on an
   * amnesiac restart the members of the newest configuration any live server holds (a spare not yet
   * added keeps listing the bootstrap voters), itself included.
   */
  function bootVotersOf(id: string, amnesiac: boolean): string[] {
    const base = amnesiac ? (newestMembers() ?? initialVoters) : initialVoters;
    return base.includes(id) ? base : [...base, id];
  }

  function newestMembers(): string[] | null {
    let best: { index: number; members: string[] } | null = null;
    for (const server of servers.values()) {
      const view = server.node && !server.node.isStopped() ? server.node.membership() : null;
      if (view && (best === null || view.index > best.index))
        best = { index: view.index, members: [...new Set([...view.config.voters, ...view.config.outgoing])] };
    }
    return best?.members ?? null;
  }

  /** A memory-log server takes `log` as its disk from now on (a restart that lost some or all of it). */
  const replaceMemoryLog = (server: Server, log: MemoryLog): void => {
    assert(server.disk === null, 'a durable-disk server loses only what was not synced');
    server.log = log;
    server.log = logFor(server);
  };

  for (const id of ids) {
    // The "disk" of a server. Memory: it survives crashes whole, and keeps a snapshot at every
    // compaction. Durable: a simulated disk that keeps only what was synced (sim-disk.ts).
    const disk = durable
      ? createSimDisk({
          rng,
          nowMs: () => nowMs,
          schedule: (atMs, fn) => {
            agenda.push(atMs, fn);
          },
          wake: () => {
            woken = true;
          },
          fsyncMs: options.fsyncMs ?? { minMs: 1, maxMs: 8 },
        })
      : null;
    const server: Server = {
      id,
      node: null,
      log: createMemoryLog(undefined, { keepSnapshots: true }),
      disk,
      dirtyFrom: 1,
      timers: new Set(),
      incarnation: 0,
    };
    if (!disk) server.log = logFor(server);
    servers.set(id, server);
  }

  /** What a server holds: its node's log while it runs; after a crash, what the disk kept. */
  const persistedOf = (server: Server): PersistedState =>
    server.disk ? server.disk.persisted() : server.log.persisted();

  const serverOf = (id: string): Server => {
    const server = servers.get(id);
    if (!server) throw new Error(`no server ${id}`);
    return server;
  };

  /** The entries a running server's machine still holds in memory, by index (the checker's fallback). */
  const heldBy =
    (server: Server) =>
    (index: number): Entry | undefined => {
      const log = server.node?.snapshot().context.log;
      if (log === undefined || index <= log.offset || index > lastIndex(log)) return undefined;
      return entryAt(log, index);
    };

  const views = (): ServerView[] =>
    [...servers.values()].map((server) => {
      const alive = server.node !== null && !server.node.isStopped();
      const status = alive ? server.node!.status() : null;
      const persisted = persistedOf(server);
      const entries = persisted.entries;
      const offset = persisted.snapshot?.index ?? 0;
      if (status && status.lastIndex !== offset + entries.length) {
        fail(
          `${server.id}: the machine's log (${status.lastIndex}) differs from what it persisted (${offset + entries.length})`,
        );
      }
      const view: ServerView = {
        id: server.id,
        alive,
        role: status?.role ?? 'follower',
        term: status?.term ?? persisted.hardState.term,
        commitIndex: status?.commitIndex ?? 0,
        appliedIndex: status?.appliedIndex ?? 0,
        offset,
        entries,
        dirtyFrom: server.dirtyFrom,
        ...(alive ? { heldBelowOffset: heldBy(server) } : {}),
      };
      server.dirtyFrom = Number.POSITIVE_INFINITY;
      return view;
    });

  /** The cluster id every server that knows one agreed on (machines/cluster-id.ts). */
  let clusterId: string | null = null;
  /**
   * One cluster, one id: every server that knows a cluster id knows the same one, from the first
   * step one is known to the end (amnesiac restarts learn it again; none mints a second one).
   */
  const checkClusterId = (): void => {
    for (const server of servers.values()) {
      const known = server.node?.clusterId() ?? null;
      if (known === null) continue;
      clusterId ??= known;
      if (known !== clusterId) fail(`cluster id: ${server.id} knows ${known}, others ${clusterId}`);
    }
  };

  const checkSafety = (): void => {
    if (durabilityViolation !== null) fail(durabilityViolation);
    const violation = checker.check(views());
    if (violation) fail(`${violation.property}: ${violation.detail}`);
    checkClusterId();
  };

  /** Runs one event; false when nothing is scheduled. */
  const step = (): boolean => {
    const next = agenda.peek();
    if (!next) return false;
    agenda.pop();
    nowMs = next.atMs;
    try {
      next.run();
    } catch (error) {
      fail(`a server threw: ${(error as Error).stack ?? String(error)}`);
    }
    steps += 1;
    checkSafety();
    for (const listener of stepListeners) listener();
    return true;
  };

  const yieldToPromises = () => new Promise<void>((resolve) => setImmediate(resolve));

  /** Runs events until `untilMs` of simulated time; bounded by the agenda (timers always exist). */
  const runFor = async (durationMs: number): Promise<void> => {
    const untilMs = nowMs + durationMs;
    let sinceYield = 0;
    for (;;) {
      const next = agenda.peek();
      if (!next || next.atMs > untilMs) break;
      step();
      sinceYield += 1;
      if (woken || sinceYield >= (options.yieldEvery ?? 64)) {
        woken = false;
        sinceYield = 0;
        await yieldToPromises();
        if (durabilityViolation !== null) fail(durabilityViolation);
      }
    }
    nowMs = untilMs;
    await yieldToPromises();
  };

  /** Runs until `predicate` holds, checking it every `pollMs` of simulated time, for at most `boundMs`. */
  const runUntil = async (
    predicate: () => boolean,
    boundMs: number,
    what: string,
    pollMs = 10,
  ): Promise<number> => {
    const startMs = nowMs;
    while (!predicate()) {
      if (nowMs - startMs >= boundMs) fail(`${what} did not happen within ${boundMs} ms of simulated time`);
      await runFor(pollMs);
    }
    return nowMs - startMs;
  };

  const isAlive = (id: string): boolean => {
    const node = serverOf(id).node;
    return node !== null && !node.isStopped();
  };

  const statusOf = (id: string) => {
    const node = serverOf(id).node;
    if (!node || node.isStopped()) return null;
    return node.status();
  };

  /** The leader with the highest term among live servers, or null. */
  const leader = (): string | null => {
    let best: { id: string; term: number } | null = null;
    for (const id of ids) {
      const status = statusOf(id);
      if (status?.role === 'leader' && (best === null || status.term > best.term))
        best = { id, term: status.term };
    }
    return best?.id ?? null;
  };

  /** A leader that a majority of the live, connected voters of its configuration follow in its term. */
  const stableLeader = (): string | null => {
    const id = leader();
    if (id === null) return null;
    const term = statusOf(id)!.term;
    const voters = serverOf(id).node?.membership()?.config.voters ?? initialVoters;
    const followers = voters.filter((other) => {
      const status = statusOf(other);
      return status !== null && status.term === term && status.leaderId === id && canTalk(id, other);
    });
    return followers.length >= Math.floor(voters.length / 2) + 1 ? id : null;
  };

  const propose = (id: string, value: string, key = 'k'): Proposal => {
    const proposal: Proposal = { value, state: 'pending' };
    const node = serverOf(id).node;
    if (!node) {
      proposal.state = 'failed';
      proposal.error = 'STOPPED';
      return proposal;
    }
    // Like the lab suites' Start: only the leader takes it (no forwarding here).
    node.write({ op: 'set', key, value }, { forward: false }).then(
      () => {
        proposal.state = 'ok';
      },
      (error: { code?: string }) => {
        proposal.state = 'failed';
        proposal.error = error.code ?? String(error);
      },
    );
    return proposal;
  };

  /** committedOn and committedValues read whole logs: runs that compact check stores instead. */
  const assertUncompacted = (id: string): void => {
    if (persistedOf(serverOf(id)).snapshot !== null) fail(`${id} compacted its log: read its store`);
  };

  /** The value of every committed command entry, in log order, as the checker saw them. */
  const committedValues = (id: string): unknown[] => {
    const status = statusOf(id);
    assertUncompacted(id);
    const entries = persistedOf(serverOf(id)).entries.slice(0, status?.commitIndex ?? 0);
    return entries.filter((entry) => entry.kind === 'command').map((entry) => entry.data);
  };

  /** How many live servers have committed an entry holding `value`. */
  const committedOn = (value: string): number =>
    ids.filter((id) => {
      const status = statusOf(id);
      if (!status) return false;
      assertUncompacted(id);
      const entries = persistedOf(serverOf(id)).entries;
      for (let index = 0; index < status.commitIndex; index += 1) {
        const { kind, data } = entries[index]!;
        // No-ops carry no command (the cluster's first carries its id, machines/cluster-id.ts).
        if (kind !== 'command' || !data) continue;
        const command = decodeCommand(data);
        if (command.op === 'set' && command.value === value) return true;
      }
      return false;
    }).length;

  const crash = (id: string): void => {
    const server = serverOf(id);
    const node = server.node;
    if (!node) return;
    void node.stop();
    for (const timer of server.timers) timer.cancelled = true;
    server.timers.clear();
    endpoints.delete(id);
    server.node = null;
    if (server.disk) {
      durability.heldOutputs += node.metrics().heldOutputs;
      // What was not synced is gone: the checker reads this log again from the start.
      server.disk.crash();
      server.dirtyFrom = 1;
    }
  };

  /**
   * Restarts a server. `loss` is what its disk lost in the crash: 'amnesia' (a memory-only node:
   * term, vote and log all gone; it recovers before it takes part, docs/design/recovery.md) or the
   * number of log entries kept after the snapshot point (a tail cut).
   */
  const restart = (id: string, loss?: 'amnesia' | { keptEntries: number }): void => {
    crash(id);
    const server = serverOf(id);
    if (loss === 'amnesia') {
      replaceMemoryLog(server, createMemoryLog(undefined, { keepSnapshots: true }));
      server.dirtyFrom = 1;
    } else if (loss) {
      const persisted = server.log.persisted();
      const entries = persisted.entries.slice(0, loss.keptEntries);
      replaceMemoryLog(server, createMemoryLog({ ...persisted, entries }, { keepSnapshots: true }));
      server.dirtyFrom = Math.min(server.dirtyFrom, (persisted.snapshot?.index ?? 0) + entries.length + 1);
    }
    boot(server);
  };

  for (const server of servers.values()) boot(server);

  return {
    seed: options.seed,
    ids,
    /** The bootstrap voters (the rest are spares, added by `reconfigure`). */
    initialVoters,
    /** The members of the newest configuration a live server holds (bootstrap voters before any). */
    members: (): string[] => newestMembers() ?? initialVoters,
    rng,
    /** The cluster id the servers agreed on, or null while none knows one. */
    clusterId: () => clusterId,
    now: () => nowMs,
    steps: () => steps,
    runFor,
    runUntil,
    leader,
    stableLeader,
    status: statusOf,
    isAlive,
    node: (id: string) => serverOf(id).node,
    propose,
    committedOn,
    committedValues,
    crash,
    restart,
    partition: (...groups: string[][]) => {
      const next = new Map<string, number>();
      groups.forEach((group, index) => {
        for (const id of group) next.set(id, index);
      });
      groupOf = next;
    },
    heal: () => {
      groupOf = null;
    },
    setNetwork: (faults: Partial<NetworkFaults>) => {
      network = { ...network, ...faults };
    },
    requestsSent: () => requestsSent,
    sentByType: () => ({ ...sentByType }),
    checker,
    fail,
    persisted: (id: string) => persistedOf(serverOf(id)),
    /** Durable-disk runs: what the disks and the wire checks counted (live nodes' held outputs included). */
    durability: (): DurabilityCounters => {
      const total: DurabilityCounters = {
        flushes: 0,
        crashesLosingPersists: 0,
        persistsLost: 0,
        crashesLosingVotes: 0,
        inFlightSurvived: 0,
        ...durability,
      };
      for (const server of servers.values()) {
        const counters = server.disk?.counters();
        if (!counters) continue;
        for (const key of Object.keys(counters) as Array<keyof SimDiskCounters>) total[key] += counters[key];
        total.heldOutputs += server.node?.metrics().heldOutputs ?? 0;
      }
      return total;
    },
    /** Calls `listener` with every message a server sends (before loss); returns the unsubscribe. */
    observe: (listener: (message: RaftMessage, atMs: number) => void): (() => void) => {
      messageListeners.add(listener);
      return () => messageListeners.delete(listener);
    },
    /** Calls `listener` after every step, once the safety checks passed; returns the unsubscribe. */
    onStep: (listener: () => void): (() => void) => {
      stepListeners.add(listener);
      return () => stepListeners.delete(listener);
    },
    /** Delivers a hand-made message after `delayMs` (partitions apply; not counted as sent). */
    inject: (message: RaftMessage, delayMs = 1): void => {
      deliverLater(message as unknown as TransportMessage, delayMs);
    },
  };
};

export type Simulation = ReturnType<typeof createSimulation>;

/** Seeds for a suite: DISKEYVAL_SIM_SEED replays one, DISKEYVAL_SIM_SEEDS sets how many. */
export const seedsFor = (defaultCount: number, salt: number): number[] => {
  const replay = process.env.DISKEYVAL_SIM_SEED;
  if (replay !== undefined) return [Number(replay)];
  const count = Number(process.env.DISKEYVAL_SIM_SEEDS ?? defaultCount);
  return Array.from({ length: count }, (_, index) => salt * 100_000 + index + 1);
};

const decodedValues = new WeakMap<Entry, unknown>();

/** The value a committed entry sets (undefined for no-ops and deletes), decoded once per entry. */
const valueOfEntry = (entry: Entry): unknown => {
  if (entry.kind !== 'command' || entry.data === null) return undefined;
  if (decodedValues.has(entry)) return decodedValues.get(entry);
  const command = decodeCommand(entry.data);
  const value = command.op === 'set' ? command.value : undefined;
  decodedValues.set(entry, value);
  return value;
};

/** For each of `values`: on how many live servers it is committed (like `committedOn`, for many at once). */
export const committedCounts = (sim: Simulation, values: Iterable<string>): Map<string, number> => {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(value, 0);
  for (const id of sim.ids) {
    const status = sim.status(id);
    if (!status) continue;
    const entries = sim.persisted(id).entries;
    const seen = new Set<string>();
    for (let index = 0; index < status.commitIndex; index += 1) {
      const value = valueOfEntry(entries[index]!);
      if (typeof value !== 'string' || seen.has(value) || !counts.has(value)) continue;
      seen.add(value);
      counts.set(value, counts.get(value)! + 1);
    }
  }
  return counts;
};

/**
 * The lab suites' `one`, for several values at once (the lab's concurrent `one` calls): proposes
 * every value not yet committed through the current leader in one tick, retrying (every 2 s, or
 * once every proposal failed), until each is committed on at least `expected` live servers; fails
 * the simulation (seed and replay line) after `boundMs`. Returns the simulated time it took.
 */
export const agreeAll = async (
  sim: Simulation,
  values: readonly string[],
  expected: number,
  boundMs = 10_000,
): Promise<number> => {
  const startMs = sim.now();
  const missing = (): string[] => {
    const counts = committedCounts(sim, values);
    return values.filter((value) => counts.get(value)! < expected);
  };
  let remaining = missing();
  while (remaining.length > 0 && sim.now() - startMs < boundMs) {
    // Like the lab's `one`, only a leader that a connected majority follows gets the proposals.
    const leader = sim.stableLeader();
    if (leader === null) {
      await sim.runFor(10);
      remaining = missing();
      continue;
    }
    const proposals = remaining.map((value) => sim.propose(leader, value));
    const retryAtMs = sim.now() + 2_000;
    while (remaining.length > 0 && sim.now() < retryAtMs && sim.now() - startMs < boundMs) {
      await sim.runFor(10);
      remaining = missing();
      if (proposals.every((proposal) => proposal.state === 'failed')) break;
    }
  }
  if (remaining.length === 0) return sim.now() - startMs;
  return sim.fail(
    `agreement by ${expected} servers did not happen within ${boundMs} ms for ${remaining.length} of ${values.length} values (first: ${remaining[0]})`,
  );
};

/**
 * The lab suites' `one`: proposes `value` through the current leader, retrying (every 2 s, or
 * after a failed proposal) until at least `expected` live servers committed it; fails the
 * simulation (seed and replay line) after `boundMs`. Returns the simulated time it took.
 */
export const agreeOne = (
  sim: Simulation,
  value: string,
  expected: number,
  boundMs = 10_000,
): Promise<number> => agreeAll(sim, [value], expected, boundMs);

/** Fails the simulation (seed and replay line in the message) unless `condition` holds. */
export const ensure = (sim: Simulation, condition: boolean, what: string): void => {
  if (!condition) sim.fail(what);
};

/** The lab suites' `disconnect`: each server in `disconnected` alone, the rest together (heals when empty). */
export const isolate = (sim: Simulation, disconnected: Iterable<string>): void => {
  const apart = new Set(disconnected);
  if (apart.size === 0) {
    sim.heal();
    return;
  }
  sim.partition(
    sim.ids.filter((id) => !apart.has(id)),
    ...[...apart].map((id) => [id]),
  );
};

/** The committed command values of `id`, decoded, in log order. */
export const committedStrings = (sim: Simulation, id: string): unknown[] =>
  sim.committedValues(id).map((data) => {
    const command = decodeCommand(data as Uint8Array);
    return command.op === 'set' ? command.value : undefined;
  });

export type Tracked = { state: 'pending' | 'ok' | 'failed'; error?: string; settledAtMs?: number };

/** Follows a promise of a node call (readBarrier, propose) on the simulated clock. */
export const track = (sim: Simulation, promise: Promise<unknown>): Tracked => {
  const tracked: Tracked = { state: 'pending' };
  promise.then(
    () => {
      tracked.state = 'ok';
      tracked.settledAtMs = sim.now();
    },
    (error: { code?: string }) => {
      tracked.state = 'failed';
      tracked.error = error.code ?? String(error);
      tracked.settledAtMs = sim.now();
    },
  );
  return tracked;
};

/** Runs until a stable leader exists (failing after `boundMs`) and returns it. */
export const waitForLeader = async (
  sim: Simulation,
  boundMs = 3_000,
  what = 'a stable leader',
): Promise<string> => {
  await sim.runUntil(() => sim.stableLeader() !== null, boundMs, what);
  return sim.stableLeader()!;
};

/** Waits until every live server has committed its whole log, and all logs have the same length. */
export const converged = (sim: Simulation): Promise<number> =>
  sim.runUntil(
    () => {
      const statuses = sim.ids.flatMap((id) => (sim.isAlive(id) ? [sim.status(id)!] : []));
      return statuses.every(
        (status) =>
          status.commitIndex === statuses[0]!.commitIndex && status.lastIndex === status.commitIndex,
      );
    },
    3_000,
    'every live server to commit the same log',
  );

/** After `converged`: every live server committed the same values; returns them. */
export const sameCommittedEverywhere = async (sim: Simulation): Promise<unknown[]> => {
  await converged(sim);
  const live = sim.ids.filter((id) => sim.isAlive(id));
  const reference = JSON.stringify(committedStrings(sim, live[0]!));
  for (const id of live.slice(1)) {
    ensure(
      sim,
      JSON.stringify(committedStrings(sim, id)) === reference,
      `${id} and ${live[0]} committed differently`,
    );
  }
  return JSON.parse(reference) as unknown[];
};
