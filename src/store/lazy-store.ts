/**
 * LazyStore: what the filesystem asks of the store — the node of a store path, and bytes
 * at a NAR offset — answered lazily and verified.
 *
 * Resolution of `<hash>-<name>`: verified narinfo (PathInfoService), then its listing from
 * the first of: the NarCache (verified), the metadata cache (`.ls` seen earlier), the
 * datalake's `<hash>.ls`, or — when the datalake publishes none — the NAR itself, fetched
 * and verified. So `ls` and `stat` cost a narinfo and a listing, and the first read of a
 * file costs one verified NAR fetch for the whole store path.
 *
 * Invariants:
 * - File contents come only from verified NARs in the NarCache (pread at narOffset).
 *   Open file handles on cached NARs are shared and bounded in number.
 * - A cached NAR is checked when it is opened (its size against NarSize, by fstat on the
 *   very descriptor that serves the reads): a damaged one is dropped and fetched again
 *   once, instead of failing every read for the life of the cache. A read that comes up
 *   short later (the file was truncated while open) does the same.
 * - A NAR that turns out absent or wrong (ERR_NAR_MISSING, ERR_NAR_URL, ERR_NAR_HASH_MISMATCH,
 *   ERR_NAR_SIZE_MISMATCH, a bad NAR, a corrupt compressed file) makes the store ask the
 *   datalakes for the narinfo again (PathInfoService.refresh): the NAR URL is not covered
 *   by the signature, so a narinfo served once with a wrong URL must not break the path
 *   for good. If the new narinfo differs, the fetch is tried once more with it.
 * - A `.ls` is fetched from the datalake whose narinfo was used, through the DatalakeSet
 *   (`getBytesFrom`), so a datalake known to be down fails fast and a failure counts
 *   against its health; a listing that cannot be had is never an error (the NAR tells).
 *   Cached narinfos, listings and NARs need no datalake: with every datalake down, what
 *   the cache holds is still served.
 */
import { isUtf8 } from 'node:buffer';
import { open, type FileHandle } from 'node:fs/promises';
import { cacheError } from '../cache/cache-error.js';
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ContentReader, RootNodes } from '../fs/store-filesystem.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import type { NarCache } from '../cache/nar-cache.js';
import { listingsEqual, parseListingJson, type NarNode } from '../nix/nar-listing.js';
import { parseStorePathBase } from '../nix/store-path.js';
import { hashEquals } from '../nix/hash.js';
import type { ErrorCode } from '../errors.js';
import type { DatalakeSet } from '../datalake/datalake-set.js';
import type { PathInfo, PathInfoService } from './path-info-service.js';
import type { Materialised, Materialiser } from './materialiser.js';

export interface LazyStoreOptions {
  logger: Logger;
  /** The set PathInfos come from: `.ls` files are fetched through its health accounting. */
  datalakes: DatalakeSet;
  /** Open NAR files kept for reads. */
  maxOpenFiles?: number;
}

/** Failures of a NAR that a fresh narinfo may cure (its URL, hash or size was wrong). */
const NAR_FAULTS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_NAR_MISSING', 'ERR_NAR_URL', 'ERR_NAR_HASH_MISMATCH', 'ERR_NAR_SIZE_MISMATCH', 'ERR_DECOMPRESS',
  'ERR_COMPRESSION_UNSUPPORTED', 'ERR_NAR_MAGIC', 'ERR_NAR_PADDING', 'ERR_NAR_TAG', 'ERR_NAR_FILE_TYPE',
  'ERR_NAR_EXECUTABLE', 'ERR_NAR_NAME', 'ERR_NAR_UNSORTED', 'ERR_NAR_SYMLINK', 'ERR_NAR_LIMIT', 'ERR_NAR_DEPTH',
  'ERR_NAR_TRAILING', 'ERR_NAR_TRUNCATED',
]);

interface OpenNar {
  handle: Promise<FileHandle>;
  users: number;
  lastUse: number;
}

export class LazyStore implements RootNodes, ContentReader {
  readonly #infos: PathInfoService;
  readonly #materialiser: Materialiser;
  readonly #meta: MetadataCache;
  readonly #nars: NarCache;
  readonly #opts: LazyStoreOptions;
  readonly #known = new Set<string>();
  /** Listing shown to the filesystem per store path, and whether it is verified. */
  readonly #shown = new Map<string, { listing: NarNode; verified: boolean }>();
  readonly #open = new Map<string, OpenNar>();
  /**
   * Store paths whose fetch in flight already outlasted a reader's deadline: later readers
   * fail at once until that fetch ends, instead of each waiting a whole deadline (the
   * kernel retries a failed readahead with a second read, for one).
   */
  readonly #overdue = new Set<string>();
  /** NarSize of store paths whose cached NAR is verified and complete (for contentFile). */
  readonly #complete = new Map<string, number>();
  readonly #dropListeners: Array<(name: string, path: string) => void> = [];

  constructor(infos: PathInfoService, materialiser: Materialiser, meta: MetadataCache, nars: NarCache, options: LazyStoreOptions) {
    this.#infos = infos;
    this.#materialiser = materialiser;
    this.#meta = meta;
    this.#nars = nars;
    this.#opts = options;
  }

  /** Loads the names this cache already knows (narinfos and NARs), for the root listing. */
  async loadKnown(): Promise<void> {
    for (const n of await this.#meta.knownNames()) this.#known.add(n);
    for (const n of await this.#nars.cachedNames()) this.#known.add(n);
  }

  /** Adds names to the root listing (registered paths). */
  addKnown(names: Iterable<string>): void {
    for (const n of names) this.#known.add(n);
  }

  knownNames(): Iterable<string> {
    return this.#known;
  }

  async resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined> {
    const info = await this.#infos.get(parseStorePathBase(name), signal);
    if (!info) return undefined;
    this.#known.add(name);
    const shown = this.#shown.get(name);
    if (shown) return shown.listing;
    const hashPart = info.narInfo.storePath.hashPart;
    const cached = await this.#nars.lookup(name, { narHash: info.narInfo.narHash, narSize: info.narInfo.narSize });
    if (cached.state === 'ok') {
      this.#complete.set(name, info.narInfo.narSize);
      return this.#show(name, cached.listing, true);
    }
    if (cached.state === 'damaged') this.#opts.logger.warn('cached NAR is damaged; it will be fetched again', { path: name, err: cached.error });
    const seen = await this.#meta.getListing(hashPart);
    if (seen !== undefined) return this.#show(name, parseListingJson(listingFromMeta(seen)), false);
    const published = await this.#fetchListing(info, signal);
    if (published) {
      await this.#meta.putListing(hashPart, published.json).catch((err: unknown) => {
        // Remembering it is an optimisation; the listing itself was checked and is served.
        this.#opts.logger.warn('cannot store a listing in the metadata cache; serving it anyway', { path: name, err: toNarfsError(err, 'ERR_CACHE_IO') });
      });
      return this.#show(name, published.listing, false);
    }
    const m = await this.#materialiser.ensure(info, signal);
    this.#complete.set(name, info.narInfo.narSize);
    return this.#show(name, m.listing, true);
  }

  /** The whole contents of a store path that is one regular file (e.g. a `.drv`). */
  async readFile(name: string, signal: AbortSignal): Promise<Buffer> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    if (node.type !== 'regular') throw new NarfsError('ERR_IS_DIRECTORY', `${name} is not a single regular file`);
    return node.size === 0 ? Buffer.alloc(0) : this.read(name, node.narOffset, node.size, signal);
  }

  /** The verified, complete NAR of `name` on disk, or undefined (ContentReader.contentFile). */
  contentFile(name: string): { path: string; size: number } | undefined {
    const size = this.#complete.get(name);
    return size === undefined ? undefined : { path: this.#nars.narPath(name), size };
  }

  /** Calls `listener` whenever the cached bytes of a store path are dropped (damaged, invalidated). */
  watchDropped(listener: (name: string, path: string) => void): void {
    this.#dropListeners.push(listener);
  }

  prefetch(name: string): void {
    this.#materialise(name).catch(() => {
      // Reported by the materialiser; the read that needs the bytes gets the error.
    });
  }

  async read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    try {
      return await this.#readCached(name, narOffset, length, signal);
    } catch (err) {
      if (!isNarfsError(err, 'ERR_CACHE_CORRUPT')) throw err;
      // The cached NAR was damaged after it was verified: drop it, fetch it, read again (once).
      this.#opts.logger.warn('cached NAR is damaged; fetching it again', { path: name, err });
      await this.#forget(name);
      return this.#readCached(name, narOffset, length, signal);
    }
  }

  async #readCached(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    const narSize = await this.#materialise(name, signal);
    let entry = this.#open.get(name);
    const isNew = !entry;
    if (!entry) {
      const handle = this.#openChecked(name, narSize);
      entry = { handle, users: 0, lastUse: 0 };
      this.#open.set(name, entry);
      const mine = entry;
      handle.catch(() => {
        if (this.#open.get(name) === mine) this.#open.delete(name);
      });
    }
    entry.users++;
    entry.lastUse = Date.now();
    // Only after this reader holds its entry: eviction closes idle handles only.
    if (isNew) this.#evict();
    try {
      const fh = await entry.handle;
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, narOffset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      if (done < length) throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the cached NAR is shorter than its listing`);
      return buf;
    } catch (err) {
      throw isNarfsError(err) ? err : cacheError(err, `${name}: reading the cached NAR failed`);
    } finally {
      entry.users--;
    }
  }

  /** Opens a cached NAR and checks, on that descriptor, that it still has NarSize bytes. */
  async #openChecked(name: string, narSize: number): Promise<FileHandle> {
    let fh: FileHandle;
    try {
      fh = await open(this.#nars.narPath(name), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the cached NAR has disappeared`, { cause: err });
      }
      throw cacheError(err, `${name}: cannot open the cached NAR`);
    }
    try {
      const st = await fh.stat();
      if (st.size !== narSize) {
        throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the cached NAR is ${st.size} bytes, NarSize is ${narSize}`);
      }
      return fh;
    } catch (err) {
      await fh.close().catch(() => {});
      throw isNarfsError(err) ? err : cacheError(err, `${name}: cannot stat the cached NAR`);
    }
  }

  /** Drops what this process and the cache know of `name`'s bytes (not its listing). */
  async #forget(name: string): Promise<void> {
    this.#complete.delete(name);
    for (const l of this.#dropListeners) l(name, this.#nars.narPath(name));
    const entry = this.#open.get(name);
    if (entry) {
      this.#open.delete(name);
      entry.handle.then((fh) => fh.close()).catch(() => {});
    }
    const shown = this.#shown.get(name);
    if (shown) this.#shown.set(name, { listing: shown.listing, verified: false });
    await this.#nars.drop(name);
  }

  /**
   * Drops the cached bytes of `name` (after `narfs verify-cache` found them bad), so the
   * next read fetches them again.
   */
  async invalidate(name: string): Promise<void> {
    await this.#forget(name);
  }

  /** Makes sure `name`'s verified NAR is cached; returns its NarSize. */
  async #materialise(name: string, signal?: AbortSignal): Promise<number> {
    const shown = this.#shown.get(name);
    const sp = parseStorePathBase(name);
    if (shown?.verified) {
      const info = await this.#infos.get(sp, signal);
      if (info) return info.narInfo.narSize;
    }
    if (this.#overdue.has(name)) {
      throw new NarfsError('ERR_DEADLINE', `${name}: its fetch has already outlasted a reader's deadline and is still running`);
    }
    let info = await this.#infos.get(sp, signal);
    if (!info) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake any more`);
    try {
      let m: Materialised;
      try {
        m = await this.#materialiser.ensure(info, signal);
      } catch (err) {
        if (!isNarfsError(err) || !NAR_FAULTS.has(err.code)) throw err;
        // The narinfo in hand led to a bad or missing NAR: ask the datalakes again.
        const fresh = await this.#infos.refresh(sp, signal);
        if (!fresh || sameNar(fresh, info)) throw err;
        this.#opts.logger.warn('the NAR of a narinfo failed; a fresh narinfo points elsewhere, trying it', {
          path: name, err, url: fresh.narInfo.url,
        });
        info = fresh;
        m = await this.#materialiser.ensure(info, signal);
      }
      if (shown && !listingsEqual(shown.listing, m.listing)) {
        // What was shown came from a .ls that does not describe the (verified) NAR. The
        // inodes handed out cannot be taken back, so this mount keeps failing the path;
        // the bad listing is dropped so a restart serves the NAR's own.
        await this.#meta.deleteListing(info.narInfo.storePath.hashPart).catch(() => {});
        throw new NarfsError('ERR_LISTING_MISMATCH', `${name}: the published .ls listing does not describe the NAR`);
      }
      // Not brought back if the filesystem released the path meanwhile (`release`).
      if (shown === undefined || this.#shown.get(name) === shown) {
        this.#shown.set(name, { listing: shown?.listing ?? m.listing, verified: true });
      }
      this.#complete.set(name, info.narInfo.narSize);
      return info.narInfo.narSize;
    } catch (err) {
      const running = this.#materialiser.inFlight(name);
      if (running && isNarfsError(err, 'ERR_DEADLINE') && !this.#overdue.has(name)) {
        this.#overdue.add(name);
        void running.then(() => this.#overdue.delete(name));
      }
      throw err;
    }
  }

  async #fetchListing(info: PathInfo, signal: AbortSignal): Promise<{ listing: NarNode; json: string } | undefined> {
    const rel = `${info.narInfo.storePath.hashPart}.ls`;
    let bytes: Buffer | undefined;
    try {
      bytes = await this.#opts.datalakes.getBytesFrom(info.datalake, rel, { signal });
    } catch (err) {
      // A listing is an optimisation: without it the NAR itself tells the structure.
      this.#opts.logger.warn('listing fetch failed; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
    if (!bytes) return undefined;
    const json = listingToMeta(bytes);
    try {
      const listing = parseListingJson(bytes);
      checkListingBounds(listing, info.narInfo.narSize);
      return { listing, json };
    } catch (err) {
      this.#opts.logger.warn('listing rejected; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
  }

  /**
   * The filesystem holds no inode of `name` any more: forget the listing shown for it
   * (RootNodes.release). A later `resolve` loads it again (cache, metadata cache, `.ls`,
   * NAR), so memory follows what the kernel holds, not every path ever looked at.
   */
  release(name: string): void {
    this.#shown.delete(name);
  }

  #show(name: string, listing: NarNode, verified: boolean): NarNode {
    this.#shown.set(name, { listing, verified });
    return listing;
  }

  #evict(): void {
    const max = this.#opts.maxOpenFiles ?? 256;
    if (this.#open.size <= max) return;
    const idle = [...this.#open.entries()].filter(([, e]) => e.users === 0).sort((a, b) => a[1].lastUse - b[1].lastUse);
    for (const [name, e] of idle.slice(0, this.#open.size - max)) {
      this.#open.delete(name);
      e.handle.then((fh) => fh.close()).catch(() => {});
    }
  }

  async close(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(all.map((e) => e.handle.then((fh) => fh.close()).catch(() => {})));
  }
}

/** A published listing must at least fit in the NAR it claims to describe. */
function checkListingBounds(node: NarNode, narSize: number): void {
  if (node.type === 'regular') {
    if (node.narOffset + node.size > narSize) {
      throw new NarfsError('ERR_LISTING_PARSE', 'a file of the listing lies beyond NarSize');
    }
  } else if (node.type === 'directory') {
    for (const child of node.entries.values()) checkListingBounds(child, narSize);
  }
}

/** Whether two narinfos lead to the same NAR bytes (same datalake, URL, hash and size). */
function sameNar(a: PathInfo, b: PathInfo): boolean {
  return a.datalake === b.datalake && a.narInfo.url === b.narInfo.url && a.narInfo.compression === b.narInfo.compression
    && a.narInfo.narSize === b.narInfo.narSize && hashEquals(a.narInfo.narHash, b.narInfo.narHash);
}

/**
 * The metadata cache keeps listings as text. A `.ls` that is UTF-8 is kept as its text (as
 * before names were bytes); one that is not (names that are not UTF-8) is kept as the
 * marker NUL + one char per byte, which no JSON text starts with.
 */
function listingToMeta(bytes: Buffer): string {
  return isUtf8(bytes) ? bytes.toString('utf8') : `\u0000${bytes.toString('latin1')}`;
}

function listingFromMeta(text: string): Uint8Array | string {
  return text.startsWith('\u0000') ? Buffer.from(text.slice(1), 'latin1') : text;
}
