/**
 * verifyNarCache: re-hashes every cached NAR against the NarHash it was verified against
 * when it was stored (NarCache.verify), and drops the ones that no longer match: bit rot,
 * a truncated file, a listing edited by hand, or an entry without its record.
 *
 * Invariant: only entries that fail are touched; an entry being written (tmp/) is not
 * seen. Hashing runs `concurrency` files at a time (default 2), streaming, so memory stays
 * bounded whatever the size of the cache. Each dropped entry is reported to `onDropped`
 * (the daemon uses it to forget its open descriptor and the "verified" mark).
 */
import { NarfsError } from '../errors.js';
import type { NarCache } from './nar-cache.js';

export interface VerifyNarCacheOptions {
  concurrency?: number;
  signal?: AbortSignal;
  /** Called after an entry was found damaged and dropped. */
  onDropped?: (name: string, error: NarfsError) => void | Promise<void>;
}

export interface VerifyNarCacheResult {
  checked: number;
  ok: number;
  bytes: number;
  dropped: Array<{ name: string; code: string; message: string }>;
}

export async function verifyNarCache(cache: NarCache, options: VerifyNarCacheOptions = {}): Promise<VerifyNarCacheResult> {
  const names = (await cache.cachedNames()).sort();
  const result: VerifyNarCacheResult = { checked: 0, ok: 0, bytes: 0, dropped: [] };
  const queue = [...names];
  const worker = async () => {
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
      if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', 'verify-cache was cancelled', { cause: options.signal.reason });
      const outcome = await cache.verify(name, options.signal);
      if (outcome.state === 'absent') continue; // removed meanwhile
      result.checked++;
      if (outcome.state === 'ok') {
        result.ok++;
        result.bytes += outcome.bytes;
      } else {
        result.dropped.push({ name, code: outcome.error.code, message: outcome.error.message });
        await options.onDropped?.(name, outcome.error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 2) }, worker));
  result.dropped.sort((a, b) => (a.name < b.name ? -1 : 1));
  return result;
}
