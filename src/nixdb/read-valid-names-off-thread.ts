/**
 * readValidNamesOffThread: the basenames of every path in the lower store's `ValidPaths`
 * (readValidPaths), read on a worker thread (nixdb-worker.ts) within a deadline; and
 * nameChunks, which decodes the answer a slice at a time.
 *
 * Format: the names as UTF-8, joined by "\n" (store path names never contain one; a "\n"
 * byte never occurs inside a multi-byte UTF-8 sequence, so slices cut after one decode
 * whole). Invariant: the calling thread neither opens SQLite nor decodes the whole list at
 * once; a store without a database has no names.
 */
import { runInWorker } from './run-in-worker.js';
import type { NixdbJob } from './nixdb-worker.js';
import { NIXDB_WORKER } from './register-off-thread.js';

export interface ReadValidNamesOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

export function readValidNamesOffThread(lowerRoot: string, options: ReadValidNamesOptions): Promise<Uint8Array> {
  const job: NixdbJob = { op: 'scan', lowerRoot };
  return runInWorker<Uint8Array>(NIXDB_WORKER, job, {
    timeoutMs: options.timeoutMs, what: 'reading the registered paths', failureCode: 'ERR_DB_IO',
    ...(options.signal ? { signal: options.signal } : {}),
  });
}

/** The names in `bytes`, in slices of about `sliceBytes` bytes each (never empty). */
export function* nameChunks(bytes: Uint8Array, sliceBytes = 64 * 1024): Generator<string[]> {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let start = 0;
  while (start < buf.length) {
    let end = start + sliceBytes >= buf.length ? buf.length : buf.indexOf(0x0a, start + sliceBytes);
    if (end < 0) end = buf.length;
    const names = buf.toString('utf8', start, end).split('\n').filter((n) => n !== '');
    if (names.length > 0) yield names;
    start = end + 1;
  }
}
