/**
 * What this node knows about reaching its peers, from the transport's own events: a peer whose
 * last outbound dial failed (refused, timed out, certificate rejected, ...) and that has not been
 * connected since is unreachable, with the reason. It serves two things a new user otherwise
 * cannot see:
 *
 * - a one-time `warning` { code: 'PEERS_UNREACHABLE' } once no peer at all has been reachable for
 *   `afterMs` since the first failed dial (re-armed when a peer connects again);
 * - the hint on QUORUM_UNAVAILABLE errors: which peers are unreachable, and why.
 *
 * Event-driven: the transport re-dials with back-off, so failures keep arriving while the outage
 * lasts, and each one checks the clock; no timer of its own.
 */
import type { TlsTransportLogEvent } from '../io/tls-transport.js';

export type Unreachable = { nodeId: string; reason: string };

export const createReachability = (options: {
  peers: readonly string[];
  afterMs: number;
  nowMs: () => number;
  /** Called once per outage in which every peer is unreachable for `afterMs`. */
  onAllUnreachable: (peers: Unreachable[], forMs: number) => void;
}) => {
  let peers: readonly string[] = options.peers;
  const reasons = new Map<string, string>();
  /** When the current run of "no peer reachable" began; null while some peer is (or may be) reachable. */
  let allDownSinceMs: number | null = null;
  let warned = false;

  const failed = (nodeId: string, reason: string): void => {
    if (!peers.includes(nodeId)) return;
    reasons.set(nodeId, reason);
    if (reasons.size < peers.length) return;
    const now = options.nowMs();
    allDownSinceMs ??= now;
    if (!warned && now - allDownSinceMs >= options.afterMs) {
      warned = true;
      options.onAllUnreachable(unreachable(), now - allDownSinceMs);
    }
  };

  const unreachable = (): Unreachable[] => [...reasons].map(([nodeId, reason]) => ({ nodeId, reason }));

  /** Feed every transport event here. */
  const observe = (event: TlsTransportLogEvent): void => {
    if (event.event === 'connect-failed' && event.nodeId !== undefined) {
      failed(event.nodeId, `${event.code ?? 'connect failed'} at ${event.remote}`);
    } else if (event.event === 'rejected' && event.direction === 'outbound' && event.nodeId !== undefined) {
      failed(event.nodeId, `${event.reason} at ${event.remote}`);
    } else if (event.event === 'connected' && event.direction === 'outbound') {
      reasons.delete(event.nodeId);
      allDownSinceMs = null;
      warned = false;
    }
  };

  /** The peers follow the configuration in force (membership changes): removed ones are forgotten. */
  const setPeers = (next: readonly string[]): void => {
    peers = [...next];
    for (const nodeId of [...reasons.keys()]) if (!peers.includes(nodeId)) reasons.delete(nodeId);
  };

  return { observe, unreachable, setPeers };
};
