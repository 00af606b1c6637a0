/**
 * VerifyPool: a few worker threads (nar-verify-worker.ts) that decompress, hash, parse and
 * stage fetched NARs, so that none of that CPU work runs on the main thread, which answers
 * the kernel's LOOKUP/READDIRPLUS. Protocol: verify-protocol.ts.
 *
 * Invariants:
 * - At most `size` workers (default: cores, at least 1, at most 4), started on first use and
 *   unref'd (they never keep the process alive). A job goes to the worker with the fewest
 *   jobs; several jobs share a worker. A worker that dies fails its jobs (ERR_INTERNAL)
 *   and is replaced on the next job.
 * - A job is a Writable: each write is copied into batches of BATCH bytes whose
 *   ArrayBuffers are transferred (never cloned, never a view another stream may still
 *   hold); at most WINDOW bytes are in flight unacknowledged, so memory is bounded and
 *   backpressure reaches the datalake stream.
 * - `result()` settles once the worker has finished with the job: every byte written and
 *   every descriptor of its files closed, whether the job succeeded, failed or was
 *   destroyed (`settled`), so the staging file may be committed or removed after it.
 */
import { availableParallelism } from 'node:os';
import { Writable } from 'node:stream';
import type { Worker } from 'node:worker_threads';
import { NarfsError } from '../errors.js';
import { startWorker } from '../nixdb/run-in-worker.js';
import { fromWireError } from '../nixdb/wire-error.js';
import type { FromWorker, ToWorker, VerifyStage, WorkerCompression } from './verify-protocol.js';

/** Bytes per transferred batch. */
const BATCH = 256 * 1024;
/** Bytes a job may have sent and not yet had acknowledged. */
const WINDOW = 4 * BATCH;
/**
 * A partial batch waits at most this long for more bytes before it is sent as it is: a
 * slow or stalled datalake must not keep the bytes that came (a file a reader waits for,
 * VerifyJob.onFiles) from the worker.
 */
const FLUSH_MS = 20;

const WORKER_ENTRY = new URL('./nar-verify-worker.js', import.meta.url);

export interface VerifyResult {
  digest: Buffer;
  /** The NarIndex built from the NAR (encodeNarIndex; unsigned), made on the worker. */
  index: Buffer;
  /** The staging file: the NAR's bytes, each file at its narOffset. */
  staging: string;
}

/** Where and how a job stages its NAR. */
export interface UnpackTarget {
  /** An empty directory the worker writes the staging file into. */
  dir: string;
  /** The full store path (for the index). */
  storePath: string;
  narSize: number;
  /** Chunk size of the index built. */
  chunkSize: number;
  /** False: an index of whole-file hashes only (NarIndex.wholeOnly). */
  chunkHashes: boolean;
  /** The stream is `<dir>/nar` itself (a kept NAR read back): checked and indexed, not written. */
  inPlace?: boolean;
  /** Tell each regular file once its bytes are in the staging file (VerifyJob.onFiles). */
  announce?: boolean;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, VerifyJob>;
  dead: boolean;
}

export class VerifyPool {
  readonly #size: number;
  readonly #slots: Slot[] = [];
  #nextId = 1;

  constructor(size: number = Math.max(1, Math.min(4, availableParallelism()))) {
    this.#size = size;
  }

  /** Starts a job staging a NAR in `target.dir`; write the (still `compression`-compressed) stream to it. */
  open(target: UnpackTarget, compression: WorkerCompression): VerifyJob {
    const slot = this.#slot();
    const id = this.#nextId++;
    const job = new VerifyJob(id, (m, transfer) => {
      if (slot.dead) return;
      slot.worker.postMessage(m, transfer ?? []);
    });
    slot.jobs.set(id, job);
    void job.result().catch(() => {}).finally(() => slot.jobs.delete(id));
    slot.worker.postMessage({ t: 'start', id, ...target, compression } satisfies ToWorker);
    return job;
  }

  /** Stops every worker (jobs in flight fail). */
  async close(): Promise<void> {
    const slots = this.#slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  #slot(): Slot {
    for (let i = this.#slots.length - 1; i >= 0; i--) if (this.#slots[i]!.dead) this.#slots.splice(i, 1);
    if (this.#slots.length < this.#size) {
      const worker = startWorker(WORKER_ENTRY, undefined, undefined);
      worker.unref();
      const slot: Slot = { worker, jobs: new Map(), dead: false };
      worker.on('message', (m: FromWorker) => slot.jobs.get(m.id)?.onMessage(m));
      const die = (why: string) => {
        slot.dead = true;
        for (const job of slot.jobs.values()) job.onWorkerDeath(why);
        slot.jobs.clear();
      };
      worker.on('error', (err) => die(`failed: ${err.message}`));
      worker.on('exit', (code) => die(`exited (${code})`));
      this.#slots.push(slot);
      return slot;
    }
    let best = this.#slots[0]!;
    for (const s of this.#slots) if (s.jobs.size < best.jobs.size) best = s;
    return best;
  }
}

/** The process-wide pool the materialiser uses by default. */
export const defaultVerifyPool = new VerifyPool();

export class VerifyJob extends Writable {
  readonly #id: number;
  readonly #post: (m: ToWorker, transfer?: ArrayBuffer[]) => void;
  #batch: Uint8Array | undefined;
  #filled = 0;
  #inflight = 0;
  #held: (() => void) | undefined;
  #final: ((err?: Error | null) => void) | undefined;
  #settle!: (r: { ok: true; value: VerifyResult } | { ok: false; error: NarfsError }) => void;
  readonly #settled: Promise<{ ok: true; value: VerifyResult } | { ok: false; error: NarfsError }>;
  #over = false;
  /** The stage a failure came from (for the materialiser's classification). */
  failedStage: VerifyStage | undefined;
  /** When the last bytes were written (for the stall watchdog). */
  lastProgress = Date.now();
  /**
   * With `announce`: called with the records of files now in the staging file
   * (verify-protocol.ts FILE_RECORD_BYTES), before `result()` settles.
   */
  onFiles: ((recs: Buffer) => void) | undefined;

  constructor(id: number, post: (m: ToWorker, transfer?: ArrayBuffer[]) => void) {
    super({ highWaterMark: BATCH });
    this.#id = id;
    this.#post = post;
    this.#settled = new Promise((resolve) => { this.#settle = resolve; });
  }

  /** The digest and listing once the worker is done; rejects with the job's failure. */
  async result(): Promise<VerifyResult> {
    const r = await this.#settled;
    if (r.ok) return r.value;
    throw r.error;
  }

  /** Resolves once the worker no longer touches the temp file (success or not). */
  async settled(): Promise<void> {
    await this.#settled;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.lastProgress = Date.now();
    let off = 0;
    while (off < chunk.length) {
      this.#batch ??= new Uint8Array(BATCH);
      const n = Math.min(BATCH - this.#filled, chunk.length - off);
      this.#batch.set(chunk.subarray(off, off + n), this.#filled);
      this.#filled += n;
      off += n;
      if (this.#filled === BATCH) this.#send();
    }
    if (this.#filled > 0 && this.#flush === undefined) this.#armFlush();
    if (this.#inflight < WINDOW) cb();
    else this.#held = cb;
  }

  /**
   * Sends whatever partial batch there is in FLUSH_MS: no byte waits longer than that
   * for the batch to fill (one may go early, after a full batch went meanwhile).
   */
  #armFlush(): void {
    this.#flush = setTimeout(() => {
      this.#flush = undefined;
      if (this.#filled > 0 && !this.#over && !this.destroyed) this.#send();
    }, FLUSH_MS);
    this.#flush.unref();
  }

  /** A timer that sends a partial batch (FLUSH_MS). */
  #flush: NodeJS.Timeout | undefined;

  override _final(cb: (err?: Error | null) => void): void {
    clearTimeout(this.#flush);
    this.#flush = undefined;
    if (this.#filled > 0) this.#send();
    this.#final = cb;
    this.#post({ t: 'end', id: this.#id });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    clearTimeout(this.#flush);
    this.#flush = undefined;
    if (!this.#over) this.#post({ t: 'abort', id: this.#id });
    this.#held = undefined;
    cb(err);
  }

  #send(): void {
    const full = this.#batch!;
    const buf = this.#filled === full.length ? full.buffer as ArrayBuffer : full.buffer.slice(0, this.#filled) as ArrayBuffer;
    this.#inflight += buf.byteLength;
    this.#post({ t: 'chunk', id: this.#id, buf }, [buf]);
    this.#batch = undefined;
    this.#filled = 0;
  }

  onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'ack': {
        this.#inflight -= m.n;
        const held = this.#held;
        if (held && this.#inflight < WINDOW) {
          this.#held = undefined;
          held();
        }
        return;
      }
      case 'files':
        if (!this.#over) this.onFiles?.(Buffer.from(m.recs));
        return;
      case 'done':
        this.#finish({ ok: true, value: { digest: Buffer.from(m.digest), index: Buffer.from(m.index), staging: m.staging } });
        return;
      case 'failed':
        this.failedStage = m.stage;
        this.#finish({ ok: false, error: fromWireError(m.error, 'ERR_INTERNAL') });
        return;
    }
  }

  onWorkerDeath(why: string): void {
    this.#finish({ ok: false, error: new NarfsError('ERR_INTERNAL', `the NAR verify worker ${why}`) });
  }

  #finish(r: { ok: true; value: VerifyResult } | { ok: false; error: NarfsError }): void {
    if (this.#over) return;
    this.#over = true;
    this.#settle(r);
    const final = this.#final;
    this.#final = undefined;
    if (r.ok) {
      final?.();
    } else if (final) {
      final(r.error);
    } else if (!this.destroyed) {
      this.destroy(r.error);
    }
  }
}
