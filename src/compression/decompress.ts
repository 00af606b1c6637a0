/**
 * Streaming decompression of NARs, for every `Compression:` a narinfo can carry that Nix
 * itself writes: none, xz, zstd, bzip2, br, gzip (nix-formats.md §2.5; Nix's
 * `makeDecompressionSink` in src/libutil/compression.cc).
 *
 * Invariants:
 * - Bounded memory: every decompressor is a Duplex with backpressure on both sides; no
 *   NAR is ever held whole.
 * - Corrupt or truncated input errors the stream with ERR_DECOMPRESS, never ends it short;
 *   an unknown method is ERR_COMPRESSION_UNSUPPORTED.
 * - At most `pool.limit` decompressor processes live at once (default pool: 2 × cores,
 *   `setDecompressionConcurrency`); `createDecompressor` waits for a slot, honouring the
 *   caller's AbortSignal. The signal also destroys the stream (ERR_ABORTED) if it fires
 *   later, and destroying the stream kills its process. Only xz and bzip2 use processes;
 *   zstd runs on the event loop and gzip/br on libuv's fixed thread pool, so they take no
 *   slot (their CPU use is already bounded by those threads).
 *
 * Choice per method, by measurement (bench/decompress.ts: 315 MB NAR-like input built from
 * /usr/lib + /usr/share, compressed at Nix's default levels; MB/s of decompressed output;
 * reference = `<tool> -dc file >/dev/null`; ours = file → createDecompressor → consumed in
 * Node; 2-core VM shared with other jobs, so numbers swing ±30% between runs; ratio =
 * median of back-to-back pairs):
 *
 *   method  implementation                 ref MB/s  ours MB/s  ratio  alternatives measured
 *   none    PassThrough                          -          -      -
 *   xz      child `xz -dc` (pool)              ~80        ~80   ~1.0   lzma-native 0.84-1.2 (+3 deps)
 *   zstd    zstd-napi, in-process Duplex     ~1100      ~1050   0.94   `zstd -dc` child 0.65-0.8
 *                                                                     (pipe-bound: even `zstd -dc |
 *                                                                     cat` 0.78), fzstd 0.18,
 *                                                                     zstd-napi DecompressStream 0.8
 *   bzip2   child `bzip2 -dc` (pool)            ~36        ~35   ~1.0   (seek-bzip: not streaming)
 *   br      Node zlib, 128K out, 1M batch      ~380       ~340   ~0.9   zlib defaults 0.62-0.8,
 *                                                                     `brotli -dc` child 0.88
 *   gzip    Node zlib, 128K out, 1M batch      ~200       ~500   ~2.5   zlib defaults 1.7,
 *                                                                     `gzip -dc` child 0.9
 *
 * Last full run (`npx tsx bench/decompress.ts --runs 5`, 315 MB, load average 4.9→7.3 on
 * 2 cores from other jobs; best run of each side, ratio best/best, paired = median of
 * back-to-back ratios):
 *
 *   method  reference           ours  ratio  paired
 *   xz         85 xz -dc          75   0.88    1.35
 *   zstd      921 zstd -dc      1000   1.09    1.40
 *   bzip2      37 bzip2 -dc       36   0.98    1.20
 *   br        339 brotli -dc     356   1.05    1.06
 *   gzip      175 gzip -dc       514   2.93    3.85
 *
 * At load ~2.5 (`--candidates --methods zstd,br --runs 4`): zstd 1104 vs 1035 (0.94),
 * br 385 vs 335-348 (0.87-0.88, before input batching was added).
 */
import { PassThrough, type Duplex } from 'node:stream';
import { NarfsError } from '../errors.js';
import { spawnDecompressor } from './child-decompressor.js';
import { DecompressorPool } from './decompressor-pool.js';
import { createZlibDecompressor } from './zlib-decompressor.js';
import { ZstdDecompressor } from './zstd-decompressor.js';

export const SUPPORTED_COMPRESSIONS = ['none', 'xz', 'zstd', 'bzip2', 'br', 'gzip'] as const;

export type Compression = (typeof SUPPORTED_COMPRESSIONS)[number];

export function isSupportedCompression(method: string): method is Compression {
  return (SUPPORTED_COMPRESSIONS as readonly string[]).includes(method);
}

/** The command each process-backed method runs (reads stdin, writes stdout). */
export const DECOMPRESSOR_COMMANDS = {
  xz: ['xz', '-dc'],
  bzip2: ['bzip2', '-dc'],
} as const satisfies Record<string, readonly [string, ...string[]]>;

export interface DecompressorOptions {
  /** Aborts the wait for a pool slot (ERR_ABORTED) and, later, destroys the stream. */
  signal?: AbortSignal;
  /** Pool limiting the decompressor processes; default: the process-wide pool. */
  pool?: DecompressorPool;
}

/** The process-wide pool used when `options.pool` is not given. */
export const defaultDecompressorPool = new DecompressorPool();

/** Sets how many decompressor processes may run at once (default 2 × cores). */
export function setDecompressionConcurrency(limit: number): void {
  defaultDecompressorPool.setLimit(limit);
}

/**
 * Returns a Duplex: write compressed bytes, read decompressed ones. Resolves once the
 * decompressor is ready (after waiting for a pool slot for process-backed methods).
 */
export async function createDecompressor(method: string, options: DecompressorOptions = {}): Promise<Duplex> {
  const { signal } = options;
  if (!isSupportedCompression(method)) {
    throw new NarfsError('ERR_COMPRESSION_UNSUPPORTED', `unsupported NAR compression ${JSON.stringify(method)}`, {
      details: { method },
    });
  }
  if (signal?.aborted) {
    throw new NarfsError('ERR_ABORTED', 'decompression was cancelled', { cause: signal.reason });
  }
  let stream: Duplex;
  switch (method) {
    case 'none':
      stream = new PassThrough();
      break;
    case 'gzip':
    case 'br':
      stream = createZlibDecompressor(method);
      break;
    case 'zstd':
      stream = new ZstdDecompressor();
      break;
    case 'xz':
    case 'bzip2':
      stream = await spawnDecompressor(DECOMPRESSOR_COMMANDS[method], options.pool ?? defaultDecompressorPool, signal);
      break;
  }
  if (signal !== undefined) destroyOnAbort(stream, signal);
  return stream;
}

function destroyOnAbort(stream: Duplex, signal: AbortSignal): void {
  const onAbort = (): void => {
    stream.destroy(new NarfsError('ERR_ABORTED', 'decompression was cancelled', { cause: signal.reason }));
  };
  if (signal.aborted) {
    onAbort();
    return;
  }
  signal.addEventListener('abort', onAbort, { once: true });
  stream.once('close', () => signal.removeEventListener('abort', onAbort));
}
