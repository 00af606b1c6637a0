/**
 * fullGc: runs a full (major, mark-compact) V8 garbage collection now, in any process,
 * whatever flags node was started with. Used after the kernel forgot most inodes of a large
 * walk (StoreFilesystem): the inode table's old arrays and a released listing are garbage
 * that V8 would otherwise keep (and keep counted in RSS) until its memory reducer or the
 * next major GC runs, which an idle daemon may not see for a long time.
 *
 * How: `globalThis.gc` when node runs with --expose-gc; otherwise the flag is set for a
 * moment (`v8.setFlagsFromString`) and the `gc` function of a fresh vm context is taken,
 * then the flag is cleared again (later contexts get no `gc`). This does not depend on how
 * the daemon was started (bin/narfs, a systemd unit running node directly, the daemon
 * spawner, tests mounting in-process), which is why it is preferred over a node flag on an
 * exec line. Returns false when no gc function could be had (then nothing ran).
 *
 * The GC compacts every page (`--compact-on-every-full-gc`, set for this one GC and cleared
 * again): a plain full GC frees dead objects but keeps every page that still holds a live
 * one, and after a walk most pages hold a few long-lived objects among the garbage, so V8's
 * committed heap would stay at its peak (measured: 147 -> 36 MiB committed for the same
 * live objects, one ~15 ms GC). Node 20 keeps V8 flags writable after start (it disables
 * V8's flag freezing for `v8.setFlagsFromString`).
 *
 * The young generation (grown to 32 MiB by a walk) is not shrunk by this GC; a full GC
 * arms V8's memory reducer, which shrinks it ~8 s later when the process is quiet
 * (measured in bench/rss-probe.ts: 32 -> 1 MiB).
 */
import v8 from 'node:v8';
import vm from 'node:vm';

let gcFn: (() => void) | null | undefined;

export function fullGc(): boolean {
  if (gcFn === undefined) {
    gcFn = (globalThis as { gc?: () => void }).gc ?? null;
    if (gcFn === null) {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFn = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFn = null;
      } finally {
        v8.setFlagsFromString('--no-expose-gc');
      }
      if (typeof gcFn !== 'function') gcFn = null;
    }
  }
  if (gcFn === null) return false;
  v8.setFlagsFromString('--compact-on-every-full-gc');
  try {
    gcFn();
  } finally {
    v8.setFlagsFromString('--no-compact-on-every-full-gc');
  }
  return true;
}

let capped = false;

/**
 * Keeps V8's young generation at its start size (`--semi-space-growth-factor=1`, read by
 * V8 each time it would grow it) instead of letting it double up to 2 x 16 MiB while a
 * listing is parsed or a walk is served: that growth was most of a daemon's peak RSS over
 * its idle size, and it stays until V8's memory reducer runs. Once per process.
 */
export function capYoungGeneration(): void {
  if (capped) return;
  capped = true;
  v8.setFlagsFromString('--semi-space-growth-factor=1');
}
