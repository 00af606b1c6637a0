/**
 * Messages between the materialiser's verify pool (verify-pool.ts, main thread) and its
 * workers (nar-verify-worker.ts). Several jobs share a worker, told apart by `id`.
 *
 * main → worker: `start` (the temp file to write, NarSize, the compression the worker
 * undoes: none, zstd, gzip or br), `chunk` (bytes of the NAR stream, an ArrayBuffer
 * transferred, never cloned), `end`, `abort`.
 * worker → main: `ack` (that many bytes of `chunk`s left the worker's input buffer: the
 * window of bytes in flight, hence memory, is bounded), then exactly one of `done` (the
 * SHA-256 digest and the listing's `.ls` bytes, transferred, and the listing parsed from the NAR; every byte written
 * and the worker's descriptor closed) or `failed` (a WireError and the stage it came from;
 * the worker's descriptor closed too).
 */
import type { NarNode } from '../nix/nar-listing.js';
import type { WireError } from '../nixdb/wire-error.js';

/** Methods a worker decompresses itself (xz and bzip2 stay child processes). */
export type WorkerCompression = 'none' | 'zstd' | 'gzip' | 'br';

export type ToWorker =
  | { t: 'start'; id: number; path: string; narSize: number; compression: WorkerCompression }
  | { t: 'chunk'; id: number; buf: ArrayBuffer }
  | { t: 'end'; id: number }
  | { t: 'abort'; id: number };

export type VerifyStage = 'decompress' | 'verify' | 'sink';

export type FromWorker =
  | { t: 'ack'; id: number; n: number }
  | { t: 'done'; id: number; digest: ArrayBuffer; listing: NarNode; listingJson: ArrayBuffer }
  | { t: 'failed'; id: number; stage: VerifyStage; error: WireError };
