/**
 * runStatus: the answer of the control socket's `status` operation (`narfs status`), the
 * operator's view of one running daemon, as one JSON object (NarfsStatus below; `narfs
 * status` prints it as text, or as it is with --json).
 *
 * Sources: the DatalakeSet's health records, the metrics registry (src/daemon/metrics.ts),
 * the filesystem's inode table and the native engine's counters, the cache directory's
 * disk usage (st_blocks of every file under it, like `du`), and the lower database's
 * current generation — the identity (inode, mtime) of `db.sqlite`, which narfs only ever
 * replaces by rename (src/nixdb/write-generation.ts), so a new inode is a new generation.
 *
 * Invariant: reading the status changes nothing and takes no lock; the disk walk is
 * single-flight and its result is kept for `CACHE_SIZE_MAX_AGE_MS` for scrapes.
 */
import { lstat, opendir } from 'node:fs/promises';
import { join } from 'node:path';
import type { DatalakeSet } from '../datalake/datalake-set.js';
import type { NativeStats } from '../fuse/native-mount.js';
import { lowerStoreLayout } from '../nixdb/lower-store-layout.js';
import type { BlobStoreStats } from '../cache/blob-store.js';
import { processOpenFds, type NarfsMetrics } from './metrics.js';

export interface StatusSources {
  mountpoint: string;
  backend: string;
  cacheDir: string;
  lower: string | undefined;
  lowerSocket: string | undefined;
  datalakes: DatalakeSet;
  metrics: NarfsMetrics;
  cacheSize: CacheSizeProbe;
  inodes(): number;
  engine(): NativeStats | undefined;
  /** The content-addressed cache's counters (bound, evictions, dedupe). */
  files?(): BlobStoreStats;
  /** The NARs a stop kept (PendingNars). */
  kept?(): { nars: number; bytes: number };
  /** Ranged reads of indexed store paths, and reads in JS by how they were served. */
  ranged?(): { requests: number; requestBytes: number; chunksDelivered: number; mismatches: number; rangedReads: number; wholeNarReads: number };
  startedAt: number;
}

export interface NarfsStatus {
  pid: number;
  mountpoint: string;
  backend: string;
  uptimeSeconds: number;
  datalakes: Array<{
    url: string; up: boolean; priority: number | undefined; downSince: string | undefined;
    failedProbes: number; error: { code: string; message: string } | undefined;
  }>;
  cache: { dir: string; sizeBytes: number; files: BlobStoreStats | undefined };
  ranged: ReturnType<NonNullable<StatusSources['ranged']>> | undefined;
  narinfoCache: { hits: number; misses: number; hitRate: number | undefined };
  narCache: {
    hits: number; fetches: number; fetchErrors: number; hitRate: number | undefined;
    bytesFetched: number; bytesDownloaded: number; inFlight: number;
    /** NARs an earlier stop kept, read back instead of fetched (ok) or refused (and fetched). */
    keptReads: number; keptRefused: number;
    /** NARs kept now (pending/), waiting for their path's next use. */
    kept: { nars: number; bytes: number } | undefined;
  };
  fuse: {
    openFiles: number; inodes: number; processOpenFds: number | undefined;
    engine: NativeStats | undefined;
  };
  lower: { root: string; generation: { ino: number; mtime: string } | undefined } | undefined;
  lowerSocket: string | undefined;
}

export async function runStatus(src: StatusSources): Promise<NarfsStatus> {
  const m = src.metrics;
  const sum = (c: { series: Map<string, { labels: Record<string, string>; value: number }> }, pred: (l: Record<string, string>) => boolean = () => true) =>
    [...c.series.values()].filter((s) => pred(s.labels)).reduce((a, s) => a + s.value, 0);
  const hits = m.narinfoLookups.get({ result: 'hit' });
  const misses = m.narinfoLookups.get({ result: 'miss' });
  const narHits = m.narCacheLookups.get({ result: 'hit' });
  const fetches = sum(m.narFetches, (l) => l.outcome === 'ok');
  const fetchErrors = sum(m.narFetches, (l) => l.outcome === 'error');
  const ratio = (a: number, b: number) => (a + b === 0 ? undefined : a / (a + b));
  let lower: NarfsStatus['lower'];
  if (src.lower) {
    const st = await lstat(lowerStoreLayout(src.lower).dbPath).catch(() => undefined);
    lower = { root: src.lower, generation: st ? { ino: st.ino, mtime: st.mtime.toISOString() } : undefined };
  }
  return {
    pid: process.pid,
    mountpoint: src.mountpoint,
    backend: src.backend,
    uptimeSeconds: Math.round((Date.now() - src.startedAt) / 1000),
    datalakes: src.datalakes.status().map((d) => ({
      url: d.displayUrl,
      up: d.up,
      priority: d.cacheInfo?.priority,
      downSince: d.downSince === undefined ? undefined : new Date(d.downSince).toISOString(),
      failedProbes: d.failedProbes,
      error: d.error ? { code: d.error.code, message: d.error.message } : undefined,
    })),
    cache: { dir: src.cacheDir, sizeBytes: await src.cacheSize.refresh(), files: src.files?.() },
    ranged: src.ranged?.(),
    narinfoCache: { hits, misses, hitRate: ratio(hits, misses) },
    narCache: {
      hits: narHits, fetches, fetchErrors, hitRate: ratio(narHits, fetches),
      bytesFetched: sum(m.narBytes), bytesDownloaded: sum(m.downloadBytes), inFlight: m.inFlight.get(),
      keptReads: m.keptReads.get({ outcome: 'ok' }), keptRefused: m.keptReads.get({ outcome: 'refused' }), kept: src.kept?.(),
    },
    fuse: { openFiles: m.openHandles.size, inodes: src.inodes(), processOpenFds: processOpenFds(), engine: src.engine() },
    lower,
    lowerSocket: src.lowerSocket,
  };
}

/** How long a measured cache size serves scrapes before it is measured again. */
export const CACHE_SIZE_MAX_AGE_MS = 30_000;

/** Disk usage of the cache directory, measured on demand, single flight. */
export class CacheSizeProbe {
  readonly #dir: string;
  #last: { bytes: number; at: number } | undefined;
  #running: Promise<number> | undefined;

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** The last measurement (starting a new one in the background when it is old). */
  current(): number | undefined {
    if (!this.#last || Date.now() - this.#last.at > CACHE_SIZE_MAX_AGE_MS) this.refresh().catch(() => {});
    return this.#last?.bytes;
  }

  /** Measures now (joining a measurement in flight). */
  refresh(): Promise<number> {
    this.#running ??= diskUsage(this.#dir)
      .then((bytes) => { this.#last = { bytes, at: Date.now() }; return bytes; })
      .finally(() => { this.#running = undefined; });
    return this.#running;
  }
}

/** Bytes allocated to the files under `dir` (st_blocks × 512), not following symlinks. */
export async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    let handle;
    try {
      handle = await opendir(d);
    } catch {
      return; // vanished meanwhile (a temp file committed, a LevelDB compaction)
    }
    for await (const e of handle) {
      const p = join(d, e.name);
      const st = await lstat(p).catch(() => undefined);
      if (!st) continue;
      total += st.blocks * 512;
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return total;
}
