/**
 * The chunk-verify worker: runs chunk jobs (chunk-job.ts: undo seekable zstd frames, hash
 * each chunk) off the thread that answers the kernel. Started by chunk-verify-pool.ts.
 *
 * Protocol: main → worker `{ id, job }` with the job's input ArrayBuffer transferred;
 * worker → main exactly one `{ id, ok: true, out, good }` (the NAR bytes' ArrayBuffer
 * transferred back: the input itself, or the fresh buffer frames were decoded into) or
 * `{ id, ok: false, error: WireError }` per job, in any order.
 */
import { parentPort } from 'node:worker_threads';
import { toWireError } from '../nixdb/wire-error.js';
import { runChunkJob, type ChunkJob } from './chunk-job.js';

const port = parentPort;
if (!port) throw new Error('chunk-verify-worker runs only on a worker thread');

port.on('message', (m: { id: number; job: ChunkJob }) => {
  try {
    const r = runChunkJob(m.job);
    const out = r.out;
    // The output owns its whole buffer (a fresh decode or the transferred input).
    port.postMessage({ id: m.id, ok: true, out, good: r.ok }, [out.buffer as ArrayBuffer]);
  } catch (e) {
    port.postMessage({ id: m.id, ok: false, error: toWireError(e, 'ERR_DECOMPRESS') });
  }
});
