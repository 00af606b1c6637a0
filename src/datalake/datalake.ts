/**
 * The Datalake interface: a read-only Nix binary cache (nix-formats.md §2), addressed by
 * paths relative to its root ("nix-cache-info", "<hash>.narinfo", "<hash>.ls", "nar/…").
 *
 * Invariants every backend keeps (checked by test/integration/datalake-contract.test.ts):
 * - absence (file missing, HTTP 404 or 403) resolves to `undefined`, never throws;
 * - any other failure throws a NarfsError (ERR_DATALAKE_UNAVAILABLE, ERR_DATALAKE_TIMEOUT,
 *   ERR_DATALAKE_HTTP, ERR_DATALAKE_TRUNCATED) and never hangs: every call settles within
 *   the backend's deadlines or when `signal` aborts;
 * - a stream ends with an error, never silently, when fewer bytes arrive than announced.
 *
 * Below the interface: small pure helpers the backends share (relPath checking,
 * nix-cache-info reading, store URL parameters, the StoreDir check).
 */
import { setMaxListeners } from 'node:events';
import type { Readable } from 'node:stream';
import { NarfsError } from '../errors.js';
import { DEFAULT_CACHE_PRIORITY, parseCacheInfo } from '../nix/narinfo.js';
import { STORE_DIR } from '../nix/store-path.js';

export interface CacheInfo {
  storeDir: string;
  wantMassQuery: boolean;
  /** Lower is preferred; Nix's default for a cache without one is 50. */
  priority: number;
}

export interface GetOptions {
  signal?: AbortSignal;
}

export interface Datalake {
  /** The URL with any credentials removed: safe for logs. */
  readonly displayUrl: string;
  /** Reads and checks nix-cache-info (StoreDir must be /nix/store). Called once at start. */
  open(options?: GetOptions): Promise<CacheInfo>;
  /** A small file, whole (narinfo, .ls, nix-cache-info), or undefined when absent. */
  getBytes(relPath: string, options?: GetOptions): Promise<Buffer | undefined>;
  /** A file as a stream (NARs), or undefined when absent. */
  getStream(relPath: string, options?: GetOptions): Promise<Readable | undefined>;
  /**
   * Optional: bytes [offset, offset+length) of a file, clipped at its end, by one ranged
   * request (the per-file reads of a lazy NAR); undefined when the file is absent. An offset
   * at or past the end is ERR_INVALID_ARGUMENT. Backends without ranged reads omit it.
   */
  getRange?(relPath: string, offset: number, length: number, options?: GetOptions): Promise<Buffer | undefined>;
  /** Lists the hash parts of all narinfos, where the backend can (file://); else undefined. */
  listNarInfoHashes?(options?: GetOptions): Promise<string[] | undefined>;
  /** Releases connections; in-flight calls fail with ERR_ABORTED. */
  close(): Promise<void>;
}

// --- Helpers shared by the backends (pure; no I/O).

/** The only store directory narfs serves. */
export { STORE_DIR };

/** Nix's priority for a binary cache whose nix-cache-info names none (BinaryCacheStore). */
export const DEFAULT_PRIORITY = DEFAULT_CACHE_PRIORITY;

/**
 * Checks that `relPath` names a file inside the datalake root and returns its segments.
 * Rejects empty paths, absolute paths and URLs, `.`/`..`/empty segments, backslashes,
 * NUL, and `?`/`#` (which would change an HTTP request's meaning): a relPath can never
 * reach outside the datalake, whatever a narinfo says.
 */
export function checkRelPath(relPath: string): string[] {
  const bad = (why: string): never => {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `datalake path ${JSON.stringify(relPath)} ${why}`, {
      hint: 'Datalake paths are relative to the cache root, like "<hash>.narinfo" or "nar/<hash>.nar.xz".',
    });
  };
  if (typeof relPath !== 'string' || relPath === '') bad('is empty');
  if (relPath.startsWith('/')) bad('is absolute');
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(relPath)) bad('is a URL, not a path');
  if (/[\\\0?#]/.test(relPath)) bad('contains \\, NUL, ? or #');
  const segments = relPath.split('/');
  for (const s of segments) {
    if (s === '' || s === '.' || s === '..') bad('has an empty, "." or ".." segment');
  }
  return segments;
}

/**
 * Reads nix-cache-info with src/nix's parser (Nix's BinaryCacheStore::init rules,
 * nix-formats.md §2.2). A file without a StoreDir line is not checked by Nix, so it
 * counts as /nix/store. Errors name the datalake.
 */
export function readCacheInfo(text: string, whence: string): CacheInfo {
  try {
    const parsed = parseCacheInfo(text);
    return { storeDir: parsed.storeDir ?? STORE_DIR, wantMassQuery: parsed.wantMassQuery, priority: parsed.priority };
  } catch (e) {
    if (e instanceof NarfsError) throw new NarfsError(e.code, `${whence}: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * Applies the store URL parameters Nix reads on a substituter URL (`?priority=N`,
 * `?want-mass-query=true|false`) over what nix-cache-info says, as Nix does.
 */
export function applyStoreParams(info: CacheInfo, params: URLSearchParams, whence: string): CacheInfo {
  const out = { ...info };
  const priority = params.get('priority');
  if (priority !== null) {
    if (!/^[+-]?\d+$/.test(priority)) {
      throw new NarfsError('ERR_DATALAKE_URL', `the priority parameter of ${whence} is not an integer`);
    }
    out.priority = Number.parseInt(priority, 10);
  }
  const wmq = params.get('want-mass-query');
  if (wmq !== null) out.wantMassQuery = wmq === 'true' || wmq === '1';
  return out;
}

/** Fails with ERR_CACHE_INFO unless the datalake is for /nix/store. */
export function checkStoreDir(info: CacheInfo, whence: string): CacheInfo {
  if (info.storeDir !== STORE_DIR) {
    throw new NarfsError(
      'ERR_CACHE_INFO',
      `binary cache ${whence} is for Nix stores with prefix '${info.storeDir}', not '${STORE_DIR}'`,
      { details: { datalake: whence, storeDir: info.storeDir } },
    );
  }
  return info;
}

/**
 * An AbortController for `close()`: every in-flight call of a backend listens to its
 * signal, so it has no listener cap (Node would warn at 11).
 */
export function fanOutController(): AbortController {
  const c = new AbortController();
  setMaxListeners(0, c.signal);
  return c;
}
