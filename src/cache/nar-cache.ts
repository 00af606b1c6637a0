/**
 * NarCache: verified, uncompressed NARs on disk, one file per store path, with the
 * listing parsed from that very NAR and the NarHash/NarSize it was verified against
 * beside it.
 *
 * Layout under `<cache-dir>`:
 *   nar/<hash>-<name>.nar            the NAR, byte-identical to `nix-store --dump`
 *   nar/<hash>-<name>.listing.json   its listing (`.ls` form, narOffsets into the file)
 *   nar/<hash>-<name>.verified.json  {"version":1,"narHash":"sha256:…","narSize":N}
 *   tmp/                             downloads in progress (emptied at start)
 *
 * Invariants:
 * - A `.nar` file is renamed into place only after its bytes hashed to the narinfo's
 *   NarHash and its length was NarSize; it is written in tmp/ and fsynced, and its
 *   listing and record are renamed into place before it, so a crash never leaves a
 *   partial or unverified entry. The `.nar` rename is the commit point; `drop` removes
 *   it first.
 * - What was verified once can still rot on disk (a truncated file, a flipped bit, a
 *   listing edited by hand). `lookup` checks what is cheap on every open — the NAR's size
 *   against NarSize, the record against the narinfo in force, the listing's grammar and
 *   bounds — and drops a damaged entry, so the caller fetches it again instead of failing
 *   for ever. `verify` re-hashes a whole NAR against its record (`narfs verify-cache`):
 *   a flipped bit is found there, not on every read.
 * - A full disk is ERR_CACHE_FULL, any other failure of the cache directory ERR_CACHE_IO
 *   (cache-error.ts); a failed write leaves nothing behind in nar/ or tmp/.
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { NarfsError } from '../errors.js';
import { formatHash, hashEquals, parseHash, type Hash } from '../nix/hash.js';
import { parseListingJson, type NarNode } from '../nix/nar-listing.js';
import { cacheError } from './cache-error.js';

/** What a NAR was verified against. */
export interface NarRecord {
  narHash: Hash;
  narSize: number;
}

export interface NarTemp {
  readonly path: string;
  readonly handle: FileHandle;
  /** fsyncs, writes the listing and the record, renames the NAR into place. */
  commit(listingJson: Uint8Array, record: NarRecord): Promise<void>;
  /** Closes and deletes the temp file; never throws. */
  abort(): Promise<void>;
}

/** The state of one store path's entry, after the cheap checks of `lookup`. */
export type CachedNar =
  | { state: 'absent' }
  | { state: 'ok'; listing: NarNode }
  /** It was there but damaged or stale; it has been dropped. */
  | { state: 'damaged'; error: NarfsError };

/** The outcome of re-hashing one entry (`verify`). */
export type VerifyOutcome =
  | { state: 'ok'; bytes: number }
  | { state: 'absent' }
  | { state: 'damaged'; error: NarfsError };

export class NarCache {
  readonly dir: string;
  readonly #narDir: string;
  readonly #tmpDir: string;

  constructor(dir: string) {
    this.dir = dir;
    this.#narDir = join(dir, 'nar');
    this.#tmpDir = join(dir, 'tmp');
  }

  async init(): Promise<void> {
    try {
      await mkdir(this.#narDir, { recursive: true });
      await rm(this.#tmpDir, { recursive: true, force: true });
      await mkdir(this.#tmpDir, { recursive: true });
    } catch (err) {
      throw cacheError(err, `cannot prepare the cache directory ${this.dir}`);
    }
  }

  narPath(name: string): string {
    return join(this.#narDir, `${name}.nar`);
  }

  #listingPath(name: string): string {
    return join(this.#narDir, `${name}.listing.json`);
  }

  #recordPath(name: string): string {
    return join(this.#narDir, `${name}.verified.json`);
  }

  async has(name: string): Promise<boolean> {
    try {
      return (await stat(this.narPath(name))).isFile();
    } catch {
      return false;
    }
  }

  /** The listing text of a cached NAR, unchecked, or undefined when the NAR is not cached. */
  async readListing(name: string): Promise<Buffer | undefined> {
    if (!(await this.has(name))) return undefined;
    try {
      // Bytes: a listing whose names are not UTF-8 is not UTF-8 (nar-listing.ts).
      return await readFile(this.#listingPath(name));
    } catch {
      return undefined;
    }
  }

  /**
   * The entry of `name` if it may be served for a narinfo with `expected` NarHash and
   * NarSize: the NAR has exactly NarSize bytes, its record names the same NarHash and
   * NarSize, and its listing parses and lies within the NAR. Anything else is dropped and
   * reported as damaged (ERR_CACHE_CORRUPT), so the caller fetches it again.
   */
  async lookup(name: string, expected: NarRecord): Promise<CachedNar> {
    let size: number;
    try {
      const st = await stat(this.narPath(name));
      if (!st.isFile()) return this.#damaged(name, 'is not a regular file');
      size = st.size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'absent' };
      throw cacheError(err, `cannot stat the cached NAR of ${name}`);
    }
    if (size !== expected.narSize) return this.#damaged(name, `is ${size} bytes, NarSize is ${expected.narSize}`);
    const record = await this.#readRecord(name);
    if (record === undefined) return this.#damaged(name, 'has no readable record of what it was verified against');
    if (record.narSize !== expected.narSize || !hashEquals(record.narHash, expected.narHash)) {
      return this.#damaged(name, `was verified against ${formatHash(record.narHash, 'nix32')}, the narinfo now says ${formatHash(expected.narHash, 'nix32')}`);
    }
    let listing: NarNode;
    try {
      listing = parseListingJson(await readFile(this.#listingPath(name)));
      checkWithin(listing, size);
    } catch (err) {
      return this.#damaged(name, 'has a missing or corrupt listing', err);
    }
    return { state: 'ok', listing };
  }

  /**
   * Re-hashes the cached NAR of `name` against its record; a mismatch (or a record or
   * listing that cannot be read) drops the entry. Reads the file once, streaming.
   */
  async verify(name: string, signal?: AbortSignal): Promise<VerifyOutcome> {
    if (!(await this.has(name))) return { state: 'absent' };
    const record = await this.#readRecord(name);
    if (record === undefined) return this.#damaged(name, 'has no readable record of what it was verified against');
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      const stream = createReadStream(this.narPath(name), { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) });
      for await (const chunk of stream) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
    } catch (err) {
      if (signal?.aborted) throw new NarfsError('ERR_ABORTED', `verification of ${name} was cancelled`, { cause: err });
      throw cacheError(err, `cannot read the cached NAR of ${name}`);
    }
    if (bytes !== record.narSize) return this.#damaged(name, `is ${bytes} bytes, it was verified at ${record.narSize}`);
    const digest = hash.digest();
    if (record.narHash.algo !== 'sha256' || !digest.equals(record.narHash.digest)) {
      return this.#damaged(name, `hashes to sha256:${formatHash({ algo: 'sha256', digest }, 'nix32', false)}, it was verified as ${formatHash(record.narHash, 'nix32')}`);
    }
    try {
      checkWithin(parseListingJson(await readFile(this.#listingPath(name))), bytes);
    } catch (err) {
      return this.#damaged(name, 'has a missing or corrupt listing', err);
    }
    return { state: 'ok', bytes };
  }

  /** Removes an entry: the NAR first (the commit point), then its listing and record. */
  async drop(name: string): Promise<void> {
    try {
      await rm(this.narPath(name), { force: true, recursive: true });
      await rm(this.#listingPath(name), { force: true });
      await rm(this.#recordPath(name), { force: true });
    } catch (err) {
      throw cacheError(err, `cannot remove the cached NAR of ${name}`);
    }
  }

  /** Basenames of the store paths whose NAR is cached. */
  async cachedNames(): Promise<string[]> {
    const files = await readdir(this.#narDir).catch(() => [] as string[]);
    return files.filter((f) => f.endsWith('.nar')).map((f) => f.slice(0, -4));
  }

  /** Files in tmp/ (downloads in progress; after a restart, none). */
  async tempFiles(): Promise<string[]> {
    return readdir(this.#tmpDir).catch(() => [] as string[]);
  }

  async createTemp(name: string): Promise<NarTemp> {
    const path = join(this.#tmpDir, `${name}.${process.pid}.${randomBytes(4).toString('hex')}.nar`);
    let handle: FileHandle;
    try {
      handle = await open(path, 'wx', 0o644);
    } catch (err) {
      throw cacheError(err, `cannot create ${path}`);
    }
    const listingTmp = `${path}.listing`;
    const recordTmp = `${path}.verified`;
    let closed = false;
    const close = async () => {
      if (!closed) {
        closed = true;
        await handle.close();
      }
    };
    const removeTemps = async () => {
      await close().catch(() => {});
      for (const p of [path, listingTmp, recordTmp]) await rm(p, { force: true }).catch(() => {});
    };
    return {
      path,
      handle,
      commit: async (listingJson: Uint8Array, record: NarRecord) => {
        try {
          await handle.datasync();
          await close();
          await writeFile(listingTmp, listingJson, { flush: true });
          await writeFile(recordTmp, formatRecord(record), { flush: true });
          await rename(recordTmp, this.#recordPath(name));
          await rename(listingTmp, this.#listingPath(name));
          await rename(path, this.narPath(name));
          await syncDir(this.#narDir);
        } catch (err) {
          await removeTemps();
          throw cacheError(err, `cannot store the NAR of ${name}`);
        }
      },
      abort: removeTemps,
    };
  }

  async #readRecord(name: string): Promise<NarRecord | undefined> {
    try {
      return parseRecord(await readFile(this.#recordPath(name), 'utf8'));
    } catch {
      return undefined;
    }
  }

  async #damaged(name: string, why: string, cause?: unknown): Promise<{ state: 'damaged'; error: NarfsError }> {
    const error = new NarfsError('ERR_CACHE_CORRUPT', `the cached NAR of ${name} ${why}; dropped`, cause === undefined ? {} : { cause });
    await this.drop(name);
    return { state: 'damaged', error };
  }
}

function formatRecord(r: NarRecord): string {
  return JSON.stringify({ version: 1, narHash: formatHash(r.narHash, 'nix32'), narSize: r.narSize }) + '\n';
}

function parseRecord(text: string): NarRecord {
  const o = JSON.parse(text) as { version?: unknown; narHash?: unknown; narSize?: unknown };
  if (o.version !== 1 || typeof o.narHash !== 'string' || typeof o.narSize !== 'number' || !Number.isSafeInteger(o.narSize)) {
    throw new Error('not a NAR record');
  }
  return { narHash: parseHash(o.narHash), narSize: o.narSize };
}

/** Every file of the listing lies inside a NAR of `size` bytes. */
function checkWithin(node: NarNode, size: number): void {
  if (node.type === 'regular') {
    if (node.narOffset + node.size > size) throw new NarfsError('ERR_CACHE_CORRUPT', 'a file of the listing lies beyond the NAR');
  } else if (node.type === 'directory') {
    for (const child of node.entries.values()) checkWithin(child, size);
  }
}

/** fsync of a directory, so renames into it survive a power cut. */
async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
