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

/** How many times a stale mount is detached before the mountpoint is given up on. */
const STALE_MOUNT_ATTEMPTS = 3;

export interface PrepareMountpointOptions {
  /** How a stale mount is detached (default: forceUnmount, with fusectl abort). */
  detach?: (mountpoint: string) => Promise<void>;
}

/**
 * Detaches a stale mount of a crashed run; refuses a live one and a non-directory. A
 * mountpoint that still answers ENOTCONN after STALE_MOUNT_ATTEMPTS detaches (stacked
 * stale mounts, or one this process may not remove) fails with ERR_MOUNTPOINT instead of
 * trying for ever.
 */
export async function prepareMountpoint(mountpoint: string, logger: Logger, options: PrepareMountpointOptions = {}): Promise<void> {
  const detach = options.detach ?? ((m: string) => forceUnmount(m, { abort: true }));
  for (let attempt = 0; ; attempt++) {
    try {
      const st = await stat(mountpoint);
      if (!st.isDirectory()) throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} is not a directory`);
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTCONN' || code === 'ECONNABORTED') {
        if (attempt >= STALE_MOUNT_ATTEMPTS) {
          throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} is a stale FUSE mount that could not be detached (${attempt} attempts)`, {
            cause: err, hint: `Detach it by hand (fusermount -uz ${mountpoint}, or umount -l ${mountpoint}) and check that no other mount is stacked on it.`,
          });
        }
        logger.warn('detaching a stale mount left by an earlier run', { mountpoint, attempt: attempt + 1 });
        await detach(mountpoint);
        continue;
      }
      if (code === 'ENOENT') throw new NarfsError('ERR_MOUNTPOINT', `${mountpoint} does not exist`);
      throw toNarfsError(err, 'ERR_MOUNTPOINT');
    }
  }
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  const escaped = mountpoint.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  if (mounts.split('\n').some((l) => l.split(' ')[1] === escaped)) {
    throw new NarfsError('ERR_MOUNT', `${mountpoint} is already a mountpoint`, { hint: 'Unmount it first (fusermount -u), or choose another directory.' });
  }
}
