/**
 * `RaftTransport` over mutual TLS 1.3.
 *
 * - Trust: only the cluster CA (`tls.ca`, no system roots). Both sides present a certificate. The
 *   server runs with `requestCert: true, rejectUnauthorized: true`; the client verifies the server
 *   chain and, instead of a host name, checks that the certificate names the node it meant to dial.
 * - Identity: after TLS, each side sends a protocol handshake naming its nodeId. A connection is
 *   accepted only when the peer certificate names that nodeId (CN or SAN DNS), the nodeId was not
 *   told it is removed (below), and, when dialing, it is the node that was dialed. Every message that
 *   arrives must come `from` that nodeId and be addressed `to` this node.
 * - Membership (issue 13; `setPeers` follows the configurations in force): a node is *admitted* when
 *   it is a member (`isMember`, by default: listed in `peers`) or *leaving* (it was listed and a
 *   `setPeers` took it out, and it was not told yet). Only admitted nodes' frames are delivered. A
 *   certificate of the cluster CA whose nodeId is not admitted completes the handshake (so a new
 *   node learns the cluster id from any member it reaches: `onPeerClusterId`) and nothing else: its
 *   frames are dropped and counted (`metrics().nonMemberMessages`), never delivered; once a change
 *   admits it, its frames on the same connection are delivered. At most `MAX_OUTSIDER_CONNECTIONS`
 *   such connections are held; more are refused (`not-member`). A leaving node stays reachable so
 *   that it can be told: once a `Removed` message to it was written (or `setPeers` lists it under
 *   `removed`) it is *told*: its connections close, and its later handshakes are refused
 *   (`removed`), after that `Removed` message is written to it once more so that it learns even if
 *   the first was lost. Listing a told node as a member again admits it again.
 * - Connections: one outbound connection per peer, dialed on the first send and re-dialed with
 *   exponential back-off plus jitter. Inbound connections only deliver; a newer inbound connection
 *   from the same node replaces the older one. A connection that has not completed TLS plus the
 *   protocol handshake within `handshakeTimeoutMs` is closed.
 * - Batching: messages sent in one event-loop turn go to a peer as one frame (or, when together
 *   they would exceed `maxFrameBytes`, as several, a new one started before the message that
 *   would overflow: codec.ts `encodeFrames`), written on `setImmediate` between cork/uncork.
 *   `coalesce`, when given, may first drop messages of a peer's batch that later ones in it make
 *   redundant.
 * - Bounds: while a peer is not connected its queue holds at most `maxQueuedMessages` (more are
 *   dropped; Raft retries); a connected peer whose socket buffer exceeds `maxBufferedBytes` drops
 *   new batches; frames are limited to `maxFrameBytes` both ways.
 * - Cluster id (machines/cluster-id.ts): with `clusterId`, each handshake carries the sender's id
 *   (null while it knows none), and a sender that learns its id later announces it on its open
 *   outbound connections (a `CLUSTER_ID_ANNOUNCE` message at the head of its next frame, not
 *   delivered). A side that knows its id refuses a handshake whose id differs, and closes a
 *   connection whose peer's id turns out to differ before delivering any more of its frames:
 *   counted in `metrics().clusterMismatches` and reported as `rejected` with reason
 *   `cluster-mismatch`, `ours` and `theirs`. The check happens before an inbound connection
 *   replaces an older one of the same nodeId, so a foreign node never displaces a member.
 * - Failures: bad input closes that one connection, is counted under `metrics().rejected[reason]`
 *   and reported as `log({ event: 'rejected', reason, remote })`; nothing throws out of a socket
 *   callback.
 */
import { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { clusterIdVerdict, isClusterId } from '../machines/cluster-id.js';
import { certificateIdentities, certificateNamesNode } from './certs.js';
import {
  type CodecErrorCode,
  createFrameDecoder,
  createFrameEncoder,
  DEFAULT_MAX_FRAME_BYTES,
  encodeFrames,
  type Handshake,
  isCodecError,
} from './codec.js';
import type { RaftTransport, TransportEndpoint, TransportMessage } from './transport.js';

export type TlsPeer = { readonly nodeId: string; readonly host: string; readonly port: number };

type PemInput = string | Buffer;

export type TlsCredentials = {
  /** This node's certificate (PEM), issued by the cluster CA and naming this node. */
  readonly cert: PemInput;
  /** Its private key (PEM). */
  readonly key: PemInput;
  /** The cluster CA certificate(s) (PEM): the only trusted roots. */
  readonly ca: PemInput | readonly PemInput[];
};

/** Why a connection was refused or closed. */
export type RejectReason =
  /** The peer's certificate does not chain to the cluster CA. */
  | 'certificate-untrusted'
  | 'certificate-expired'
  | 'certificate-not-yet-valid'
  /** The peer sent no certificate. */
  | 'no-certificate'
  /** TLS failed for another reason (not TLS at all, no common version or cipher, ...). */
  | 'tls-handshake-failed'
  /** TLS + protocol handshake not complete within `handshakeTimeoutMs`. */
  | 'handshake-timeout'
  /** The certificate does not name the nodeId the peer claims, or the dialed peer is someone else. */
  | 'identity-mismatch'
  /** The nodeId is not admitted, and the connections of non-members are at their bound. */
  | 'not-member'
  /** The nodeId was told it is removed from the cluster (a `Removed` message was sent to it). */
  | 'removed'
  | 'bad-handshake'
  | 'protocol-version'
  | 'frame-too-large'
  | 'malformed-frame'
  /** A message's `from` is not the authenticated nodeId. */
  | 'sender-mismatch'
  /** A message's `to` is not this node. */
  | 'recipient-mismatch'
  /** The peer belongs to another cluster: its cluster id differs from ours (machines/cluster-id.ts). */
  | 'cluster-mismatch';

export type TlsTransportLogEvent =
  | {
      readonly event: 'rejected';
      readonly reason: RejectReason;
      readonly remote: string;
      readonly direction: 'inbound' | 'outbound';
      readonly nodeId?: string;
      readonly detail?: string;
      /** With `cluster-mismatch`: this node's cluster id and the peer's. */
      readonly ours?: string;
      readonly theirs?: string;
    }
  | { readonly event: 'listening'; readonly host: string; readonly port: number }
  | {
      readonly event: 'connected' | 'disconnected';
      readonly direction: 'inbound' | 'outbound';
      readonly nodeId: string;
      readonly remote: string;
    }
  /** A dial that failed below TLS (refused, unreachable, reset) or a peer that went away mid-TLS. */
  | {
      readonly event: 'connect-failed';
      readonly nodeId?: string;
      readonly remote: string;
      readonly code?: string;
      readonly detail?: string;
    }
  | { readonly event: 'replaced'; readonly nodeId: string; readonly remote: string }
  | {
      readonly event: 'dropped';
      readonly nodeId: string;
      readonly count: number;
      readonly reason: 'too-large' | 'unencodable' | 'backpressure' | 'not-member';
    }
  /** A node was told it is removed: its connections closed, its handshakes are refused from now on. */
  | { readonly event: 'told-removed'; readonly nodeId: string }
  | { readonly event: 'deliver-error'; readonly error: unknown }
  /** No peer could be reached for `forMs` (reported once per outage by the node, not by the transport). */
  | {
      readonly event: 'peers-unreachable';
      readonly peers: ReadonlyArray<{ readonly nodeId: string; readonly reason: string }>;
      readonly forMs: number;
    }
  | { readonly event: 'server-error'; readonly error: unknown };

export type TlsTransportOptions = {
  /** Address to listen on (tests: 127.0.0.1 or ::1). */
  readonly host: string;
  /** Port to listen on; 0 picks a free one (see `endpoint.address()`). */
  readonly port: number;
  /** Where the other nodes listen. An entry for this node itself is ignored when dialing. */
  readonly peers: readonly TlsPeer[];
  readonly tls: TlsCredentials;
  /** Who may talk to this node (default: the nodeIds in `peers`). Consulted on every frame. */
  readonly isMember?: (nodeId: string) => boolean;
  /**
   * Called when a peer's handshake or announcement carries a cluster id (members and non-members
   * alike): a node with no state learns from it that a cluster exists (machines/cluster-id.ts).
   */
  readonly onPeerClusterId?: (nodeId: string, clusterId: string) => void;
  /** Largest frame body accepted and sent (default 16 MiB). */
  readonly maxFrameBytes?: number;
  /** Time a connection gets for TLS plus the protocol handshake (default 5000 ms). */
  readonly handshakeTimeoutMs?: number;
  /** Re-dial back-off: min(maxMs, initialMs * 2^attempt), jittered to 50..100% (default 50 / 1000 ms). */
  readonly reconnect?: { readonly initialMs: number; readonly maxMs: number };
  /** Messages kept per peer while it is not connected (default 256); more are dropped. */
  readonly maxQueuedMessages?: number;
  /** Bytes a connection may have waiting in its socket buffer before new batches are dropped (default 64 MiB). */
  readonly maxBufferedBytes?: number;
  readonly log?: (event: TlsTransportLogEvent) => void;
  /** Called at each flush with one peer's messages of the turn, in order; returns those to send, in order. */
  readonly coalesce?: <T extends TransportMessage>(batch: T[]) => T[];
  /** Source of jitter, in [0, 1) (default Math.random). */
  readonly random?: () => number;
  /**
   * This node's cluster id now, or null while it knows none (machines/cluster-id.ts); consulted at
   * each handshake, each received frame and each flush. Without it, handshakes carry null.
   */
  readonly clusterId?: () => string | null;
  /** Tests only (the broken variant): carry cluster ids but never refuse a different one. */
  readonly skipClusterIdCheck?: boolean;
};

export type TlsTransportMetrics = {
  /** Message frames received / sent (handshakes are not counted). */
  framesIn: number;
  framesOut: number;
  messagesIn: number;
  messagesOut: number;
  /** Bytes received / sent at the frame level (headers and handshakes included, TLS overhead not). */
  bytesIn: number;
  bytesOut: number;
  rejected: Record<string, number>;
  /** Messages dropped by `send` (peer unknown or down with a full queue, too large, back-pressure, closed). */
  dropped: number;
  /** Of those, messages that alone encode over maxFrameBytes (a bug: never expected). */
  tooLarge: number;
  /** Connections that completed the handshake and are open, both directions. */
  connectionsOpen: number;
  /** Messages waiting in per-peer queues. */
  queued: number;
  /** Handshakes refused and connections closed because the peer's cluster id differs from ours. */
  clusterMismatches: number;
  /** Messages dropped because their sender is not admitted (a node not yet added, or never a member). */
  nonMemberMessages: number;
  /** Nodes told they are removed (their handshakes are refused from then on). */
  toldRemoved: number;
};

export type ListeningAddress = { readonly host: string; readonly port: number };

export type TlsTransportEndpoint<M extends TransportMessage = TransportMessage> = TransportEndpoint<M> & {
  readonly nodeId: string;
  /** Where the server listens (the actual port when `port: 0` was given). */
  address(): ListeningAddress;
  metrics(): TlsTransportMetrics;
  /**
   * Replaces the member list (a membership change): the members of the configurations in force,
   * with where they listen. A node taken out is leaving until told (see the module comment);
   * `removed` lists nodes already told, refused from now on. A link whose address changed is closed.
   */
  setPeers(peers: readonly TlsPeer[], options?: SetPeersOptions): void;
};

export type SetPeersOptions = { readonly removed?: readonly string[] };

/** A `RaftTransport` (structurally) whose endpoints also report their address and metrics. */
export type TlsTransport<M extends TransportMessage = TransportMessage> = {
  /** Starts listening; resolves once the server is bound. One endpoint at a time per transport. */
  connect(nodeId: string, deliver: (message: M) => void): Promise<TlsTransportEndpoint<M>>;
  /** Counters, cumulative over the transport's endpoints. */
  metrics(): TlsTransportMetrics;
  /** Where the current endpoint listens, or null when none is open. */
  address(): ListeningAddress | null;
  /** `setPeers` of the open endpoint (no-op when none is open). */
  setPeers(peers: readonly TlsPeer[], options?: SetPeersOptions): void;
};

const IDENTITY_ERROR_CODE = 'ERR_DISKEYVAL_PEER_IDENTITY';

const CODEC_REASONS: Record<CodecErrorCode, RejectReason> = {
  FRAME_TOO_LARGE: 'frame-too-large',
  MALFORMED_FRAME: 'malformed-frame',
  BAD_HANDSHAKE: 'bad-handshake',
  PROTOCOL_VERSION: 'protocol-version',
};

type Rejection = Error & { readonly reason: RejectReason; readonly extra?: RejectExtra };

/** What a `rejected` event says besides its reason. */
type RejectExtra = { nodeId?: string; detail?: string; ours?: string; theirs?: string };

const rejection = (reason: RejectReason, message: string, extra?: RejectExtra): Rejection =>
  Object.assign(new Error(message), { reason, ...(extra ? { extra } : {}) });

/** A transport-level message: the sender's cluster id, learned after the handshake. Never delivered. */
export const CLUSTER_ID_ANNOUNCE = '$cluster-id';

const reasonOf = (error: unknown): RejectReason => {
  if (isCodecError(error)) return CODEC_REASONS[error.code];
  const reason = (error as { reason?: RejectReason } | null)?.reason;
  return reason ?? 'malformed-frame';
};

/** Maps a certificate verification code (OpenSSL's, as Node reports it) to a reason. */
const certificateReason = (code: string): RejectReason => {
  if (code === IDENTITY_ERROR_CODE) return 'identity-mismatch';
  if (code === 'CERT_HAS_EXPIRED') return 'certificate-expired';
  if (code === 'CERT_NOT_YET_VALID') return 'certificate-not-yet-valid';
  return 'certificate-untrusted';
};

const formatRemote = (address: string | undefined, port: number | undefined): string =>
  address === undefined ? 'unknown' : address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;

const codeOf = (error: unknown): string | undefined => {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
};

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));

const invalidArgument = (message: string): Error =>
  Object.assign(new Error(message), { code: 'INVALID_ARGUMENT' });

/** What every connection, inbound or outbound, shares. */
type Connection = {
  readonly socket: tls.TLSSocket;
  readonly direction: 'inbound' | 'outbound';
  readonly remote: string;
  /** The authenticated peer, once its handshake was accepted. */
  peerId: string | null;
  /** The peer's cluster id as its handshake or a later announcement said (null: none yet). */
  peerClusterId: string | null;
  /** Outbound: the cluster id this side last told the peer (handshake or announcement). */
  announcedClusterId: string | null;
  /** A frame of this (not admitted) peer was dropped and reported. */
  outsiderReported: boolean;
  closed: boolean;
};

/** The outbound side of one peer. */
type PeerLink<M> = {
  peer: TlsPeer;
  queue: M[];
  connection: Connection | null;
  ready: boolean;
  attempts: number;
  retryTimer: NodeJS.Timeout | null;
  removed: boolean;
  /** A `Removed` message queued to this peer: once written, the peer is told (see the module comment). */
  telling: TransportMessage | null;
};

/** An accepted TCP connection still inside TLS or the protocol handshake. */
type PendingInbound = { raw: Socket; socket: tls.TLSSocket | null; timer: NodeJS.Timeout };

const emptyMetrics = (): TlsTransportMetrics => ({
  framesIn: 0,
  framesOut: 0,
  messagesIn: 0,
  messagesOut: 0,
  bytesIn: 0,
  bytesOut: 0,
  rejected: {},
  dropped: 0,
  tooLarge: 0,
  connectionsOpen: 0,
  queued: 0,
  clusterMismatches: 0,
  nonMemberMessages: 0,
  toldRemoved: 0,
});

/** Inbound connections of nodes that are not admitted, held at most (more are refused: `not-member`). */
export const MAX_OUTSIDER_CONNECTIONS = 16;
/** Leaving nodes remembered at most (the oldest become plain non-members). */
const MAX_LEAVING = 64;

/** Messages a connected peer may accumulate within one turn before `send` starts dropping. */
const READY_QUEUE_LIMIT = 65_536;

/** The options with their defaults, checked once by `createTlsTransport`. */
type Settings = {
  readonly maxFrameBytes: number;
  readonly handshakeTimeoutMs: number;
  readonly reconnect: { readonly initialMs: number; readonly maxMs: number };
  readonly maxQueuedMessages: number;
  readonly maxBufferedBytes: number;
  readonly random: () => number;
};

const settingsOf = (options: TlsTransportOptions): Settings => {
  const settings: Settings = {
    maxFrameBytes: options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 5000,
    reconnect: options.reconnect ?? { initialMs: 50, maxMs: 1000 },
    maxQueuedMessages: options.maxQueuedMessages ?? 256,
    maxBufferedBytes: options.maxBufferedBytes ?? 64 * 1024 * 1024,
    random: options.random ?? Math.random,
  };
  const { maxFrameBytes, handshakeTimeoutMs, reconnect, maxQueuedMessages } = settings;
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 1)
    throw invalidArgument('maxFrameBytes must be >= 1');
  if (!(handshakeTimeoutMs > 0)) throw invalidArgument('handshakeTimeoutMs must be > 0');
  if (!(reconnect.initialMs > 0) || !(reconnect.maxMs >= reconnect.initialMs)) {
    throw invalidArgument('reconnect needs 0 < initialMs <= maxMs');
  }
  if (!Number.isInteger(maxQueuedMessages) || maxQueuedMessages < 0) {
    throw invalidArgument('maxQueuedMessages must be a non-negative integer');
  }
  return settings;
};

/** Everything one open endpoint's functions below share: its settings, sockets, links and queues. */
type Endpoint<M extends TransportMessage> = Settings & {
  readonly nodeId: string;
  readonly options: TlsTransportOptions;
  readonly deliver: (message: M) => void;
  readonly counters: TlsTransportMetrics;
  readonly log: (event: TlsTransportLogEvent) => void;
  readonly isMember: (nodeId: string) => boolean;
  readonly credentials: tls.SecureContextOptions;
  readonly clientContext: tls.SecureContext;
  readonly encoder: ReturnType<typeof createFrameEncoder>;
  readonly ourClusterId: () => string | null;
  readonly checkClusterId: boolean;
  peers: Map<string, TlsPeer>;
  /** Taken out of `peers` and not told yet: still admitted and reachable (module comment). */
  readonly leaving: Map<string, TlsPeer>;
  /** Told they are removed, with the `Removed` message they were sent (written again at a refusal). */
  readonly told: Map<string, TransportMessage | null>;
  readonly onPeerClusterId: (nodeId: string, clusterId: string) => void;
  closed: boolean;
  readonly links: Map<string, PeerLink<M>>;
  readonly inboundByPeer: Map<string, Connection>;
  readonly sockets: Set<Socket>;
  /** Accepted TCP connections still inside TLS or the protocol handshake, by remote address. */
  readonly pending: Map<string, PendingInbound>;
  readonly dirty: Set<PeerLink<M>>;
  flushImmediate: NodeJS.Immediate | null;
};

const peerMap = (list: readonly TlsPeer[]): Map<string, TlsPeer> =>
  new Map(list.map((peer) => [peer.nodeId, peer]));

/** The endpoint's shared state; checks that our certificate names `nodeId`. */
const createEndpoint = <M extends TransportMessage>(
  options: TlsTransportOptions,
  settings: Settings,
  counters: TlsTransportMetrics,
  log: (event: TlsTransportLogEvent) => void,
  nodeId: string,
  deliver: (message: M) => void,
): Endpoint<M> => {
  const ownCertificate = new X509Certificate(options.tls.cert);
  if (!certificateNamesNode(ownCertificate.toLegacyObject(), nodeId)) {
    throw invalidArgument(`the certificate does not name node ${nodeId}`);
  }
  const ca = Array.isArray(options.tls.ca) ? [...options.tls.ca] : (options.tls.ca as PemInput);
  const credentials = { cert: options.tls.cert, key: options.tls.key, ca, minVersion: 'TLSv1.3' as const };
  const endpoint: Endpoint<M> = {
    ...settings,
    nodeId,
    options,
    deliver,
    counters,
    log,
    isMember: (id: string): boolean => {
      try {
        return (options.isMember ?? ((member: string) => endpoint.peers.has(member)))(id);
      } catch {
        return false;
      }
    },
    credentials,
    clientContext: tls.createSecureContext(credentials),
    encoder: createFrameEncoder(),
    ourClusterId: options.clusterId ?? (() => null),
    checkClusterId: options.skipClusterIdCheck !== true,
    peers: peerMap(options.peers),
    leaving: new Map(),
    told: new Map(),
    onPeerClusterId: (id: string, clusterId: string): void => {
      try {
        options.onPeerClusterId?.(id, clusterId);
      } catch {
        // A failing callback must not take a connection down.
      }
    },
    closed: false,
    links: new Map(),
    inboundByPeer: new Map(),
    sockets: new Set(),
    pending: new Map(),
    dirty: new Set(),
    flushImmediate: null,
  };
  return endpoint;
};

const reject = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  reason: RejectReason,
  remote: string,
  direction: 'inbound' | 'outbound',
  extra: RejectExtra = {},
): void => {
  const { counters } = endpoint;
  counters.rejected[reason] = (counters.rejected[reason] ?? 0) + 1;
  if (reason === 'cluster-mismatch') counters.clusterMismatches += 1;
  endpoint.log({ event: 'rejected', reason, remote, direction, ...extra });
};

/** Whether `peerId`'s frames are delivered: a member or a leaving node, and not told it is removed. */
const isAdmitted = <M extends TransportMessage>(endpoint: Endpoint<M>, peerId: string): boolean =>
  !endpoint.told.has(peerId) && (endpoint.isMember(peerId) || endpoint.leaving.has(peerId));

/** Inbound connections open now whose node is not admitted. */
const outsiderConnections = <M extends TransportMessage>(endpoint: Endpoint<M>): number => {
  let count = 0;
  for (const [peerId, connection] of endpoint.inboundByPeer)
    if (!connection.closed && !isAdmitted(endpoint, peerId)) count += 1;
  return count;
};

// ---- connections (both directions) --------------------------------------------------------

/** Refuses `connection` with `reason` (reported once) and closes it. */
const failConnection = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  reason: RejectReason,
  detail: string,
  extra?: RejectExtra,
): void => {
  if (connection.closed) return;
  const { socket } = connection;
  connection.closed = true;
  reject(endpoint, reason, connection.remote, connection.direction, {
    ...(connection.peerId !== null ? { nodeId: connection.peerId } : {}),
    detail,
    ...extra,
  });
  if (reason !== 'cluster-mismatch' && reason !== 'removed') {
    socket.destroy();
    return;
  }
  // Our handshake (and, to a removed node, its `Removed` message) may still be unsent: end (not
  // destroy) so that the peer learns our id, or that it was removed; destroyed if it does not close
  // within the bound.
  socket.end();
  const timer = setTimeout(() => socket.destroy(), endpoint.handshakeTimeoutMs);
  timer.unref?.();
  socket.once('close', () => clearTimeout(timer));
};

/** The peer's cluster id differs from ours: the rejection to raise; null when it may talk to us. */
const clusterMismatch = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  peerId: string,
  theirs: string | null,
): Rejection | null => {
  const ours = endpoint.ourClusterId();
  if (!endpoint.checkClusterId || clusterIdVerdict(ours, theirs) === 'accept') return null;
  return rejection('cluster-mismatch', `${peerId} belongs to cluster ${theirs}, this node to ${ours}`, {
    ours: ours!,
    theirs: theirs!,
  });
};

/**
 * Checks the peer's protocol handshake (throws a Rejection): it names the node we dialed (if we
 * dialed), its certificate names it, it is a member, and its cluster id is not another cluster's.
 */
const checkHandshake = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  expectedPeer: string | null,
  handshake: Handshake,
): void => {
  const claimed = handshake.nodeId;
  if (expectedPeer !== null && claimed !== expectedPeer) {
    throw rejection('identity-mismatch', `dialed ${expectedPeer} but the peer says it is ${claimed}`);
  }
  const certificate = connection.socket.getPeerCertificate();
  if (!certificateNamesNode(certificate, claimed)) {
    const { commonName, subjectAltName } = certificateIdentities(certificate);
    throw rejection(
      'identity-mismatch',
      `peer claims ${claimed} but its certificate names CN ${commonName}, ${subjectAltName ?? 'no SAN'}`,
    );
  }
  if (endpoint.told.has(claimed)) {
    // Told before, and it may have missed it: once more, then the refusal.
    const farewell = endpoint.told.get(claimed);
    if (farewell) connection.socket.write(endpoint.encoder.messages([farewell]));
    throw rejection('removed', `${claimed} was removed from the cluster`);
  }
  if (
    connection.direction === 'inbound' &&
    !isAdmitted(endpoint, claimed) &&
    outsiderConnections(endpoint) >= MAX_OUTSIDER_CONNECTIONS
  ) {
    throw rejection(
      'not-member',
      `${claimed} is not a member, and ${MAX_OUTSIDER_CONNECTIONS} non-members are connected`,
    );
  }
  connection.peerId = claimed;
  connection.peerClusterId = handshake.clusterId;
  if (handshake.clusterId !== null) endpoint.onPeerClusterId(claimed, handshake.clusterId);
  // Before an inbound connection can replace anything: a foreign node never displaces a member.
  const mismatch = clusterMismatch(endpoint, claimed, handshake.clusterId);
  if (mismatch) throw mismatch;
};

/**
 * Validates one frame of an established connection (sender, recipient, membership, cluster id),
 * then delivers its messages. False when the connection was refused.
 */
const receiveFrame = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  frame: M[],
): boolean => {
  const fail = (reason: RejectReason, detail: string, extra?: RejectExtra): false => {
    failConnection(endpoint, connection, reason, detail, extra);
    return false;
  };
  const peerId = connection.peerId!;
  if (endpoint.told.has(peerId)) return fail('removed', `${peerId} was removed from the cluster`);
  for (const message of frame) {
    if (message.from !== peerId)
      return fail('sender-mismatch', `message from ${message.from} on the connection of ${peerId}`);
    if (message.to !== endpoint.nodeId)
      return fail('recipient-mismatch', `message to ${message.to} arrived at ${endpoint.nodeId}`);
    if (message.type === CLUSTER_ID_ANNOUNCE) {
      const announced = (message as unknown as { clusterId?: unknown }).clusterId;
      if (!isClusterId(announced))
        return fail('malformed-frame', `${peerId} announced a malformed cluster id`);
      connection.peerClusterId = announced;
      endpoint.onPeerClusterId(peerId, announced);
    }
  }
  // Every frame: either side may have learned its id since the handshake.
  const mismatch = clusterMismatch(endpoint, peerId, connection.peerClusterId);
  if (mismatch) return fail(mismatch.reason, mismatch.message, mismatch.extra);
  if (!isAdmitted(endpoint, peerId)) {
    dropOutsiderFrame(endpoint, connection, frame.length);
    return true;
  }
  endpoint.counters.framesIn += 1;
  endpoint.counters.messagesIn += frame.length;
  for (const message of frame) {
    if (endpoint.closed) return false;
    if (message.type === CLUSTER_ID_ANNOUNCE) continue;
    try {
      endpoint.deliver(message);
    } catch (error) {
      endpoint.log({ event: 'deliver-error', error });
    }
  }
  return true;
};

/** A frame of a node not admitted: dropped and counted (reported once per connection). */
const dropOutsiderFrame = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  count: number,
): void => {
  endpoint.counters.nonMemberMessages += count;
  if (connection.outsiderReported) return;
  connection.outsiderReported = true;
  endpoint.log({ event: 'dropped', nodeId: connection.peerId!, count, reason: 'not-member' });
};

/**
 * Wires the protocol onto a TLS socket whose TLS handshake has succeeded: sends our handshake,
 * checks theirs, then validates and delivers frames.
 */
const startProtocol = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  expectedPeer: string | null,
  onEstablished: (connection: Connection) => void,
): void => {
  const { socket } = connection;
  const decoder = createFrameDecoder<M>({
    maxFrameBytes: endpoint.maxFrameBytes,
    onHandshake: (handshake) => {
      checkHandshake(endpoint, connection, expectedPeer, handshake);
      onEstablished(connection);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    if (connection.closed || endpoint.closed) return;
    endpoint.counters.bytesIn += chunk.byteLength;
    let frames: M[][];
    try {
      frames = decoder.push(chunk);
    } catch (error) {
      failConnection(endpoint, connection, reasonOf(error), errorMessage(error), (error as Rejection).extra);
      return;
    }
    for (const frame of frames) if (!receiveFrame(endpoint, connection, frame)) return;
  });
  connection.announcedClusterId = endpoint.ourClusterId();
  const handshakeFrame = endpoint.encoder.handshake(
    endpoint.nodeId,
    undefined,
    connection.announcedClusterId,
  );
  socket.write(handshakeFrame);
  endpoint.counters.bytesOut += handshakeFrame.byteLength;
};

const track = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  socket: tls.TLSSocket,
  direction: 'inbound' | 'outbound',
  remote: string,
): Connection => {
  const connection: Connection = {
    socket,
    direction,
    remote,
    peerId: null,
    peerClusterId: null,
    announcedClusterId: null,
    outsiderReported: false,
    closed: false,
  };
  endpoint.sockets.add(socket);
  socket.setNoDelay(true);
  socket.setKeepAlive(true, 10_000);
  socket.once('close', () => {
    endpoint.sockets.delete(socket);
    connection.closed = true;
  });
  return connection;
};

// ---- inbound ------------------------------------------------------------------------------

/** A TCP connection accepted: it has `handshakeTimeoutMs` for TLS plus the protocol handshake. */
const acceptTcp = <M extends TransportMessage>(endpoint: Endpoint<M>, raw: Socket): void => {
  if (endpoint.closed) {
    raw.destroy();
    return;
  }
  const { pending, handshakeTimeoutMs } = endpoint;
  const remote = formatRemote(raw.remoteAddress, raw.remotePort);
  raw.on('error', () => {
    // Reported through the TLS socket or the tlsClientError event.
  });
  endpoint.sockets.add(raw);
  const entry: PendingInbound = {
    raw,
    socket: null,
    timer: setTimeout(() => {
      if (pending.get(remote) === entry) pending.delete(remote);
      reject(endpoint, 'handshake-timeout', remote, 'inbound', {
        detail: `no ${entry.socket ? 'protocol' : 'TLS'} handshake within ${handshakeTimeoutMs} ms`,
      });
      entry.socket?.destroy();
      raw.destroy();
    }, handshakeTimeoutMs),
  };
  pending.set(remote, entry);
  raw.once('close', () => {
    clearTimeout(entry.timer);
    if (pending.get(remote) === entry) pending.delete(remote);
    endpoint.sockets.delete(raw);
  });
};

/** TLS is up on an inbound connection: the protocol handshake decides, then it only delivers. */
const acceptTls = <M extends TransportMessage>(endpoint: Endpoint<M>, socket: tls.TLSSocket): void => {
  const remote = formatRemote(socket.remoteAddress, socket.remotePort);
  const { pending, inboundByPeer, counters, log } = endpoint;
  const entry = pending.get(remote);
  socket.on('error', () => {
    // Closing follows; inbound sockets have nothing else to clean up.
  });
  if (endpoint.closed || !entry) {
    socket.destroy();
    return;
  }
  entry.socket = socket;
  const connection = track(endpoint, socket, 'inbound', remote);
  startProtocol(endpoint, connection, null, (established) => {
    clearTimeout(entry.timer);
    if (pending.get(remote) === entry) pending.delete(remote);
    const peerId = established.peerId!;
    const previous = inboundByPeer.get(peerId);
    if (previous && !previous.closed) {
      log({ event: 'replaced', nodeId: peerId, remote: previous.remote });
      previous.socket.destroy();
    }
    inboundByPeer.set(peerId, established);
    counters.connectionsOpen += 1;
    log({ event: 'connected', direction: 'inbound', nodeId: peerId, remote });
    redialNow(endpoint, peerId);
    socket.once('close', () => {
      counters.connectionsOpen -= 1;
      if (inboundByPeer.get(peerId) === established) inboundByPeer.delete(peerId);
      log({ event: 'disconnected', direction: 'inbound', nodeId: peerId, remote });
    });
  });
};

/** An inbound connection failed TLS: reported under the reason its error maps to. */
const inboundTlsError = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  error: Error,
  socket: tls.TLSSocket,
): void => {
  if (endpoint.closed) return;
  // After a failed certificate check Node has already destroyed the socket, so its address may be
  // gone; the verification result is kept in authorizationError.
  const remote = formatRemote(socket.remoteAddress, socket.remotePort);
  const authorizationError = socket.authorizationError as unknown;
  const code = codeOf(error);
  if (typeof authorizationError === 'string' || authorizationError instanceof Error) {
    const verifyCode =
      typeof authorizationError === 'string' ? authorizationError : (codeOf(authorizationError) ?? '');
    reject(endpoint, certificateReason(verifyCode), remote, 'inbound', { detail: verifyCode });
  } else if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') {
    reject(endpoint, 'no-certificate', remote, 'inbound', { detail: code });
  } else if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') {
    reject(endpoint, 'handshake-timeout', remote, 'inbound', { detail: code });
  } else if (code === 'ECONNRESET' || code === 'EPIPE') {
    // The peer (or our handshake timer, already counted) went away during TLS.
    endpoint.log({ event: 'connect-failed', remote, code, detail: error.message });
  } else {
    reject(endpoint, 'tls-handshake-failed', remote, 'inbound', { detail: code ?? error.message });
  }
};

const createServer = <M extends TransportMessage>(endpoint: Endpoint<M>): tls.Server => {
  const server = tls.createServer({
    ...endpoint.credentials,
    requestCert: true,
    rejectUnauthorized: true,
    // Our own timer (started at TCP accept) closes slow handshakes; this is only a backstop.
    handshakeTimeout: endpoint.handshakeTimeoutMs * 2 + 1000,
  });
  server.on('connection', (raw: Socket) => acceptTcp(endpoint, raw));
  server.on('secureConnection', (socket: tls.TLSSocket) => acceptTls(endpoint, socket));
  server.on('tlsClientError', (error: Error, socket: tls.TLSSocket) =>
    inboundTlsError(endpoint, error, socket),
  );
  server.on('error', (error) => endpoint.log({ event: 'server-error', error }));
  return server;
};

// ---- outbound -----------------------------------------------------------------------------

const backoff = (settings: Settings, attempt: number): number => {
  const { reconnect, random } = settings;
  const base = Math.min(reconnect.maxMs, reconnect.initialMs * 2 ** Math.min(attempt, 30));
  return base / 2 + (random() * base) / 2;
};

const scheduleRetry = <M extends TransportMessage>(endpoint: Endpoint<M>, link: PeerLink<M>): void => {
  if (endpoint.closed || link.removed || link.retryTimer) return;
  const delay = backoff(endpoint, link.attempts);
  link.attempts += 1;
  link.retryTimer = setTimeout(() => {
    link.retryTimer = null;
    // Dial again only when there is something to send; otherwise the next send dials.
    if (!endpoint.closed && !link.removed && link.queue.length > 0 && !link.connection) dial(endpoint, link);
  }, delay);
};

/**
 * A peer that just connected to us is up again: a link to it waiting out its back-off dials at
 * once, so a restarted node hears from the leader within a heartbeat, not a back-off period.
 */
const redialNow = <M extends TransportMessage>(endpoint: Endpoint<M>, peerId: string): void => {
  const link = endpoint.links.get(peerId);
  if (!link || link.connection || link.removed || endpoint.closed) return;
  if (link.retryTimer) clearTimeout(link.retryTimer);
  link.retryTimer = null;
  link.attempts = 0;
  dial(endpoint, link);
};

/** A TLS client socket to `link`'s peer that checks the server names the node we dial; null on failure. */
const openSocket = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  link: PeerLink<M>,
): tls.TLSSocket | null => {
  const { peer } = link;
  const remote = formatRemote(peer.host, peer.port);
  const expected = peer.nodeId;
  try {
    return tls.connect({
      host: peer.host,
      port: peer.port,
      secureContext: endpoint.clientContext,
      rejectUnauthorized: true,
      // The peer's identity is its nodeId, not the address we reached it at.
      checkServerIdentity: (_host, certificate) =>
        certificateNamesNode(certificate, expected)
          ? undefined
          : Object.assign(new Error(`the certificate at ${remote} does not name ${expected}`), {
              code: IDENTITY_ERROR_CODE,
            }),
    });
  } catch (error) {
    endpoint.log({ event: 'connect-failed', nodeId: expected, remote, detail: errorMessage(error) });
    scheduleRetry(endpoint, link);
    return null;
  }
};

/** The protocol handshake of an outbound connection succeeded: the link is ready to flush. */
const linkEstablished = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  link: PeerLink<M>,
  connection: Connection,
): void => {
  const { socket, remote } = connection;
  const expected = link.peer.nodeId;
  if (link.connection !== connection || link.removed) {
    connection.closed = true;
    socket.destroy();
    return;
  }
  link.ready = true;
  link.attempts = 0;
  endpoint.counters.connectionsOpen += 1;
  endpoint.log({ event: 'connected', direction: 'outbound', nodeId: expected, remote });
  socket.once('close', () => {
    endpoint.counters.connectionsOpen -= 1;
    endpoint.log({ event: 'disconnected', direction: 'outbound', nodeId: expected, remote });
  });
  if (link.queue.length > 0) markDirty(endpoint, link);
};

/** Dials `link`'s peer: TLS, then the protocol handshake, within `handshakeTimeoutMs`. */
const dial = <M extends TransportMessage>(endpoint: Endpoint<M>, link: PeerLink<M>): void => {
  const socket = openSocket(endpoint, link);
  if (!socket) return;
  const remote = formatRemote(link.peer.host, link.peer.port);
  const expected = link.peer.nodeId;
  const connection = track(endpoint, socket, 'outbound', remote);
  link.connection = connection;
  const progress = { tcpConnected: false, tlsDone: false, reported: false };
  const timer = setTimeout(() => {
    if (connection.closed) return;
    if (progress.tcpConnected) {
      progress.reported = true;
      reject(endpoint, 'handshake-timeout', remote, 'outbound', {
        nodeId: expected,
        detail: `no ${progress.tlsDone ? 'protocol' : 'TLS'} handshake within ${endpoint.handshakeTimeoutMs} ms`,
      });
    } else {
      endpoint.log({ event: 'connect-failed', nodeId: expected, remote, code: 'ETIMEDOUT' });
    }
    connection.closed = true;
    socket.destroy();
  }, endpoint.handshakeTimeoutMs);
  socket.once('connect', () => {
    progress.tcpConnected = true;
  });
  socket.once('secureConnect', () => {
    progress.tlsDone = true;
    startProtocol(endpoint, connection, expected, () => {
      clearTimeout(timer);
      linkEstablished(endpoint, link, connection);
    });
  });
  socket.on('error', (error: Error) => {
    // Errors of an established connection end in 'disconnected'; a rejected one was reported.
    if (progress.reported || endpoint.closed || connection.closed || connection.peerId !== null) return;
    progress.reported = true;
    outboundError(endpoint, connection, expected, progress.tlsDone, error);
  });
  socket.once('close', () => {
    clearTimeout(timer);
    connection.closed = true;
    if (link.connection === connection) {
      link.connection = null;
      link.ready = false;
      endpoint.dirty.delete(link);
      scheduleRetry(endpoint, link);
    }
  });
};

/** A dial failed before its protocol handshake: a certificate refusal, or a network failure. */
const outboundError = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  connection: Connection,
  expected: string,
  tlsDone: boolean,
  error: Error,
): void => {
  const { socket, remote } = connection;
  const verifyError = socket.authorizationError as unknown;
  if (!tlsDone && (typeof verifyError === 'string' || verifyError instanceof Error)) {
    const verifyCode = typeof verifyError === 'string' ? verifyError : (codeOf(verifyError) ?? '');
    reject(endpoint, certificateReason(verifyCode), remote, 'outbound', {
      nodeId: expected,
      detail: verifyCode,
    });
  } else {
    endpoint.log({
      event: 'connect-failed',
      nodeId: expected,
      remote,
      code: codeOf(error),
      detail: error.message,
    });
  }
};

// ---- sending ------------------------------------------------------------------------------

/** Reports messages of a batch left out by the encoder (both are bugs upstream, counted). */
const reportUnsent = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  link: PeerLink<M>,
  tooLarge: number,
  unencodable: number,
): void => {
  const { counters, log } = endpoint;
  // The raft machine bounds a message's size well under the frame limit.
  if (tooLarge > 0) {
    counters.dropped += tooLarge;
    counters.tooLarge += tooLarge;
    log({ event: 'dropped', nodeId: link.peer.nodeId, count: tooLarge, reason: 'too-large' });
  }
  if (unencodable > 0) {
    counters.dropped += unencodable;
    log({ event: 'dropped', nodeId: link.peer.nodeId, count: unencodable, reason: 'unencodable' });
  }
};

const flushLink = <M extends TransportMessage>(endpoint: Endpoint<M>, link: PeerLink<M>): void => {
  const connection = link.connection;
  if (!link.ready || !connection || connection.closed || link.queue.length === 0) return;
  const { counters, options } = endpoint;
  let batch = options.coalesce ? options.coalesce(link.queue) : link.queue;
  link.queue = [];
  const { socket } = connection;
  if (socket.writableLength > endpoint.maxBufferedBytes) {
    counters.dropped += batch.length;
    endpoint.log({ event: 'dropped', nodeId: link.peer.nodeId, count: batch.length, reason: 'backpressure' });
    return;
  }
  const ours = endpoint.ourClusterId();
  if (ours !== null && ours !== connection.announcedClusterId) {
    // Learned since the handshake: the peer checks it from this frame on.
    const announce = {
      type: CLUSTER_ID_ANNOUNCE,
      from: endpoint.nodeId,
      to: link.peer.nodeId,
      clusterId: ours,
    };
    batch = [announce as unknown as M, ...batch];
    connection.announcedClusterId = ours;
  }
  const { frames, sent, tooLarge, unencodable } = encodeFrames(
    endpoint.encoder,
    batch,
    endpoint.maxFrameBytes,
  );
  reportUnsent(endpoint, link, tooLarge.length, unencodable.length);
  if (frames.length === 0) return;
  socket.cork();
  for (const frame of frames) {
    socket.write(frame);
    counters.bytesOut += frame.byteLength;
  }
  socket.uncork();
  counters.framesOut += frames.length;
  counters.messagesOut += sent;
  if (link.telling) markTold(endpoint, link.peer.nodeId, link.telling);
};

const flushAll = <M extends TransportMessage>(endpoint: Endpoint<M>): void => {
  endpoint.flushImmediate = null;
  if (endpoint.closed) return;
  const links = [...endpoint.dirty];
  endpoint.dirty.clear();
  for (const link of links) flushLink(endpoint, link);
};

const markDirty = <M extends TransportMessage>(endpoint: Endpoint<M>, link: PeerLink<M>): void => {
  endpoint.dirty.add(link);
  endpoint.flushImmediate ??= setImmediate(() => flushAll(endpoint));
};

const linkFor = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  peerId: string,
): PeerLink<M> | undefined => {
  let link = endpoint.links.get(peerId);
  if (link) return link;
  const peer = endpoint.peers.get(peerId) ?? endpoint.leaving.get(peerId);
  if (!peer || peerId === endpoint.nodeId || endpoint.told.has(peerId)) return undefined;
  link = {
    peer,
    queue: [],
    connection: null,
    ready: false,
    attempts: 0,
    retryTimer: null,
    removed: false,
    telling: null,
  };
  endpoint.links.set(peerId, link);
  return link;
};

const send = <M extends TransportMessage>(endpoint: Endpoint<M>, message: M): void => {
  const link = endpoint.closed ? undefined : linkFor(endpoint, message?.to);
  if (!link || link.queue.length >= (link.ready ? READY_QUEUE_LIMIT : endpoint.maxQueuedMessages)) {
    endpoint.counters.dropped += 1;
    return;
  }
  link.queue.push(message);
  // A `Removed` answer (machines/messages.ts): once it is written, the peer is told.
  if (message.type === 'Removed') link.telling = message;
  if (link.ready) markDirty(endpoint, link);
  else if (!link.connection && !link.retryTimer) dial(endpoint, link);
};

// ---- membership and lifecycle -------------------------------------------------------------

/** Forgets `link` (and its queue) and closes its connection: `end` lets written frames go first. */
const dropLink = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  link: PeerLink<M>,
  end: boolean,
): void => {
  link.removed = true;
  if (link.retryTimer) clearTimeout(link.retryTimer);
  link.retryTimer = null;
  endpoint.counters.dropped += link.queue.length;
  link.queue = [];
  endpoint.dirty.delete(link);
  if (link.connection) {
    if (end) link.connection.socket.end();
    else link.connection.socket.destroy();
  }
  if (endpoint.links.get(link.peer.nodeId) === link) endpoint.links.delete(link.peer.nodeId);
};

/**
 * `peerId` was told it is removed (a `Removed` message to it was written, or the node says so): its
 * connections close (ours after the written frames), its later handshakes are refused.
 */
const markTold = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  peerId: string,
  message: TransportMessage | null,
): void => {
  if (peerId === endpoint.nodeId) return;
  const known = endpoint.told.get(peerId);
  endpoint.told.set(peerId, message ?? known ?? null);
  endpoint.leaving.delete(peerId);
  if (known !== undefined) return;
  endpoint.counters.toldRemoved += 1;
  endpoint.log({ event: 'told-removed', nodeId: peerId });
  const link = endpoint.links.get(peerId);
  if (link) dropLink(endpoint, link, true);
  const inbound = endpoint.inboundByPeer.get(peerId);
  if (inbound) failConnection(endpoint, inbound, 'removed', `${peerId} was removed from the cluster`);
};

/** The members now (and the told ones): see `TlsTransportEndpoint.setPeers`. */
const setPeers = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  list: readonly TlsPeer[],
  options: SetPeersOptions = {},
): void => {
  const next = peerMap(list);
  for (const [peerId, peer] of endpoint.peers) {
    if (next.has(peerId) || endpoint.told.has(peerId)) continue;
    endpoint.leaving.set(peerId, peer);
    // What was queued for it as a member is moot; it stays reachable for what comes next (`Removed`).
    const link = endpoint.links.get(peerId);
    if (link) {
      endpoint.counters.dropped += link.queue.length;
      link.queue = [];
      endpoint.dirty.delete(link);
    }
  }
  for (const peerId of next.keys()) {
    endpoint.leaving.delete(peerId);
    endpoint.told.delete(peerId);
  }
  while (endpoint.leaving.size > MAX_LEAVING) endpoint.leaving.delete(endpoint.leaving.keys().next().value!);
  endpoint.peers = next;
  for (const peerId of options.removed ?? []) if (!next.has(peerId)) markTold(endpoint, peerId, null);
  for (const [peerId, link] of endpoint.links) {
    const peer = next.get(peerId) ?? endpoint.leaving.get(peerId);
    if (peer && peer.host === link.peer.host && peer.port === link.peer.port) continue;
    // Moved, told or forgotten: a later send dials the new address.
    dropLink(endpoint, link, false);
  }
};

const listen = (server: tls.Server, host: string, port: number): Promise<void> =>
  new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => {
      server.off('listening', onListening);
      reject(error);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host, port });
  });

/** Stops timers, drops queues, destroys every socket; resolves once the server and sockets closed. */
const closeEndpoint = <M extends TransportMessage>(
  endpoint: Endpoint<M>,
  server: tls.Server,
): Promise<void> => {
  endpoint.closed = true;
  if (endpoint.flushImmediate) clearImmediate(endpoint.flushImmediate);
  endpoint.flushImmediate = null;
  endpoint.dirty.clear();
  for (const link of endpoint.links.values()) {
    if (link.retryTimer) clearTimeout(link.retryTimer);
    link.retryTimer = null;
    link.queue = [];
  }
  for (const entry of endpoint.pending.values()) clearTimeout(entry.timer);
  endpoint.pending.clear();
  const socketsClosed = [...endpoint.sockets].map((socket) =>
    socket.closed ? undefined : new Promise<void>((resolve) => socket.once('close', () => resolve())),
  );
  for (const socket of endpoint.sockets) socket.destroy();
  endpoint.sockets.clear();
  const serverClosed = new Promise<void>((resolve) => {
    server.close(() => resolve());
  });
  return Promise.all([serverClosed, ...socketsClosed]).then(() => undefined);
};

const queuedMessages = <M extends TransportMessage>(endpoint: Endpoint<M>): number => {
  let total = 0;
  for (const link of endpoint.links.values()) total += link.queue.length;
  return total;
};

export const createTlsTransport = <M extends TransportMessage = TransportMessage>(
  options: TlsTransportOptions,
): TlsTransport<M> => {
  const settings = settingsOf(options);
  const userLog = options.log;
  const counters = emptyMetrics();
  let active: {
    address: () => ListeningAddress;
    queued: () => number;
    setPeers: (list: readonly TlsPeer[], peerOptions?: SetPeersOptions) => void;
  } | null = null;

  const log = (event: TlsTransportLogEvent): void => {
    if (!userLog) return;
    try {
      userLog(event);
    } catch {
      // A failing logger must not take a connection (or the process) down.
    }
  };

  const snapshot = (): TlsTransportMetrics => ({
    ...counters,
    rejected: { ...counters.rejected },
    queued: active?.queued() ?? 0,
  });

  const connect = async (nodeId: string, deliver: (message: M) => void): Promise<TlsTransportEndpoint<M>> => {
    if (active)
      throw Object.assign(new Error('transport already has an open endpoint'), { code: 'INVALID_STATE' });
    const endpoint = createEndpoint(options, settings, counters, log, nodeId, deliver);
    const server = createServer(endpoint);
    await listen(server, options.host, options.port);
    const address = (): ListeningAddress => {
      const info = server.address();
      if (info && typeof info === 'object') return { host: info.address, port: info.port };
      return { host: options.host, port: options.port };
    };
    const listeningAt = address();
    log({ event: 'listening', host: listeningAt.host, port: listeningAt.port });

    let closing: Promise<void> | null = null;
    const close = (): Promise<void> => {
      closing ??= closeEndpoint(endpoint, server).then(() => {
        if (active === handle) active = null;
      });
      return closing;
    };
    const handle = {
      address,
      queued: () => queuedMessages(endpoint),
      setPeers: (list: readonly TlsPeer[], peerOptions?: SetPeersOptions) =>
        setPeers(endpoint, list, peerOptions),
    };
    active = handle;
    return {
      nodeId,
      send: (message: M) => send(endpoint, message),
      close,
      address,
      metrics: snapshot,
      setPeers: (list: readonly TlsPeer[], peerOptions?: SetPeersOptions) =>
        setPeers(endpoint, list, peerOptions),
    };
  };

  const transport: TlsTransport<M> = {
    connect,
    metrics: snapshot,
    address: () => active?.address() ?? null,
    setPeers: (list, peerOptions) => active?.setPeers(list, peerOptions),
  };
  return transport satisfies RaftTransport<M>;
};

/** What a node says, once per remote node, when that node turns out to belong to another cluster. */
export type ClusterMismatchReport = {
  readonly peer: string;
  readonly ours: string;
  readonly theirs: string;
  readonly remote: string;
  readonly direction: 'inbound' | 'outbound';
};

/**
 * Filters transport events down to the first `cluster-mismatch` rejection of each remote node
 * (the transport counts every one; an operator needs one warning per foreign node, not one per
 * reconnect attempt).
 */
export const firstClusterMismatchPerPeer = (
  report: (mismatch: ClusterMismatchReport) => void,
): ((event: TlsTransportLogEvent) => void) => {
  const reported = new Set<string>();
  return (event) => {
    if (event.event !== 'rejected' || event.reason !== 'cluster-mismatch') return;
    const peer = event.nodeId ?? event.remote;
    if (reported.has(peer) || event.ours === undefined || event.theirs === undefined) return;
    reported.add(peer);
    report({
      peer,
      ours: event.ours,
      theirs: event.theirs,
      remote: event.remote,
      direction: event.direction,
    });
  };
};
