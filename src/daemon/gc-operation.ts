/**
 * runGc: `narfs gc` — trims the cache to a size by evicting whole least-recently-used
 * files (never one that is open or being read: BlobStore pins), alone on an idle cache or
 * inside the daemon that serves it (through the control socket), so the daemon's own
 * accounting stays true. Without a size, trims to the cache's bound. When evicting blobs
 * is not enough, the NARs a stop kept for the next start (pending-nars.ts) go too, oldest
 * first: they count in the bound, and the datalake still has them.
 */
import type { Logger } from '../log.js';
import type { BlobStore } from '../cache/blob-store.js';
import type { PendingNars } from '../cache/pending-nars.js';

export interface GcResult {
  before: number;
  after: number;
  freed: number;
  evicted: number;
  maxBytes: number;
  blobs: number;
  partials: number;
}

export async function runGc(blobs: BlobStore, maxBytes: number | undefined, logger: Logger, pending?: PendingNars): Promise<GcResult> {
  const before = blobs.stats().bytes;
  const bound = maxBytes ?? blobs.maxBytes;
  let { freed, evicted } = await blobs.evictTo(bound);
  if (pending && blobs.stats().bytes > bound) {
    const kept = await pending.trimTo(bound);
    freed += kept.freed;
    evicted += kept.removed;
  }
  const st = blobs.stats();
  const result: GcResult = { before, after: st.bytes, freed, evicted, maxBytes: bound, blobs: st.blobs, partials: st.partials };
  logger.info('gc done', { ...result });
  return result;
}
