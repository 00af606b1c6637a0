/**
 * ChunkVerifyPool: a few worker threads (chunk-verify-worker.ts) that decode seekable zstd
 * frames and hash chunks for the ChunkFetcher, so that this CPU work stays off the main
 * thread, which answers the kernel.
 *
 * Measured on this 2-core machine under load (Node 20, best / median of 30, 1 MiB):
 * SHA-256 0.50 / 0.53 ms; zstd -19 decode of a 1 MiB frame of a binary 1.23 / 1.35 ms
 * (text 0.07 / 0.44 ms). A coalesced 8 MiB request is thus ~15 ms of CPU: far too long
 * for the thread that answers LOOKUP and READ, so everything but tiny jobs goes to a worker.
 * A worker hop costs a postMessage each way (buffers transferred, never copied): a 1 MiB
 * job took 0.8-1.0 ms end to end on a warm worker (compiled JS), so a job of at most
 * `inlineBytes` NAR bytes (default 256 KiB: ~0.35 ms to decode, ~0.13 ms to hash, measured
 * as above) runs inline, where the hop would cost about as much as the work. A worker's
 * start costs 60-120 ms (compiled; several hundred under tsx): `warm()` starts them ahead,
 * and a ChunkFetcher does so when it is built, so the first chunk never waits for a boot.
 * Each idle worker costs the daemon ~9 MiB of RSS (measured: idle daemon 101 -> 83 MiB
 * without the two), so a daemon pool is built `lazy`: `warm()` only arms it, the first job
 * too large to run inline starts the workers and runs inline itself while they boot (so it
 * still never waits for a boot), and workers idle for `idleMs` are stopped (started again
 * the same way).
 *
 * Invariants:
 * - at most `size` workers (default 2), started on first use and unref'd; a job goes to the
 *   worker with the fewest jobs; a worker that dies fails its jobs (ERR_INTERNAL) and is
 *   replaced on the next job;
 * - every job settles within `jobTimeoutMs` (ERR_DEADLINE; the worker is then terminated,
 *   since it may be stuck in a decode) or when the pool is closed (ERR_ABORTED);
 * - an input is transferred only when it owns its whole ArrayBuffer and is not sealed
 *   (sealed-buffers.ts); a view into a shared one (Node's small-Buffer pool) is copied
 *   first, so nothing else is ever detached.
 */
import type { Worker } from 'node:worker_threads';
import { NarfsError } from '../errors.js';
import { startWorker } from '../nixdb/run-in-worker.js';
import { fromWireError, type WireError } from '../nixdb/wire-error.js';
import { runChunkJob, type ChunkJob, type ChunkJobResult } from './chunk-job.js';
import { isSealed } from './sealed-buffers.js';

const WORKER_ENTRY = new URL('./chunk-verify-worker.js', import.meta.url);

export interface ChunkVerifyPoolOptions {
  /** Worker threads. Default 2. */
  size?: number;
  /** Jobs of at most this many NAR bytes run inline. Default 256 KiB. */
  inlineBytes?: number;
  /** Deadline of one job. Default 30000 ms. */
  jobTimeoutMs?: number;
  /**
   * Start workers on the first job that needs one (which runs inline while they boot)
   * instead of on `warm()`. Default false.
   */
  lazy?: boolean;
  /** Stop the workers after this long without a job (0: never). Default 0. */
  idleMs?: number;
}

type Answer = { id: number; ok: true; out: Uint8Array; good: boolean[] } | { id: number; ok: false; error: WireError };

interface Pending {
  resolve: (r: ChunkJobResult) => void;
  reject: (e: NarfsError) => void;
  timer: NodeJS.Timeout;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, Pending>;
  dead: boolean;
  online: boolean;
}

export class ChunkVerifyPool {
  readonly #size: number;
  readonly #inlineBytes: number;
  readonly #jobTimeoutMs: number;
  readonly #slots: Slot[] = [];
  #nextId = 1;
  #closed = false;
  readonly #lazy: boolean;
  readonly #idleMs: number;
  #idleTimer: NodeJS.Timeout | undefined;

  constructor(options: ChunkVerifyPoolOptions = {}) {
    this.#size = Math.max(1, options.size ?? 2);
    this.#lazy = options.lazy ?? false;
    this.#idleMs = options.idleMs ?? 0;
    this.#inlineBytes = options.inlineBytes ?? 256 * 1024;
    this.#jobTimeoutMs = options.jobTimeoutMs ?? 30_000;
  }

  /** Runs `job` (on a worker unless it is tiny). Its input may be detached afterwards. */
  run(job: ChunkJob): Promise<ChunkJobResult> {
    if (this.#closed) return Promise.reject(new NarfsError('ERR_ABORTED', 'the chunk verify pool is closed'));
    const narBytes = job.frames ? job.frames.narSizes.reduce((a, b) => a + b, 0) : job.input.length;
    if (this.#lazy && !this.#slots.some((s) => s.online && !s.dead)) {
      // No worker up: start them, and do this one here rather than wait for their boot.
      this.#start();
    }
    if (narBytes <= this.#inlineBytes || (this.#lazy && !this.#slots.some((s) => s.online && !s.dead))) {
      try {
        return Promise.resolve(runChunkJob(job));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    let input = job.input;
    // A sealed buffer may have views kept elsewhere (sealed-buffers.ts): never detached either.
    if (input.byteOffset !== 0 || input.byteLength !== input.buffer.byteLength || !(input.buffer instanceof ArrayBuffer) || isSealed(input.buffer)) {
      input = new Uint8Array(input); // a copy that owns its ArrayBuffer
    }
    const slot = this.#slot();
    const id = this.#nextId++;
    return new Promise<ChunkJobResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        slot.jobs.delete(id);
        reject(new NarfsError('ERR_DEADLINE', `a chunk verify job did not finish within ${this.#jobTimeoutMs} ms`));
        // A worker stuck in a decode is replaced; its other jobs fail with it.
        void slot.worker.terminate();
      }, this.#jobTimeoutMs);
      timer.unref();
      slot.jobs.set(id, { resolve, reject, timer });
      this.#armIdle();
      slot.worker.postMessage({ id, job: { ...job, input } }, [input.buffer as ArrayBuffer]);
    });
  }

  /**
   * Starts the workers now (idempotent), so that no job waits for a worker's boot; a
   * `lazy` pool starts them on its first job instead (which then runs inline).
   */
  warm(): void {
    if (this.#lazy) return;
    this.#start();
  }

  /** Workers running (booting or up). */
  get workers(): number {
    return this.#slots.filter((s) => !s.dead).length;
  }

  #start(): void {
    if (this.#closed) return;
    for (let i = this.#slots.filter((s) => !s.dead).length; i < this.#size; i++) this.#slot();
  }

  /** Stops every worker; jobs in flight fail with ERR_ABORTED. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    const slots = this.#slots.splice(0);
    for (const s of slots) this.#fail(s, new NarfsError('ERR_ABORTED', 'the chunk verify pool was closed'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  /** (Re)arms the idle stop: workers with no job for idleMs are terminated. */
  #armIdle(): void {
    if (this.#idleMs <= 0) return;
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#closed) return;
      if (this.#slots.some((s) => s.jobs.size > 0)) {
        this.#armIdle();
        return;
      }
      const slots = this.#slots.splice(0);
      for (const s of slots) {
        s.dead = true;
        void s.worker.terminate();
      }
    }, this.#idleMs);
    this.#idleTimer.unref();
  }

  #fail(slot: Slot, err: NarfsError): void {
    slot.dead = true;
    for (const p of slot.jobs.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    slot.jobs.clear();
  }

  #slot(): Slot {
    for (let i = this.#slots.length - 1; i >= 0; i--) if (this.#slots[i]!.dead) this.#slots.splice(i, 1);
    if (this.#slots.length < this.#size) {
      const worker = startWorker(WORKER_ENTRY, undefined, undefined);
      worker.unref();
      const slot: Slot = { worker, jobs: new Map(), dead: false, online: false };
      worker.once('online', () => { slot.online = true; });
      worker.on('message', (m: Answer) => {
        const p = slot.jobs.get(m.id);
        if (!p) return;
        slot.jobs.delete(m.id);
        clearTimeout(p.timer);
        // The worker's `out` is the input it was given (transferred) or its decode: either
        // way, a buffer nothing on this thread holds (so owned, whatever the worker computed).
        if (m.ok) p.resolve({ out: m.out, ok: m.good, owned: true });
        else p.reject(fromWireError(m.error, 'ERR_DECOMPRESS'));
      });
      worker.on('error', (err) => this.#fail(slot, new NarfsError('ERR_INTERNAL', `the chunk verify worker failed: ${err.message}`, { cause: err })));
      worker.on('exit', (code) => this.#fail(slot, new NarfsError('ERR_INTERNAL', `the chunk verify worker exited (${code})`)));
      this.#slots.push(slot);
      return slot;
    }
    let best = this.#slots[0]!;
    for (const s of this.#slots) if (s.jobs.size < best.jobs.size) best = s;
    return best;
  }
}

/** The process-wide pool ChunkFetchers use by default. */
export const defaultChunkVerifyPool = new ChunkVerifyPool();
