/**
 * withOfflineCache: the cache of `<cache-dir>` opened by a command while no daemon serves
 * it (`narfs gc`, `narfs verify-cache`): the metadata cache first, as the lock (LevelDB
 * admits one process: a daemon that started meanwhile makes this ERR_CACHE_LOCKED), then
 * the blob and tree stores and the NARs a stop kept (counted in the blob store's bytes);
 * all closed again, in reverse order, whatever `fn` does.
 */
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { BlobStore } from '../cache/blob-store.js';
import { LevelMetadataCache } from '../cache/level-metadata-cache.js';
import { TreeStore } from '../cache/tree-store.js';
import { PendingNars } from '../cache/pending-nars.js';

export async function withOfflineCache<T>(cacheDir: string, logger: Logger, fn: (c: { blobs: BlobStore; trees: TreeStore; pending: PendingNars }) => Promise<T>): Promise<T> {
  const meta = await LevelMetadataCache.open(join(cacheDir, 'meta'));
  try {
    const blobs = await BlobStore.open(cacheDir, { logger });
    try {
      const trees = await TreeStore.open(cacheDir, { logger });
      const pending = await PendingNars.open(cacheDir, blobs, logger);
      try {
        return await fn({ blobs, trees, pending });
      } finally {
        pending.close();
      }
    } finally {
      await blobs.close();
    }
  } finally {
    await meta.close();
  }
}
