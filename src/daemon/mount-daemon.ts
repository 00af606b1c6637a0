/**
 * MountDaemon: wires config → datalakes → caches → store → filesystem → FUSE, and takes
 * them down again in reverse order.
 *
 * Invariants: a stale mount left by a crashed run ("Transport endpoint is not connected")
 * is detached before mounting; `close()` unmounts first (so no new requests arrive), then
 * aborts fetches in flight, then closes caches and datalakes; every step is bounded.
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { NarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MountConfig } from '../config/mount-config.js';
import { DatalakeSet } from '../datalake/datalake-set.js';
import { LevelMetadataCache } from '../cache/level-metadata-cache.js';
import { NarCache } from '../cache/nar-cache.js';
import { PathInfoService } from '../store/path-info-service.js';
import { Materialiser } from '../store/materialiser.js';
import { LazyStore } from '../store/lazy-store.js';
import { checkSignaturePolicy } from '../store/signature-policy.js';
import { StoreFilesystem } from '../fs/store-filesystem.js';
import { FuseNativeMount, forceUnmount } from '../fuse/fuse-native-mount.js';

export interface RunningMount {
  readonly mountpoint: string;
  readonly store: LazyStore;
  readonly materialiser: Materialiser;
  readonly fs: StoreFilesystem;
  close(): Promise<void>;
}

export async function startMount(config: MountConfig, logger: Logger): Promise<RunningMount> {
  checkSignaturePolicy({ requireSigs: config.requireSigs, trustedKeys: config.trustedPublicKeys });
  const mountpoint = resolve(config.mountpoint);
  await prepareMountpoint(mountpoint, logger);

  const datalakes = DatalakeSet.fromUrls(config.datalakes, { logger });
  await datalakes.open();
  const cleanups: Array<() => Promise<void>> = [() => datalakes.close()];
  const runCleanups = async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => logger.warn('cleanup step failed', { err }));
  };
  try {
    await mkdir(config.cacheDir, { recursive: true, mode: 0o700 }).catch((err) => {
      throw new NarfsError('ERR_CACHE_IO', `cannot create the cache directory ${config.cacheDir}`, { cause: err });
    });
    const meta = await LevelMetadataCache.open(join(config.cacheDir, 'meta'));
    cleanups.push(() => meta.close());
    const nars = new NarCache(config.cacheDir);
    await nars.init();

    const shutdown = new AbortController();
    cleanups.push(async () => shutdown.abort(new NarfsError('ERR_ABORTED', 'narfs is shutting down')));
    const infos = new PathInfoService(datalakes, meta,
      { requireSigs: config.requireSigs, trustedKeys: config.trustedPublicKeys },
      { negativeTtlMs: config.negativeTtlMs, logger });
    const materialiser = new Materialiser(nars, { logger, signal: shutdown.signal });
    const store = new LazyStore(infos, materialiser, meta, nars, { logger });
    await store.loadKnown();
    cleanups.push(() => store.close());

    const fs = new StoreFilesystem(store, store, { opTimeoutMs: config.opTimeoutMs, rootDirs: ['.links'] });
    const fuse = new FuseNativeMount(fs, {
      mountpoint, opTimeoutMs: config.opTimeoutMs, logger,
      ...(config.allowOther === undefined ? {} : { allowOther: config.allowOther }),
    });
    await fuse.mount();
    cleanups.push(() => fuse.unmount());
    let closing: Promise<void> | undefined;
    return {
      mountpoint, store, materialiser, fs,
      close: () => (closing ??= runCleanups()),
    };
  } catch (err) {
    await runCleanups();
    throw toNarfsError(err);
  }
}

/** Detaches a stale mount of a crashed run; refuses a live one and a non-directory. */
async function prepareMountpoint(mountpoint: string, logger: Logger): Promise<void> {
  try {
    const st = await stat(mountpoint);
    if (!st.isDirectory()) throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} is not a directory`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') {
      logger.warn('detaching a stale mount left by an earlier run', { mountpoint });
      await forceUnmount(mountpoint);
      return prepareMountpoint(mountpoint, logger);
    }
    if (code === 'ENOENT') throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} does not exist`);
    throw toNarfsError(err, 'ERR_MOUNTPOINT');
  }
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  const escaped = mountpoint.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  if (mounts.split('\n').some((l) => l.split(' ')[1] === escaped)) {
    throw new NarfsError('ERR_MOUNT', `${mountpoint} is already a mountpoint`, { hint: 'Unmount it first (fusermount -u), or choose another directory.' });
  }
}
