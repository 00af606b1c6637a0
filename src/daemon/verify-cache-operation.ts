/**
 * runVerifyCache: `narfs verify-cache` on the cache — alone, or inside the daemon that
 * serves it (through the control socket). Every complete blob is re-hashed against its
 * name, every chunk of a partial file against its recorded hash, every tree against its
 * checksum (BlobStore.scrub, TreeStore.verify); what does not match is dropped, so the
 * next read of it fetches it again (the daemon's reads look each file up in the BlobStore
 * before every read, so nothing dropped is served from memory).
 *
 * Each dropped entry is logged as an error with its code (ERR_CACHE_CORRUPT).
 */
import type { Logger } from '../log.js';
import type { BlobStore } from '../cache/blob-store.js';
import type { TreeStore } from '../cache/tree-store.js';

export interface VerifyCacheResult {
  /** Files (complete or partial) and trees checked. */
  checked: number;
  ok: number;
  /** Bytes of file contents found intact. */
  bytes: number;
  dropped: Array<{ kind: 'blob' | 'partial' | 'tree'; id: string; code: string; message: string }>;
}

export async function runVerifyCache(
  blobs: BlobStore, trees: TreeStore | undefined, logger: Logger, signal?: AbortSignal,
): Promise<VerifyCacheResult> {
  const started = Date.now();
  const scrub = await blobs.scrub({
    ...(signal ? { signal } : {}),
    onDropped: (sha, err) => {
      logger.error('cached file is damaged; dropped, it will be fetched again', { sha, err });
    },
  });
  const result: VerifyCacheResult = {
    checked: scrub.checked, ok: scrub.ok, bytes: scrub.bytes,
    dropped: scrub.dropped.map((d) => ({ kind: d.kind, id: d.sha, code: d.code, message: d.message })),
  };
  if (trees) {
    const t = await trees.verify();
    result.checked += t.checked;
    result.ok += t.checked - t.dropped.length;
    for (const d of t.dropped) {
      logger.error('cached tree is damaged; dropped, it will be fetched again', { path: d.name, err: d.error });
      result.dropped.push({ kind: 'tree', id: d.name, code: d.error.code, message: d.error.message });
    }
  }
  logger.info('verify-cache done', {
    checked: result.checked, intact: result.ok, dropped: result.dropped.length, bytes: result.bytes, ms: Date.now() - started,
  });
  return result;
}
