/**
 * The CPU work of one ranged read of an indexed NAR (chunk-fetcher.ts), as a pure function
 * that runs on a chunk-verify worker (chunk-verify-pool.ts) or, for a few KiB, inline:
 * undo the seekable zstd frames (if any) and check the SHA-256 of each chunk cut from the
 * result.
 *
 * Job format: `input` is what the datalake returned — NAR bytes as they are
 * (`frames` absent: Compression none), or whole independent zstd frames back to back
 * (`frames.fileSizes[i]` compressed bytes of frame i, decoding to exactly
 * `frames.narSizes[i]` NAR bytes). `slices` are [from, to) pairs into the NAR bytes, one per
 * chunk, and `hashes` their expected SHA-256 digests (32 bytes each, in order).
 * Result: the NAR bytes (`out`; the input itself when there are no frames) and, per slice,
 * whether it hashed to its digest.
 *
 * The decoded NAR bytes lie in a fresh ArrayBuffer of exactly their size, written once here
 * and never again; a worker transfers it back (chunk-verify-worker.ts) and the fetcher seals
 * it (sealed-buffers.ts), so holders keep views of it for verified files, not copies. It is
 * not zero-filled: every byte of it is written by a frame's decode, and a frame that does not
 * decode to exactly its size fails the whole job before anything reads the buffer.
 *
 * Invariants: every frame is decoded on its own into a buffer of exactly its NAR size (a
 * frame that decodes to more or fewer bytes, is corrupt or is not exactly one frame long is
 * ERR_DECOMPRESS, never a partial result), so decoded memory is bounded by the job's NAR
 * size; a slice is reported good only when its bytes are exactly its chunk (length and
 * SHA-256). Nothing here does I/O.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { NarfsError } from '../errors.js';

export interface ChunkJob {
  input: Uint8Array;
  frames?: { fileSizes: number[]; narSizes: number[] };
  /** [from, to) pairs into the NAR bytes, one per chunk. */
  slices: number[];
  /** 32 bytes per slice. */
  hashes: Uint8Array;
}

export interface ChunkJobResult {
  out: Uint8Array;
  ok: boolean[];
  /**
   * Whether `out` owns its whole buffer and nothing else holds that buffer: a fresh decode,
   * or (chunk-verify-pool.ts) the input back from a worker, whose transfer detached every
   * other reference to it. Such a buffer may be sealed (sealed-buffers.ts).
   */
  owned: boolean;
}

interface DCtx {
  decompress(dst: Uint8Array, src: Uint8Array): number;
}
let DCtxClass: (new () => DCtx) | undefined;
let dctx: DCtx | undefined;

function decoder(): DCtx {
  if (!dctx) {
    if (!DCtxClass) {
      const require = createRequire(import.meta.url);
      try {
        DCtxClass = (require('zstd-napi/binding') as { DCtx: new () => DCtx }).DCtx;
      } catch (e) {
        throw new NarfsError('ERR_COMPRESSION_UNSUPPORTED', `the zstd binding could not be loaded: ${(e as Error).message}`, { cause: e });
      }
    }
    dctx = new DCtxClass();
  }
  return dctx;
}

/** Decodes independent zstd frames, each to exactly its NAR size. */
export function decodeFrames(input: Uint8Array, frames: { fileSizes: number[]; narSizes: number[] }): Uint8Array {
  const { fileSizes, narSizes } = frames;
  if (fileSizes.length !== narSizes.length || fileSizes.reduce((a, b) => a + b, 0) !== input.length) {
    throw new NarfsError('ERR_DECOMPRESS', `the ranged read returned ${input.length} bytes, not the ${fileSizes.reduce((a, b) => a + b, 0)} of its frames`);
  }
  // Not a SharedArrayBuffer: V8 gives each one fresh pages (sealed-buffers.ts).
  const out = new Uint8Array(Buffer.allocUnsafeSlow(narSizes.reduce((a, b) => a + b, 0)).buffer);
  let src = 0;
  let dst = 0;
  for (let i = 0; i < fileSizes.length; i++) {
    const frame = input.subarray(src, src + fileSizes[i]!);
    const want = narSizes[i]!;
    let got: number;
    try {
      got = decoder().decompress(out.subarray(dst, dst + want), frame);
    } catch (e) {
      dctx = undefined; // a context that failed mid-frame is not reused
      throw new NarfsError('ERR_DECOMPRESS', `zstd frame ${i} of a ranged read does not decode to its ${want} bytes: ${(e as Error).message}`, { cause: e });
    }
    if (got !== want) throw new NarfsError('ERR_DECOMPRESS', `zstd frame ${i} of a ranged read decodes to ${got} bytes, not ${want}`);
    src += fileSizes[i]!;
    dst += want;
  }
  return out;
}

export function runChunkJob(job: ChunkJob): ChunkJobResult {
  const out = job.frames ? decodeFrames(job.input, job.frames) : job.input;
  const ok: boolean[] = [];
  for (let i = 0; i * 2 < job.slices.length; i++) {
    const from = job.slices[2 * i]!;
    const to = job.slices[2 * i + 1]!;
    if (!(from >= 0 && to >= from && to <= out.length)) {
      ok.push(false);
      continue;
    }
    const digest = createHash('sha256').update(out.subarray(from, to)).digest();
    ok.push(digest.equals(job.hashes.subarray(32 * i, 32 * i + 32)));
  }
  return { out, ok, owned: job.frames !== undefined };
}
