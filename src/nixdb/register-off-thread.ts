/**
 * registerOffThread: registerValidPaths (and createLowerStore) on a worker thread
 * (nixdb-worker.ts), so the daemon's main thread — which serves every FUSE request — never
 * stalls on SQLite or on copying the database, and the whole registration is bounded by
 * `timeoutMs`.
 *
 * Coalescing: per lower store, one worker job runs at a time; calls that arrive while it
 * runs wait and then go together as ONE job that writes ONE generation
 * (registerValidPathBatches), so N concurrent registrations cost one lock, one copy and one
 * fsync instead of N. Each call keeps its own outcome, as if the calls had run one after
 * the other in arrival order (a failing batch fails alone).
 *
 * Invariant: the outcome of each call is the same as the in-thread call (all or nothing,
 * the same error code, hint and details); a worker stopped at the deadline is like a
 * writer killed mid-write, which the generation protocol survives (write-generation.ts).
 * A call whose deadline passes while it waits is dropped before it starts (never written);
 * one whose deadline passes while its job runs gets ERR_DEADLINE and the job goes on for
 * the others (its rows may land, as when a writer is killed after its rename). Always on a
 * worker, also from the TypeScript sources (run-in-worker.ts).
 */
import { resolve } from 'node:path';
import { NarfsError } from '../errors.js';
import type { RegisterValidPathsResult } from './register-valid-paths.js';
import { DEFAULT_LOCK_TIMEOUT_MS } from './with-writer-locks.js';
import { runInWorker } from './run-in-worker.js';
import type { NixdbJob } from './nixdb-worker.js';
import type { ValidPathInfo } from './valid-path-info.js';
import { fromWireError, type WireError } from './wire-error.js';

export const NIXDB_WORKER = new URL('./nixdb-worker.js', import.meta.url);

export interface RegisterOffThreadOptions {
  lockTimeoutMs?: number;
  /** Bound of the whole registration (default: lock timeout + 5 min). */
  timeoutMs?: number;
}

interface Pending {
  infos: ValidPathInfo[];
  lockTimeoutMs: number;
  deadline: number;
  settled: boolean;
  timer: NodeJS.Timeout;
  resolve(r: RegisterValidPathsResult): void;
  reject(e: unknown): void;
}

interface Queue {
  running: boolean;
  waiting: Pending[];
}

const queues = new Map<string, Queue>();

type WireOutcome = { ok: true; value: RegisterValidPathsResult } | { ok: false; error: WireError };

function settle(p: Pending, fn: () => void): void {
  if (p.settled) return;
  p.settled = true;
  clearTimeout(p.timer);
  fn();
}

async function drain(lowerRoot: string, q: Queue): Promise<void> {
  while (q.waiting.length > 0) {
    const group = q.waiting.splice(0).filter((p) => !p.settled);
    if (group.length === 0) continue;
    q.running = true;
    const lockTimeoutMs = Math.max(...group.map((p) => p.lockTimeoutMs));
    const timeoutMs = Math.max(1, Math.max(...group.map((p) => p.deadline)) - Date.now());
    try {
      if (group.length === 1) {
        const p = group[0]!;
        const job: NixdbJob = { op: 'register', lowerRoot, infos: p.infos, lockTimeoutMs };
        try {
          const r = await runInWorker<RegisterValidPathsResult>(NIXDB_WORKER, job, { timeoutMs, what: 'registration', failureCode: 'ERR_DB_IO' });
          settle(p, () => p.resolve(r));
        } catch (e) {
          settle(p, () => p.reject(e));
        }
        continue;
      }
      const job: NixdbJob = { op: 'register-batches', lowerRoot, batches: group.map((p) => p.infos), lockTimeoutMs };
      try {
        const outcomes = await runInWorker<WireOutcome[]>(NIXDB_WORKER, job, { timeoutMs, what: 'registration', failureCode: 'ERR_DB_IO' });
        group.forEach((p, i) => {
          const o = outcomes[i];
          if (o?.ok) settle(p, () => p.resolve(o.value));
          else settle(p, () => p.reject(o ? fromWireError(o.error, 'ERR_DB_IO') : new NarfsError('ERR_INTERNAL', 'the registration worker gave no outcome for a batch')));
        });
      } catch (e) {
        for (const p of group) settle(p, () => p.reject(e));
      }
    } finally {
      q.running = false;
    }
  }
  queues.delete(lowerRoot);
}

export function registerOffThread(
  lowerRoot: string, infos: ValidPathInfo[], options: RegisterOffThreadOptions = {},
): Promise<RegisterValidPathsResult> {
  const root = resolve(lowerRoot);
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const timeoutMs = options.timeoutMs ?? lockTimeoutMs + 300_000;
  let q = queues.get(root);
  if (!q) {
    q = { running: false, waiting: [] };
    queues.set(root, q);
  }
  const queue = q;
  return new Promise<RegisterValidPathsResult>((resolvePromise, reject) => {
    const p: Pending = {
      infos, lockTimeoutMs, deadline: Date.now() + timeoutMs, settled: false,
      resolve: resolvePromise, reject,
      timer: setTimeout(() => {
        // Still waiting: dropped before it is written. In a running job: see the header.
        const i = queue.waiting.indexOf(p);
        if (i >= 0) queue.waiting.splice(i, 1);
        settle(p, () => reject(new NarfsError('ERR_DEADLINE', `registration did not finish within ${timeoutMs} ms`)));
      }, timeoutMs),
    };
    queue.waiting.push(p);
    if (!queue.running && queue.waiting.length === 1) void drain(root, queue);
  });
}
