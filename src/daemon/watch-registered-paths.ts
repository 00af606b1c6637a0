/**
 * watchRegisteredPaths: keeps the mount's root listing in step with the lower store's
 * database, so every registered path has a directory entry (Nix's `--verify` of a lower
 * store drops rows whose entry is missing, nix-formats.md §6.3).
 *
 * Invariants: the lower store exists (created if absent, as Nix would create it), its
 * registered paths are read before the mount serves, and again after every new database
 * generation (a rename in the db directory), debounced, one scan at a time. SQLite is
 * only ever opened on a worker thread within a deadline (`scanTimeoutMs`), never on the
 * thread that serves FUSE, and the names arrive in slices with a turn of the event loop
 * between them, so `onNames` may be called several times per scan: each call adds names.
 * A failed scan is logged and the names known so far stay.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { createLowerStoreOffThread, lowerStoreLayout, nameChunks, readValidNamesOffThread } from '../nixdb/index.js';

export interface RegisteredPathsWatcher {
  close(): void;
}

export interface WatchRegisteredPathsOptions {
  /** Bound of one scan of `ValidPaths` (default 60 s). */
  scanTimeoutMs?: number;
  /** Quiet time after a database change before scanning (default 200 ms). */
  debounceMs?: number;
}

export async function watchRegisteredPaths(
  lowerRoot: string, onNames: (names: string[]) => void, logger: Logger, options: WatchRegisteredPathsOptions = {},
): Promise<RegisteredPathsWatcher> {
  const scanTimeoutMs = options.scanTimeoutMs ?? 60_000;
  const debounceMs = options.debounceMs ?? 200;
  await createLowerStoreOffThread(lowerRoot);
  const layout = lowerStoreLayout(lowerRoot);
  const closing = new AbortController();

  /** One scan; the number of names delivered, or undefined when it failed. */
  const scan = async (): Promise<number | undefined> => {
    let bytes: Uint8Array;
    try {
      bytes = await readValidNamesOffThread(lowerRoot, { timeoutMs: scanTimeoutMs, signal: closing.signal });
    } catch (err) {
      if (!closing.signal.aborted) {
        logger.error('cannot read the registered paths of the lower store; the names known so far stay', { lower: lowerRoot, err });
      }
      return undefined;
    }
    let n = 0;
    for (const names of nameChunks(bytes)) {
      if (closing.signal.aborted) break;
      onNames(names);
      n += names.length;
      await nextTurn();
    }
    return n;
  };

  // One scan at a time; a change during a scan asks for one more after it.
  let loop: Promise<void> | undefined;
  let again = false;
  let last: number | undefined;
  const rescan = (): Promise<void> => {
    again = true;
    loop ??= (async () => {
      while (again && !closing.signal.aborted) {
        again = false;
        last = await scan();
      }
    })().finally(() => {
      loop = undefined;
      if (again && !closing.signal.aborted) void rescan();
    });
    return loop;
  };

  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(layout.dbDir, (_event, file) => {
      if (file !== basename(layout.dbPath)) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => void rescan(), debounceMs);
    });
    watcher.on('error', (err) => logger.warn('watching the lower database failed', { err }));
  } catch (err) {
    logger.warn('cannot watch the lower database; restart the mount to see new registrations', { err });
  }
  await rescan();
  logger.info('lower store', { lower: layout.root, registered: last ?? 0 });
  return {
    close() {
      closing.abort();
      if (timer) clearTimeout(timer);
      watcher?.close();
    },
  };
}
