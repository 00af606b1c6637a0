/**
 * Deadlines: every wait in narfs is bounded.
 *
 * Invariant: `withDeadline` settles no later than `ms` after it is called, whatever the
 * wrapped promise does; on expiry it rejects with ERR_DEADLINE (or the code given) and
 * aborts the AbortController handed to the work, so the work can release its resources.
 */
import { NarfsError, type ErrorCode } from './errors.js';

export interface DeadlineOptions {
  /** Code of the error raised on expiry. */
  code?: ErrorCode;
  /** What was being waited for, for the message. */
  what?: string;
  /** An outer signal (shutdown, caller gone) that also ends the wait. */
  signal?: AbortSignal;
}

/**
 * Runs `work(signal)` and settles within `ms` milliseconds. The signal is aborted on
 * expiry or when the outer signal aborts.
 */
export async function withDeadline<T>(
  ms: number,
  work: (signal: AbortSignal) => Promise<T>,
  options: DeadlineOptions = {},
): Promise<T> {
  const controller = new AbortController();
  const outer = options.signal;
  let timer: NodeJS.Timeout | undefined;
  let onOuterAbort: (() => void) | undefined;
  const expiry = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new NarfsError(
        options.code ?? 'ERR_DEADLINE',
        `${options.what ?? 'operation'} did not finish within ${ms} ms`,
      );
      controller.abort(err);
      reject(err);
    }, ms);
    timer.unref?.();
    if (outer) {
      onOuterAbort = () => {
        const err = new NarfsError('ERR_ABORTED', `${options.what ?? 'operation'} was aborted`, { cause: outer.reason });
        controller.abort(err);
        reject(err);
      };
      if (outer.aborted) onOuterAbort();
      else outer.addEventListener('abort', onOuterAbort, { once: true });
    }
  });
  try {
    return await Promise.race([work(controller.signal), expiry]);
  } finally {
    if (timer) clearTimeout(timer);
    if (outer && onOuterAbort) outer.removeEventListener('abort', onOuterAbort);
  }
}

/** Resolves after `ms`, or rejects with ERR_ABORTED when the signal aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new NarfsError('ERR_ABORTED', 'sleep aborted', { cause: signal.reason }));
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new NarfsError('ERR_ABORTED', 'sleep aborted', { cause: signal?.reason }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Waits for a shared promise (one fetch serving many callers) but gives up, for this
 * caller only, when `signal` aborts. The shared work goes on for the others.
 */
export function raceSignal<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e) => { signal.removeEventListener('abort', onAbort); reject(e); },
    );
  });
}

/** What a wait given up on `signal` rejects with: its reason when that is a NarfsError, else ERR_ABORTED. */
export function abortReason(signal: AbortSignal): NarfsError {
  const r: unknown = signal.reason;
  return r instanceof NarfsError ? r : new NarfsError('ERR_ABORTED', 'the wait was aborted', { cause: r });
}
