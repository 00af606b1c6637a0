/**
 * gzip and brotli decompression with Node's own zlib (no process, no dependency).
 *
 * Invariant: every error the zlib stream raises (corrupt data, "unexpected end of file" on
 * truncated input) leaves it as a NarfsError ERR_DECOMPRESS; zlib streams already keep
 * memory bounded (fixed output chunks, backpressure through the Transform).
 *
 * Why zlib: measured on a 300 MB NAR-like input (bench/decompress.ts), Node's zlib (run on
 * the libuv thread pool) beats `gzip -dc` / `brotli -dc` behind a pipe; see decompress.ts.
 * Each zlib call is a round trip to the libuv thread pool, so the output chunk is raised
 * from zlib's 16 KiB default to ZLIB_CHUNK_SIZE and queued input is coalesced (below);
 * both measured in the same bench (`--candidates`).
 */
import type { Transform } from 'node:stream';
import { createBrotliDecompress, createGunzip } from 'node:zlib';
import { NarfsError } from '../errors.js';

/** Output buffer per zlib call (measured: 16 KiB default ≈ 0.65×, 128-256 KiB ≈ 0.9×). */
export const ZLIB_CHUNK_SIZE = 128 * 1024;

/**
 * Input is coalesced up to this much while zlib works on the previous chunk, so a fast
 * source (disk, LAN) costs one thread-pool round trip per ~1 MiB rather than per 16-64 KiB
 * network chunk (measured: +10% for br on the bench input).
 */
export const ZLIB_INPUT_BATCH = 1024 * 1024;

export type ZlibMethod = 'gzip' | 'br';

export function createZlibDecompressor(method: ZlibMethod, chunkSize: number = ZLIB_CHUNK_SIZE): Transform {
  const options = { chunkSize, writableHighWaterMark: ZLIB_INPUT_BATCH };
  const stream = method === 'gzip' ? createGunzip(options) : createBrotliDecompress(options);
  // Writable calls _writev with everything buffered while the previous write was in the
  // thread pool; hand it to zlib as one chunk.
  stream._writev = function (
    chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>,
    callback: (error?: Error | null) => void,
  ): void {
    const input = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk));
    this._write(input, 'buffer' as BufferEncoding, callback);
  };
  // zlib reports every failure through destroy(err) → _destroy(err, cb); wrap it there so
  // the one emitted 'error' already carries our code.
  const destroy = stream._destroy;
  stream._destroy = function (error: Error | null, callback: (error?: Error | null) => void): void {
    destroy.call(this, error, (e?: Error | null) => callback(e == null ? e : toDecompressError(method, e)));
  };
  return stream;
}

function toDecompressError(method: ZlibMethod, e: Error): Error {
  if (e instanceof NarfsError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  return new NarfsError('ERR_DECOMPRESS', `${method}: ${e.message}`, { cause: e, details: { zlibCode: code } });
}
