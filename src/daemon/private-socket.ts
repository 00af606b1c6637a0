/**
 * Unix sockets that only the daemon's user may reach: the control socket and the lower
 * store socket share these steps.
 *
 * Invariant: the socket is bound inside a fresh directory only this user may enter
 * (mkdtemp makes 0700), made 0600, and given its name with one rename(), so it is never
 * reachable with a wider mode and the process umask is never touched. On close, the file
 * is removed only if it is still ours (same inode): never a socket that replaced it.
 */
import { connect, type Server } from 'node:net';
import { chmod, lstat, mkdtemp, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { NarfsError, type ErrorCode } from '../errors.js';

/** Whether a daemon answers on `path` (a socket file without a listener is stale). */
export function isLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => { s.destroy(); resolve(false); }, 2000);
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(timer); resolve(false); });
  });
}

/**
 * Makes `server` listen on `path` as described in the header; returns a function that
 * closes the server and removes the socket file if it is still this one. Failures carry
 * `code`; a failed setup closes the server and leaves nothing behind. The private directory
 * is `<dir of path>/<tmpPrefix>XXXXXX`, removed before this returns.
 */
export async function listenPrivately(
  server: Server, path: string, code: ErrorCode, tmpPrefix = `.${basename(path)}-`,
): Promise<() => Promise<void>> {
  let dir: string;
  try {
    dir = await mkdtemp(join(dirname(path), tmpPrefix));
  } catch (err) {
    throw new NarfsError(code, `cannot create a private directory next to ${path}`, { cause: err });
  }
  let ino: number;
  try {
    const bound = join(dir, 's');
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new NarfsError(code, `cannot listen on ${bound}`, { cause: err })));
      server.listen(bound, () => resolve());
    });
    await chmod(bound, 0o600);
    await rename(bound, path);
    ino = (await lstat(path)).ino;
  } catch (err) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    throw err instanceof NarfsError ? err : new NarfsError(code, `cannot set up ${path}`, { cause: err });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const st = await lstat(path).catch(() => undefined);
    if (st?.ino === ino) await rm(path, { force: true });
  };
}
