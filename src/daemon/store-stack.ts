/**
 * openStoreStack: the layers every narfs command needs to answer "what is this store
 * path and what are its bytes": datalakes, metadata cache, blob and tree stores, verified narinfos,
 * the materialiser and the lazy store. `narfs mount` puts a filesystem on top;
 * `narfs register` without a daemon uses it alone.
 *
 * Invariants: `close()` undoes exactly what was opened, in reverse order, and never throws;
 * an open that fails half-way closes what it had opened. A datalake that does not answer
 * is not a reason to fail: the stack opens with every datalake down (a warning), serves
 * what the metadata and NAR caches hold, and uses a datalake as soon as a probe finds it
 * back (DatalakeSet). Configuration errors (another StoreDir, a 401) still fail the open.
 *
 * Start-up order (the time until a mount answers, issue 10): only the datalakes' modules
 * load before their first request (nix-cache-info); the caches' and the store's modules
 * (LevelDB, SQLite, the native engine) load while it is under way. Loading has no effect
 * outside the process; opening the caches has (it creates the cache directory, marks the
 * blob store unclean, may reconcile it), so the caches open only once every datalake has
 * answered without a configuration error (another StoreDir, a 401): a mount that fails
 * on its datalake leaves a fresh cache directory uncreated and an old one untouched.
 * `config.signal` (SIGTERM during start-up) ends the open at once with ERR_ABORTED,
 * after closing what it had opened.
 */
import { mkdir, statfs } from 'node:fs/promises';
import { defaultCacheMaxBytes, type LazyFetchSettings } from '../config/mount-config.js';
import { join } from 'node:path';
import { NarfsError, toNarfsError } from '../errors.js';
import { raceSignal } from '../deadline.js';
import type { Logger } from '../log.js';
import type { PublicKey } from '../nix/signature.js';
import { DatalakeSet } from '../datalake/datalake-set.js';
import type { HttpAccessOptions } from '../datalake/http-datalake.js';
import type { LevelMetadataCache } from '../cache/level-metadata-cache.js';
import type { BlobStore } from '../cache/blob-store.js';
import type { TreeStore } from '../cache/tree-store.js';
import type { PendingNars } from '../cache/pending-nars.js';
import type { PathInfoService } from '../store/path-info-service.js';
import type { Materialiser } from '../store/materialiser.js';
import type { LazyStore } from '../store/lazy-store.js';
import type { ChunkFetcher } from '../store/chunk-fetcher.js';
import { checkSignaturePolicy } from '../store/signature-policy.js';
import type { SliceFilter } from '../slice/slice-filter.js';
import { CleanupStack } from './cleanup-stack.js';
import { loadLater } from './load-later.js';
import type { NarfsMetrics } from './metrics.js';

export interface StoreStackConfig {
  datalakes: string[];
  trustedPublicKeys: PublicKey[];
  requireSigs: boolean;
  cacheDir: string;
  negativeTtlMs: number;
  /** Cached NAR files kept open for reads (default 256). */
  maxOpenFiles?: number;
  /** Bound on the bytes of file contents the cache holds (default: defaultCacheMaxBytes of its filesystem). */
  cacheMaxBytes?: number;
  /** Credentials, CA bundle and proxy of the http(s) datalakes (file names, no secrets). */
  datalakeAccess?: HttpAccessOptions;
  /** Use published per-file indexes for ranged reads (default true). */
  useIndexes?: boolean;
  /** Told the first time each file is read (--record-trace). */
  onFirstRead?: (name: string, narOffset: number) => void;
  /** Tuning of ranged fetches of indexed paths (--lazy-fetch); unset keys keep the defaults. */
  lazyFetch?: LazyFetchSettings;
  /** A slice mount: `infos` answers only for the paths this filter admits. */
  sliceFilter?: SliceFilter;
  /** Ends the open (ERR_ABORTED) once aborted: a stop asked for during start-up. */
  signal?: AbortSignal;
  /** The longest a background commit yields, per batch, to whole-NAR fetches and reads (default: materialiser.ts COMMIT_YIELD_MAX_MS). */
  commitYieldMaxMs?: number;
  /** How long reads must pause before a background commit's next batch (default: materialiser.ts COMMIT_QUIET_MS). */
  commitQuietMs?: number;
  /** How long closing lets the background commits under way run on (default: materialiser.ts COMMIT_FINISH_MS; 0: stop at once). */
  commitFinishMs?: number;
}

export interface StoreStack {
  datalakes: DatalakeSet;
  blobs: BlobStore;
  trees: TreeStore;
  /** Verified NARs a stop kept for the next start (read back before any fetch). */
  pending: PendingNars;
  infos: PathInfoService;
  materialiser: Materialiser;
  /** Ranged, verified chunk reads of indexed store paths. */
  chunks: ChunkFetcher;
  store: LazyStore;
  /** Aborted when the stack closes: work in flight stops. */
  signal: AbortSignal;
  close(): Promise<void>;
}

/** `metrics`: fed by the datalakes, the metadata cache and the materialiser (narfs mount). */
export async function openStoreStack(config: StoreStackConfig, logger: Logger, metrics?: NarfsMetrics): Promise<StoreStack> {
  checkSignaturePolicy({ requireSigs: config.requireSigs, trustedKeys: config.trustedPublicKeys });
  const cleanups = new CleanupStack(logger);
  try {
    const datalakes = DatalakeSet.fromUrls(config.datalakes, {
      logger, ...config.datalakeAccess, ...(metrics ? { onRequest: metrics.datalakeRequests() } : {}),
    });
    cleanups.push(() => datalakes.close());
    // The datalakes are asked (nix-cache-info: a round trip each) while the modules of the
    // caches and the store load (~30-50 ms); both settle before an error is raised, the
    // datalakes' first. The caches open only after that (see the header).
    const [opened, loaded] = await raceSignal(Promise.allSettled([
      // Offline start: with no datalake answering, the caches still serve what they hold;
      // the set probes the datalakes in the background and uses them when they come back.
      datalakes.open({ allowAllDown: true }),
      stackModules(config.sliceFilter !== undefined),
    ]), config.signal);
    if (opened.status === 'rejected') throw opened.reason;
    if (loaded.status === 'rejected') throw loaded.reason;
    const mods = loaded.value;
    const { meta, blobs, trees: plainTrees, pending } = await openCaches(mods, config, logger, cleanups);
    config.signal?.throwIfAborted();
    const { PathInfoService, SlicedPathInfoService, Materialiser, ChunkVerifyPool, ChunkFetcher, LazyStore } = mods;
    if (!datalakes.anyUp()) {
      logger.warn('no datalake answers; starting offline: cached paths are served, others fail with EIO until a datalake comes back', {
        datalakes: datalakes.status().map((s) => ({ datalake: s.displayUrl, code: s.error?.code })),
      });
    }
    const trees = metrics ? metrics.countingNarCache(plainTrees) : plainTrees;
    const shutdown = new AbortController();
    cleanups.push(async () => shutdown.abort(new NarfsError('ERR_ABORTED', 'narfs is shutting down')));
    const infoArgs = [datalakes, metrics ? metrics.countingMetadataCache(meta) : meta,
      { requireSigs: config.requireSigs, trustedKeys: config.trustedPublicKeys },
      { negativeTtlMs: config.negativeTtlMs, logger }] as const;
    // A slice mount never falls back to the unfiltered service: it would show every path.
    if (config.sliceFilter && !SlicedPathInfoService) {
      throw new NarfsError('ERR_INTERNAL', 'the slice module did not load: a slice mount cannot filter its paths');
    }
    const infos = config.sliceFilter && SlicedPathInfoService ? new SlicedPathInfoService(config.sliceFilter, ...infoArgs) : new PathInfoService(...infoArgs);
    const materialiser = new Materialiser(blobs, trees, {
      logger, datalakes, signal: shutdown.signal, ...(metrics ? { events: metrics.materialiserEvents() } : {}),
      ...(config.commitYieldMaxMs === undefined ? {} : { commitYieldMaxMs: config.commitYieldMaxMs }),
      ...(config.commitQuietMs === undefined ? {} : { commitQuietMs: config.commitQuietMs }),
      ...(config.commitFinishMs === undefined ? {} : { commitFinishMs: config.commitFinishMs }),
      pending,
    });
    // Its verify workers start with the first ranged read and stop when idle: each costs
    // ~9 MiB of RSS, which a daemon serving from its cache would hold for nothing.
    const chunkPool = new ChunkVerifyPool({ lazy: true, idleMs: 60_000 });
    cleanups.push(() => chunkPool.close());
    const chunks = new ChunkFetcher({ datalakes, logger, verifyPool: chunkPool });
    cleanups.push(async () => chunks.close());
    const policy = { requireSigs: config.requireSigs, trustedKeys: config.trustedPublicKeys };
    const store = new LazyStore(infos, materialiser, meta, blobs, trees, {
      logger, datalakes,
      ...(config.useIndexes === false ? {} : { indexPolicy: policy, chunks }),
      ...(config.onFirstRead ? { onFirstRead: config.onFirstRead } : {}),
      ...config.lazyFetch,
    });
    await store.loadKnown();
    cleanups.push(() => store.close());
    // What this process fetched by range, for the log (bench and diagnosis read it).
    cleanups.push(async () => {
      if (chunks.stats.requests > 0) logger.info('store counters', { store: store.counters, fetcher: chunks.stats });
    });
    return { datalakes, blobs, trees, pending, infos, materialiser, chunks, store, signal: shutdown.signal, close: () => cleanups.run() };
  } catch (err) {
    await cleanups.run();
    throw toNarfsError(err);
  }
}

/**
 * The classes of the stack, loaded while the datalakes are asked (see openStoreStack), and
 * the native engine's file hasher (loading the addon: the engine is ready for the mount).
 * Nothing here may touch the cache directory or anything else outside the process.
 */
async function stackModules(sliced = false) {
  const [meta, blobs, trees, pending, infos, sliceInfos, materialiser, lazy, pool, fetcher, native] = await Promise.all([
    loadLater<typeof import('../cache/level-metadata-cache.js')>('../cache/level-metadata-cache.js', import.meta.url),
    loadLater<typeof import('../cache/blob-store.js')>('../cache/blob-store.js', import.meta.url),
    loadLater<typeof import('../cache/tree-store.js')>('../cache/tree-store.js', import.meta.url),
    loadLater<typeof import('../cache/pending-nars.js')>('../cache/pending-nars.js', import.meta.url),
    loadLater<typeof import('../store/path-info-service.js')>('../store/path-info-service.js', import.meta.url),
    sliced ? loadLater<typeof import('../slice/sliced-path-info-service.js')>('../slice/sliced-path-info-service.js', import.meta.url) : undefined,
    loadLater<typeof import('../store/materialiser.js')>('../store/materialiser.js', import.meta.url),
    loadLater<typeof import('../store/lazy-store.js')>('../store/lazy-store.js', import.meta.url),
    loadLater<typeof import('../store/chunk-verify-pool.js')>('../store/chunk-verify-pool.js', import.meta.url),
    loadLater<typeof import('../store/chunk-fetcher.js')>('../store/chunk-fetcher.js', import.meta.url),
    loadLater<typeof import('../fuse/native-mount.js')>('../fuse/native-mount.js', import.meta.url),
  ]);
  return {
    LevelMetadataCache: meta.LevelMetadataCache, BlobStore: blobs.BlobStore, TreeStore: trees.TreeStore, PendingNars: pending.PendingNars,
    PathInfoService: infos.PathInfoService, SlicedPathInfoService: sliceInfos?.SlicedPathInfoService,
    Materialiser: materialiser.Materialiser, LazyStore: lazy.LazyStore,
    ChunkVerifyPool: pool.ChunkVerifyPool, ChunkFetcher: fetcher.ChunkFetcher,
    // Cached files of an earlier process are re-hashed off the JS thread when the engine is built.
    hashFile: native.nativeFileHasher(),
    markTopDir: native.nativeTopDirMarker(),
  };
}

/** The metadata cache, blob store and tree store of `config.cacheDir`, each pushed on `cleanups` once open. */
async function openCaches(mods: Awaited<ReturnType<typeof stackModules>>, config: StoreStackConfig, logger: Logger, cleanups: CleanupStack): Promise<{ meta: LevelMetadataCache; blobs: BlobStore; trees: TreeStore; pending: PendingNars }> {
  const { LevelMetadataCache, BlobStore, TreeStore, PendingNars, hashFile, markTopDir } = mods;
  await mkdir(config.cacheDir, { recursive: true, mode: 0o700 }).catch((err) => {
    throw new NarfsError('ERR_CACHE_IO', `cannot create the cache directory ${config.cacheDir}`, { cause: err });
  });
  // LevelDB opens on libuv's pool while the blob store (SQLite, on this thread) opens.
  const [meta, blobs] = await Promise.allSettled([
    LevelMetadataCache.open(join(config.cacheDir, 'meta')).then((opened) => {
      cleanups.push(() => opened.close());
      return opened;
    }),
    (async () => {
      const maxBytes = config.cacheMaxBytes ?? await statfs(config.cacheDir)
        .then((st) => defaultCacheMaxBytes(st.blocks * st.bsize), () => undefined);
      const opened = await BlobStore.open(config.cacheDir, {
        logger, ...(maxBytes === undefined ? {} : { maxBytes }), ...(hashFile ? { hashFile } : {}), ...(markTopDir ? { markTopDir } : {}),
      });
      cleanups.push(() => opened.close());
      return opened;
    })(),
  ]);
  if (meta.status === 'rejected') throw meta.reason;
  if (blobs.status === 'rejected') throw blobs.reason;
  const trees = await TreeStore.open(config.cacheDir, { logger });
  // Closed before the BlobStore (cleanups run in reverse), after the Materialiser's stop kept what it ended.
  const pending = await PendingNars.open(config.cacheDir, blobs.value, logger);
  cleanups.push(async () => pending.close());
  return { meta: meta.value, blobs: blobs.value, trees, pending };
}
