/**
 * An exclusive lock on a persistence dir: one process at a time reads or writes a node's WAL.
 * Taken before anything in the dir is read or written; released by `release()` and, because the
 * kernel closes a dead process's sockets, by any death of the holder (kill -9 included).
 *
 * Node has no flock, so the lock is a listening Unix socket (bind is atomic: of two processes
 * binding one name at once, exactly one succeeds):
 *
 * 1. On Linux, an abstract-namespace socket named after the dir's device and inode numbers
 *    (`\0diskeyval-lock:<dev>:<ino>`), so every path to the dir (symlinks, bind mounts, relative
 *    paths) names one lock. It leaves nothing on disk and vanishes when its holder dies: bind
 *    failing with EADDRINUSE means a live holder. Abstract names are per network namespace.
 * 2. A socket file `<dir>/LOCK` (when the path fits a sockaddr_un), which also works across
 *    network namespaces and on other systems. A killed holder leaves the file behind: bind fails
 *    with EADDRINUSE, so we connect to it; a connection means a live holder, ECONNREFUSED a
 *    stale file, which is removed before binding again (at most a few times). On Linux, (1) is
 *    held first, so two processes in one namespace never race on removing a stale file.
 *
 * The holder answers every connection with one JSON line { pid, nodeId, dir }, so the DIR_LOCKED
 * error of a second process names it. The sockets are unref'd: they never keep a process alive.
 */

import { rm, stat } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { join, resolve } from 'node:path';
import { diskeyvalError } from '../errors.js';

export const LOCK_FILE_NAME = 'LOCK';
/** sun_path is 108 bytes on Linux and 104 on macOS, with its terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 100;
/** How long a holder has to answer who it is; a silent one (stopped) is still a holder. */
const HOLDER_ANSWER_MS = 1000;
/** Binds of `<dir>/LOCK` after removing a stale file, before giving up. */
const MAX_STALE_RETRIES = 3;

export type DirLock = { readonly dir: string; release(): Promise<void> };

type Holder = { pid?: number; nodeId?: string };

/** Listens on `path`: 'in-use' when another socket has that name. */
const listenOn = (server: Server, path: string): Promise<'ok' | 'in-use'> =>
  new Promise((done, fail) => {
    const onError = (error: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      if (error.code === 'EADDRINUSE') done('in-use');
      else fail(error);
    };
    const onListening = () => {
      server.off('error', onError);
      done('ok');
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(path);
  });

const closeServer = (server: Server): Promise<void> =>
  new Promise((done) => {
    server.close(() => done());
  });

/** A server that tells whoever connects who holds the lock. */
const holderServer = (answer: string): Server => {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    socket.end(answer);
  });
  // An accept error (EMFILE: the process is out of descriptors) must not end the process: the
  // lock is held by the listening socket, not by the connections it answers.
  server.on('error', () => undefined);
  server.unref();
  return server;
};

/**
 * Connects to a lock socket: 'stale' when nobody listens (refused, or gone), else the holder's
 * answer (or {} when it says nothing within HOLDER_ANSWER_MS).
 */
const askHolder = (path: string): Promise<Holder | 'stale'> =>
  new Promise((done) => {
    const socket = createConnection(path);
    let text = '';
    let connected = false;
    const finish = (result: Holder | 'stale') => {
      socket.destroy();
      done(result);
    };
    socket.setTimeout(HOLDER_ANSWER_MS, () => finish({}));
    socket.on('connect', () => {
      connected = true;
    });
    socket.on('data', (chunk) => {
      text += chunk.toString('utf8');
    });
    socket.on('close', () => {
      try {
        finish(JSON.parse(text) as Holder);
      } catch {
        finish({});
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      const gone = !connected && (error.code === 'ECONNREFUSED' || error.code === 'ENOENT');
      finish(gone ? 'stale' : {});
    });
  });

const lockedError = (dir: string, holder: Holder) => {
  const who = [
    holder.pid !== undefined ? `pid ${holder.pid}` : null,
    holder.nodeId !== undefined ? `node ${holder.nodeId}` : null,
  ].filter((part) => part !== null);
  return diskeyvalError(
    'DIR_LOCKED',
    `DIR_LOCKED: persistence dir ${dir} is in use by another process${who.length > 0 ? ` (${who.join(', ')})` : ''}; a dir is one node's alone`,
  );
};

/** Binds `<dir>/LOCK`, removing a file left by a dead holder. */
const lockPathSocket = async (dir: string, path: string, answer: string): Promise<Server> => {
  for (let attempt = 0; ; attempt += 1) {
    const server = holderServer(answer);
    if ((await listenOn(server, path)) === 'ok') return server;
    const holder = await askHolder(path);
    if (holder !== 'stale' || attempt >= MAX_STALE_RETRIES)
      throw lockedError(dir, holder === 'stale' ? {} : holder);
    await rm(path, { force: true });
  }
};

/**
 * Takes the lock on `dir` (which exists) for node `nodeId`; rejects with DIR_LOCKED, having
 * touched nothing in the dir, when a live process holds it.
 */
export const acquireDirLock = async (dirPath: string, nodeId: string): Promise<DirLock> => {
  const dir = resolve(dirPath);
  const { dev, ino } = await stat(dir, { bigint: true });
  const answer = `${JSON.stringify({ pid: process.pid, nodeId, dir })}\n`;
  const lockPath = join(dir, LOCK_FILE_NAME);
  let abstractServer: Server | null = null;
  let pathServer: Server | null = null;
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    // The path socket first: while the abstract one is held, nobody in this namespace binds it.
    // Closing unlinks the socket file (libuv); removing it again could remove a new holder's.
    if (pathServer) await closeServer(pathServer);
    if (abstractServer) await closeServer(abstractServer);
  };
  try {
    if (process.platform === 'linux') {
      const name = `\0diskeyval-lock:${dev}:${ino}`;
      const server = holderServer(answer);
      if ((await listenOn(server, name)) === 'in-use') {
        const holder = await askHolder(name);
        throw lockedError(dir, holder === 'stale' ? {} : holder);
      }
      abstractServer = server;
    }
    if (Buffer.byteLength(lockPath) <= MAX_SOCKET_PATH_BYTES) {
      pathServer = await lockPathSocket(dir, lockPath, answer);
    }
  } catch (error) {
    await release();
    throw error;
  }
  return { dir, release };
};
