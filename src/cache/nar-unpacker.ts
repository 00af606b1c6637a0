/**
 * NarUnpacker: a NarHandler (nar-parser.ts) that writes the contents of each regular file
 * of size > 0 of a NAR being verified into ONE staging file, `<job dir>/nar`, at the
 * file's own NAR offset (the NAR's headers and padding are holes of a sparse file), while
 * an IndexBuilder (nar-index-builder.ts) hashes it (whole and per chunk). Runs on a verify
 * worker (nar-verify-worker.ts): its writes are synchronous, off the main thread.
 *
 * Invariants:
 * - One file for the whole NAR, not one per file: creating a file cost ~0.45 ms on this
 *   worker's thread (1.35 s of a 1.7 s first read of a 3,000-file NAR, measured), and the
 *   NarHash match waited for all of them. The main thread serves reads from the staging
 *   file by NAR offset once the NAR was verified, and splits it into per-file blobs in the
 *   background (Materialiser, BlobStore.commitBuffers/commitFiles).
 * - `files` lists, in NAR order, each file's NAR offset and the staging file; reading it
 *   (at the NAR's end) closes the staging file. Nothing is fdatasynced: a kill -9 loses
 *   nothing written (the page cache survives the process), and after a power loss a blob
 *   is never trusted unchecked — the BlobStore re-hashes a file written by an earlier
 *   process before serving it, and drops one that does not match.
 * - Nothing here decides whether the bytes are good: the caller uses them only after
 *   NarHash and NarSize matched, and otherwise removes the job directory.
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
  /** The staging file holding its contents, at `narOffset`. */
  path: string;
}

export class NarUnpacker implements NarHandler {
  readonly #path: string;
  readonly #builder: IndexBuilder;
  readonly #files: UnpackedFile[] = [];
  #fd: number | undefined;
  #current: UnpackedFile | undefined;
  /** The first failure of the disk, if any. */
  failure: NarfsError | undefined;

  constructor(dir: string, builder: IndexBuilder) {
    this.#path = join(dir, 'nar');
    this.#builder = builder;
  }

  /** The files written, in NAR order; called once the NAR has ended, it closes the staging file. */
  get files(): readonly UnpackedFile[] {
    if (this.#current === undefined && this.#fd !== undefined) {
      const fd = this.#fd;
      this.#fd = undefined;
      this.#sink(() => closeSync(fd), this.#path);
    }
    return this.#files;
  }

  onFileStart(path: readonly string[], size: number, executable: boolean, narOffset: number): void {
    this.#builder.onFileStart(path, size, executable, narOffset);
    if (size === 0) return;
    if (this.#fd === undefined) this.#sink(() => { this.#fd = openSync(this.#path, 'wx', 0o600); }, this.#path);
    this.#current = { narOffset, path: this.#path };
  }

  onFileContents(path: readonly string[], chunk: Buffer, offsetInFile: number): void {
    this.#builder.onFileContents(path, chunk, offsetInFile);
    const fd = this.#fd!;
    const at = this.#current!.narOffset + offsetInFile;
    this.#sink(() => {
      let done = 0;
      while (done < chunk.length) done += writeSync(fd, chunk, done, chunk.length - done, at + done);
    }, this.#path);
  }

  onFileEnd(path: readonly string[]): void {
    this.#builder.onFileEnd(path);
    const file = this.#current;
    if (!file) return;
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
