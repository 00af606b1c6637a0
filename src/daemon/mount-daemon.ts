/**
 * MountDaemon: wires config → datalakes → caches → store → filesystem → FUSE, and takes
 * them down again in reverse order.
 *
 * Invariants: a stale mount left by a crashed run ("Transport endpoint is not connected")
 * is detached before mounting; `close()` unmounts first (so no new requests arrive), then
 * aborts fetches in flight, then closes caches and datalakes; every step is bounded.
 * Under systemd (Type=notify) READY=1 is sent only after the mount answered a statfs from
 * another process (mountState 'live'), and STOPPING=1 before the unmount.
 * Under systemd with the native engine the mount survives a restart (restart-state.ts):
 * a process started with the stored /dev/fuse descriptors resumes them instead of
 * mounting, and `handover()` (SIGTERM of a restart job) exits without unmounting.
 * Start-up order (the time until the mount answers counts: issue 10's first use): modules
 * only some configurations need (traces, slices, --lower) load only for them (loadLater);
 * the control socket, the lower-store socket and the metrics endpoint load and start after
 * the mount, while the liveness check's child process runs; READY=1 and "mounted" wait for
 * both, and a service's error is raised before the check's. A stop asked for during
 * start-up (startMount's signal) unmounts what was mounted and closes the caches before
 * startMount rejects with ERR_ABORTED.
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { NarfsError, toNarfsError } from '../errors.js';
import { raceSignal } from '../deadline.js';
import type { Logger } from '../log.js';
import type { MountConfig } from '../config/mount-config.js';
import type { Materialiser } from '../store/materialiser.js';
import type { LazyStore } from '../store/lazy-store.js';
import { openStoreStack, type StoreStack } from './store-stack.js';
import type { TraceRecorder } from './read-trace.js';
import { CleanupStack } from './cleanup-stack.js';
import { loadLater } from './load-later.js';
import { StoreFilesystem } from '../fs/store-filesystem.js';
import { FuseNativeMount, forceUnmount } from '../fuse/fuse-native-mount.js';
import { NativeMount, nativeMallocTrim, type NativeStats } from '../fuse/native-mount.js';
import { mountEntry, mountState } from '../fuse/mount-state.js';
import { setDecompressionConcurrency } from '../compression/decompress.js';
import { FUSE_OPS, NarfsMetrics } from './metrics.js';
import { CacheSizeProbe, runStatus, type NarfsStatus } from './status-operation.js';
import { SystemdNotifier } from './systemd-notify.js';
import type { SliceFilter } from '../slice/slice-filter.js';
import type { SlicedPathInfoService } from '../slice/sliced-path-info-service.js';
import { RestartState } from './restart-state.js';
import { startQuietMemoryRelease } from './quiet-memory-release.js';

export interface RunningMount {
  readonly mountpoint: string;
  readonly store: LazyStore;
  readonly materialiser: Materialiser;
  /** The caches, datalakes and fetchers under the store. */
  readonly stack: StoreStack;
  readonly fs: StoreFilesystem;
  /** The FUSE engine serving the mount, and its counters (native engine only). */
  readonly engine: { backend: 'native' | 'fuse-native'; stats(): NativeStats | undefined };
  /** Counters and histograms of this mount (also served on --metrics-listen). */
  readonly metrics: NarfsMetrics;
  /** host:port of the metrics endpoint, when --metrics-listen was given. */
  readonly metricsAddress: string | undefined;
  /** What `narfs status` shows. */
  status(): Promise<NarfsStatus>;
  /** Unmounts and takes everything down. */
  close(): Promise<void>;
  /** Whether a SIGTERM now is a restart that should keep the mount (systemd restart job). */
  shouldHandOver(): Promise<boolean>;
  /** Takes everything down but leaves the mount to the next process (no unmount). */
  handover(): Promise<void>;
  /**
   * Resolves when the kernel ended the mount while this process served it: unmounted from
   * outside (`stale` false), or its connection aborted (`stale` true: the dead mount was
   * still there and has been detached). The caller then stops the daemon (`close()`): a
   * daemon without its mount would only hold the cache. Native engine only (the
   * fuse-native binding does not report it); pending for ever otherwise.
   */
  readonly ended: Promise<{ errno: number; stale: boolean }>;
}

/** How long a handover waits for the requests JS is answering (the rest are resent). */
const HANDOVER_MS = 10_000;

/**
 * `signal`: a stop asked for during start-up (SIGTERM before "mounted"). The start then
 * ends as soon as it can with ERR_ABORTED (at once while a datalake or the slice list is
 * awaited), after unmounting what it mounted and closing the caches: no stale mount, no
 * cache left unclean.
 */
export async function startMount(config: MountConfig, logger: Logger, signal?: AbortSignal): Promise<RunningMount> {
  signal?.throwIfAborted();
  const mountpoint = resolve(config.mountpoint);
  const notifier = new SystemdNotifier(logger);
  notifier.status(`preparing ${mountpoint}`);
  const backend = fuseBackendOf(config);
  // io_uring queues end with the process: a uring mount is not handed over.
  const restart = backend === 'native' && config.fuseTransport !== 'uring' ? RestartState.fromEnvironment(config.cacheDir, logger) : undefined;
  const adopt = await restart?.resumable(mountpoint);
  if (!adopt) await prepareMountpoint(mountpoint, logger);
  signal?.throwIfAborted();
  if (config.decompressJobs !== undefined) setDecompressionConcurrency(config.decompressJobs);
  // The gauges read what exists once the mount is up (undefined before).
  let live: { stack: Awaited<ReturnType<typeof openStoreStack>>; fs: StoreFilesystem; engine: RunningMount['engine'] } | undefined;
  const cacheSize = new CacheSizeProbe(config.cacheDir);
  const metrics = new NarfsMetrics({
    datalakes: () => live?.stack.datalakes.status() ?? [],
    inodes: () => live?.fs.inodeCount,
    cacheSizeBytes: () => cacheSize.current(),
    engine: () => live?.engine.stats(),
  });
  notifier.status(`opening the datalakes and the cache ${config.cacheDir}`);
  const traces = config.prefetchTrace || config.recordTrace ? await loadLater<typeof import('./read-trace.js')>('./read-trace.js', import.meta.url) : undefined;
  if (config.prefetchTrace) await traces!.checkTraceReadable(config.prefetchTrace);
  const sliceFilter = config.slice ? new (await loadLater<typeof import('../slice/slice-filter.js')>('../slice/slice-filter.js', import.meta.url)).SliceFilter() : undefined;
  const trace: TraceRecorder | undefined = config.recordTrace ? new traces!.TraceRecorder(config.recordTrace, logger) : undefined;
  let stack: Awaited<ReturnType<typeof openStoreStack>>;
  try {
    stack = await openStoreStack({
      ...config, ...(sliceFilter ? { sliceFilter } : {}), ...(signal ? { signal } : {}),
      ...(trace ? { onFirstRead: (name: string, narOffset: number) => trace.record(name, narOffset) } : {}),
    }, logger, metrics);
  } catch (err) {
    await trace?.close();
    throw err;
  }
  const cleanups = new CleanupStack(logger);
  if (trace) cleanups.push(() => trace.close());
  cleanups.push(() => stack.close());
  try {
    const { store, materialiser } = stack;
    if (config.lower) {
      // A slice lists only its closures; registered paths stay reachable by name (README).
      const { watchRegisteredPaths } = await loadLater<typeof import('./watch-registered-paths.js')>('./watch-registered-paths.js', import.meta.url);
      const watcher = await watchRegisteredPaths(config.lower, (names) => (sliceFilter ? sliceFilter.retain(names) : store.addKnown(names)), logger);
      cleanups.push(() => watcher.close());
    }
    if (config.slice && sliceFilter) {
      notifier.status('fetching the slice list');
      const { startSlice } = await loadLater<typeof import('../slice/start-slice.js')>('../slice/start-slice.js', import.meta.url);
      // A stop during start-up ends the wait for the list at once; the slice, should it
      // still start, is closed with the rest.
      const starting = startSlice({
        settings: config.slice, cacheDir: config.cacheDir, filter: sliceFilter, infos: stack.infos as SlicedPathInfoService,
        readFile: (info, readSignal) => store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, readSignal ?? stack.signal),
        logger, signal: signal ? AbortSignal.any([stack.signal, signal]) : stack.signal,
        ...(config.datalakeAccess ? { access: config.datalakeAccess } : {}), ...(config.lower ? { lower: config.lower } : {}),
      });
      cleanups.push(() => starting.then((slice) => slice.close(), () => {}));
      await raceSignal(starting, signal);
    }
    // fuse-native sends no FORGET: its inodes must live as long as the mount.
    const roots = sliceFilter ? new (await loadLater<typeof import('../slice/sliced-root-nodes.js')>('../slice/sliced-root-nodes.js', import.meta.url)).SlicedRootNodes(store, sliceFilter) : store;
    const journal = restart ? await restart.openJournal() : undefined;
    if (journal) cleanups.push(() => journal.close());
    // Nodeids below the journal's next number were handed out by an earlier process.
    const backingJournal = journal && restart && backend === 'native'
      ? (await restart.openBackingJournal()).engineOptions(restart.adopted ? journal.nextIno : 0) : undefined;
    const fs = new StoreFilesystem(roots, store, {
      opTimeoutMs: config.opTimeoutMs, rootDirs: ['.links'], forgets: backend === 'native', ...(journal ? { journal } : {}),
    });
    const fuseOptions = {
      mountpoint, opTimeoutMs: config.opTimeoutMs, logger,
      ...(config.allowOther === undefined ? {} : { allowOther: config.allowOther }),
      // A path that left the slice must stop resolving from the kernel's dentry cache soon.
      ...(config.slice ? { rootEntryTimeoutS: Math.max(1, Math.min(60, Math.floor(config.slice.refreshMs / 1000))) } : {}),
    };
    // The engines see the filesystem through the metrics' timing proxy (per FUSE op).
    const served = metrics.timedFilesystem(fs, FUSE_OPS);
    const fuse = backend === 'native' ? new NativeMount(served, {
      ...fuseOptions, passthrough: config.passthrough ?? true,
      ...(config.fuseTransport ? { transport: config.fuseTransport } : {}), ...(adopt ? { adopt } : {}), ...(backingJournal ? { backingJournal } : {}),
    }) : new FuseNativeMount(served, fuseOptions);
    notifier.status(adopt ? `resuming ${mountpoint}` : `mounting ${mountpoint}`);
    let handingOver = false;
    if (restart) cleanups.push(() => (handingOver ? undefined : restart.clear()));
    signal?.throwIfAborted();
    try {
      await fuse.mount();
    } catch (err) {
      if (adopt) restart?.dropStored(); // the next start mounts afresh
      throw err;
    }
    cleanups.push(async () => {
      if (!handingOver || !(fuse instanceof NativeMount)) return fuse.unmount();
      const { unanswered } = await fuse.handover(HANDOVER_MS);
      logger.info('handing the mount over to the next process', { mountpoint, unanswered });
    });
    if (restart && fuse instanceof NativeMount && fuse.init) {
      if (adopt) logger.info('resumed the mount', { mountpoint, resend: fuse.resendErrno === 0 ? 'requeued' : `errno ${fuse.resendErrno}`, journal: journal?.size });
      await restart.save(mountpoint, fuse.init, fuse.deviceFds());
    }
    // The mount's device, to know it again when the connection ends (this process mounted
    // it, or adopted it from the previous one); read beside the start, not in its way
    // (mountEntry never rejects).
    const ours = fuse instanceof NativeMount ? mountEntry(mountpoint).then((e) => e?.dev) : undefined;
    const ended = fuse instanceof NativeMount
      ? fuse.ended.then(async ({ errno }) => {
        // An aborted connection leaves a dead mount behind (every call on it fails with
        // ENOTCONN): detach it, unless what is there now is not ours.
        const dev = await ours;
        const stale = dev !== undefined && (await mountEntry(mountpoint))?.dev === dev;
        if (stale) await forceUnmount(mountpoint).catch(() => {});
        return { errno, stale };
      })
      : new Promise<{ errno: number; stale: boolean }>(() => {});
    const engine = { backend, stats: () => (fuse instanceof NativeMount ? fuse.stats() : undefined) };
    // Requests the engine served (native only: the fuse-native binding counts none), for
    // the background work that waits while the mount is in use.
    const engineRequests = fuse instanceof NativeMount ? () => fuse.workloadRequests() : () => metrics.requestsAnsweredInJs();
    // Background commits wait while the engine serves requests, not only reads that reach JS.
    if (fuse instanceof NativeMount) stack.materialiser.watchActivity(engineRequests);
    // An idle daemon gives back the memory of its last burst (GC, then malloc_trim).
    const release = startQuietMemoryRelease({
      activity: () => engineRequests() + store.counters.bytesRead,
      busy: () => stack.materialiser.busy, trim: nativeMallocTrim(), logger,
    });
    cleanups.push(() => release.stop());
    live = { stack, fs, engine };
    const startedAt = Date.now();
    const status = () => runStatus({
      mountpoint, backend, cacheDir: config.cacheDir, lower: config.lower, lowerSocket: config.lowerSocket,
      datalakes: stack.datalakes, metrics, cacheSize, inodes: () => fs.inodeCount, engine: engine.stats, startedAt,
      files: () => stack.blobs.stats(),
      kept: () => ({ nars: stack.pending.size, bytes: stack.pending.bytes }),
      ranged: () => ({ ...stack.chunks.stats, rangedReads: store.counters.rangedReads, wholeNarReads: store.counters.wholeNarReads }),
    });
    // READY only once another process got an answer from the mount (not merely INIT). That
    // check (a statfs in a child process, a Node start) runs while the control socket and
    // the other services start, which are loaded only now: the mount answers before them.
    const liveness = mountState(mountpoint);
    let metricsAddress: string | undefined;
    const services = (async () => {
      const { startControlServer } = await loadLater<typeof import('./control-server.js')>('./control-server.js', import.meta.url);
      const control = await startControlServer(config.cacheDir, { stack, defaultLower: config.lower, logger, status });
      cleanups.push(() => control.close());
      if (config.lowerSocket) {
        const { startLowerDaemon } = await loadLater<typeof import('./lower-daemon.js')>('./lower-daemon.js', import.meta.url);
        const lowerd = await startLowerDaemon(resolve(config.lowerSocket), {
          infos: stack.infos,
          readFile: (info, signal) => store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, signal),
          registrationTime: Math.floor(Date.now() / 1000),
          logger,
        });
        cleanups.push(() => lowerd.close());
      }
      if (config.metricsListen) {
        const { startMetricsServer } = await loadLater<typeof import('./metrics-server.js')>('./metrics-server.js', import.meta.url);
        const server = await startMetricsServer(config.metricsListen, metrics.registry);
        cleanups.push(() => server.close());
        metricsAddress = server.address;
        logger.info('metrics endpoint listening', { url: `http://${metricsAddress}/metrics` });
      }
    })();
    // Both settle before either's error is raised (the services' first, as when they ran
    // before the check). Both are bounded (the check by its child's deadline), so a stop
    // asked for meanwhile waits for them: the cleanups then find every service that started.
    const [checked, started] = await Promise.allSettled([liveness, services]);
    signal?.throwIfAborted();
    if (started.status === 'rejected') throw started.reason;
    // A check that could not run at all is not a verdict on the mount: its cause is kept.
    if (checked.status === 'rejected') throw toNarfsError(checked.reason, 'ERR_MOUNT');
    const state = checked.value;
    if (state !== 'live') throw new NarfsError('ERR_MOUNT', `${mountpoint} does not answer after mounting (${state})`);
    const summary = () => {
      const ds = stack.datalakes.status();
      return `serving ${mountpoint}: ${ds.filter((d) => d.up).length}/${ds.length} datalakes up, ` +
        `${metrics.narBytes.series.size === 0 ? 0 : [...metrics.narBytes.series.values()].reduce((a, s) => a + s.value, 0)} NAR bytes fetched`;
    };
    notifier.ready(summary(), summary, fuse instanceof NativeMount ? fuse.watchdog : undefined);
    cleanups.push(async () => notifier.stopping(handingOver ? `restarting: keeping ${mountpoint} mounted` : `unmounting ${mountpoint}`));
    if (config.prefetchTrace) {
      // In the background: the mount serves at once; the replay stops when the stack closes.
      void traces!.replayTrace(config.prefetchTrace, store, logger, stack.signal);
    }
    return {
      mountpoint, store, materialiser, stack, fs, engine, metrics, metricsAddress, status, ended,
      close: () => cleanups.run(),
      shouldHandOver: async () => restart !== undefined && await RestartState.restartPending(logger),
      handover: () => {
        handingOver = true;
        return cleanups.run();
      },
    };
  } catch (err) {
    await cleanups.run();
    throw toNarfsError(err);
  }
}

/** The FUSE engine: the config's, else $NARFS_FUSE_BACKEND, else the native engine. */
export function fuseBackendOf(config: MountConfig): 'native' | 'fuse-native' {
  const fromEnv = process.env['NARFS_FUSE_BACKEND'];
  const chosen = config.fuseBackend ?? (fromEnv === 'native' || fromEnv === 'fuse-native' ? fromEnv : undefined);
  return chosen ?? 'native';
}

/** How many times a stale mount is detached before the mountpoint is given up on. */
const STALE_MOUNT_ATTEMPTS = 3;

export interface PrepareMountpointOptions {
  /** How a stale mount is detached (default: forceUnmount, with fusectl abort). */
  detach?: (mountpoint: string) => Promise<void>;
}

/**
 * Detaches a stale mount of a crashed run; refuses a live one, one that does not answer,
 * another filesystem, and a non-directory. Staleness is decided by mountState (statfs in a
 * child process), not by `stat`, which the kernel answers from its attribute cache after
 * the daemon died. A mountpoint that is still stale after STALE_MOUNT_ATTEMPTS detaches
 * (stacked stale mounts, or one this process may not remove) fails with ERR_MOUNTPOINT
 * instead of trying for ever.
 */
export async function prepareMountpoint(mountpoint: string, logger: Logger, options: PrepareMountpointOptions = {}): Promise<void> {
  const detach = options.detach ?? ((m: string) => forceUnmount(m, { abort: true }));
  for (let attempt = 0; ; attempt++) {
    // What is mounted there is asked first, without a call on the mount itself: a `stat`
    // of a hung mount would hang, and one of a dead mount may be answered from the cache.
    const state = await mountState(mountpoint);
    if (state === 'none') {
      try {
        const st = await stat(mountpoint);
        if (!st.isDirectory()) throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} is not a directory`);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} does not exist`);
        throw toNarfsError(err, 'ERR_MOUNTPOINT');
      }
    }
    if (state === 'live' || state === 'other') {
      throw new NarfsError('ERR_MOUNT', `${mountpoint} is already a mountpoint`, { hint: 'Unmount it first (fusermount -u), or choose another directory.' });
    }
    if (state === 'hung') {
      throw new NarfsError('ERR_MOUNT', `${mountpoint} is a FUSE mount whose daemon does not answer`, {
        hint: `Stop that daemon, or detach the mount (fusermount -uz ${mountpoint}), then start again.`,
      });
    }
    if (attempt >= STALE_MOUNT_ATTEMPTS) {
      throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} is a stale FUSE mount that could not be detached (${attempt} attempts)`, {
        hint: `Detach it by hand (fusermount -uz ${mountpoint}, or umount -l ${mountpoint}) and check that no other mount is stacked on it.`,
      });
    }
    logger.warn('detaching a stale mount left by an earlier run', { mountpoint, attempt: attempt + 1 });
    await detach(mountpoint);
  }
}
