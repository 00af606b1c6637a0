/**
 * QuietMemoryRelease: once a mount daemon has gone quiet after work, one full GC of the
 * main isolate and one glibc malloc_trim(0), so an idle daemon does not sit on the memory
 * of its last burst.
 *
 * Why: a full read of the bench closure (555 MiB over a seekable datalake) left the
 * daemon at ~1 GiB of anonymous memory, unchanged for 40 s after the last read. Of that,
 * the live JS heap was ~96 MiB (a heap snapshot): the rest was the garbage of decoded
 * frames and response bodies that no GC had swept (V8 collects when JS allocates, and an
 * idle daemon does not), and freed C memory that glibc keeps inside its arenas (it gives
 * back only the free top of a heap by itself; malloc_trim(0) also the free pages inside).
 * Measured figures: bench/RESULTS.md.
 *
 * Invariants:
 * - Quiet means: `activity()` (requests the engine served, bytes read) unchanged and
 *   `busy()` false for a whole `quietMs` period. A release runs at most once per quiet
 *   period that follows work, never during work (a GC there would pause answers and a trim
 *   would only make the next burst fault its pages in again). The mount daemon counts
 *   requests as each engine can: the native engine's counter (C and JS); with the
 *   fuse-native binding, the requests JS answered (counted when they settle, so a request
 *   waiting long on a datalake shows only once it is answered, or by its bytes).
 * - The GC is the main isolate's; worker threads' isolates are not touched (their pools
 *   stop idle workers, which frees their heaps).
 * - Without either tool (no native engine, not glibc, no GC hook) that step is skipped;
 *   with neither, nothing runs.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from '../log.js';

/** How long the daemon must be quiet before a release. */
export const DEFAULT_QUIET_MS = 10_000;
/** From the GC to the trim. */
const TRIM_AFTER_GC_MS = 1_000;

export interface QuietMemoryReleaseOptions {
  /** A count that grows with the daemon's work. */
  activity: () => number;
  /** Work under way that the count may not show (background commits). */
  busy?: () => boolean;
  /** glibc's malloc_trim(0): whether memory went back. */
  trim?: (() => boolean) | undefined;
  /** A full GC of this isolate (default: fullGc()). */
  gc?: (() => void) | undefined;
  logger?: Logger;
  quietMs?: number;
  /** From the GC to the trim (default 1 s). */
  trimAfterGcMs?: number;
}

export interface QuietMemoryRelease {
  /** Releases run so far. */
  readonly releases: number;
  stop(): void;
}

/**
 * A function running a full GC of this isolate: `globalThis.gc` when node runs with
 * --expose-gc, else V8's `gc` extension taken from a fresh context (the flag set for that
 * context's creation only); undefined if V8 refuses.
 */
export function fullGc(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return exposed as () => void;
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : undefined;
  } catch {
    return undefined;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}

export function startQuietMemoryRelease(o: QuietMemoryReleaseOptions): QuietMemoryRelease {
  const gc = 'gc' in o ? o.gc : fullGc();
  const trim = o.trim;
  if (!gc && !trim) return { releases: 0, stop() {} };
  let releases = 0;
  let trimLater: NodeJS.Timeout | undefined;
  let seen = o.activity();
  // Start-up is work too: the first quiet period after it releases once.
  let dirty = true;
  const timer = setInterval(() => {
    let now: number;
    let busy: boolean;
    try {
      now = o.activity();
      busy = o.busy?.() ?? false;
    } catch {
      return; // the stack is closing; stop() follows
    }
    if (now !== seen || busy) {
      seen = now;
      dirty = true;
      return;
    }
    if (!dirty) return;
    dirty = false;
    const before = process.memoryUsage.rss();
    const t0 = performance.now();
    gc?.();
    const gcMs = performance.now() - t0;
    releases++;
    // V8 frees the swept buffers' C memory on a background task after the GC returns:
    // the trim comes a little later, so that memory is free when glibc looks.
    trimLater = setTimeout(() => {
      trimLater = undefined;
      const trimmed = trim?.() ?? false;
      o.logger?.debug('quiet: released free memory', {
        rssBefore: before, rssAfter: process.memoryUsage.rss(), trimmed, gcMs: Math.round(gcMs),
      });
    }, o.trimAfterGcMs ?? TRIM_AFTER_GC_MS);
    trimLater.unref();
  }, o.quietMs ?? DEFAULT_QUIET_MS);
  timer.unref();
  return {
    get releases() { return releases; },
    stop() {
      clearInterval(timer);
      clearTimeout(trimLater);
    },
  };
}
