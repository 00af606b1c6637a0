/**
 * cacheError: the one place where a failed system call on the cache directory gets its
 * code. A full filesystem (ENOSPC, or EDQUOT for a quota) is ERR_CACHE_FULL, so the
 * operator looks at the disk, not at the datalake; any other failure is ERR_CACHE_IO.
 * The decision is made on the errno `code` Node puts on the error, never on its text.
 */
import { NarfsError, isNarfsError } from '../errors.js';

const FULL = new Set(['ENOSPC', 'EDQUOT']);

/** Whether `err` (or its cause) is a system call that failed for want of space. */
export function isDiskFull(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && FULL.has(code)) return true;
    if (isNarfsError(e) && e.code === 'ERR_CACHE_FULL') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** Wraps a failure of the cache directory; keeps ERR_CACHE_FULL/ERR_CACHE_IO as they are. */
export function cacheError(err: unknown, message: string): NarfsError {
  if (isNarfsError(err) && (err.code === 'ERR_CACHE_FULL' || err.code === 'ERR_CACHE_IO')) return err;
  return new NarfsError(isDiskFull(err) ? 'ERR_CACHE_FULL' : 'ERR_CACHE_IO', message, { cause: err });
}
