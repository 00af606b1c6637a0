/**
 * A counting semaphore for decompressor child processes.
 *
 * Invariant: at most `limit` slots are held at any time; a slot is taken before a child is
 * spawned and given back only after that child has exited (not when its stream ends), so
 * the number of live decompressor processes never exceeds `limit`, however many fetches
 * run at once. Excess requests wait in FIFO order; a waiter whose AbortSignal fires leaves
 * the queue and its `acquire` rejects with ERR_ABORTED. Lowering the limit never kills a
 * running child: new slots are granted only once the count has dropped below the new limit.
 *
 * Default limit: 2 × available cores. A decompressor is CPU-bound, but a NAR download is
 * usually network-bound and its decompressor idles between chunks, so twice the cores keeps
 * the CPUs busy without letting a burst of lookups fork hundreds of processes.
 */
import { availableParallelism } from 'node:os';
import { NarfsError } from '../errors.js';

/** Gives a slot back. Idempotent: calling it twice frees one slot only. */
export type ReleaseSlot = () => void;

interface Waiter {
  grant: (release: ReleaseSlot) => void;
}

export function defaultDecompressionConcurrency(): number {
  return Math.max(1, 2 * availableParallelism());
}

export class DecompressorPool {
  #limit: number;
  #active = 0;
  readonly #queue: Waiter[] = [];

  constructor(limit: number = defaultDecompressionConcurrency()) {
    this.#limit = checkLimit(limit);
  }

  /** Maximum number of slots held at once. */
  get limit(): number {
    return this.#limit;
  }

  /** Slots currently held. */
  get active(): number {
    return this.#active;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.#queue.length;
  }

  /** Changes the limit; waiters are granted at once if the new limit allows it. */
  setLimit(limit: number): void {
    this.#limit = checkLimit(limit);
    this.#drain();
  }

  /**
   * Resolves with a release function once a slot is free. Rejects with ERR_ABORTED if the
   * signal is aborted before that (the request then no longer holds or waits for a slot).
   */
  acquire(signal?: AbortSignal): Promise<ReleaseSlot> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.#active < this.#limit && this.#queue.length === 0) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    return new Promise<ReleaseSlot>((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(abortError(signal!));
      };
      const waiter: Waiter = {
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      this.#queue.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  #releaser(): ReleaseSlot {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#active--;
      this.#drain();
    };
  }

  #drain(): void {
    while (this.#active < this.#limit) {
      const next = this.#queue.shift();
      if (next === undefined) return;
      this.#active++;
      next.grant(this.#releaser());
    }
  }
}

function checkLimit(limit: number): number {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `decompression concurrency must be a positive integer, got ${limit}`);
  }
  return limit;
}

function abortError(signal: AbortSignal): NarfsError {
  return new NarfsError('ERR_ABORTED', 'gave up waiting for a decompressor slot', { cause: signal.reason });
}
