/**
 * collectClosure: the closure of some store paths, resolved through verified narinfos
 * (the same signature policy as the mount), breadth first with bounded concurrency.
 *
 * Invariant: the result is closed under `References` (Nix's closure invariant,
 * local-store.cc registerValidPaths); a reference no datalake has is ERR_CLOSURE_INCOMPLETE
 * naming it and its referrer, so callers never register part of a closure.
 */
import { NarfsError } from '../errors.js';
import { storePathBase, type StorePath } from '../nix/store-path.js';
import type { PathInfo, PathInfoService } from './path-info-service.js';

export interface CollectClosureOptions {
  concurrency?: number;
  signal?: AbortSignal;
  /** Called now and then with the number of paths resolved so far. */
  onProgress?(resolved: number, queued: number): void;
}

export async function collectClosure(roots: StorePath[], infos: PathInfoService, options: CollectClosureOptions = {}): Promise<PathInfo[]> {
  const concurrency = options.concurrency ?? 16;
  const seen = new Map<string, string | undefined>(); // base → referrer (for messages)
  const queue: StorePath[] = [];
  const out: PathInfo[] = [];
  for (const r of roots) {
    const b = storePathBase(r);
    if (!seen.has(b)) { seen.set(b, undefined); queue.push(r); }
  }
  let lastProgress = 0;
  const worker = async () => {
    for (let sp = queue.shift(); sp; sp = queue.shift()) {
      const base = storePathBase(sp);
      const info = await infos.get(sp, options.signal);
      if (!info) {
        const referrer = seen.get(base);
        throw new NarfsError('ERR_CLOSURE_INCOMPLETE',
          referrer ? `${base}, a reference of ${referrer}, is in no datalake` : `${base} is in no datalake`,
          { details: { missing: [`/nix/store/${base}`], ...(referrer ? { referrer: `/nix/store/${referrer}` } : {}) } });
      }
      out.push(info);
      for (const ref of info.narInfo.references) {
        const rb = storePathBase(ref);
        if (!seen.has(rb)) { seen.set(rb, base); queue.push(ref); }
      }
      if (options.onProgress && Date.now() - lastProgress > 1000) {
        lastProgress = Date.now();
        options.onProgress(out.length, queue.length);
      }
    }
  };
  // Workers drain the queue; one that finds it empty while others still fetch ends, so
  // loop until no worker has anything left.
  while (queue.length > 0) {
    await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
  }
  options.onProgress?.(out.length, 0);
  return out;
}
