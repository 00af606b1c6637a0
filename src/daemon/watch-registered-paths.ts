/**
 * watchRegisteredPaths: keeps the mount's root listing in step with the lower store's
 * database, so every registered path has a directory entry (Nix's `--verify` of a lower
 * store drops rows whose entry is missing, nix-formats.md §6.3).
 *
 * Invariant: the lower store exists (created if absent, as Nix would create it), its
 * registered paths are read before the mount serves, and again after every new database
 * generation (a rename in the db directory), debounced.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename } from 'node:path';
import type { Logger } from '../log.js';
import { createLowerStore, lowerStoreLayout, readValidPaths } from '../nixdb/index.js';

export interface RegisteredPathsWatcher {
  close(): void;
}

export async function watchRegisteredPaths(
  lowerRoot: string, onNames: (names: string[]) => void, logger: Logger,
): Promise<RegisteredPathsWatcher> {
  await createLowerStore(lowerRoot);
  const layout = lowerStoreLayout(lowerRoot);
  const load = () => {
    try {
      const names = readValidPaths(lowerRoot).map((p) => basename(p));
      onNames(names);
      return names.length;
    } catch (err) {
      logger.error('cannot read the registered paths of the lower store', { lower: lowerRoot, err });
      return 0;
    }
  };
  const n = load();
  logger.info('lower store', { lower: layout.root, registered: n });
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(layout.dbDir, (_event, file) => {
      if (file !== basename(layout.dbPath)) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(load, 200);
    });
    watcher.on('error', (err) => logger.warn('watching the lower database failed', { err }));
  } catch (err) {
    logger.warn('cannot watch the lower database; restart the mount to see new registrations', { err });
  }
  return {
    close() {
      if (timer) clearTimeout(timer);
      watcher?.close();
    },
  };
}
