/**
 * The blob-write worker: writes whole verified files into the blob store's directories off
 * the JS thread that answers the kernel, with synchronous system calls (no round trip
 * through libuv's 4-thread pool per call, which reads of cached files share). Started by
 * blob-store.ts (`commitBuffers`).
 *
 * Protocol: main → worker one `BlobWriteJob` (below): for file i, its hex SHA-256 is
 * characters [64i, 64i+64) of `names`, its final name `<blobDir>/<hex[0..2]>/<hex>`, and its
 * `size[i]` bytes lie at `at[i]` in `data` (an ArrayBuffer, transferred). Plain
 * numbers and one string, not an object of paths per file: cloning thousands of small
 * objects cost the main thread more than the writes save it. `data` may be longer than the
 * files in it (a buffer used again). Worker → main exactly one
 * `{ id, ok: boolean[], errors: string[], data }` per job: for each file, whether it now
 * lies under its final name, complete, with mode 0444, and the message of the first
 * failure; `data` is the job's buffer, transferred back so that the main thread copies the
 * next job into memory that is already faulted in (a fresh buffer per job cost the main
 * thread a page fault per 4 KiB: ~0.2 s of CPU for the 190 MiB of the bench's headers path).
 *
 * A file is created at its final name (O_EXCL) and written there, not in tmp/ and
 * renamed: the directories of blobs/ spread the creations (one shared tmp/ serialised two
 * writer threads on its directory lock: 1.3 ms per file), and a rename was a second
 * directory update per file. A file torn by a crash mid-write has no row (the row goes in
 * after this reply), so the next open adopts it unverified and re-hashes it before any use
 * (blob-store.ts), as it does a file a power loss tears; within this process nothing opens
 * a blob without its row. A name that exists already (left by an earlier process, not yet
 * adopted) is replaced by the tmp/ + rename way (a fresh name in `tmpDir`, which the
 * store empties at open). No fsync, for the same reason.
 *
 * The thread runs at nice 19 (background-thread.ts): its file creations cost CPU that the
 * main thread and the decoders of a first use need more.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parentPort } from 'node:worker_threads';
import { backgroundThread } from '../background-thread.js';

const port = parentPort;
if (!port) throw new Error('blob-write-worker runs only on a worker thread');
// No reader waits for these writes (a verified file is read from its staging file or
// chunk until its blob exists): they take only the CPU the foreground leaves.
backgroundThread();

export interface BlobWriteJob {
  id: number;
  blobDir: string;
  tmpDir: string;
  data: ArrayBuffer;
  names: string;
  at: Float64Array;
  size: Float64Array;
}

const made = new Set<string>();
port.on('message', (m: BlobWriteJob) => {
  const data = new Uint8Array(m.data);
  const ok: boolean[] = [];
  const errors: string[] = [];
  for (let i = 0; i < m.at.length; i++) {
    const hex = m.names.slice(64 * i, 64 * i + 64);
    const dir = join(m.blobDir, hex.slice(0, 2));
    const final = join(dir, hex);
    const bytes = data.subarray(m.at[i]!, m.at[i]! + m.size[i]!);
    let tmp: string | undefined;
    try {
      if (!made.has(dir)) {
        mkdirSync(dir, { recursive: true });
        made.add(dir);
      }
      try {
        writeFileSync(final, bytes, { mode: 0o444, flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          try { rmSync(final, { force: true }); } catch { /* re-hashed at the next open if left */ }
          throw e;
        }
        tmp = join(m.tmpDir, `w.${process.pid}.${randomBytes(6).toString('hex')}`);
        writeFileSync(tmp, bytes, { mode: 0o444, flag: 'wx' });
        renameSync(tmp, final);
      }
      ok.push(true);
    } catch (e) {
      if (tmp) try { rmSync(tmp, { force: true }); } catch { /* tmp/ is emptied at the next open */ }
      made.delete(dir);
      ok.push(false);
      errors.push(`${(e as NodeJS.ErrnoException).code ?? 'EIO'}: ${(e as Error).message}`);
    }
  }
  port.postMessage({ id: m.id, ok, errors, data: m.data }, [m.data]);
});
