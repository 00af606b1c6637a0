/**
 * registerOffThread: registerValidPaths (and createLowerStore) on a worker thread, so the
 * daemon's main thread — which serves every FUSE request — never stalls on SQLite or on
 * copying the database, and the whole registration is bounded by `timeoutMs`.
 *
 * Invariant: the outcome is the same as the in-thread call (all or nothing); a worker
 * stopped at the deadline is like a writer killed mid-write, which the generation
 * protocol survives (write-generation.ts). Without a compiled worker entry (running the
 * TypeScript sources directly), the call runs in-thread.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ERROR_CATALOG, NarfsError, type ErrorCode } from '../errors.js';
import { createLowerStore } from './create-lower-store.js';
import { registerValidPaths, type RegisterValidPathsResult } from './register-valid-paths.js';
import type { ValidPathInfo } from './valid-path-info.js';

export interface RegisterOffThreadOptions {
  lockTimeoutMs?: number;
  /** Bound of the whole registration (default: lock timeout + 5 min). */
  timeoutMs?: number;
}

export async function registerOffThread(
  lowerRoot: string, infos: ValidPathInfo[], options: RegisterOffThreadOptions = {},
): Promise<RegisterValidPathsResult> {
  const lock = options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs };
  const entry = new URL('./register-worker.js', import.meta.url);
  if (!existsSync(fileURLToPath(entry))) {
    await createLowerStore(lowerRoot, { ...lock, createStoreDir: false });
    return registerValidPaths(lowerRoot, infos, lock);
  }
  const timeoutMs = options.timeoutMs ?? (options.lockTimeoutMs ?? 30_000) + 300_000;
  const worker = new Worker(entry, { workerData: { lowerRoot, infos, ...lock } });
  return new Promise<RegisterValidPathsResult>((resolve, reject) => {
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      fn();
      void worker.terminate();
    };
    const timer = setTimeout(() => finish(() => reject(new NarfsError('ERR_DEADLINE', `registration did not finish within ${timeoutMs} ms`))), timeoutMs);
    worker.on('message', (m: { ok: boolean; result?: RegisterValidPathsResult; code?: string; message?: string; hint?: string }) => {
      if (m.ok) finish(() => resolve(m.result!));
      else {
        const code = (m.code && m.code in ERROR_CATALOG ? m.code : 'ERR_DB_IO') as ErrorCode;
        finish(() => reject(new NarfsError(code, m.message ?? 'registration failed', m.hint ? { hint: m.hint } : {})));
      }
    });
    worker.on('error', (err) => finish(() => reject(new NarfsError('ERR_DB_IO', `registration worker failed: ${err.message}`, { cause: err }))));
    worker.on('exit', (code) => finish(() => reject(new NarfsError('ERR_DB_IO', `registration worker exited (${code}) without an answer`))));
  });
}
