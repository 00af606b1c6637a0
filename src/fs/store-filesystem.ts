/**
 * StoreFilesystem: the POSIX view of a lazily materialised /nix/store, inode-based and
 * binding-agnostic (it knows neither FUSE nor HTTP).
 *
 * Invariants:
 * - Inode 1 is the store root. Every other inode is a node of one store path's NAR listing.
 *   An inode number is never reused within a mount (a node forgotten and looked up again
 *   gets a new number; the kernel only ever holds numbers it has not forgotten).
 * - Bounded inode table: an inode exists while the kernel holds a lookup of it (counted by
 *   `lookup` and `lookupChild`, given back by `forget`) or a handle is open on it; children
 *   are created when they are looked up, never by `readdir`. With `forgets: false` (a binding
 *   that never sends FORGET, such as fuse-native) nothing is counted and inodes stay.
 * - Attributes are those Nix gives a store path on disk (posix-fs-canonicalise.cc):
 *   regular files 0444, executables 0555, directories 0555, symlinks 0777, mtime 1,
 *   uid/gid 0. Everything is read-only: there are no mutating methods here.
 * - A root name that is not a valid store path basename is absent without asking
 *   anybody (no network traffic for `ls /nix/store/foo`).
 * - The root lists only the store paths this mount knows, never the whole datalake.
 * - Every wait on the store layer is bounded by `opTimeoutMs` (ERR_DEADLINE), and ends
 *   early with ERR_ABORTED when the caller's signal aborts (a FUSE INTERRUPT).
 * - `statfs` costs O(1): block and file counts are kept as inodes come and go.
 * - When the last inode of a store path goes, the store is told (`RootNodes.release`), so
 *   listings of store paths the kernel forgot do not stay in memory.
 * - Names and symlink targets are byte strings (one char per byte, src/nix/nar-listing.ts):
 *   a FUSE binding converts at its edge (`Buffer#toString('latin1')` / `Buffer.from(s,
 *   'latin1')`); store path basenames are ASCII, so they are the same either way.
 * - Memory goes back after a burst of forgets: when the kernel has forgotten at least
 *   FORGET_BURST inodes and the table has fallen to half its peak since the last time, a
 *   full compacting V8 GC runs (src/fs/full-gc.ts) once no inode was dropped for
 *   `releaseDelayMs`, at most once per GC_INTERVAL_MS; the table's own arrays shrink with
 *   the forgets (src/fs/inode-slab.ts). The quiet wait lets the whole burst arrive first,
 *   and the full GC arms V8's memory reducer, which shrinks the young generation (grown to
 *   32 MiB by a walk) once the process stays quiet. The C engine trims its node table
 *   likewise.
 * - With a `journal` (restart without unmount, src/fs/inode-journal.ts): every inode is
 *   recorded before its number can reach the kernel, numbers continue above the journal's,
 *   and a nodeid the kernel got from an earlier process is rebuilt on demand (`revive`)
 *   from its record, with the same number; a lookup of a recorded (parent, name) answers
 *   the recorded number.
 */
import { NarfsError } from '../errors.js';
import { raceSignal, withDeadline } from '../deadline.js';
import { isStorePathBase } from '../nix/store-path.js';
import type { NarNode } from '../nix/nar-listing.js';
import { compactOf, K_DIRECTORY, K_EXECUTABLE, K_REGULAR, K_SYMLINK, type CompactListing } from '../nix/compact-listing.js';
import type { InodeJournal } from './inode-journal.js';
import { InodeSlab } from './inode-slab.js';
import { capYoungGeneration, fullGc } from './full-gc.js';

/** Answers "what is the store path called <name>?" (the listing of its NAR). */
export interface RootNodes {
  /** The root node of store path `name`, or undefined when no datalake has it. */
  resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined>;
  /** Store path basenames this mount knows now (looked up, cached or registered). */
  knownNames(): Iterable<string>;
  /**
   * The filesystem holds no inode of store path `name` any more (the kernel forgot them
   * all): its listing need not stay in memory. The next `resolve` may load it again.
   */
  release?(name: string): void;
  /**
   * Whether a root entry the kernel holds is still listed (a slice mount stops listing a
   * path that left the slice while the kernel still holds it). Default: listed.
   */
  isListed?(name: string): boolean;
}

/** Answers "which bytes are at narOffset in the uncompressed NAR of <name>?". */
export interface ContentReader {
  read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer>;
  /** Hint on open that the file at `narOffset` of `name` will be read soon. Must not throw. */
  prefetch?(name: string, narOffset: number): void;
  /**
   * Keeps the bytes of the file at `narOffset` of `name` in the cache while it is open;
   * returns the function that lets go (called on release). Its `ready`, when present,
   * settles once held bytes that are local but not yet checked in this process are
   * checked (`contentFile` names them from then on, unless they were damaged). Must not
   * throw.
   */
  hold?(name: string, narOffset: number): (() => void) & { ready?: Promise<unknown> };
  /**
   * The local file holding the verified, complete contents of the file at `narOffset` of
   * `name`: the file's first byte is at `offset` of `path`, whose verified size is `size`;
   * undefined while they are not all verified and local. Lets a FUSE engine serve reads
   * without asking again (pread, or passthrough when offset is 0 and the sizes agree).
   * Must not throw.
   */
  contentFile?(name: string, narOffset: number): { path: string; offset: number; size: number } | undefined;
  /** Calls `listener` with the path of a local file that `contentFile` named and that must not be read any more. */
  watchDropped?(listener: (name: string, path: string) => void): void;
  /**
   * Asks `guard` before a local file that `contentFile` named is evicted: false keeps it
   * (it is open). Must answer synchronously.
   */
  guardDropped?(guard: (path: string) => boolean): void;
}

/** Where the bytes of a regular file lie in a local, verified file. */
export interface ContentLocation {
  path: string;
  /** Offset of the file's first byte in `path`. */
  offset: number;
  size: number;
  /** Size `path` must have (what was verified). */
  fileSize: number;
}

export type FileKind = 'directory' | 'regular' | 'symlink';

export interface Attr {
  ino: number;
  kind: FileKind;
  mode: number;
  nlink: number;
  size: number;
  blocks: number;
  uid: number;
  gid: number;
  /** Nix's canonical timestamp: 1 second after the epoch. */
  mtimeMs: number;
}

export interface DirEntry {
  /** Byte string. */
  name: string;
  /** Absent for root entries whose store path has not been looked up yet. */
  attr?: Attr;
}

export interface StatFs {
  bsize: number;
  blocks: number;
  files: number;
  namemax: number;
}

export interface StoreFilesystemOptions {
  /** Deadline of every call that waits on the store layer. */
  opTimeoutMs: number;
  /**
   * Extra empty directories in the root. Nix's LocalStore creates `<store>/.links` on open
   * (local-store.cc createDirs); a read-only lower store needs it to exist already.
   */
  rootDirs?: string[];
  /** Called once per store path whose node was resolved (for logging/metrics). */
  onResolved?(name: string): void;
  /**
   * Whether the binding sends FORGET: then lookups are counted and an inode is dropped
   * when the kernel forgets it. Default false (inodes live as long as the mount).
   */
  forgets?: boolean;
  /** Records inode numbers for a restarted process (see InodeJournal). */
  journal?: InodeJournal;
  /** Quiet time (no inode dropped) before the GC after a burst of forgets (default 6000 ms). */
  releaseDelayMs?: number;
  /** Called after that GC ran (for tests and metrics). */
  onMemoryReleased?(): void;
}

export const ROOT_INO = 1;
/** Inodes forgotten (and the table halved) before memory is given back (see invariants). */
export const FORGET_BURST = 10_000;
const GC_INTERVAL_MS = 30_000;
const MTIME_MS = 1000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/**
 * One store path's listing while inodes of it live (or the listing of the root and its extra
 * dirs, name ''): `held[i]` is the number of the inode the kernel holds for node i of the
 * listing (0: none; a typed array, not a Map: 8 bytes per listing node instead of ~40 per
 * held inode). `id` is what the inode table's `root` column holds.
 */
interface StoreRoot {
  id: number;
  /** The store path ('' for the root and its extra dirs). */
  name: string;
  listing: CompactListing;
  held: Float64Array;
}

interface Handle {
  /** The inode's number (it stays in the table while the handle is open). */
  ino: number;
  /** Lets go of the cached bytes held while the file is open (ContentReader.hold). */
  unhold: ((() => void) & { ready?: Promise<unknown> }) | undefined;
}

const EMPTY_DIR = compactOf({ type: 'directory', entries: new Map() });

export class StoreFilesystem {
  readonly #roots: RootNodes;
  readonly #content: ContentReader;
  readonly #opts: StoreFilesystemOptions;
  readonly #forgets: boolean;
  /**
   * The inodes (src/fs/inode-slab.ts): an inode is a node of a store path's listing, its
   * slot holds (number, StoreRoot id, node index, lookups, handles, pinned); attributes,
   * name and parent are read from the listing when asked. Slots move when the table
   * compacts (a `free`), so only numbers are kept across calls.
   */
  readonly #table = new InodeSlab();
  /** StoreRoot by id (the table's `root` column); freed ids are reused. */
  readonly #rootById: (StoreRoot | undefined)[] = [];
  readonly #freeRootIds: number[] = [];
  /** Root name → inode number, for store paths resolved and still held. */
  readonly #rootChildren = new Map<string, number>();
  /** Extra root dir name → inode number. */
  readonly #rootDirs = new Map<string, number>();
  /** Root name → in-flight resolution (one per name). */
  readonly #resolving = new Map<string, Promise<NarNode | undefined>>();
  readonly #handles = new Map<number, Handle>();
  /** Store path → number of its inodes in the table. */
  readonly #perStore = new Map<string, number>();
  /** Store path → its listing while inodes of it live (one StoreRoot per path at a time). */
  readonly #stores = new Map<string, StoreRoot>();
  #nextIno = ROOT_INO + 1;
  #nextFh = 1;
  /** Inodes dropped, and the largest table, since the last GC after forgets. */
  #dropped = 0;
  #peak = 0;
  #lastGcAt = -Infinity;
  #lastDropAt = 0;
  #gcTimer: NodeJS.Timeout | undefined;
  #blocks = 0;
  readonly #rootAttr: Attr = {
    ino: ROOT_INO, kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2, size: 0, blocks: 0,
    uid: 0, gid: 0, mtimeMs: MTIME_MS,
  };

  constructor(roots: RootNodes, content: ContentReader, options: StoreFilesystemOptions) {
    this.#roots = roots;
    this.#content = content;
    this.#opts = options;
    this.#forgets = options.forgets ?? false;
    if (this.#forgets) capYoungGeneration();
    const top = this.#newRoot('', EMPTY_DIR);
    this.#table.alloc(ROOT_INO, top.id, 0, true);
    for (const name of options.rootDirs ?? []) {
      const s = this.#newInode(top, 0, undefined, name);
      this.#table.setPinned(s, true);
      this.#rootDirs.set(name, this.#table.ino(s));
    }
    // After the fixed inodes (the same numbers in every process), above every recorded one.
    if (options.journal) this.#nextIno = Math.max(this.#nextIno, options.journal.nextIno);
  }

  /** Whether `ino` is unknown here but recorded by an earlier process (see `revive`). */
  needsRevive(ino: number): boolean {
    return !this.#table.has(ino) && this.#opts.journal?.get(ino) !== undefined;
  }

  /**
   * Rebuilds inode `ino` (and its ancestors) from the journal, with the same number: the
   * kernel holds it from an earlier process of this mount. Its lookup count starts at 0
   * (the kernel's FORGET of an evicted inode carries its whole count, so the next FORGET
   * drops it; it can be rebuilt again). ERR_STALE_INODE when the entry no longer exists.
   */
  async revive(ino: number, signal?: AbortSignal): Promise<void> {
    if (this.#table.has(ino)) return;
    const rec = this.#opts.journal?.get(ino);
    if (!rec) throw new NarfsError('ERR_STALE_INODE', `inode ${ino} is not known`);
    if (rec.parent !== ROOT_INO) await this.revive(rec.parent, signal);
    if (this.#table.has(ino)) return;
    let s: number;
    if (rec.parent === ROOT_INO) {
      const node = await this.#resolveRoot(rec.name, signal);
      if (node === undefined) throw new NarfsError('ERR_STALE_INODE', `store path ${rec.name} of inode ${ino} is gone`);
      s = this.#table.slotOf(ino);
      if (s < 0) s = this.#rootChild(rec.name, node);
    } else {
      s = this.#child(this.#slot(rec.parent), rec.name);
    }
    if (s < 0) throw new NarfsError('ERR_STALE_INODE', `inode ${ino} names an entry that is gone`);
    if (this.#table.ino(s) !== ino && !this.#table.has(ino)) {
      // The name is held under a newer number too: both numbers stay valid.
      this.#newInode(this.#rootOf(s), this.#table.idx(s), undefined, rec.name, ino);
    }
  }

  /** Attributes of an inode already known to this mount. */
  getattr(ino: number): Attr {
    return this.#attr(this.#slot(ino));
  }

  /**
   * The child `name` of directory `parent`, or undefined when there is none. A found child
   * counts as one lookup held by the kernel (see `forget`).
   */
  async lookup(parent: number, name: string, signal?: AbortSignal): Promise<Attr | undefined> {
    if (parent === ROOT_INO) {
      const extra = this.#rootDirs.get(name);
      if (extra !== undefined) return this.getattr(extra);
      const node = await this.#resolveRoot(name, signal);
      if (node === undefined) return undefined;
      return this.#attr(this.#hold(this.#rootChild(name, node)));
    }
    const dir = this.#slot(parent);
    if (!this.#rootOf(dir).listing.isDirectory(this.#table.idx(dir))) {
      throw new NarfsError('ERR_NOT_DIRECTORY', `inode ${parent} is not a directory`);
    }
    const child = this.#child(dir, name);
    return child < 0 ? undefined : this.#attr(this.#hold(child));
  }

  /**
   * Like `lookup`, without waiting: the child of a loaded directory (or an already resolved
   * store path under the root), counted as a lookup; undefined when it would need the store.
   * For READDIRPLUS, whose entries the kernel takes as lookups.
   */
  lookupChild(parent: number, name: string): Attr | undefined {
    if (parent === ROOT_INO) {
      const extra = this.#rootDirs.get(name);
      if (extra !== undefined) return this.getattr(extra);
      const known = this.#rootChildren.get(name);
      return known === undefined ? undefined : this.#attr(this.#hold(this.#slot(known)));
    }
    const child = this.#child(this.#slot(parent), name);
    return child < 0 ? undefined : this.#attr(this.#hold(child));
  }

  /**
   * The kernel dropped `n` lookups of `ino`. Returns true when the inode is gone (its
   * number will not be answered again).
   */
  forget(ino: number, n: number): boolean {
    if (!this.#forgets) return false;
    const s = this.#table.slotOf(ino);
    if (s < 0 || this.#table.pinned(s)) return false;
    this.#table.setNlookup(s, Math.max(0, this.#table.nlookup(s) - n));
    if (!this.#maybeDrop(s)) return false;
    this.#lastDropAt = Date.now();
    if (++this.#dropped >= FORGET_BURST && this.#table.size * 2 <= this.#peak && this.#gcTimer === undefined) {
      this.#armRelease();
    }
    return true;
  }

  /** Schedules the GC after a burst of forgets: after a quiet time, within the rate limit. */
  #armRelease(): void {
    const quiet = this.#opts.releaseDelayMs ?? 6000;
    const at = Math.max(this.#lastDropAt + quiet, this.#lastGcAt + GC_INTERVAL_MS);
    this.#gcTimer = setTimeout(() => this.#release(), Math.max(0, at - Date.now()));
    this.#gcTimer.unref();
  }

  /** The GC after a burst of forgets (see invariants), once the forgets went quiet. */
  #release(): void {
    this.#gcTimer = undefined;
    const quiet = this.#opts.releaseDelayMs ?? 6000;
    if (Date.now() - this.#lastDropAt < quiet) {
      this.#armRelease(); // more forgets came meanwhile
      return;
    }
    this.#lastGcAt = Date.now();
    this.#dropped = 0;
    this.#peak = this.#table.size;
    fullGc();
    this.#opts.onMemoryReleased?.();
  }

  /**
   * Entries of a directory, without `.` and `..`, in bytewise order. Creates no inodes:
   * `attr.ino` is the child's number when the kernel holds it, else 0. Only the entries
   * from index `start`, at most `limit` of them: the kernel reads a large directory a page
   * at a time, and each request must not cost (nor allocate for) the whole directory.
   */
  readdir(ino: number, start = 0, limit = Infinity): DirEntry[] {
    const end = start + limit;
    if (ino === ROOT_INO) {
      const names = new Set<string>(this.#roots.knownNames());
      for (const n of this.#rootChildren.keys()) if (this.#roots.isListed?.(n) ?? true) names.add(n);
      const out: DirEntry[] = [];
      for (const [name, i] of this.#rootDirs) out.push({ name, attr: this.getattr(i) });
      // Store path basenames are ASCII, where code-unit order is byte order.
      for (const name of [...names].sort()) {
        const i = this.#rootChildren.get(name);
        out.push(i === undefined ? { name } : { name, attr: this.getattr(i) });
      }
      return start === 0 && limit === Infinity ? out : out.slice(start, end);
    }
    const dir = this.#slot(ino);
    const root = this.#rootOf(dir);
    const l = root.listing;
    const di = this.#table.idx(dir);
    if (!l.isDirectory(di)) throw new NarfsError('ERR_NOT_DIRECTORY', `inode ${ino} is not a directory`);
    const out: DirEntry[] = [];
    const last = Math.min(end, l.childCount(di));
    for (let k = start; k < last; k++) {
      const c = l.child(di, k);
      out.push({ name: l.name(c), attr: attrOf(root.held[c]!, l, c) });
    }
    return out;
  }

  readlink(ino: number): string {
    const s = this.#slot(ino);
    const l = this.#rootOf(s).listing;
    const i = this.#table.idx(s);
    if (l.kind[i] !== K_SYMLINK) throw new NarfsError('ERR_NOT_SYMLINK', `inode ${ino} is not a symlink`);
    return l.target(i);
  }

  /** Opens a regular file for reading; any write access is refused with ERR_READ_ONLY. */
  open(ino: number, flags: number): number {
    const s = this.#slot(ino);
    if ((flags & 3) !== 0 || (flags & (0o100 | 0o1000)) !== 0) {
      // O_WRONLY/O_RDWR, O_CREAT, O_TRUNC
      throw new NarfsError('ERR_READ_ONLY', 'the store is read-only');
    }
    const root = this.#rootOf(s);
    const l = root.listing;
    const i = this.#table.idx(s);
    const kind = l.kind[i];
    if (kind === K_DIRECTORY) throw new NarfsError('ERR_IS_DIRECTORY', `inode ${ino} is a directory`);
    let unhold: Handle['unhold'];
    if (kind !== K_SYMLINK && l.a[i]! > 0) {
      const narOffset = l.b[i]!;
      this.#content.prefetch?.(root.name, narOffset);
      unhold = this.#content.hold?.(root.name, narOffset);
    }
    const fh = this.#nextFh++;
    if (this.#nextFh > 0xffffffff) this.#nextFh = 1;
    this.#handles.set(fh, { ino, unhold });
    this.#table.setHandles(s, this.#table.handles(s) + 1);
    return fh;
  }

  /**
   * Settles once the content of open file `fh` is checked, when it is local but was not
   * yet checked in this process (a cache of an earlier process); undefined otherwise. Never
   * rejects. A FUSE engine waits for it to hand the file to the kernel whole (passthrough).
   */
  contentReady(fh: number): Promise<unknown> | undefined {
    return this.#handles.get(fh)?.unhold?.ready;
  }

  /** Up to `length` bytes at `offset`; fewer only at end of file. */
  async read(fh: number, offset: number, length: number, signal?: AbortSignal, ino?: number): Promise<Buffer> {
    let at = this.#handles.get(fh)?.ino;
    // A handle the engine opened in C (0) or an earlier process opened (restart): the kernel
    // names the inode too, and a number reused here for another inode must not be followed.
    if (ino !== undefined && at !== ino) at = this.#table.has(ino) ? ino : undefined;
    const s = at === undefined ? -1 : this.#table.slotOf(at);
    if (s < 0) throw new NarfsError('ERR_BAD_HANDLE', `file handle ${fh} is not open`);
    const root = this.#rootOf(s);
    const idx = this.#table.idx(s);
    const kind = root.listing.kind[idx];
    if (kind === K_DIRECTORY) throw new NarfsError('ERR_IS_DIRECTORY', 'a directory has no bytes to read');
    if (kind === K_SYMLINK) throw new NarfsError('ERR_INVALID_ARGUMENT', 'a symlink has no bytes to read');
    const size = root.listing.a[idx]!;
    const narOffset = root.listing.b[idx]!;
    if (offset >= size || length <= 0) return Buffer.alloc(0);
    const n = Math.min(length, size - offset);
    const name = root.name;
    return withDeadline(
      this.#opts.opTimeoutMs,
      (sig) => this.#content.read(name, narOffset + offset, n, sig),
      signal ? { what: `read of ${name}`, signal } : { what: `read of ${name}` },
    );
  }

  /**
   * Where the bytes of regular file `ino` lie in a local verified file, when they are all
   * there (undefined otherwise, and for empty files).
   */
  contentLocation(ino: number): ContentLocation | undefined {
    const s = this.#table.slotOf(ino);
    if (s < 0) return undefined;
    const root = this.#rootOf(s);
    const l = root.listing;
    const i = this.#table.idx(s);
    const kind = l.kind[i];
    if ((kind !== K_REGULAR && kind !== K_EXECUTABLE) || l.a[i] === 0) return undefined;
    const file = this.#content.contentFile?.(root.name, l.b[i]!);
    if (!file) return undefined;
    return { path: file.path, offset: file.offset, size: l.a[i]!, fileSize: file.size };
  }

  /** Calls `listener` with the path of a local file whose bytes must no longer be served. */
  watchDropped(listener: (path: string) => void): void {
    this.#content.watchDropped?.((_name, path) => listener(path));
  }

  /** Lets `guard` keep a local file that `contentLocation` named from eviction (see ContentReader). */
  guardDropped(guard: (path: string) => boolean): void {
    this.#content.guardDropped?.(guard);
  }

  release(fh: number, ino?: number): void {
    const handle = this.#handles.get(fh);
    if (!handle || (ino !== undefined && handle.ino !== ino)) return;
    this.#handles.delete(fh);
    handle.unhold?.();
    const s = this.#table.slotOf(handle.ino);
    if (s < 0) return;
    this.#table.setHandles(s, this.#table.handles(s) - 1);
    this.#maybeDrop(s);
  }

  /** Whether the access `mask` (R_OK 4, W_OK 2, X_OK 1) is allowed; writes never are. */
  access(ino: number, mask: number): boolean {
    const attr = this.getattr(ino);
    if (mask & 2) return false;
    if (mask & 1) return (attr.mode & 0o111) !== 0;
    return true;
  }

  statfs(): StatFs {
    return { bsize: 4096, blocks: Math.ceil(this.#blocks / 8), files: this.#table.size, namemax: 255 };
  }

  /** Number of inodes in the table (for metrics and memory tests). */
  get inodeCount(): number {
    return this.#table.size;
  }

  /** Bytes the inode table's arrays take (for memory tests: it shrinks after a forget). */
  get inodeTableBytes(): number {
    return this.#table.bytes;
  }

  #resolveRoot(name: string, signal?: AbortSignal): Promise<NarNode | undefined> {
    const known = this.#rootChildren.get(name);
    if (known !== undefined) return Promise.resolve(this.#rootOf(this.#slot(known)).listing.node(0));
    if (!isStorePathBase(name)) return Promise.resolve(undefined);
    let pending = this.#resolving.get(name);
    if (!pending) {
      // One resolution per name, bounded by its own deadline; callers may give up earlier.
      pending = withDeadline(
        this.#opts.opTimeoutMs,
        (sig) => this.#roots.resolve(name, sig),
        { what: `lookup of ${name}` },
      ).then((node) => {
        if (node && !this.#rootChildren.has(name)) this.#opts.onResolved?.(name);
        return node;
      }).finally(() => this.#resolving.delete(name));
      this.#resolving.set(name, pending);
    }
    return signal ? raceSignal(pending, signal) : pending;
  }

  /** The slot of store path `name`'s inode (made when not held). */
  #rootChild(name: string, node: NarNode): number {
    const again = this.#rootChildren.get(name);
    if (again !== undefined) return this.#slot(again);
    let root = this.#stores.get(name);
    if (root === undefined) {
      root = this.#newRoot(name, compactOf(node));
      this.#stores.set(name, root);
    }
    const s = this.#newInode(root, 0, ROOT_INO, name, this.#recorded(ROOT_INO, name));
    this.#rootChildren.set(name, this.#table.ino(s));
    return s;
  }

  /** The slot of child `name` of the directory in slot `dir` (made when not held), or -1. */
  #child(dir: number, name: string): number {
    const root = this.#rootOf(dir);
    const c = root.listing.find(this.#table.idx(dir), name);
    if (c < 0) return -1;
    const held = root.held[c]!;
    if (held !== 0) {
      const known = this.#table.slotOf(held);
      if (known >= 0) return known;
    }
    const parent = this.#table.ino(dir);
    const s = this.#newInode(root, c, parent, name, this.#recorded(parent, name));
    root.held[c] = this.#table.ino(s);
    return s;
  }

  #hold(s: number): number {
    if (this.#forgets && !this.#table.pinned(s)) this.#table.setNlookup(s, this.#table.nlookup(s) + 1);
    return s;
  }

  /** Drops the inode in slot `s` when nobody holds it any more; true when it was dropped. */
  #maybeDrop(s: number): boolean {
    const t = this.#table;
    if (!this.#forgets || t.pinned(s) || t.nlookup(s) > 0 || t.handles(s) > 0) return false;
    const ino = t.ino(s);
    const root = this.#rootOf(s);
    const idx = t.idx(s);
    t.free(ino);
    this.#blocks -= blocksOf(root.listing, idx);
    const storeName = root.name;
    if (idx === 0 && storeName !== '') {
      if (this.#rootChildren.get(storeName) === ino) this.#rootChildren.delete(storeName);
    } else if (root.held[idx] === ino) {
      root.held[idx] = 0;
    }
    const left = (this.#perStore.get(storeName) ?? 1) - 1;
    if (left > 0) {
      this.#perStore.set(storeName, left);
    } else {
      this.#perStore.delete(storeName);
      if (storeName !== '') {
        this.#stores.delete(storeName);
        this.#rootById[root.id] = undefined;
        this.#freeRootIds.push(root.id);
        this.#roots.release?.(storeName);
      }
    }
    return true;
  }

  #slot(ino: number): number {
    const s = this.#table.slotOf(ino);
    if (s < 0) throw new NarfsError('ERR_STALE_INODE', `inode ${ino} is not known`);
    return s;
  }

  #rootOf(s: number): StoreRoot {
    return this.#rootById[this.#table.root(s)]!;
  }

  #newRoot(name: string, listing: CompactListing): StoreRoot {
    const id = this.#freeRootIds.pop() ?? this.#rootById.length;
    const root: StoreRoot = { id, name, listing, held: new Float64Array(listing.count) };
    this.#rootById[id] = root;
    return root;
  }

  /** The number an earlier process gave (parent, name), when not in use here. */
  #recorded(parent: number, name: string): number | undefined {
    const ino = this.#opts.journal?.childOf(parent, name);
    return ino !== undefined && !this.#table.has(ino) ? ino : undefined;
  }

  /** Adds an inode for node `idx` of `root` and returns its slot (other slots do not move). */
  #newInode(root: StoreRoot, idx: number, parent: number | undefined, name: string, known?: number): number {
    let ino: number;
    if (known !== undefined) {
      ino = known;
    } else {
      ino = this.#nextIno;
      // Recorded before the number can reach the kernel (a throw here fails the request).
      if (parent !== undefined) this.#opts.journal?.append(ino, parent, name);
      this.#nextIno++;
    }
    const s = this.#table.alloc(ino, root.id, idx, false);
    if (this.#table.size > this.#peak) this.#peak = this.#table.size;
    this.#blocks += blocksOf(root.listing, idx);
    this.#perStore.set(root.name, (this.#perStore.get(root.name) ?? 0) + 1);
    return s;
  }

  #attr(s: number): Attr {
    const ino = this.#table.ino(s);
    return ino === ROOT_INO ? this.#rootAttr : attrOf(ino, this.#rootOf(s).listing, this.#table.idx(s));
  }
}

/**
 * One object shape for every Attr (a literal with all fields in one order, no spread: a
 * spread copy is built property by property and costs several times the memory per inode).
 */
function makeAttr(ino: number, kind: FileKind, mode: number, nlink: number, size: number, blocks: number): Attr {
  return { ino, kind, mode, nlink, size, blocks, uid: 0, gid: 0, mtimeMs: MTIME_MS };
}

/** The attributes of node `i` of listing `l` (made when asked: inodes do not keep them). */
function attrOf(ino: number, l: CompactListing, i: number): Attr {
  switch (l.kind[i]) {
    case K_REGULAR:
    case K_EXECUTABLE: {
      const size = l.a[i]!;
      return makeAttr(ino, 'regular', S_IFREG | (l.kind[i] === K_EXECUTABLE ? 0o555 : 0o444), 1, size, Math.ceil(size / 512));
    }
    case K_SYMLINK:
      return makeAttr(ino, 'symlink', S_IFLNK | 0o777, 1, l.b[i]! /* target bytes */, 0);
    default:
      return makeAttr(ino, 'directory', S_IFDIR | 0o555, 2 + l.subdirs(i), 0, 0);
  }
}

function blocksOf(l: CompactListing, i: number): number {
  const k = l.kind[i];
  return k === K_REGULAR || k === K_EXECUTABLE ? Math.ceil(l.a[i]! / 512) : 0;
}
