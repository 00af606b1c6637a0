/**
 * Messages between the materialiser's verify pool (verify-pool.ts, main thread) and its
 * workers (nar-verify-worker.ts). Several jobs share a worker, told apart by `id`.
 *
 * main → worker: `start` (the job directory to stage the NAR in, the full store
 * path, NarSize, the chunk size of the index to build and whether it has chunk hashes, the compression the worker undoes:
 * none, zstd, gzip or br; `inPlace`: the NAR streamed is the file `<dir>/nar` itself,
 * which is checked and indexed but not written; `announce`: tell each regular file once its
 * bytes are in the staging file), `chunk` (bytes of the NAR stream, an ArrayBuffer transferred,
 * never cloned), `end`, `abort`.
 * worker → main: `ack` (that many bytes of `chunk`s left the worker's input buffer: the
 * window of bytes in flight, hence memory, is bounded), `files` (with `announce`: regular
 * files of size > 0 whose bytes were hashed and are now written to the staging file, in NAR
 * order, as FILE_RECORD_BYTES records: NAR offset and size as little-endian float64, then
 * the SHA-256 of the contents; nothing in them is verified against NarHash yet), then exactly one of `done` (the
 * SHA-256 digest and the encoded NarIndex built from the NAR, transferred, and the staging
 * file holding the NAR's bytes, each file at its narOffset; closed, not fdatasynced)
 * or `failed` (a WireError and the stage it came from; every descriptor closed).
 */
import type { WireError } from '../nixdb/wire-error.js';

/**
 * Methods a worker undoes itself: zstd, gzip and br in the worker, xz and bzip2 by a child
 * process the worker runs and reads (so decompressed bytes never cross the main thread).
 */
export type WorkerCompression = 'none' | 'zstd' | 'gzip' | 'br' | 'xz' | 'bzip2';

export type ToWorker =
  | { t: 'start'; id: number; dir: string; storePath: string; narSize: number; chunkSize: number; chunkHashes: boolean; compression: WorkerCompression; inPlace?: boolean; announce?: boolean }
  | { t: 'chunk'; id: number; buf: ArrayBuffer }
  | { t: 'end'; id: number }
  | { t: 'abort'; id: number };

export type VerifyStage = 'decompress' | 'verify' | 'sink';

export type FromWorker =
  | { t: 'ack'; id: number; n: number }
  | { t: 'files'; id: number; recs: ArrayBuffer }
  | { t: 'done'; id: number; digest: ArrayBuffer; index: ArrayBuffer; staging: string }
  | { t: 'failed'; id: number; stage: VerifyStage; error: WireError };

/** Bytes per record of a `files` message: NAR offset (f64), size (f64), SHA-256 (32 bytes). */
export const FILE_RECORD_BYTES = 48;
