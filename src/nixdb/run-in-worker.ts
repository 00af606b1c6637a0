/**
 * runInWorker: one job on a worker thread, bounded by a deadline; answerParent: the worker
 * side of it.
 *
 * Protocol: the worker is started without `workerData` and serves jobs one message at a
 * time: it receives `{ job }` (with the caller's transfer list) and posts exactly one
 * `{ ok: true, value }` (with a transfer list when it hands over buffers) or
 * `{ ok: false, error: WireError }` per job. (A worker started with a job as its
 * `workerData` answers that one job, as before, and ends.)
 *
 * Warm worker: a worker whose job ended with an answer is kept, idle and unref'd (it never
 * keeps the process alive), for the next job of the same entry — at most one idle worker
 * per entry. Starting a worker and loading SQLite into it costs 25-45 ms on a loaded
 * 2-core machine, more than the whole registration of a small closure (issue 13). A job
 * never shares its worker with another job: two jobs at once run on two workers, exactly
 * as with a fresh worker per job; only the start-up is saved.
 *
 * Invariants: the work never runs on the calling thread — also when narfs runs from its
 * TypeScript sources (tsx, mocha): then the entry is the `.ts` sibling, started through
 * tsx's ESM API in the worker (Node 20 applies a worker's `--import` only after resolving
 * its entry, so `execArgv: ['--import', 'tsx']` alone cannot load a `.ts` entry). The
 * call settles no later than `timeoutMs`, or when `signal` aborts; either way that job's
 * worker is terminated and never reused (for a database writer that is a writer killed
 * mid-write, which the generation protocol survives, write-generation.ts). A worker that
 * fails or exits is never reused. An error keeps its code, hint and details
 * (wire-error.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parentPort, Worker, workerData, type TransferListItem } from 'node:worker_threads';
import { NarfsError, type ErrorCode } from '../errors.js';
import { fromWireError, toWireError, type WireError } from './wire-error.js';

export interface RunInWorkerOptions {
  timeoutMs: number;
  /** What the worker does, for messages ("registration"). */
  what: string;
  /** Code of failures that carry none (a crashed worker, a foreign error). */
  failureCode: ErrorCode;
  signal?: AbortSignal;
  transferList?: TransferListItem[];
}

type Answer = { ok: true; value: unknown } | { ok: false; error: WireError };

/** Idle, warm workers by entry URL (at most one each). */
const idle = new Map<string, Worker>();

/** A started worker that serves jobs: the idle one of `entry`, else a new one. */
function takeWorker(entry: URL): Worker {
  const warm = idle.get(entry.href);
  if (warm) {
    idle.delete(entry.href);
    warm.removeAllListeners('exit');
    warm.ref();
    return warm;
  }
  return startWorker(entry, undefined, undefined);
}

/** Keeps `worker` as the idle worker of `entry`, or ends it when there is one already. */
function keepWorker(entry: URL, worker: Worker): void {
  if (idle.has(entry.href)) {
    void worker.terminate();
    return;
  }
  worker.removeAllListeners('message');
  worker.removeAllListeners('error');
  worker.removeAllListeners('exit');
  // A worker that dies while idle is forgotten (its 'error' must have a listener).
  worker.on('error', () => {});
  worker.once('exit', () => {
    if (idle.get(entry.href) === worker) idle.delete(entry.href);
  });
  worker.unref();
  idle.set(entry.href, worker);
}

/** How many idle, warm workers there are (tests). */
export function idleWorkerCount(): number {
  return idle.size;
}

/** Ends the idle workers (tests; a process never needs to: they are unref'd). */
export async function endIdleWorkers(): Promise<void> {
  const workers = [...idle.values()];
  idle.clear();
  await Promise.all(workers.map((w) => w.terminate()));
}

/**
 * Runs the worker module `entry` — given as the URL of its compiled `.js` file, e.g.
 * `new URL('./nixdb-worker.js', import.meta.url)` — on `job`.
 */
export function runInWorker<T>(entry: URL, job: unknown, options: RunInWorkerOptions): Promise<T> {
  const { timeoutMs, what, failureCode, signal } = options;
  if (signal?.aborted) return Promise.reject(new NarfsError('ERR_ABORTED', `${what} was aborted`, { cause: signal.reason }));
  let worker: Worker;
  try {
    worker = takeWorker(entry);
    worker.postMessage({ job }, options.transferList ?? []);
  } catch (err) {
    return Promise.reject(new NarfsError(failureCode, `cannot start the ${what} worker: ${(err as Error).message}`, { cause: err }));
  }
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const finish = (fn: () => void, reusable = false) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (reusable) keepWorker(entry, worker);
      else void worker.terminate();
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new NarfsError('ERR_DEADLINE', `${what} did not finish within ${timeoutMs} ms`))), timeoutMs);
    const onAbort = () => finish(() => reject(new NarfsError('ERR_ABORTED', `${what} was aborted`, { cause: signal?.reason })));
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: Answer) => {
      if (m.ok) finish(() => resolve(m.value as T), true);
      else finish(() => reject(fromWireError(m.error, failureCode)), true);
    });
    worker.on('error', (err) => finish(() => reject(new NarfsError(failureCode, `the ${what} worker failed: ${err.message}`, { cause: err }))));
    worker.on('exit', (code) => finish(() => reject(new NarfsError(failureCode, `the ${what} worker exited (${code}) without an answer`))));
  });
}

export function startWorker(entry: URL, job: unknown, transferList: TransferListItem[] | undefined): Worker {
  const common = { workerData: job, ...(transferList ? { transferList } : {}) };
  if (existsSync(fileURLToPath(entry))) return new Worker(entry, common);
  // Running from the TypeScript sources: load the `.ts` sibling through tsx.
  const ts = new URL(entry.href.replace(/\.js$/, '.ts'));
  if (!existsSync(fileURLToPath(ts))) throw new Error(`no worker entry ${fileURLToPath(entry)} (nor its .ts source)`);
  const boot = `const { register } = await import(${JSON.stringify(tsxEsmApi(entry))}); register(); await import(${JSON.stringify(ts.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), common);
}

/**
 * The URL of tsx's ESM API (`tsx/esm/api`, "import" condition), found from `from`. Under
 * mocha the sources run as CommonJS, where import.meta.resolve is absent and require's
 * resolution picks the CommonJS build, whose register() cannot find its hooks on Node 20;
 * so the package's own exports map is read.
 */
function tsxEsmApi(from: URL): string {
  const pkgJson = createRequire(from).resolve('tsx/package.json');
  const pkg = JSON.parse(readFileSync(pkgJson, 'utf8')) as { exports?: Record<string, { import?: { default?: string } }> };
  const rel = pkg.exports?.['./esm/api']?.import?.default;
  if (!rel) throw new Error(`${pkgJson} exports no ESM "./esm/api"`);
  return pathToFileURL(join(dirname(pkgJson), rel)).href;
}

export interface WorkerAnswer<T> {
  value: T;
  transferList?: TransferListItem[];
}

/**
 * The worker side: runs `fn` on each job and posts its answer — the one job of
 * `workerData` when there is one (then the worker ends), else every `{ job }` message,
 * one at a time, for as long as the parent keeps the worker. Errors that are not
 * NarfsErrors get `failureCode`.
 */
export async function answerParent<J, T>(fn: (job: J) => Promise<WorkerAnswer<T>>, failureCode: ErrorCode): Promise<void> {
  const port = parentPort;
  if (!port) throw new NarfsError('ERR_INTERNAL', 'answerParent runs only on a worker thread');
  const answer = async (job: J): Promise<void> => {
    let a: WorkerAnswer<T>;
    try {
      a = await fn(job);
    } catch (e) {
      port.postMessage({ ok: false, error: toWireError(e, failureCode) } satisfies Answer);
      return;
    }
    port.postMessage({ ok: true, value: a.value } satisfies Answer, a.transferList ?? []);
  };
  if (workerData !== undefined && workerData !== null) {
    await answer(workerData as J);
    return;
  }
  // The parent sends the next job only after this one's answer: a chain keeps them in order.
  // An answer that cannot be posted (not cloneable) ends the worker with that error, as an
  // uncaught one would, so the parent is told at once instead of at its deadline.
  let chain = Promise.resolve();
  port.on('message', (m: { job: J }) => {
    chain = chain.then(() => answer(m.job)).catch((e: unknown) => {
      setImmediate(() => { throw e; });
    });
  });
}
