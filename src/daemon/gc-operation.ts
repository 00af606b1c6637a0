/**
 * runGc: `narfs gc` — trims the cache to a size by evicting whole least-recently-used
 * files (never one that is open or being read: BlobStore pins), alone on an idle cache or
 * inside the daemon that serves it (through the control socket), so the daemon's own
 * accounting stays true. Without a size, trims to the cache's bound.
 */
import type { Logger } from '../log.js';
import type { BlobStore } from '../cache/blob-store.js';

export interface GcResult {
  before: number;
  after: number;
  freed: number;
  evicted: number;
  maxBytes: number;
  blobs: number;
  partials: number;
}

export async function runGc(blobs: BlobStore, maxBytes: number | undefined, logger: Logger): Promise<GcResult> {
  const before = blobs.stats().bytes;
  const bound = maxBytes ?? blobs.maxBytes;
  const { freed, evicted } = await blobs.evictTo(bound);
  const st = blobs.stats();
  const result: GcResult = { before, after: st.bytes, freed, evicted, maxBytes: bound, blobs: st.blobs, partials: st.partials };
  logger.info('gc done', { ...result });
  return result;
}
