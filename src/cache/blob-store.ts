/**
 * BlobStore: verified file contents on disk, content-addressed by SHA-256, whole or
 * chunk by chunk, within a size bound.
 *
 * Layout under `<cache-dir>`:
 *   blobs/<aa>/<sha256hex>   complete contents of a file whose SHA-256 is <sha256hex> (0444)
 *   partial/<sha256hex>      a sparse file of the full size, filled chunk by chunk
 *   tmp/                     files being written (NAR unpack, the blob-write worker); emptied at open
 *   meta.sqlite              one `blob` row per file in blobs/ or partial/ (size, complete,
 *                            chunk size, bytes held, last use), one `chunk` row per chunk
 *                            present in a partial file (with the chunk's SHA-256)
 *
 * Invariants:
 * - Only verified bytes enter: a chunk is stored after its caller checked its hash, a
 *   whole file after the NAR it came from matched NarHash. A partial file whose chunks
 *   are all present is re-hashed whole before it is renamed into blobs/, so a name in
 *   blobs/ is always the SHA-256 of its contents.
 * - Crash safety: a blob gets its row only once it lies complete under its name (written
 *   in tmp/ or partial/ and renamed, or by `commitBuffers` created at its name, the row
 *   going in after the write); a chunk row is written only after its bytes were fdatasynced.
 *   Whole files from an unpacked NAR are not fsynced one by one (too slow for NARs of
 *   thousands of files): what a power loss may leave torn is caught because no blob
 *   written by an earlier process is served before it was re-hashed (`verifyBlob`). Small
 *   verified files held in memory are committed in batches by BLOB_WRITERS worker threads
 *   (`commitBuffers`: created at their blob names, tmp/ and rename only over a stale
 *   file; then all rows in one transaction). Metadata and files are reconciled at
 *   open after an unclean stop (the `clean` mark is cleared at open, set by close()):
 *   blob files without a row are adopted (least recently used), partial files without a
 *   row and rows without their file are removed. So after a kill -9 nothing claims bytes
 *   that are not there, and nothing on disk escapes the bound.
 * - Metadata is bounded: rows exist only for files on disk, so the bound on bytes bounds
 *   the rows too (a chunk row per chunk held).
 * - The bound (`maxBytes`, in content bytes) is enforced as data is added: room is made
 *   first, by evicting whole least-recently-used blobs or partial files. Bytes of a file in
 *   tmp/ that will be split into blobs (a NAR's staging file) count too while it exists
 *   (`reserve`), so a NAR being committed holds staging file + blobs within the bound. A pinned file
 *   (open, or being read or written) is never evicted; when everything evictable is gone
 *   the store goes over the bound (logged once) rather than fail a read.
 * - Reads re-check what they cannot trust: the size of the file on the very descriptor
 *   read (a truncated file is ERR_CACHE_CORRUPT and dropped); a blob written by an earlier
 *   process is re-hashed once per process before it is trusted (`verifyBlob`, tracked by
 *   a generation number in its row, not in memory); `scrub` re-hashes everything.
 * - On a fresh cache (no complete row at open, none adopted since) every complete row is
 *   remembered in memory, so "not complete" and "not verified" are answered without SQLite;
 *   so is every partial row this process created, with its chunks, so "which chunks are
 *   held" of it is too, and, while no partial row of an earlier process exists either,
 *   "no row at all".
 * - All SQLite calls are small and synchronous (better-sqlite3, WAL, synchronous=NORMAL):
 *   one row or one chunk at a time, on the main thread. Touches (LRU) are coalesced in
 *   memory and written in one transaction before any eviction decision and on close.
 * - Failures of the disk are ERR_CACHE_FULL / ERR_CACHE_IO (cache-error.ts); damaged
 *   contents are ERR_CACHE_CORRUPT.
 */
import { createReadStream, unlinkSync } from 'node:fs';
import { chmod, mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { NarfsError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { cacheError } from './cache-error.js';
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../nixdb/run-in-worker.js';
import type { BlobWriteJob } from './blob-write-worker.js';

export interface BlobStoreOptions {
  /** Bound on the content bytes held (complete blobs + chunks of partial files). Default: none. */
  maxBytes?: number;
  logger?: Logger;
  /**
   * SHA-256 of a whole file off the JS thread (the FUSE engine's hashFile, on libuv's
   * thread pool); rejects with `code` ENOENT when the file is gone. Default: a read
   * stream hashed on the JS thread.
   */
  hashFile?: FileHasher;
  /**
   * Asks the filesystem to spread the subdirectories of blobs/ over its allocation groups
   * (the FUSE engine's markTopDir, ext2/3/4 `chattr +T`); returns 0 or the errno of the
   * refusal. Default: none. Why: the blobs land in 256 subdirectories named by hash, and
   * ext4 puts a new subdirectory, and then every file created in it, in the parent's
   * block group. A journal-less ext4 passes over inodes freed in the last minute (five
   * while their inode table block is unwritten) when it allocates one (fs/ext4/ialloc.c
   * find_inode_bit, recently_deleted), scanning them again for every new file: a cache
   * refilled soon after an eviction or a wipe spent 2-3 s of system time per 23k files in
   * that scan (bench scenario 11). Spread out, each group holds ~1/256 of the files.
   */
  markTopDir?: (dir: string) => number;
}

export type FileHasher = (path: string) => Promise<{ digest: Buffer; size: number }>;

/**
 * What `pin` returns: lets go of the pin (once). `ready`, when present, settles once the
 * pinned complete blob of an earlier process has been re-hashed (true: verified; false:
 * damaged or gone, dropped). A FUSE engine may wait for it before it hands the file to
 * the kernel.
 */
export type Unpin = (() => void) & { ready?: Promise<boolean> };

export interface BlobStoreStats {
  /** Content bytes held (complete and partial). */
  bytes: number;
  /** Complete blobs. */
  blobs: number;
  /** Partial files. */
  partials: number;
  maxBytes: number;
  /** Evictions since open, and the bytes they freed. */
  evictions: number;
  evictedBytes: number;
  /** Files offered whole that were already held (content dedupe), and their bytes. */
  dedupeHits: number;
  dedupeBytes: number;
  /** Blob-write jobs whose files were copied into a buffer a writer thread gave back (commitBuffers). */
  writeBuffersReused: number;
  /** True while pinned files keep the store over its bound. */
  overBound: boolean;
}

export interface ScrubResult {
  checked: number;
  ok: number;
  bytes: number;
  dropped: Array<{ sha: string; kind: 'blob' | 'partial'; code: string; message: string }>;
}

/** A whole verified file to commit (NAR unpack): its temp file must be complete and closed. */
export interface TempFile {
  sha: Buffer;
  size: number;
  tempPath: string;
}

interface BlobRow {
  sha: Buffer;
  size: number;
  complete: number;
  chunk_size: number;
  held: number;
  last_use: number;
  verified_gen: number;
}

const HEX = /^[0-9a-f]{64}$/;
const SCHEMA = 1;

export function shaHex(sha: Buffer): string {
  if (sha.length !== 32) throw new NarfsError('ERR_INVALID_ARGUMENT', `a SHA-256 is 32 bytes, not ${sha.length}`);
  return sha.toString('hex');
}

function chunksOf(size: number, chunkSize: number): number {
  return size === 0 ? 0 : Math.ceil(size / chunkSize);
}

function chunkLength(size: number, chunkSize: number, index: number): number {
  return Math.min(chunkSize, size - index * chunkSize);
}

export class BlobStore {
  readonly #removing = new Map<string, Promise<void>>();
  #trimQueued = false;
  #guard: ((hex: string) => boolean) | undefined;
  readonly dir: string;
  readonly #blobDir: string;
  readonly #partialDir: string;
  readonly #tmpDir: string;
  readonly #db: Database.Database;
  readonly #log: Logger;
  readonly #gen: number;
  #maxBytes: number;
  /** Content bytes held by rows plus bytes reserved by writes in flight. */
  #total = 0;
  #clock: number;
  readonly #touched = new Map<string, number>();
  #touchTimer: NodeJS.Timeout | undefined;
  readonly #pins = new Map<string, number>();
  readonly #creating = new Map<string, Promise<void>>();
  readonly #promoting = new Map<string, Promise<void>>();
  readonly #removedListeners: Array<(sha: string) => void> = [];
  /** Re-hashes in flight (verifyBlob), by hex SHA-256: one per blob however many ask. */
  readonly #verifying = new Map<string, Promise<boolean>>();
  readonly #hashFile: FileHasher | undefined;
  #overLogged = false;
  #closed = false;
  readonly #counts = { evictions: 0, evictedBytes: 0, dedupeHits: 0, dedupeBytes: 0 };
  readonly #q: ReturnType<typeof prepare>;

  private constructor(dir: string, db: Database.Database, gen: number, options: BlobStoreOptions) {
    this.dir = dir;
    this.#blobDir = join(dir, 'blobs');
    this.#partialDir = join(dir, 'partial');
    this.#tmpDir = join(dir, 'tmp');
    this.#db = db;
    this.#gen = gen;
    this.#log = options.logger ?? silentLogger;
    this.#maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    this.#hashFile = options.hashFile;
    this.#q = prepare(db);
    this.#total = this.#q.sumHeld.pluck().get() as number;
    this.#clock = (this.#q.maxUse.pluck().get() as number) + 1;
    this.#unknownComplete = db.prepare('SELECT 1 FROM blob WHERE complete = 1 LIMIT 1').get() !== undefined;
    this.#unknownPartial = db.prepare('SELECT 1 FROM blob WHERE complete = 0 LIMIT 1').get() !== undefined;
  }

  /**
   * Opens (creating) the store under `dir`. Empties tmp/, drops a NAR cache of an earlier
   * narfs (`nar/`, with one log line), and reconciles files and rows after an unclean stop.
   */
  static async open(dir: string, options: BlobStoreOptions = {}): Promise<BlobStore> {
    const log = options.logger ?? silentLogger;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      for (const d of ['blobs', 'partial']) await mkdir(join(dir, d), { recursive: true });
      const spread = options.markTopDir?.(join(dir, 'blobs'));
      // Only a hint for the allocator: a filesystem without it (tmpfs, XFS, btrfs) answers
      // ENOTTY or EOPNOTSUPP and the store works the same.
      if (spread) log.debug('the blob directory keeps its subdirectories beside it (no top-directory hint)', { dir: join(dir, 'blobs'), errno: spread });
      await rm(join(dir, 'tmp'), { recursive: true, force: true });
      await mkdir(join(dir, 'tmp'), { recursive: true });
      const old = join(dir, 'nar');
      if (await stat(old).then(() => true, () => false)) {
        log.info('dropping the NAR cache of an earlier narfs version (the cache now holds files, not NARs)', { dir: old });
        await rm(old, { recursive: true, force: true });
      }
    } catch (err) {
      throw cacheError(err, `cannot prepare the cache directory ${dir}`);
    }
    const { db, fresh } = openDatabase(join(dir, 'meta.sqlite'), log);
    const state = (key: string): number | undefined =>
      (db.prepare('SELECT value FROM state WHERE key = ?').pluck().get(key) as number | undefined);
    const clean = state('clean') === 1 && !fresh;
    const gen = (state('gen') ?? 0) + 1;
    db.prepare('INSERT OR REPLACE INTO state(key, value) VALUES (?, ?), (?, ?)').run('clean', 0, 'gen', gen);
    db.pragma('wal_checkpoint(TRUNCATE)'); // the "unclean" mark reaches the disk before any write
    const store = new BlobStore(dir, db, gen, options);
    if (!clean) await store.reconcile();
    return store;
  }

  // --- queries --------------------------------------------------------------------------

  /** Where the complete blob of `sha` lives (whether or not it is there). */
  blobPath(sha: Buffer): string {
    return this.#blobPathOf(shaHex(sha));
  }

  /** blobs/<aa>/<hex>: #blobDir is normalised (join), so a concatenation is what join gives, without its cost per call. */
  #blobPathOf(hex: string): string {
    return `${this.#blobDir}/${hex.slice(0, 2)}/${hex}`;
  }

  #partialPath(hex: string): string {
    return join(this.#partialDir, hex);
  }

  #row(sha: Buffer, hex = shaHex(sha)): BlobRow | undefined {
    // Every row is mirrored in memory (a fresh cache): one in neither map does not exist.
    if (!this.#unknownComplete && !this.#unknownPartial && !this.#known.has(hex) && !this.#partials.has(hex)) return undefined;
    if (this.#absent.size > 0 && this.#absent.has(hex)) return undefined;
    const row = this.#q.get.get(sha) as BlobRow | undefined;
    if (!row) {
      if (this.#absent.size >= 500_000) this.#absent.clear(); // a bound on memory; SQLite still answers
      this.#absent.add(hex);
    }
    return row;
  }

  /**
   * Blobs known to have no row (hex): "held?" of a file the cache lacks, asked again and
   * again while a path is fetched (every isHeld of a fetch plan, every staged file), is
   * answered without SQLite (scenario 11: ~0.6 s of the JS thread). Kept exact: a hex goes
   * in only when SQLite found no row, and leaves before any row of it is inserted (#insert).
   */
  readonly #absent = new Set<string>();

  /** Inserts (or replaces) the row of `sha`: the only way a row comes to exist. */
  #insert(sha: Buffer, size: number, complete: number, chunkSize: number, held: number, lastUse: number, gen: number, hex = shaHex(sha)): void {
    this.#absent.delete(hex);
    this.#partials.delete(hex);
    this.#q.insert.run(sha, size, complete, chunkSize, held, lastUse, gen);
  }

  /**
   * Partial files whose row this process created (hex -> size, chunk size, 1 per chunk
   * held): "which chunks are held?" of a file fetched chunk by chunk, asked for each chunk
   * of every fetch plan (LazyStore's isHeld), is answered without SQLite (scenario 11:
   * ~0.12 s of the JS thread in a row and a chunk query per question), and putChunk's own
   * questions (the row, is this chunk in, how many are) too. Kept exact: an
   * entry goes in with the row (#createPartial, no chunk yet), a chunk with its chunk row
   * (putChunk; `held` counts them), and the entry leaves with any other insert of the sha (#insert), the
   * completion (#promote) or the row's removal (#forgetRow). Other partial rows (an
   * earlier process's) are asked of SQLite.
   */
  readonly #partials = new Map<string, { size: number; chunkSize: number; chunks: Uint8Array; held: number }>();
  /**
   * Whether a partial row may exist that #partials does not hold: one of an earlier process
   * (at open), or one created past the map's bound. While this and #unknownComplete are
   * false (a fresh cache) a sha in neither #known nor #partials has no row, and #row says
   * so without SQLite: the first question about each file of a closure read whole (~23k
   * in scenario 11, each a SQLite miss of ~5 µs before #absent learnt it) costs no query.
   */
  #unknownPartial = true;

  /**
   * Complete blobs this process wrote or verified (hex -> size): the hot queries (is it
   * held? trusted?) answered without SQLite. Kept exact: an entry goes in only with its
   * row's insert or verification in this generation, and leaves with the row (#forgetRow).
   */
  readonly #known = new Map<string, number>();
  #remember(hex: string, size: number): void {
    if (this.#known.size >= 500_000) {
      this.#known.clear(); // a bound on memory; SQLite still answers
      this.#unknownComplete = true;
    }
    this.#known.set(hex, size);
  }
  /**
   * Whether a complete row may exist that #known does not hold: one of an earlier process
   * (at open, or adopted by a reconcile), or after #known was cleared. While false (a
   * fresh cache) every complete row is in #known, so "not complete" and "not verified"
   * are answered from memory, without a SQLite query per lookup (a full read of a closure
   * asks for each of its ~23k files several times before it is held).
   */
  #unknownComplete = true;

  /** The path of the complete blob of `sha` if the store holds it with this size. */
  completePath(sha: Buffer, size: number): string | undefined {
    const hex = shaHex(sha);
    if (this.#known.get(hex) === size) return this.#blobPathOf(hex);
    if (!this.#unknownComplete) return undefined;
    const row = this.#row(sha, hex);
    return row && row.complete === 1 && row.size === size ? this.#blobPathOf(hex) : undefined;
  }

  /**
   * completePath of a blob that isVerified, in one look-up (the FUSE engine asks it for
   * every file it may serve from the cache).
   */
  verifiedPath(sha: Buffer, size: number): string | undefined {
    const hex = shaHex(sha);
    const known = this.#known.get(hex);
    if (known !== undefined) return known === size ? this.#blobPathOf(hex) : undefined;
    if (!this.#unknownComplete) return undefined;
    const row = this.#row(sha, hex);
    return row && row.complete === 1 && row.size === size && row.verified_gen === this.#gen ? this.#blobPathOf(hex) : undefined;
  }

  /** Whether the complete blob was verified (hashed, or written) by this process. */
  isVerified(sha: Buffer): boolean {
    const hex = shaHex(sha);
    if (this.#known.has(hex)) return true;
    if (!this.#unknownComplete) return false;
    const row = this.#row(sha, hex);
    return row !== undefined && row.complete === 1 && row.verified_gen === this.#gen;
  }

  /** Which of chunks [first, last] of the file are held (all of them when complete). */
  haveChunks(sha: Buffer, size: number, chunkSize: number, first: number, last: number): boolean[] {
    const out = new Array<boolean>(Math.max(0, last - first + 1)).fill(false);
    const hex = shaHex(sha);
    if (this.#known.get(hex) === size) return out.fill(true);
    const partial = this.#partials.get(hex);
    if (partial) {
      if (partial.size !== size || partial.chunkSize !== chunkSize) return out;
      for (let k = Math.max(0, first); k <= last && k < partial.chunks.length; k++) out[k - first] = partial.chunks[k] === 1;
      return out;
    }
    const row = this.#row(sha, hex);
    if (!row || row.size !== size) return out;
    if (row.complete === 1) return out.fill(true);
    if (row.chunk_size !== chunkSize) return out;
    for (const idx of this.#q.chunksIn.pluck().iterate(sha, first, last) as IterableIterator<number>) out[idx - first] = true;
    return out;
  }

  stats(): BlobStoreStats {
    const c = this.#q.counts.get() as { blobs: number | null; partials: number | null };
    return {
      bytes: this.#total, blobs: c.blobs ?? 0, partials: c.partials ?? 0, maxBytes: this.#maxBytes,
      ...this.#counts, writeBuffersReused: this.#writerPool.reduce((n, w) => n + (w?.reused ?? 0), 0), overBound: this.#total > this.#maxBytes,
    };
  }

  get maxBytes(): number {
    return this.#maxBytes;
  }

  /** Changes the bound; evicts down to it now. */
  async setMaxBytes(maxBytes: number): Promise<void> {
    this.#maxBytes = maxBytes;
    this.#makeRoom(0);
  }

  /** Calls `listener` (hex SHA-256) whenever a blob or partial file leaves the store (evicted, dropped). */
  watchRemoved(listener: (sha: string) => void): void {
    this.#removedListeners.push(listener);
  }

  // --- pins and LRU ---------------------------------------------------------------------

  /**
   * Keeps `sha` from eviction until the returned function is called (once). A complete
   * blob this process has not verified yet (written by an earlier one) is re-hashed at
   * once, off the JS thread when a hasher was given: a pin means the blob is about to be
   * read (an open file), and its reads join that check (verifyBlob). `ready` settles when
   * it is done.
   */
  pin(sha: Buffer): Unpin {
    const hex = shaHex(sha);
    const unpin: Unpin = this.#pin(sha, hex);
    if (this.#known.has(hex)) return unpin; // complete and verified in this process
    const row = this.#row(sha, hex);
    if (row && row.complete === 1 && row.verified_gen !== this.#gen && !this.#closed) {
      const ready = this.verifyBlob(sha);
      ready.catch(() => {}); // a reader that needs the bytes gets the error from its own verifyBlob
      unpin.ready = ready.catch(() => false);
    }
    return unpin;
  }

  #pin(sha: Buffer, hex = shaHex(sha)): () => void {
    this.#pins.set(hex, (this.#pins.get(hex) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#pins.get(hex) ?? 1) - 1;
      if (n <= 0) {
        this.#pins.delete(hex);
        // Over the bound because this file was held (open or being read): trim now that it is not.
        if (this.#total > this.#maxBytes && !this.#closed && !this.#trimQueued) {
          this.#trimQueued = true;
          setImmediate(() => {
            this.#trimQueued = false;
            if (!this.#closed && this.#total > this.#maxBytes) this.#makeRoom(0, true);
          });
        }
      } else this.#pins.set(hex, n);
    };
  }

  /**
   * Asks `guard` before evicting an unpinned file: false keeps it (a FUSE engine that
   * serves it to an open file without JS knowing). The guard must answer synchronously and
   * may let go of the file on its side when it answers true.
   */
  setEvictionGuard(guard: (hex: string) => boolean): void {
    this.#guard = guard;
  }

  isPinned(sha: Buffer): boolean {
    return this.#pins.has(shaHex(sha));
  }

  /** Marks `sha` as just used (LRU). Coalesced; written before the next eviction. */
  touch(sha: Buffer): void {
    this.#touched.set(shaHex(sha), this.#clock++);
    if (this.#touched.size >= 4096) this.#flushTouches();
    else if (!this.#touchTimer && !this.#closed) {
      this.#touchTimer = setTimeout(() => this.#flushTouches(), 2000);
      this.#touchTimer.unref();
    }
  }

  #flushTouches(): void {
    if (this.#touchTimer) clearTimeout(this.#touchTimer);
    this.#touchTimer = undefined;
    if (this.#touched.size === 0) return;
    const entries = [...this.#touched];
    this.#touched.clear();
    this.#db.transaction(() => {
      for (const [hex, use] of entries) this.#q.touch.run(use, Buffer.from(hex, 'hex'));
    })();
  }

  // --- reads ----------------------------------------------------------------------------

  /**
   * `length` bytes at `offset` of the file `sha` (complete, or partial with the chunks
   * covering the range present: the caller made sure). The file's size is checked on the
   * descriptor read; a file that is missing or of the wrong size is dropped
   * (ERR_CACHE_CORRUPT), so the caller fetches it again.
   */
  async readRange(sha: Buffer, size: number, offset: number, length: number): Promise<Buffer> {
    const row = this.#row(sha);
    const hex = shaHex(sha);
    if (!row || row.size !== size) throw new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} is not in the cache`);
    if (offset < 0 || length < 0 || offset + length > size) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `range ${offset}+${length} is outside blob ${hex} of ${size} bytes`);
    }
    const path = row.complete === 1 ? this.blobPath(sha) : this.#partialPath(hex);
    const unpin = this.#pin(sha);
    let fh: FileHandle | undefined;
    try {
      try {
        fh = await open(path, 'r');
      } catch (err) {
        // A partial file renamed into blobs/ meanwhile (its last chunk came, and it hashed
        // to its name: #promote): read the blob.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && row.complete !== 1) fh = await open(this.blobPath(sha), 'r').catch(() => undefined);
        if (!fh) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            await this.drop(sha);
            throw new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} has disappeared from the cache; dropped`, { cause: err });
          }
          throw cacheError(err, `cannot open ${path}`);
        }
      }
      const st = await fh.stat();
      if (st.size !== size) {
        await this.drop(sha);
        throw new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} is ${st.size} bytes on disk, it was stored at ${size}; dropped`);
      }
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      if (done < length) {
        await this.drop(sha);
        throw new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} came up short; dropped`);
      }
      this.touch(sha);
      return buf;
    } catch (err) {
      if (err instanceof NarfsError) throw err;
      throw cacheError(err, `cannot read ${path}`);
    } finally {
      await fh?.close().catch(() => {});
      unpin();
    }
  }

  /**
   * Re-hashes the complete blob `sha` unless this process already did (or wrote it). A
   * blob whose contents do not hash to its name is dropped: false. Absent: false.
   */
  async verifyBlob(sha: Buffer, signal?: AbortSignal): Promise<boolean> {
    const row = this.#row(sha);
    if (!row || row.complete !== 1) return false;
    if (row.verified_gen === this.#gen) return true;
    // One re-hash per blob, however many readers (and opens) ask at once; a caller that
    // gives up (signal) stops waiting, the check goes on for the others.
    const hex = shaHex(sha);
    let shared = this.#verifying.get(hex);
    if (!shared) {
      shared = this.#verifyNow(row).finally(() => this.#verifying.delete(hex));
      this.#verifying.set(hex, shared);
    }
    if (!signal) return shared;
    if (signal.aborted) throw new NarfsError('ERR_ABORTED', `verifying blob ${hex} was cancelled`);
    let onAbort: (() => void) | undefined;
    try {
      return await Promise.race([shared, new Promise<never>((_, reject) => {
        onAbort = () => reject(new NarfsError('ERR_ABORTED', `verifying blob ${hex} was cancelled`));
        signal.addEventListener('abort', onAbort, { once: true });
      })]);
    } finally {
      if (onAbort) signal.removeEventListener('abort', onAbort);
    }
  }

  async #verifyNow(row: BlobRow): Promise<boolean> {
    const sha = row.sha;
    const unpin = this.#pin(sha);
    try {
      const problem = await this.#checkBlob(row);
      if (problem) {
        this.#log.error('cached file is damaged; dropped, it will be fetched again', { sha: shaHex(sha), err: problem });
        await this.drop(sha);
        return false;
      }
      if (!this.#closed) {
        this.#q.verified.run(this.#gen, sha);
        this.#remember(shaHex(sha), row.size);
      }
      return true;
    } finally {
      unpin();
    }
  }

  /** Undefined if the blob hashes to its name with its recorded size, else the problem. */
  async #checkBlob(row: BlobRow, signal?: AbortSignal): Promise<NarfsError | undefined> {
    const hex = shaHex(row.sha);
    const got = await this.#hash(this.blobPath(row.sha), signal);
    if (got === undefined) return new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} has disappeared`);
    if (got.size !== row.size) return new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} is ${got.size} bytes, it was stored at ${row.size}`);
    if (!got.digest.equals(row.sha)) {
      return new NarfsError('ERR_CACHE_CORRUPT', `blob ${hex} hashes to ${got.digest.toString('hex')}`);
    }
    return undefined;
  }

  /** hashFile (undefined: the file is gone), off the JS thread when a hasher was given. */
  async #hash(path: string, signal?: AbortSignal): Promise<{ digest: Buffer; size: number } | undefined> {
    if (!this.#hashFile) return hashFile(path, signal);
    try {
      return await this.#hashFile(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw cacheError(err, `cannot read ${path}`);
    }
  }

  // --- writes ---------------------------------------------------------------------------

  /** A fresh path in tmp/ for a file that will be committed with `commitFiles`. */
  tempPath(label = 'f'): string {
    return join(this.#tmpDir, `${label}.${process.pid}.${randomBytes(6).toString('hex')}`);
  }

  get tmpDir(): string {
    return this.#tmpDir;
  }

  /**
   * Counts `bytes` of a file in tmp/ that is not a blob (a NAR's staging file, written
   * while the NAR is verified and split into blobs afterwards: materialiser.ts) against
   * the bound while it exists: room is made for them now, as for a blob being added (LRU
   * eviction; over the bound, logged, when everything evictable is pinned), and they count
   * in `stats().bytes` until the returned function is called (once, when the file is gone).
   */
  reserve(bytes: number): () => void {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new NarfsError('ERR_INVALID_ARGUMENT', `cannot reserve ${bytes} bytes`);
    this.#makeRoom(bytes);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#total -= bytes;
    };
  }

  /**
   * Stores chunk `index` of the file `sha` (`bytes` ALREADY verified by the caller against
   * `chunkHash`, recorded for scrub; computed when not given). True once the chunk is held
   * (or the whole file is); false when it cannot be kept: a partial file of the same
   * contents with another chunk size is being used, or it was dropped meanwhile.
   * When the last chunk arrives the file is re-hashed whole and becomes a complete blob.
   */
  async putChunk(sha: Buffer, size: number, chunkSize: number, index: number, bytes: Buffer, chunkHash?: Buffer): Promise<boolean> {
    const hex = shaHex(sha);
    const count = chunksOf(size, chunkSize);
    if (!Number.isSafeInteger(index) || index < 0 || index >= count || bytes.length !== chunkLength(size, chunkSize, index)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `chunk ${index} of blob ${hex} (${size} bytes, chunks of ${chunkSize}) cannot be ${bytes.length} bytes`);
    }
    const unpin = this.#pin(sha, hex);
    try {
      let row = this.#shapeOf(sha, hex);
      if (row && (row.size !== size || (row.complete === 0 && row.chunk_size !== chunkSize))) {
        if (this.#pinnedByOthers(hex)) return false;
        await this.drop(sha);
        row = undefined;
      }
      if (row?.complete === 1) {
        this.touch(sha);
        return true;
      }
      if (!row) {
        await this.#createPartial(sha, hex, size, chunkSize);
        row = this.#shapeOf(sha, hex);
        if (!row || row.complete === 1) return row !== undefined;
      }
      if (this.#hasChunk(sha, hex, index)) {
        this.touch(sha);
        return true;
      }
      const path = this.#partialPath(hex);
      this.#makeRoom(bytes.length);
      let fh: FileHandle | undefined;
      try {
        fh = await open(path, 'r+');
        await fh.write(bytes, 0, bytes.length, index * chunkSize);
        await fh.datasync();
      } catch (err) {
        this.#total -= bytes.length;
        throw cacheError(err, `cannot write a chunk of ${path}`);
      } finally {
        await fh?.close().catch(() => {});
      }
      const now = this.#shapeOf(sha, hex);
      if (!now || now.complete === 1 || now.chunk_size !== chunkSize || this.#hasChunk(sha, hex, index)) {
        // Dropped, completed or filled by someone else while we wrote: our bytes are not counted.
        this.#total -= bytes.length;
        return now !== undefined;
      }
      const hash = chunkHash ?? createHash('sha256').update(bytes).digest();
      this.#db.transaction(() => {
        this.#q.putChunk.run(sha, index, hash);
        this.#q.addHeld.run(bytes.length, this.#clock++, sha);
      })();
      const partial = this.#partials.get(hex);
      if (partial && partial.chunks[index] === 0) {
        partial.chunks[index] = 1;
        partial.held++;
      }
      const held = partial ? partial.held : (this.#q.chunkCount.pluck().get(sha) as number);
      if (held === count) await this.#promote(sha, hex);
      return true;
    } finally {
      unpin();
    }
  }

  /** Size, completeness and chunk size of the row of `sha`: from #partials when it holds it, else SQLite. */
  #shapeOf(sha: Buffer, hex: string): Pick<BlobRow, 'size' | 'complete' | 'chunk_size'> | undefined {
    const p = this.#partials.get(hex);
    return p ? { size: p.size, complete: 0, chunk_size: p.chunkSize } : this.#row(sha, hex);
  }

  /** Whether chunk `index` of `sha` has its row: from #partials when it holds the file, else SQLite. */
  #hasChunk(sha: Buffer, hex: string, index: number): boolean {
    const p = this.#partials.get(hex);
    return p ? p.chunks[index] === 1 : this.#q.hasChunk.get(sha, index) !== undefined;
  }

  #pinnedByOthers(hex: string): boolean {
    return (this.#pins.get(hex) ?? 0) > 1;
  }

  async #createPartial(sha: Buffer, hex: string, size: number, chunkSize: number): Promise<void> {
    let p = this.#creating.get(hex);
    if (!p) {
      p = (async () => {
        const path = this.#partialPath(hex);
        await this.#settled(hex);
        try {
          const fh = await open(path, 'w', 0o644);
          try {
            await fh.truncate(size);
          } finally {
            await fh.close();
          }
        } catch (err) {
          await rm(path, { force: true }).catch(() => {});
          throw cacheError(err, `cannot create ${path}`);
        }
        this.#insert(sha, size, 0, chunkSize, 0, this.#clock++, 0, hex);
        if (this.#partials.size < 100_000) this.#partials.set(hex, { size, chunkSize, chunks: new Uint8Array(chunksOf(size, chunkSize)), held: 0 });
        else this.#unknownPartial = true; // a bound on memory; SQLite still answers
      })().finally(() => this.#creating.delete(hex));
      this.#creating.set(hex, p);
    }
    await p;
  }

  /** All chunks are in: re-hash the whole file, then rename it into blobs/. */
  async #promote(sha: Buffer, hex: string): Promise<void> {
    let p = this.#promoting.get(hex);
    if (!p) {
      p = (async () => {
        const row = this.#row(sha);
        if (!row || row.complete === 1) return;
        const from = this.#partialPath(hex);
        const got = await this.#hash(from);
        if (!got || got.size !== row.size || !got.digest.equals(sha)) {
          const err = new NarfsError('ERR_CACHE_CORRUPT', `the chunks of ${hex} put together hash to ${got?.digest.toString('hex') ?? 'nothing'}; dropped`);
          this.#log.error('a file assembled from verified chunks does not hash to its name; dropped', { sha: hex, err });
          await this.drop(sha);
          return;
        }
        const to = this.blobPath(sha);
        await this.#settled(hex);
        try {
          await chmod(from, 0o444);
          await mkdir(join(this.#blobDir, hex.slice(0, 2)), { recursive: true });
          await rename(from, to);
          await syncDir(join(this.#blobDir, hex.slice(0, 2)));
        } catch (err) {
          throw cacheError(err, `cannot move ${from} into the blob store`);
        }
        this.#db.transaction(() => {
          this.#q.deleteChunks.run(sha);
          this.#q.complete.run(row.size, this.#gen, sha);
          this.#remember(hex, row.size);
        })();
        this.#partials.delete(hex);
        this.#total += row.size - row.held;
      })().finally(() => this.#promoting.delete(hex));
      this.#promoting.set(hex, p);
    }
    await p;
  }

  /**
   * Commits whole verified files written in tmp/ (complete, closed by their writer): each is renamed into blobs/ unless the store already holds it (dedupe: the
   * temp is removed and the hit counted). A partial file of the same contents is replaced.
   * Every temp file is gone afterwards, whatever happens.
   */
  async commitFiles(files: readonly TempFile[]): Promise<{ added: number; deduped: number; dedupedBytes: number }> {
    const out = { added: 0, deduped: 0, dedupedBytes: 0 };
    const dirs = new Set<string>();
    const pending: Array<{ sha: Buffer; size: number }> = [];
    const pendingHex = new Set<string>();
    const unpins: Array<() => void> = [];
    let i = 0;
    try {
      for (; i < files.length; i++) {
        const f = files[i]!;
        const hex = shaHex(f.sha);
        const row = this.#row(f.sha, hex);
        if ((row?.complete === 1 && row.size === f.size) || pendingHex.has(hex)) {
          await rm(f.tempPath, { force: true });
          out.deduped++;
          out.dedupedBytes += f.size;
          this.#counts.dedupeHits++;
          this.#counts.dedupeBytes += f.size;
          if (row) this.touch(f.sha);
          continue;
        }
        if (row) await this.drop(f.sha); // a partial (or a row of another size): the whole file replaces it
        unpins.push(this.#pin(f.sha));
        this.#makeRoom(f.size);
        const sub = join(this.#blobDir, hex.slice(0, 2));
        await this.#settled(hex);
        try {
          await chmod(f.tempPath, 0o444);
          if (!dirs.has(sub)) await mkdir(sub, { recursive: true });
          await rename(f.tempPath, join(sub, hex));
        } catch (err) {
          this.#total -= f.size;
          throw cacheError(err, `cannot move ${f.tempPath} into the blob store`);
        }
        dirs.add(sub);
        pending.push({ sha: f.sha, size: f.size });
        pendingHex.add(hex);
      }
      // No directory fsync per commit (up to 256 per NAR): a rename a power loss undoes leaves
      // a row without its file, which the reconcile at the next open removes.
    } catch (err) {
      for (let j = i; j < files.length; j++) await rm(files[j]!.tempPath, { force: true }).catch(() => {});
      throw err;
    } finally {
      // What was renamed is complete and verified: it gets its row even if a later file failed.
      this.#db.transaction(() => {
        for (const p of pending) {
          this.#insert(p.sha, p.size, 1, 0, p.size, this.#clock++, this.#gen);
          this.#remember(shaHex(p.sha), p.size);
        }
      })();
      out.added = pending.length;
      for (const u of unpins) u();
    }
    return out;
  }

  /**
   * Commits whole verified files held in memory (chunks of small files a ranged read or a
   * decoded frame brought, each checked against its signed hash by the caller): each is
   * created at its blob name by a blob-write worker (synchronous calls off the JS thread,
   * no fsync; blob-write-worker.ts), then every row goes in with one transaction. Their
   * bytes are copied into one buffer per worker, transferred. Files the
   * store already holds are deduped; a partial file of the same contents is replaced.
   * A crash mid-batch leaves blobs without rows, maybe torn (adopted at the next open, and
   * re-hashed before they are served, like every blob of an earlier process; an empty one
   * is removed) and temp files (tmp/ is emptied at open): never a row for bytes that are
   * not there.
   */
  commitBuffers(files: ReadonlyArray<{ sha: Buffer; bytes: Buffer }>): Promise<{ added: number; deduped: number; dedupedBytes: number }> {
    const p = this.#commitBuffers(files);
    const tracked = p.then(() => {}, () => {});
    this.#commits.add(tracked);
    void tracked.finally(() => this.#commits.delete(tracked));
    return p;
  }

  readonly #commits = new Set<Promise<void>>();

  async #commitBuffers(files: ReadonlyArray<{ sha: Buffer; bytes: Buffer }>): Promise<{ added: number; deduped: number; dedupedBytes: number }> {
    const out = { added: 0, deduped: 0, dedupedBytes: 0 };
    if (this.#closed) throw new NarfsError('ERR_CACHE_IO', 'the blob store is closed');
    const jobs: Array<{ sha: Buffer; size: number; hex: string }> = [];
    const seen = new Set<string>();
    const unpins: Array<() => void> = [];
    /** The bytes of each hex (the last file of a hex, as they are all the same contents). */
    const bySha = new Map<string, Buffer>();
    try {
      for (const f of files) {
        const hex = shaHex(f.sha);
        bySha.set(hex, f.bytes);
        const size = f.bytes.length;
        const row = this.#row(f.sha, hex);
        if ((row?.complete === 1 && row.size === size) || seen.has(hex)) {
          out.deduped++;
          out.dedupedBytes += size;
          this.#counts.dedupeHits++;
          this.#counts.dedupeBytes += size;
          if (row) this.touch(f.sha);
          continue;
        }
        if (row) await this.drop(f.sha);
        seen.add(hex);
        unpins.push(this.#pin(f.sha));
        this.#makeRoom(size);
        await this.#settled(hex);
        jobs.push({ sha: f.sha, size, hex });
      }
      if (jobs.length === 0) return out;
      // The jobs are dealt out to the writer threads (job i to thread i mod n), which
      // create their files in parallel: creating a file is the cost (~0.3-0.9 ms on the
      // bench VM's disk), and two threads create about twice as many per second there.
      const n = Math.min(BLOB_WRITERS, Math.ceil(jobs.length / 32));
      const shards = Array.from({ length: n }, (_, w) => jobs.filter((_, i) => i % n === w));
      const results = await Promise.all(shards.map((shard, w) => {
        // Every file's bytes are copied into one buffer, transferred to the writer: the
        // views held here stay readable (staged files are served from them until their rows).
        let total = 0;
        for (const j of shard) total += j.size;
        // A buffer the thread gave back, or a new one; never zero-filled: the files below
        // fill [0, total) end to end, and the thread reads nothing else of it.
        const writer = this.#writer(w);
        const buffer = writer.buffer(total);
        const data = new Uint8Array(buffer, 0, total);
        const ats = new Float64Array(shard.length);
        const sizes = new Float64Array(shard.length);
        let at = 0;
        shard.forEach((j, i) => {
          data.set(bySha.get(j.hex)!, at);
          sizes[i] = j.size;
          ats[i] = at;
          at += j.size;
        });
        const wire = { blobDir: this.#blobDir, tmpDir: this.#tmpDir, data: buffer, names: shard.map((j) => j.hex).join(''), at: ats, size: sizes };
        return writer.run(wire);
      }));
      const r = { ok: jobs.map((_, i) => results[i % n]!.ok[Math.floor(i / n)] === true), errors: results.flatMap((x) => x.errors) };
      const done = jobs.filter((_, i) => r.ok[i]);
      // close() waits for this commit before it closes the database.
      this.#db.transaction(() => {
        for (const j of done) {
          this.#insert(j.sha, j.size, 1, 0, j.size, this.#clock++, this.#gen, j.hex);
          this.#remember(j.hex, j.size);
        }
      })();
      out.added = done.length;
      for (let i = 0; i < jobs.length; i++) if (!r.ok[i]) this.#total -= jobs[i]!.size;
      if (r.errors.length) {
        const m = /^(\w+): /.exec(r.errors[0]!);
        throw cacheError(Object.assign(new Error(r.errors[0]), { code: m?.[1] }), `cannot write ${r.errors.length} of ${jobs.length} files into the blob store`);
      }
      return out;
    } finally {
      for (const u of unpins) u();
    }
  }

  readonly #writerPool: BlobWriter[] = [];
  #writer(w: number): BlobWriter {
    this.#writerPool[w] ??= new BlobWriter();
    return this.#writerPool[w]!;
  }

  /** One whole verified file (see commitFiles). True when it was added, false when already held. */
  async putFileFromTemp(sha: Buffer, size: number, tempPath: string): Promise<boolean> {
    return (await this.commitFiles([{ sha, size, tempPath }])).added === 1;
  }

  // --- removal --------------------------------------------------------------------------

  /** Removes `sha` (complete or partial) now, pinned or not: it is damaged, or replaced. */
  async drop(sha: Buffer): Promise<void> {
    const row = this.#row(sha);
    if (!row) return;
    this.#forgetRow(row);
    await this.#removeFiles(shaHex(sha));
  }

  #forgetRow(row: BlobRow): void {
    this.#db.transaction(() => {
      this.#q.deleteChunks.run(row.sha);
      this.#q.delete.run(row.sha);
    })();
    this.#partials.delete(shaHex(row.sha));
    this.#total -= row.held;
    this.#known.delete(shaHex(row.sha));
    this.#touched.delete(shaHex(row.sha));
    for (const l of this.#removedListeners) l(shaHex(row.sha));
  }

  /**
   * Unlinks the files of `hex`. An eviction does it in the background: whoever creates a
   * file of the same contents again first waits for it (#settled), so a late unlink never
   * takes the new file.
   */
  #removeFiles(hex: string): Promise<void> {
    const before = this.#removing.get(hex) ?? Promise.resolve();
    const p = before.then(async () => {
      try {
        await rm(join(this.#blobDir, hex.slice(0, 2), hex), { force: true });
        await rm(this.#partialPath(hex), { force: true });
      } catch (err) {
        throw cacheError(err, `cannot remove blob ${hex}`);
      }
    });
    const tracked = p.catch(() => {}).finally(() => {
      if (this.#removing.get(hex) === tracked) this.#removing.delete(hex);
    });
    this.#removing.set(hex, tracked);
    return p;
  }

  /** Resolves once no unlink of `hex`'s files is pending. */
  async #settled(hex: string): Promise<void> {
    for (let p = this.#removing.get(hex); p; p = this.#removing.get(hex)) await p;
  }

  /**
   * Makes room for `incoming` more bytes within the bound, then counts them as held:
   * evicts whole least-recently-used unpinned files. The decision is synchronous (no
   * other write interleaves); the unlinks follow in the background.
   */
  #makeRoom(incoming: number, trim = false): void {
    this.#total += incoming;
    if (this.#total <= this.#maxBytes) {
      if (!trim) this.#overLogged = false;
      return;
    }
    this.#flushTouches();
    const victims: BlobRow[] = [];
    let excess = this.#total - this.#maxBytes;
    for (const row of this.#q.lru.iterate() as IterableIterator<BlobRow>) {
      if (excess <= 0) break;
      const hex = shaHex(row.sha);
      if (this.#pins.has(hex) || this.#creating.has(hex) || this.#promoting.has(hex)) continue;
      if (this.#guard && !this.#guard(hex)) continue;
      victims.push(row);
      excess -= row.held;
    }
    for (const row of victims) {
      this.#forgetRow(row);
      this.#counts.evictions++;
      this.#counts.evictedBytes += row.held;
      const hex = shaHex(row.sha);
      void this.#removeFiles(hex).catch((err: unknown) => this.#log.warn('cannot remove an evicted file', { sha: hex, err }));
    }
    if (this.#total > this.#maxBytes && !this.#overLogged) {
      this.#overLogged = true;
      this.#log.warn('the cache is over its size bound: every file that could be evicted is open or being read', {
        bytes: this.#total, maxBytes: this.#maxBytes,
      });
    } else if (this.#total <= this.#maxBytes && !trim) {
      this.#overLogged = false;
    }
  }

  /** Evicts unpinned least-recently-used files until at most `maxBytes` are held. */
  async evictTo(maxBytes: number): Promise<{ freed: number; evicted: number }> {
    const before = { bytes: this.#total, n: this.#counts.evictions };
    const bound = this.#maxBytes;
    this.#maxBytes = Math.min(bound, maxBytes);
    try {
      this.#makeRoom(0);
    } finally {
      this.#maxBytes = bound;
    }
    return { freed: before.bytes - this.#total, evicted: this.#counts.evictions - before.n };
  }

  // --- consistency ----------------------------------------------------------------------

  /**
   * Makes rows and files agree: blob files without a row are adopted (as least recently
   * used), anything else without a row is removed, rows without their file (or with one
   * of another size) are removed. Run at open after an unclean stop, and by scrub.
   */
  async reconcile(): Promise<{ adopted: number; removedFiles: number; removedRows: number }> {
    const out = { adopted: 0, removedFiles: 0, removedRows: 0 };
    this.#flushTouches();
    const seen = new Set<string>();
    try {
      for (const sub of await readdir(this.#blobDir)) {
        const subPath = join(this.#blobDir, sub);
        const names = /^[0-9a-f]{2}$/.test(sub) ? await readdir(subPath).catch(() => undefined) : undefined;
        if (names === undefined) {
          await rm(subPath, { recursive: true, force: true });
          out.removedFiles++;
          continue;
        }
        for (const name of names) {
          const path = join(subPath, name);
          const st = await stat(path).catch(() => undefined);
          if (!HEX.test(name) || name.slice(0, 2) !== sub || !st?.isFile()) {
            await rm(path, { recursive: true, force: true });
            out.removedFiles++;
            continue;
          }
          const sha = Buffer.from(name, 'hex');
          if (this.#pins.has(name) || this.#promoting.has(name)) {
            seen.add(name);
            continue;
          }
          const row = this.#row(sha);
          if (st.size === 0 && name !== EMPTY_SHA256_HEX && !row) {
            // Created by the blob-write worker and killed before its one write (files are
            // created at their final name): empty, so not what its name says.
            await rm(path, { force: true });
            out.removedFiles++;
            continue;
          }
          if (row?.complete === 1 && row.size === st.size) {
            seen.add(name);
            continue;
          }
          if (row) this.#forgetRow(row); // a partial row (promotion cut short), or the wrong size
          await rm(this.#partialPath(name), { force: true });
          this.#insert(sha, st.size, 1, 0, st.size, 0, 0);
          this.#unknownComplete = true;
          this.#total += st.size;
          seen.add(name);
          out.adopted++;
        }
      }
      for (const name of await readdir(this.#partialDir)) {
        const path = join(this.#partialDir, name);
        const row = HEX.test(name) ? this.#row(Buffer.from(name, 'hex')) : undefined;
        const st = await stat(path).catch(() => undefined);
        if (row?.complete === 0 && st?.isFile() && st.size === row.size) {
          seen.add(name);
          continue;
        }
        if (row?.complete === 0 && !this.#pins.has(name) && !this.#creating.has(name)) this.#forgetRow(row);
        if (!this.#pins.has(name) && !this.#creating.has(name)) {
          await rm(path, { recursive: true, force: true });
          out.removedFiles++;
        } else {
          seen.add(name);
        }
      }
    } catch (err) {
      throw cacheError(err, `cannot reconcile the blob store in ${this.dir}`);
    }
    const orphans: BlobRow[] = [];
    for (const row of this.#q.all.iterate() as IterableIterator<BlobRow>) {
      const hex = shaHex(row.sha);
      if (!seen.has(hex) && !this.#creating.has(hex)) orphans.push(row);
    }
    for (const row of orphans) this.#forgetRow(row);
    out.removedRows = orphans.length;
    this.#total = (this.#q.sumHeld.pluck().get() as number);
    if (out.adopted + out.removedFiles + out.removedRows > 0) this.#log.info('cache reconciled with its metadata', out);
    return out;
  }

  /**
   * Re-hashes every complete blob against its name and every chunk of a partial file
   * against its recorded hash; drops what does not match (reported, and told to
   * `onDropped`). Streams `concurrency` files at a time.
   */
  async scrub(options: { concurrency?: number; signal?: AbortSignal; onDropped?: (sha: string, err: NarfsError) => void | Promise<void> } = {}): Promise<ScrubResult> {
    await this.reconcile();
    const result: ScrubResult = { checked: 0, ok: 0, bytes: 0, dropped: [] };
    const shas = (this.#q.allShas.pluck().all() as Buffer[]);
    const worker = async () => {
      for (let sha = shas.shift(); sha !== undefined; sha = shas.shift()) {
        if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', 'the cache scrub was cancelled', { cause: options.signal.reason });
        const row = this.#row(sha);
        if (!row) continue; // evicted meanwhile
        const unpin = this.#pin(sha);
        let problem: NarfsError | undefined;
        try {
          problem = row.complete === 1 ? await this.#checkBlob(row, options.signal) : await this.#checkPartial(row);
          if (options.signal?.aborted) continue;
          if (!problem && row.complete === 1) this.#q.verified.run(this.#gen, sha);
        } finally {
          unpin();
        }
        result.checked++;
        if (!problem) {
          result.ok++;
          result.bytes += row.held;
          continue;
        }
        const hex = shaHex(sha);
        result.dropped.push({ sha: hex, kind: row.complete === 1 ? 'blob' : 'partial', code: problem.code, message: problem.message });
        await this.drop(sha);
        await options.onDropped?.(hex, problem);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 2) }, worker));
    if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', 'the cache scrub was cancelled', { cause: options.signal.reason });
    result.dropped.sort((a, b) => (a.sha < b.sha ? -1 : 1));
    return result;
  }

  async #checkPartial(row: BlobRow): Promise<NarfsError | undefined> {
    const hex = shaHex(row.sha);
    const chunks = this.#q.chunksOf.all(row.sha) as Array<{ idx: number; hash: Buffer }>;
    let fh: FileHandle;
    try {
      fh = await open(this.#partialPath(hex), 'r');
    } catch {
      return new NarfsError('ERR_CACHE_CORRUPT', `partial file ${hex} has disappeared`);
    }
    try {
      if ((await fh.stat()).size !== row.size) return new NarfsError('ERR_CACHE_CORRUPT', `partial file ${hex} is not ${row.size} bytes`);
      const buf = Buffer.allocUnsafe(row.chunk_size);
      for (const c of chunks) {
        const len = chunkLength(row.size, row.chunk_size, c.idx);
        const { bytesRead } = await fh.read(buf, 0, len, c.idx * row.chunk_size);
        if (bytesRead !== len || !createHash('sha256').update(buf.subarray(0, len)).digest().equals(c.hash)) {
          return new NarfsError('ERR_CACHE_CORRUPT', `chunk ${c.idx} of partial file ${hex} does not match its hash`);
        }
      }
      return undefined;
    } finally {
      await fh.close().catch(() => {});
    }
  }

  /** Writes pending touches and marks the store cleanly closed (no reconcile at next open). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#creating.values(), ...this.#promoting.values()]);
    await Promise.allSettled([...this.#commits]);
    // The unlinks of evicted files that were still under way: a closed store leaves nothing behind.
    await Promise.allSettled([...this.#removing.values()]);
    await Promise.all(this.#writerPool.map((w) => w.close()));
    this.#flushTouches();
    this.#db.prepare('INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)').run('clean', 1);
    this.#db.close();
  }
}

const WRITER_ENTRY = new URL('./blob-write-worker.js', import.meta.url);

/** SHA-256 of no bytes: the one blob that is rightly empty. */
const EMPTY_SHA256_HEX = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** Blob-write worker threads a commit's files are dealt out to (commitBuffers). */
export const BLOB_WRITERS = 2;

/** Spare job buffers a BlobWriter keeps: a writer has at most two jobs at once (the lazy store's two drain loops). */
const WRITE_BUFFER_SPARES = 2;
/** A new job buffer is this much larger than its first job (rounded up to 1 MiB), so jobs of about the same size fit it again. */
const WRITE_BUFFER_SLACK = 1.25;
/** Spare buffers are let go once the writer has had no job for this long: an idle daemon does not hold them. */
const WRITE_BUFFER_IDLE_MS = 2_000;

/**
 * A blob-write worker (blob-write-worker.ts): one thread, started on first use, unref'd; its
 * jobs run in order. Each job's buffer comes back with its answer and is kept as a spare for
 * a later job (at most WRITE_BUFFER_SPARES, the largest first; all let go after
 * WRITE_BUFFER_IDLE_MS without a job): its pages are faulted in already, which a fresh
 * buffer's are not (on the bench VM a page fault costs ~10 us per 4 KiB).
 */
class BlobWriter {
  #worker: Worker | undefined;
  #next = 1;
  readonly #waiting = new Map<number, { resolve: (r: { ok: boolean[]; errors: string[] }) => void; reject: (e: Error) => void }>();
  readonly #spare: ArrayBuffer[] = [];
  #idle: NodeJS.Timeout | undefined;
  /** Jobs that got a spare buffer. */
  reused = 0;

  /** A buffer of at least `bytes` for the next job: the smallest spare that fits, else a new one (not zero-filled). */
  buffer(bytes: number): ArrayBuffer {
    let best = -1;
    for (let i = 0; i < this.#spare.length; i++) {
      const len = this.#spare[i]!.byteLength;
      if (len >= bytes && (best < 0 || len < this.#spare[best]!.byteLength)) best = i;
    }
    if (best >= 0) {
      this.reused++;
      return this.#spare.splice(best, 1)[0]!;
    }
    const size = bytes === 0 ? 0 : Math.ceil((bytes * WRITE_BUFFER_SLACK) / 2 ** 20) * 2 ** 20;
    return Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer;
  }

  run(job: Omit<BlobWriteJob, 'id'>): Promise<{ ok: boolean[]; errors: string[] }> {
    const w = this.#start();
    const id = this.#next++;
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = undefined;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      if (this.#waiting.size === 1) w.ref();
      const msg: BlobWriteJob = { id, ...job };
      w.postMessage(msg, [job.data, job.at.buffer as ArrayBuffer, job.size.buffer as ArrayBuffer]);
    });
  }

  #giveBack(data: ArrayBuffer | undefined): void {
    if (data && data.byteLength > 0) {
      this.#spare.push(data);
      if (this.#spare.length > WRITE_BUFFER_SPARES) {
        this.#spare.sort((a, b) => b.byteLength - a.byteLength);
        this.#spare.length = WRITE_BUFFER_SPARES;
      }
    }
    if (this.#waiting.size === 0 && this.#spare.length > 0 && !this.#idle) {
      this.#idle = setTimeout(() => {
        this.#idle = undefined;
        if (this.#waiting.size === 0) this.#spare.length = 0;
      }, WRITE_BUFFER_IDLE_MS);
      this.#idle.unref();
    }
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const w = startWorker(WRITER_ENTRY, undefined, undefined);
    w.unref();
    w.on('message', (m: { id: number; ok: boolean[]; errors: string[]; data?: ArrayBuffer }) => {
      const p = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      if (this.#waiting.size === 0) w.unref();
      this.#giveBack(m.data);
      p?.resolve(m);
    });
    const fail = (e: Error) => {
      this.#worker = undefined;
      const all = [...this.#waiting.values()];
      this.#waiting.clear();
      for (const p of all) p.reject(cacheError(e, 'the blob-write worker failed'));
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`the blob-write worker exited (${code})`)));
    this.#worker = w;
    return w;
  }

  /** Stops the thread; the store's close() first waits for every commit (no job is in flight). */
  async close(): Promise<void> {
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = undefined;
    this.#spare.length = 0;
    const w = this.#worker;
    if (!w) return;
    this.#worker = undefined;
    await w.terminate();
  }
}

function prepare(db: Database.Database) {
  return {
    get: db.prepare('SELECT * FROM blob WHERE sha = ?'),
    insert: db.prepare('INSERT OR REPLACE INTO blob(sha, size, complete, chunk_size, held, last_use, verified_gen) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    delete: db.prepare('DELETE FROM blob WHERE sha = ?'),
    touch: db.prepare('UPDATE blob SET last_use = ? WHERE sha = ?'),
    verified: db.prepare('UPDATE blob SET verified_gen = ? WHERE sha = ?'),
    complete: db.prepare('UPDATE blob SET complete = 1, chunk_size = 0, held = ?, verified_gen = ? WHERE sha = ?'),
    addHeld: db.prepare('UPDATE blob SET held = held + ?, last_use = ? WHERE sha = ?'),
    hasChunk: db.prepare('SELECT 1 FROM chunk WHERE sha = ? AND idx = ?'),
    putChunk: db.prepare('INSERT OR IGNORE INTO chunk(sha, idx, hash) VALUES (?, ?, ?)'),
    chunkCount: db.prepare('SELECT count(*) FROM chunk WHERE sha = ?'),
    chunksIn: db.prepare('SELECT idx FROM chunk WHERE sha = ? AND idx BETWEEN ? AND ?'),
    chunksOf: db.prepare('SELECT idx, hash FROM chunk WHERE sha = ? ORDER BY idx'),
    deleteChunks: db.prepare('DELETE FROM chunk WHERE sha = ?'),
    lru: db.prepare('SELECT * FROM blob ORDER BY last_use, sha'),
    all: db.prepare('SELECT * FROM blob'),
    allShas: db.prepare('SELECT sha FROM blob ORDER BY sha'),
    sumHeld: db.prepare('SELECT coalesce(sum(held), 0) FROM blob'),
    maxUse: db.prepare('SELECT coalesce(max(last_use), 0) FROM blob'),
    counts: db.prepare('SELECT sum(complete = 1) AS blobs, sum(complete = 0) AS partials FROM blob'),
  };
}

/** Opens meta.sqlite; one that cannot be opened or has another schema is started afresh. */
function openDatabase(path: string, log: Logger): { db: Database.Database; fresh: boolean } {
  const tryOpen = (): { db: Database.Database; fresh: boolean } => {
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version !== 0 && version !== SCHEMA) throw new NarfsError('ERR_CACHE_CORRUPT', `meta.sqlite has schema ${version}, not ${SCHEMA}`);
      db.exec(`
        CREATE TABLE IF NOT EXISTS blob (
          sha BLOB PRIMARY KEY, size INTEGER NOT NULL, complete INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
          held INTEGER NOT NULL, last_use INTEGER NOT NULL, verified_gen INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS blob_lru ON blob(last_use);
        CREATE TABLE IF NOT EXISTS chunk (sha BLOB NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (sha, idx)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
      `);
      db.pragma(`user_version = ${SCHEMA}`);
      return { db, fresh: version === 0 };
    } catch (err) {
      db.close();
      throw err;
    }
  };
  try {
    return tryOpen();
  } catch (err) {
    if ((err as { code?: unknown }).code === 'SQLITE_BUSY') throw new NarfsError('ERR_CACHE_LOCKED', `${path} is in use by another process`, { cause: err });
    log.warn('the cache metadata cannot be read; starting it afresh (the files are adopted)', { path, err: err as Error });
    try {
      for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix);
      return tryOpen();
    } catch (err2) {
      throw cacheError(err2, `cannot open ${path}`);
    }
  }
}

function rmSync(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** SHA-256 and length of a file, streaming; undefined when it does not exist. */
async function hashFile(path: string, signal?: AbortSignal): Promise<{ digest: Buffer; size: number } | undefined> {
  const hash = createHash('sha256');
  let size = 0;
  try {
    const stream = createReadStream(path, { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) });
    for await (const chunk of stream) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (signal?.aborted) throw new NarfsError('ERR_ABORTED', `hashing ${path} was cancelled`, { cause: err });
    throw cacheError(err, `cannot read ${path}`);
  }
  return { digest: hash.digest(), size };
}

/** fsync of a directory, so renames into it survive a power cut. */
async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
