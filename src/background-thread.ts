/**
 * backgroundThread: lowers the calling thread's CPU priority to nice 19, so the kernel
 * runs it only on what the foreground threads leave: the daemon's main thread (which
 * answers the kernel's FUSE requests), the verify workers and decoders a reader waits for,
 * and the workload itself. For threads whose work no reader waits for: the blob-write
 * workers that split verified NARs into blobs in the background.
 *
 * Linux keeps a nice value per thread: setpriority(PRIO_PROCESS, tid) on a thread id
 * changes that thread only (setpriority(2), "a thread ID"), and /proc/thread-self names the
 * calling thread's id. Raising nice needs no privilege. Measured on the bench (unindexed
 * zstd, 2 cores): see bench/RESULTS.md.
 *
 * Never throws: a system without /proc/thread-self keeps the default priority and says so
 * in the result.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

export const BACKGROUND_NICE = 19;

/** Lowers the calling thread to BACKGROUND_NICE; the thread id, or the reason it could not. */
export function backgroundThread(): { tid: number } | { error: string } {
  try {
    // "<pid>/task/<tid>"
    const tid = Number(readlinkSync('/proc/thread-self').split('/')[2]);
    if (!Number.isSafeInteger(tid) || tid <= 0) return { error: 'no thread id in /proc/thread-self' };
    setPriority(tid, BACKGROUND_NICE);
    return { tid };
  } catch (err) {
    return { error: (err as Error).message };
  }
}
