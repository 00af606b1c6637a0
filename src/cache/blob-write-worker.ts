/**
 * The blob-write worker: writes whole verified files into the blob store's directories off
 * the JS thread that answers the kernel, with synchronous system calls (no round trip
 * through libuv's 4-thread pool per call, which reads of cached files share). Started by
 * blob-store.ts (`commitBuffers`).
 *
 * Protocol: main → worker `{ id, data, shared, files: [{ tmp, dir, final, src, at, size }] }`:
 * a file's bytes lie at `at` in `data` (an ArrayBuffer, transferred) when `src` is -1, else
 * at `at` in `shared[src]` (a SharedArrayBuffer of decoded frames, which nobody writes into
 * after its decode: chunk-job.ts; read here, never written); worker → main exactly one
 * `{ id, ok: boolean[], errors: string[] }` per job: for each file, whether it now lies
 * under `final`, complete, with mode 0444, and the message of the first failure.
 *
 * A file is created at its final name (O_EXCL) and written there, not in `tmp` and
 * renamed: the directories of blobs/ spread the creations (one shared tmp/ serialised two
 * writer threads on its directory lock: 1.3 ms per file), and a rename was a second
 * directory update per file. A file torn by a crash mid-write has no row (the row goes in
 * after this reply), so the next open adopts it unverified and re-hashes it before any use
 * (blob-store.ts), as it does a file a power loss tears; within this process nothing opens
 * a blob without its row. A name that exists already (left by an earlier process, not yet
 * adopted) is replaced by the `tmp` + rename way. No fsync, for the same reason.
 */
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';

const port = parentPort;
if (!port) throw new Error('blob-write-worker runs only on a worker thread');

export interface BlobWriteFile { tmp: string; dir: string; final: string; src: number; at: number; size: number }

const made = new Set<string>();
port.on('message', (m: { id: number; data: ArrayBuffer; shared: SharedArrayBuffer[]; files: BlobWriteFile[] }) => {
  const data = new Uint8Array(m.data);
  const shared = m.shared.map((b) => new Uint8Array(b));
  const ok: boolean[] = [];
  const errors: string[] = [];
  for (const f of m.files) {
    const bytes = (f.src < 0 ? data : shared[f.src]!).subarray(f.at, f.at + f.size);
    try {
      if (!made.has(f.dir)) {
        mkdirSync(f.dir, { recursive: true });
        made.add(f.dir);
      }
      try {
        writeFileSync(f.final, bytes, { mode: 0o444, flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          try { rmSync(f.final, { force: true }); } catch { /* re-hashed at the next open if left */ }
          throw e;
        }
        writeFileSync(f.tmp, bytes, { mode: 0o444, flag: 'wx' });
        renameSync(f.tmp, f.final);
      }
      ok.push(true);
    } catch (e) {
      try { rmSync(f.tmp, { force: true }); } catch { /* tmp/ is emptied at the next open */ }
      made.delete(f.dir);
      ok.push(false);
      errors.push(`${(e as NodeJS.ErrnoException).code ?? 'EIO'}: ${(e as Error).message}`);
    }
  }
  port.postMessage({ id: m.id, ok, errors });
});
