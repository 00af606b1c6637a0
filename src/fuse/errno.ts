/**
 * The FUSE edge's one mapping from narfs error codes to errno (negative, as libfuse wants).
 *
 * Invariant: this is the only place errno is chosen. Absence is ENOENT, any write EROFS,
 * POSIX misuse its own errno, and every integrity, signature, deadline or upstream failure
 * EIO, so a reader never receives bytes narfs could not verify.
 */
import { isNarfsError, type ErrorCode } from '../errors.js';

export const ERRNO = {
  EPERM: 1, ENOENT: 2, EIO: 5, EBADF: 9, EACCES: 13, ENOTDIR: 20, EISDIR: 21, EINVAL: 22,
  EROFS: 30, ENODATA: 61, ENOSYS: 38, ETIMEDOUT: 110, ESTALE: 116,
} as const;

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  ERR_READ_ONLY: ERRNO.EROFS,
  ERR_NOT_DIRECTORY: ERRNO.ENOTDIR,
  ERR_IS_DIRECTORY: ERRNO.EISDIR,
  ERR_NOT_SYMLINK: ERRNO.EINVAL,
  ERR_STALE_INODE: ERRNO.ENOENT,
  ERR_BAD_HANDLE: ERRNO.EBADF,
  ERR_INVALID_ARGUMENT: ERRNO.EINVAL,
};

/** Negative errno for a thrown value. */
export function errnoFor(err: unknown): number {
  if (isNarfsError(err)) return -(BY_CODE[err.code] ?? ERRNO.EIO);
  return -ERRNO.EIO;
}

/** Whether an error is worth a log line (EIO-class failures), as opposed to POSIX misuse. */
export function isLoggedFailure(err: unknown): boolean {
  return errnoFor(err) === -ERRNO.EIO;
}
