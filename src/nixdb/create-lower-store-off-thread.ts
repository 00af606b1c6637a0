/**
 * createLowerStoreOffThread: createLowerStore on a worker thread (nixdb-worker.ts) within
 * a deadline — it may copy a whole database into a new generation (a WAL to fold in, a
 * database from Nix < 2.26), which must not stall the daemon's main thread.
 *
 * Invariant: the same outcome and errors (code, hint, details) as the in-thread call;
 * `<lower>/nix/store` is created too, so call it only before the mount is there.
 */
import { runInWorker } from './run-in-worker.js';
import type { NixdbJob } from './nixdb-worker.js';
import { NIXDB_WORKER } from './register-off-thread.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from './with-writer-locks.js';

export interface CreateLowerStoreOffThreadOptions {
  lockTimeoutMs?: number;
  /** Bound of the whole call (default: lock timeout + 2 min). */
  timeoutMs?: number;
}

export async function createLowerStoreOffThread(lowerRoot: string, options: CreateLowerStoreOffThreadOptions = {}): Promise<void> {
  const job: NixdbJob = {
    op: 'create', lowerRoot,
    ...(options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs }),
  };
  const timeoutMs = options.timeoutMs ?? (options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS) + 120_000;
  await runInWorker<null>(NIXDB_WORKER, job, { timeoutMs, what: 'creating the lower store', failureCode: 'ERR_DB_IO' });
}
