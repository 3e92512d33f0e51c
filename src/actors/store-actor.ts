/**
 * The store actor (`<node>/store`): owns the key/value map (store.ts) and applies committed entries
 * to it, in log order, once each; owns log compaction (§7), because what may be compacted is what
 * the store has applied and can snapshot; and checks a snapshot from the leader before the machine
 * installs it.
 *
 * Receives: `apply` (a commit batch from raft), `restore` (an installed snapshot), `snapshotFor`
 * (a peer sends the store's snapshot to a follower), `checkSnapshot` (a whole snapshot from the
 * leader). Sends: `applied` / `restored` to requests (one per apply pass, with this session's
 * settled requests), `compact` to log and raft, `clusterIdLearned` to log (once it knows the
 * committed cluster id), `snapshotData` to a peer, a checked snapshot to raft.
 */
import { type AnyActorRef, fromCallback } from 'xstate';
import { assert } from '../machines/assert.js';
import type { NodeId } from '../machines/messages.js';
import { roleOf } from '../machines/raft.machine.js';
import type { AnyActorSystem } from './events.js';
import { relay, type StoreEvent, type SystemIds } from './events.js';
import { type Change, createStore, type Store, type StoreSnapshot } from './store.js';

/** A leader keeps entries for a live follower at most this many compaction intervals behind. */
const MAX_RETAINED_COMPACTIONS = 4;

export type StoreCounters = { compactions: number; snapshotsInstalled: number; malformedMessages: number };

export type StoreInput = {
  ids: SystemIds;
  /** This node's request session: the requests actor hears which of its requests each pass settled. */
  session: number;
  /** The snapshot the log restarted from, if any: the store starts from its state. */
  initial: StoreSnapshot | null;
  compactEvery: number;
  keepEntries: number;
  onChange: (change: Change) => void;
  wantsChanges: () => boolean;
  onUndecodable: (index: number, reason: string) => void;
  /**
   * Runs `fn` after the current tick: compaction follows the apply pass that made it due, never
   * inside it (the simulator then checks the commit before the log forgets the entries).
   */
  defer: (fn: () => void) => void;
  /** Where the node's handle reads the map and the counters (get, metrics); never written there. */
  views: { store?: Store; storeCounters?: StoreCounters };
};

type Scope = {
  system: AnyActorSystem;
  self: AnyActorRef;
  input: StoreInput;
  /** The cluster id last told to the log (announceClusterId). */
  clusterIdSent: string | null;
};

/**
 * Where the log may be compacted to now: `keepEntries` below the applied index, and on a leader
 * not past what a follower it hears from still needs (a snapshot is far costlier to send than the
 * entries), unless that follower is more than `MAX_RETAINED_COMPACTIONS` intervals behind. The
 * leader's progress is read from the raft actor's snapshot (read only).
 */
const compactionTarget = ({ system, input }: Scope, appliedIndex: number): number => {
  let target = appliedIndex - input.keepEntries;
  const raft = system.get(input.ids.raft) as AnyActorRef | undefined;
  const snapshot = raft?.getSnapshot();
  if (!snapshot || roleOf(snapshot.value) !== 'leader') return target;
  const floor = appliedIndex - input.keepEntries - MAX_RETAINED_COMPACTIONS * input.compactEvery;
  const progress = snapshot.context.progress as Record<NodeId, { recentActive: boolean; matchIndex: number }>;
  for (const follower of Object.values(progress)) {
    if (follower.recentActive && follower.matchIndex >= floor) target = Math.min(target, follower.matchIndex);
  }
  return target;
};

export const storeActor = fromCallback<StoreEvent, StoreInput>(({ input, receive, system, self }) => {
  const scope: Scope = { system, self, input, clusterIdSent: null };
  const { ids } = input;
  const counters: StoreCounters = { compactions: 0, snapshotsInstalled: 0, malformedMessages: 0 };
  /** This session's requests settled by the apply pass running now. */
  let settled: number[] = [];
  const store = createStore(
    input.onChange,
    (session, seq) => {
      if (session === input.session) settled.push(seq);
    },
    input.wantsChanges,
    input.onUndecodable,
  );
  /** The log's snapshot point as the store last moved it (compaction or install). */
  let compactedTo = 0;
  /** The last snapshot taken, reused while nothing is applied (several followers behind at once). */
  let taken: StoreSnapshot | null = null;
  const takeSnapshot = (): StoreSnapshot => {
    if (taken === null || taken.index !== store.appliedIndex()) taken = store.snapshot();
    return taken;
  };
  if (input.initial) {
    store.restore(input.initial.data);
    compactedTo = input.initial.index;
  }
  input.views.store = store;
  input.views.storeCounters = counters;
  relay(system, self, ids.requests, { type: 'applied', appliedIndex: store.appliedIndex(), seqs: [] });

  let compactionDue = false;
  /** After an apply pass: compact, after this tick, when enough was applied since the last compaction. */
  const scheduleCompaction = (): void => {
    if (compactionDue || store.appliedIndex() - input.keepEntries - compactedTo < input.compactEvery) return;
    compactionDue = true;
    input.defer(() => {
      compactionDue = false;
      if (self.getSnapshot().status === 'active') maybeCompact();
    });
  };
  const maybeCompact = (): void => {
    if (store.appliedIndex() - input.keepEntries - compactedTo < input.compactEvery) return;
    const target = compactionTarget(scope, store.appliedIndex());
    if (target - compactedTo < input.compactEvery) return;
    compactedTo = target;
    counters.compactions += 1;
    relay(system, self, ids.log, { type: 'compact', index: target, take: takeSnapshot });
    relay(system, self, ids.raft, { type: 'compact', index: target });
  };

  receive((event) => {
    switch (event.type) {
      case 'apply': {
        settled = [];
        const configBefore = store.config();
        store.apply(event.firstIndex, event.entries);
        announceClusterId(scope, store.clusterId());
        relay(system, self, ids.requests, {
          type: 'applied',
          appliedIndex: store.appliedIndex(),
          seqs: settled,
        });
        announceConfig(scope, configBefore, store.config());
        scheduleCompaction();
        return;
      }
      case 'restore': {
        // InstallSnapshot rule 8: the store takes the snapshot's state; calls it covers are done.
        taken = null;
        const restored = store.restore(event.data);
        assert(
          restored.index === event.index,
          `snapshot data at ${restored.index}, message at ${event.index}`,
        );
        compactedTo = Math.max(compactedTo, event.index);
        counters.snapshotsInstalled += 1;
        announceClusterId(scope, store.clusterId());
        announceConfig(scope, null, store.config());
        const { settledBelow, applied } = store.sessionOf(input.session);
        relay(system, self, ids.requests, {
          type: 'restored',
          appliedIndex: restored.index,
          settledBelow,
          applied,
        });
        return;
      }
      case 'snapshotFor':
        relay(system, self, ids.peer(event.peerId), {
          type: 'snapshotData',
          snapshot: takeSnapshot(),
          requests: event.requests,
        });
        return;
      case 'checkSnapshot':
        checkSnapshot(scope, store, counters, event.message);
        return;
    }
  });
});

/**
 * The store knows the cluster id from a committed source (an applied entry 1, an installed
 * snapshot): the log records it, once, so a restart knows it (machines/cluster-id.ts). A restart
 * from a snapshot needs no record: the snapshot's header carries the id.
 */
const announceClusterId = (scope: Scope, clusterId: string | null): void => {
  if (clusterId === null || clusterId === scope.clusterIdSent) return;
  scope.clusterIdSent = clusterId;
  relay(scope.system, scope.self, scope.input.ids.log, { type: 'clusterIdLearned', clusterId });
};

/** A configuration applied (an entry, or a snapshot's): the membership actor settles calls on it. */
const announceConfig = (
  { system, self, input }: Scope,
  before: ReturnType<Store['config']>,
  after: ReturnType<Store['config']>,
): void => {
  if (after === null || (before !== null && before.index === after.index)) return;
  relay(system, self, input.ids.membership, {
    type: 'configApplied',
    index: after.index,
    config: after.config,
  });
};

/**
 * A whole snapshot that the machine would install is parsed before the machine sees it: bad bytes
 * are dropped and counted here (the log and the commit index must not move for them). The store
 * keeps the parse for the restore that follows.
 */
const checkSnapshot = (
  { system, self, input }: Scope,
  store: Store,
  counters: StoreCounters,
  message: Extract<StoreEvent, { type: 'checkSnapshot' }>['message'],
): void => {
  try {
    const parsed = store.prepare(message.data!);
    if (parsed.index === message.lastIncludedIndex && parsed.term === message.lastIncludedTerm) {
      // The configuration at the snapshot's index comes with it (machines/rules/membership.ts).
      const withConfig = parsed.config === null ? message : { ...message, config: parsed.config };
      relay(system, self, input.ids.raft, { type: 'message', message: withConfig });
      return;
    }
  } catch {
    // counted below
  }
  counters.malformedMessages += 1;
};
