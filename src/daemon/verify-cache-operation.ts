/**
 * runVerifyCache: `narfs verify-cache` on a NAR cache — alone, or inside the daemon that
 * serves it (through the control socket), where every dropped entry is also forgotten by
 * the LazyStore (its open descriptor and its "verified" mark), so the next read fetches
 * the path again instead of serving the old bytes from an open file.
 *
 * Each dropped entry is logged as an error with its code (ERR_CACHE_CORRUPT).
 */
import type { Logger } from '../log.js';
import type { NarCache } from '../cache/nar-cache.js';
import { verifyNarCache, type VerifyNarCacheResult } from '../cache/verify-nar-cache.js';
import type { LazyStore } from '../store/lazy-store.js';

export async function runVerifyCache(
  nars: NarCache, store: LazyStore | undefined, logger: Logger, signal?: AbortSignal,
): Promise<VerifyNarCacheResult> {
  const started = Date.now();
  const result = await verifyNarCache(nars, {
    ...(signal ? { signal } : {}),
    onDropped: async (name, err) => {
      logger.error('cached NAR is damaged; dropped, it will be fetched again', { path: name, err });
      await store?.invalidate(name);
    },
  });
  logger.info('verify-cache done', {
    checked: result.checked, intact: result.ok, dropped: result.dropped.length, bytes: result.bytes, ms: Date.now() - started,
  });
  return result;
}
