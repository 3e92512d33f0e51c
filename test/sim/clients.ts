/**
 * Concurrent simulated clients for the deterministic simulator, and the checks on what they saw.
 *
 * Each client is attached to one node and loops: it picks a get, set or delete on a small key
 * space (values unique per write, so the linearizability checker has power), calls the node the way
 * `src/index.ts` does (a get is `readBarrier()` then the node's local map), and records the
 * operation with its call and return times in simulated ms. A write that failed after it was sent
 * (TIMEOUT, QUORUM_UNAVAILABLE, STOPPED, ABORTED) has an unknown outcome; a failed get constrains
 * nothing and is dropped; a write refused with NOT_LEADER (only with `forward: false`) claims it
 * changed nothing, so it is left out of the history and its value must never be applied. A client
 * whose node crashed stops; its pending calls become unknown. Every loop is bounded by a count of
 * operations and by simulated time.
 *
 * After a run: the history goes to the linearizability checker (an inconclusive check fails too),
 * and every node's committed log is replayed through the store to count the updates each written
 * value made (exactly once at most; never for a definite rejection) and to compare every node's
 * map with the replay. Failures carry the seed and the replay line (`sim.fail`).
 */
import { createStore } from '../../src/actors/store.js';
import { decodeCommand } from '../../src/io/command.js';
import { createRng } from '../../src/machines/rng.js';
import {
  checkKvHistory,
  describeViolation,
  type KvInput,
  type Operation,
} from '../support/linearizability.js';
import {
  createSimulation,
  type NetworkFaults,
  RELIABLE,
  type Simulation,
  waitForLeader,
} from './simulator.js';

export type ReadMode = 'linearizable' | 'stale';

export type ClientOptions = {
  /** Keys are `k0` .. `k{keys-1}`. Default 4. */
  keys?: number;
  /** Most operations one client calls. Default 40. */
  maxOps?: number;
  /** Pause between a return and the next call, drawn from [min, max] ms. Default [0, 20]. */
  thinkMs?: readonly [number, number];
  /** Share of gets and of deletes among the calls; the rest are sets. Defaults 0.45 and 0.1. */
  readShare?: number;
  deleteShare?: number;
  /** Share of writes called with `forward: false` (NOT_LEADER on a follower). Default 0. */
  noForwardShare?: number;
  /**
   * `stale` reads the node's map without a read index (a deliberately broken read path, for the
   * test that shows the checker catches it). Default `linearizable`.
   */
  read?: ReadMode;
  /**
   * After each write returns, also read the key from the node's map at once (a local read) and
   * record it as a get: with keys of its own, a client must see its write there (read-your-writes).
   */
  localReadAfterWrite?: boolean;
};

type Client = {
  id: number;
  nodeId: string;
  ops: number;
  state: 'idle' | 'busy' | 'stopped';
  /** Loops on its own while the clients run (`start`); otherwise calls only through `call`. */
  active: boolean;
  nextAtMs: number;
  /** Keys this client alone writes (read-your-writes); the shared key space when empty. */
  ownKeys: string[];
};

type PendingCall = { client: Client; op: Operation };

export type Failure = { clientId: number; nodeId: string; input: KvInput; code: string; atMs: number };

/** Error codes after which a write may or may not have been applied. */
const UNKNOWN_CODES = new Set(['TIMEOUT', 'QUORUM_UNAVAILABLE', 'STOPPED', 'ABORTED']);

export const createClients = (sim: Simulation, options: ClientOptions = {}) => {
  const rng = createRng((sim.seed * 2_654_435_761) ^ 0x5bd1e995);
  const keyCount = options.keys ?? 4;
  const keySpace = Array.from({ length: keyCount }, (_, index) => `k${index}`);
  const maxOps = options.maxOps ?? 40;
  const [thinkMin, thinkMax] = options.thinkMs ?? [0, 20];
  const readShare = options.readShare ?? 0.45;
  const deleteShare = options.deleteShare ?? 0.1;
  const noForwardShare = options.noForwardShare ?? 0;
  const readMode = options.read ?? 'linearizable';

  const clients: Client[] = [];
  const history: Operation[] = [];
  const pending = new Set<PendingCall>();
  const failures: Failure[] = [];
  /** Values written by calls that were refused with a code that promises no effect. */
  const refusedValues = new Set<string>();
  /** Every value a client tried to write. */
  const writtenValues = new Set<string>();
  let running = false;
  let untilMs = Number.POSITIVE_INFINITY;
  let nextValue = 0;

  const think = (): number => (thinkMax > thinkMin ? rng.int(thinkMin, thinkMax + 1) : thinkMin);

  const pickInput = (client: Client): KvInput => {
    const key = rng.pick(client.ownKeys.length > 0 ? client.ownKeys : keySpace);
    const roll = rng.float();
    if (roll < readShare) return { op: 'get', key };
    if (roll < readShare + deleteShare) return { op: 'delete', key };
    nextValue += 1;
    const value = `c${client.id}-${nextValue}`;
    writtenValues.add(value);
    return { op: 'set', key, value };
  };

  const settle = (call: PendingCall, output: Operation['output'] | null, code?: string): void => {
    if (!pending.delete(call)) return;
    const { client, op } = call;
    op.returnMs = sim.now();
    if (output === null) {
      failures.push({
        clientId: client.id,
        nodeId: client.nodeId,
        input: op.input,
        code: code!,
        atMs: sim.now(),
      });
      if (op.input.op !== 'get') {
        if (code !== undefined && UNKNOWN_CODES.has(code)) {
          op.output = { unknown: true };
          op.returnMs = Number.POSITIVE_INFINITY;
          history.push(op);
        } else if (op.input.op === 'set') {
          refusedValues.add(op.input.value as string);
        }
      }
    } else {
      op.output = output;
      history.push(op);
      if (options.localReadAfterWrite && op.input.op !== 'get') {
        const node = sim.node(client.nodeId);
        if (node !== null && !node.isStopped()) {
          history.push({
            clientId: client.id,
            input: { op: 'get', key: op.input.key },
            output: { value: node.get(op.input.key) },
            callMs: sim.now(),
            returnMs: sim.now(),
          });
        }
      }
    }
    if (client.state === 'busy') client.state = 'idle';
    client.nextAtMs = sim.now() + think();
    if (code === 'STOPPED' || !sim.isAlive(client.nodeId)) client.state = 'stopped';
    else if (running && client.active && client.nextAtMs <= sim.now()) issue(client);
  };

  /** Calls one operation through the client's node; false when the client cannot call now. */
  const issue = (client: Client, input?: KvInput): boolean => {
    if (client.state !== 'idle') return false;
    const node = sim.node(client.nodeId);
    if (node === null || node.isStopped()) {
      client.state = 'stopped';
      return false;
    }
    if (input === undefined && (client.ops >= maxOps || sim.now() >= untilMs)) return false;
    const chosen = input ?? pickInput(client);
    client.ops += 1;
    client.state = 'busy';
    const op: Operation = {
      clientId: client.id,
      input: chosen,
      output: { unknown: true },
      callMs: sim.now(),
      returnMs: Number.POSITIVE_INFINITY,
    };
    const call: PendingCall = { client, op };
    pending.add(call);
    const fail = (error: { code?: string }): void =>
      settle(call, null, error.code ?? `uncoded: ${String(error)}`);
    if (chosen.op === 'get' && readMode === 'stale') {
      // The broken read path: the node's map at once, without a read index.
      settle(call, { value: node.get(chosen.key) });
    } else if (chosen.op === 'get') {
      const key = chosen.key;
      node.readBarrier().then(() => settle(call, { value: node.get(key) }), fail);
    } else {
      const forward = !(noForwardShare > 0 && rng.chance(noForwardShare));
      const operation =
        chosen.op === 'set'
          ? { op: 'set' as const, key: chosen.key, value: chosen.value }
          : { op: 'delete' as const, key: chosen.key };
      node.write(operation, forward ? {} : { forward: false }).then(() => settle(call, { ok: true }), fail);
    }
    return true;
  };

  const startDue = (): void => {
    if (!running) return;
    for (const client of clients) {
      if (client.active && client.state === 'idle' && client.nextAtMs <= sim.now()) issue(client);
    }
  };

  /** The next time a waiting client is due, if any is. */
  const nextDueMs = (): number => {
    let due = Number.POSITIVE_INFINITY;
    if (!running) return due;
    for (const client of clients) {
      if (client.active && client.state === 'idle' && client.ops < maxOps)
        due = Math.min(due, client.nextAtMs);
    }
    return due;
  };

  /** Runs the simulation for `durationMs`, starting calls of clients whose pause is over. */
  const drive = async (durationMs: number, maxChunkMs = 25): Promise<void> => {
    const endMs = sim.now() + durationMs;
    for (;;) {
      startDue();
      const now = sim.now();
      if (now >= endMs) return;
      const due = nextDueMs();
      const stepMs = Math.max(1, Math.min(endMs - now, maxChunkMs, due > now ? due - now : maxChunkMs));
      await sim.runFor(stepMs);
    }
  };

  return {
    /** Attaches a new client to `nodeId` (its own keys when given: nobody else writes them). */
    add: (nodeId: string, ownKeys: string[] = []): number => {
      const client: Client = {
        id: clients.length + 1,
        nodeId,
        ops: 0,
        state: 'idle',
        active: true,
        nextAtMs: sim.now(),
        ownKeys,
      };
      clients.push(client);
      return client.id;
    },
    /**
     * Clients call operations until `stop`, their operation count, or `durationMs` from now: the
     * clients named in `only`, or every client (`only` also makes the others stop looping).
     */
    start: (durationMs = Number.POSITIVE_INFINITY, only?: readonly number[]): void => {
      for (const client of clients) client.active = only === undefined || only.includes(client.id);
      running = true;
      untilMs = sim.now() + durationMs;
      startDue();
    },
    /** No new calls from here on (pending ones go on). */
    stop: (): void => {
      running = false;
    },
    /** Calls `input` now through client `clientId` (idle, with a live node); false otherwise. */
    call: (clientId: number, input: KvInput): boolean => {
      const client = clients[clientId - 1];
      if (!client) throw new Error(`no client ${clientId}`);
      if (input.op === 'set') writtenValues.add(input.value as string);
      return issue(client, input);
    },
    drive,
    /** Stops new calls and runs until every pending call settled, for at most `boundMs`. */
    drain: async (boundMs: number): Promise<boolean> => {
      running = false;
      const endMs = sim.now() + boundMs;
      while (pending.size > 0 && sim.now() < endMs) await sim.runFor(Math.min(10, endMs - sim.now()));
      return pending.size === 0;
    },
    /** Clients attached to `nodeId` that still have a live node. */
    on: (nodeId: string): number[] =>
      clients.filter((client) => client.nodeId === nodeId && client.state !== 'stopped').map((c) => c.id),
    /** Calls not yet settled, per client id. */
    pendingOf: (clientId: number): Operation[] =>
      [...pending].filter((call) => call.client.id === clientId).map((call) => call.op),
    pendingCount: (): number => pending.size,
    /** Completed operations of one client (failed gets and refused writes are not here). */
    completedOf: (clientId: number): Operation[] => history.filter((op) => op.clientId === clientId),
    failures: (): Failure[] => [...failures],
    /** The history so far, with every pending write as an unknown outcome (pending gets dropped). */
    history: (): Operation[] => [
      ...history,
      ...[...pending]
        .filter((call) => call.op.input.op !== 'get')
        .map((call) => ({
          ...call.op,
          output: { unknown: true as const },
          returnMs: Number.POSITIVE_INFINITY,
        })),
    ],
    refusedValues: (): Set<string> => new Set(refusedValues),
    writtenValues: (): Set<string> => new Set(writtenValues),
    keys: keySpace,
    clientCount: (): number => clients.length,
  };
};

export type Clients = ReturnType<typeof createClients>;

/* ------------------------------------------------------------------------------------------ */
/* Figures for the lead                                                                       */
/* ------------------------------------------------------------------------------------------ */

export type CheckStats = {
  histories: number;
  /** Runs that failed a check (linearizability, exactly-once, liveness after healing). */
  failures: number;
  operations: number;
  unknownOutcomes: number;
  checkerTotalMs: number;
  checkerMaxMs: number;
  checkerMaxOps: number;
  /** Lines a file adds to its summary (figures of its own). */
  notes: string[];
};

export const createCheckStats = (): CheckStats => ({
  histories: 0,
  failures: 0,
  operations: 0,
  unknownOutcomes: 0,
  checkerTotalMs: 0,
  checkerMaxMs: 0,
  checkerMaxOps: 0,
  notes: [],
});

export const describeStats = (label: string, stats: CheckStats, wallMs: number): string =>
  `${label}: ${stats.histories} client histories checked, ${stats.operations} operations ` +
  `(${stats.unknownOutcomes} with unknown outcome), checker ${stats.checkerTotalMs.toFixed(0)} ms total, ` +
  `${stats.checkerMaxMs.toFixed(1)} ms max (on ${stats.checkerMaxOps} operations), ` +
  `${(wallMs / 1000).toFixed(1)} s wall for the file, ${stats.failures} failed runs` +
  stats.notes.map((note) => `\n  ${note}`).join('');

/* ------------------------------------------------------------------------------------------ */
/* Checks                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** Checker budget per history: histories are small (a few hundred operations over 3-5 keys). */
export const CHECK_TIMEOUT_MS = 10_000;

/**
 * Runs the linearizability checker on `history`; fails the simulation (seed, replay line, the
 * violation) when it is not linearizable or the check was inconclusive.
 */
export const checkLinearizable = (sim: Simulation, history: readonly Operation[], stats?: CheckStats) => {
  const result = checkKvHistory(history, { timeoutMs: CHECK_TIMEOUT_MS });
  if (stats) {
    stats.histories += 1;
    stats.operations += history.length;
    stats.unknownOutcomes += history.filter((op) => 'unknown' in op.output).length;
    stats.checkerTotalMs += result.elapsedMs;
    if (result.elapsedMs > stats.checkerMaxMs) {
      stats.checkerMaxMs = result.elapsedMs;
      stats.checkerMaxOps = history.length;
    }
  }
  if (result.ok !== true) {
    sim.fail(`client history of ${history.length} operations: ${describeViolation(result)}`);
  }
  return result;
};

export type AppliedUpdate = { key: string; value: unknown; deleted: boolean; index: number };

/**
 * What the store of `id` applies from its log up to `uptoIndex` (default: its commit index), as
 * the `change` events it fires, replayed through the store code on the persisted entries.
 */
export const replayChanges = (
  sim: Simulation,
  id: string,
  uptoIndex?: number,
): { changes: AppliedUpdate[]; map: Map<string, unknown>; duplicates: number } => {
  const changes: AppliedUpdate[] = [];
  const store = createStore(
    (change) => changes.push(change),
    () => {},
  );
  const status = sim.status(id);
  const limit = uptoIndex ?? status?.commitIndex ?? 0;
  const entries = sim.persisted(id).entries.slice(0, limit);
  if (entries.length > 0) store.apply(1, entries);
  const map = new Map<string, unknown>();
  for (const change of changes) {
    if (change.deleted) map.delete(change.key);
    else map.set(change.key, change.value);
  }
  return { changes, map, duplicates: store.duplicates() };
};

const describeChange = (change: AppliedUpdate): string =>
  change.deleted
    ? `delete(${change.key})@${change.index}`
    : `set(${change.key}, ${JSON.stringify(change.value)})@${change.index}`;

/**
 * Exactly-once and same-order checks over every live node:
 * - each written value is applied by at most one update on each node (retries filtered);
 * - no value of a definitely refused write is applied anywhere;
 * - every node's applied updates are a prefix of the longest node's (same updates, same order);
 * - every node's map is what its applied updates give (the live store against the replay).
 * Returns the number of committed entries the store skipped as duplicates, summed over nodes.
 */
export const checkAppliedUpdates = (
  sim: Simulation,
  clients: Clients,
): { duplicates: number; updates: number } => {
  const refused = clients.refusedValues();
  let longest: AppliedUpdate[] = [];
  let longestId = '';
  let duplicates = 0;
  const perNode: Array<{ id: string; changes: AppliedUpdate[] }> = [];
  for (const id of sim.ids) {
    const node = sim.node(id);
    if (node === null || node.isStopped()) continue;
    const status = node.status();
    const { changes, map, duplicates: skipped } = replayChanges(sim, id, status.appliedIndex);
    duplicates += skipped;
    const seen = new Map<unknown, AppliedUpdate>();
    for (const change of changes) {
      if (change.deleted) continue;
      const earlier = seen.get(change.value);
      if (earlier) {
        sim.fail(
          `${id} applied the write of ${JSON.stringify(change.value)} twice: ${describeChange(earlier)} and ${describeChange(change)}`,
        );
      }
      seen.set(change.value, change);
      if (refused.has(change.value as string)) {
        sim.fail(
          `${id} applied ${describeChange(change)}, whose call was rejected with a code that promises no effect`,
        );
      }
    }
    for (const key of new Set([...clients.keys, ...map.keys()])) {
      const live = node.get(key);
      if (live !== map.get(key)) {
        sim.fail(
          `${id}'s map holds ${JSON.stringify(live)} at ${key} but its applied log gives ${JSON.stringify(map.get(key))}`,
        );
      }
    }
    perNode.push({ id, changes });
    if (changes.length > longest.length) {
      longest = changes;
      longestId = id;
    }
  }
  for (const { id, changes } of perNode) {
    changes.forEach((change, position) => {
      const other = longest[position]!;
      if (
        other.index !== change.index ||
        other.key !== change.key ||
        other.deleted !== change.deleted ||
        other.value !== change.value
      ) {
        sim.fail(
          `${id} and ${longestId} applied different updates at position ${position}: ${describeChange(change)} vs ${describeChange(other)}`,
        );
      }
    });
  }
  return { duplicates, updates: longest.length };
};

/** Decodes the value of every committed set on `id` (for tests that look at the raw log). */
export const committedSetValues = (sim: Simulation, id: string): unknown[] =>
  sim.committedValues(id).flatMap((data) => {
    const command = decodeCommand(data as Uint8Array);
    return command.op === 'set' ? [command.value] : [];
  });

/* ------------------------------------------------------------------------------------------ */
/* Runs                                                                                       */
/* ------------------------------------------------------------------------------------------ */

export type ClientRunOptions = {
  nodes: number;
  network?: Partial<NetworkFaults>;
  proposalTimeoutMs?: number;
  clients?: ClientOptions;
  /** Bound for the calls still pending once every fault healed. Default 10 s. */
  drainMs?: number;
  /** Run the checks (default); false leaves them to the caller (the stale-read test). */
  check?: boolean;
  /**
   * Log compaction every few entries (servers catch up by InstallSnapshot). The applied-updates
   * checks replay whole logs, so these runs check linearizability only.
   */
  compaction?: { compactEvery: number; keepEntries: number; snapshotChunkBytes: number };
  /** The servers' logs (simulator.ts): 'durable' runs the simulated disk that loses unsynced writes. */
  disk?: 'memory' | 'durable';
  /** Servers started blank outside the configuration, for membership changes (simulator.ts). */
  spares?: number;
};

export type ClientRunResult = { sim: Simulation; clients: Clients; duplicates: number; updates: number };

/**
 * One seeded run: a simulation with a stable leader, the scenario's `body` (it attaches clients,
 * drives them and injects faults), then every fault healed (network reliable, partitions gone,
 * crashed nodes restarted), the pending calls drained (they must finish: liveness), and the
 * checks: linearizability of the history, exactly-once and same-order of the applied updates.
 */
export const clientRun = async (
  seed: number,
  options: ClientRunOptions,
  body: (sim: Simulation, clients: Clients) => Promise<void>,
  stats?: CheckStats,
): Promise<ClientRunResult> => {
  const sim = createSimulation({
    seed,
    nodes: options.nodes,
    yieldEvery: 1,
    ...(options.network ? { network: options.network } : {}),
    ...(options.proposalTimeoutMs ? { proposalTimeoutMs: options.proposalTimeoutMs } : {}),
    ...options.compaction,
    ...(options.disk ? { disk: options.disk } : {}),
    ...(options.spares ? { spares: options.spares } : {}),
  });
  await waitForLeader(sim);
  const clients = createClients(sim, options.clients);
  try {
    await body(sim, clients);
    clients.stop();
    sim.heal();
    sim.setNetwork(RELIABLE);
    for (const id of sim.ids) if (!sim.isAlive(id)) sim.restart(id);
    const drainMs = options.drainMs ?? 10_000;
    if (!(await clients.drain(drainMs))) {
      sim.fail(`${clients.pendingCount()} client calls still pending ${drainMs} ms after every fault healed`);
    }
    if (options.check === false) return { sim, clients, duplicates: 0, updates: 0 };
    checkLinearizable(sim, clients.history(), stats);
    if (options.compaction) return { sim, clients, duplicates: 0, updates: 0 };
    const applied = checkAppliedUpdates(sim, clients);
    return { sim, clients, ...applied };
  } catch (error) {
    if (stats) stats.failures += 1;
    throw error;
  }
};
