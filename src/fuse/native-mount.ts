/**
 * NativeMount: serves a StoreFilesystem through narfs's own FUSE engine (native/, the
 * `narfs_fuse` addon speaking the kernel protocol on /dev/fuse). The only module that
 * touches that addon; same surface as FuseNativeMount.
 *
 * Division of work (docs: architecture.md, data flow):
 * - C answers, without entering JS: GETATTR of nodes JS has described, READLINK of
 *   symlinks whose target JS sent (a READDIRPLUS page or a first READLINK), the read after
 *   the last entry of a store path's directory (JS tells C where each listing ends), OPEN/READ of files whose verified bytes are complete in
 *   the cache (pread from the cache file: JS pushes the location with setContent; a file
 *   whose bytes are a whole local file, offset 0, is opened in FUSE passthrough where the
 *   kernel and privileges allow, so its reads never leave the kernel; with the LOOKUP entry
 *   of a regular file whose blob is complete and verified in this process, JS also gives
 *   the location without a descriptor, and C opens it at the file's OPEN: after the kernel
 *   forgot the inode (drop_caches) its OPEN does not reach JS; C holds at most MAX_PUSHED
 *   files: at that cap it lets go of the descriptors of nodes no file has open, keeping
 *   where their bytes lie, so their next OPEN reopens them in C; only when every held one
 *   is open do opens go to JS), OPENDIR,
 *   RELEASEDIR, FLUSH, xattr probes, and every write attempt (EROFS; the mount is also
 *   read-only).
 * - JS sees: LOOKUP, READDIRPLUS pages, READLINK of a node C has no target for, OPEN/READ of files
 *   not yet complete locally, STATFS, RELEASE of its own handles, FORGET/BATCH_FORGET
 *   (the inode table's lookup counts) and INTERRUPT (aborts the wait of that request).
 * Every request JS answers is bounded by the filesystem's deadline (ERR_DEADLINE → EIO);
 * an INTERRUPT answers EINTR at once. Errno comes from errno.ts only.
 * Names and symlink targets cross as bytes (Buffers) and are byte strings in JS
 * (`toString('latin1')`, src/nix/nar-listing.ts), so any name Nix allows is served exactly.
 * READDIRPLUS entries count as lookups (the kernel will FORGET them): only entries that
 * reached the kernel are counted; the rest are given back at once. An open JS answers gets
 * its io mode from C (passthrough when C holds a whole-file location for the node); a
 * reply the kernel did not take (interrupted, or refused by C) releases the JS handle.
 * A dropped content location (watchDropped) is forgotten by C and pushed again later.
 * READDIRPLUS entries of regular files carry the location too when the bytes are local;
 * the others are remembered per page, and the OPEN of one that reaches JS gives C the
 * locations of the page's later files local by then (a walk listed before it was fetched
 * opens about one file per page through JS, not every one).
 * An OPEN that reaches JS for a node JS had pushed means C no longer has its content (a
 * reopen refused at the descriptor cap, a short pread): JS pushes it again. The cap is C's alone
 * (setContent refuses past it after reclaiming idle content): a cap counted in JS, which
 * never learns of C's reclaims, sent every file past the first MAX_PUSHED to JS for good
 * (scenario 11: 23k files, limit 20000, the last 13k served through JS at twice the cost).
 *
 * Transport (`transport`): 'dev' (default) reads requests from /dev/fuse and writes replies
 * there; 'uring' negotiates FUSE over io_uring (native/src/uring_transport.h: one ring
 * queue per CPU, replies committed through the ring entry the request came in). The same
 * request handling runs either way. A kernel that does not offer io_uring (the fuse module
 * parameter enable_uring is N) fails the mount with ERR_FUSE_URING_UNAVAILABLE rather than
 * serving through /dev/fuse unasked: a caller that asks for uring measures or relies on it.
 *
 * Restart without unmount (native/src/adopt.h, src/daemon/restart-state.ts): with `adopt`,
 * the session resumes the /dev/fuse descriptors of an earlier process (no mount, no INIT)
 * and the kernel resends what that process read and never answered. A request naming a
 * nodeid only the earlier process knew first rebuilds it from the inode journal
 * (StoreFilesystem.revive). `handover` ends this process's part without unmounting: it
 * waits (bounded) for the requests JS is answering; anything still unanswered is resent to
 * the next process.
 *
 * Ended from outside: when the kernel closes the connection while this process still
 * serves the mount (`umount`/`fusermount -u` by someone else, or an abort through
 * /sys/fs/fuse/connections), `ended` resolves with the reader's errno (0 for ENODEV and
 * ECONNABORTED, native/src/session.cc) — as libfuse's session loop returns, so that the
 * daemon can stop rather than live on holding its cache with nothing to serve. Never after
 * `unmount()` or `handover()`, which end the connection themselves.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { NarfsError, isNarfsError } from '../errors.js';
import { withDeadline } from '../deadline.js';
import type { Logger } from '../log.js';
import { ROOT_INO, type StoreFilesystem } from '../fs/store-filesystem.js';
import { ERRNO, errnoFor, isLoggedFailure } from './errno.js';
import { forceUnmount, type FuseMountOptions } from './fuse-native-mount.js';

const require = createRequire(import.meta.url);

/** The addon's session handle (an N-API external). */
type Session = { readonly __narfsSession: true };

interface Addon {
  mount(options: Record<string, unknown>, dispatch: Dispatch): Session;
  release(s: Session): void;
  unref(s: Session): void;
  replyErr(s: Session, ch: number, unique: number, errno: number): number;
  replyEntry(s: Session, ch: number, unique: number, nodeid: number, mode: number, size: number, nlink: number, entryTtl: number): number;
  replyAttr(s: Session, ch: number, unique: number, nodeid: number, mode: number, size: number, nlink: number): number;
  replyOpen(s: Session, ch: number, unique: number, nodeid: number, fh: number, openFlags: number): number;
  replyData(s: Session, ch: number, unique: number, data: Buffer): number;
  replyReadlink(s: Session, ch: number, unique: number, nodeid: number, target: Buffer): number;
  replyStatfs(s: Session, ch: number, unique: number, blocks: number, files: number, bsize: number, namemax: number): number;
  replyDir(s: Session, ch: number, unique: number, plus: number, size: number, start: number, names: Buffer[], nums: Float64Array,
    dirNodeid?: number, eofOffset?: number, targets?: Array<Buffer | undefined>): number;
  setContent(s: Session, nodeid: number, path: string, offset: number, size: number, fileSize: number): boolean;
  setLocation(s: Session, nodeid: number, path: string, offset: number, size: number, fileSize: number): void;
  evictContent(s: Session, path: string): boolean;
  dropContent(s: Session, path: string): void;
  contentInUse(s: Session, path: string): boolean;
  forgetNode(s: Session, nodeid: number, evicted?: boolean): void;
  stats(s: Session): NativeStats;
  hashFile(path: string): Promise<{ digest: Buffer; size: number }>;
  /** FS_TOPDIR_FL on a directory (native/src/dir_flags.cc): 0 or the errno. */
  markTopDir(path: string): number;
  /** glibc's malloc_trim(0) (native/src/malloc_trim.cc): whether memory went back. Absent off glibc. */
  mallocTrim?(): boolean;
  deviceFds(s: Session): number[];
  sdNotifyFds(state: string, fds: number[]): number;
  watchdogStart(s: Session | null, intervalMs: number, staleMs: number): void;
  watchdogBeat(): void;
  watchdogStop(): void;
  watchdogStats(): { pings: number; withheld: number; lastReason: string } | undefined;
  /** The engine's writer of the backing id record (native/src/backing_journal.h): the new size, or -errno. */
  backingJournalAppend(fd: number, size: number, op: number, nodeid: number, backingId: number): number;
}

/** The INIT a connection negotiated (kept for a process that resumes it). */
export interface NegotiatedInit {
  minor: number;
  flags: number;
}

export interface NativeStats {
  /** Requests handed to JS. */
  toJs: number;
  /** Requests handed to JS, by FUSE opcode (include/uapi/linux/fuse.h; only those seen). */
  toJsByOpcode: Record<number, number>;
  /** Requests answered in C. */
  inC: number;
  /** Requests answered in C, by FUSE opcode (only those seen). */
  inCByOpcode: Record<number, number>;
  /** Nodes the C table describes. */
  nodes: number;
  readsInC: number;
  bytesInC: number;
  passthroughOffered: boolean;
  /** FUSE_PASSTHROUGH negotiated (offered, asked for, root) and not refused since. */
  passthroughEnabled: boolean;
  /** Opens answered with FOPEN_PASSTHROUGH (reads then never reach narfs). */
  passthroughOpens: number;
  /** Backing ids registered with the kernel and not yet closed. */
  backingLive: number;
  /** FUSE_DEV_IOC_BACKING_OPEN failures (served by pread instead). */
  passthroughFallbacks: number;
  /** Opens refused with EIO: content dropped while passthrough files of it were open. */
  passthroughConflicts: number;
  /** Live backing ids of earlier processes of the connection (restart), not yet closed. */
  backingAdopted: number;
  /** The record of backing ids could not be written: no new ids since (pread instead). */
  backingJournalFailed: boolean;
  /** Requests arrive through FUSE over io_uring (transport 'uring' took effect). */
  uringActive: boolean;
  /** io_uring queues registered (one per possible CPU). */
  uringQueues: number;
  /** Requests fetched from io_uring entries (the others came from /dev/fuse). */
  uringRequests: number;
  /** Why io_uring was not set up: an errno (95 EOPNOTSUPP: INIT did not offer it), 0 if it was or not asked. */
  uringError: number;
  /** Opens answered in C by opening the location JS gave with the LOOKUP's entry (no JS hop). */
  locationOpens: number;
  /** Such opens sent to JS instead (descriptor cap reached, the file could not be opened or had another size). */
  locationFallbacks: number;
  /** Cache files C holds open now (at most `maxFiles`: half RLIMIT_NOFILE). */
  heldFiles: number;
  /** Idle nodes' content C let go of at the descriptor cap (their next OPEN went to JS). */
  contentReclaimed: number;
}

/** How requests reach the engine and replies leave it. */
export type FuseTransport = 'dev' | 'uring';

/** The fuse module parameter that lets a connection use io_uring (Linux fs/fuse/dev_uring.c). */
export const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';

type Dispatch = (kind: number, ch: number, unique: number, nodeid: number, a: number, b: number, c: number,
  flags: number, name: Buffer | undefined, forgets: Float64Array | undefined) => void;

/** Opcodes (include/uapi/linux/fuse.h) and the addon's events. */
const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 5, OPEN: 14, READ: 15, STATFS: 17, RELEASE: 18,
  READDIR: 28, INTERRUPT: 36, BATCH_FORGET: 42, READDIRPLUS: 44, READY: -1, CLOSED: -2,
} as const;
const FOPEN_KEEP_CACHE = 1 << 1;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const ERRNO_EOPNOTSUPP = 95;
const EINTR = 4;
/** sizeof(fuse_entry_out) + sizeof(fuse_dirent), and sizeof(fuse_dirent). */
const DIRENTPLUS_HEAD = 152;
const DIRENT_HEAD = 24;
/** d_ino shown by plain READDIR for a child the kernel does not hold (no inode is made). */
const UNHELD_INO_BASE = 2 ** 52;

let addon: Addon | undefined;

/** Loads the addon built by node-gyp (build/Release at the checkout root). */
export function loadNativeAddon(): Addon {
  if (addon) return addon;
  const here = fileURLToPath(new URL('.', import.meta.url));
  const candidates = ['../../build/Release/narfs_fuse.node', '../../../build/Release/narfs_fuse.node']
    .map((rel) => fileURLToPath(new URL(rel, `file://${here}`)));
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new NarfsError('ERR_MOUNT', 'the native FUSE engine is not built (build/Release/narfs_fuse.node is missing)', {
      hint: 'Run `npm ci` (or `npm run build:native`) in the checkout, or pass --fuse-backend fuse-native.',
    });
  }
  addon = require(found) as Addon;
  return addon;
}

/**
 * The engine's markTopDir (native/src/dir_flags.cc) for the blob store's `markTopDir`
 * option; undefined when the engine is not built.
 */
export function nativeTopDirMarker(): ((dir: string) => number) | undefined {
  try {
    const a = loadNativeAddon();
    return typeof a.markTopDir === 'function' ? (dir) => a.markTopDir(dir) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * glibc's malloc_trim(0) (native/src/malloc_trim.cc) for quiet-memory-release.ts; undefined
 * when the engine is not built or the C library is not glibc.
 */
export function nativeMallocTrim(): (() => boolean) | undefined {
  try {
    const a = loadNativeAddon();
    const trim = a.mallocTrim;
    return typeof trim === 'function' ? () => trim.call(a) : undefined;
  } catch {
    return undefined;
  }
}

/** Re-hashes of cached files running at once on libuv's pool (see nativeFileHasher). */
const HASH_CONCURRENCY = 2;

/**
 * SHA-256 of a whole file on libuv's thread pool (native/src/hash_file.cc, node's own
 * OpenSSL), for the blob store's re-hash of a cache of an earlier process; undefined when
 * the engine is not built (the blob store then hashes on the JS thread).
 */
export function nativeFileHasher(): ((path: string) => Promise<{ digest: Buffer; size: number }>) | undefined {
  try {
    const a = loadNativeAddon();
    if (typeof a.hashFile !== 'function') return undefined;
    // hashFile runs on libuv's thread pool (4 threads), which also serves every fs call of
    // JS: at most HASH_CONCURRENCY hashes at once, so the reads JS answers never queue
    // behind a burst of re-hashes of large blobs.
    let running = 0;
    const waiting: Array<() => void> = [];
    return async (path) => {
      // A finishing hash hands its slot straight to the next waiter (running stays counted).
      if (running >= HASH_CONCURRENCY) await new Promise<void>((resolve) => waiting.push(resolve));
      else running++;
      try {
        return await a.hashFile(path);
      } finally {
        const next = waiting.shift();
        if (next) next();
        else running--;
      }
    };
  } catch {
    return undefined;
  }
}

/**
 * Files C may hold open for reads: half of this process's descriptor limit (RLIMIT_NOFILE),
 * enforced in C (native/src/session.h maxFiles) for the files JS pushes and those C opens
 * itself. Never more than half, however small the limit: the rest is the process's own.
 */
const MAX_PUSHED = Math.max(1, Math.floor(openFileLimit() / 2));

/** The soft RLIMIT_NOFILE of this process, from /proc/self/limits (Node has no getrlimit). */
function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m && m[1] !== 'unlimited') return Number(m[1]);
    return m ? 1 << 20 : 1024;
  } catch {
    return 1024;
  }
}

export interface NativeMountOptions extends FuseMountOptions {
  /** Request-reading threads (cloned /dev/fuse descriptors). Default 4. */
  threads?: number;
  /** Mount through fusermount3 (unprivileged) instead of mount(2). Default: when not root. */
  useFusermount?: boolean;
  /**
   * FUSE passthrough for files whose verified bytes are a whole local file. Default true;
   * only takes effect as root on a kernel that offers it (else pread from C).
   */
  passthrough?: boolean;
  /** 'dev' (default): /dev/fuse; 'uring': FUSE over io_uring (kernel 6.14+, enable_uring=Y). */
  transport?: FuseTransport;
  /** io_uring entries per CPU queue (requests in flight per queue). Default 16. */
  uringDepth?: number;
  /**
   * Entry timeout of the store root's children (seconds; default entryTimeoutS): a slice
   * mount keeps it short, so that a store path that left the slice stops resolving from
   * the kernel's dentry cache within this time.
   */
  rootEntryTimeoutS?: number;
  /** Resume these /dev/fuse descriptors of an earlier process instead of mounting. */
  adopt?: { fds: number[] } & NegotiatedInit;
  /**
   * Keep passthrough backing ids across restarts (src/fuse/backing-journal.ts
   * engineOptions): the engine records each id there before using it, and answers the
   * opens of an earlier process's nodes (nodeids below `unknownBelow`) in a mode the
   * kernel accepts whatever files of them that process left open.
   */
  backingJournal?: { path: string; size: number; live: Float64Array; unknownBelow: number };
}

export class NativeMount {
  readonly #fs: StoreFilesystem;
  readonly #opts: NativeMountOptions;
  readonly #log: Logger;
  readonly #inflight = new Map<number, AbortController>();
  /** Nodes whose content location C has (nodeid → path), so it is pushed once. */
  readonly #pushed = new Map<number, string>();
  /**
   * Regular files of READDIRPLUS pages the kernel took whose bytes were not local yet
   * (nodeid → the page's list and its place in it): the kernel holds their inodes, so a
   * reader walking the listing opens them with no LOOKUP, and each OPEN would come to JS.
   * The OPEN of one that does reach JS gives C the locations of the page's later files
   * that are local by then (#locateAhead), as a LOOKUP's entry does: their OPENs are
   * answered in C. Entries leave when located, pushed or forgotten.
   */
  readonly #unlocated = new Map<number, { page: number[]; at: number }>();
  #pushCapLogged = false;
  readonly #loggedFailures = new Map<string, number>();
  #session: Session | undefined;
  #mounted = false;
  #ready: { resolve: () => void; reject: (e: Error) => void } | undefined;
  #closed: Promise<number>;
  #onClosed: (errno: number) => void = () => {};
  readonly #ended: Promise<{ errno: number }>;
  #onEnded: (e: { errno: number }) => void = () => {};
  #entryTtl: number;
  #rootEntryTtl: number;
  #negativeTtl: number;
  #init: NegotiatedInit | undefined;
  #resendErrno = 0;
  #idle: (() => void) | undefined;
  /** Handing over to the next process: requests JS has not answered are left to it. */
  #handingOver = false;

  constructor(fs: StoreFilesystem, options: NativeMountOptions) {
    this.#fs = fs;
    this.#opts = options;
    this.#log = options.logger;
    this.#entryTtl = options.entryTimeoutS ?? 86400;
    this.#rootEntryTtl = options.rootEntryTimeoutS ?? this.#entryTtl;
    this.#negativeTtl = options.negativeTimeoutS ?? 1;
    this.#closed = new Promise<number>((resolve) => { this.#onClosed = resolve; });
    this.#ended = new Promise<{ errno: number }>((resolve) => { this.#onEnded = resolve; });
  }

  /**
   * Resolves when the kernel ended the connection of a mount this process was serving (see
   * the header: unmounted or aborted from outside); pending for ever otherwise.
   */
  get ended(): Promise<{ errno: number }> {
    return this.#ended;
  }

  get mounted(): boolean {
    return this.#mounted;
  }

  /** Counters of the engine (requests in C and in JS, nodes described to C). */
  stats(): NativeStats | undefined {
    return this.#session ? loadNativeAddon().stats(this.#session) : undefined;
  }

  /**
   * Requests served so far (in C and in JS) that a workload sent: FORGET and BATCH_FORGET
   * are the kernel trimming its inode cache (a drop_caches, memory pressure), left out.
   */
  workloadRequests(): number {
    const st = this.stats();
    return st ? st.toJs + st.inC - (st.toJsByOpcode[OP.FORGET] ?? 0) - (st.toJsByOpcode[OP.BATCH_FORGET] ?? 0) : 0;
  }

  /** The INIT of the connection (after mount). */
  get init(): NegotiatedInit | undefined {
    return this.#init;
  }

  /** The /dev/fuse descriptors of the readers (for systemd's fd store). */
  deviceFds(): number[] {
    return this.#session ? loadNativeAddon().deviceFds(this.#session) : [];
  }

  /**
   * systemd's WATCHDOG=1 from the engine's C thread (native/src/watchdog.cc): it pings every
   * `intervalMs` only while `beat()` was called within `staleMs` and no reader thread is
   * stuck in one request for longer than that.
   */
  get watchdog(): { start(intervalMs: number, staleMs: number): void; beat(): void; stop(): void; stats(): unknown } {
    const a = loadNativeAddon();
    return {
      start: (intervalMs, staleMs) => a.watchdogStart(this.#session ?? null, intervalMs, staleMs),
      beat: () => a.watchdogBeat(),
      stop: () => a.watchdogStop(),
      stats: () => a.watchdogStats(),
    };
  }

  /** errno of FUSE_NOTIFY_RESEND after adopting (0: requeued; EINVAL: kernel before 6.9). */
  get resendErrno(): number {
    return this.#resendErrno;
  }

  /**
   * Leaves the connection to the next process: waits up to `timeoutMs` for the requests JS
   * is answering, then stops answering (nothing is unmounted, no descriptor is closed: the
   * process exits holding them, systemd's fd store keeps the connection).
   */
  async handover(timeoutMs: number): Promise<{ unanswered: number }> {
    this.#handingOver = true;
    if (this.#inflight.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((r) => { this.#idle = r; }),
        new Promise<void>((r) => { timer = setTimeout(r, timeoutMs); }),
      ]);
      if (timer) clearTimeout(timer);
    }
    const unanswered = this.#inflight.size;
    this.#mounted = false;
    if (this.#session) loadNativeAddon().unref(this.#session);
    return { unanswered };
  }

  async mount(): Promise<void> {
    const a = loadNativeAddon();
    const o = this.#opts;
    const ready = new Promise<void>((resolve, reject) => { this.#ready = { resolve, reject }; });
    try {
      this.#session = a.mount({
        mountpoint: o.mountpoint,
        fsname: 'narfs',
        allowOther: o.allowOther ?? process.getuid?.() === 0,
        useFusermount: o.useFusermount ?? process.getuid?.() !== 0,
        threads: o.threads ?? 4,
        entryTtl: this.#entryTtl,
        attrTtl: o.attrTimeoutS ?? 86400,
        passthrough: o.passthrough ?? true,
        maxFiles: MAX_PUSHED,
        transport: o.transport ?? 'dev',
        ...(o.uringDepth ? { uringDepth: o.uringDepth } : {}),
        ...(o.adopt ? { adopt: o.adopt } : {}),
        ...(o.backingJournal ? { backingJournal: o.backingJournal } : {}),
      }, (...args) => this.#dispatch(...args));
    } catch (err) {
      throw new NarfsError('ERR_MOUNT', `mounting ${o.mountpoint} failed: ${(err as Error).message}`, { cause: err });
    }
    this.#fs.watchDropped((path) => {
      if (this.#session) a.dropContent(this.#session, path);
      // C forgot those locations: push again once the content is back.
      for (const [nodeid, p] of this.#pushed) if (p === path) this.#pushed.delete(nodeid);
    });
    // Files the kernel has open through C (pread or passthrough, pushed by JS or opened by C
    // from a location) are not JS's to see: ask C before the cache evicts one. C lets go of
    // an idle one in the same step, so it cannot open it after answering.
    this.#fs.guardDropped((path) => !this.#session || a.evictContent(this.#session, path));
    try {
      await withDeadline(30_000, () => Promise.race([ready, this.#closed.then(() => {
        throw new NarfsError('ERR_MOUNT', `the kernel closed ${o.mountpoint} before it was ready`);
      })]), { code: 'ERR_MOUNT', what: `mounting ${o.mountpoint}` });
      if (o.transport === 'uring') this.#checkUring();
    } catch (err) {
      if (!o.adopt) await forceUnmount(o.mountpoint, { abort: true });
      throw err;
    }
    this.#mounted = true;
    if (o.adopt) return; // the bdi was set up by the process that mounted
    await this.#raiseReadahead().catch(() => {});
  }

  /**
   * Detaches the mount (lazily, so busy mounts detach too) and waits up to `timeoutMs` for
   * the kernel to close the connection; a mount still held by open files is left to finish
   * and no longer keeps the process alive.
   */
  async unmount(timeoutMs = 10_000): Promise<void> {
    const s = this.#session;
    if (!s || !this.#mounted) return;
    this.#mounted = false;
    await forceUnmount(this.#opts.mountpoint);
    let timer: NodeJS.Timeout | undefined;
    const closed = await Promise.race([
      this.#closed.then(() => true),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(false), timeoutMs); }),
    ]);
    if (timer) clearTimeout(timer);
    if (!closed) {
      this.#log.warn('the FUSE connection is still open after unmount (files held open); not waiting for it', {
        mountpoint: this.#opts.mountpoint,
      });
      loadNativeAddon().unref(s);
    }
  }

  /** Transport 'uring' asked for: the engine must have set it up (else the mount fails). */
  #checkUring(): void {
    const st = this.stats();
    if (st?.uringActive) return;
    const errno = st?.uringError ?? 0;
    let param = 'unknown';
    try { param = readFileSync(URING_PARAM, 'utf8').trim(); } catch { /* no such parameter: kernel before 6.14 or no CONFIG_FUSE_IO_URING */ }
    const why = errno === ERRNO_EOPNOTSUPP
      ? `FUSE over io_uring was not negotiated in INIT (the kernel offers it only while ${URING_PARAM} is Y; it is ${param})`
      : `setting up the io_uring queues failed (errno ${errno})`;
    throw new NarfsError('ERR_FUSE_URING_UNAVAILABLE', `--fuse-transport uring on ${this.#opts.mountpoint}: ${why}`, {
      hint: param === 'unknown'
        ? 'This kernel has no FUSE over io_uring (6.14+ with CONFIG_FUSE_IO_URING); use --fuse-transport dev.'
        : `As root: echo Y > ${URING_PARAM} (and /proc/sys/kernel/io_uring_disabled must be 0), or use --fuse-transport dev.`,
    });
  }

  /**
   * Sets the mount's bdi readahead (root only) to 128 KiB, the kernel's default, in case
   * the system's default differs. Not raised: the kernel reads past a `read()` by up to
   * one readahead window (mm/readahead.c: an initial window of the request's size, then
   * asynchronous windows of up to `read_ahead_kb` at each PG_readahead mark), and on a
   * lazy file every byte past the read is a ranged fetch of whole 512 KiB chunks. Measured
   * (bench/lazy-probe.ts --scenario 9l: 16 random 1 MiB preads of a 140 MiB file, none
   * indexed): 1024 -> 3 READs of 1 MiB per pread, 62.5-83 MiB fetched for 16 MiB read;
   * 512 -> 51.5; 256 -> 31.0; 128 -> 25.5 MiB (the 3 chunks an unaligned 1 MiB spans).
   * Files served from the cache by C or passthrough are not lazy; reads through JS at
   * 128 KiB cost more requests, not more bytes.
   */
  async #raiseReadahead(): Promise<void> {
    if (process.getuid?.() !== 0) return;
    const info = await readFile('/proc/self/mountinfo', 'utf8');
    const line = info.split('\n').find((l) => l.split(' ')[4] === this.#opts.mountpoint && / - fuse/.test(l));
    const dev = line?.split(' ')[2];
    if (dev) await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, '128');
  }

  #dispatch(kind: number, ch: number, unique: number, nodeid: number, a: number, b: number, c: number,
    flags: number, name: Buffer | undefined, forgets: Float64Array | undefined): void {
    const s = this.#session;
    switch (kind) {
      case OP.READY:
        this.#init = { minor: a, flags: b };
        this.#resendErrno = c;
        this.#ready?.resolve();
        return;
      case OP.CLOSED: {
        // Still mounted by our account: neither unmount() nor handover() ended it.
        const fromOutside = this.#mounted;
        this.#mounted = false;
        if (s) loadNativeAddon().release(s);
        if (a !== 0) this.#log.error('the FUSE connection failed', { errno: a });
        this.#onClosed(a);
        if (fromOutside) this.#onEnded({ errno: a });
        return;
      }
    }
    if (!s) return;
    // Left unanswered, the request stays with the kernel and is resent to the next process.
    if (this.#handingOver) return;
    const n = loadNativeAddon();
    switch (kind) {
      case OP.FORGET:
        this.#forget(n, s, nodeid, a, true);
        return;
      case OP.BATCH_FORGET:
        if (forgets) for (let i = 0; i + 1 < forgets.length; i += 2) this.#forget(n, s, forgets[i]!, forgets[i + 1]!, true);
        return;
      case OP.INTERRUPT:
        this.#inflight.get(a)?.abort();
        return;
      case OP.RELEASE:
        this.#fs.release(a, nodeid); // C has replied already
        return;
    }
    if (kind !== OP.STATFS && this.#fs.needsRevive(nodeid)) {
      // A nodeid the kernel got from an earlier process of this mount (restart).
      this.#async(kind, ch, unique, nodeid, async (signal) => {
        await this.#fs.revive(nodeid, signal);
        this.#dispatch(kind, ch, unique, nodeid, a, b, c, flags, name, forgets);
      });
      return;
    }
    try {
      switch (kind) {
        case OP.LOOKUP:
          return this.#async(kind, ch, unique, nodeid, (signal) => this.#lookup(n, s, ch, unique, nodeid, name, signal));
        case OP.GETATTR: {
          const attr = this.#fs.getattr(nodeid);
          n.replyAttr(s, ch, unique, nodeid, attr.mode, attr.size, attr.nlink);
          return;
        }
        case OP.READLINK:
          n.replyReadlink(s, ch, unique, nodeid, Buffer.from(this.#fs.readlink(nodeid), 'latin1'));
          return;
        case OP.OPEN: {
          // C answers the OPEN of a node whose content it holds: this one's it let go of.
          this.#pushed.delete(nodeid);
          this.#locateAhead(n, s, nodeid);
          const fh = this.#fs.open(nodeid, flags);
          const ready = this.#fs.contentReady(fh);
          if (ready) {
            // The file is local but not yet checked in this process (a cache of an earlier
            // one): its check runs off the JS thread; waiting for it lets C open the file
            // whole (passthrough) instead of sending this open's reads to JS. Bounded like
            // a read, which would wait for the same check.
            this.#async(kind, ch, unique, nodeid, async (signal) => {
              try {
                await withDeadline(this.#opts.opTimeoutMs, () => ready, { what: 'checking a cached file on open', signal });
              } catch (err) {
                if (signal.aborted) {
                  this.#fs.release(fh);
                  throw err;
                }
                // Too slow: open now; its reads wait for the check.
              }
              this.#pushContent(n, s, nodeid);
              if (n.replyOpen(s, ch, unique, nodeid, fh, FOPEN_KEEP_CACHE) !== 0) this.#fs.release(fh);
            });
            return;
          }
          this.#pushContent(n, s, nodeid);
          // Not taken (interrupted, or refused by C): no RELEASE will ever come for it.
          if (n.replyOpen(s, ch, unique, nodeid, fh, FOPEN_KEEP_CACHE) !== 0) this.#fs.release(fh);
          return;
        }
        case OP.READ:
          return this.#async(kind, ch, unique, nodeid, async (signal) => {
            const data = await this.#fs.read(a, b, c, signal, nodeid);
            n.replyData(s, ch, unique, data);
            this.#pushContent(n, s, nodeid);
          });
        case OP.READDIR:
        case OP.READDIRPLUS:
          this.#readdir(n, s, ch, unique, nodeid, kind === OP.READDIRPLUS, b, c);
          return;
        case OP.STATFS: {
          const st = this.#fs.statfs();
          n.replyStatfs(s, ch, unique, st.blocks, st.files, st.bsize, st.namemax);
          return;
        }
        default:
          n.replyErr(s, ch, unique, ERRNO.ENOSYS);
      }
    } catch (err) {
      n.replyErr(s, ch, unique, this.#fail(kind, nodeid, err));
    }
  }

  /** Runs an asynchronous answer: abortable by INTERRUPT, errors mapped once. */
  #async(kind: number, ch: number, unique: number, nodeid: number, work: (signal: AbortSignal) => Promise<void>): void {
    const ac = new AbortController();
    this.#inflight.set(unique, ac);
    const s = this.#session!;
    const n = loadNativeAddon();
    work(ac.signal).catch((err: unknown) => {
      // Failing because this process is going away: the next one answers (resend).
      if (this.#handingOver) return;
      if (ac.signal.aborted) n.replyErr(s, ch, unique, EINTR);
      else n.replyErr(s, ch, unique, this.#fail(kind, nodeid, err));
    }).catch((err: unknown) => {
      // Never leave the kernel waiting: a reply that could not be made is an EIO.
      this.#log.error('replying to a FUSE request failed', { err });
      n.replyErr(s, ch, unique, ERRNO.EIO);
    }).finally(() => {
      if (this.#inflight.get(unique) === ac) this.#inflight.delete(unique);
      if (this.#inflight.size === 0) this.#idle?.();
    });
  }

  async #lookup(n: Addon, s: Session, ch: number, unique: number, parent: number, raw: Buffer | undefined, signal: AbortSignal): Promise<void> {
    // Names are bytes: the byte string of the kernel's name (src/nix/nar-listing.ts).
    const attr = raw && raw.length > 0 ? await this.#fs.lookup(parent, raw.toString('latin1'), signal) : undefined;
    if (!attr) {
      if (this.#negativeTtl > 0) n.replyEntry(s, ch, unique, 0, 0, 0, 0, this.#negativeTtl);
      else n.replyErr(s, ch, unique, ERRNO.ENOENT);
      return;
    }
    // A regular file whose bytes are complete and verified in this process: C is told where
    // they lie (no descriptor yet) and answers its OPEN itself (native/src/session_passthrough.cc
    // openLocation), so a walk after the kernel forgot the inode sends no OPEN here.
    if ((attr.mode & S_IFMT) === S_IFREG && attr.size > 0 && !this.#pushed.has(attr.ino)) this.#locate(n, s, attr.ino);
    const err = n.replyEntry(s, ch, unique, attr.ino, attr.mode, attr.size, attr.nlink, parent === ROOT_INO ? this.#rootEntryTtl : this.#entryTtl);
    // The request was interrupted and is gone: the kernel did not take this lookup.
    if (err !== 0) this.#forget(n, s, attr.ino, 1);
  }

  #readdir(n: Addon, s: Session, ch: number, unique: number, ino: number, plus: boolean, offset: number, size: number): void {
    const dirAttr = this.#fs.getattr(ino);
    // Only the entries that can fit in `size` bytes (every record has a name of >= 1 byte):
    // a large directory is read a page at a time, and each page must not cost the whole.
    const first = Math.max(0, offset - 2);
    const fit = Math.floor(size / (((plus ? DIRENTPLUS_HEAD : DIRENT_HEAD) + 1 + 7) & ~7)) + 1;
    const entries = this.#fs.readdir(ino, first, fit);
    const total = first + entries.length + 2;
    // Fewer than asked for: the listing ends here. A store path's directories never
    // change (the root's listing grows), so C answers the reads from there on.
    const eofOffset = ino !== ROOT_INO && entries.length < fit ? total : 0;
    const names: Buffer[] = [];
    const nums: number[] = [];
    const targets: Array<Buffer | undefined> = [];
    /** Positions (in names) of the page's non-empty regular files. */
    const files: number[] = [];
    let used = 0;
    for (let i = offset; i < total; i++) {
      const nameStr = i === 0 ? '.' : i === 1 ? '..' : entries[i - 2 - first]!.name;
      const bytes = Buffer.from(nameStr, 'latin1');
      const rec = ((plus ? DIRENTPLUS_HEAD : DIRENT_HEAD) + bytes.length + 7) & ~7;
      if (used + rec > size) break;
      used += rec;
      names.push(bytes);
      if (i < 2) {
        nums.push(i === 0 ? ino : ROOT_INO, 0, dirAttr.mode, 0, 2);
        continue;
      }
      const e = entries[i - 2 - first]!;
      if (plus) {
        const held = this.#fs.lookupChild(ino, e.name);
        if (held) {
          nums.push(held.ino, held.ino, held.mode, held.size, held.nlink);
          if (held.kind === 'regular' && held.size > 0) files.push(names.length - 1);
          // C answers the READLINK of a symlink sent here without asking JS.
          if (held.kind === 'symlink') targets[names.length - 1] = Buffer.from(this.#fs.readlink(held.ino), 'latin1');
        } else {
          nums.push(UNHELD_INO_BASE + i, 0, e.attr?.mode ?? 0, 0, 1);
        }
      } else {
        const a = e.attr;
        nums.push(a && a.ino !== 0 ? a.ino : UNHELD_INO_BASE + i, 0, a?.mode ?? 0, 0, 1);
      }
    }
    const sent = n.replyDir(s, ch, unique, plus ? 1 : 0, size, offset, names, Float64Array.from(nums), ino, eofOffset,
      targets.length > 0 ? targets : undefined);
    if (plus) {
      // Entries that did not reach the kernel are not lookups it holds.
      for (let i = 0; i < names.length; i++) {
        if (i < sent) continue;
        const nodeid = nums[i * 5 + 1]!;
        if (nodeid !== 0) this.#forget(n, s, nodeid, 1);
      }
      // The files the kernel took: C gets the location of those local now (as with a
      // LOOKUP's entry); the others wait for the OPEN of an earlier one (#locateAhead).
      const page: number[] = [];
      for (const i of files) {
        const nodeid = nums[i * 5 + 1]!;
        if (i >= sent || this.#pushed.has(nodeid)) continue;
        if (!this.#locate(n, s, nodeid)) page.push(nodeid);
      }
      for (let at = 0; at < page.length; at++) this.#unlocated.set(page[at]!, { page, at });
    }
  }


  /**
   * Drops `count` lookups of `nodeid`: `evicted` when the kernel sent them (FORGET), else
   * a lookup JS gives back because the kernel never took it. C learns of the kernel's
   * FORGET of an earlier process's node even when this process never rebuilt it (its
   * passthrough state ends there: native/src/session.h forgetNode).
   */
  #forget(n: Addon, s: Session, nodeid: number, count: number, evicted = false): void {
    if (this.#fs.forget(nodeid, count)) {
      n.forgetNode(s, nodeid, evicted);
      this.#pushed.delete(nodeid);
      this.#unlocated.delete(nodeid);
    } else if (evicted && this.#fs.needsRevive(nodeid)) {
      n.forgetNode(s, nodeid, true);
    }
  }

  /**
   * The OPEN of `nodeid` reached JS: C gets the locations of the later files of its
   * READDIRPLUS page that are local and verified now (no descriptor: C opens one at its
   * OPEN, within its cap), so a reader walking the listing opens those in C.
   */
  #locateAhead(n: Addon, s: Session, nodeid: number): void {
    const u = this.#unlocated.get(nodeid);
    if (!u) return;
    this.#unlocated.delete(nodeid);
    for (let j = u.at + 1; j < u.page.length; j++) {
      const id = u.page[j]!;
      if (this.#unlocated.get(id)?.page !== u.page || this.#pushed.has(id)) continue;
      if (this.#locate(n, s, id)) this.#unlocated.delete(id);
    }
  }

  /**
   * Tells C where the bytes of regular file `nodeid` lie when they are local and verified
   * (no descriptor: C opens it at the node's OPEN, within its cap). False when not local.
   */
  #locate(n: Addon, s: Session, nodeid: number): boolean {
    const loc = this.#fs.contentLocation(nodeid);
    if (!loc) return false;
    n.setLocation(s, nodeid, loc.path, loc.offset, loc.size, loc.fileSize);
    return true;
  }

  /** Tells C where the bytes of `nodeid` lie once they are all verified and local. */
  #pushContent(n: Addon, s: Session, nodeid: number): void {
    if (this.#pushed.has(nodeid)) return;
    const loc = this.#fs.contentLocation(nodeid);
    if (!loc) return;
    // C keeps a descriptor per pushed file: at MAX_PUSHED (half the process's descriptor
    // limit, so C never starves the process and its sockets) it first lets go of the
    // content of nodes no file has open, and refuses only when every one it holds is open;
    // JS serves the reads of a refused file.
    if (n.setContent(s, nodeid, loc.path, loc.offset, loc.size, loc.fileSize)) this.#pushed.set(nodeid, loc.path);
    else if (!this.#pushCapLogged && (this.stats()?.heldFiles ?? 0) >= MAX_PUSHED) {
      this.#pushCapLogged = true;
      this.#log.warn('the native engine holds as many open cached files as the descriptor limit allows; further reads go through JS', {
        held: MAX_PUSHED, hint: 'Raise LimitNOFILE (the narfs.service unit sets 1048576).',
      });
    }
  }

  /** The positive errno for a thrown value, logging EIO-class failures once a minute per kind. */
  #fail(kind: number, nodeid: number, err: unknown): number {
    const errno = -errnoFor(err);
    if (isLoggedFailure(err)) {
      const code = isNarfsError(err) ? err.code : 'ERR_INTERNAL';
      const key = `${kind}:${code}`;
      const now = Date.now();
      if ((this.#loggedFailures.get(key) ?? 0) < now - 60_000) {
        this.#loggedFailures.set(key, now);
        this.#log.error(`FUSE request ${opName(kind)} failed`, { nodeid, err });
      }
    }
    return errno;
  }
}

function opName(kind: number): string {
  for (const [k, v] of Object.entries(OP)) if (v === kind) return k.toLowerCase();
  return String(kind);
}
