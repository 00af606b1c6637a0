/**
 * Materialiser: fetches a store path's whole NAR, decompresses it, verifies it while it
 * streams and stages it, then commits the files to the BlobStore (content-
 * addressed: a file already held is a dedupe hit) and the NarIndex built from the NAR to
 * the TreeStore (source `nar`).
 *
 * Invariants:
 * - Files enter the BlobStore only after NarSize and NarHash matched (what Nix checks on
 *   substitution: "hash mismatch importing path", store-api.cc) and the NAR parsed
 *   strictly; a mismatch leaves nothing in the cache (the job directory in tmp/ is
 *   removed) and is reported once with its code (ERR_NAR_HASH_MISMATCH,
 *   ERR_NAR_SIZE_MISMATCH, ERR_NAR_*, ERR_DECOMPRESS…).
 * - Reads are answered as soon as the NarHash matched, not after the per-file work: the
 *   verify worker writes the NAR into ONE staging file, so each file lies at its NAR
 *   offset (nar-staging-file.ts; one file creation per file cost ~0.45 ms each before the
 *   hash match), `verified` then answers the tree and `readStaged` serves each file from the
 *   staging file (the very bytes that were hashed, nothing held in memory), while the
 *   files are split into blobs in the background (commitBuffers in bounded batches, a big
 *   file by commitFiles) and then the tree goes to the TreeStore. No file of a NAR is
 *   readable through `verified`'s tree before its NarHash matched. The one exception is
 *   by content, not by tree: a fetch started with `announce` (a walked path whose signed
 *   index the caller holds) has the worker tell each file once its bytes are staged, with
 *   their SHA-256, and `readStreamed` / `stagedLocation` serve a file by that hash to a
 *   caller whose hash of it comes from a signed index or a verified tree, as a blob is
 *   served by its name. So a reader follows a walked NAR as it streams. Those entries go
 *   when the attempt ends; a failed one's staging file goes as any failed fetch's, and an
 *   engine told of it (onStagingGone) lets go of it. `ensure` still waits for the commit; `flush()`
 *   waits for every commit; `stop()` (before the BlobStore closes) ends them after the
 *   batch under way (COMMIT_BATCH_*), keeping what was committed, and moves each staging
 *   file to the PendingNars (pending-nars.ts): the next process reads that NAR back
 *   through the verify worker (NarHash checked again) when the path is first used, instead
 *   of fetching it, and commits the rest then. So an unmount neither waits for the
 *   commits of what was just fetched (~1.5 s for a path of 17k files) nor loses them.
 *   Without PendingNars, `stop()` first lets the commits run to their end, yielding to
 *   nothing, for up to COMMIT_FINISH_MS, and deletes the staging files of those it ended:
 *   the rest is fetched again when read; a NAR verified before the stop then always gets
 *   its first batch, so a path of one batch read just before an unmount is cached whole.
 *   Commits are background work: before each batch a commit waits while any whole NAR is
 *   being fetched (a reader waits for that one; its decode and hash need the cores the
 *   commit's file creations take) and until reads pause (COMMIT_QUIET_MS; the main thread
 *   answers them and drives the commit), COMMIT_YIELD_MAX_MS at most per batch, so a long
 *   run of fetches or reads slows a commit down but never stalls it; its file creations
 *   run on writer threads at nice 19 (blob-write-worker.ts).
 * - Disk bound: the staging file counts in the BlobStore's bound (BlobStore.reserve) from
 *   before the download (NarSize, what it holds) until its job directory is removed, so while a NAR is committed the cache holds at most its bound,
 *   staging file and blobs together (the files of that NAR are on disk twice meanwhile).
 *   What the bound does not see: each file's last block is rounded up by the filesystem, and the copy of a big file
 *   (> COMMIT_COPY_BYTES) out of the staging file is counted only from its rename into
 *   blobs/: the excess is at most the largest file of the NAR, while it is copied.
 * - The job directory (with its staging file) is removed on every path: a failed fetch
 *   once the verify worker let go of it (any mismatch, truncation, abort or exception), a
 *   verified one when its commit ends or stops; one a crash left behind goes at the next
 *   open of the cache (BlobStore.open empties tmp/). Nothing of a failed NAR is served.
 * - Reads from a staging file share one descriptor (StagingReader), closed only once the
 *   commit has ended and no read holds it: a read under way when the commit removed the
 *   file reads through it (the bytes stay until it closes); one that opens it after finds
 *   it gone and reads the blob, or, when the commit did not keep the file (a failure, a
 *   stop), fails with ERR_CACHE_CORRUPT, which LazyStore.read answers by fetching again.
 *   No descriptor is closed under a read. A FUSE engine may be given a staging file
 *   (stagedLocation, for LazyStore.contentFile) and reads it through its own descriptor;
 *   `onStagingGone` tells it when the file is gone, so it lets go.
 * - A store path counts as materialised when its tree matches the narinfo in force
 *   (TreeStore.lookup drops a stale or damaged one) and every file it names is a complete
 *   blob; a file evicted since (or dropped as damaged) makes the whole NAR be fetched again.
 * - The listing returned is the tree of the verified NAR itself; callers that showed a
 *   `.ls` listing before compare it (LazyStore), whichever fetch they joined.
 * - One fetch per store path at a time, shared by all readers (single flight); the fetch
 *   is not tied to any one reader's deadline, only to shutdown. Transient datalake
 *   failures are retried a bounded number of times.
 * - Nothing is held while waiting: a fetch first takes its decompressor (which may wait
 *   for a pool slot), then its temp directory, and opens the datalake stream last, handing it to
 *   `pipeline()` in the same tick. So no socket sits idle behind a slot, and no stream can
 *   fail while nobody listens to it (an unhandled 'error' would end the daemon).
 * - Every failure carries the code of the stage it came from: the datalake stream
 *   (ERR_DATALAKE_*; an uncoded one is ERR_DATALAKE_UNAVAILABLE, a premature close
 *   ERR_DATALAKE_TRUNCATED, both retried), the decompressor (ERR_DECOMPRESS), the NAR
 *   check (ERR_NAR_*), the cache disk (ERR_CACHE_FULL / ERR_CACHE_IO, not blamed on the
 *   data). An uncoded error of unknown origin is ERR_INTERNAL, never ERR_DECOMPRESS.
 * - Memory is bounded: the stream flows through with back-pressure, never buffered whole.
 * - CPU work is off the main thread (which answers the kernel): decompression (xz and
 *   bzip2 by a child process of the worker), SHA-256 of the NAR and of every file (not
 *   chunk, the strict parse and the write of the staging file run on a verify worker
 *   (verify-pool.ts, nar-staging-file.ts). The main thread parses the index once, moves
 *   the compressed bytes on and drives the commit. The temp
 *   directory is committed or removed only once the worker has finished with it
 *   (`VerifyJob.settled`).
 * - The NAR comes from the datalake whose narinfo was used (its URL is relative to it),
 *   through the DatalakeSet (`getStreamFrom`), so the set's health applies: a datalake
 *   known to be down fails fast (after at most one bounded probe), and a NAR stream that
 *   dies or stalls mid-body (ERR_DATALAKE_UNAVAILABLE/TIMEOUT/TRUNCATED from the source
 *   stage or the stall watchdog) is reported to the set, which marks the datalake down.
 *   The set's fail-fast "down" answer is not retried here: the datalake was just given its
 *   chance, and retrying would only make every reader wait longer.
 */
import { setMaxListeners } from 'node:events';
import { type Duplex, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { NarfsError, isNarfsError, toNarfsError, type ErrorCode } from '../errors.js';
import { abortReason, raceSignal, sleep } from '../deadline.js';
import type { Logger } from '../log.js';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import type { BlobStore } from '../cache/blob-store.js';
import type { TreeSource, TreeStore } from '../cache/tree-store.js';
import type { PendingNar, PendingNars } from '../cache/pending-nars.js';
import { cacheError } from '../cache/cache-error.js';
import { stagingFileIn } from '../cache/nar-staging-file.js';
import { createDecompressor, defaultDecompressorPool, DECOMPRESSOR_COMMANDS } from '../compression/decompress.js';
import { checkRelPath } from '../datalake/datalake.js';
import { isDatalakeDown, type DatalakeSet } from '../datalake/datalake-set.js';
import type { NarNode } from '../nix/nar-listing.js';
import { formatHash } from '../nix/hash.js';
import { parseNarIndex, type NarIndex } from '../nix/nar-index.js';
import { storePathBase, storePathFull } from '../nix/store-path.js';
import type { PathInfo } from './path-info-service.js';
import { defaultVerifyPool, type VerifyJob, type VerifyPool } from './verify-pool.js';
import { FILE_RECORD_BYTES, type WorkerCompression } from './verify-protocol.js';

export interface MaterialiserOptions {
  logger: Logger;
  /** The set the PathInfo's datalake belongs to: NARs are fetched through its health accounting. */
  datalakes: DatalakeSet;
  /**
   * A fetch that moves no byte for this long is abandoned (ERR_DATALAKE_TIMEOUT), whatever
   * the datalake: a hung file:// mount or a server trickling a byte now and then must not
   * hold a store path forever. Default 60 s.
   */
  stallMs?: number;
  /** Attempts per fetch for transient datalake failures. */
  attempts?: number;
  /** First pause between attempts; doubles each time. Default 200 ms. */
  retryBaseMs?: number;
  /** Aborted on shutdown: fetches in flight stop and clean up. */
  signal?: AbortSignal;
  /** Worker threads that verify NARs; default: the process-wide pool. */
  verifyPool?: VerifyPool;
  /** Told of each fetch attempt (metrics; src/daemon/metrics.ts). */
  events?: MaterialiserEvents;
  /** Chunk size of the index built from a NAR (default 256 KiB). */
  chunkSize?: number;
  /** The longest a background commit waits, before one batch, for whole-NAR fetches to end and reads to pause. Default COMMIT_YIELD_MAX_MS. */
  commitYieldMaxMs?: number;
  /** How long reads must pause before a background commit's next batch. Default COMMIT_QUIET_MS. */
  commitQuietMs?: number;
  /**
   * How long stop() lets the commits under way run on before it stops them. Default: 0
   * when `pending` is given (what is not committed is kept there), else COMMIT_FINISH_MS.
   */
  commitFinishMs?: number;
  /**
   * Where a stop keeps the staging files of the commits it ended, and where a fetch looks
   * first for its NAR (pending-nars.ts). Without it, a stop deletes them.
   */
  pending?: PendingNars;
}

/** Chunk size of the trees made from whole NARs. */
export const NAR_TREE_CHUNK_SIZE = 256 * 1024;

/** What the materialiser reports to a listener: each fetch attempt. */
export interface MaterialiserEvents {
  fetchStarted(datalake: string): void;
  /** `narSize`/`fileSize` (NarSize and FileSize of the narinfo) only when it succeeded. */
  fetchEnded(datalake: string, ok: boolean, seconds: number, narSize?: number, fileSize?: number): void;
  /** A NAR a stop kept (PendingNars) was read back (`ok`) or refused and fetched instead. */
  keptRead?(ok: boolean, narSize: number): void;
}

/**
 * Methods a verify worker undoes itself (xz and bzip2 through a child process it runs):
 * only the compressed bytes cross the main thread. xz on the main thread cost it a read
 * and a postMessage per ~11 KiB of decompressed NAR (a 198 MB NAR: ~18k of each), in the
 * event loop that also answers the kernel and drives the commits.
 */
const IN_WORKER: ReadonlySet<string> = new Set<WorkerCompression>(['none', 'zstd', 'gzip', 'br', 'xz', 'bzip2']);
/**
 * Files read back from a staging file per commitBuffers call, and their bytes at most. A
 * stop (unmount, SIGTERM) waits for the batch being written, so a batch is kept to a
 * fraction of a second of file creations (~0.3-0.9 ms each, on two writer threads).
 */
const COMMIT_BATCH_FILES = 512;
const COMMIT_BATCH_BYTES = 16 * 1024 * 1024;
/**
 * The longest a commit waits, before one batch, for the whole-NAR fetches under way to
 * end. Measured (bench scenario 1, unindexed xz on 2 cores): while the 17k files of one
 * NAR were committed, the next NARs took 0.87-0.93 s and 0.65-0.68 s from request to
 * NarHash match against 0.41 s and 0.34 s for `xz -dc | sha256sum` alone.
 */
const COMMIT_YIELD_MAX_MS = 2000;
/**
 * A commit's next batch waits until no read has come for this long. A batch costs the main
 * thread, which also answers the reads, ~10-20 ms (512 files read back from the staging
 * file and their rows written) and the writer threads their file creations: measured on
 * the bench's first use (unindexed zstd), the reads right after a NAR of 17,105 files
 * matched took 230 ms while its commit ran, against 65 ms before issue 10. 50 ms still let
 * batches (3,072 of the 17,105 files, 6 batches) into the pauses of an interpreter's
 * start (a workload waiting ~20-60 ms on the next path's narinfo): the workload took
 * 2.5-2.6 s against 2.2-2.3 s with no batch during it (measured, bench/lazy-probe.ts).
 * With 300 ms none ran during the workload; a stop keeps what is left (PendingNars).
 */
const COMMIT_QUIET_MS = 300;
/**
 * How long a stop (unmount, SIGTERM) lets the commits under way run to their end. The
 * bench's largest path (17,105 files) commits in ~2-4 s on this machine; systemd gives a
 * stopping unit 90 s by default.
 */
const COMMIT_FINISH_MS = 20_000;
/** A file larger than this is copied out of the staging file into a temp file of its own, not held in memory. */
const COMMIT_COPY_BYTES = 8 * 1024 * 1024;
/** Longest wait for a verify worker to let go of a temp file after a failure. */
const SETTLE_MS = 30_000;

export interface Materialised {
  /** The verified tree: where each file's contents are (by SHA-256) and its chunk hashes. */
  index: NarIndex;
  /** `index.root`. */
  listing: NarNode;
  source: TreeSource;
}

const TRANSIENT: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_DATALAKE_UNAVAILABLE', 'ERR_DATALAKE_TIMEOUT', 'ERR_DATALAKE_TRUNCATED', 'ERR_DATALAKE_HTTP', 'ERR_DEADLINE',
]);

type Stage = 'source' | 'decompress' | 'verify' | 'sink';

export class Materialiser {
  readonly #blobs: BlobStore;
  readonly #trees: TreeStore;
  readonly #opts: MaterialiserOptions;
  readonly #inflight = new Map<string, Promise<Materialised>>();
  /** Counts NAR fetches started (tests assert single flight with it). */
  fetches = 0;

  /** NARs read back from the entries a stop kept (PendingNars) instead of fetched, since start. */
  resumed = 0;

  /** Files of verified NARs that the BlobStore already held (dedupe), since start. */
  dedupeHits = 0;

  /** Store paths whose verified files are being committed in the background (#commitLater). */
  readonly #committing = new Map<string, CommitEntry>();
  /**
   * Verified files not yet committed, by hex SHA-256: where they lie in a staging file and
   * the commit they belong to. A list: two NARs being committed may hold the same contents,
   * and either commit may end (or stop) first.
   */
  readonly #staged = new Map<string, StagedFile[]>();
  readonly #commits = new Set<Promise<void>>();
  /** Aborted by stop(): the background commits end after the batch being written. */
  readonly #stopCommits = new AbortController();
  readonly #commitSignal: AbortSignal;
  /** Whole-NAR fetches streaming now (#stream), and the wake-ups of the commits waiting for none to be. */
  #streaming = 0;
  readonly #streamingDone = new Set<() => void>();
  /** When the last read came (noteRead; performance.now()). */
  #lastRead = -Infinity;

  /** Background commits waiting now for the foreground to be idle (#yieldToForeground). */
  get yielding(): number {
    return this.#streamingDone.size;
  }

  /** Whether a NAR is being fetched, verified or committed now. */
  get busy(): boolean {
    return this.#inflight.size > 0 || this.#commits.size > 0 || this.#streaming > 0;
  }

  constructor(blobs: BlobStore, trees: TreeStore, options: MaterialiserOptions) {
    this.#blobs = blobs;
    this.#trees = trees;
    this.#opts = options;
    this.#commitSignal = options.signal ? AbortSignal.any([options.signal, this.#stopCommits.signal]) : this.#stopCommits.signal;
    // Every background commit waiting for the foreground (#yieldToForeground) listens to
    // this one signal, as many at once as NARs commit (a closure of dozens of small paths);
    // each removes its listener when its wait ends, so the count is bounded, not a leak.
    setMaxListeners(0, this.#commitSignal);
  }

  /** The stored tree of `info` if it is current and every file it names is held whole. */
  async cached(info: PathInfo): Promise<Materialised | undefined> {
    const found = await this.#trees.lookup(info.narInfo);
    if (found.state !== 'ok') return undefined;
    const tree = found.tree;
    for (const f of tree.index.files) {
      if (this.#blobs.completePath(f.sha256, f.size) === undefined) return undefined;
    }
    return { index: tree.index, listing: tree.index.root, source: tree.source };
  }

  /**
   * Tells that a read came (LazyStore.read, any file): background commits wait for the
   * reads to pause (COMMIT_QUIET_MS) before their next batch.
   */
  noteRead(): void {
    this.#lastRead = performance.now();
  }

  /**
   * Tells that foreground work that is not a read is under way (LazyStore.resolve: a
   * lookup waiting for a narinfo, an index or a listing): background commits wait until
   * none is and reads have paused, as while a whole NAR streams. A workload blocked on a
   * lookup of its next store path is not idle: measured (bench scenario 1, unindexed
   * zstd), a commit batch that started in that pause delayed the lookup's answer and the
   * next NAR's verification (a LOOKUP 66 ms instead of 0.1 ms). Returns the end (once).
   */
  holdForeground(): () => void {
    this.#foreground++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#lastRead = performance.now();
      if (--this.#foreground === 0) this.#wakeYields();
    };
  }

  /** Foreground work under way that is not a read (holdForeground). */
  #foreground = 0;

  /** Has every commit waiting in #yieldToForeground look again (the foreground changed). */
  #wakeYields(): void {
    for (const wake of [...this.#streamingDone]) wake();
  }

  /**
   * Gives a count of the requests a FUSE engine has served (answered in C or handed to
   * JS), which background commits look at while they wait: a change counts as a read.
   * Reads the engine answers in C (from a blob or a staging file) and LOOKUPs answered
   * from memory never reach LazyStore.read, so without it a workload busy with those
   * looked idle and a commit batch took the cores it was using.
   */
  watchActivity(count: () => number): void {
    this.#activity = count;
    this.#lastActivity = count();
  }

  #activity: (() => number) | undefined;
  #lastActivity = 0;

  /** Notes a read when the engine served requests since the last look (watchActivity). */
  #lookAtActivity(): void {
    if (!this.#activity) return;
    const n = this.#activity();
    if (n !== this.#lastActivity) {
      this.#lastActivity = n;
      this.#lastRead = performance.now();
    }
  }

  /** The fetch of `name` in flight, if any (settles when it ends, never rejects). */
  inFlight(name: string): Promise<void> | undefined {
    const p = this.#inflight.get(name);
    return p?.then(() => undefined, () => undefined);
  }

  /**
   * The verified tree of `info`, every file of it held whole in the BlobStore, fetching
   * the NAR if needed.
   * `signal` bounds only this caller's wait.
   */
  async ensure(info: PathInfo, signal?: AbortSignal): Promise<Materialised> {
    const m = await this.verified(info, signal);
    await raceSignal(this.committed(storePathBase(info.narInfo.storePath)), signal);
    return m;
  }

  /**
   * The verified tree of `info` as soon as its NAR matched NarHash, fetching the NAR if
   * needed: each of its files is then in the BlobStore or, while its commit goes on,
   * readable with `readStaged`. `signal` bounds only this caller's wait. `announce`: a
   * fetch this call starts tells each file as soon as its bytes are staged (readStreamed).
   */
  async verified(info: PathInfo, signal?: AbortSignal, { announce = false }: { announce?: boolean } = {}): Promise<Materialised> {
    const name = storePathBase(info.narInfo.storePath);
    let pending = this.#inflight.get(name);
    if (!pending) {
      // Registered before anything is awaited: a reader that comes before the NAR's first
      // byte (or between two attempts) waits for its file, not for the whole NAR.
      const a = announce ? new Announcer(this.#streamed) : undefined;
      if (a) this.#announcers.set(name, a);
      pending = this.#ensure(name, info, a).finally(() => {
        if (a) {
          a.end();
          if (this.#announcers.get(name) === a) this.#announcers.delete(name);
        }
        this.#inflight.delete(name);
      });
      this.#inflight.set(name, pending);
    }
    return raceSignal(pending, signal);
  }

  async #ensure(name: string, info: PathInfo, announce: Announcer | undefined): Promise<Materialised> {
    const committing = this.#committing.get(name);
    if (committing && sameNarInfo(committing.info, info)) return committing.m;
    if (committing) await committing.done;
    const cached = await this.cached(info);
    if (cached) {
      await this.#opts.pending?.discard(name);
      return cached;
    }
    const kept = this.#opts.pending?.take(name, info.narInfo.narHash.digest, info.narInfo.narSize);
    if (kept) {
      const resumed = await this.#resume(name, info, kept);
      if (resumed) return resumed;
    }
    const attempts = Math.max(1, this.#opts.attempts ?? 3);
    for (let attempt = 1; ; attempt++) {
      const ev = this.#opts.events;
      const t0 = performance.now();
      ev?.fetchStarted(info.datalake.displayUrl);
      try {
        const m = await this.#fetch(name, info, announce);
        ev?.fetchEnded(info.datalake.displayUrl, true, (performance.now() - t0) / 1000, info.narInfo.narSize, info.narInfo.fileSize);
        return m;
      } catch (e) {
        ev?.fetchEnded(info.datalake.displayUrl, false, (performance.now() - t0) / 1000);
        const err = toNarfsError(e);
        const retry = attempt < attempts && TRANSIENT.has(err.code) && !isDatalakeDown(err) && !this.#opts.signal?.aborted;
        this.#opts.logger.error(retry ? 'NAR fetch failed; retrying' : 'NAR fetch failed', {
          path: name, datalake: info.datalake.displayUrl, attempt, err,
        });
        if (!retry) throw err;
        await sleep((this.#opts.retryBaseMs ?? 200) * 2 ** (attempt - 1), this.#opts.signal);
      }
    }
  }

  /**
   * The NAR an earlier stop kept for `name` (PendingNars), read through the verify worker
   * as if fetched (NarHash and NarSize checked again, staged, committed in the background);
   * the kept file is removed once read. Undefined when it did not verify (logged): the
   * caller fetches the NAR from the datalake then.
   */
  async #resume(name: string, info: PathInfo, kept: PendingNar): Promise<Materialised | undefined> {
    const t0 = Date.now();
    try {
      const m = await this.#fetchWith(name, info, true, t0, kept);
      this.resumed++;
      this.#opts.events?.keptRead?.(true, info.narInfo.narSize);
      this.#opts.logger.info('read a NAR kept at the last stop', { path: name, bytes: info.narInfo.narSize, ms: Date.now() - t0 });
      return m;
    } catch (err) {
      if (this.#opts.signal?.aborted) throw err;
      this.#opts.events?.keptRead?.(false, info.narInfo.narSize);
      this.#opts.logger.warn('a NAR kept at the last stop did not verify; fetching it from the datalake', { path: name, err: toNarfsError(err) });
      return undefined;
    } finally {
      await kept.drop();
    }
  }

  /**
   * Commits the files of a verified NAR (their contents in `staging`, at their NAR
   * offsets, in the job directory `temp`) to the BlobStore and then its tree to the
   * TreeStore, in the background; meanwhile each file is readable from the staging file
   * (readStaged) and `verified` of the path answers `m`. Memory is bounded: files are read
   * back in batches of up to COMMIT_BATCH_FILES / COMMIT_BATCH_BYTES (commitBuffers, on
   * the blob-write threads); a file above COMMIT_COPY_BYTES is copied to a temp file of
   * its own (commitFiles). A failure of the commit is logged; the files not committed are
   * fetched again when read. A stop (stop(), shutdown) ends it between batches: what was
   * committed stays (complete blobs with their rows), the tree is written only when every
   * file was, the staging file is kept by the PendingNars (read back when the path is next
   * used) and the job directory goes. Without PendingNars a NAR verified before the stop
   * gets its first batch (one of a single batch is committed whole, so a small path read
   * just before an unmount is cached) and the path is fetched again when next used.
   * `release` lets go of the staging file's bytes in the BlobStore's bound once the job
   * directory is gone (a kept file is counted again by the PendingNars).
   */
  #commitLater(name: string, info: PathInfo, m: Materialised, staging: string | undefined, encoded: Buffer, temp: string, verifiedMs: number, release: () => void): void {
    const ni = info.narInfo;
    const t0 = Date.now();
    const entry: CommitEntry = { info, m, done: Promise.resolve() };
    const reader = staging === undefined ? undefined : new StagingReader(staging, ni.narSize);
    if (reader !== undefined) {
      for (const f of m.index.files) {
        const hex = f.sha256.toString('hex');
        const list = this.#staged.get(hex);
        const s: StagedFile = { reader, offset: f.narOffset, size: f.size, entry };
        if (list) list.push(s);
        else this.#staged.set(hex, [s]);
      }
    }
    const signal = this.#commitSignal;
    const progress = { files: 0 };
    entry.done = (async () => {
      try {
        const committed = staging === undefined ? { deduped: 0, dedupedBytes: 0 } : await this.#commitStaged(m.index, staging, signal, progress);
        this.dedupeHits += committed.deduped;
        // Every file was committed (a stop that came meanwhile found no batch left): the tree
        // too, unless a signed one of this same NAR is stored (a walked indexed path fetched
        // whole, lazy-store.ts #goWhole): its chunk hashes let a file evicted later come
        // back by range, which this tree (no chunk hashes) could not.
        const stored = await this.#trees.lookup(ni).catch(() => undefined);
        if (stored?.state !== 'ok' || stored.tree.source !== 'signed') await this.#trees.put(m.index, 'nar', encoded);
        this.#opts.logger.info('materialised', {
          path: name, bytes: ni.narSize, ms: verifiedMs, commitMs: Date.now() - t0, source: info.datalake.displayUrl,
          compression: ni.compression, files: m.index.files.length, deduped: committed.deduped, dedupedBytes: committed.dedupedBytes,
        });
      } catch (err) {
        if (signal.aborted) {
          entry.error = new NarfsError('ERR_ABORTED', `the commit of ${name} was stopped`, { cause: err });
          this.#opts.logger.info(this.#opts.pending && staging !== undefined ? 'commit of a verified NAR stopped; its NAR is kept for the next start'
            : 'commit of a verified NAR stopped; the files not committed are fetched again when read', {
            path: name, files: m.index.files.length, committedFiles: progress.files, ms: verifiedMs, commitMs: Date.now() - t0,
          });
        } else {
          entry.error = toNarfsError(err, 'ERR_CACHE_IO');
          this.#opts.logger.error('cannot commit the files of a verified NAR to the cache; they are fetched again when read', {
            path: name, err: entry.error,
          });
        }
      } finally {
        for (const f of m.index.files) {
          const hex = f.sha256.toString('hex');
          const list = this.#staged.get(hex);
          if (!list) continue;
          const rest = list.filter((x) => x.entry !== entry);
          if (rest.length === 0) this.#staged.delete(hex);
          else this.#staged.set(hex, rest);
        }
        if (this.#committing.get(name) === entry) this.#committing.delete(name);
        // No read finds the staging file any more; one under way keeps the shared
        // descriptor (and right bytes) until it ends; one whose open comes after the
        // removal finds it gone and reads the blob (readStaged).
        reader?.end();
        // Ended by a stop: the verified NAR is kept for the next process (a rename; a read
        // under way keeps its descriptor), which reads it back instead of fetching it.
        // Its bytes stay counted in the bound, handed over with it.
        const pending = this.#opts.pending;
        let kept = false;
        if (staging !== undefined && pending && entry.error?.code === 'ERR_ABORTED' && signal.aborted) {
          kept = await pending.keep(name, ni.narHash.digest, ni.narSize, staging, release);
          if (kept) this.#opts.logger.info('kept a verified NAR for the next start', { path: name, bytes: ni.narSize, committedFiles: progress.files });
        }
        await removeTemp(temp);
        // An engine that was told of the staging file (stagedLocation) lets go of it now.
        if (reader) for (const l of this.#stagingGone) l(reader.path);
        if (!kept) release();
      }
    })();
    this.#committing.set(name, entry);
    this.#commits.add(entry.done);
    void entry.done.then(() => this.#commits.delete(entry.done));
  }

  /**
   * Splits the staging file into blobs (see #commitLater). `signal` is looked at between
   * batches (before each batch or big file; without PendingNars but the first, which a NAR
   * verified before the stop then always gets: a path of one batch is committed whole,
   * tree and all) and ends the copy of a big file (but the first, likewise). `progress.files` counts the files handed to the
   * BlobStore so far.
   */
  async #commitStaged(index: NarIndex, staging: string, signal: AbortSignal, progress: { files: number }): Promise<{ deduped: number; dedupedBytes: number }> {
    const out = { deduped: 0, dedupedBytes: 0 };
    const add = (r: { deduped: number; dedupedBytes: number }) => { out.deduped += r.deduped; out.dedupedBytes += r.dedupedBytes; };
    signal.throwIfAborted();
    const fh = await open(staging, 'r').catch((err: unknown) => { throw cacheError(err, `cannot open ${staging}`); });
    try {
      let batch: Array<{ sha: Buffer; bytes: Buffer }> = [];
      let bytes = 0;
      // With PendingNars a stop keeps the whole NAR: no batch is owed to it.
      const anyTime = this.#opts.pending !== undefined;
      const between = () => { if (progress.files > 0 || anyTime) signal.throwIfAborted(); };
      const flush = async () => {
        if (batch.length === 0) return;
        const b = batch;
        batch = [];
        bytes = 0;
        add(await this.#blobs.commitBuffers(b));
        progress.files += b.length;
      };
      for (const f of index.files) {
        // Yield before a batch is read back, not only before it is written: reading 512
        // files back is main-thread work too.
        if (batch.length === 0 || f.size > COMMIT_COPY_BYTES) {
          await this.#yieldToForeground(signal);
          between();
        }
        if (f.size > COMMIT_COPY_BYTES) {
          if (this.#blobs.completePath(f.sha256, f.size) !== undefined) {
            // Held already: not copied out only to be deduped (small files are offered, and counted, by commitBuffers).
            this.#blobs.touch(f.sha256);
            out.deduped++;
            out.dedupedBytes += f.size;
            progress.files++;
            continue;
          }
          const tempPath = this.#blobs.tempPath('f');
          try {
            await pipeline(createReadStream(staging, { start: f.narOffset, end: f.narOffset + f.size - 1 }), createWriteStream(tempPath, { flags: 'wx', mode: 0o644 }),
              progress.files > 0 || anyTime ? { signal } : {});
          } catch (err) {
            await rm(tempPath, { force: true }).catch(() => {});
            between();
            throw cacheError(err, `cannot copy a file out of ${staging}`);
          }
          add(await this.#blobs.commitFiles([{ sha: f.sha256, size: f.size, tempPath }]));
          progress.files++;
          continue;
        }
        batch.push({ sha: f.sha256, bytes: await readAt(fh, staging, f.narOffset, f.size) });
        bytes += f.size;
        if (batch.length >= COMMIT_BATCH_FILES || bytes >= COMMIT_BATCH_BYTES) await flush();
      }
      await flush();
    } finally {
      await fh.close().catch(() => {});
    }
    return out;
  }

  /**
   * Bytes [offset, offset+length) of a verified file whose commit is under way (its NAR
   * matched NarHash; it is still in the staging file). Undefined when no such file is held
   * (not staged, or committed meanwhile: the caller reads the blob then; the commit under
   * way is waited for first, so a committed file is in the BlobStore by then).
   */
  async readStaged(sha: Buffer, size: number, offset: number, length: number): Promise<Buffer | undefined> {
    const s = this.#staged.get(sha.toString('hex'))?.find((x) => x.size === size);
    if (!s || offset < 0 || offset + length > size) return undefined;
    try {
      return await s.reader.read(s.offset + offset, length);
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOENT') throw isNarfsError(err) ? err : cacheError(err, `cannot read ${s.reader.path}`);
      // Removed by its commit before this read opened it: wait for the commit to end.
      await s.entry.done;
      return undefined;
    }
  }

  /**
   * Where a verified file whose commit is under way lies: `offset` in the staging file
   * `path` of `size` bytes (the NAR). For a FUSE engine that serves reads from a local
   * file without asking again (LazyStore.contentFile): the staging file is removed when
   * the commit ends, and `onStagingGone` then tells its path, so the engine lets go of it
   * (its descriptor keeps right bytes until then: they never change once verified).
   */
  stagedLocation(sha: Buffer, size: number): { path: string; offset: number; size: number } | undefined {
    if (this.#staged.size === 0 && this.#streamed.size === 0) return undefined;
    const hex = sha.toString('hex');
    const s = this.#staged.get(hex)?.find((x) => x.size === size) ?? this.#streamed.get(hex)?.find((x) => x.size === size);
    return s ? { path: s.reader.path, offset: s.offset, size: s.reader.size } : undefined;
  }

  /**
   * Bytes [offset, offset+length) of the file of SHA-256 `sha` and `size` bytes as soon as
   * a NAR being fetched with `announce` has staged a file of that hash, waiting for the
   * NAR of `name` to stage it if that NAR is being fetched so. Undefined when no such
   * fetch holds or brings it (none under way, or it ended without staging such a file:
   * the caller waits for `verified` then).
   *
   * The bytes are not NarHash-checked yet: they are the bytes whose SHA-256 the verify
   * worker computed and then wrote, so they are right for a caller whose `sha` comes from
   * a signed index (lazy-store.ts, a walked path) or any verified tree, as a blob is.
   * This is how a reader of a walked path follows its NAR as it streams instead of waiting
   * for all of it (the bench's headers path: 198 MB, ~6 s on a shared 1 Gbit/s link).
   */
  async readStreamed(name: string, sha: Buffer, size: number, offset: number, length: number, signal: AbortSignal): Promise<Buffer | undefined> {
    if (offset < 0 || offset + length > size) return undefined;
    const hex = sha.toString('hex');
    for (;;) {
      let f = this.#streamed.get(hex)?.find((x) => x.size === size && !x.reader.gone);
      if (!f) {
        const a = this.#announcers.get(name);
        if (!a) return undefined;
        f = await a.wait(hex, size, signal);
        if (!f) return undefined;
      }
      try {
        return await f.reader.read(f.offset + offset, length);
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'ENOENT') throw isNarfsError(err) ? err : cacheError(err, `cannot read ${f.reader.path}`);
        // Its attempt failed and removed the job directory before it took its entries
        // out: wait for the next attempt's copy (or the fetch's end) instead.
        f.reader.gone = true;
      }
    }
  }

  /** Readers waiting for a file of `name`'s NAR to be staged (readStreamed), for status and tests. */
  streamWaiters(name: string): number {
    return this.#announcers.get(name)?.waiting ?? 0;
  }

  /**
   * Files of NARs being fetched with `announce`, by hex SHA-256, from the moment the verify
   * worker wrote them until the fetch ends (then a verified NAR's files are in #staged).
   */
  readonly #streamed = new Map<string, StreamedFile[]>();
  /** The fetches with `announce` under way, by store path. */
  readonly #announcers = new Map<string, Announcer>();

  /**
   * Takes the `files` messages of `job` (one attempt of a fetch with `announce`, staging
   * into `path`) into #streamed until the attempt ends.
   */
  #announcing(a: Announcer, path: string, narSize: number, job: VerifyJob): AnnouncedAttempt {
    const attempt = a.attempt(new StagingReader(path, narSize));
    job.onFiles = (recs) => attempt.add(recs);
    attempt.onEnd = (ok) => {
      if (!ok && attempt.told > 0) for (const l of this.#stagingGone) l(path);
    };
    return attempt;
  }

  /** Calls `listener` with the path of each staging file once it is removed. */
  onStagingGone(listener: (path: string) => void): void {
    this.#stagingGone.push(listener);
  }

  readonly #stagingGone: Array<(path: string) => void> = [];

  /**
   * Resolves once the background commit of `name`'s files (if any is under way) has ended;
   * rejects with its failure (ERR_CACHE_*, ERR_ABORTED by a stop) when it did not commit
   * every file.
   */
  async committed(name: string): Promise<void> {
    const entry = this.#committing.get(name);
    if (!entry) return;
    await entry.done;
    if (entry.error) throw entry.error;
  }

  /** Resolves once every background commit under way has ended. */
  async flush(): Promise<void> {
    while (this.#commits.size > 0) await Promise.all([...this.#commits]);
  }

  /**
   * Ends the background commits (before the BlobStore closes: unmount, SIGTERM): first
   * lets them run to their end for up to `commitFinishMs` (0 with PendingNars, else
   * COMMIT_FINISH_MS), yielding to nothing any more, then stops them after the batch each
   * is writing; resolves once they have ended and their staging files are kept
   * (PendingNars) or gone. What was committed stays; the rest is read back from the kept
   * NAR, or without PendingNars fetched again, when read. A NAR verified after this is not
   * committed either. Commits wait for reads to pause, so a path used until the unmount
   * was often not committed yet: stopping them at once, dropping the staging file, lost it
   * (the next mount fetched its NAR again).
   */
  async stop(): Promise<void> {
    this.#finishing = true;
    this.#wakeYields();
    const finishMs = this.#opts.commitFinishMs ?? (this.#opts.pending ? 0 : COMMIT_FINISH_MS);
    if (finishMs > 0 && this.#commits.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.flush(), new Promise<void>((resolve) => { timer = setTimeout(resolve, finishMs); })]);
      clearTimeout(timer);
    }
    this.#stopCommits.abort(new NarfsError('ERR_ABORTED', 'the cache is closing'));
    await this.flush();
  }

  /** Set by stop(): the commits under way no longer yield. */
  #finishing = false;

  async #fetch(name: string, info: PathInfo, announce: Announcer | undefined): Promise<Materialised> {
    const ni = info.narInfo;
    checkNarUrl(name, ni.url);
    const started = Date.now();
    this.fetches++;
    const shutdown = this.#opts.signal;
    // 1. The decompressor (may wait for a pool slot) and 2. the temp directory, before any socket.
    // Every method Nix writes is undone on the verify worker (IN_WORKER): nothing to take
    // here but a PassThrough (an unknown method fails here, before any socket) and, for
    // xz and bzip2, the slot in the process-wide pool of the child the worker will run:
    // taken before the socket as before, given back when the job has ended.
    const inWorker = IN_WORKER.has(ni.compression);
    const slot = inWorker && Object.hasOwn(DECOMPRESSOR_COMMANDS, ni.compression) ? await defaultDecompressorPool.acquire(shutdown) : undefined;
    try {
      return await this.#fetchWith(name, info, inWorker, started, undefined, announce);
    } finally {
      slot?.();
    }
  }

  /**
   * `local`: the NAR (uncompressed) is this file, not the datalake's (#resume): it is moved
   * into the job directory as its staging file and checked there in place (the verify
   * worker hashes, parses and indexes it and writes nothing), so it is neither fetched
   * nor copied; a failure removes it with the job directory.
   */
  async #fetchWith(name: string, info: PathInfo, inWorker: boolean, started: number, local?: PendingNar, announce?: Announcer): Promise<Materialised> {
    const ni = info.narInfo;
    const shutdown = this.#opts.signal;
    const decompressor = await createDecompressor(inWorker ? 'none' : ni.compression, shutdown ? { signal: shutdown } : {});
    const temp = this.#blobs.tempPath(name);
    // The staging file (NarSize bytes: the NAR, uncompressed) counts
    // against the cache's bound from now until the job directory is gone (a kept NAR
    // already counts: its reservation is taken over).
    const release = local !== undefined ? local.adopt() : this.#blobs.reserve(ni.narSize);
    try {
      await mkdir(temp);
    } catch (err) {
      decompressor.destroy();
      release();
      throw cacheError(err, `cannot create ${temp}`);
    }
    if (local !== undefined) {
      try {
        await rename(local.path, stagingFileIn(temp));
      } catch (err) {
        decompressor.destroy();
        await removeTemp(temp);
        release();
        throw cacheError(err, `cannot move ${local.path} into ${temp}`);
      }
    }
    // 3. The stream, last; it goes into pipeline() without another await in between.
    let source: Readable | undefined;
    try {
      source = local !== undefined ? createReadStream(stagingFileIn(temp), { highWaterMark: 1 << 20 })
        : await this.#opts.datalakes.getStreamFrom(info.datalake, ni.url, shutdown ? { signal: shutdown } : {});
    } catch (err) {
      decompressor.destroy();
      await removeTemp(temp);
      release();
      throw err;
    }
    if (!source) {
      decompressor.destroy();
      await removeTemp(temp);
      release();
      throw new NarfsError('ERR_NAR_MISSING', `${info.datalake.displayUrl}/${ni.url} is missing (for ${name})`);
    }
    let verifier: VerifyJob;
    try {
      verifier = (this.#opts.verifyPool ?? defaultVerifyPool).open(
        { dir: temp, storePath: storePathFull(ni.storePath), narSize: ni.narSize, chunkSize: this.#opts.chunkSize ?? NAR_TREE_CHUNK_SIZE, chunkHashes: false, inPlace: local !== undefined,
          announce: announce !== undefined && local === undefined },
        local === undefined && inWorker ? ni.compression as WorkerCompression : 'none');
    } catch (err) {
      source.destroy();
      decompressor.destroy();
      await removeTemp(temp);
      release();
      throw toNarfsError(err, 'ERR_INTERNAL');
    }
    const streamed = announce !== undefined && local === undefined ? this.#announcing(announce, stagingFileIn(temp), ni.narSize, verifier) : undefined;
    this.#streaming++;
    let ok = false;
    try {
      const m = await this.#stream(name, info, source, decompressor, verifier, temp, started, release, local !== undefined);
      ok = true;
      return m;
    } finally {
      // Verified: the commit's own entries (#staged) took over; failed: the job directory
      // is gone, and an engine told of its staging file lets go of it.
      streamed?.end(ok);
      if (--this.#streaming === 0) this.#wakeYields();
    }
  }

  /**
   * Resolves once no whole NAR is being fetched, no other foreground work is under way
   * (holdForeground) and no read has come for COMMIT_QUIET_MS,
   * after COMMIT_YIELD_MAX_MS at the latest, or at once when `signal` fires (the commit
   * then stops as usual). Neither a fetch nor a read ever waits for a commit, so this
   * cannot deadlock; the cap keeps a commit going under a steady run of fetches or reads
   * (a closure prefetch, a long build).
   */
  #yieldToForeground(signal: AbortSignal): Promise<void> {
    const quiet = this.#opts.commitQuietMs ?? COMMIT_QUIET_MS;
    const quietFor = () => {
      this.#lookAtActivity();
      return performance.now() - this.#lastRead;
    };
    if ((this.#streaming === 0 && this.#foreground === 0 && quietFor() >= quiet) || signal.aborted || this.#finishing) return Promise.resolve();
    return new Promise((resolve) => {
      let poll: NodeJS.Timeout | undefined;
      // Whichever comes first (the foreground is idle, the cap, the stop) ends it once and
      // leaves nothing behind: a commit yielding under a steady run of fetches adds no entry.
      const done = () => {
        if (!this.#streamingDone.delete(check)) return;
        clearTimeout(cap);
        clearTimeout(poll);
        signal.removeEventListener('abort', done);
        resolve();
      };
      // Called now and by the end of the last fetch streaming.
      const check = () => {
        clearTimeout(poll);
        poll = undefined;
        if (this.#finishing) return done();
        if (this.#streaming > 0 || this.#foreground > 0) return;
        const wait = quiet - quietFor();
        if (wait <= 0) done();
        else poll = setTimeout(check, wait);
      };
      const cap = setTimeout(done, this.#opts.commitYieldMaxMs ?? COMMIT_YIELD_MAX_MS);
      signal.addEventListener('abort', done, { once: true });
      this.#streamingDone.add(check);
      check();
    });
  }

  /**
   * Streams the NAR through the verify worker. `release` lets go of the staging file's
   * bytes in the BlobStore's bound: once the job directory is gone, after a failure here or
   * after the commit.
   */
  async #stream(name: string, info: PathInfo, source: Readable, decompressor: Duplex, verifier: VerifyJob, temp: string, started: number,
    release: () => void, local = false): Promise<Materialised> {
    const ni = info.narInfo;
    // The first error each stage raised, to give the failure the code of its origin.
    let first: { stage: Stage; err: unknown } | undefined;
    const note = (stage: Stage) => (err: unknown) => { first ??= { stage, err }; };
    source.on('error', note('source'));
    decompressor.on('error', note('decompress'));
    verifier.on('error', (err: unknown) => { first ??= { stage: verifier.failedStage ?? 'verify', err }; });
    const stalled = new AbortController();
    const stallMs = this.#opts.stallMs ?? 60_000;
    const watchdog = setInterval(() => {
      if (Date.now() - verifier.lastProgress > stallMs) {
        stalled.abort(new NarfsError('ERR_DATALAKE_TIMEOUT', `${name}: no NAR bytes arrived for ${stallMs} ms`));
      }
    }, Math.min(1000, stallMs));
    const shutdown = this.#opts.signal;
    const signal = shutdown ? AbortSignal.any([shutdown, stalled.signal]) : stalled.signal;
    try {
      await pipeline(source, decompressor, verifier, { signal });
      const { digest: got, index: encoded, staging } = await verifier.result();
      if (!got.equals(ni.narHash.digest)) {
        throw new NarfsError('ERR_NAR_HASH_MISMATCH',
          `${name}: NAR hashes to sha256:${formatHash({ algo: 'sha256', digest: got }, 'nix32', false)}, narinfo says ${formatHash(ni.narHash, 'nix32')}`);
      }
      clearInterval(watchdog);
      const index = parseNarIndex(encoded);
      const m: Materialised = { index, listing: index.root, source: 'nar' };
      // The NAR matched: its files may be read from the staging file at once (readStaged)
      // while they are committed in the background.
      this.#commitLater(name, info, m, index.files.length > 0 ? staging : undefined, encoded, temp, Date.now() - started, release);
      return m;
    } catch (err) {
      clearInterval(watchdog);
      source.destroy();
      decompressor.destroy();
      verifier.destroy();
      // The worker must be done with the temp file before it goes.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([verifier.settled(), new Promise<void>((resolve) => { timer = setTimeout(resolve, SETTLE_MS); })]);
      clearTimeout(timer);
      await removeTemp(temp);
      release();
      if (shutdown?.aborted) throw new NarfsError('ERR_ABORTED', `fetch of ${name} stopped by shutdown`, { cause: err });
      const failure = stalled.signal.aborted ? stalled.signal.reason as NarfsError : classify(name, first ?? { stage: undefined, err });
      // The datalake's own fault (the stream died or went silent) counts against its health.
      if (!local && (stalled.signal.aborted || first === undefined || first.stage === 'source')) {
        this.#opts.datalakes.reportFailure(info.datalake, failure);
      }
      throw failure;
    }
  }
}

interface CommitEntry {
  info: PathInfo;
  m: Materialised;
  /** Settles (never rejects) once the commit ended and the staging file is gone. */
  done: Promise<void>;
  /** Why not every file was committed, once `done`. */
  error?: NarfsError;
}

/** A verified file in a staging file, until its NAR's commit ends. */
interface StagedFile {
  reader: StagingReader;
  offset: number;
  size: number;
  entry: CommitEntry;
}

/**
 * The reads of one staging file share one read-only descriptor: opened by the first read,
 * closed once the commit has ended (`end`) and no read holds it, so no read ever has it
 * closed under it. One open and one close per read cost two trips through libuv's thread
 * pool each, which the commit's own reads share.
 */
class StagingReader {
  readonly path: string;
  /** Its size: the NAR's (NarSize). */
  readonly size: number;
  /** Found removed (ENOENT) by a read of a streamed file: not looked at again (readStreamed). */
  gone = false;
  #fh: Promise<FileHandle> | undefined;
  #users = 0;
  #ended = false;

  constructor(path: string, size: number) {
    this.path = path;
    this.size = size;
  }

  async read(position: number, length: number): Promise<Buffer> {
    this.#users++;
    try {
      // A failed open is not kept: the next read tries again (a removed file fails again).
      const fh = await (this.#fh ??= open(this.path, 'r').catch((err: unknown) => {
        this.#fh = undefined;
        throw err;
      }));
      return await readAt(fh, this.path, position, length);
    } finally {
      if (--this.#users === 0 && this.#ended) this.#close();
    }
  }

  /** No new read will come (the commit ended): close once the last one ends. */
  end(): void {
    this.#ended = true;
    if (this.#users === 0) this.#close();
  }

  #close(): void {
    const fh = this.#fh;
    this.#fh = undefined;
    void fh?.then((h) => h.close()).catch(() => {});
  }
}

/** A file of a NAR still being fetched, in its staging file (Materialiser.readStreamed). */
interface StreamedFile {
  reader: StagingReader;
  offset: number;
  size: number;
}

/**
 * A fetch with `announce` (Materialiser.verified): the readers waiting for a file of its
 * NAR, across its attempts. Each attempt enters the files it staged into the
 * Materialiser's shared map (by hex SHA-256) and takes them out when it ends; `end` (the
 * fetch settled) answers every waiter left with undefined, so no wait outlives the fetch.
 */
class Announcer {
  readonly all: Map<string, StreamedFile[]>;
  readonly #waiters = new Map<string, Array<{ size: number; resolve: (f: StreamedFile | undefined) => void }>>();
  #ended = false;

  constructor(all: Map<string, StreamedFile[]>) {
    this.all = all;
  }

  /** The next attempt, staging into `reader`'s file. */
  attempt(reader: StagingReader): AnnouncedAttempt {
    return new AnnouncedAttempt(this, reader);
  }

  /** Readers waiting for a file (one whose signal fired is no longer counted). */
  get waiting(): number {
    let n = 0;
    for (const list of this.#waiters.values()) n += list.length;
    return n;
  }

  /**
   * The file of `hex` and `size` once an attempt stages it; undefined if the fetch ends
   * first. When `signal` fires, the waiter leaves (the promise then rejects as raceSignal
   * does): a reader that gave up (an interrupted read, its deadline) leaves nothing behind
   * on a fetch that may run for long (a datalake sending a trickle of bytes).
   */
  wait(hex: string, size: number, signal: AbortSignal): Promise<StreamedFile | undefined> {
    if (signal.aborted) return Promise.reject(abortReason(signal));
    if (this.#ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const w = {
        size,
        resolve: (f: StreamedFile | undefined) => {
          signal.removeEventListener('abort', leave);
          resolve(f);
        },
      };
      const leave = () => {
        const list = this.#waiters.get(hex);
        const at = list?.indexOf(w) ?? -1;
        if (list && at >= 0) {
          list.splice(at, 1);
          if (list.length === 0) this.#waiters.delete(hex);
        }
        reject(abortReason(signal));
      };
      signal.addEventListener('abort', leave, { once: true });
      const list = this.#waiters.get(hex);
      if (list) list.push(w);
      else this.#waiters.set(hex, [w]);
    });
  }

  /** Answers the waiters of `hex` whose size is `f`'s. */
  staged(hex: string, f: StreamedFile): void {
    const waiting = this.#waiters.get(hex);
    if (!waiting) return;
    const rest = waiting.filter((w) => w.size !== f.size);
    for (const w of waiting) if (w.size === f.size) w.resolve(f);
    if (rest.length === 0) this.#waiters.delete(hex);
    else this.#waiters.set(hex, rest);
  }

  /** The fetch settled; once. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const list of this.#waiters.values()) for (const w of list) w.resolve(undefined);
    this.#waiters.clear();
  }
}

/** One attempt of an announced fetch: the files its verify job told (VerifyJob.onFiles). */
class AnnouncedAttempt {
  readonly #fetch: Announcer;
  readonly #reader: StagingReader;
  readonly #hexes: string[] = [];
  #ended = false;
  /** Files told so far. */
  told = 0;
  onEnd: ((ok: boolean) => void) | undefined;

  constructor(fetch: Announcer, reader: StagingReader) {
    this.#fetch = fetch;
    this.#reader = reader;
  }

  add(recs: Buffer): void {
    if (this.#ended) return;
    const all = this.#fetch.all;
    for (let at = 0; at + FILE_RECORD_BYTES <= recs.length; at += FILE_RECORD_BYTES) {
      const f: StreamedFile = { reader: this.#reader, offset: recs.readDoubleLE(at), size: recs.readDoubleLE(at + 8) };
      const hex = recs.toString('hex', at + 16, at + FILE_RECORD_BYTES);
      const list = all.get(hex);
      if (list) list.push(f);
      else all.set(hex, [f]);
      this.#hexes.push(hex);
      this.told++;
      this.#fetch.staged(hex, f);
    }
  }

  /** The attempt ended (`ok`: its NAR verified, its commit took the files over); once. */
  end(ok: boolean): void {
    if (this.#ended) return;
    this.#ended = true;
    const all = this.#fetch.all;
    for (const hex of this.#hexes) {
      const list = all.get(hex);
      if (!list) continue;
      const rest = list.filter((x) => x.reader !== this.#reader);
      if (rest.length === 0) all.delete(hex);
      else all.set(hex, rest);
    }
    this.#reader.end();
    this.onEnd?.(ok);
  }
}

/** Whether two narinfos name the same NAR (hash and size). */
function sameNarInfo(a: PathInfo, b: PathInfo): boolean {
  return a.narInfo.narSize === b.narInfo.narSize && a.narInfo.narHash.digest.equals(b.narInfo.narHash.digest);
}

/** `length` bytes at `position` of an open file; a short file is ERR_CACHE_CORRUPT. */
async function readAt(fh: FileHandle, path: string, position: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(out, done, length - done, position + done);
    if (bytesRead === 0) throw new NarfsError('ERR_CACHE_CORRUPT', `${path} ended early`);
    done += bytesRead;
  }
  return out;
}

async function removeTemp(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true }).catch(() => {});
}

/**
 * The NAR URL of a narinfo must name a file inside the datalake that served it. A URL that
 * does not (absolute, another scheme, a `..` segment) is the narinfo's fault: ERR_NAR_URL,
 * EIO at the edge, like every other fault of the data.
 */
function checkNarUrl(name: string, url: string): void {
  try {
    checkRelPath(url);
  } catch (err) {
    throw new NarfsError('ERR_NAR_URL', `${name}: NAR URL ${JSON.stringify(url)} is not a path inside its datalake`, { cause: err });
  }
}

/** The code of a failed fetch, from the stage that failed first (see the header). */
function classify(name: string, f: { stage: Stage | undefined; err: unknown }): NarfsError {
  const { stage, err } = f;
  if (isNarfsError(err)) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  switch (stage) {
    case 'sink':
      return cacheError(err, `cannot write the NAR of ${name} to the cache`);
    case 'source':
      return new NarfsError(code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNRESET' ? 'ERR_DATALAKE_TRUNCATED' : 'ERR_DATALAKE_UNAVAILABLE',
        `${name}: the NAR stream failed: ${msg}`, { cause: err });
    case 'decompress':
      return new NarfsError('ERR_DECOMPRESS', `${name}: ${msg}`, { cause: err });
    default:
      if (code === 'ERR_STREAM_PREMATURE_CLOSE') {
        return new NarfsError('ERR_DATALAKE_TRUNCATED', `${name}: the NAR stream closed early`, { cause: err });
      }
      return toNarfsError(err, 'ERR_INTERNAL');
  }
}
