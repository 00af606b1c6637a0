/**
 * The blob-write worker: writes whole verified files into the blob store's directories off
 * the JS thread that answers the kernel, with synchronous system calls (no round trip
 * through libuv's 4-thread pool per call, which reads of cached files share). Started by
 * blob-store.ts (`commitBuffers`).
 *
 * Protocol: main → worker `{ id, data, files: [{ tmp, dir, final, at, size }] }`, `data` an
 * ArrayBuffer (transferred) holding every file's bytes at `at`; worker → main exactly one
 * `{ id, ok: boolean[], errors: string[] }` per job: for each file, whether it now lies
 * under `final`, complete (written in `tmp` with mode 0444, then renamed: a name in blobs/
 * never shows a torn file), and the message of the first failure. No fsync: a file a power
 * loss tears is caught by the re-hash of every blob an earlier process wrote (blob-store.ts).
 */
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';

const port = parentPort;
if (!port) throw new Error('blob-write-worker runs only on a worker thread');

export interface BlobWriteFile { tmp: string; dir: string; final: string; at: number; size: number }

const made = new Set<string>();
port.on('message', (m: { id: number; data: ArrayBuffer; files: BlobWriteFile[] }) => {
  const data = new Uint8Array(m.data);
  const ok: boolean[] = [];
  const errors: string[] = [];
  for (const f of m.files) {
    try {
      if (!made.has(f.dir)) {
        mkdirSync(f.dir, { recursive: true });
        made.add(f.dir);
      }
      writeFileSync(f.tmp, data.subarray(f.at, f.at + f.size), { mode: 0o444, flag: 'wx' });
      renameSync(f.tmp, f.final);
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
