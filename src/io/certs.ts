/**
 * Certificate tooling for a diskeyval cluster: one private certificate authority per cluster and
 * one certificate per node, all ECDSA P-256, all as PEM strings that Node's `tls` accepts.
 *
 * A node certificate names its node twice: as the subject CN and as a SAN DNS name. The mTLS
 * transport accepts a peer only when one of those names equals the nodeId the peer speaks for.
 * The SAN also carries `localhost`, `127.0.0.1` and `::1` so the certificate works on loopback.
 */
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import type * as X509 from '@peculiar/x509';

/** One certificate and its private key, both PEM (the key is PKCS#8, `-----BEGIN PRIVATE KEY-----`). */
export type CertificateAndKey = { readonly cert: string; readonly key: string };

export type ClusterCertificates = {
  readonly ca: CertificateAndKey;
  readonly nodes: Record<string, CertificateAndKey>;
};

export type ValidityOptions = {
  /** Days of validity from `notBefore` when `notAfter` is not given. */
  readonly validDays?: number;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
};

export type CertificateAuthorityOptions = ValidityOptions & {
  /** The CA's common name (default `diskeyval cluster CA`). */
  readonly commonName?: string;
};

export type ClusterCertificatesOptions = ValidityOptions & {
  readonly nodes: readonly string[];
};

const crypto = webcrypto;

/**
 * @peculiar/x509 2.x depends on tsyringe, which refuses to load unless a Reflect metadata polyfill
 * (`reflect-metadata` or similar) was installed first ("tsyringe requires a reflect polyfill"), and
 * no such package is a dependency here (one less global-patching dependency to ship).
 * tsyringe only needs `getMetadata`, `getOwnMetadata` and `defineMetadata` on class constructors,
 * so a tiny WeakMap-backed stand-in is installed, and only when no polyfill is present. This is why
 * the library is loaded lazily (a static import would be evaluated before any code in this file).
 */
const installReflectMetadata = (): void => {
  const reflect = Reflect as unknown as Record<string, unknown>;
  if (typeof reflect.getMetadata === 'function') return;
  const store = new WeakMap<object, Map<unknown, unknown>>();
  const getOwn = (key: unknown, target: object): unknown => store.get(target)?.get(key);
  const define = (key: unknown, value: unknown, target: object): void => {
    let map = store.get(target);
    if (!map) {
      map = new Map();
      store.set(target, map);
    }
    map.set(key, value);
  };
  const get = (key: unknown, target: object): unknown => {
    for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t)) {
      const map = store.get(t);
      if (map?.has(key)) return map.get(key);
    }
    return undefined;
  };
  Object.defineProperties(reflect, {
    getOwnMetadata: { value: getOwn, configurable: true, writable: true },
    getMetadata: { value: get, configurable: true, writable: true },
    defineMetadata: { value: define, configurable: true, writable: true },
  });
};

let x509Module: Promise<typeof X509> | undefined;

/** Loads @peculiar/x509 (once), set up with Node's WebCrypto. Tests use it to inspect certificates. */
export const loadX509 = (): Promise<typeof X509> => {
  x509Module ??= (async () => {
    installReflectMetadata();
    const loaded = (await import('@peculiar/x509')) as typeof X509 & { default?: typeof X509 };
    const x509 = loaded.X509Certificate ? loaded : (loaded.default as typeof X509);
    x509.cryptoProvider.set(crypto as unknown as ReturnType<typeof x509.cryptoProvider.get>);
    return x509;
  })();
  return x509Module;
};

const EC_KEY: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const DAY_MS = 86_400_000;
/** Node certificates start a little in the past so small clock skew between hosts does not bite. */
const SKEW_MS = 5 * 60_000;
const DEFAULT_NODE_DAYS = 365;
const DEFAULT_CA_DAYS = 3650;

const codeError = (code: string, message: string): Error => Object.assign(new Error(message), { code });

const validity = (options: ValidityOptions, defaultDays: number): { notBefore: Date; notAfter: Date } => {
  const days = options.validDays ?? defaultDays;
  if (!Number.isFinite(days) || days <= 0) {
    throw codeError('INVALID_ARGUMENT', `validDays must be a positive number, got ${days}`);
  }
  const notBefore = options.notBefore ?? new Date(Date.now() - SKEW_MS);
  const notAfter = options.notAfter ?? new Date(notBefore.getTime() + days * DAY_MS);
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw codeError('INVALID_ARGUMENT', 'notAfter must be later than notBefore');
  }
  return { notBefore, notAfter };
};

/** A positive 128-bit serial number as hex (the top bit cleared so DER keeps it positive). */
const serialNumber = (): string => {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
};

/** A distinguished name with one CN, escaped by the library (node ids may contain `,` or `=`). */
const nameWithCommonName = (commonName: string): X509.JsonName => [{ CN: [commonName] }];

const checkNodeId = (nodeId: string): void => {
  if (typeof nodeId !== 'string' || nodeId.length === 0 || nodeId.length > 253 || /[\s/\\]/.test(nodeId)) {
    throw codeError('INVALID_ARGUMENT', `invalid node id ${JSON.stringify(nodeId)}`);
  }
  // Every node certificate carries DNS:localhost, so `localhost` cannot name one node.
  if (nodeId === 'localhost') throw codeError('INVALID_ARGUMENT', 'node id "localhost" is reserved');
};

const generateKeys = (): Promise<webcrypto.CryptoKeyPair> =>
  crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']) as Promise<webcrypto.CryptoKeyPair>;

const exportKeyPem = async (x509: typeof X509, key: webcrypto.CryptoKey): Promise<string> =>
  x509.PemConverter.encode(await crypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');

const importSigningKey = (x509: typeof X509, pem: string): Promise<webcrypto.CryptoKey> =>
  crypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(pem), EC_KEY, false, ['sign']);

/** Creates a self-signed cluster CA (default validity 10 years). */
export const createCertificateAuthority = async (
  options: CertificateAuthorityOptions = {},
): Promise<CertificateAndKey> => {
  const { notBefore, notAfter } = validity(options, DEFAULT_CA_DAYS);
  const x509 = await loadX509();
  const keys = await generateKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: nameWithCommonName(options.commonName ?? 'diskeyval cluster CA'),
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKeyPem(x509, keys.privateKey) };
};

/**
 * Issues a certificate for `nodeId` signed by `ca`: CN = nodeId, SAN = DNS:nodeId, DNS:localhost,
 * IP:127.0.0.1, IP:::1, usable for both TLS server and TLS client authentication. Default validity is
 * 365 days from a few minutes ago; `notBefore` / `notAfter` may be given (tests make expired and
 * not-yet-valid certificates this way).
 */
export const issueNodeCertificate = async (
  ca: CertificateAndKey,
  nodeId: string,
  options: ValidityOptions = {},
): Promise<CertificateAndKey> => {
  checkNodeId(nodeId);
  const { notBefore, notAfter } = validity(options, DEFAULT_NODE_DAYS);
  const x509 = await loadX509();
  const caCert = new x509.X509Certificate(ca.cert);
  const [caKey, keys] = await Promise.all([importSigningKey(x509, ca.key), generateKeys()]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: nameWithCommonName(nodeId),
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: nodeId },
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
        { type: 'ip', value: '::1' },
      ]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKeyPem(x509, keys.privateKey) };
};

/**
 * A fresh CA plus one certificate per node. `validDays` / `notBefore` / `notAfter` apply to the
 * node certificates; the CA is valid for 10 years and always covers the node certificates' window.
 */
export const createClusterCertificates = async (
  options: ClusterCertificatesOptions,
): Promise<ClusterCertificates> => {
  const nodeIds = options.nodes;
  if (!Array.isArray(nodeIds) || nodeIds.length === 0) {
    throw codeError('INVALID_ARGUMENT', 'at least one node id is required');
  }
  nodeIds.forEach(checkNodeId);
  if (new Set(nodeIds).size !== nodeIds.length) {
    throw codeError('INVALID_ARGUMENT', 'node ids must be unique');
  }
  const nodeValidity = validity(options, DEFAULT_NODE_DAYS);
  const caDefault = validity({}, DEFAULT_CA_DAYS);
  const ca = await createCertificateAuthority({
    notBefore: new Date(Math.min(caDefault.notBefore.getTime(), nodeValidity.notBefore.getTime())),
    notAfter: new Date(Math.max(caDefault.notAfter.getTime(), nodeValidity.notAfter.getTime())),
  });
  const issued = await Promise.all(nodeIds.map((nodeId) => issueNodeCertificate(ca, nodeId, nodeValidity)));
  const nodes: Record<string, CertificateAndKey> = Object.create(null);
  nodeIds.forEach((nodeId, i) => {
    nodes[nodeId] = issued[i]!;
  });
  return { ca, nodes };
};

export type WrittenCertificates = {
  readonly certificates: ClusterCertificates;
  /** The paths written, CA first. */
  readonly files: string[];
};

const isClusterCertificates = (value: unknown): value is ClusterCertificates =>
  typeof value === 'object' && value !== null && 'ca' in value && 'nodes' in value && !Array.isArray(value);

/**
 * Writes `ca.pem`, `ca.key`, `<node>.pem` and `<node>.key` into `dir` (created if missing). `nodes`
 * is either certificates made earlier or what `createClusterCertificates` takes (node ids, or
 * options with validity), in which case fresh ones are made first. Each file is written to a
 * temporary name with its final mode (0600 for keys, 0644 for certificates) and renamed into place,
 * so a key is never readable by others, not even for a moment.
 */
export const writeClusterCertificates = async (
  dir: string,
  nodes: ClusterCertificates | readonly string[] | ClusterCertificatesOptions,
): Promise<WrittenCertificates> => {
  const certificates = isClusterCertificates(nodes)
    ? nodes
    : await createClusterCertificates(
        Array.isArray(nodes) ? { nodes } : (nodes as ClusterCertificatesOptions),
      );
  const files: Array<[name: string, content: string, mode: number]> = [
    ['ca.pem', certificates.ca.cert, 0o644],
    ['ca.key', certificates.ca.key, 0o600],
  ];
  for (const [nodeId, { cert, key }] of Object.entries(certificates.nodes)) {
    checkNodeId(nodeId);
    if (nodeId === 'ca' || nodeId.startsWith('.')) {
      throw codeError('INVALID_ARGUMENT', `node id ${JSON.stringify(nodeId)} cannot be used as a file name`);
    }
    files.push([`${nodeId}.pem`, cert, 0o644], [`${nodeId}.key`, key, 0o600]);
  }
  await mkdir(dir, { recursive: true });
  const paths: string[] = [];
  for (const [name, content, mode] of files) {
    const path = join(dir, name);
    const temporary = join(dir, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await writeFile(temporary, content, { mode, flag: 'wx' });
      // The process umask may have narrowed the mode; set it exactly.
      await chmod(temporary, mode);
      await rename(temporary, path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
    paths.push(path);
  }
  return { certificates, files: paths };
};

export type CertificateIdentities = {
  /** The subject CN (the last one when a certificate has several, as OpenSSL does). */
  readonly commonName: string | undefined;
  /** Node's rendering of the subject alternative names (`DNS:node-1, DNS:localhost, ...`). */
  readonly subjectAltName: string | undefined;
};

/** What a certificate says it is, for messages only: the identity decision is `certificateNamesNode`. */
export const certificateIdentities = (peerCertificate: PeerCertificate): CertificateIdentities => {
  const cn: unknown = peerCertificate?.subject?.CN;
  const commonNames = Array.isArray(cn)
    ? cn.filter((v) => typeof v === 'string')
    : typeof cn === 'string'
      ? [cn]
      : [];
  const san = peerCertificate?.subjectaltname;
  return {
    commonName: commonNames[commonNames.length - 1],
    subjectAltName: typeof san === 'string' ? san : undefined,
  };
};

/**
 * Whether a peer certificate names `nodeId`: OpenSSL's host matching (X509Certificate.checkHost)
 * over the SAN DNS names and the subject CN, with wildcards off, so a `*.example` certificate names
 * no node, and the name it matched must be `nodeId` exactly (DNS matching ignores case; node ids
 * do not). IP SANs never name a node: every node certificate carries the loopback addresses.
 */
export const certificateNamesNode = (peerCertificate: PeerCertificate, nodeId: string): boolean => {
  const raw = peerCertificate?.raw;
  if (!(raw instanceof Uint8Array) || typeof nodeId !== 'string' || nodeId.length === 0) return false;
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(raw);
  } catch {
    return false;
  }
  return certificate.checkHost(nodeId, { wildcards: false, subject: 'always' }) === nodeId;
};
