/**
 * zstd decompression in-process with libzstd (the `zstd-napi` binding, built from its
 * bundled zstd 1.5.7 sources at install time; no download).
 *
 * Invariants:
 * - Bounded memory: `ZSTD_decompressStream` fills one OUTPUT_CHUNK buffer per call; when
 *   the consumer stops reading (push() returns false) we stop calling it and hold the rest
 *   of the current input chunk until `_read`, so even a 1:10000 frame (a NAR of zeros)
 *   never expands more than the readable high-water mark plus one chunk.
 * - Corrupt input (bad header, block, or content checksum, trailing garbage), input that
 *   ends inside a frame, and empty input error the stream with ERR_DECOMPRESS. Window
 *   size is capped at libzstd's default (2^27, as `zstd -d` without --memory), bounding
 *   memory per stream.
 * - Concatenated frames and skippable frames decode as `zstd -dc` does.
 *
 * Why in-process and not `zstd -dc` behind a pipe like xz/bzip2: zstd decodes ~1 GB/s,
 * faster than a 64 KiB pipe can hand data to Node; even `zstd -dc | cat` only reached
 * ~0.78× of `zstd -dc > /dev/null`, our child-process Duplex 0.65-0.8×. The pure-JS
 * `fzstd` reached 0.18×, zstd-napi's own DecompressStream ~0.8× (it also ignores
 * backpressure inside a chunk); this Duplex 0.9-0.99× (table in decompress.ts). The
 * work runs on the event loop, ~0.1 ms per call, bounded by the output chunk.
 */
import { createRequire } from 'node:module';
import { Duplex } from 'node:stream';
import { NarfsError } from '../errors.js';

/** Output buffer per `decompressStream` call (ZSTD_DStreamOutSize; measured: 128 and 256 KiB equal, 1 MiB slower). */
export const ZSTD_OUTPUT_CHUNK = 128 * 1024;

interface DCtx {
  decompressStream(dstBuf: Uint8Array, srcBuf: Uint8Array): [remaining: number, produced: number, consumed: number];
}
interface ZstdBinding {
  DCtx: new () => DCtx;
}

let binding: ZstdBinding | undefined;

function loadBinding(): ZstdBinding {
  if (binding === undefined) {
    const require = createRequire(import.meta.url);
    try {
      binding = require('zstd-napi/binding') as ZstdBinding;
    } catch (e) {
      throw new NarfsError('ERR_COMPRESSION_UNSUPPORTED', `the zstd binding could not be loaded: ${(e as Error).message}`, {
        cause: e,
        hint: 'Reinstall narfs (npm ci) so that zstd-napi is built for this Node.',
      });
    }
  }
  return binding;
}

export class ZstdDecompressor extends Duplex {
  readonly #dctx: DCtx;
  readonly #chunkSize: number;
  /** Rest of the input chunk being decoded, and the write callback waiting for it. */
  #input: Buffer | undefined;
  #inputDone: ((error?: Error | null) => void) | undefined;
  /** The last call ended inside a frame (more input needed). */
  #inFrame = false;
  #sawInput = false;
  #pumping = false;

  constructor(chunkSize: number = ZSTD_OUTPUT_CHUNK) {
    super({ readableHighWaterMark: chunkSize });
    this.#dctx = new (loadBinding().DCtx)();
    this.#chunkSize = chunkSize;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (chunk.length > 0) this.#sawInput = true;
    this.#input = chunk;
    this.#inputDone = callback;
    // Decode in a macrotask of its own, not inside the upstream's 'data' event: the
    // upstream then issues its next read (fs, socket) first and it overlaps with the
    // decoding (measured: +5-8% at 64 KiB input chunks).
    setImmediate(() => this.#pump());
  }

  override _read(): void {
    this.#pump();
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.#inFrame || !this.#sawInput) {
      // Empty input is an error too, as for `zstd -dc` and every other method.
      const what = this.#sawInput ? 'input ends inside a frame (truncated)' : 'empty input';
      callback(new NarfsError('ERR_DECOMPRESS', `zstd: ${what}`));
      return;
    }
    this.push(null);
    callback();
  }

  /** Decodes the held input until it is used up or the reader wants no more for now. */
  #pump(): void {
    if (this.#pumping) return; // push() may call _read synchronously
    this.#pumping = true;
    try {
      while (this.#inputDone !== undefined && !this.destroyed) {
        const input = this.#input!;
        const out = Buffer.allocUnsafe(this.#chunkSize);
        let remaining: number, produced: number, consumed: number;
        try {
          [remaining, produced, consumed] = this.#dctx.decompressStream(out, input);
        } catch (e) {
          this.#finishInput(new NarfsError('ERR_DECOMPRESS', `zstd: ${(e as Error).message}`, { cause: e }));
          return;
        }
        if (produced === 0 && consumed === 0 && input.length > 0) {
          this.#finishInput(new NarfsError('ERR_DECOMPRESS', 'zstd: decoder made no progress'));
          return;
        }
        this.#input = input.subarray(consumed);
        const wantsMore = produced === 0 || this.push(produced === out.length ? out : out.subarray(0, produced));
        // Input used up and nothing left buffered inside libzstd: ask for the next chunk.
        if (this.#input.length === 0 && (produced < out.length || remaining === 0)) {
          this.#inFrame = remaining !== 0;
          this.#finishInput(null);
        }
        if (!wantsMore) return;
      }
    } finally {
      this.#pumping = false;
    }
  }

  #finishInput(error: Error | null): void {
    const done = this.#inputDone;
    this.#input = undefined;
    this.#inputDone = undefined;
    done?.(error);
  }
}
