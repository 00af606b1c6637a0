/**
 * MountConfig: the typed settings of `narfs mount`, each with its default and a doc line,
 * and their pure validation (no I/O).
 */
import { NarfsError } from '../errors.js';
import { parseTrustedPublicKeys, type PublicKey } from '../nix/signature.js';
import { parseBearerTokenFile } from '../datalake/http-auth.js';
import type { HttpAccessOptions } from '../datalake/http-datalake.js';
import { parseProxyUrl } from '../datalake/proxy-for.js';

export interface MountConfig {
  /** Where the store appears, e.g. /mnt/lower/nix/store. */
  mountpoint: string;
  /** Binary cache URLs (file://, http://, https://), asked in Priority order. */
  datalakes: string[];
  /** Keys whose signatures are trusted (`name:base64`), like Nix's trusted-public-keys. */
  trustedPublicKeys: PublicKey[];
  /** Refuse paths without a valid trusted signature (Nix's require-sigs). Default true. */
  requireSigs: boolean;
  /** Verified NARs and metadata live here; survives restarts. */
  cacheDir: string;
  /** Bound of every FUSE request that waits on the network (ms). Default 30 000. */
  opTimeoutMs: number;
  /** How long "this path is in no datalake" is remembered (ms). Default 30 000. */
  negativeTtlMs: number;
  /** text or json log lines on stderr. */
  logFormat: 'text' | 'json';
  /** Root of the lower store whose database lists registered paths (optional). */
  lower?: string;
  /**
   * Unix socket on which the mount also serves as a Nix lower store over the worker
   * protocol (`local-overlay://?lower-store=unix://<path>&…`): every path of the
   * datalakes is valid there at once, without a lower database (optional).
   */
  lowerSocket?: string;
  /** allow_other: let other users (and overlayfs) read the mount. Default: when root. */
  allowOther?: boolean;
  /** Decompressor processes (xz, bzip2) that may run at once. Default 2 × cores. */
  decompressJobs?: number;
  /**
   * Credentials (netrc file, bearer token files), CA bundle and proxy of the http(s)
   * datalakes: file names only, never the secrets themselves.
   */
  datalakeAccess?: HttpAccessOptions;
  /**
   * FUSE engine: 'native' (narfs's own, native/) or 'fuse-native' (libfuse 2 binding, the
   * fallback). Default: $NARFS_FUSE_BACKEND, else 'native'.
   */
  fuseBackend?: 'native' | 'fuse-native';
  /**
   * FUSE passthrough (native engine) for files whose verified bytes are a whole local
   * file: the kernel reads them itself. Default true; `--no-passthrough` turns it off.
   * Needs root and a kernel that offers it (6.9+); otherwise reads are pread from C.
   */
  passthrough?: boolean;
  /**
   * How the native engine talks to the kernel (--fuse-transport): 'dev' (default) reads
   * and writes /dev/fuse; 'uring' uses FUSE over io_uring (6.14+, fuse module parameter
   * enable_uring=Y; the mount fails with ERR_FUSE_URING_UNAVAILABLE otherwise). A uring
   * mount is not kept across restarts (its rings end with the process).
   */
  fuseTransport?: 'dev' | 'uring';
  /** HOST:PORT of the Prometheus endpoint (GET /metrics); off when unset. */
  metricsListen?: string;
  /**
   * Bound on the bytes of file contents the cache keeps (--cache-max-size). Default (when
   * unset): defaultCacheMaxBytes of the cache filesystem's size, decided at open.
   */
  cacheMaxBytes?: number;
  /** Use published per-file indexes (`<hash>.narfs-index`) for ranged reads. Default true. */
  useIndexes?: boolean;
  /** Write the files this mount reads to this file (--record-trace). */
  recordTrace?: string;
  /** Prefetch the files this trace lists, in the background, at start (--prefetch-trace). */
  prefetchTrace?: string;
  /** How indexed paths are fetched on a miss (--lazy-fetch); unset keys keep the LazyStore defaults. */
  lazyFetch?: LazyFetchSettings;
  /**
   * Show only the closures of the roots listed at FILE or URL (fetched with the datalake
   * credentials), fetched again every refreshMs (default 300 s) with conditional requests.
   */
  slice?: { location: string; refreshMs: number };
}

export const DEFAULT_CACHE_DIR = '/var/cache/narfs';
export const DEFAULT_OP_TIMEOUT_MS = 30_000;
export const DEFAULT_NEGATIVE_TTL_MS = 30_000;
export const DEFAULT_SLICE_REFRESH_MS = 300_000;

/** "30s", "500ms", "2m", or a bare number of seconds → milliseconds. */
export function parseDuration(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s.trim());
  if (!m) throw new NarfsError('ERR_USAGE', `${what}: "${s}" is not a duration`, { hint: 'Durations look like 30s, 500ms or 2m.' });
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  return Math.round(unit === 'ms' ? n : unit === 'm' ? n * 60_000 : n * 1000);
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "500M", "2G", "1.5T", "64KiB", "4096" (bytes) → bytes. Units are powers of 1024. */
export function parseSize(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(s.trim());
  const n = m ? Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!) : NaN;
  if (!m || !Number.isSafeInteger(n)) {
    throw new NarfsError('ERR_USAGE', `${what}: "${s}" is not a size`, { hint: 'Sizes look like 500M, 2G or 1T (powers of 1024), or a number of bytes.' });
  }
  return n;
}

/**
 * The default cache bound for a filesystem of `fsBytes`: 10% of it, at least 1 GiB unless
 * the filesystem itself is smaller (then all of it).
 */
export function defaultCacheMaxBytes(fsBytes: number): number {
  const GiB = 2 ** 30;
  return fsBytes <= GiB ? fsBytes : Math.max(GiB, Math.floor(fsBytes / 10));
}

export interface RawMountOptions {
  mountpoint?: string;
  datalake?: string[];
  trustedPublicKeys?: string[];
  noRequireSigs?: boolean;
  cacheDir?: string;
  opTimeout?: string;
  negativeTtl?: string;
  logFormat?: string;
  lower?: string;
  lowerSocket?: string;
  allowOther?: boolean;
  decompressJobs?: string;
  fuseBackend?: string;
  passthrough?: boolean;
  fuseTransport?: string;
  netrcFile?: string;
  /** `[HOST=]FILE`, repeatable. */
  bearerTokenFile?: string[];
  sslCertFile?: string;
  proxy?: string;
  metricsListen?: string;
  cacheMaxSize?: string;
  noIndexes?: boolean;
  recordTrace?: string;
  prefetchTrace?: string;
  lazyFetch?: string;
  slice?: string;
  sliceRefresh?: string;
}

/** Tuning of ranged fetches of indexed paths (src/store/lazy-store.ts LazyStoreOptions). */
export interface LazyFetchSettings {
  neighbourBytes?: number;
  neighbourFileBytes?: number;
  subtreeBytes?: number;
  escalateShare?: number;
  escalateStreak?: number;
  bulkRequestBytes?: number;
  bulkConcurrency?: number;
  stageMaxBytes?: number;
  warmReferences?: number;
  neighbourAfterMisses?: number;
  gapBytes?: number;
  /** NAR files (FileSize) up to this size are fetched whole even when indexed (lazy-store.ts DEFAULT_WHOLE_NAR_MAX_BYTES). */
  wholeNarMaxBytes?: number;
  /** A walked path whose NAR file is at most this size is fetched whole (lazy-store.ts DEFAULT_WALK_WHOLE_BYTES; 0 = off). */
  walkWholeBytes?: number;
}

const LAZY_FETCH_KEYS: Record<string, { key: keyof LazyFetchSettings; kind: 'size' | 'share' | 'count' }> = {
  'neighbour-bytes': { key: 'neighbourBytes', kind: 'size' },
  'neighbour-file-bytes': { key: 'neighbourFileBytes', kind: 'size' },
  'subtree-bytes': { key: 'subtreeBytes', kind: 'size' },
  'escalate-share': { key: 'escalateShare', kind: 'share' },
  'escalate-streak': { key: 'escalateStreak', kind: 'count' },
  'bulk-request-bytes': { key: 'bulkRequestBytes', kind: 'size' },
  'bulk-concurrency': { key: 'bulkConcurrency', kind: 'count' },
  'stage-bytes': { key: 'stageMaxBytes', kind: 'size' },
  'warm-references': { key: 'warmReferences', kind: 'count' },
  'neighbour-after-misses': { key: 'neighbourAfterMisses', kind: 'count' },
  'gap-bytes': { key: 'gapBytes', kind: 'size' },
  'whole-nar-bytes': { key: 'wholeNarMaxBytes', kind: 'size' },
  'walk-whole-bytes': { key: 'walkWholeBytes', kind: 'size' },
};

/**
 * `--lazy-fetch KEY=VALUE[,KEY=VALUE...]`: neighbour-bytes, neighbour-file-bytes,
 * subtree-bytes, bulk-request-bytes, stage-bytes, gap-bytes, whole-nar-bytes,
 * walk-whole-bytes (sizes: 1M, 128K, ...; subtree-bytes and walk-whole-bytes 0 = off),
 * escalate-share (0..1, 0 = off), escalate-streak, bulk-concurrency, warm-references,
 * neighbour-after-misses (whole numbers; streak 0 and warm-references 0 = off).
 */
export function parseLazyFetch(s: string): LazyFetchSettings {
  const out: LazyFetchSettings = {};
  for (const part of s.split(',').map((x) => x.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    const spec = LAZY_FETCH_KEYS[name];
    if (!spec || value === '') {
      throw new NarfsError('ERR_USAGE', `--lazy-fetch: "${part}" is not KEY=VALUE with a known KEY`, { hint: `Keys: ${Object.keys(LAZY_FETCH_KEYS).join(', ')}.` });
    }
    let n: number;
    if (spec.kind === 'size') n = parseSize(value, `--lazy-fetch ${name}`);
    else if (spec.kind === 'share') {
      n = Number(value);
      if (!/^\d*\.?\d+$/.test(value) || n > 1) throw new NarfsError('ERR_USAGE', `--lazy-fetch ${name} is a share from 0 to 1, not ${value}`);
    } else {
      n = Number(value);
      if (!/^\d+$/.test(value) || n > 100_000) throw new NarfsError('ERR_USAGE', `--lazy-fetch ${name} is a whole number, not ${value}`);
    }
    if (name === 'bulk-concurrency' && n < 1) throw new NarfsError('ERR_USAGE', '--lazy-fetch bulk-concurrency is at least 1');
    if ((name === 'bulk-request-bytes' || name === 'stage-bytes') && n < 64 * 1024) throw new NarfsError('ERR_USAGE', `--lazy-fetch ${name} is at least 64K`);
    out[spec.key] = n;
  }
  return out;
}

/**
 * The http(s) access settings from their raw option values (shared by mount and register).
 * A proxy URL is checked here, so that a typo fails at start, not at the first request.
 */
export function buildDatalakeAccess(raw: Pick<RawMountOptions, 'netrcFile' | 'bearerTokenFile' | 'sslCertFile' | 'proxy'>): HttpAccessOptions | undefined {
  const access: HttpAccessOptions = {};
  if (raw.netrcFile) access.netrcFile = raw.netrcFile;
  if (raw.bearerTokenFile && raw.bearerTokenFile.length > 0) access.bearerTokenFiles = raw.bearerTokenFile.map(parseBearerTokenFile);
  if (raw.sslCertFile) access.sslCertFile = raw.sslCertFile;
  if (raw.proxy) {
    parseProxyUrl(raw.proxy);
    access.proxy = raw.proxy;
  }
  return Object.keys(access).length > 0 ? access : undefined;
}

export function buildMountConfig(raw: RawMountOptions): MountConfig {
  if (!raw.mountpoint) throw new NarfsError('ERR_USAGE', 'narfs mount needs a mountpoint');
  const datalakes = raw.datalake ?? [];
  if (datalakes.length === 0) {
    throw new NarfsError('ERR_USAGE', 'narfs mount needs at least one --datalake', { hint: 'Give --datalake file:///srv/cache or --datalake https://cache.example.org.' });
  }
  const keys = (raw.trustedPublicKeys ?? []).flatMap((s) => parseTrustedPublicKeys(s));
  const requireSigs = !raw.noRequireSigs;
  if (requireSigs && keys.length === 0) {
    throw new NarfsError('ERR_SIGNATURE_POLICY', 'signatures are required but no --trusted-public-keys were given',
      { hint: 'Pass --trusted-public-keys "name:base64..." (as in nix.conf), or --no-require-sigs to accept unsigned paths.' });
  }
  const logFormat = raw.logFormat ?? 'text';
  if (logFormat !== 'text' && logFormat !== 'json') throw new NarfsError('ERR_USAGE', `--log-format is text or json, not ${logFormat}`);
  const config: MountConfig = {
    mountpoint: raw.mountpoint,
    datalakes,
    trustedPublicKeys: keys,
    requireSigs,
    cacheDir: raw.cacheDir ?? DEFAULT_CACHE_DIR,
    opTimeoutMs: raw.opTimeout ? parseDuration(raw.opTimeout, '--op-timeout') : DEFAULT_OP_TIMEOUT_MS,
    negativeTtlMs: raw.negativeTtl ? parseDuration(raw.negativeTtl, '--negative-ttl') : DEFAULT_NEGATIVE_TTL_MS,
    logFormat,
  };
  if (raw.lower) config.lower = raw.lower;
  if (raw.lowerSocket) config.lowerSocket = raw.lowerSocket;
  const access = buildDatalakeAccess(raw);
  if (access) config.datalakeAccess = access;
  if (raw.allowOther !== undefined) config.allowOther = raw.allowOther;
  if (raw.decompressJobs !== undefined) {
    const n = Number(raw.decompressJobs);
    if (!/^\d+$/.test(raw.decompressJobs) || n < 1 || n > 1024) {
      throw new NarfsError('ERR_USAGE', `--decompress-jobs is a whole number from 1 to 1024, not ${raw.decompressJobs}`);
    }
    config.decompressJobs = n;
  }
  if (raw.fuseBackend !== undefined) {
    if (raw.fuseBackend !== 'native' && raw.fuseBackend !== 'fuse-native') {
      throw new NarfsError('ERR_USAGE', `--fuse-backend is native or fuse-native, not ${raw.fuseBackend}`);
    }
    config.fuseBackend = raw.fuseBackend;
  }
  if (raw.passthrough !== undefined) config.passthrough = raw.passthrough;
  if (raw.fuseTransport !== undefined) {
    if (raw.fuseTransport !== 'dev' && raw.fuseTransport !== 'uring') {
      throw new NarfsError('ERR_USAGE', `--fuse-transport is dev or uring, not ${raw.fuseTransport}`);
    }
    if (raw.fuseTransport === 'uring' && config.fuseBackend === 'fuse-native') {
      throw new NarfsError('ERR_USAGE', '--fuse-transport uring needs the native engine (--fuse-backend native)');
    }
    config.fuseTransport = raw.fuseTransport;
  }
  if (raw.metricsListen !== undefined) config.metricsListen = raw.metricsListen;
  if (raw.cacheMaxSize !== undefined) config.cacheMaxBytes = parseSize(raw.cacheMaxSize, '--cache-max-size');
  if (raw.noIndexes) config.useIndexes = false;
  if (raw.recordTrace) config.recordTrace = raw.recordTrace;
  if (raw.prefetchTrace) config.prefetchTrace = raw.prefetchTrace;
  if (raw.lazyFetch !== undefined) config.lazyFetch = parseLazyFetch(raw.lazyFetch);
  if (raw.sliceRefresh !== undefined && raw.slice === undefined) throw new NarfsError('ERR_USAGE', '--slice-refresh needs --slice');
  if (raw.slice !== undefined) {
    const refreshMs = raw.sliceRefresh === undefined ? DEFAULT_SLICE_REFRESH_MS : parseDuration(raw.sliceRefresh, '--slice-refresh');
    if (refreshMs < 1000) throw new NarfsError('ERR_USAGE', '--slice-refresh is at least 1s');
    config.slice = { location: raw.slice, refreshMs };
  }
  return config;
}
