/**
 * The verify worker: decompresses (none, zstd, gzip, br), hashes, strictly parses and
 * writes fetched NARs to their temp files, off the thread that answers the kernel.
 * Protocol: verify-protocol.ts. Started by verify-pool.ts.
 *
 * Invariants:
 * - Bounded memory per job: the input PassThrough holds at most 1 MiB; a chunk is acked
 *   only when it has left that buffer, and the main thread keeps at most its window of
 *   bytes unacked. Decompressors have backpressure on both sides (decompress.ts).
 * - The worker writes through its own descriptor of the temp file (opened by path), so the
 *   main thread's descriptor is never shared across threads; it is closed before the one
 *   final message (`done` or `failed`), so once the main thread has that message no write
 *   of this job can happen any more.
 * - Every failure carries the code of its stage: decompress (ERR_DECOMPRESS), verify
 *   (ERR_NAR_*), sink (ERR_CACHE_FULL / ERR_CACHE_IO); an abort is ERR_ABORTED.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { PassThrough, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parentPort } from 'node:worker_threads';
import { NarfsError, isNarfsError } from '../errors.js';
import { cacheError } from '../cache/cache-error.js';
import { createDecompressor } from '../compression/decompress.js';
import { toWireError } from '../nixdb/wire-error.js';
import { listingToJson } from '../nix/nar-listing.js';
import { NarVerifier } from './nar-verifier.js';
import type { FromWorker, ToWorker, VerifyStage } from './verify-protocol.js';

const port = parentPort;
if (!port) throw new Error('nar-verify-worker runs only on a worker thread');

interface Job {
  input: PassThrough;
  abort: AbortController;
}

const jobs = new Map<number, Job>();
const post = (m: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

port.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'start': {
      const job: Job = { input: new PassThrough({ highWaterMark: 1 << 20 }), abort: new AbortController() };
      jobs.set(m.id, job);
      void run(m.id, job, m.path, m.narSize, m.compression);
      return;
    }
    case 'chunk': {
      const job = jobs.get(m.id);
      if (!job) return;
      const n = m.buf.byteLength;
      job.input.write(Buffer.from(m.buf), () => post({ t: 'ack', id: m.id, n }));
      return;
    }
    case 'end':
      jobs.get(m.id)?.input.end();
      return;
    case 'abort':
      jobs.get(m.id)?.abort.abort(new NarfsError('ERR_ABORTED', 'the fetch was stopped'));
      return;
  }
});

async function run(id: number, job: Job, path: string, narSize: number, compression: string): Promise<void> {
  // The first error each stage raised: pipeline() may reject with a later one (an abort).
  let first: { stage: VerifyStage; err: unknown } | undefined;
  const note = (stage: VerifyStage) => (err: unknown) => { first ??= { stage, err }; };
  let fh: FileHandle | undefined;
  try {
    const decompressor: Duplex = await createDecompressor(compression);
    const verifier = new NarVerifier(narSize);
    decompressor.on('error', note('decompress'));
    verifier.on('error', note('verify'));
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      const e = cacheError(err, `cannot open the temp file ${path}`);
      first ??= { stage: 'sink', err: e };
      throw e;
    }
    const handle = fh;
    // Chunks are gathered and written with one writev per MiB, not one write per chunk.
    let position = 0;
    const sink = async (chunks: AsyncIterable<Buffer>) => {
      let batch: Buffer[] = [];
      let batched = 0;
      const flush = async () => {
        if (batched === 0) return;
        try {
          await handle.writev(batch, position);
        } catch (err) {
          const e = cacheError(err, `cannot write a NAR to the cache (${path})`);
          first ??= { stage: 'sink', err: e };
          throw e;
        }
        position += batched;
        batch = [];
        batched = 0;
      };
      for await (const chunk of chunks) {
        batch.push(chunk);
        batched += chunk.length;
        if (batched >= 1 << 20) await flush();
      }
      await flush();
    };
    await pipeline(job.input, decompressor, verifier, sink, { signal: job.abort.signal });
    let listing;
    try {
      verifier.checkSize();
      listing = verifier.listing();
    } catch (err) {
      first ??= { stage: 'verify', err };
      throw err;
    }
    const digest = verifier.digest();
    await fh.close();
    fh = undefined;
    const ab = new Uint8Array(digest).buffer; // ArrayBuffers of their own, to transfer
    const json = new Uint8Array(listingToJson(listing)).buffer;
    post({ t: 'done', id, digest: ab, listing, listingJson: json }, [ab, json]);
  } catch (err) {
    await fh?.close().catch(() => {});
    fh = undefined;
    const s: VerifyStage = first?.stage ?? 'verify';
    let e: unknown = job.abort.signal.aborted ? job.abort.signal.reason : first?.err ?? err;
    if (!isNarfsError(e)) {
      e = s === 'decompress' ? new NarfsError('ERR_DECOMPRESS', (e as Error)?.message ?? String(e), { cause: e })
        : s === 'sink' ? cacheError(e, `cannot write a NAR to the cache (${path})`) : e;
    }
    post({ t: 'failed', id, stage: s, error: toWireError(e, 'ERR_INTERNAL') });
  } finally {
    jobs.delete(id);
  }
}
