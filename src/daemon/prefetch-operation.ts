/**
 * runPrefetch: `narfs prefetch <store path>...` on the daemon's store — the closures of
 * the roots (verified narinfos, References), every file of every path fetched into the
 * cache (by range when the path is indexed, else its whole NAR), while the mount keeps
 * serving. Progress goes to the caller as `progress` log lines: paths done/total and
 * bytes of file contents done/total.
 *
 * Invariants: at most `concurrency` store paths at once; a path that fails is reported
 * and counted, the others go on (the result says how many failed); the client going away
 * stops the work (its signal), the cache keeps what was fetched.
 */
import { toNarfsError } from '../errors.js';
import { eachLimited } from '../each-limited.js';
import type { Logger } from '../log.js';
import { storePathBase } from '../nix/store-path.js';
import { collectClosure } from '../store/closure.js';
import { parseRoot } from './register-operation.js';
import type { StoreStack } from './store-stack.js';

export interface PrefetchResult {
  paths: number;
  files: number;
  bytes: number;
  failed: number;
  ms: number;
}

export async function runPrefetch(stack: StoreStack, roots: readonly string[], logger: Logger, signal: AbortSignal, concurrency = 2): Promise<PrefetchResult> {
  const t0 = performance.now();
  const closure = await collectClosure(roots.map(parseRoot), stack.infos, { signal });
  const names = closure.map((i) => storePathBase(i.narInfo.storePath));
  const totalBytes = closure.reduce((n, i) => n + i.narInfo.narSize, 0);
  logger.info('progress', { done: 0, total: names.length, bytes: 0, totalBytes });
  let done = 0;
  let files = 0;
  let bytes = 0;
  let doneNar = 0;
  let failed = 0;
  await eachLimited(names, concurrency, async (name, i) => {
    try {
      const r = await stack.store.prefetchPath(name, signal);
      files += r.files;
      bytes += r.bytes;
    } catch (err) {
      if (signal.aborted) return;
      failed++;
      logger.warn('prefetch of a store path failed', { path: name, err: toNarfsError(err) });
    }
    done++;
    doneNar += closure[i]!.narInfo.narSize;
    logger.info('progress', { done, total: names.length, bytes: doneNar, totalBytes });
  }, () => signal.aborted);
  return { paths: names.length, files, bytes, failed, ms: Math.round(performance.now() - t0) };
}
