/**
 * TreeStore: the verified NarIndex of each store path whose files the BlobStore may hold,
 * so that a file's contents can be found (by SHA-256) without the NAR.
 *
 * Layout: `<cache-dir>/trees/<hashPart>-<name>`, one file per store path:
 *   magic    8 bytes "NARFSTR\x01"
 *   source   1 byte: 0 = `signed` (a published index whose signature and binding were
 *            verified), 1 = `nar` (computed here while the whole NAR was verified against
 *            NarHash and NarSize)
 *   checksum 32 bytes: SHA-256 of the index bytes that follow
 *   index    encodeNarIndex bytes (nar-index.ts): its storePath, narHash and narSize are
 *            what it was checked against
 *
 * Invariants:
 * - A tree is written in tmp/, fsynced and renamed into place: it is there whole or not
 *   at all. One that does not parse, fails its checksum, or whose record (store path,
 *   NarHash, NarSize) does not match the narinfo in force is dropped by `lookup`, which
 *   then answers undefined: the caller fetches it again.
 * - Bounded: at most `maxCount` trees and `maxBytes` bytes; the least recently used are
 *   removed first, never a pinned one (a store path in use). A tree is small beside the
 *   files it names; one whose files were all evicted costs only its own bytes until its
 *   turn comes.
 * - The in-memory table (name → bytes, last use) is loaded at open from the directory;
 *   failures of the disk are ERR_CACHE_FULL / ERR_CACHE_IO.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { NarfsError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { checkNarIndexBinding, encodeNarIndex, parseNarIndex, type NarIndex } from '../nix/nar-index.js';
import type { NarInfo } from '../nix/narinfo.js';
import { isStorePathBase, parseStorePath, storePathBase } from '../nix/store-path.js';
import { cacheError } from './cache-error.js';

export type TreeSource = 'signed' | 'nar';

export interface StoredTree {
  index: NarIndex;
  source: TreeSource;
}

/** The answer of `lookup` (the shape NarCache.lookup had, so the daemon's counters apply). */
export type TreeLookup =
  | { state: 'ok'; tree: StoredTree }
  | { state: 'absent' }
  /** It was there but damaged or checked against another narinfo; it has been dropped. */
  | { state: 'damaged'; error: NarfsError };

export interface TreeStoreOptions {
  maxCount?: number;
  maxBytes?: number;
  logger?: Logger;
}

const MAGIC = Buffer.from('NARFSTR\x01', 'latin1');
const HEADER = MAGIC.length + 1 + 32;
const SOURCES: readonly TreeSource[] = ['signed', 'nar'];

export class TreeStore {
  readonly dir: string;
  readonly #tmp: string;
  readonly #log: Logger;
  readonly #maxCount: number;
  readonly #maxBytes: number;
  /** name → size on disk and last use; insertion order is LRU order (re-inserted on use). */
  readonly #entries = new Map<string, number>();
  #bytes = 0;
  readonly #pins = new Map<string, number>();

  private constructor(cacheDir: string, options: TreeStoreOptions) {
    this.dir = join(cacheDir, 'trees');
    this.#tmp = join(cacheDir, 'tmp');
    this.#log = options.logger ?? silentLogger;
    this.#maxCount = options.maxCount ?? 100_000;
    this.#maxBytes = options.maxBytes ?? 512 * 1024 * 1024;
  }

  static async open(cacheDir: string, options: TreeStoreOptions = {}): Promise<TreeStore> {
    const store = new TreeStore(cacheDir, options);
    try {
      await mkdir(store.dir, { recursive: true });
      await mkdir(store.#tmp, { recursive: true });
      const found: Array<{ name: string; size: number; mtime: number }> = [];
      for (const name of await readdir(store.dir)) {
        const st = await stat(join(store.dir, name)).catch(() => undefined);
        if (!isStorePathBase(name) || !st?.isFile()) {
          await rm(join(store.dir, name), { recursive: true, force: true });
          continue;
        }
        found.push({ name, size: st.size, mtime: st.mtimeMs });
      }
      found.sort((a, b) => a.mtime - b.mtime);
      for (const f of found) {
        store.#entries.set(f.name, f.size);
        store.#bytes += f.size;
      }
    } catch (err) {
      throw cacheError(err, `cannot open the tree store in ${cacheDir}`);
    }
    await store.#trim();
    return store;
  }

  #path(name: string): string {
    return join(this.dir, name);
  }

  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** Store path basenames with a tree. */
  names(): string[] {
    return [...this.#entries.keys()];
  }

  stats(): { trees: number; bytes: number; maxCount: number; maxBytes: number } {
    return { trees: this.#entries.size, bytes: this.#bytes, maxCount: this.#maxCount, maxBytes: this.#maxBytes };
  }

  /**
   * The tree of the store path of `narInfo` if one is stored and was checked against this
   * very narinfo (store path, NarHash, NarSize); a damaged or stale one is dropped (logged).
   */
  async lookup(narInfo: Pick<NarInfo, 'storePath' | 'narHash' | 'narSize'>): Promise<TreeLookup> {
    const name = storePathBase(narInfo.storePath);
    if (!this.#entries.has(name)) return { state: 'absent' };
    let bytes: Buffer;
    try {
      bytes = await readFile(this.#path(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.#forget(name);
        return { state: 'absent' };
      }
      throw cacheError(err, `cannot read the tree of ${name}`);
    }
    let tree: StoredTree;
    try {
      tree = decodeTree(bytes);
      checkNarIndexBinding(tree.index, narInfo);
    } catch (err) {
      const stale = err instanceof NarfsError && err.code === 'ERR_INDEX_BINDING';
      const error = stale ? err : new NarfsError('ERR_CACHE_CORRUPT', `the tree of ${name} is damaged; dropped`, { cause: err });
      this.#log.warn(stale ? 'the stored tree was checked against another narinfo; dropped' : 'the stored tree is damaged; dropped', { path: name, err: error });
      await this.drop(name);
      return { state: 'damaged', error };
    }
    this.#use(name);
    return { state: 'ok', tree };
  }

  /** Stores the tree of `index.storePath` (verified by the caller, as `source` says). */
  async put(index: NarIndex, source: TreeSource, encoded?: Buffer): Promise<void> {
    const name = storePathBase(parseStorePath(index.storePath));
    const body = encoded ?? encodeNarIndex(index);
    const header = Buffer.alloc(HEADER);
    MAGIC.copy(header, 0);
    header[MAGIC.length] = SOURCES.indexOf(source);
    createHash('sha256').update(body).digest().copy(header, MAGIC.length + 1);
    const tmp = join(this.#tmp, `tree.${process.pid}.${randomBytes(6).toString('hex')}`);
    try {
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writev([header, body]);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.#path(name));
      await syncDir(this.dir);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      throw cacheError(err, `cannot store the tree of ${name}`);
    }
    this.#bytes += header.length + body.length - (this.#entries.get(name) ?? 0);
    this.#entries.delete(name);
    this.#entries.set(name, header.length + body.length);
    await this.#trim();
  }

  /** Re-reads every tree and drops the ones that do not decode or fail their checksum. */
  async verify(): Promise<{ checked: number; dropped: Array<{ name: string; error: NarfsError }> }> {
    const out = { checked: 0, dropped: [] as Array<{ name: string; error: NarfsError }> };
    for (const name of this.names()) {
      let bytes: Buffer;
      try {
        bytes = await readFile(this.#path(name));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          this.#forget(name);
          continue;
        }
        throw cacheError(err, `cannot read the tree of ${name}`);
      }
      out.checked++;
      try {
        const tree = decodeTree(bytes);
        if (storePathBase(parseStorePath(tree.index.storePath)) !== name) throw new NarfsError('ERR_CACHE_CORRUPT', `it describes ${tree.index.storePath}`);
      } catch (err) {
        out.dropped.push({ name, error: new NarfsError('ERR_CACHE_CORRUPT', `the tree of ${name} is damaged; dropped`, { cause: err }) });
        await this.drop(name);
      }
    }
    return out;
  }

  /** Keeps the tree of `name` from eviction until the returned function is called. */
  pin(name: string): () => void {
    this.#pins.set(name, (this.#pins.get(name) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#pins.get(name) ?? 1) - 1;
      if (n <= 0) this.#pins.delete(name);
      else this.#pins.set(name, n);
    };
  }

  async drop(name: string): Promise<void> {
    this.#forget(name);
    try {
      await rm(this.#path(name), { force: true });
    } catch (err) {
      throw cacheError(err, `cannot remove the tree of ${name}`);
    }
  }

  #forget(name: string): void {
    const size = this.#entries.get(name);
    if (size === undefined) return;
    this.#entries.delete(name);
    this.#bytes -= size;
  }

  #use(name: string): void {
    const size = this.#entries.get(name);
    if (size === undefined) return;
    this.#entries.delete(name);
    this.#entries.set(name, size);
  }

  async #trim(): Promise<void> {
    if (this.#entries.size <= this.#maxCount && this.#bytes <= this.#maxBytes) return;
    const victims: string[] = [];
    let count = this.#entries.size;
    let bytes = this.#bytes;
    for (const [name, size] of this.#entries) {
      if (count <= this.#maxCount && bytes <= this.#maxBytes) break;
      if (this.#pins.has(name)) continue;
      victims.push(name);
      count--;
      bytes -= size;
    }
    for (const name of victims) await this.drop(name);
  }
}

/** Parses a tree file (see the header); throws on any damage. */
export function decodeTree(bytes: Buffer): StoredTree {
  if (bytes.length < HEADER || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new NarfsError('ERR_CACHE_CORRUPT', 'not a narfs tree file');
  }
  const source = SOURCES[bytes[MAGIC.length]!];
  if (source === undefined) throw new NarfsError('ERR_CACHE_CORRUPT', `unknown tree source ${bytes[MAGIC.length]}`);
  const body = bytes.subarray(HEADER);
  if (!createHash('sha256').update(body).digest().equals(bytes.subarray(MAGIC.length + 1, HEADER))) {
    throw new NarfsError('ERR_CACHE_CORRUPT', 'the tree does not match its checksum');
  }
  return { index: parseNarIndex(body), source };
}

async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
