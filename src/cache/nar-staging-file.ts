/**
 * NarStagingFile: the staging file of a NAR being verified, `<job dir>/nar`: the NAR's
 * uncompressed bytes, written in stream order as they pass the verifier, so each regular
 * file's contents lie at its own NAR offset. Runs on a verify worker
 * (nar-verify-worker.ts): its writes are synchronous, off the main thread.
 *
 * Invariants:
 * - One file for the whole NAR, written sequentially, one write per stream chunk: not one
 *   file per regular file (a file creation cost ~0.45 ms on the worker's thread, 1.35 s of
 *   a 1.7 s first read of a 3,000-file NAR, measured) and not one write per regular file
 *   either (a NAR of 100,000 small files took 225 ms more with a positioned write per file
 *   than with one write per 64 KiB chunk, measured). The main thread serves reads from it
 *   by NAR offset once the NAR was verified and splits it into per-file blobs in the
 *   background (Materialiser, BlobStore.commitBuffers/commitFiles).
 * - `close()` ends it; nothing is fdatasynced: a kill -9 loses nothing written (the page
 *   cache survives the process), and after a power loss a blob is never trusted unchecked:
 *   the BlobStore re-hashes a file written by an earlier process before serving it, and
 *   drops one that does not match.
 * - Nothing here decides whether the bytes are good: the caller uses them only after
 *   NarHash and NarSize matched, and otherwise removes the job directory.
 * - A failure of the disk is kept in `failure` (ERR_CACHE_FULL / ERR_CACHE_IO, stage
 *   `sink`), so it is not blamed on the data; `close()` always releases the descriptor.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { NarfsError } from '../errors.js';
import { cacheError } from './cache-error.js';

/** The staging file of the job directory `dir` (also where a kept NAR is read back, in place). */
export function stagingFileIn(dir: string): string {
  return join(dir, 'nar');
}

export class NarStagingFile {
  /** Where the NAR's bytes go. */
  readonly path: string;
  #fd: number | undefined;
  #size = 0;
  /** The first failure of the disk, if any. */
  failure: NarfsError | undefined;

  /** Creates `<dir>/nar` (which must not exist); a failure is kept in `failure` and thrown by `write`. */
  constructor(dir: string) {
    this.path = stagingFileIn(dir);
    try {
      this.#fd = openSync(this.path, 'wx', 0o600);
    } catch (err) {
      this.failure = cacheError(err, `cannot create ${this.path}`);
    }
  }

  /** Appends the next bytes of the NAR. */
  write(chunk: Buffer): void {
    const fd = this.#fd;
    if (fd === undefined) throw this.failure ?? cacheError(new Error('the staging file is closed'), `cannot write ${this.path}`);
    const at = this.#size;
    this.#sink(() => {
      let done = 0;
      while (done < chunk.length) done += writeSync(fd, chunk, done, chunk.length - done, at + done);
    });
    this.#size += chunk.length;
  }

  /** Closes it; a failure to close is a failure of the disk (thrown) unless `quiet`. */
  close(quiet = false): void {
    const fd = this.#fd;
    if (fd === undefined) return;
    this.#fd = undefined;
    if (quiet) {
      try {
        closeSync(fd);
      } catch {
        // Already closed, or the disk is gone: nothing more to release.
      }
      return;
    }
    this.#sink(() => closeSync(fd));
  }

  #sink(op: () => void): void {
    try {
      op();
    } catch (err) {
      this.failure ??= cacheError(err, `cannot write ${this.path}`);
      throw this.failure;
    }
  }
}
