/**
 * FileDatalake: a Nix binary cache in a local directory (`file:///dir`), read-only.
 *
 * Invariants:
 * - only async fs calls: a slow disk (NFS, virtiofs) never blocks the event loop;
 * - a relPath can never name a file outside the root (checkRelPath rejects `..`, absolute
 *   paths and URLs before any fs call);
 * - absence (ENOENT, ENOTDIR) is `undefined`; any other fs failure is
 *   ERR_DATALAKE_UNAVAILABLE with the fs error as cause, also one that ends a stream
 *   (a read failing with EIO);
 * - a missing nix-cache-info is NOT an error: Nix's LocalBinaryCacheStore would write
 *   `StoreDir: /nix/store` into it on open; we are read-only, so we assume exactly what it
 *   would have written ({storeDir: '/nix/store', priority: 50, wantMassQuery: false}).
 *   A missing root directory is ERR_NOT_BINARY_CACHE.
 * - `getRange(relPath, offset, length)` is one positioned read (pread) of the bytes
 *   [offset, offset+length) clipped at the file's end (a short read is repeated until the
 *   range or the end of the file is reached); an offset at or past the end is
 *   ERR_INVALID_ARGUMENT, as for the HTTP backends;
 * - `close()` destroys open streams with ERR_ABORTED and fails later calls with ERR_ABORTED.
 * - the stream `getStream` returns is a GuardedReadable over the file's ReadStream: a
 *   failure (EIO, abort, close()) before the caller has attached its pipeline is held, never
 *   emitted unheard, and surfaces when the caller consumes it; the file descriptor is closed
 *   at once (test/integration/datalake-unconsumed-stream.test.ts).
 */
import { constants, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { NarfsError } from '../errors.js';
import {
  applyStoreParams,
  checkRelPath,
  checkStoreDir,
  fanOutController,
  DEFAULT_PRIORITY,
  readCacheInfo,
  STORE_DIR,
  type CacheInfo,
  type Datalake,
  type GetOptions,
} from './datalake.js';
import { GuardedReadable } from './guarded-readable.js';

const ABSENT_CODES = new Set(['ENOENT', 'ENOTDIR']);

/**
 * The local directory a `file://` datalake URL names (shared by the reader and the writer),
 * and its query (store parameters). ERR_DATALAKE_URL for anything else.
 */
export function parseFileDatalakeUrl(url: string | URL): { root: string; params: URLSearchParams } {
  let u: URL;
  try {
    u = typeof url === 'string' ? new URL(url) : url;
  } catch (e) {
    throw new NarfsError('ERR_DATALAKE_URL', 'not a valid file:// URL', { cause: e });
  }
  if (u.protocol !== 'file:') throw new NarfsError('ERR_DATALAKE_URL', `not a file:// URL (${u.protocol})`);
  if (u.hostname !== '' && u.hostname !== 'localhost') {
    throw new NarfsError('ERR_DATALAKE_URL', `file:// URLs name a local directory; got host '${u.hostname}'`, {
      hint: 'Write file:///absolute/dir (three slashes).',
    });
  }
  return { root: path.resolve(fileURLToPath(new URL(u.pathname, 'file:///'))), params: u.searchParams };
}

export class FileDatalake implements Datalake {
  readonly displayUrl: string;
  /** The absolute root directory of the cache. */
  readonly root: string;
  private readonly params: URLSearchParams;
  /** Aborted by close(); every call listens to it, so it may have many listeners. */
  private readonly closer = fanOutController();
  private readonly streams = new Set<GuardedReadable>();

  constructor(url: string | URL) {
    const { root, params } = parseFileDatalakeUrl(url);
    this.params = params;
    this.root = root;
    this.displayUrl = 'file://' + this.root;
  }

  async open(options: GetOptions = {}): Promise<CacheInfo> {
    this.checkLive(options.signal);
    try {
      const st = await fsp.stat(this.root);
      if (!st.isDirectory()) throw new Error('not a directory');
    } catch (e) {
      throw new NarfsError('ERR_NOT_BINARY_CACHE', `${this.displayUrl} is not a directory`, {
        cause: e,
        hint: 'A file:// datalake is a directory written by `nix copy --to file://…`.',
      });
    }
    const bytes = await this.getBytes('nix-cache-info', options);
    const info =
      bytes === undefined
        ? { storeDir: STORE_DIR, wantMassQuery: false, priority: DEFAULT_PRIORITY }
        : readCacheInfo(bytes.toString('utf8'), this.displayUrl);
    return checkStoreDir(applyStoreParams(info, this.params, this.displayUrl), this.displayUrl);
  }

  async getBytes(relPath: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    const file = this.resolve(relPath);
    this.checkLive(options.signal);
    const signal = this.signalFor(options.signal);
    try {
      return await fsp.readFile(file, { signal });
    } catch (e) {
      return this.absentOrThrow(e, relPath, options.signal);
    }
  }

  async getStream(relPath: string, options: GetOptions = {}): Promise<Readable | undefined> {
    const file = this.resolve(relPath);
    this.checkLive(options.signal);
    let handle: fsp.FileHandle;
    try {
      // Opening first turns absence into `undefined` before a stream exists.
      handle = await fsp.open(file, constants.O_RDONLY);
    } catch (e) {
      return this.absentOrThrow(e, relPath, options.signal);
    }
    try {
      this.checkLive(options.signal);
      const st = await handle.stat();
      if (!st.isFile()) throw new Error('not a regular file');
    } catch (e) {
      await handle.close().catch(() => {});
      throw this.wrap(e, relPath, options.signal);
    }
    const source = handle.createReadStream({ autoClose: true, highWaterMark: 1 << 20 });
    const stream = new GuardedReadable(
      source,
      {
        mapError: (e) => this.wrap(e, relPath, options.signal),
        closedEarly: () => this.wrap(new Error('the file stream closed before its end'), relPath, options.signal),
      },
      { highWaterMark: 1 << 20 },
    );
    this.streams.add(stream);
    const onAbort = () => stream.fail(this.abortedError(relPath, options.signal?.reason));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    stream.once('close', () => {
      this.streams.delete(stream);
      options.signal?.removeEventListener('abort', onAbort);
    });
    return stream;
  }

  async getRange(relPath: string, offset: number, length: number, options: GetOptions = {}): Promise<Buffer | undefined> {
    const file = this.resolve(relPath);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `range of ${relPath}: offset and length must be non-negative integers`);
    }
    this.checkLive(options.signal);
    if (length === 0) return Buffer.alloc(0);
    let handle: fsp.FileHandle;
    try {
      handle = await fsp.open(file, constants.O_RDONLY);
    } catch (e) {
      return this.absentOrThrow(e, relPath, options.signal);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new Error('not a regular file');
      if (offset >= st.size) {
        throw new NarfsError('ERR_INVALID_ARGUMENT', `reading ${relPath} from ${this.displayUrl}: offset ${offset} is at or past the end of the file (${st.size} bytes)`, {
          details: { datalake: this.displayUrl, relPath, offset, length, size: st.size },
        });
      }
      const buf = Buffer.allocUnsafe(Math.min(length, st.size - offset));
      let got = 0;
      while (got < buf.length) {
        this.checkLive(options.signal);
        const { bytesRead } = await handle.read(buf, got, buf.length - got, offset + got);
        if (bytesRead === 0) break; // the file shrank under us: what is there
        got += bytesRead;
      }
      return got === buf.length ? buf : buf.subarray(0, got);
    } catch (e) {
      throw this.wrap(e, relPath, options.signal);
    } finally {
      await handle.close().catch(() => {});
    }
  }

  async listNarInfoHashes(options: GetOptions = {}): Promise<string[]> {
    this.checkLive(options.signal);
    try {
      const names = await fsp.readdir(this.root);
      return names
        .filter((n) => n.endsWith('.narinfo'))
        .map((n) => n.slice(0, -'.narinfo'.length))
        .sort();
    } catch (e) {
      throw this.wrap(e, '', options.signal);
    }
  }

  async close(): Promise<void> {
    if (this.closer.signal.aborted) return;
    this.closer.abort(new NarfsError('ERR_ABORTED', `datalake ${this.displayUrl} was closed`));
    for (const s of this.streams) s.fail(this.abortedError('', undefined));
    this.streams.clear();
  }

  private resolve(relPath: string): string {
    return path.join(this.root, ...checkRelPath(relPath));
  }

  private signalFor(outer: AbortSignal | undefined): AbortSignal {
    return outer ? AbortSignal.any([outer, this.closer.signal]) : this.closer.signal;
  }

  private checkLive(outer: AbortSignal | undefined): void {
    if (this.closer.signal.aborted || outer?.aborted) throw this.abortedError('', outer?.reason);
  }

  private abortedError(relPath: string, cause: unknown): NarfsError {
    const what = relPath ? `reading ${relPath} from ${this.displayUrl}` : `datalake ${this.displayUrl}`;
    const closed = this.closer.signal.aborted;
    return new NarfsError('ERR_ABORTED', `${what} was ${closed ? 'closed' : 'aborted'}`, { cause });
  }

  private absentOrThrow(e: unknown, relPath: string, outer: AbortSignal | undefined): undefined {
    if (ABSENT_CODES.has((e as NodeJS.ErrnoException)?.code ?? '')) return undefined;
    throw this.wrap(e, relPath, outer);
  }

  private wrap(e: unknown, relPath: string, outer: AbortSignal | undefined): NarfsError {
    if (this.closer.signal.aborted || outer?.aborted || (e as Error)?.name === 'AbortError') {
      return this.abortedError(relPath, e);
    }
    if (e instanceof NarfsError) return e;
    const code = (e as NodeJS.ErrnoException)?.code;
    return new NarfsError(
      'ERR_DATALAKE_UNAVAILABLE',
      `reading ${relPath || '.'} from ${this.displayUrl} failed${code ? ` (${code})` : ''}`,
      { cause: e, details: { datalake: this.displayUrl, relPath } },
    );
  }
}
