/**
 * `RaftTransport` over mutual TLS 1.3.
 *
 * - Trust: only the cluster CA (`tls.ca`, no system roots). Both sides present a certificate. The
 *   server runs with `requestCert: true, rejectUnauthorized: true`; the client verifies the server
 *   chain and, instead of a host name, checks that the certificate names the node it meant to dial.
 * - Identity: after TLS, each side sends a protocol handshake naming its nodeId. A connection is
 *   accepted only when the peer certificate names that nodeId (CN or SAN DNS), the nodeId passes
 *   `isMember`, and, when dialing, it is the node that was dialed. Every message that arrives must
 *   come `from` that nodeId and be addressed `to` this node.
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
  /** The nodeId does not pass `isMember`. */
  | 'not-member'
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
      readonly reason: 'too-large' | 'unencodable' | 'backpressure';
    }
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
};

export type ListeningAddress = { readonly host: string; readonly port: number };

export type TlsTransportEndpoint<M extends TransportMessage = TransportMessage> = TransportEndpoint<M> & {
  readonly nodeId: string;
  /** Where the server listens (the actual port when `port: 0` was given). */
  address(): ListeningAddress;
  metrics(): TlsTransportMetrics;
  /** Replaces the peer list (membership change); connections to removed peers are closed. */
  setPeers(peers: readonly TlsPeer[]): void;
};

/** A `RaftTransport` (structurally) whose endpoints also report their address and metrics. */
export type TlsTransport<M extends TransportMessage = TransportMessage> = {
  /** Starts listening; resolves once the server is bound. One endpoint at a time per transport. */
  connect(nodeId: string, deliver: (message: M) => void): Promise<TlsTransportEndpoint<M>>;
  /** Counters, cumulative over the transport's endpoints. */
  metrics(): TlsTransportMetrics;
  /** Where the current endpoint listens, or null when none is open. */
  address(): ListeningAddress | null;
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
};

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
});

/** Messages a connected peer may accumulate within one turn before `send` starts dropping. */
const READY_QUEUE_LIMIT = 65_536;

export const createTlsTransport = <M extends TransportMessage = TransportMessage>(
  options: TlsTransportOptions,
): TlsTransport<M> => {
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 5000;
  const reconnect = options.reconnect ?? { initialMs: 50, maxMs: 1000 };
  const maxQueuedMessages = options.maxQueuedMessages ?? 256;
  const maxBufferedBytes = options.maxBufferedBytes ?? 64 * 1024 * 1024;
  const random = options.random ?? Math.random;
  const userLog = options.log;
  const coalesce = options.coalesce;
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 1)
    throw invalidArgument('maxFrameBytes must be >= 1');
  if (!(handshakeTimeoutMs > 0)) throw invalidArgument('handshakeTimeoutMs must be > 0');
  if (!(reconnect.initialMs > 0) || !(reconnect.maxMs >= reconnect.initialMs)) {
    throw invalidArgument('reconnect needs 0 < initialMs <= maxMs');
  }
  if (!Number.isInteger(maxQueuedMessages) || maxQueuedMessages < 0) {
    throw invalidArgument('maxQueuedMessages must be a non-negative integer');
  }

  const counters = emptyMetrics();
  let active: { address: () => ListeningAddress; queued: () => number } | null = null;

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
    const ownCertificate = new X509Certificate(options.tls.cert);
    if (!certificateNamesNode(ownCertificate.toLegacyObject(), nodeId)) {
      throw invalidArgument(`the certificate does not name node ${nodeId}`);
    }

    let peers = new Map<string, TlsPeer>();
    const setPeerList = (list: readonly TlsPeer[]): void => {
      peers = new Map(list.map((peer) => [peer.nodeId, peer]));
    };
    setPeerList(options.peers);
    const isMember = options.isMember ?? ((id: string) => peers.has(id));
    const safeIsMember = (id: string): boolean => {
      try {
        return isMember(id);
      } catch {
        return false;
      }
    };

    const ca = Array.isArray(options.tls.ca) ? [...options.tls.ca] : (options.tls.ca as PemInput);
    const credentials = { cert: options.tls.cert, key: options.tls.key, ca, minVersion: 'TLSv1.3' as const };
    const clientContext = tls.createSecureContext(credentials);
    const encoder = createFrameEncoder();
    const ourClusterId = options.clusterId ?? (() => null);
    const checkClusterId = options.skipClusterIdCheck !== true;

    let closed = false;
    const links = new Map<string, PeerLink<M>>();
    const inboundByPeer = new Map<string, Connection>();
    const sockets = new Set<Socket>();
    /** Accepted TCP connections still inside TLS or the protocol handshake, by remote address. */
    const pending = new Map<string, { raw: Socket; socket: tls.TLSSocket | null; timer: NodeJS.Timeout }>();
    const dirty = new Set<PeerLink<M>>();
    let flushImmediate: NodeJS.Immediate | null = null;

    const reject = (
      reason: RejectReason,
      remote: string,
      direction: 'inbound' | 'outbound',
      extra: RejectExtra = {},
    ): void => {
      counters.rejected[reason] = (counters.rejected[reason] ?? 0) + 1;
      if (reason === 'cluster-mismatch') counters.clusterMismatches += 1;
      log({ event: 'rejected', reason, remote, direction, ...extra });
    };

    // ---- connections (both directions) ----------------------------------------------------

    /**
     * Wires the protocol onto a TLS socket whose TLS handshake has succeeded: sends our
     * handshake, checks theirs, then validates and delivers frames.
     */
    const startProtocol = (
      connection: Connection,
      expectedPeer: string | null,
      onEstablished: (connection: Connection) => void,
    ): void => {
      const { socket, remote, direction } = connection;
      const fail = (reason: RejectReason, detail: string, extra?: RejectExtra): void => {
        if (connection.closed) return;
        connection.closed = true;
        reject(reason, remote, direction, {
          ...(connection.peerId !== null ? { nodeId: connection.peerId } : {}),
          detail,
          ...extra,
        });
        if (reason !== 'cluster-mismatch') {
          socket.destroy();
          return;
        }
        // Our handshake may still be unsent: end (not destroy) so that the peer learns our id, refuses
        // in turn and warns its operator too; destroyed if it does not close within the bound.
        socket.end();
        const timer = setTimeout(() => socket.destroy(), handshakeTimeoutMs);
        timer.unref?.();
        socket.once('close', () => clearTimeout(timer));
      };
      /** The peer's cluster id differs from ours (a rejection to throw), or null. */
      const clusterMismatch = (peerId: string, theirs: string | null): Rejection | null => {
        const ours = ourClusterId();
        if (!checkClusterId || clusterIdVerdict(ours, theirs) === 'accept') return null;
        return rejection('cluster-mismatch', `${peerId} belongs to cluster ${theirs}, this node to ${ours}`, {
          ours: ours!,
          theirs: theirs!,
        });
      };
      const decoder = createFrameDecoder<M>({
        maxFrameBytes,
        onHandshake: (handshake) => {
          const claimed = handshake.nodeId;
          if (expectedPeer !== null && claimed !== expectedPeer) {
            throw rejection('identity-mismatch', `dialed ${expectedPeer} but the peer says it is ${claimed}`);
          }
          const certificate = socket.getPeerCertificate();
          if (!certificateNamesNode(certificate, claimed)) {
            const { commonName, subjectAltName } = certificateIdentities(certificate);
            throw rejection(
              'identity-mismatch',
              `peer claims ${claimed} but its certificate names CN ${commonName}, ${subjectAltName ?? 'no SAN'}`,
            );
          }
          if (!safeIsMember(claimed)) throw rejection('not-member', `${claimed} is not a member`);
          connection.peerId = claimed;
          connection.peerClusterId = handshake.clusterId;
          // Before an inbound connection can replace anything: a foreign node never displaces a member.
          const mismatch = clusterMismatch(claimed, handshake.clusterId);
          if (mismatch) throw mismatch;
          onEstablished(connection);
        },
      });
      socket.on('data', (chunk: Buffer) => {
        if (connection.closed || closed) return;
        counters.bytesIn += chunk.byteLength;
        let frames: M[][];
        try {
          frames = decoder.push(chunk);
        } catch (error) {
          fail(reasonOf(error), errorMessage(error), (error as Rejection).extra);
          return;
        }
        for (const frame of frames) {
          const peerId = connection.peerId!;
          if (!safeIsMember(peerId)) {
            fail('not-member', `${peerId} is no longer a member`);
            return;
          }
          for (const message of frame) {
            if (message.from !== peerId) {
              fail('sender-mismatch', `message from ${message.from} on the connection of ${peerId}`);
              return;
            }
            if (message.to !== nodeId) {
              fail('recipient-mismatch', `message to ${message.to} arrived at ${nodeId}`);
              return;
            }
            if (message.type === CLUSTER_ID_ANNOUNCE) {
              const announced = (message as unknown as { clusterId?: unknown }).clusterId;
              if (!isClusterId(announced)) {
                fail('malformed-frame', `${peerId} announced a malformed cluster id`);
                return;
              }
              connection.peerClusterId = announced;
            }
          }
          // Every frame: either side may have learned its id since the handshake.
          const mismatch = clusterMismatch(peerId, connection.peerClusterId);
          if (mismatch) {
            fail(mismatch.reason, mismatch.message, mismatch.extra);
            return;
          }
          counters.framesIn += 1;
          counters.messagesIn += frame.length;
          for (const message of frame) {
            if (closed) return;
            if (message.type === CLUSTER_ID_ANNOUNCE) continue;
            try {
              deliver(message);
            } catch (error) {
              log({ event: 'deliver-error', error });
            }
          }
        }
      });
      connection.announcedClusterId = ourClusterId();
      const handshakeFrame = encoder.handshake(nodeId, undefined, connection.announcedClusterId);
      socket.write(handshakeFrame);
      counters.bytesOut += handshakeFrame.byteLength;
    };

    const track = (socket: tls.TLSSocket, direction: 'inbound' | 'outbound', remote: string): Connection => {
      const connection: Connection = {
        socket,
        direction,
        remote,
        peerId: null,
        peerClusterId: null,
        announcedClusterId: null,
        closed: false,
      };
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 10_000);
      socket.once('close', () => {
        sockets.delete(socket);
        connection.closed = true;
      });
      return connection;
    };

    // ---- inbound ---------------------------------------------------------------------------

    const server = tls.createServer({
      ...credentials,
      requestCert: true,
      rejectUnauthorized: true,
      // Our own timer (started at TCP accept) closes slow handshakes; this is only a backstop.
      handshakeTimeout: handshakeTimeoutMs * 2 + 1000,
    });

    server.on('connection', (raw: Socket) => {
      if (closed) {
        raw.destroy();
        return;
      }
      const remote = formatRemote(raw.remoteAddress, raw.remotePort);
      raw.on('error', () => {
        // Reported through the TLS socket or the tlsClientError event.
      });
      sockets.add(raw);
      const entry = {
        raw,
        socket: null as tls.TLSSocket | null,
        timer: setTimeout(() => {
          if (pending.get(remote) === entry) pending.delete(remote);
          reject('handshake-timeout', remote, 'inbound', {
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
        sockets.delete(raw);
      });
    });

    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const remote = formatRemote(socket.remoteAddress, socket.remotePort);
      const entry = pending.get(remote);
      socket.on('error', () => {
        // Closing follows; inbound sockets have nothing else to clean up.
      });
      if (closed || !entry) {
        socket.destroy();
        return;
      }
      entry.socket = socket;
      const connection = track(socket, 'inbound', remote);
      startProtocol(connection, null, (established) => {
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
        redialNow(peerId);
        socket.once('close', () => {
          counters.connectionsOpen -= 1;
          if (inboundByPeer.get(peerId) === established) inboundByPeer.delete(peerId);
          log({ event: 'disconnected', direction: 'inbound', nodeId: peerId, remote });
        });
      });
    });

    server.on('tlsClientError', (error: Error, socket: tls.TLSSocket) => {
      if (closed) return;
      // After a failed certificate check Node has already destroyed the socket, so its address
      // may be gone; the verification result is kept in authorizationError.
      const remote = formatRemote(socket.remoteAddress, socket.remotePort);
      const authorizationError = socket.authorizationError as unknown;
      const code = codeOf(error);
      if (typeof authorizationError === 'string' || authorizationError instanceof Error) {
        const verifyCode =
          typeof authorizationError === 'string' ? authorizationError : (codeOf(authorizationError) ?? '');
        reject(certificateReason(verifyCode), remote, 'inbound', { detail: verifyCode });
      } else if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') {
        reject('no-certificate', remote, 'inbound', { detail: code });
      } else if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') {
        reject('handshake-timeout', remote, 'inbound', { detail: code });
      } else if (code === 'ECONNRESET' || code === 'EPIPE') {
        // The peer (or our handshake timer, already counted) went away during TLS.
        log({ event: 'connect-failed', remote, code, detail: error.message });
      } else {
        reject('tls-handshake-failed', remote, 'inbound', { detail: code ?? error.message });
      }
    });

    server.on('error', (error) => log({ event: 'server-error', error }));

    // ---- outbound --------------------------------------------------------------------------

    const backoff = (attempt: number): number => {
      const base = Math.min(reconnect.maxMs, reconnect.initialMs * 2 ** Math.min(attempt, 30));
      return base / 2 + (random() * base) / 2;
    };

    const scheduleRetry = (link: PeerLink<M>): void => {
      if (closed || link.removed || link.retryTimer) return;
      const delay = backoff(link.attempts);
      link.attempts += 1;
      link.retryTimer = setTimeout(() => {
        link.retryTimer = null;
        // Dial again only when there is something to send; otherwise the next send dials.
        if (!closed && !link.removed && link.queue.length > 0 && !link.connection) dial(link);
      }, delay);
    };

    /**
     * A peer that just connected to us is up again: a link to it waiting out its back-off dials at
     * once, so a restarted node hears from the leader within a heartbeat, not a back-off period.
     */
    const redialNow = (peerId: string): void => {
      const link = links.get(peerId);
      if (!link || link.connection || link.removed || closed) return;
      if (link.retryTimer) clearTimeout(link.retryTimer);
      link.retryTimer = null;
      link.attempts = 0;
      dial(link);
    };

    const dial = (link: PeerLink<M>): void => {
      const { peer } = link;
      const remote = formatRemote(peer.host, peer.port);
      const expected = peer.nodeId;
      let socket: tls.TLSSocket;
      try {
        socket = tls.connect({
          host: peer.host,
          port: peer.port,
          secureContext: clientContext,
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
        log({ event: 'connect-failed', nodeId: expected, remote, detail: errorMessage(error) });
        scheduleRetry(link);
        return;
      }
      const connection = track(socket, 'outbound', remote);
      link.connection = connection;
      let tcpConnected = false;
      let tlsDone = false;
      let reported = false;
      const timer = setTimeout(() => {
        if (connection.closed) return;
        if (tcpConnected) {
          reported = true;
          reject('handshake-timeout', remote, 'outbound', {
            nodeId: expected,
            detail: `no ${tlsDone ? 'protocol' : 'TLS'} handshake within ${handshakeTimeoutMs} ms`,
          });
        } else {
          log({ event: 'connect-failed', nodeId: expected, remote, code: 'ETIMEDOUT' });
        }
        connection.closed = true;
        socket.destroy();
      }, handshakeTimeoutMs);
      socket.once('connect', () => {
        tcpConnected = true;
      });
      socket.once('secureConnect', () => {
        tlsDone = true;
        startProtocol(connection, expected, () => {
          clearTimeout(timer);
          if (link.connection !== connection || link.removed) {
            connection.closed = true;
            socket.destroy();
            return;
          }
          link.ready = true;
          link.attempts = 0;
          counters.connectionsOpen += 1;
          log({ event: 'connected', direction: 'outbound', nodeId: expected, remote });
          socket.once('close', () => {
            counters.connectionsOpen -= 1;
            log({ event: 'disconnected', direction: 'outbound', nodeId: expected, remote });
          });
          if (link.queue.length > 0) markDirty(link);
        });
      });
      socket.on('error', (error: Error) => {
        // Errors of an established connection end in 'disconnected'; a rejected one was reported.
        if (reported || closed || connection.closed || connection.peerId !== null) return;
        reported = true;
        const verifyError = socket.authorizationError as unknown;
        if (!tlsDone && (typeof verifyError === 'string' || verifyError instanceof Error)) {
          const verifyCode = typeof verifyError === 'string' ? verifyError : (codeOf(verifyError) ?? '');
          reject(certificateReason(verifyCode), remote, 'outbound', { nodeId: expected, detail: verifyCode });
        } else {
          log({
            event: 'connect-failed',
            nodeId: expected,
            remote,
            code: codeOf(error),
            detail: error.message,
          });
        }
      });
      socket.once('close', () => {
        clearTimeout(timer);
        connection.closed = true;
        if (link.connection === connection) {
          link.connection = null;
          link.ready = false;
          dirty.delete(link);
          scheduleRetry(link);
        }
      });
    };

    // ---- sending ---------------------------------------------------------------------------

    const dropped = (count: number): void => {
      counters.dropped += count;
    };

    const flushLink = (link: PeerLink<M>): void => {
      const connection = link.connection;
      if (!link.ready || !connection || connection.closed || link.queue.length === 0) return;
      let batch = coalesce ? coalesce(link.queue) : link.queue;
      link.queue = [];
      const { socket } = connection;
      if (socket.writableLength > maxBufferedBytes) {
        dropped(batch.length);
        log({ event: 'dropped', nodeId: link.peer.nodeId, count: batch.length, reason: 'backpressure' });
        return;
      }
      const ours = ourClusterId();
      if (ours !== null && ours !== connection.announcedClusterId) {
        // Learned since the handshake: the peer checks it from this frame on.
        const announce = { type: CLUSTER_ID_ANNOUNCE, from: nodeId, to: link.peer.nodeId, clusterId: ours };
        batch = [announce as unknown as M, ...batch];
        connection.announcedClusterId = ours;
      }
      const { frames, sent, tooLarge, unencodable } = encodeFrames(encoder, batch, maxFrameBytes);
      // Both are bugs upstream (the raft machine bounds a message's size): counted and reported.
      if (tooLarge.length > 0) {
        dropped(tooLarge.length);
        counters.tooLarge += tooLarge.length;
        log({ event: 'dropped', nodeId: link.peer.nodeId, count: tooLarge.length, reason: 'too-large' });
      }
      if (unencodable.length > 0) {
        dropped(unencodable.length);
        log({ event: 'dropped', nodeId: link.peer.nodeId, count: unencodable.length, reason: 'unencodable' });
      }
      if (frames.length === 0) return;
      socket.cork();
      for (const frame of frames) {
        socket.write(frame);
        counters.bytesOut += frame.byteLength;
      }
      socket.uncork();
      counters.framesOut += frames.length;
      counters.messagesOut += sent;
    };

    const flushAll = (): void => {
      flushImmediate = null;
      if (closed) return;
      const links = [...dirty];
      dirty.clear();
      for (const link of links) flushLink(link);
    };

    const markDirty = (link: PeerLink<M>): void => {
      dirty.add(link);
      flushImmediate ??= setImmediate(flushAll);
    };

    const linkFor = (peerId: string): PeerLink<M> | undefined => {
      let link = links.get(peerId);
      if (link) return link;
      const peer = peers.get(peerId);
      if (!peer || peerId === nodeId) return undefined;
      link = {
        peer,
        queue: [],
        connection: null,
        ready: false,
        attempts: 0,
        retryTimer: null,
        removed: false,
      };
      links.set(peerId, link);
      return link;
    };

    const send = (message: M): void => {
      if (closed) {
        dropped(1);
        return;
      }
      const link = linkFor(message?.to);
      if (!link) {
        dropped(1);
        return;
      }
      if (link.queue.length >= (link.ready ? READY_QUEUE_LIMIT : maxQueuedMessages)) {
        dropped(1);
        return;
      }
      link.queue.push(message);
      if (link.ready) markDirty(link);
      else if (!link.connection && !link.retryTimer) dial(link);
    };

    // ---- membership ------------------------------------------------------------------------

    const setPeers = (list: readonly TlsPeer[]): void => {
      setPeerList(list);
      for (const [peerId, link] of links) {
        const peer = peers.get(peerId);
        if (peer && peer.host === link.peer.host && peer.port === link.peer.port) continue;
        // Removed or moved: forget the link (and its queue); a later send dials the new address.
        link.removed = true;
        if (link.retryTimer) clearTimeout(link.retryTimer);
        dropped(link.queue.length);
        link.queue = [];
        dirty.delete(link);
        link.connection?.socket.destroy();
        links.delete(peerId);
      }
      for (const [peerId, connection] of inboundByPeer) {
        if (!safeIsMember(peerId)) connection.socket.destroy();
      }
    };

    // ---- lifecycle -------------------------------------------------------------------------

    await new Promise<void>((resolve, reject) => {
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
      server.listen({ host: options.host, port: options.port });
    });

    const address = (): ListeningAddress => {
      const info = server.address();
      if (info && typeof info === 'object') return { host: info.address, port: info.port };
      return { host: options.host, port: options.port };
    };
    const listeningAt = address();
    log({ event: 'listening', host: listeningAt.host, port: listeningAt.port });

    let closing: Promise<void> | null = null;
    const close = (): Promise<void> => {
      if (closing) return closing;
      closed = true;
      if (flushImmediate) clearImmediate(flushImmediate);
      flushImmediate = null;
      dirty.clear();
      for (const link of links.values()) {
        if (link.retryTimer) clearTimeout(link.retryTimer);
        link.retryTimer = null;
        link.queue = [];
      }
      for (const entry of pending.values()) clearTimeout(entry.timer);
      pending.clear();
      const socketsClosed = [...sockets].map((socket) =>
        socket.closed ? undefined : new Promise<void>((resolve) => socket.once('close', () => resolve())),
      );
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      const serverClosed = new Promise<void>((resolve) => {
        server.close(() => resolve());
      });
      closing = Promise.all([serverClosed, ...socketsClosed]).then(() => {
        if (active === handle) active = null;
      });
      return closing;
    };

    const queued = (): number => {
      let total = 0;
      for (const link of links.values()) total += link.queue.length;
      return total;
    };
    const handle = { address, queued };
    active = handle;

    return { nodeId, send, close, address, metrics: snapshot, setPeers };
  };

  const transport: TlsTransport<M> = {
    connect,
    metrics: snapshot,
    address: () => active?.address() ?? null,
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
