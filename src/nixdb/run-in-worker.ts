/**
 * runInWorker: one job on a fresh worker thread, bounded by a deadline; answerParent: the
 * worker side of it.
 *
 * Protocol: the job is the worker's `workerData`; the worker posts exactly one message,
 * `{ ok: true, value }` (with a transfer list when it hands over buffers) or
 * `{ ok: false, error: WireError }`, and ends.
 *
 * Invariants: the work never runs on the calling thread — also when narfs runs from its
 * TypeScript sources (tsx, mocha): then the entry is the `.ts` sibling, started through
 * tsx's ESM API in the worker (Node 20 applies a worker's `--import` only after resolving
 * its entry, so `execArgv: ['--import', 'tsx']` alone cannot load a `.ts` entry). The
 * call settles no later than `timeoutMs`, or when `signal` aborts; either way the worker
 * is terminated (for a database writer that is a writer killed mid-write, which the
 * generation protocol survives, write-generation.ts). An error keeps its code, hint and
 * details (wire-error.ts).
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

/**
 * Runs the worker module `entry` — given as the URL of its compiled `.js` file, e.g.
 * `new URL('./nixdb-worker.js', import.meta.url)` — on `job`.
 */
export function runInWorker<T>(entry: URL, job: unknown, options: RunInWorkerOptions): Promise<T> {
  const { timeoutMs, what, failureCode, signal } = options;
  if (signal?.aborted) return Promise.reject(new NarfsError('ERR_ABORTED', `${what} was aborted`, { cause: signal.reason }));
  let worker: Worker;
  try {
    worker = startWorker(entry, job, options.transferList);
  } catch (err) {
    return Promise.reject(new NarfsError(failureCode, `cannot start the ${what} worker: ${(err as Error).message}`, { cause: err }));
  }
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      void worker.terminate();
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new NarfsError('ERR_DEADLINE', `${what} did not finish within ${timeoutMs} ms`))), timeoutMs);
    const onAbort = () => finish(() => reject(new NarfsError('ERR_ABORTED', `${what} was aborted`, { cause: signal?.reason })));
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: Answer) => {
      if (m.ok) finish(() => resolve(m.value as T));
      else finish(() => reject(fromWireError(m.error, failureCode)));
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
 * The worker side: runs `fn` on this worker's job and posts the answer. Errors that are
 * not NarfsErrors get `failureCode`.
 */
export async function answerParent<J, T>(fn: (job: J) => Promise<WorkerAnswer<T>>, failureCode: ErrorCode): Promise<void> {
  const port = parentPort;
  if (!port) throw new NarfsError('ERR_INTERNAL', 'answerParent runs only on a worker thread');
  let answer: WorkerAnswer<T>;
  try {
    answer = await fn(workerData as J);
  } catch (e) {
    port.postMessage({ ok: false, error: toWireError(e, failureCode) } satisfies Answer);
    return;
  }
  port.postMessage({ ok: true, value: answer.value } satisfies Answer, answer.transferList ?? []);
}
