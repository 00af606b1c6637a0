/**
 * Materialiser: fetches a store path's NAR, decompresses it, and verifies it while it
 * streams, then commits it to the NarCache.
 *
 * Invariants:
 * - Bytes are served only from the NarCache, so only after NarSize and NarHash matched
 *   (what Nix checks on substitution: "hash mismatch importing path", store-api.cc) and the
 *   NAR parsed strictly; a mismatch leaves nothing in the cache and is reported once with
 *   its code (ERR_NAR_HASH_MISMATCH, ERR_NAR_SIZE_MISMATCH, ERR_NAR_*, ERR_DECOMPRESS…).
 * - The listing returned is parsed from the verified NAR itself; callers that showed a
 *   `.ls` listing before compare it (LazyStore), whichever fetch they joined.
 * - One fetch per store path at a time, shared by all readers (single flight); the fetch
 *   is not tied to any one reader's deadline, only to shutdown. Transient datalake
 *   failures are retried a bounded number of times.
 * - Memory is bounded: the stream flows through with back-pressure, never buffered whole.
 */
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { NarfsError, toNarfsError, type ErrorCode } from '../errors.js';
import { raceSignal, sleep } from '../deadline.js';
import type { Logger } from '../log.js';
import type { NarCache, NarTemp } from '../cache/nar-cache.js';
import { createDecompressor } from '../compression/decompress.js';
import { NarParser } from '../nix/nar-parser.js';
import { listingToJson, parseListingJson, type NarNode } from '../nix/nar-listing.js';
import { formatHash } from '../nix/hash.js';
import { storePathBase } from '../nix/store-path.js';
import type { PathInfo } from './path-info-service.js';

export interface MaterialiserOptions {
  logger: Logger;
  /**
   * A fetch that moves no byte for this long is abandoned (ERR_DATALAKE_TIMEOUT), whatever
   * the datalake: a hung file:// mount or a server trickling a byte now and then must not
   * hold a store path forever. Default 60 s.
   */
  stallMs?: number;
  /** Attempts per fetch for transient datalake failures. */
  attempts?: number;
  /** Aborted on shutdown: fetches in flight stop and clean up. */
  signal?: AbortSignal;
}

export interface Materialised {
  narPath: string;
  listing: NarNode;
}

const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_DATALAKE_UNAVAILABLE', 'ERR_DATALAKE_TIMEOUT', 'ERR_DATALAKE_TRUNCATED', 'ERR_DATALAKE_HTTP', 'ERR_DEADLINE',
]);

export class Materialiser {
  readonly #cache: NarCache;
  readonly #opts: MaterialiserOptions;
  readonly #inflight = new Map<string, Promise<Materialised>>();
  /** Counts NAR fetches started (tests assert single flight with it). */
  fetches = 0;

  constructor(cache: NarCache, options: MaterialiserOptions) {
    this.#cache = cache;
    this.#opts = options;
  }

  /** The fetch of `name` in flight, if any (settles when it ends, never rejects). */
  inFlight(name: string): Promise<void> | undefined {
    const p = this.#inflight.get(name);
    return p?.then(() => undefined, () => undefined);
  }

  /**
   * The verified NAR of `info` and the listing parsed from it, fetching it if needed.
   * `signal` bounds only this caller's wait.
   */
  async ensure(info: PathInfo, signal?: AbortSignal): Promise<Materialised> {
    const name = storePathBase(info.narInfo.storePath);
    let pending = this.#inflight.get(name);
    if (!pending) {
      pending = this.#ensure(name, info).finally(() => this.#inflight.delete(name));
      this.#inflight.set(name, pending);
    }
    return raceSignal(pending, signal);
  }

  async #ensure(name: string, info: PathInfo): Promise<Materialised> {
    const cachedListing = await this.#cache.readListing(name);
    if (cachedListing !== undefined) {
      return { narPath: this.#cache.narPath(name), listing: parseListingJson(cachedListing) };
    }
    const attempts = Math.max(1, this.#opts.attempts ?? 3);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#fetch(name, info);
      } catch (e) {
        const err = toNarfsError(e);
        const retry = attempt < attempts && TRANSIENT.has(err.code) && !this.#opts.signal?.aborted;
        this.#opts.logger.error(retry ? 'NAR fetch failed; retrying' : 'NAR fetch failed', {
          path: name, datalake: info.datalake.displayUrl, attempt, err,
        });
        if (!retry) throw err;
        await sleep(200 * 2 ** (attempt - 1), this.#opts.signal);
      }
    }
  }

  async #fetch(name: string, info: PathInfo): Promise<Materialised> {
    const ni = info.narInfo;
    if (/^[a-z][a-z0-9+.-]*:/i.test(ni.url) || ni.url.startsWith('/')) {
      throw new NarfsError('ERR_NAR_URL', `${name}: NAR URL ${ni.url} is not relative to its datalake`);
    }
    const started = Date.now();
    this.fetches++;
    const source = await info.datalake.getStream(ni.url, { signal: this.#opts.signal });
    if (!source) throw new NarfsError('ERR_NAR_MISSING', `${info.datalake.displayUrl}/${ni.url} is missing (for ${name})`);
    let temp: NarTemp;
    const stalled = new AbortController();
    let watchdog: NodeJS.Timeout | undefined;
    try {
      temp = await this.#cache.createTemp(name);
    } catch (err) {
      source.destroy();
      throw err;
    }
    try {
      const decompressor = await createDecompressor(ni.compression, { signal: this.#opts.signal });
      const verifier = new NarVerifier(ni.narSize);
      const stallMs = this.#opts.stallMs ?? 60_000;
      watchdog = setInterval(() => {
        if (Date.now() - verifier.lastProgress > stallMs) {
          stalled.abort(new NarfsError('ERR_DATALAKE_TIMEOUT', `${name}: no NAR bytes arrived for ${stallMs} ms`));
        }
      }, Math.min(1000, stallMs));
      // Chunks are gathered and written with one writev per MiB, not one write per chunk.
      let position = 0;
      const sink = async (chunks: AsyncIterable<Buffer>) => {
        let batch: Buffer[] = [];
        let batched = 0;
        const flush = async () => {
          if (batched === 0) return;
          await temp.handle.writev(batch, position);
          position += batched;
          batch = [];
          batched = 0;
        };
        for await (const chunk of chunks) {
          batch.push(chunk);
          batched += chunk.length;
          if (batched >= 1 << 20) await flush();
        }
        await flush();
      };
      const signal = this.#opts.signal ? AbortSignal.any([this.#opts.signal, stalled.signal]) : stalled.signal;
      await pipeline(source, decompressor, verifier, sink, { signal });
      verifier.checkSize();
      const got = verifier.digest();
      if (!got.equals(ni.narHash.digest)) {
        throw new NarfsError('ERR_NAR_HASH_MISMATCH',
          `${name}: NAR hashes to sha256:${formatHash({ algo: 'sha256', digest: got }, 'nix32', false)}, narinfo says ${formatHash(ni.narHash, 'nix32')}`);
      }
      const listing = verifier.listing();
      clearInterval(watchdog);
      await temp.commit(listingToJson(listing));
      const ms = Date.now() - started;
      this.#opts.logger.info('materialised', {
        path: name, bytes: ni.narSize, ms, source: info.datalake.displayUrl, compression: ni.compression,
      });
      return { narPath: this.#cache.narPath(name), listing };
    } catch (err) {
      clearInterval(watchdog);
      await temp.abort();
      source.destroy();
      if (this.#opts.signal?.aborted) throw new NarfsError('ERR_ABORTED', `fetch of ${name} stopped by shutdown`, { cause: err });
      if (stalled.signal.aborted) throw stalled.signal.reason as NarfsError;
      // A system call that failed (ENOSPC, EIO…) is the cache's fault; anything else
      // uncoded came out of the decompressor.
      const sysErr = (err as NodeJS.ErrnoException | undefined)?.syscall !== undefined;
      throw toNarfsError(err, sysErr ? 'ERR_CACHE_IO' : 'ERR_DECOMPRESS');
    }
  }
}

/**
 * Pass-through that counts, hashes and strictly parses the uncompressed NAR. It fails
 * the stream as soon as more than NarSize bytes arrive or the grammar breaks.
 */
class NarVerifier extends Transform {
  readonly #expected: number;
  readonly #hash = createHash('sha256');
  readonly #parser = new NarParser();
  #size = 0;
  /** When the last chunk went through (for the stall watchdog). */
  lastProgress = Date.now();

  constructor(expectedSize: number) {
    super();
    this.#expected = expectedSize;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.lastProgress = Date.now();
    this.#size += chunk.length;
    if (this.#size > this.#expected) {
      cb(new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR is longer than NarSize ${this.#expected}`));
      return;
    }
    try {
      this.#hash.update(chunk);
      this.#parser.write(chunk);
    } catch (err) {
      cb(toNarfsError(err));
      return;
    }
    cb(null, chunk);
  }

  checkSize(): void {
    if (this.#size !== this.#expected) {
      throw new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR is ${this.#size} bytes, NarSize is ${this.#expected}`);
    }
  }

  /** The listing; throws if the NAR's grammar is incomplete. */
  listing(): NarNode {
    return this.#parser.end();
  }

  digest(): Buffer {
    return this.#hash.digest();
  }
}
