/**
 * registerOffThread: registerValidPaths (and createLowerStore) on a worker thread
 * (nixdb-worker.ts), so the daemon's main thread — which serves every FUSE request — never
 * stalls on SQLite or on copying the database, and the whole registration is bounded by
 * `timeoutMs`.
 *
 * Invariant: the outcome is the same as the in-thread call (all or nothing, the same error
 * code, hint and details); a worker stopped at the deadline is like a writer killed
 * mid-write, which the generation protocol survives (write-generation.ts). Always on a
 * worker, also from the TypeScript sources (run-in-worker.ts).
 */
import type { RegisterValidPathsResult } from './register-valid-paths.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from './with-writer-locks.js';
import { runInWorker } from './run-in-worker.js';
import type { NixdbJob } from './nixdb-worker.js';
import type { ValidPathInfo } from './valid-path-info.js';

export const NIXDB_WORKER = new URL('./nixdb-worker.js', import.meta.url);

export interface RegisterOffThreadOptions {
  lockTimeoutMs?: number;
  /** Bound of the whole registration (default: lock timeout + 5 min). */
  timeoutMs?: number;
}

export async function registerOffThread(
  lowerRoot: string, infos: ValidPathInfo[], options: RegisterOffThreadOptions = {},
): Promise<RegisterValidPathsResult> {
  const job: NixdbJob = {
    op: 'register', lowerRoot, infos,
    ...(options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs }),
  };
  const timeoutMs = options.timeoutMs ?? (options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS) + 300_000;
  return runInWorker<RegisterValidPathsResult>(NIXDB_WORKER, job, { timeoutMs, what: 'registration', failureCode: 'ERR_DB_IO' });
}
