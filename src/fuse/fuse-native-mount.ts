/**
 * FuseNativeMount: serves a StoreFilesystem through `fuse-native` (libfuse 2.9, high-level,
 * path-based API). The only module that touches the binding.
 *
 * fuse-native traps and what this module does about them:
 * - Ops are path-based: paths are resolved to inodes by walking `lookup` from the root;
 *   resolved paths are memoised (store paths are immutable, so the memo never goes stale).
 * - It answers any op that takes longer than 15 s with ETIMEDOUT by default: narfs keeps
 *   its own deadline (opTimeoutMs, default 30 s, EIO) and sets the binding's to that plus
 *   a margin, as a backstop only.
 * - `use_ino`, `negative_timeout` and `max_readahead` are not exposed: they are appended to
 *   the option string by overriding `_fuseOptions`. Without `use_ino` libfuse invents inode
 *   numbers and ours would not be stable.
 * - Requests are at most 128 KiB (the kernel's default max_pages); reads are answered from
 *   a copy, never by letting late I/O write into the kernel's buffer after a deadline.
 * - Names and symlink targets are strings decoded from UTF-8 by the binding, while narfs
 *   holds them as bytes (byte strings, src/nix/nar-listing.ts): incoming names are encoded
 *   back to their UTF-8 bytes; a listed name or a target that is not UTF-8 cannot be passed
 *   at all, so readdir of its directory and readlink answer EIO (ERR_NAME_NOT_UTF8).
 * - Every op runs on the Node main thread (the binding's FUSE threads wait on a semaphore),
 *   so nothing here may make a synchronous syscall on the mount itself.
 * Caching: store paths are immutable, so entry and attr timeouts are long and the kernel
 * page cache is kept across opens (kernel_cache); negative entries expire fast so newly
 * pushed paths appear.
 */
import { isUtf8 } from 'node:buffer';
import { createRequire } from 'node:module';
import { execFile } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { NarfsError } from '../errors.js';
import { withDeadline } from '../deadline.js';
import { byteString } from '../nix/nar-listing.js';
import type { Logger } from '../log.js';
import { ROOT_INO, type Attr, type StoreFilesystem } from '../fs/store-filesystem.js';
import { ERRNO, errnoFor, isLoggedFailure } from './errno.js';

const require = createRequire(import.meta.url);

// Minimal typing of the parts of fuse-native used here (it ships no types).
type Cb = (...args: any[]) => void;
interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
}
type FuseCtor = new (mnt: string, ops: Record<string, Cb>, opts: Record<string, unknown>) => FuseInstance;

export interface FuseMountOptions {
  mountpoint: string;
  opTimeoutMs: number;
  logger: Logger;
  /** Seconds the kernel may cache names and attributes (immutable store: long). */
  entryTimeoutS?: number;
  attrTimeoutS?: number;
  /** Seconds the kernel remembers a missing name (short, so new paths appear). */
  negativeTimeoutS?: number;
  /** Let users other than the mounting one (and overlayfs) in; default: when root. */
  allowOther?: boolean;
}

export class FuseNativeMount {
  readonly #fs: StoreFilesystem;
  readonly #opts: FuseMountOptions;
  readonly #log: Logger;
  readonly #paths = new Map<string, number>([['/', ROOT_INO]]);
  readonly #loggedFailures = new Map<string, number>();
  #fuse: FuseInstance | undefined;
  #mounted = false;

  constructor(fs: StoreFilesystem, options: FuseMountOptions) {
    this.#fs = fs;
    this.#opts = options;
    this.#log = options.logger;
  }

  get mounted(): boolean {
    return this.#mounted;
  }

  async mount(): Promise<void> {
    const Fuse = require('fuse-native') as FuseCtor;
    const o = this.#opts;
    const extra = [
      'use_ino',
      `negative_timeout=${o.negativeTimeoutS ?? 1}`,
      'max_readahead=1048576',
    ];
    const fuse = new Fuse(o.mountpoint, this.#ops(), {
      timeout: o.opTimeoutMs + 5000,
      fsname: 'narfs',
      subtype: 'narfs',
      kernelCache: true,
      defaultPermissions: true,
      allowOther: o.allowOther ?? process.getuid?.() === 0,
      entryTimeout: o.entryTimeoutS ?? 86400,
      attrTimeout: o.attrTimeoutS ?? 86400,
    });
    const base = fuse._fuseOptions.bind(fuse);
    fuse._fuseOptions = () => {
      const s = base();
      return s ? `${s},${extra.join(',')}` : `-o${extra.join(',')}`;
    };
    // The binding calls back when the kernel's INIT arrives; bound that wait too, and
    // take down whatever a mount that never got ready left behind.
    try {
      await withDeadline(30_000, () => new Promise<void>((resolve, reject) => {
        fuse.mount((err) => {
          if (err) reject(new NarfsError('ERR_MOUNT', `mounting ${o.mountpoint} failed: ${err.message}`, { cause: err }));
          else resolve();
        });
      }), { code: 'ERR_MOUNT', what: `mounting ${o.mountpoint}` });
    } catch (err) {
      await forceUnmount(o.mountpoint, { abort: true });
      throw err;
    }
    this.#fuse = fuse;
    this.#mounted = true;
  }

  /** Unmounts (lazily, so busy mounts detach too); bounded by `timeoutMs`. */
  async unmount(timeoutMs = 10_000): Promise<void> {
    const fuse = this.#fuse;
    if (!fuse || !this.#mounted) return;
    this.#mounted = false;
    const viaBinding = new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('unmount timed out')), timeoutMs);
    });
    try {
      await Promise.race([viaBinding, timeout]);
    } catch (err) {
      this.#log.warn('unmount through the binding failed; detaching lazily', { err });
      await forceUnmount(this.#opts.mountpoint);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  async #ino(path: string): Promise<number | undefined> {
    const known = this.#paths.get(path);
    if (known !== undefined) return known;
    const slash = path.lastIndexOf('/');
    const parentPath = slash === 0 ? '/' : path.slice(0, slash);
    const parent = await this.#ino(parentPath);
    if (parent === undefined) return undefined;
    const attr = await this.#fs.lookup(parent, byteString(path.slice(slash + 1)));
    if (!attr) return undefined;
    this.#paths.set(path, attr.ino);
    return attr.ino;
  }

  async #mustIno(path: string): Promise<number> {
    const ino = await this.#ino(path);
    if (ino === undefined) throw new Absent();
    return ino;
  }

  /** Maps a thrown value to a negative errno, logging EIO-class failures once a minute per kind. */
  #fail(op: string, path: string, err: unknown): number {
    if (err instanceof Absent) return -ERRNO.ENOENT;
    const errno = errnoFor(err);
    if (isLoggedFailure(err)) {
      const code = (err as { code?: string }).code ?? 'ERR_INTERNAL';
      const store = path.split('/')[1] ?? '';
      const key = `${code}:${store}`;
      const now = Date.now();
      if ((this.#loggedFailures.get(key) ?? 0) < now - 60_000) {
        this.#loggedFailures.set(key, now);
        this.#log.error(`${op} failed`, { path, err });
      }
    }
    return errno;
  }

  #ops(): Record<string, Cb> {
    const fs = this.#fs;
    const rofs = (...args: any[]) => (args[args.length - 1] as Cb)(-ERRNO.EROFS);
    return {
      init: (cb: Cb) => cb(0),
      getattr: (path: string, cb: Cb) => {
        this.#mustIno(path).then((ino) => cb(0, toStat(fs.getattr(ino)))).catch((err) => cb(this.#fail('getattr', path, err)));
      },
      readdir: (path: string, cb: Cb) => {
        this.#mustIno(path).then((ino) => {
          const names = ['.', '..'];
          for (const e of fs.readdir(ino)) names.push(unicodeOf(e.name, 'entry name'));
          cb(0, names);
        }).catch((err) => cb(this.#fail('readdir', path, err)));
      },
      readlink: (path: string, cb: Cb) => {
        this.#mustIno(path).then((ino) => cb(0, unicodeOf(fs.readlink(ino), 'symlink target'))).catch((err) => cb(this.#fail('readlink', path, err)));
      },
      open: (path: string, flags: number, cb: Cb) => {
        this.#mustIno(path).then((ino) => cb(0, fs.open(ino, flags))).catch((err) => cb(this.#fail('open', path, err)));
      },
      read: (path: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
        fs.read(fh, pos, len).then(
          (data) => {
            data.copy(buf, 0, 0, Math.min(len, data.length));
            cb(Math.min(len, data.length));
          },
          (err) => cb(this.#fail('read', path, err)),
        );
      },
      release: (_path: string, fh: number, cb: Cb) => {
        fs.release(fh);
        cb(0);
      },
      access: (path: string, mode: number, cb: Cb) => {
        this.#mustIno(path)
          .then((ino) => cb(fs.access(ino, mode) ? 0 : (mode & 2 ? -ERRNO.EROFS : -ERRNO.EACCES)))
          .catch((err) => cb(this.#fail('access', path, err)));
      },
      statfs: (_path: string, cb: Cb) => {
        const s = fs.statfs();
        cb(0, {
          bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: 0, bavail: 0,
          files: s.files, ffree: 0, favail: 0, fsid: 0, flag: 1 /* ST_RDONLY */, namemax: s.namemax,
        });
      },
      getxattr: (_path: string, _name: string, _pos: number, cb: Cb) => cb(-ERRNO.ENODATA),
      listxattr: (_path: string, cb: Cb) => cb(0, []),
      // Everything that would change the store.
      write: (_p: string, _fd: number, _buf: Buffer, _len: number, _pos: number, cb: Cb) => cb(-ERRNO.EROFS),
      create: rofs, unlink: rofs, rename: rofs, link: rofs, symlink: rofs, mkdir: rofs, rmdir: rofs,
      chmod: rofs, chown: rofs, truncate: rofs, ftruncate: rofs, utimens: rofs, mknod: rofs,
      setxattr: rofs, removexattr: rofs,
    };
  }
}

class Absent extends Error {}

/** The Unicode string of a byte string, for the binding; ERR_NAME_NOT_UTF8 when it is not UTF-8. */
function unicodeOf(bytes: string, what: string): string {
  const b = Buffer.from(bytes, 'latin1');
  if (!isUtf8(b)) {
    throw new NarfsError('ERR_NAME_NOT_UTF8', `the ${what} ${JSON.stringify(b.toString('utf8'))} is not UTF-8; fuse-native cannot pass it`);
  }
  return b.toString('utf8');
}

function toStat(a: Attr): Record<string, unknown> {
  const t = new Date(a.mtimeMs);
  return {
    mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, nlink: a.nlink, ino: a.ino,
    blksize: 4096, blocks: a.blocks, atime: t, mtime: t, ctime: t, dev: 0, rdev: 0,
  };
}

/**
 * Detaches a (possibly stale, busy or hung) FUSE mount: with `abort`, first aborts its
 * FUSE connection through fusectl (requests waiting on a hung daemon fail at once with
 * ENOTCONN), then `fusermount -uz`, then `umount -l`. Reads only /proc and /sys, never
 * the mount itself, so it cannot hang on it.
 */
export async function forceUnmount(mountpoint: string, options: { abort?: boolean } = {}): Promise<void> {
  const run = (cmd: string, args: string[]) =>
    new Promise<boolean>((resolve) => execFile(cmd, args, { timeout: 10_000 }, (err) => resolve(!err)));
  if (options.abort) await abortFuseConnection(mountpoint, run);
  if (await run('fusermount', ['-uz', mountpoint])) return;
  if (await run('fusermount3', ['-uz', mountpoint])) return;
  await run('umount', ['-l', mountpoint]);
}

async function abortFuseConnection(mountpoint: string, run: (cmd: string, args: string[]) => Promise<boolean>): Promise<void> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const line = info.split('\n').find((l) => {
    const f = l.split(' ');
    return f[4] === mountpoint && / - fuse/.test(l);
  });
  const minor = line?.split(' ')[2]?.split(':')[1];
  if (!minor) return;
  const dir = '/sys/fs/fuse/connections';
  if (!(await stat(`${dir}/${minor}`).then(() => true, () => false))) await run('mount', ['-t', 'fusectl', 'none', dir]);
  await writeFile(`${dir}/${minor}/abort`, '1').catch(() => {});
}
