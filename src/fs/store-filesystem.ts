/**
 * StoreFilesystem: the POSIX view of a lazily materialised /nix/store, inode-based and
 * binding-agnostic (it knows neither FUSE nor HTTP).
 *
 * Invariants:
 * - Inode 1 is the store root. Every other inode is a node of one store path's NAR listing
 *   and keeps its number for the life of the mount (numbers are never reused).
 * - Attributes are those Nix gives a store path on disk (posix-fs-canonicalise.cc):
 *   regular files 0444, executables 0555, directories 0555, symlinks 0777, mtime 1,
 *   uid/gid 0. Everything is read-only: there are no mutating methods here.
 * - A root name that is not a valid store path basename is absent without asking
 *   anybody (no network traffic for `ls /nix/store/foo`).
 * - The root lists only the store paths this mount knows, never the whole datalake.
 * - Every wait on the store layer is bounded by `opTimeoutMs` (ERR_DEADLINE).
 */
import { NarfsError } from '../errors.js';
import { withDeadline } from '../deadline.js';
import { isStorePathBase } from '../nix/store-path.js';
import type { NarNode } from '../nix/nar-listing.js';

/** Answers "what is the store path called <name>?" (the listing of its NAR). */
export interface RootNodes {
  /** The root node of store path `name`, or undefined when no datalake has it. */
  resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined>;
  /** Store path basenames this mount knows now (looked up, cached or registered). */
  knownNames(): Iterable<string>;
}

/** Answers "which bytes are at narOffset in the uncompressed NAR of <name>?". */
export interface ContentReader {
  read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer>;
  /** Hint that the contents of `name` will be read soon (open). Must not throw. */
  prefetch?(name: string): void;
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
}

export const ROOT_INO = 1;
const MTIME_MS = 1000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

interface Inode {
  ino: number;
  /** The store path this inode belongs to ('' for the root and its extra dirs). */
  storeName: string;
  node: NarNode;
  attr: Attr;
  /** Child name → inode number, filled as children are looked up or listed. */
  children?: Map<string, number>;
}

interface Handle {
  inode: Inode;
}

const EMPTY_DIR: NarNode = { type: 'directory', entries: new Map() };

export class StoreFilesystem {
  readonly #roots: RootNodes;
  readonly #content: ContentReader;
  readonly #opts: StoreFilesystemOptions;
  readonly #inodes = new Map<number, Inode>();
  /** Root name → inode, for store paths already resolved. */
  readonly #rootChildren = new Map<string, number>();
  readonly #rootDirs: Map<string, number>;
  /** Root name → in-flight resolution (one per name). */
  readonly #resolving = new Map<string, Promise<number | undefined>>();
  readonly #handles = new Map<number, Handle>();
  #nextIno = ROOT_INO + 1;
  #nextFh = 1;
  readonly #rootAttr: Attr = {
    ino: ROOT_INO, kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2, size: 0, blocks: 0,
    uid: 0, gid: 0, mtimeMs: MTIME_MS,
  };

  constructor(roots: RootNodes, content: ContentReader, options: StoreFilesystemOptions) {
    this.#roots = roots;
    this.#content = content;
    this.#opts = options;
    this.#rootDirs = new Map();
    this.#inodes.set(ROOT_INO, { ino: ROOT_INO, storeName: '', node: EMPTY_DIR, attr: this.#rootAttr });
    for (const name of options.rootDirs ?? []) {
      const inode = this.#newInode('', EMPTY_DIR);
      this.#rootDirs.set(name, inode.ino);
    }
  }

  /** Attributes of an inode already known to this mount. */
  getattr(ino: number): Attr {
    return this.#inode(ino).attr;
  }

  /** The child `name` of directory `parent`, or undefined when there is none. */
  async lookup(parent: number, name: string): Promise<Attr | undefined> {
    if (parent === ROOT_INO) {
      const extra = this.#rootDirs.get(name);
      if (extra !== undefined) return this.#inode(extra).attr;
      const ino = await this.#resolveRoot(name);
      return ino === undefined ? undefined : this.#inode(ino).attr;
    }
    const dir = this.#inode(parent);
    if (dir.node.type !== 'directory') throw new NarfsError('ERR_NOT_DIRECTORY', `inode ${parent} is not a directory`);
    const ino = this.#child(dir, name);
    return ino === undefined ? undefined : this.#inode(ino).attr;
  }

  /** Entries of a directory, without `.` and `..`, in bytewise order. */
  readdir(ino: number): DirEntry[] {
    if (ino === ROOT_INO) {
      const names = new Set<string>(this.#roots.knownNames());
      for (const n of this.#rootChildren.keys()) names.add(n);
      const out: DirEntry[] = [];
      for (const [name, i] of this.#rootDirs) out.push({ name, attr: this.#inode(i).attr });
      // Store path basenames are ASCII, where code-unit order is byte order.
      for (const name of [...names].sort()) {
        const i = this.#rootChildren.get(name);
        out.push(i === undefined ? { name } : { name, attr: this.#inode(i).attr });
      }
      return out;
    }
    const dir = this.#inode(ino);
    if (dir.node.type !== 'directory') throw new NarfsError('ERR_NOT_DIRECTORY', `inode ${ino} is not a directory`);
    const out: DirEntry[] = [];
    for (const name of dir.node.entries.keys()) {
      const child = this.#child(dir, name);
      if (child !== undefined) out.push({ name, attr: this.#inode(child).attr });
    }
    return out;
  }

  readlink(ino: number): string {
    const inode = this.#inode(ino);
    if (inode.node.type !== 'symlink') throw new NarfsError('ERR_NOT_SYMLINK', `inode ${ino} is not a symlink`);
    return inode.node.target;
  }

  /** Opens a regular file for reading; any write access is refused with ERR_READ_ONLY. */
  open(ino: number, flags: number): number {
    const inode = this.#inode(ino);
    if ((flags & 3) !== 0 || (flags & (0o100 | 0o1000)) !== 0) {
      // O_WRONLY/O_RDWR, O_CREAT, O_TRUNC
      throw new NarfsError('ERR_READ_ONLY', 'the store is read-only');
    }
    if (inode.node.type === 'directory') throw new NarfsError('ERR_IS_DIRECTORY', `inode ${ino} is a directory`);
    if (inode.node.type === 'regular' && inode.node.size > 0) this.#content.prefetch?.(inode.storeName);
    const fh = this.#nextFh++;
    if (this.#nextFh > 0xffffffff) this.#nextFh = 1;
    this.#handles.set(fh, { inode });
    return fh;
  }

  /** Up to `length` bytes at `offset`; fewer only at end of file. */
  async read(fh: number, offset: number, length: number): Promise<Buffer> {
    const handle = this.#handles.get(fh);
    if (!handle) throw new NarfsError('ERR_BAD_HANDLE', `file handle ${fh} is not open`);
    const node = handle.inode.node;
    if (node.type === 'directory') throw new NarfsError('ERR_IS_DIRECTORY', 'a directory has no bytes to read');
    if (node.type === 'symlink') throw new NarfsError('ERR_INVALID_ARGUMENT', 'a symlink has no bytes to read');
    if (offset >= node.size || length <= 0) return Buffer.alloc(0);
    const n = Math.min(length, node.size - offset);
    const name = handle.inode.storeName;
    return withDeadline(
      this.#opts.opTimeoutMs,
      (signal) => this.#content.read(name, node.narOffset + offset, n, signal),
      { what: `read of ${name}` },
    );
  }

  release(fh: number): void {
    this.#handles.delete(fh);
  }

  /** Whether the access `mask` (R_OK 4, W_OK 2, X_OK 1) is allowed; writes never are. */
  access(ino: number, mask: number): boolean {
    const attr = this.getattr(ino);
    if (mask & 2) return false;
    if (mask & 1) return (attr.mode & 0o111) !== 0;
    return true;
  }

  statfs(): StatFs {
    let blocks = 0;
    for (const inode of this.#inodes.values()) blocks += inode.attr.blocks;
    return { bsize: 4096, blocks: Math.ceil(blocks / 8), files: this.#inodes.size, namemax: 255 };
  }

  /** Number of inodes allocated (for metrics and memory tests). */
  get inodeCount(): number {
    return this.#inodes.size;
  }

  async #resolveRoot(name: string): Promise<number | undefined> {
    const known = this.#rootChildren.get(name);
    if (known !== undefined) return known;
    if (!isStorePathBase(name)) return undefined;
    let pending = this.#resolving.get(name);
    if (!pending) {
      pending = withDeadline(
        this.#opts.opTimeoutMs,
        (signal) => this.#roots.resolve(name, signal),
        { what: `lookup of ${name}` },
      ).then((node) => {
        if (!node) return undefined;
        const again = this.#rootChildren.get(name);
        if (again !== undefined) return again;
        const inode = this.#newInode(name, node);
        this.#rootChildren.set(name, inode.ino);
        this.#opts.onResolved?.(name);
        return inode.ino;
      }).finally(() => this.#resolving.delete(name));
      this.#resolving.set(name, pending);
    }
    return pending;
  }

  #child(dir: Inode, name: string): number | undefined {
    if (dir.node.type !== 'directory') return undefined;
    let children = dir.children;
    if (!children) {
      children = new Map();
      dir.children = children;
    }
    const known = children.get(name);
    if (known !== undefined) return known;
    const node = dir.node.entries.get(name);
    if (!node) return undefined;
    const inode = this.#newInode(dir.storeName, node);
    children.set(name, inode.ino);
    return inode.ino;
  }

  #inode(ino: number): Inode {
    const inode = this.#inodes.get(ino);
    if (!inode) throw new NarfsError('ERR_STALE_INODE', `inode ${ino} is not known`);
    return inode;
  }

  #newInode(storeName: string, node: NarNode): Inode {
    const ino = this.#nextIno++;
    const inode: Inode = { ino, storeName, node, attr: attrOf(ino, node) };
    this.#inodes.set(ino, inode);
    return inode;
  }
}

function attrOf(ino: number, node: NarNode): Attr {
  const base = { ino, uid: 0, gid: 0, mtimeMs: MTIME_MS };
  switch (node.type) {
    case 'regular':
      return {
        ...base, kind: 'regular', mode: S_IFREG | (node.executable ? 0o555 : 0o444), nlink: 1,
        size: node.size, blocks: Math.ceil(node.size / 512),
      };
    case 'symlink': {
      const size = Buffer.byteLength(node.target);
      return { ...base, kind: 'symlink', mode: S_IFLNK | 0o777, nlink: 1, size, blocks: 0 };
    }
    case 'directory': {
      let subdirs = 0;
      for (const child of node.entries.values()) if (child.type === 'directory') subdirs++;
      return { ...base, kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2 + subdirs, size: 0, blocks: 0 };
    }
  }
}

