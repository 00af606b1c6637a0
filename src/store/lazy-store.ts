/**
 * LazyStore: what the filesystem asks of the store — the node of a store path, and bytes
 * at a NAR offset — answered lazily and verified.
 *
 * Resolution of `<hash>-<name>`: verified narinfo (PathInfoService), then its listing from
 * the first of: the TreeStore (verified, its files held whole in the BlobStore), the metadata cache (`.ls` seen earlier), the
 * datalake's `<hash>.ls`, or — when the datalake publishes none — the NAR itself, fetched
 * and verified. So `ls` and `stat` cost a narinfo and a listing, and the first read of a
 * file costs one verified NAR fetch for the whole store path.
 *
 * Invariants:
 * - File contents come only from verified files in the BlobStore, found by SHA-256
 *   through the verified tree of the store path (findFile at narOffset). (Transition
 *   until the per-file read path lands: the whole NAR is materialised, no ranged chunks.)
 * - A cached file is checked before it is served: re-hashed once per process if an earlier
 *   process wrote it (BlobStore.verifyBlob), and its size checked on the descriptor each
 *   read uses (BlobStore.readRange); a damaged or evicted one makes the store path be
 *   fetched again once, instead of failing every read for the life of the cache.
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
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ContentReader, RootNodes } from '../fs/store-filesystem.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import type { BlobStore } from '../cache/blob-store.js';
import type { TreeStore } from '../cache/tree-store.js';
import { findFile, type NarIndex } from '../nix/nar-index.js';
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
  /** Unused since the cache holds files (kept for the configuration's sake). */
  maxOpenFiles?: number;
}

/** Failures of a NAR that a fresh narinfo may cure (its URL, hash or size was wrong). */
const NAR_FAULTS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_NAR_MISSING', 'ERR_NAR_URL', 'ERR_NAR_HASH_MISMATCH', 'ERR_NAR_SIZE_MISMATCH', 'ERR_DECOMPRESS',
  'ERR_COMPRESSION_UNSUPPORTED', 'ERR_NAR_MAGIC', 'ERR_NAR_PADDING', 'ERR_NAR_TAG', 'ERR_NAR_FILE_TYPE',
  'ERR_NAR_EXECUTABLE', 'ERR_NAR_NAME', 'ERR_NAR_UNSORTED', 'ERR_NAR_SYMLINK', 'ERR_NAR_LIMIT', 'ERR_NAR_DEPTH',
  'ERR_NAR_TRAILING', 'ERR_NAR_TRUNCATED',
]);

export class LazyStore implements RootNodes, ContentReader {
  readonly #infos: PathInfoService;
  readonly #materialiser: Materialiser;
  readonly #meta: MetadataCache;
  readonly #blobs: BlobStore;
  readonly #trees: TreeStore;
  readonly #opts: LazyStoreOptions;
  readonly #known = new Set<string>();
  /** Listing shown to the filesystem per store path, and whether it is verified. */
  readonly #shown = new Map<string, { listing: NarNode; verified: boolean }>();
  /**
   * Store paths whose fetch in flight already outlasted a reader's deadline: later readers
   * fail at once until that fetch ends, instead of each waiting a whole deadline (the
   * kernel retries a failed readahead with a second read, for one).
   */
  readonly #overdue = new Set<string>();
  /** The verified tree of store paths whose files were all held whole when last checked. */
  readonly #complete = new Map<string, NarIndex>();
  readonly #dropListeners: Array<(name: string, path: string) => void> = [];

  constructor(infos: PathInfoService, materialiser: Materialiser, meta: MetadataCache, blobs: BlobStore, trees: TreeStore, options: LazyStoreOptions) {
    this.#infos = infos;
    this.#materialiser = materialiser;
    this.#meta = meta;
    this.#blobs = blobs;
    this.#trees = trees;
    this.#opts = options;
  }

  /** Loads the names this cache already knows (narinfos and NARs), for the root listing. */
  async loadKnown(): Promise<void> {
    for (const n of await this.#meta.knownNames()) this.#known.add(n);
    for (const n of this.#trees.names()) this.#known.add(n);
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
    const cached = await this.#materialiser.cached(info);
    if (cached) {
      this.#complete.set(name, cached.index);
      return this.#show(name, cached.listing, true);
    }
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
    this.#complete.set(name, m.index);
    return this.#show(name, m.listing, true);
  }

  /** The whole contents of a store path that is one regular file (e.g. a `.drv`). */
  async readFile(name: string, signal: AbortSignal): Promise<Buffer> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    if (node.type !== 'regular') throw new NarfsError('ERR_IS_DIRECTORY', `${name} is not a single regular file`);
    return node.size === 0 ? Buffer.alloc(0) : this.read(name, node.narOffset, node.size, signal);
  }

  /**
   * ContentReader.contentFile names one local file holding a store path's whole NAR; the
   * cache holds files, not NARs, so there is none (until the per-file read path lands).
   */
  contentFile(_name: string): { path: string; size: number } | undefined {
    return undefined;
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
    const index = await this.#materialise(name, signal);
    const file = findFile(index, narOffset);
    if (!file || narOffset + length > file.narOffset + file.size) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `${name}: ${length} bytes at NAR offset ${narOffset} are not within one file`);
    }
    if (this.#blobs.completePath(file.sha256, file.size) === undefined) {
      throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: a file at NAR offset ${file.narOffset} is no longer in the cache`);
    }
    const unpin = this.#blobs.pin(file.sha256);
    try {
      if (!this.#blobs.isVerified(file.sha256) && !(await this.#blobs.verifyBlob(file.sha256, signal))) {
        throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the cached file at NAR offset ${file.narOffset} does not hash to its name`);
      }
      return await this.#blobs.readRange(file.sha256, file.size, narOffset - file.narOffset, length);
    } finally {
      unpin();
    }
  }

  /** Drops what this process knows of `name`'s bytes (not its listing). */
  async #forget(name: string): Promise<void> {
    this.#complete.delete(name);
    const shown = this.#shown.get(name);
    if (shown) this.#shown.set(name, { listing: shown.listing, verified: false });
  }

  /**
   * Drops the cached bytes of `name` (after `narfs verify-cache` found them bad), so the
   * next read fetches them again.
   */
  async invalidate(name: string): Promise<void> {
    await this.#forget(name);
  }

  /** Makes sure `name`'s verified files are cached; returns its tree. */
  async #materialise(name: string, signal?: AbortSignal): Promise<NarIndex> {
    const shown = this.#shown.get(name);
    const sp = parseStorePathBase(name);
    const known = this.#complete.get(name);
    if (shown?.verified && known) return known;
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
      this.#complete.set(name, m.index);
      return m.index;
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
    this.#complete.delete(name);
  }

  #show(name: string, listing: NarNode, verified: boolean): NarNode {
    this.#shown.set(name, { listing, verified });
    return listing;
  }

  async close(): Promise<void> {
    this.#complete.clear();
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
