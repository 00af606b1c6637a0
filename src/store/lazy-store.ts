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
 * Invariant: file contents come only from verified NARs in the NarCache (pread at
 * narOffset). Open file handles on cached NARs are shared and bounded in number.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ContentReader, RootNodes } from '../fs/store-filesystem.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import type { NarCache } from '../cache/nar-cache.js';
import { listingsEqual, parseListingJson, type NarNode } from '../nix/nar-listing.js';
import { parseStorePathBase } from '../nix/store-path.js';
import type { PathInfo, PathInfoService } from './path-info-service.js';
import type { Materialiser } from './materialiser.js';

export interface LazyStoreOptions {
  logger: Logger;
  /** Open NAR files kept for reads. */
  maxOpenFiles?: number;
}

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
    const verified = await this.#nars.readListing(name);
    if (verified !== undefined) return this.#show(name, parseListingJson(verified), true);
    const seen = await this.#meta.getListing(hashPart);
    if (seen !== undefined) return this.#show(name, parseListingJson(seen), false);
    const published = await this.#fetchListing(info, signal);
    if (published) {
      await this.#meta.putListing(hashPart, published.json);
      return this.#show(name, published.listing, false);
    }
    const m = await this.#materialiser.ensure(info, signal);
    return this.#show(name, m.listing, true);
  }

  /** The whole contents of a store path that is one regular file (e.g. a `.drv`). */
  async readFile(name: string, signal: AbortSignal): Promise<Buffer> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    if (node.type !== 'regular') throw new NarfsError('ERR_IS_DIRECTORY', `${name} is not a single regular file`);
    return node.size === 0 ? Buffer.alloc(0) : this.read(name, node.narOffset, node.size, signal);
  }

  prefetch(name: string): void {
    this.#materialise(name).catch(() => {
      // Reported by the materialiser; the read that needs the bytes gets the error.
    });
  }

  async read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    await this.#materialise(name, signal);
    let entry = this.#open.get(name);
    const isNew = !entry;
    if (!entry) {
      entry = { handle: open(this.#nars.narPath(name), 'r'), users: 0, lastUse: 0 };
      this.#open.set(name, entry);
      entry.handle.catch(() => this.#open.delete(name));
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
      if (done < length) throw new NarfsError('ERR_CACHE_IO', `${name}: cached NAR is shorter than its listing`);
      return buf;
    } catch (err) {
      throw toNarfsError(err, 'ERR_CACHE_IO');
    } finally {
      entry.users--;
    }
  }

  async #materialise(name: string, signal?: AbortSignal): Promise<void> {
    const shown = this.#shown.get(name);
    if (shown?.verified) return;
    if (this.#overdue.has(name)) {
      throw new NarfsError('ERR_DEADLINE', `${name}: its fetch has already outlasted a reader's deadline and is still running`);
    }
    const info = await this.#infos.get(parseStorePathBase(name), signal);
    if (!info) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake any more`);
    try {
      const m = await this.#materialiser.ensure(info, signal);
      if (shown && !listingsEqual(shown.listing, m.listing)) {
        // What was shown came from a .ls that does not describe the (verified) NAR. The
        // inodes handed out cannot be taken back, so this mount keeps failing the path;
        // the bad listing is dropped so a restart serves the NAR's own.
        await this.#meta.deleteListing(info.narInfo.storePath.hashPart).catch(() => {});
        throw new NarfsError('ERR_LISTING_MISMATCH', `${name}: the published .ls listing does not describe the NAR`);
      }
      this.#shown.set(name, { listing: shown?.listing ?? m.listing, verified: true });
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
      bytes = await info.datalake.getBytes(rel, { signal });
    } catch (err) {
      // A listing is an optimisation: without it the NAR itself tells the structure.
      this.#opts.logger.warn('listing fetch failed; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
    if (!bytes) return undefined;
    const json = bytes.toString('utf8');
    try {
      const listing = parseListingJson(json);
      checkListingBounds(listing, info.narInfo.narSize);
      return { listing, json };
    } catch (err) {
      this.#opts.logger.warn('listing rejected; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
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
