/**
 * MountDaemon: wires config → datalakes → caches → store → filesystem → FUSE, and takes
 * them down again in reverse order.
 *
 * Invariants: a stale mount left by a crashed run ("Transport endpoint is not connected")
 * is detached before mounting; `close()` unmounts first (so no new requests arrive), then
 * aborts fetches in flight, then closes caches and datalakes; every step is bounded.
 */
import { readFile, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { NarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MountConfig } from '../config/mount-config.js';
import type { Materialiser } from '../store/materialiser.js';
import type { LazyStore } from '../store/lazy-store.js';
import { openStoreStack } from './store-stack.js';
import { CleanupStack } from './cleanup-stack.js';
import { startControlServer } from './control-server.js';
import { watchRegisteredPaths } from './watch-registered-paths.js';
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
  const mountpoint = resolve(config.mountpoint);
  await prepareMountpoint(mountpoint, logger);
  const stack = await openStoreStack(config, logger);
  const cleanups = new CleanupStack(logger);
  cleanups.push(() => stack.close());
  try {
    const { store, materialiser } = stack;
    if (config.lower) {
      const watcher = await watchRegisteredPaths(config.lower, (names) => store.addKnown(names), logger);
      cleanups.push(() => watcher.close());
    }
    const fs = new StoreFilesystem(store, store, { opTimeoutMs: config.opTimeoutMs, rootDirs: ['.links'] });
    const fuse = new FuseNativeMount(fs, {
      mountpoint, opTimeoutMs: config.opTimeoutMs, logger,
      ...(config.allowOther === undefined ? {} : { allowOther: config.allowOther }),
    });
    await fuse.mount();
    cleanups.push(() => fuse.unmount());
    const control = await startControlServer(config.cacheDir, { stack, defaultLower: config.lower, logger });
    cleanups.push(() => control.close());
    return { mountpoint, store, materialiser, fs, close: () => cleanups.run() };
  } catch (err) {
    await cleanups.run();
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
