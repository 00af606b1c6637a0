/**
 * The verify worker: decompresses (none, zstd, gzip, br; xz and bzip2 through a child
 * process it runs), hashes, strictly parses and stages fetched NARs, off the thread that
 * answers the kernel: the NAR's bytes go, in stream order, into one staging file in the
 * job's directory (nar-staging-file.ts), so each file lies at its NAR offset, while an
 * IndexBuilder hashes the regular files whole and per chunk, so the main thread can serve
 * and commit the files and the index once NarHash matched; with `announce` it also tells
 * each file as soon as its bytes are written (their SHA-256, not yet NarHash-checked: the
 * main thread serves one only where a signed index names that hash). A job `inPlace` (a NAR a stop
 * kept, read back from `<dir>/nar`) checks and indexes the same way and writes nothing.
 * Protocol: verify-protocol.ts. Started by verify-pool.ts.
 *
 * Everything here stands between the NAR's last byte and the first read of the path it
 * belongs to, so it is done once: the index is encoded once and not parsed back (the main
 * thread's parseNarIndex lays the tree out again and checks it against NarSize; the
 * encoder finds every regular file of the tree among the files hashed).
 *
 * Invariants:
 * - Bounded memory per job: the input PassThrough holds at most 1 MiB; a chunk is acked
 *   only when it has left that buffer, and the main thread keeps at most its window of
 *   bytes unacked. Decompressors have backpressure on both sides (decompress.ts). File
 *   contents are written as they pass, never gathered.
 * - Every descriptor of the job is closed before the one final message (`done` or
 *   `failed`), on every path (a `finally`: a mismatch, a truncated or aborted stream, an
 *   exception anywhere), so once the main thread has that message no write of this job
 *   can happen any more. After `failed` the main thread removes the job directory.
 * - Every failure carries the code of its stage: decompress (ERR_DECOMPRESS), verify
 *   (ERR_NAR_*), sink (ERR_CACHE_FULL / ERR_CACHE_IO); an abort is ERR_ABORTED.
 */
import { PassThrough, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parentPort } from 'node:worker_threads';
import { NarfsError, isNarfsError } from '../errors.js';
import { cacheError } from '../cache/cache-error.js';
import { NarStagingFile, stagingFileIn } from '../cache/nar-staging-file.js';
import { createDecompressor } from '../compression/decompress.js';
import { DecompressorPool } from '../compression/decompressor-pool.js';
import { toWireError } from '../nixdb/wire-error.js';
import { IndexBuilder } from '../nix/nar-index-builder.js';
import { encodeNarIndex, type IndexedFile } from '../nix/nar-index.js';
import { NarVerifier } from './nar-verifier.js';
import { FILE_RECORD_BYTES, type FromWorker, type ToWorker, type VerifyStage } from './verify-protocol.js';

const port = parentPort;
if (!port) throw new Error('nar-verify-worker runs only on a worker thread');

interface Job {
  input: PassThrough;
  abort: AbortController;
}

const jobs = new Map<number, Job>();
/** The children this thread runs; their number is bounded by the main thread's pool. */
const CHILDREN = new DecompressorPool(Number.MAX_SAFE_INTEGER);
const post = (m: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

port.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'start': {
      const job: Job = { input: new PassThrough({ highWaterMark: 1 << 20 }), abort: new AbortController() };
      jobs.set(m.id, job);
      void run(m.id, job, m);
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

/**
 * Posts the files of `hashed` from `from` on whose bytes all lie below `written` (the
 * staging file's length) as one `files` message; returns the index of the first not told.
 */
function announce(id: number, hashed: IndexedFile[], from: number, written: number): number {
  let to = from;
  while (to < hashed.length && hashed[to]!.narOffset + hashed[to]!.size <= written) to++;
  if (to === from) return from;
  const buf = new ArrayBuffer((to - from) * FILE_RECORD_BYTES);
  const recs = Buffer.from(buf);
  for (let i = from; i < to; i++) {
    const f = hashed[i]!;
    const at = (i - from) * FILE_RECORD_BYTES;
    recs.writeDoubleLE(f.narOffset, at);
    recs.writeDoubleLE(f.size, at + 8);
    f.sha256.copy(recs, at + 16);
  }
  post({ t: 'files', id, recs: buf }, [buf]);
  return to;
}

async function run(id: number, job: Job, m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
  // The first error each stage raised: pipeline() may reject with a later one (an abort).
  let first: { stage: VerifyStage; err: unknown } | undefined;
  const note = (stage: VerifyStage) => (err: unknown) => { first ??= { stage, err }; };
  let staging: NarStagingFile | undefined;
  let out: { msg: FromWorker; transfer: ArrayBuffer[] };
  try {
    // xz and bzip2: a child process of this thread. Its slot in the process-wide pool was
    // taken by the main thread before the download started (materialiser.ts #fetch), so
    // this thread's own pool never makes it wait.
    const decompressor: Duplex = await createDecompressor(m.compression, { signal: job.abort.signal, pool: CHILDREN });
    // `announce`: files hashed but maybe not yet written (the verifier runs ahead of the
    // drain), told once the drain has written past their last byte.
    const hashed: IndexedFile[] = [];
    let told = 0;
    const builder = new IndexBuilder(m.chunkSize, {
      chunkHashes: m.chunkHashes,
      ...(m.announce && !m.inPlace ? { onFileHashed: (_p: readonly string[], f: IndexedFile) => { hashed.push(f); } } : {}),
    });
    // `inPlace`: the NAR already lies in `<dir>/nar` (a kept NAR read back): verified, not written again.
    const file = m.inPlace ? undefined : staging = new NarStagingFile(m.dir);
    const verifier = new NarVerifier(m.narSize, builder);
    decompressor.on('error', note('decompress'));
    verifier.on('error', note('verify'));
    let written = 0;
    // A failed write is the disk's fault, not the data's.
    const drain = async (chunks: AsyncIterable<Buffer>) => {
      for await (const chunk of chunks) {
        file?.write(chunk);
        written += chunk.length;
        if (told < hashed.length) told = announce(id, hashed, told, written);
      }
    };
    await pipeline(job.input, decompressor, verifier, drain, { signal: job.abort.signal });
    let root;
    try {
      verifier.checkSize();
      root = verifier.listing();
    } catch (err) {
      first ??= { stage: 'verify', err };
      throw err;
    }
    const digest = verifier.digest();
    const index = builder.finish(root, { algo: 'sha256', digest }, m.narSize, m.storePath, { check: false });
    const ab = new Uint8Array(digest).buffer; // ArrayBuffers of their own, to transfer
    const idx = new Uint8Array(encodeNarIndex(index)).buffer;
    file?.close(); // a failure to close fails the job
    out = { msg: { t: 'done', id, digest: ab, index: idx, staging: file?.path ?? stagingFileIn(m.dir) }, transfer: [ab, idx] };
  } catch (err) {
    const s: VerifyStage = staging?.failure ? 'sink' : first?.stage ?? 'verify';
    let e: unknown = job.abort.signal.aborted ? job.abort.signal.reason : staging?.failure ?? first?.err ?? err;
    if (!isNarfsError(e)) {
      e = s === 'decompress' ? new NarfsError('ERR_DECOMPRESS', (e as Error)?.message ?? String(e), { cause: e })
        : s === 'sink' ? cacheError(e, `cannot unpack a NAR into ${m.dir}`) : e;
    }
    out = { msg: { t: 'failed', id, stage: s, error: toWireError(e, 'ERR_INTERNAL') }, transfer: [] };
  } finally {
    // Whatever happened (an exception anywhere, an abort), the staging file's descriptor is
    // closed before the one final message, so the main thread may remove the job directory.
    staging?.close(true);
    jobs.delete(id);
  }
  post(out.msg, out.transfer);
}
