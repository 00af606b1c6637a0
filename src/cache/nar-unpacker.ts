/**
 * NarUnpacker: a NarHandler (nar-parser.ts) that writes each regular file of size > 0 of a
 * NAR being verified to its own temp file in a job directory under tmp/, while an
 * IndexBuilder (nar-index-builder.ts) hashes it (whole and per chunk). Runs on a verify
 * worker (nar-verify-worker.ts): its writes are synchronous, off the main thread.
 *
 * Invariants:
 * - Files are named `<n>` in the job directory, n counting from 0 in NAR order; each is
 *   closed when its contents end, so once the NAR has been verified the main thread may
 *   rename them into the BlobStore as they are (BlobStore.commitFiles). They are not
 *   fdatasynced one by one (0.55 ms each: 9-11 s for a path of 17k files in the bench): a
 *   kill -9 loses nothing written (the page cache survives the process), and after a
 *   power loss a blob is never trusted unchecked — the BlobStore re-hashes a file written
 *   by an earlier process before serving it, and drops one that does not match.
 * - Nothing here decides whether the bytes are good: the caller commits the files only
 *   after NarHash and NarSize matched, and otherwise removes the job directory.
 * - A failure of the disk is kept in `failure` (ERR_CACHE_FULL / ERR_CACHE_IO, stage
 *   `sink`), so it is not blamed on the data; `close()` releases the open descriptor.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { NarfsError } from '../errors.js';
import type { IndexBuilder } from '../nix/nar-index-builder.js';
import type { NarHandler } from '../nix/nar-parser.js';
import { cacheError } from './cache-error.js';

export interface UnpackedFile {
  narOffset: number;
  /** The temp file holding its contents. */
  path: string;
}

export class NarUnpacker implements NarHandler {
  readonly #dir: string;
  readonly #builder: IndexBuilder;
  readonly #files: UnpackedFile[] = [];
  #fd: number | undefined;
  #current: UnpackedFile | undefined;
  /** The first failure of the disk, if any. */
  failure: NarfsError | undefined;

  constructor(dir: string, builder: IndexBuilder) {
    this.#dir = dir;
    this.#builder = builder;
  }

  /** The files written, in NAR order. */
  get files(): readonly UnpackedFile[] {
    return this.#files;
  }

  onFileStart(path: readonly string[], size: number, executable: boolean, narOffset: number): void {
    this.#builder.onFileStart(path, size, executable, narOffset);
    if (size === 0) return;
    const file = { narOffset, path: join(this.#dir, String(this.#files.length)) };
    this.#sink(() => { this.#fd = openSync(file.path, 'wx', 0o644); }, file.path);
    this.#current = file;
  }

  onFileContents(path: readonly string[], chunk: Buffer, offsetInFile: number): void {
    this.#builder.onFileContents(path, chunk, offsetInFile);
    const fd = this.#fd!;
    this.#sink(() => {
      let done = 0;
      while (done < chunk.length) done += writeSync(fd, chunk, done, chunk.length - done, offsetInFile + done);
    }, this.#current!.path);
  }

  onFileEnd(path: readonly string[]): void {
    this.#builder.onFileEnd(path);
    const file = this.#current;
    if (!file) return;
    const fd = this.#fd!;
    this.#sink(() => {
      this.#fd = undefined;
      closeSync(fd);
    }, file.path);
    this.#current = undefined;
    this.#files.push(file);
  }

  /** Closes the file being written, if any (after a failure). Never throws. */
  close(): void {
    if (this.#fd !== undefined) {
      try {
        closeSync(this.#fd);
      } catch {
        // Already closed, or the disk is gone: nothing more to release.
      }
      this.#fd = undefined;
    }
  }

  #sink(op: () => void, path: string): void {
    try {
      op();
    } catch (err) {
      this.failure ??= cacheError(err, `cannot write ${path}`);
      throw this.failure;
    }
  }
}
