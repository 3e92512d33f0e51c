#!/usr/bin/env node
/**
 * The diskeyval command line.
 *
 *   diskeyval certs --out DIR --nodes node-1,node-2,node-3 [--days N] [--force]
 *   diskeyval certs --out DIR --nodes node-4 --add [--days N] [--force]
 *
 * writes a fresh cluster CA and one certificate per node into DIR (ca.pem, ca.key, <node>.pem,
 * <node>.key; keys with mode 0600); with --add, certificates for nodes joining the cluster, issued
 * by the CA already in DIR (README "Membership"). Exit codes: 0 done, 1 failure, 2 usage error.
 */
import { realpathSync } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type CertificateAndKey, issueNodeCertificate, writeClusterCertificates } from './io/certs.js';

export const USAGE = `Usage:
  diskeyval certs --out DIR --nodes ID[,ID...] [--days N] [--force]
  diskeyval certs --out DIR --nodes ID[,ID...] --add [--days N] [--force]

Commands:
  certs   Create a cluster CA and one mutual-TLS certificate per node; with --add, certificates
          for nodes joining the cluster, from the CA already in DIR.

Options for certs:
  --out DIR       Directory to write ca.pem, ca.key, <node>.pem and <node>.key into.
  --nodes LIST    Comma-separated node ids (each becomes the certificate's CN and SAN DNS name).
  --days N        Validity of the node certificates in days (default 365).
  --add           Issue the nodes' certificates with the CA in DIR (ca.pem, ca.key); keep the CA.
  --force         Overwrite an existing CA in DIR (with --add: existing node certificates).
  -h, --help      Show this help.
`;

export type CliIo = {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
};

const processIo: CliIo = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

type UsageError = Error & { readonly usage: true };

const usageError = (message: string): UsageError =>
  Object.assign(new Error(message), { usage: true as const });

const isUsageError = (error: unknown): error is UsageError =>
  error instanceof Error && (error as { usage?: unknown }).usage === true;

const exists = async (path: string): Promise<boolean> => {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
};

const parseNodes = (text: string): string[] => {
  const nodes = text
    .split(',')
    .map((node) => node.trim())
    .filter((node) => node.length > 0);
  if (nodes.length === 0) throw usageError('--nodes needs at least one node id');
  const seen = new Set<string>();
  for (const node of nodes) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(node)) {
      throw usageError(
        `invalid node id "${node}" (letters, digits, '.', '_' and '-'; not starting with a symbol)`,
      );
    }
    if (node === 'ca' || node === 'localhost') throw usageError(`node id "${node}" is reserved`);
    if (seen.has(node)) throw usageError(`node id "${node}" is given twice`);
    seen.add(node);
  }
  return nodes;
};

const parseDays = (text: string | undefined): number | undefined => {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 36_500) {
    throw usageError(`--days must be a whole number of days between 1 and 36500, got "${text}"`);
  }
  return Number(text);
};

/** `certs --add`: certificates for joining nodes from the CA in `out`, which stays as it is. */
const addNodes = async (
  out: string,
  nodes: readonly string[],
  validDays: number | undefined,
  force: boolean,
  io: CliIo,
): Promise<number> => {
  let ca: CertificateAndKey;
  try {
    ca = {
      cert: await readFile(join(out, 'ca.pem'), 'utf8'),
      key: await readFile(join(out, 'ca.key'), 'utf8'),
    };
  } catch (error) {
    io.stderr(
      `diskeyval: --add needs the cluster CA in ${out} (ca.pem, ca.key): ${(error as Error).message}\n`,
    );
    return 1;
  }
  for (const nodeId of nodes) {
    if (force || !(await exists(join(out, `${nodeId}.key`)))) continue;
    io.stderr(`diskeyval: ${join(out, `${nodeId}.key`)} exists; pass --force to replace it\n`);
    return 1;
  }
  const issued: Record<string, CertificateAndKey> = {};
  for (const nodeId of nodes)
    issued[nodeId] = await issueNodeCertificate(ca, nodeId, validDays === undefined ? {} : { validDays });
  const { files } = await writeClusterCertificates(out, { ca, nodes: issued });
  const caFiles = new Set([join(out, 'ca.pem'), join(out, 'ca.key')]);
  const written = files.filter((path) => !caFiles.has(path));
  io.stdout(`wrote ${written.length} files for ${nodes.length} node(s) to ${out}, issued by its CA\n`);
  for (const path of written) io.stdout(`  ${path}\n`);
  return 0;
};

const certsCommand = async (args: string[], io: CliIo): Promise<number> => {
  const { values, positionals } = parseArgs({
    args,
    options: {
      out: { type: 'string' },
      nodes: { type: 'string' },
      days: { type: 'string' },
      force: { type: 'boolean', default: false },
      add: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    io.stdout(USAGE);
    return 0;
  }
  if (positionals.length > 0) throw usageError(`unexpected argument "${positionals[0]}"`);
  if (values.out === undefined || values.out.trim() === '') throw usageError('--out DIR is required');
  if (values.nodes === undefined) throw usageError('--nodes is required');
  const nodes = parseNodes(values.nodes);
  const validDays = parseDays(values.days);
  const out = resolve(values.out);
  if (values.add) return await addNodes(out, nodes, validDays, values.force === true, io);
  if (!values.force && (await exists(join(out, 'ca.key')))) {
    io.stderr(`diskeyval: ${join(out, 'ca.key')} exists; pass --force to replace the cluster CA\n`);
    return 1;
  }
  const { files } = await writeClusterCertificates(
    out,
    validDays === undefined ? { nodes } : { nodes, validDays },
  );
  io.stdout(`wrote ${files.length} files for ${nodes.length} node(s) to ${out}\n`);
  for (const path of files) io.stdout(`  ${path}\n`);
  return 0;
};

/** Runs the CLI with `argv` (without the node and script paths); resolves with the exit code. */
export const main = async (argv: readonly string[], io: CliIo = processIo): Promise<number> => {
  const [command, ...rest] = argv;
  try {
    if (command === undefined) throw usageError('a command is required');
    if (command === '-h' || command === '--help' || command === 'help') {
      io.stdout(USAGE);
      return 0;
    }
    if (command === 'certs') return await certsCommand(rest, io);
    throw usageError(`unknown command "${command}"`);
  } catch (error) {
    // parseArgs reports unknown options and missing values with ERR_PARSE_ARGS_* codes.
    const code = (error as { code?: unknown }).code;
    if (isUsageError(error) || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
      io.stderr(`diskeyval: ${(error as Error).message}\n\n${USAGE}`);
      return 2;
    }
    io.stderr(`diskeyval: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
};

const isEntryPoint = (): boolean => {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
};

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`diskeyval: ${String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
