/**
 * LazyStore: what the filesystem asks of the store — the node of a store path, and bytes
 * at a NAR offset — answered lazily and verified, one file (or chunk) at a time.
 *
 * Resolution of `<hash>-<name>`: verified narinfo (PathInfoService), then its tree from the
 * first of: the TreeStore (verified earlier), the datalake's signed `<hash>.narfs-index`
 * (nar-index.ts: the whole tree and every chunk's SHA-256, signed by a trusted key and bound
 * to the narinfo's store path, NarHash and NarSize), and otherwise an unverified listing
 * (the metadata cache's, or the datalake's `<hash>.ls`, fetched in parallel with the index)
 * or — when the datalake publishes neither — the NAR itself, fetched and verified.
 *
 * Reads: the file at a NAR offset is found in the verified tree (findFile); its bytes come
 * from the BlobStore (content-addressed by the file's SHA-256, so a file shared by many
 * store paths is fetched and stored once):
 * - a complete blob is read as it is (checked once per process, blob-store.ts);
 * - a file of a signed index whose NAR can be read by range (Compression none, or
 *   seekable zstd frames of exactly this NAR file) is fetched chunk by chunk by the
 *   ChunkFetcher (coalesced, read ahead, several requests in flight), each chunk verified
 *   against its hash before it is stored;
 *   On a miss of a small file, its small not-yet-held siblings (same directory, adjacent in
 *   NAR order) are fetched along within `neighbourBytes` (neighbourhood.ts), in requests
 *   beside the file's own; once a path has been read broadly (`escalateShare` of its file
 *   bytes), the rest of it is fetched in large parallel requests (bulk), as are `narfs
 *   prefetch` and a trace replay's files (coalesced per path). A walk of a path (a copy
 *   reading it in NAR order) whose NAR file is at most `walkWholeBytes` fetches the whole
 *   NAR instead, as below: one verified stream costs far less CPU than the same bytes
 *   chunk by chunk (#goWhole); its readers follow the NAR as it streams, each file served
 *   once its bytes are staged and their SHA-256 is the one the signed index gives
 *   (Materialiser.readStreamed), not after the NarHash of the whole NAR. One-chunk files are staged in memory once verified (reads
 *   are served from there) and committed as whole blobs in background batches
 *   (BlobStore.commitBuffers, whose file creations run off the JS
 *   thread); files that merely came along in another file's seekable frames are held in
 *   memory only (bounded) and committed once read or wanted by a bulk fetch;
 * - anything else (no index, an index that does not verify, xz, a small NAR — fetched
 *   whole in one round trip, `wholeNarMaxBytes`) takes today's path: the whole NAR,
 *   verified against NarHash, unpacked into the BlobStore (Materialiser); its files are
 *   read from the verified staging file of the NAR while their commit goes on (readStaged).
 *
 * Invariants:
 * - No byte is served that was not verified: a blob's name is its SHA-256 and it was
 *   written only after its hash (or the NarHash of its NAR) matched; a chunk only after its
 *   hash in a signed index matched; a file of a walked path's streaming NAR only after its
 *   whole SHA-256 matched the signed index's. A listing from an unsigned `.ls` is shown only until
 *   the verified tree arrives, and must equal it (ERR_LISTING_MISMATCH otherwise).
 * - A blob being read or held open is pinned: eviction never takes it.
 * - A cached file that turns out damaged or gone is dropped by the BlobStore and fetched
 *   again once, instead of failing every read for the life of the cache.
 * - A NAR that turns out absent or wrong (ERR_NAR_MISSING, ERR_NAR_URL, ERR_NAR_HASH_MISMATCH,
 *   ERR_NAR_SIZE_MISMATCH, a bad NAR, a corrupt compressed file) makes the store ask the
 *   datalakes for the narinfo again (PathInfoService.refresh): the NAR URL is not covered
 *   by the signature, so a narinfo served once with a wrong URL must not break the path
 *   for good. If the new narinfo differs, the fetch is tried once more with it.
 * - Indexes, `.ls` files, ranges and NARs come from the datalake whose narinfo was used,
 *   through the DatalakeSet, so a datalake known to be down fails fast and a failure
 *   counts against its health; an index or listing that cannot be had is never an error.
 *   With every datalake down, what the cache holds is still served.
 */
import { isUtf8 } from 'node:buffer';
import { raceSignal } from '../deadline.js';
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ContentReader, RootNodes } from '../fs/store-filesystem.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import type { BlobStore } from '../cache/blob-store.js';
import type { TreeSource, TreeStore } from '../cache/tree-store.js';
import {
  chunkCount, chunkHash, findFile, NAR_INDEX_SUFFIX, parseNarIndex, verifyNarIndex, type IndexedFile, type NarIndex,
} from '../nix/nar-index.js';
import { listingsEqual, parseListingJson, type NarNode } from '../nix/nar-listing.js';
import { CompactDirectory } from '../nix/compact-listing.js';
import { parseStorePathBase, storePathBase } from '../nix/store-path.js';
import { hashEquals } from '../nix/hash.js';
import type { ErrorCode } from '../errors.js';
import type { DatalakeSet } from '../datalake/datalake-set.js';
import type { Datalake } from '../datalake/datalake.js';
import type { PathInfo, PathInfoService } from './path-info-service.js';
import type { Materialised, Materialiser } from './materialiser.js';
import { ChunkFetcher, DEFAULT_GAP_BYTES, type ChunkSource } from './chunk-fetcher.js';
import type { SignaturePolicy } from './signature-policy.js';
import { eachLimited } from '../each-limited.js';
import { directoriesOf, fileIndexOf, frameSpan, isFramed, neighbourRegions, neighbours, noteMiss, noteSubtreeMiss, subtreeFiles } from './neighbourhood.js';
import type { ChunkRun } from './chunk-fetcher.js';
import { isSealed } from './sealed-buffers.js';
import { HeldBytes } from './held-bytes.js';

/** NAR files up to this size are fetched whole even when indexed: one round trip. */
export const DEFAULT_WHOLE_NAR_MAX_BYTES = 256 * 1024;

export interface LazyStoreOptions {
  logger: Logger;
  /** The set PathInfos come from: indexes, `.ls` files and ranges go through its health accounting. */
  datalakes: DatalakeSet;
  /** Verifies published indexes (the narinfo signature policy); without it indexes are not used. */
  indexPolicy?: SignaturePolicy;
  /** Ranged chunk reads of indexed store paths; without it every path is fetched whole. */
  chunks?: ChunkFetcher;
  /** NAR files (FileSize) up to this size are fetched whole. Default DEFAULT_WHOLE_NAR_MAX_BYTES. */
  wholeNarMaxBytes?: number;
  /** Told the first time each file is read in this process (`--record-trace`). Must not throw. */
  onFirstRead?: (name: string, narOffset: number) => void;
  /**
   * Neighbourhood fetch: when a small file of a ranged path misses, its not-yet-held small
   * siblings (same directory) are fetched along, in the same few ranged requests, up to
   * this many bytes (about one round trip's worth of the link). 0 turns it off. Default
   * DEFAULT_NEIGHBOUR_BYTES.
   */
  neighbourBytes?: number;
  /** Largest file that triggers or joins a neighbourhood fetch. Default DEFAULT_NEIGHBOUR_FILE_BYTES. */
  neighbourFileBytes?: number;
  /**
   * Subtree fetch (neighbourhood.ts): once files of several subdirectories of one directory
   * missed, the small files of its whole subtree are fetched in the background, if they add
   * up to at most this many bytes. 0 turns it off. Default DEFAULT_SUBTREE_BYTES.
   */
  subtreeBytes?: number;
  /** Largest gap of unwanted NAR bytes inside one coalesced request (neighbours, traces). Default DEFAULT_GAP_BYTES (chunk-fetcher.ts). */
  gapBytes?: number;
  /**
   * Escalation: once this share of a ranged path's file bytes has been read (and at least
   * ESCALATE_MIN_MISSES reads missed), the rest of the path is fetched in large parallel
   * ranged requests. 0 turns it off. Default DEFAULT_ESCALATE_SHARE.
   */
  escalateShare?: number;
  /** Largest request of a bulk fetch (escalation, `narfs prefetch`, trace replay), NAR bytes. Default 8 MiB. */
  bulkRequestBytes?: number;
  /**
   * Bulk requests of one store path handed to the fetcher at once. They then wait for its
   * request slots (behind readers' requests), with their chunks' flights registered, so a
   * reader that needs a chunk of a queued bulk request joins it and moves it up instead of
   * fetching the chunk a second time. Default DEFAULT_BULK_CONCURRENCY.
   */
  bulkConcurrency?: number;
  /**
   * Escalation of a walk: after this many files read in a row in NAR order (hits
   * included), skipping none that the cache lacked, across at least 3 directories or
   * WALK_MIN_BYTES of files (a reader copying the path, not a program picking files or
   * loading one directory's modules), the rest of the path is fetched in bulk. 0 turns it
   * off. Default DEFAULT_ESCALATE_STREAK.
   */
  escalateStreak?: number;
  /**
   * A walk (escalateStreak) of a path whose NAR file (FileSize) is at most this many bytes
   * fetches the path's whole NAR, verified against NarHash like an unindexed path's, instead
   * of the rest by range: one stream into one staging file, whose files the engine reads in
   * C, costs far less CPU than verifying, staging and committing chunk by chunk (bench
   * scenario 11). Readers of the path wait for the whole NAR, so the bound keeps that wait
   * short (256 MiB: ~2 s at 1 Gbit/s, ~21 s at 100 Mbit/s, under the 30 s op timeout).
   * 0 turns it off (walks fetch the rest by range). Default DEFAULT_WALK_WHOLE_BYTES.
   */
  walkWholeBytes?: number;
  /**
   * When a store path is resolved, the narinfos and signed indexes of its References are
   * fetched in the background, this many at once (0: off). Default DEFAULT_WARM_REFERENCES.
   */
  warmReferences?: number;
  /**
   * Neighbourhood fetch from a directory's Nth missed file on (1: from the first miss; 2:
   * a directory read once costs no neighbours). Default DEFAULT_NEIGHBOUR_AFTER_MISSES.
   */
  neighbourAfterMisses?: number;
  /**
   * Most bytes of fetched small files held in memory before their commit to the cache (a
   * file kept as a view counts the whole buffer it lies in: held-bytes.ts). Default 64 MiB.
   */
  stageMaxBytes?: number;
}

export const DEFAULT_STAGE_MAX_BYTES = 64 << 20;
/** Staged files are committed in batches of at most this many files / bytes, by up to DRAIN_LOOPS loops at once. */
const DRAIN_BATCH_FILES = 2048;
const DRAIN_BATCH_BYTES = 32 << 20;
const DRAIN_LOOPS = 2;
export const DEFAULT_WARM_REFERENCES = 4;
export const DEFAULT_NEIGHBOUR_AFTER_MISSES = 1;

/** Neighbours fetched along with a miss: ~one round trip's worth at 1 Gbit/s and 20 ms. */
export const DEFAULT_NEIGHBOUR_BYTES = 1024 * 1024;
export const DEFAULT_NEIGHBOUR_FILE_BYTES = 128 * 1024;
/** A subtree's small files fetched on the subtree rule: ~70 ms of a 1 Gbit/s link in parallel requests. */
export const DEFAULT_SUBTREE_BYTES = 8 << 20;
/** Largest request of a subtree fetch: many requests in flight, each soon answered. */
const SUBTREE_REQUEST_BYTES = 1 << 20;
export const DEFAULT_ESCALATE_SHARE = 0.25;
export const DEFAULT_ESCALATE_STREAK = 8;
export const DEFAULT_WALK_WHOLE_BYTES = 256 << 20;
/** A background fetch of the rest of a path (bulk by range, or a walked path's whole NAR) is given up after this long. */
const BACKGROUND_FETCH_DEADLINE_MS = 600_000;
/** Directories a streak of reads must cross to count as a walk of the path... */
const WALK_MIN_DIRECTORIES = 3;
/**
 * ...or the bytes of the files it covered (a walk of one directory of large files, e.g.
 * `lib/` of shared objects: each a miss of its own, no neighbours; a program loading one
 * directory's modules in order reads far less).
 */
const WALK_MIN_BYTES = 8 << 20;
export const DEFAULT_BULK_CONCURRENCY = 64;
export const DEFAULT_BULK_REQUEST_BYTES = 8 << 20;
/** Reads of a path that must have missed before it escalates to a bulk fetch. */
const ESCALATE_MIN_MISSES = 4;

/** How broadly a ranged store path has been read in this process (escalation). */
interface Breadth {
  /** Bytes handed to readers, at most each file's size per file. */
  readBytes: number;
  perFile: Map<number, number>;
  misses: number;
  totalBytes: number;
  escalated: boolean;
  /**
   * Position (in idx.files) of the last file read (hit or miss), and how many files in a
   * row were read in NAR order skipping none the cache lacked: a file the cache holds may
   * have been served without asking the store (the native engine serves committed files
   * in C), so skipping a held file does not end the streak.
   */
  lastRead: number;
  streak: number;
  /** Directories (directoriesOf) the streak's files were in, and the bytes of the files it covered. */
  streakDirs: Set<number>;
  streakBytes: number;
}

/** Failures of a NAR that a fresh narinfo may cure (its URL, hash or size was wrong). */
const NAR_FAULTS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_NAR_MISSING', 'ERR_NAR_URL', 'ERR_NAR_HASH_MISMATCH', 'ERR_NAR_SIZE_MISMATCH', 'ERR_DECOMPRESS',
  'ERR_COMPRESSION_UNSUPPORTED', 'ERR_NAR_MAGIC', 'ERR_NAR_PADDING', 'ERR_NAR_TAG', 'ERR_NAR_FILE_TYPE',
  'ERR_NAR_EXECUTABLE', 'ERR_NAR_NAME', 'ERR_NAR_UNSORTED', 'ERR_NAR_SYMLINK', 'ERR_NAR_LIMIT', 'ERR_NAR_DEPTH',
  'ERR_NAR_TRAILING', 'ERR_NAR_TRUNCATED',
]);

/** A verified tree in use: where each file's bytes are, and the narinfo it was checked against. */
interface Tree {
  index: NarIndex;
  source: TreeSource;
  info: PathInfo;
  /** Reads go by range (decided once, when the tree is adopted: see #rangedFor). */
  ranged: boolean;
}

export class LazyStore implements RootNodes, ContentReader {
  readonly #infos: PathInfoService;
  readonly #materialiser: Materialiser;
  readonly #meta: MetadataCache;
  readonly #blobs: BlobStore;
  readonly #treeStore: TreeStore;
  readonly #opts: LazyStoreOptions;
  readonly #known = new Set<string>();
  /** Listing shown to the filesystem per store path, and whether it is verified. */
  readonly #shown = new Map<string, { listing: NarNode; verified: boolean }>();
  /** Verified trees of the store paths the filesystem holds (dropped on `release`). */
  readonly #trees = new Map<string, Tree>();
  /**
   * Store paths whose fetch in flight already outlasted a reader's deadline: later readers
   * fail at once until that fetch ends, instead of each waiting a whole deadline (the
   * kernel retries a failed readahead with a second read, for one).
   */
  readonly #overdue = new Set<string>();
  readonly #dropListeners: Array<(name: string, path: string) => void> = [];
  /** Files read at least once in this process (for `onFirstRead`), keyed `name\0narOffset`. */
  readonly #readOnce = new Set<string>();
  /** Store paths whose datalake published no usable index (asked once while held). */
  readonly #noIndex = new Set<string>();
  /**
   * Verified chunks of multi-chunk files whose write to the blob store (putChunk: a write
   * and an fdatasync, ~5-10 ms) is under way, by `hex:k`: a reader is served from here at
   * once (the first byte of a large file need not wait for the disk); bounded by
   * `#stageMaxBytes` (a writer beyond it waits for its write).
   */
  readonly #writing = new Map<string, { bytes: Buffer; put: Promise<boolean> }>();
  readonly #writingHeld = new HeldBytes();
  /** Verified indexes being written to the TreeStore (awaited by close()). */
  readonly #treePuts = new Set<Promise<void>>();
  /** Early index requests in flight (#earlyIndex), per store path. */
  readonly #early = new Map<string, { datalake: Datalake; bytes: Promise<Buffer | undefined> }>();
  /** Index fetches in flight, per store path. */
  readonly #indexing = new Map<string, Promise<Tree | undefined>>();
  /**
   * Whole one-chunk files verified against the signed index and held in memory until the
   * background commit (#drain) has them in the blob store, by hex SHA-256. Reads are served
   * from here meanwhile; bounded by `#stageMaxBytes` (writers wait beyond it), counting
   * what the kept views hold (held-bytes.ts: a view into a larger body counts the body).
   */
  readonly #staged = new Map<string, { sha: Buffer; bytes: Buffer }>();
  readonly #stagedHeld = new HeldBytes();
  /**
   * Whole one-chunk files verified against the signed index that nobody asked for: they
   * came in the decoded seekable frames of another file's request. Kept in memory only
   * (bounded by `#stageMaxBytes`, oldest dropped), served from here, and staged for the
   * commit once read or wanted by a bulk fetch: a frame of many small files would
   * otherwise cost one file creation each (~0.2-0.9 ms on the bench VM's disk), mostly for
   * files never read (scenario 1: 3,300 of them for 437 read). Dropped at close.
   * Views into their decoded frames, not copies (a sealed buffer nobody writes into after
   * its decode, sealed-buffers.ts): copying each into fresh memory cost the JS thread
   * ~140 ms of scenario 1 (seekable), mostly page faults. The bound therefore counts each
   * frame buffer held once, whole, for as long as one of its files is held.
   */
  readonly #along = new Map<string, { sha: Buffer; bytes: Buffer }>();
  readonly #alongHeld = new HeldBytes();
  /** Staged files in a commit under way (by hex), so that a second drain loop skips them. */
  readonly #committing = new Set<string>();
  #drainLoops = 0;
  /** Settles once no drain loop runs (flushStaged, close). */
  #draining: Promise<void> | undefined;
  #drained: (() => void) | undefined;
  /** Writers waiting for room in the stage (woken after each committed batch). */
  readonly #committed: Array<() => void> = [];
  readonly #stageMaxBytes: number;
  /** Missed files per directory (`name\0dir`): the count and the last one (neighbourAfterMisses). */
  readonly #dirMisses = new Map<string, { n: number; last: number }>();
  /** Store paths whose references were warmed (#warmReferences). */
  readonly #warmed = new Set<string>();
  /** Read breadth per ranged store path (escalation to a bulk fetch). */
  readonly #breadth = new Map<string, Breadth>();
  /**
   * Walked store paths whose whole NAR is being fetched (walkWholeBytes), with their
   * ranged tree: while it is, `#trees` holds the tree marked not ranged (reads wait for
   * the NAR); if that fetch fails, the ranged tree is put back (#unwhole).
   */
  readonly #walkWhole = new Map<string, Tree>();
  /** The whole-NAR fetch of each walked path (#goWhole), until it settles: its readers wait for it. */
  readonly #walkFetches = new Map<string, Promise<Tree>>();
  /** Bytes handed to readers, and bytes of chunks fetched for them (status, bench). */
  readonly counters = { bytesRead: 0, rangedReads: 0, wholeNarReads: 0, neighbourFetches: 0, neighbourFiles: 0, subtreeFetches: 0, subtreeFiles: 0, escalations: 0, walkWholeNars: 0, stagedReads: 0, streamedReads: 0, warmedInfos: 0, warmedIndexes: 0 };

  constructor(infos: PathInfoService, materialiser: Materialiser, meta: MetadataCache, blobs: BlobStore, trees: TreeStore, options: LazyStoreOptions) {
    this.#infos = infos;
    this.#materialiser = materialiser;
    this.#meta = meta;
    this.#blobs = blobs;
    this.#treeStore = trees;
    this.#opts = options;
    this.#stageMaxBytes = options.stageMaxBytes ?? DEFAULT_STAGE_MAX_BYTES;
    blobs.watchRemoved((hex) => {
      const path = blobs.blobPath(Buffer.from(hex, 'hex'));
      for (const l of this.#dropListeners) l('', path);
    });
    materialiser.onStagingGone((path) => {
      for (const l of this.#dropListeners) l('', path);
    });
  }

  /** Loads the names this cache already knows (narinfos and trees), for the root listing. */
  async loadKnown(): Promise<void> {
    for (const n of await this.#meta.knownNames()) this.#known.add(n);
    for (const n of this.#treeStore.names()) this.#known.add(n);
  }

  /** Adds names to the root listing (registered paths). */
  addKnown(names: Iterable<string>): void {
    for (const n of names) this.#known.add(n);
  }

  knownNames(): Iterable<string> {
    return this.#known;
  }

  async resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined> {
    // A lookup is foreground work: background commits wait for it (Materialiser.holdForeground).
    const release = this.#materialiser.holdForeground();
    try {
      return await this.#resolve(name, signal);
    } finally {
      release();
    }
  }

  async #resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined> {
    const sp = parseStorePathBase(name);
    // The index is named by the hash part alone: ask the datalake the narinfo will most
    // likely come from (the first one up) at the same time as the narinfo, which saves a
    // round trip before the first byte of an indexed path.
    const early = this.#shown.has(name) || this.#treeStore.has(name) ? undefined : this.#earlyIndex(name, sp.hashPart, signal);
    const info = await this.#infos.get(sp, signal);
    if (!info) return undefined;
    this.#known.add(name);
    this.#warmReferences(name, info);
    const shown = this.#shown.get(name);
    if (shown) return shown.listing;
    const stored = await this.#storedTree(name, info);
    if (stored) return this.#show(name, stored.index.root, true);
    const hashPart = info.narInfo.storePath.hashPart;
    const seen = await this.#meta.getListing(hashPart);
    // The signed index went out with the narinfo (#earlyIndex): the .ls, only a fallback
    // (the index is awaited first either way), is asked for only when that index is
    // absent, so an indexed path does not fetch its listing too (up to MiBs: the bench's
    // `headers` .ls is 2.2 MiB) and an unindexed datalake, whose 404 comes with the
    // narinfo, costs no round trip more. Without an early index both go out together.
    const earlyBytes = early?.datalake === info.datalake ? early.bytes : undefined;
    const indexed = this.#fetchIndex(name, info, signal, earlyBytes);
    let skipped = false;
    const published = seen !== undefined ? Promise.resolve(undefined)
      : earlyBytes ? earlyBytes.then((b) => {
        if (b === undefined) return this.#fetchListing(info, signal);
        skipped = true;
        return undefined;
      }, () => this.#fetchListing(info, signal))
        : this.#fetchListing(info, signal);
    const tree = await indexed;
    if (tree) {
      published.catch(() => {});
      return this.#show(name, tree.index.root, true);
    }
    if (seen !== undefined) return this.#show(name, parseListingJson(listingFromMeta(seen)), false);
    // An index that was there but did not verify: the listing after all.
    const ls = (await published) ?? (skipped ? await this.#fetchListing(info, signal) : undefined);
    if (ls) {
      await this.#meta.putListing(hashPart, ls.json).catch((err: unknown) => {
        // Remembering it is an optimisation; the listing itself was checked and is served.
        this.#opts.logger.warn('cannot store a listing in the metadata cache; serving it anyway', { path: name, err: toNarfsError(err, 'ERR_CACHE_IO') });
      });
      return this.#show(name, ls.listing, false);
    }
    const m = await this.#materialise(name, signal);
    return this.#show(name, m.index.root, true);
  }

  /**
   * Warms the metadata of `name`'s closure: the narinfos of its References, and their
   * signed indexes, fetched in the background (4 at a time, once per path per process),
   * so that a later lookup of a dependency finds them local instead of paying one or two
   * round trips. Everything is verified as on a lookup; failures are ignored (the lookup
   * that needs the path asks again and gets the error).
   */
  #warmReferences(name: string, info: PathInfo): void {
    const n = this.#opts.warmReferences ?? DEFAULT_WARM_REFERENCES;
    if (n <= 0 || this.#warmed.has(name)) return;
    this.#warmed.add(name);
    const refs = info.narInfo.references.map((sp) => ({ sp, ref: storePathBase(sp) }))
      .filter(({ ref }) => ref !== name && !this.#warmed.has(ref) && !this.#shown.has(ref) && !this.#trees.has(ref));
    if (refs.length === 0) return;
    void eachLimited(refs.slice(0, 256), n, async ({ sp, ref }) => {
      const signal = AbortSignal.timeout(60_000);
      const ri = await this.#infos.get(sp, signal).catch(() => undefined);
      if (!ri) return;
      this.counters.warmedInfos++;
      if (!this.#opts.indexPolicy || this.#trees.has(ref) || this.#treeStore.has(ref)) return;
      const tree = await this.#fetchIndex(ref, ri, signal).catch(() => undefined);
      if (tree) this.counters.warmedIndexes++;
    }).catch(() => {});
  }

  /** The whole contents of a store path that is one regular file (e.g. a `.drv`). */
  async readFile(name: string, signal: AbortSignal): Promise<Buffer> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    if (node.type !== 'regular') throw new NarfsError('ERR_IS_DIRECTORY', `${name} is not a single regular file`);
    return node.size === 0 ? Buffer.alloc(0) : this.read(name, node.narOffset, node.size, signal);
  }

  /**
   * The local file holding the verified contents of the file at `narOffset` of `name`
   * (ContentReader.contentFile): its blob, whole, from offset 0, once it is complete and
   * checked in this process; before that, while the commit of a NAR that held it is under
   * way, that NAR's staging file at the file's offset (Materialiser.stagedLocation; its
   * removal is told through watchDropped). A FUSE engine may then serve it without asking
   * again (pread in C, or passthrough for a blob). Served in C, the reads of a just
   * verified path cost no JS: with one JS read per file, the reads after the NAR of the
   * bench's headers path matched took 0.35-0.54 ms each against 0.14 ms before issue 10,
   * when the engine read the cached NAR in C.
   */
  contentFile(name: string, narOffset: number): { path: string; offset: number; size: number } | undefined {
    const tree = this.#trees.get(name);
    if (!tree) return undefined;
    // While a trace is recorded, a file's first read must reach `read` (and the trace).
    if (this.#opts.onFirstRead && !this.#readOnce.has(`${name}\0${narOffset}`)) return undefined;
    const file = findFile(tree.index, narOffset);
    if (!file || file.narOffset !== narOffset) return undefined;
    const path = this.#blobs.verifiedPath(file.sha256, file.size);
    if (path !== undefined) return { path, offset: 0, size: file.size };
    // Verified with its whole NAR (this path's or another's of the same contents) and not
    // committed yet: its bytes in that NAR's staging file.
    return this.#materialiser.stagedLocation(file.sha256, file.size);
  }

  /** Calls `listener` with the path of every blob that leaves the cache (evicted, damaged, dropped). */
  watchDropped(listener: (name: string, path: string) => void): void {
    this.#dropListeners.push(listener);
  }

  /**
   * Lets `guard` veto the eviction of a cached file by its path (ContentReader.guardDropped):
   * a FUSE engine that serves open files without JS keeps them, and lets go of idle ones.
   */
  guardDropped(guard: (path: string) => boolean): void {
    this.#blobs.setEvictionGuard((hex) => guard(this.#blobs.blobPath(Buffer.from(hex, 'hex'))));
  }

  /**
   * Keeps the file at `narOffset` of `name` in the cache while the caller holds it (an open
   * file): eviction never takes a pinned blob. Returns the release function.
   */
  hold(name: string, narOffset: number): () => void {
    const file = this.#fileOf(name, narOffset);
    return file ? this.#blobs.pin(file.sha256) : () => {};
  }

  /**
   * Hint on open that a file will be read: an indexed file's first chunk is fetched at once
   * (the read that follows joins it); a path fetched whole starts its NAR.
   */
  prefetch(name: string, narOffset?: number): void {
    if (!this.#trees.has(name)) {
      // The tree is not loaded (the path was shown from an unsigned listing, or released):
      // find it (stored, published index, or the whole NAR as the last resort) first.
      this.#treeFor(name, AbortSignal.timeout(120_000)).then(() => {
        if (this.#trees.has(name)) this.prefetch(name, narOffset);
      }, () => {
        // The read that needs the bytes gets the error.
      });
      return;
    }
    const tree = this.#trees.get(name);
    const file = tree && narOffset !== undefined ? findFile(tree.index, narOffset) : undefined;
    if (tree && file && tree.ranged) {
      // An open counts as a read of the file's first bytes (a complete file's later reads
      // may be served by the engine without asking).
      const held = this.#stagedOf(file) !== undefined || this.#blobs.haveChunks(file.sha256, file.size, tree.index.chunkSize, 0, 0)[0] === true;
      this.#noteBreadth(name, tree, file, Math.min(file.size, this.#opts.neighbourFileBytes ?? DEFAULT_NEIGHBOUR_FILE_BYTES), !held);
      if (held) return;
      this.#fetchChunks(tree, file, 0, 0, AbortSignal.timeout(120_000)).catch(() => {
        // The read that needs the bytes gets the error.
      });
      this.#fetchNeighbours(name, tree, file);
      return;
    }
    if (tree && !tree.ranged && file && this.#blobs.completePath(file.sha256, file.size) !== undefined) return;
    this.#materialise(name).catch(() => {
      // Reported by the materialiser; the read that needs the bytes gets the error.
    });
  }

  async read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    this.#materialiser.noteRead();
    try {
      return await this.#read(name, narOffset, length, signal);
    } catch (err) {
      if (!isNarfsError(err, 'ERR_CACHE_CORRUPT')) throw err;
      // A cached file was damaged or went away after it was verified: the blob store has
      // dropped it; fetch it again (once).
      this.#opts.logger.warn('cached file is damaged or gone; fetching it again', { path: name, err });
      return this.#read(name, narOffset, length, signal);
    }
  }

  async #read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    let tree = await this.#treeFor(name, signal);
    let file = this.#fileIn(name, tree, narOffset, length);
    const offset = narOffset - file.narOffset;
    this.#noteRead(name, file);
    const unpin = this.#blobs.pin(file.sha256);
    try {
      this.#promoteAlong(file);
      const staged = this.#stagedOf(file);
      if (staged) return this.#served(name, tree, file, staged, offset, length);
      if (this.#blobs.completePath(file.sha256, file.size) === undefined && tree.ranged) {
        const cs = tree.index.chunkSize;
        const first = Math.floor(offset / cs);
        const last = Math.floor((offset + length - 1) / cs);
        if (!this.#blobs.haveChunks(file.sha256, file.size, cs, first, last).every(Boolean)) {
          try {
            // Chunks already on their way (a trace replay's, a neighbourhood's or a bulk
            // request, queued or in flight) are joined: that is no new miss, and it brings
            // no neighbourhood fetch of its own.
            const coming = this.#allComing(tree, file, first, last);
            // The file's own request goes first (its flights registered), the neighbours'
            // requests beside it: the file's bytes never wait behind theirs.
            const own = this.#fetchChunks(tree, file, first, last, signal);
            if (!coming) {
              this.#fetchNeighbours(name, tree, file);
              this.#noteBreadth(name, tree, file, 0, true);
            }
            await own;
          } catch (err) {
            if (!isNarfsError(err, 'ERR_INDEX_UNUSABLE')) throw err;
            this.#opts.logger.warn('the index cannot be read by range here; fetching the whole NAR', { path: name, err });
          }
        }
        const got = this.#stagedOf(file);
        if (got) return this.#served(name, tree, file, got, offset, length);
        const writing = this.#fromWriting(file, cs, offset, length);
        if (writing) {
          this.#countRanged(name, tree, file, length);
          return writing;
        }
        if (!(await this.#writesOf(file, first, last))) {
          throw new NarfsError('ERR_CACHE_IO', `${name}: a fetched chunk of the file at NAR offset ${file.narOffset} could not be written to the cache`);
        }
        if (this.#blobs.haveChunks(file.sha256, file.size, cs, first, last).every(Boolean)) {
          this.#countRanged(name, tree, file, length);
          return await this.#blobs.readRange(file.sha256, file.size, offset, length);
        }
      }
      if (this.#blobs.completePath(file.sha256, file.size) === undefined) {
        // Taken before the wait: the background fetch's own failure handler may put the
        // ranged tree back before this reader hears of the failure.
        const walked = this.#walkWhole.get(name);
        // The walk's own fetch, unless it already outlasted a reader's deadline (then
        // #materialise says so at once and this read goes by range).
        const whole = this.#overdue.has(name) ? undefined : this.#walkFetches.get(name);
        if (whole !== undefined && walked !== undefined && walked.index === tree.index) {
          // A walked path's NAR streaming: its files are served as soon as they are staged,
          // each checked against the signed index's SHA-256 of it (`file` is from that
          // index), before the NarHash of the whole NAR is known.
          let streamed: Buffer | undefined;
          try {
            streamed = await this.#materialiser.readStreamed(name, file.sha256, file.size, offset, length, signal);
          } catch (err) {
            this.#noteOverdue(name, err);
            throw err;
          }
          if (streamed) {
            this.counters.wholeNarReads++;
            this.counters.streamedReads++;
            this.counters.bytesRead += length;
            return streamed;
          }
        }
        try {
          // The walk's fetch ended without this file staged (or never staged it): its
          // outcome, not a fetch of our own: after it failed, #inflight no longer holds it,
          // and #materialise would fetch the whole NAR again.
          tree = await (whole !== undefined ? raceSignal(whole, signal) : this.#materialise(name, signal));
        } catch (err) {
          if (whole !== undefined) this.#noteOverdue(name, err);
          // The whole NAR of a walked path failed (or outlasted another reader's deadline):
          // this read, and the path's later ones, go by range again.
          if (signal.aborted || walked === undefined) throw err;
          this.#unwhole(name, err);
          return await this.#read(name, narOffset, length, signal);
        }
        file = this.#fileIn(name, tree, narOffset, length);
        if (this.#blobs.completePath(file.sha256, file.size) === undefined) {
          // Its NAR matched NarHash; the file's commit may still be under way: read it from
          // the NAR's staging file meanwhile.
          const staged = await this.#materialiser.readStaged(file.sha256, file.size, offset, length);
          if (staged) {
            if (!tree.ranged) this.counters.wholeNarReads++;
            this.counters.stagedReads++;
            this.counters.bytesRead += length;
            return staged;
          }
          if (this.#blobs.completePath(file.sha256, file.size) === undefined) {
            throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the file at NAR offset ${file.narOffset} was verified but did not reach the cache`);
          }
        }
      }
      if (!tree.ranged) this.counters.wholeNarReads++;
      else this.#noteBreadth(name, tree, file, length, false);
      if (!this.#blobs.isVerified(file.sha256) && !(await this.#blobs.verifyBlob(file.sha256, signal))) {
        throw new NarfsError('ERR_CACHE_CORRUPT', `${name}: the cached file at NAR offset ${file.narOffset} does not hash to its name`);
      }
      this.counters.bytesRead += length;
      return await this.#blobs.readRange(file.sha256, file.size, offset, length);
    } finally {
      unpin();
    }
  }

  /** A read answered from the stage (verified bytes not yet committed). */
  #served(name: string, tree: Tree, file: IndexedFile, bytes: Buffer, offset: number, length: number): Buffer {
    if (offset < 0 || offset + length > bytes.length) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `${name}: ${length} bytes at offset ${offset} are not within a file of ${bytes.length}`);
    }
    this.counters.stagedReads++;
    this.#countRanged(name, tree, file, length);
    return Buffer.from(bytes.subarray(offset, offset + length));
  }

  /** Counts a read answered by range (from the stage, a write under way or chunks in the cache). */
  #countRanged(name: string, tree: Tree, file: IndexedFile, length: number): void {
    this.counters.rangedReads++;
    this.counters.bytesRead += length;
    this.#noteBreadth(name, tree, file, length, false);
  }

  /**
   * Fetches every file of `name` that the cache does not hold (`narfs prefetch`): by ranged
   * reads when the path is indexed, else its whole NAR. Returns the bytes of its files.
   */
  async prefetchPath(name: string, signal: AbortSignal, concurrency = 4): Promise<{ files: number; bytes: number }> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    const tree = await this.#treeFor(name, signal);
    let bytes = 0;
    for (const f of tree.index.files) bytes += f.size;
    if (!tree.ranged) {
      await this.#materialise(name, signal);
      await this.#materialiser.committed(name);
      return { files: tree.index.files.length, bytes };
    }
    void concurrency;
    await this.#fetchBulk(tree, tree.index.files, signal);
    await this.flushStaged();
    return { files: tree.index.files.length, bytes };
  }

  /**
   * Fetches the files at `narOffsets` of `name` into the cache (trace replay): by coalesced
   * ranged requests (many files per request, `bulkConcurrency` in flight) when the path is
   * indexed, else its whole NAR. Offsets that name no file are counted, not fatal.
   */
  async prefetchFiles(name: string, narOffsets: readonly number[], signal: AbortSignal): Promise<{ files: number; failed: number }> {
    const node = await this.resolve(name, signal);
    if (!node) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake`);
    const tree = await this.#treeFor(name, signal);
    const files: IndexedFile[] = [];
    let failed = 0;
    for (const at of narOffsets) {
      const f = findFile(tree.index, at);
      if (!f || f.narOffset !== at) failed++;
      else files.push(f);
    }
    if (!tree.ranged) {
      if (files.some((f) => this.#blobs.completePath(f.sha256, f.size) === undefined)) {
        await this.#materialise(name, signal);
        await this.#materialiser.committed(name);
      }
      return { files: files.length, failed };
    }
    const r = await this.#fetchBulk(tree, files, signal, this.#opts.gapBytes ?? DEFAULT_GAP_BYTES);
    await this.flushStaged();
    return { files: files.length, failed: failed + r.failedFiles };
  }

  /**
   * Fetches every chunk of `files` (of `tree`, ranged) the cache does not hold, in
   * coalesced requests of up to `bulkRequestBytes` (whole frame runs when seekable),
   * `bulkConcurrency` at once; `gapBytes` unwanted NAR bytes may sit inside one request
   * (a whole path: everything is wanted, so only NAR headers and held files are gaps).
   * Every chunk is verified before it is cached. Returns the files with a chunk that failed.
   */
  async #fetchBulk(tree: Tree, files: readonly IndexedFile[], signal: AbortSignal, gapBytes = 1 << 20): Promise<{ failedFiles: number }> {
    const fetcher = this.#opts.chunks;
    if (!fetcher) throw new NarfsError('ERR_INDEX_UNUSABLE', 'no ranged reads in this configuration');
    const cs = tree.index.chunkSize;
    const runs: ChunkRun[] = [];
    for (const f of files) {
      this.#promoteAlong(f);
      if (this.#stagedOf(f) || this.#blobs.completePath(f.sha256, f.size) !== undefined) continue;
      runs.push({ file: f, first: 0, last: chunkCount(f.size, cs) - 1 });
    }
    if (runs.length === 0) return { failedFiles: 0 };
    const failedFiles = new Set<IndexedFile>();
    const r = await fetcher.fetchRegion(this.#sourceOf(tree), tree.index, runs, (f, k, bytes, along) => this.#store(tree, f, k, bytes, along).catch((err: unknown) => {
      failedFiles.add(f);
      throw err;
    }), signal, {
      gapBytes,
      maxRequestBytes: this.#opts.bulkRequestBytes ?? DEFAULT_BULK_REQUEST_BYTES,
      concurrency: this.#opts.bulkConcurrency ?? DEFAULT_BULK_CONCURRENCY,
      isHeld: (f, k) => this.#holds(tree, f, k),
    });
    return { failedFiles: Math.max(failedFiles.size, r.failed > 0 ? 1 : 0) };
  }

  /**
   * Neighbourhood fetch on a miss of `file` (see neighbourhood.ts): its small siblings not
   * held, within `neighbourBytes`, in coalesced requests beside the file's own (never in
   * front of it), each chunk verified before it is cached; not pinned, failures ignored
   * (a neighbour that is read later fetches and checks its bytes itself).
   */
  #fetchNeighbours(name: string, tree: Tree, file: IndexedFile): void {
    const fetcher = this.#opts.chunks;
    const budget = this.#opts.neighbourBytes ?? DEFAULT_NEIGHBOUR_BYTES;
    const maxFile = this.#opts.neighbourFileBytes ?? DEFAULT_NEIGHBOUR_FILE_BYTES;
    // Every miss grows the path's reach, also one that brings no neighbours (a large module).
    noteMiss(tree.index, file.size);
    if (!fetcher || this.#breadth.get(name)?.escalated) return;
    // The siblings first: their requests then count as coming for the subtree's.
    try {
      if (budget > 0 && file.size <= maxFile) this.#fetchSiblings(name, tree, file, fetcher, budget, maxFile);
    } finally {
      this.#fetchSubtree(name, tree, file, fetcher, maxFile);
    }
  }

  /**
   * The subtree rule (neighbourhood.ts): once SUBTREE_MIN_CHILDREN subdirectories of a
   * directory missed, the small files of its subtree not held, if within `subtreeBytes`,
   * in the background as a bulk fetch would (behind readers' requests), in requests of at
   * most SUBTREE_REQUEST_BYTES so that many are in flight. Failures are ignored (a file
   * read later fetches and checks its bytes itself).
   */
  #fetchSubtree(name: string, tree: Tree, file: IndexedFile, fetcher: ChunkFetcher, maxFile: number): void {
    const budget = this.#opts.subtreeBytes ?? DEFAULT_SUBTREE_BYTES;
    // Not in seekable frames: a request there decodes whole frames, which bring many
    // directories' small files along already, and a subtree's files span most of its
    // frames (bench scenario 1, seekable, running daemon: 1.6 s -> 2.3 s and 9 -> 60 MiB
    // fetched with the rule; none: 2.8 -> 2.3 s).
    if (budget <= 0 || isFramed(tree.index)) return;
    const src = this.#sourceOf(tree);
    const isHeld = this.#heldOrComing(tree, fetcher, src);
    const j = fileIndexOf(tree.index, file);
    const dir = j < 0 ? undefined : noteSubtreeMiss(tree.index, j, maxFile, isHeld);
    if (dir === undefined) return;
    const files = subtreeFiles(tree.index, dir, { budgetBytes: budget, maxFileBytes: maxFile, isHeld });
    if (!files || files.length === 0) return;
    this.counters.subtreeFetches++;
    this.counters.subtreeFiles += files.length;
    this.#opts.logger.debug('subdirectories of a directory are being read; fetching the small files of its subtree', {
      path: name, files: files.length, bytes: files.reduce((a, f) => a + f.size, 0), from: files[0]!.narOffset, to: files.at(-1)!.narOffset,
    });
    this.#fetchWholeFiles(name, tree, fetcher, src, files, 'subtree', {
      maxRequestBytes: SUBTREE_REQUEST_BYTES,
      concurrency: this.#opts.bulkConcurrency ?? DEFAULT_BULK_CONCURRENCY,
    });
  }

  /**
   * Fetches `files` whole in the background, as one region (neighbourhood and subtree
   * rules): within a deadline, every chunk stored as it comes; a failure is only logged (a
   * file read later fetches and checks its bytes itself).
   */
  #fetchWholeFiles(name: string, tree: Tree, fetcher: ChunkFetcher, src: ChunkSource, files: IndexedFile[], what: string, o: { maxRequestBytes?: number; concurrency: number }): void {
    const cs = tree.index.chunkSize;
    const runs = files.map((f) => ({ file: f, first: 0, last: chunkCount(f.size, cs) - 1 }));
    fetcher.fetchRegion(src, tree.index, runs, (f, k, bytes, along) => this.#store(tree, f, k, bytes, along), AbortSignal.timeout(120_000), {
      gapBytes: this.#opts.gapBytes ?? DEFAULT_GAP_BYTES,
      maxRequestBytes: o.maxRequestBytes,
      concurrency: o.concurrency,
      isHeld: (f, k) => this.#holds(tree, f, k),
    }).catch((err: unknown) => {
      this.#opts.logger.debug(`${what} fetch failed; its files are fetched when read`, { path: name, err: toNarfsError(err) });
    });
  }

  /** Whether a whole file of `tree` is staged, committed, or asked for of `fetcher` already. */
  #heldOrComing(tree: Tree, fetcher: ChunkFetcher, src: ChunkSource): (f: IndexedFile) => boolean {
    return (f) => this.#stagedOf(f) !== undefined || this.#blobs.completePath(f.sha256, f.size) !== undefined
      || fetcher.isComing(src, tree.index, f, 0);
  }

  /** The sibling part of #fetchNeighbours. */
  #fetchSiblings(name: string, tree: Tree, file: IndexedFile, fetcher: ChunkFetcher, budget: number, maxFile: number): void {
    const after = this.#opts.neighbourAfterMisses ?? DEFAULT_NEIGHBOUR_AFTER_MISSES;
    if (after > 1) {
      // Adaptive: a directory's first missed files come alone; its neighbours only once
      // it has shown to be read more broadly.
      const j = fileIndexOf(tree.index, file);
      const key = `${name}\0${directoriesOf(tree.index)[j] ?? -1}`;
      const seen = this.#dirMisses.get(key) ?? { n: 0, last: -1 };
      if (seen.last !== file.narOffset) {
        seen.n++;
        seen.last = file.narOffset;
        this.#dirMisses.set(key, seen);
        if (this.#dirMisses.size > 65536) this.#dirMisses.delete(this.#dirMisses.keys().next().value!);
      }
      if (seen.n < after) return;
    }
    const src = this.#sourceOf(tree);
    const gapBytes = this.#opts.gapBytes ?? DEFAULT_GAP_BYTES;
    const isHeld = this.#heldOrComing(tree, fetcher, src);
    const near = neighbours(tree.index, file, { budgetBytes: budget, maxFileBytes: maxFile, gapBytes, isHeld });
    // Seekable: the frames of the file's own request bring the neighbours inside them along.
    const own = frameSpan(tree.index, file.narOffset, file.narOffset + file.size);
    const rest = own ? near.filter((f) => f.narOffset < own.start || f.narOffset + f.size > own.end) : near;
    if (rest.length === 0) return;
    this.counters.neighbourFetches++;
    this.counters.neighbourFiles += rest.length;
    // Regions apart at the file itself and at files held or coming: one region would bridge
    // the bytes of the file's own request in flight (or another's) and fetch them again.
    for (const group of neighbourRegions(tree.index, file, rest, isHeld, gapBytes)) {
      this.#fetchWholeFiles(name, tree, fetcher, src, group, 'neighbourhood', { concurrency: 4 });
    }
  }

  /**
   * Counts what a read of `file` brought (escalation): `bytes` handed out, or one miss.
   * Once the path has been read broadly, the rest of it is fetched in bulk, in the background.
   */
  #noteBreadth(name: string, tree: Tree, file: IndexedFile, bytes: number, missed: boolean): void {
    const share = this.#opts.escalateShare ?? DEFAULT_ESCALATE_SHARE;
    if (share <= 0 || !this.#opts.chunks) return;
    let b = this.#breadth.get(name);
    if (!b) {
      let totalBytes = 0;
      for (const f of tree.index.files) totalBytes += f.size;
      b = { readBytes: 0, perFile: new Map(), misses: 0, totalBytes, escalated: false, lastRead: -1, streak: 0, streakDirs: new Set(), streakBytes: 0 };
      this.#breadth.set(name, b);
    }
    if (b.escalated) return;
    if (missed) b.misses++;
    const j = fileIndexOf(tree.index, file);
    if (j >= 0 && j !== b.lastRead) {
      const gap = j > b.lastRead ? this.#walkedBetween(tree, b, b.lastRead, j) : -1;
      if (gap >= 0) {
        b.streak++;
        b.streakBytes += gap;
      } else {
        b.streak = 1;
        b.streakDirs.clear();
        b.streakBytes = 0;
      }
      b.streakDirs.add(directoriesOf(tree.index)[j] ?? -1);
      b.streakBytes += file.size;
      b.lastRead = j;
    }
    if (bytes > 0) {
      const had = b.perFile.get(file.narOffset) ?? 0;
      const now = Math.min(file.size, had + bytes);
      b.perFile.set(file.narOffset, now);
      b.readBytes += now - had;
    }
    const streak = this.#opts.escalateStreak ?? DEFAULT_ESCALATE_STREAK;
    // A walk crosses directories: reading one directory's files in order (a program
    // loading every module of it) is not copying the path.
    const walking = streak > 0 && b.streak >= streak && (b.streakDirs.size >= WALK_MIN_DIRECTORIES || b.streakBytes >= WALK_MIN_BYTES);
    if (!walking && (b.misses < ESCALATE_MIN_MISSES || b.readBytes < share * b.totalBytes)) return;
    b.escalated = true;
    b.perFile.clear();
    this.counters.escalations++;
    if (walking && this.#goWhole(name, tree)) {
      this.#opts.logger.debug('store path walked; fetching its whole NAR', { path: name, readBytes: b.readBytes, totalBytes: b.totalBytes, misses: b.misses, streak: b.streak });
      return;
    }
    this.#opts.logger.debug('store path read broadly; fetching the rest in bulk', { path: name, readBytes: b.readBytes, totalBytes: b.totalBytes, misses: b.misses, streak: b.streak });
    this.#bulkRest(name, tree);
  }

  /** The files of `tree` not held, fetched in bulk by range in the background; failures are left to the reads. */
  #bulkRest(name: string, tree: Tree): void {
    this.#fetchBulk(tree, tree.index.files, AbortSignal.timeout(BACKGROUND_FETCH_DEADLINE_MS)).catch((err: unknown) => {
      this.#opts.logger.debug('bulk fetch of a store path failed; its files are fetched when read', { path: name, err: toNarfsError(err) });
    });
  }

  /**
   * A walk of `name` (a reader copying the path): its whole NAR is fetched in the
   * background, as an unindexed path's is, if it is small enough (walkWholeBytes), and
   * the path's reads wait for it from now on (its tree is marked not ranged). Reads
   * already under way finish by range. The Materialiser keeps the signed tree in the
   * TreeStore (its chunk hashes serve later ranged reads). False when not taken.
   */
  #goWhole(name: string, tree: Tree): boolean {
    const max = this.#opts.walkWholeBytes ?? DEFAULT_WALK_WHOLE_BYTES;
    const ni = tree.info.narInfo;
    if (max <= 0 || (ni.fileSize ?? ni.narSize) > max || this.#trees.get(name) !== tree || this.#walkWhole.has(name)) return false;
    this.#walkWhole.set(name, tree);
    this.#trees.set(name, { ...tree, ranged: false });
    this.counters.walkWholeNars++;
    // Announced: the path's readers follow the NAR as it streams (#read, readStreamed).
    const fetch = this.#materialise(name, AbortSignal.timeout(BACKGROUND_FETCH_DEADLINE_MS), true);
    this.#walkFetches.set(name, fetch);
    fetch.then(() => {
      this.#walkWhole.delete(name);
    }, (err: unknown) => this.#unwhole(name, err)).finally(() => {
      if (this.#walkFetches.get(name) === fetch) this.#walkFetches.delete(name);
    });
    return true;
  }

  /**
   * The whole NAR of walked path `name` failed (#goWhole; `err`, from whichever of the
   * background fetch and a waiting reader hears first): its ranged tree is put back,
   * unless a verified tree replaced it meanwhile, and the rest of the path is fetched in
   * bulk by range, as a walk did before. Once per switch.
   */
  #unwhole(name: string, err: unknown): void {
    const ranged = this.#walkWhole.get(name);
    if (!ranged) return;
    this.#walkWhole.delete(name);
    const now = this.#trees.get(name);
    if (!now || now.ranged || now.index !== ranged.index) return;
    this.#trees.set(name, ranged);
    this.#opts.logger.warn('the whole NAR of a walked store path could not be had; the rest of it is fetched by range', { path: name, err: toNarfsError(err) });
    this.#bulkRest(name, ranged);
  }

  /**
   * Whether a reader went from file `from` to file `to` (positions in idx.files) in NAR
   * order skipping none that it had to fetch: each non-empty file between was read
   * through the store, or is staged, committed or asked for (a file the cache holds may
   * have been read without the store seeing it). Returns the bytes of the files between, or -1 (also
   * beyond 4096 files: not a walk one can tell cheaply).
   */
  #walkedBetween(tree: Tree, b: Breadth, from: number, to: number): number {
    if (to - from > 4096) return -1;
    const idx = tree.index;
    const src = this.#opts.chunks ? this.#sourceOf(tree) : undefined;
    let bytes = 0;
    for (let i = Math.max(0, from + 1); i < to; i++) {
      const f = idx.files[i]!;
      if (f.size === 0) continue;
      bytes += f.size;
      // Staged, committed or asked for: read, or wanted by a neighbourhood or bulk fetch.
      // Not a file that merely came along in another's seekable frames (#along): those
      // hold whole directories, and a program picking files would look like a walk.
      if (b.perFile.has(f.narOffset) || (this.#staged.size > 0 && this.#staged.has(f.sha256.toString('hex')))
        || this.#blobs.completePath(f.sha256, f.size) !== undefined) continue;
      if (src && this.#opts.chunks!.isComing(src, idx, f, 0, false)) continue;
      return -1;
    }
    return bytes;
  }

  /** Whether every chunk first..last of `file` not held is being fetched already (ChunkFetcher.isComing). */
  #allComing(tree: Tree, file: IndexedFile, first: number, last: number): boolean {
    const fetcher = this.#opts.chunks;
    if (!fetcher) return false;
    const src = this.#sourceOf(tree);
    for (let k = first; k <= last; k++) {
      if (!this.#holds(tree, file, k) && !fetcher.isComing(src, tree.index, file, k)) return false;
    }
    return true;
  }

  /** Whether the cache holds chunk k of `f` (or its write is under way). */
  #holds(tree: Tree, f: IndexedFile, k: number): boolean {
    return this.#stagedOf(f) !== undefined || this.#blobs.completePath(f.sha256, f.size) !== undefined
      || (this.#writing.size > 0 && this.#writing.has(`${f.sha256.toString('hex')}:${k}`))
      || this.#blobs.haveChunks(f.sha256, f.size, tree.index.chunkSize, k, k)[0] === true;
  }

  #sourceOf(tree: Tree): ChunkSource {
    const ni = tree.info.narInfo;
    return { datalake: tree.info.datalake, narUrl: ni.url, compression: ni.compression, narInfo: ni };
  }

  /**
   * Caches one verified chunk. A file of one chunk is a whole verified file (its chunk hash
   * is its SHA-256): it is staged in memory (served from there at once) and committed to
   * the blob store in the background, in batches, by the blob-write worker (#drain): a
   * decoded frame brings hundreds of small files, and no reader waits for their writes.
   * Larger files go in chunk by chunk (partial blobs).
   */
  async #store(tree: Tree, f: IndexedFile, k: number, bytes: Buffer, along = false): Promise<void> {
    const cs = tree.index.chunkSize;
    if (f.size <= cs) {
      const hex = f.sha256.toString('hex');
      if (this.#staged.has(hex) || this.#blobs.completePath(f.sha256, f.size) !== undefined) return;
      if (along) {
        if (this.#along.has(hex)) return;
        this.#holdAlong(hex, { sha: f.sha256, bytes: keepable(bytes) });
        for (const old of this.#along.keys()) {
          if (this.#alongHeld.total <= this.#stageMaxBytes) break;
          this.#dropAlong(old);
        }
        return;
      }
      this.#promoteAlong(f);
      if (this.#staged.has(hex)) return;
      const kept = keepable(bytes);
      this.#staged.set(hex, { sha: f.sha256, bytes: kept });
      this.#stagedHeld.add(kept);
      this.#drainSoon();
      // Bounded memory: a writer that outruns the disk waits for commits.
      while (this.#stagedHeld.total > this.#stageMaxBytes && this.#draining) await new Promise<void>((r) => this.#committed.push(r));
      return;
    }
    if (this.#blobs.completePath(f.sha256, f.size) !== undefined) return;
    const key = `${f.sha256.toString('hex')}:${k}`;
    const held = this.#writing.get(key);
    if (held) {
      await held.put;
      return;
    }
    const copy = keepable(bytes);
    const put: Promise<boolean> = this.#blobs.putChunk(f.sha256, f.size, cs, k, copy, chunkHash(f, k)).then(() => true, (err: unknown) => {
      // Served from memory meanwhile; a later read fetches (and checks) the chunk again.
      this.#opts.logger.warn('cannot write a fetched chunk to the cache; it is fetched again when read', { err: toNarfsError(err, 'ERR_CACHE_IO') });
      return false;
    }).finally(() => {
      if (this.#writing.get(key)?.put === put) {
        this.#writing.delete(key);
        this.#writingHeld.remove(copy);
      }
    });
    this.#writing.set(key, { bytes: copy, put });
    this.#writingHeld.add(copy);
    // Bounded memory: beyond the bound the fetch waits for its write, as before.
    if (this.#writingHeld.total > this.#stageMaxBytes) await put;
  }

  /** Bytes [offset, offset+length) of `file` if they lie in one chunk whose write is under way. */
  #fromWriting(file: IndexedFile, cs: number, offset: number, length: number): Buffer | undefined {
    if (this.#writing.size === 0) return undefined;
    const k = Math.floor(offset / cs);
    if (Math.floor((offset + length - 1) / cs) !== k) return undefined;
    const w = this.#writing.get(`${file.sha256.toString('hex')}:${k}`);
    return w ? Buffer.from(w.bytes.subarray(offset - k * cs, offset - k * cs + length)) : undefined;
  }

  /** Waits for the writes under way of chunks first..last of `file`; false if one failed. */
  async #writesOf(file: IndexedFile, first: number, last: number): Promise<boolean> {
    if (this.#writing.size === 0) return true;
    const hex = file.sha256.toString('hex');
    let ok = true;
    for (let k = first; k <= last; k++) ok = (await (this.#writing.get(`${hex}:${k}`)?.put ?? true)) && ok;
    return ok;
  }

  /** Resolves once every file staged so far is committed to the blob store (or dropped on a cache error). */
  async flushStaged(): Promise<void> {
    while (this.#draining) await this.#draining;
  }

  /** The staged or along (verified, not yet committed) bytes of a whole file, if any. */
  #stagedOf(f: IndexedFile): Buffer | undefined {
    if (this.#staged.size === 0 && this.#along.size === 0) return undefined;
    const hex = f.sha256.toString('hex');
    return this.#staged.get(hex)?.bytes ?? this.#along.get(hex)?.bytes;
  }

  /** Moves a file held along (in memory only) to the stage, so it is committed: it is read or wanted. */
  #promoteAlong(f: IndexedFile): void {
    if (this.#along.size === 0) return;
    const hex = f.sha256.toString('hex');
    const a = this.#dropAlong(hex);
    if (!a) return;
    if (this.#staged.has(hex)) return;
    this.#staged.set(hex, a);
    this.#stagedHeld.add(a.bytes);
    this.#drainSoon();
  }

  /** Holds a file that came along; the bytes it keeps: its frame buffer, counted once (HeldBytes). */
  #holdAlong(hex: string, a: { sha: Buffer; bytes: Buffer }): void {
    this.#along.set(hex, a);
    this.#alongHeld.add(a.bytes);
  }

  /** Lets go of a file held along (read, wanted, or the oldest past the bound). */
  #dropAlong(hex: string): { sha: Buffer; bytes: Buffer } | undefined {
    const a = this.#along.get(hex);
    if (!a) return undefined;
    this.#along.delete(hex);
    this.#alongHeld.remove(a.bytes);
    return a;
  }

  #drainSoon(): void {
    // A second loop only while more than a batch waits beside the first loop's: the writer
    // threads then take the next batch's files while this one's last writes finish (one
    // batch at a time left them idle between batches, the stage full and fetches waiting).
    const waiting = this.#staged.size - this.#committing.size;
    if (this.#drainLoops >= DRAIN_LOOPS || waiting <= 0 || (this.#drainLoops > 0 && waiting < DRAIN_BATCH_FILES)) return;
    this.#drainLoops++;
    if (!this.#draining) this.#draining = new Promise<void>((resolve) => { this.#drained = resolve; });
    setImmediate(() => {
      this.#drain().finally(() => {
        if (--this.#drainLoops > 0) return;
        const done = this.#drained;
        this.#draining = undefined;
        this.#drained = undefined;
        done?.();
        if (this.#staged.size > this.#committing.size) this.#drainSoon();
      });
    });
  }

  /** Commits staged files not in another loop's commit, in batches, oldest first, until none is left. */
  async #drain(): Promise<void> {
    for (;;) {
      const batch: Array<{ sha: Buffer; bytes: Buffer }> = [];
      const hexes: string[] = [];
      let bytes = 0;
      for (const [hex, f] of this.#staged) {
        if (batch.length >= DRAIN_BATCH_FILES || bytes >= DRAIN_BATCH_BYTES) break;
        if (this.#committing.has(hex)) continue;
        batch.push(f);
        hexes.push(hex);
        bytes += f.bytes.length;
      }
      if (batch.length === 0) return;
      for (const hex of hexes) this.#committing.add(hex);
      try {
        await this.#blobs.commitBuffers(batch);
      } catch (err) {
        // Dropped from memory: a file that is read later is fetched (and checked) again.
        this.#opts.logger.warn('cannot commit fetched files to the cache; they are fetched again when read', { files: batch.length, err: toNarfsError(err, 'ERR_CACHE_IO') });
      } finally {
        for (const hex of hexes) {
          this.#committing.delete(hex);
          const f = this.#staged.get(hex);
          if (f) this.#stagedHeld.remove(f.bytes);
          this.#staged.delete(hex);
        }
        for (const r of this.#committed.splice(0)) r();
      }
    }
  }

  async #fetchChunks(tree: Tree, file: IndexedFile, first: number, last: number, signal: AbortSignal): Promise<void> {
    const fetcher = this.#opts.chunks;
    if (!fetcher) throw new NarfsError('ERR_INDEX_UNUSABLE', 'no ranged reads in this configuration');
    await fetcher.fetch(
      this.#sourceOf(tree),
      tree.index, file, first, last,
      (f, k, bytes, along) => this.#store(tree, f, k, bytes, along),
      signal,
      { isCached: (k) => this.#holds(tree, file, k), isHeld: (f, k) => this.#holds(tree, f, k) },
    );
  }

  /**
   * Whether reads of `tree`'s files go by range (a usable signed index, a NAR big enough).
   * Its frame check is O(frames): decided once per adopted tree, not on every read.
   */
  #rangedFor(tree: Omit<Tree, 'ranged'>): boolean {
    if (tree.source !== 'signed' || !this.#opts.chunks) return false;
    const ni = tree.info.narInfo;
    if ((ni.fileSize ?? ni.narSize) <= (this.#opts.wholeNarMaxBytes ?? DEFAULT_WHOLE_NAR_MAX_BYTES)) return false;
    try {
      ChunkFetcher.checkUsable({ datalake: tree.info.datalake, narUrl: ni.url, compression: ni.compression, narInfo: ni }, tree.index);
      return true;
    } catch {
      return false;
    }
  }

  #fileIn(name: string, tree: Tree, narOffset: number, length: number): IndexedFile {
    const file = findFile(tree.index, narOffset);
    if (!file || narOffset + length > file.narOffset + file.size) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `${name}: ${length} bytes at NAR offset ${narOffset} are not within one file`);
    }
    return file;
  }

  #fileOf(name: string, narOffset: number): IndexedFile | undefined {
    const tree = this.#trees.get(name);
    return tree ? findFile(tree.index, narOffset) : undefined;
  }

  #noteRead(name: string, file: IndexedFile): void {
    const hook = this.#opts.onFirstRead;
    if (!hook) return;
    const key = `${name}\0${file.narOffset}`;
    if (this.#readOnce.has(key)) return;
    this.#readOnce.add(key);
    try {
      hook(name, file.narOffset);
    } catch {
      // A trace is an aid; a failure to record never fails a read.
    }
  }

  /** The verified tree of `name`: in memory, stored, published (signed index), or from its whole NAR. */
  async #treeFor(name: string, signal: AbortSignal): Promise<Tree> {
    const known = this.#trees.get(name);
    if (known) return known;
    if (this.#overdue.has(name)) {
      throw new NarfsError('ERR_DEADLINE', `${name}: its fetch has already outlasted a reader's deadline and is still running`);
    }
    const sp = parseStorePathBase(name);
    // As in resolve: the index goes out with the narinfo (or joins the one already out).
    const early = this.#treeStore.has(name) ? undefined : this.#earlyIndex(name, sp.hashPart, signal);
    const info = await this.#infos.get(sp, signal);
    if (!info) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake any more`);
    const stored = await this.#storedTree(name, info);
    if (stored) return stored;
    const published = await this.#fetchIndex(name, info, signal, early?.datalake === info.datalake ? early.bytes : undefined);
    if (published) return published;
    return this.#materialise(name, signal);
  }

  /** The tree the TreeStore holds for `info`, checked against what was shown. */
  async #storedTree(name: string, info: PathInfo): Promise<Tree | undefined> {
    const found = await this.#treeStore.lookup(info.narInfo);
    if (found.state === 'damaged') this.#opts.logger.warn('cached tree is damaged; it will be fetched again', { path: name, err: found.error });
    if (found.state !== 'ok') return undefined;
    return this.#adopt(name, { index: found.tree.index, source: found.tree.source, info });
  }

  /**
   * The published `<hash>.narfs-index` of `info`, verified (signature by a trusted key,
   * bound to this narinfo's store path, NarHash and NarSize) and stored; undefined when
   * there is none or it does not verify (a warning: the path is then read whole).
   */
  #fetchIndex(name: string, info: PathInfo, signal: AbortSignal, early?: Promise<Buffer | undefined>): Promise<Tree | undefined> {
    if (!this.#opts.indexPolicy || this.#noIndex.has(name)) return Promise.resolve(undefined);
    // One fetch per store path at a time: a concurrent resolve (a trace replay and the
    // workload, say) must wait for it, not conclude there is no index.
    let p = this.#indexing.get(name);
    if (!p) {
      // An early request for this index still in flight is used, not sent again.
      const pending = this.#early.get(name);
      if (!early && pending?.datalake === info.datalake) early = pending.bytes;
      p = this.#fetchIndexOnce(name, info, signal, early).then((tree) => {
        if (!tree) this.#noIndex.add(name);
        return tree;
      }).finally(() => this.#indexing.delete(name));
      this.#indexing.set(name, p);
    }
    return p;
  }

  async #fetchIndexOnce(name: string, info: PathInfo, signal: AbortSignal, early?: Promise<Buffer | undefined>): Promise<Tree | undefined> {
    const policy = this.#opts.indexPolicy!;
    const rel = `${info.narInfo.storePath.hashPart}${NAR_INDEX_SUFFIX}`;
    let bytes: Buffer | undefined;
    try {
      bytes = await (early ?? this.#opts.datalakes.getBytesFrom(info.datalake, rel, { signal }));
    } catch (err) {
      this.#opts.logger.debug('index fetch failed; the path is read whole', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
    if (!bytes) return undefined;
    let index: NarIndex;
    try {
      index = parseNarIndex(bytes);
      verifyNarIndex(index, info.narInfo, policy.trustedKeys, policy.requireSigs);
    } catch (err) {
      this.#opts.logger.warn('published index ignored; the path is read whole', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
    // Stored in the background: its write, fdatasync and directory fsync (~5 ms, more on a
    // loaded disk) are not on the path of the first byte; close() waits for it.
    const put = this.#treeStore.put(index, 'signed', bytes).catch((err: unknown) => {
      // Keeping it is an optimisation: the index was verified and is used for this mount.
      this.#opts.logger.warn('cannot store an index in the cache; using it anyway', { path: name, err: toNarfsError(err, 'ERR_CACHE_IO') });
    });
    this.#treePuts.add(put);
    void put.finally(() => this.#treePuts.delete(put));
    return this.#adopt(name, { index, source: 'signed', info });
  }

  /**
   * The index of `hashPart` asked of the first datalake up, before its narinfo is known;
   * one request per store path while it is in flight (a trace replay and the workload
   * resolving the same path at once share it).
   */
  #earlyIndex(name: string, hashPart: string, signal: AbortSignal): { datalake: Datalake; bytes: Promise<Buffer | undefined> } | undefined {
    if (!this.#opts.indexPolicy || this.#noIndex.has(name) || this.#indexing.has(name)) return undefined;
    const pending = this.#early.get(name);
    if (pending) return pending;
    const set = this.#opts.datalakes;
    const up = set.status().findIndex((d) => d.up);
    const datalake = up < 0 ? undefined : set.datalakes[up];
    if (!datalake) return undefined;
    const bytes = set.getBytesFrom(datalake, `${hashPart}${NAR_INDEX_SUFFIX}`, { signal });
    bytes.catch(() => {}); // used only if the narinfo comes from there; its failure is #fetchIndex's
    const early = { datalake, bytes };
    this.#early.set(name, early);
    void bytes.finally(() => {
      if (this.#early.get(name) === early) this.#early.delete(name);
    }).catch(() => {});
    return early;
  }

  /**
   * Makes `tree` the one reads of `name` use. A listing shown earlier from an unsigned `.ls`
   * must be the verified tree's, or the path fails (the inodes handed out cannot be taken
   * back); the bad listing is dropped so a restart serves the verified one.
   */
  async #adopt(name: string, found: Omit<Tree, 'ranged'>): Promise<Tree> {
    const tree: Tree = { ...found, ranged: this.#rangedFor(found) };
    const shown = this.#shown.get(name);
    if (shown && !shown.verified && !listingsEqual(shown.listing, tree.index.root)) {
      await this.#meta.deleteListing(tree.info.narInfo.storePath.hashPart).catch(() => {});
      throw new NarfsError('ERR_LISTING_MISMATCH', `${name}: the published .ls listing does not describe the NAR`);
    }
    if (shown && !shown.verified) this.#shown.set(name, { listing: shown.listing, verified: true });
    this.#trees.set(name, tree);
    return tree;
  }

  /**
   * Drops what this process knows of `name`'s bytes (after `narfs verify-cache` found them
   * bad), so the next read looks them up again.
   */
  async invalidate(name: string): Promise<void> {
    this.#trees.delete(name);
    const shown = this.#shown.get(name);
    if (shown) this.#shown.set(name, { listing: shown.listing, verified: false });
  }

  /** Fetches and verifies `name`'s whole NAR, its files into the blob store; returns its tree. */
  async #materialise(name: string, signal?: AbortSignal, announce = false): Promise<Tree> {
    if (this.#overdue.has(name)) {
      throw new NarfsError('ERR_DEADLINE', `${name}: its fetch has already outlasted a reader's deadline and is still running`);
    }
    const sp = parseStorePathBase(name);
    let info = await this.#infos.get(sp, signal);
    if (!info) throw new NarfsError('ERR_PATH_NOT_FOUND', `${name} is in no datalake any more`);
    try {
      let m: Materialised;
      try {
        m = await this.#materialiser.verified(info, signal, { announce });
      } catch (err) {
        if (!isNarfsError(err) || !NAR_FAULTS.has(err.code)) throw err;
        // The narinfo in hand led to a bad or missing NAR: ask the datalakes again.
        const fresh = await this.#infos.refresh(sp, signal);
        if (!fresh || sameNar(fresh, info)) throw err;
        this.#opts.logger.warn('the NAR of a narinfo failed; a fresh narinfo points elsewhere, trying it', {
          path: name, err, url: fresh.narInfo.url,
        });
        info = fresh;
        m = await this.#materialiser.verified(info, signal);
      }
      return await this.#adopt(name, { index: m.index, source: m.source, info });
    } catch (err) {
      this.#noteOverdue(name, err);
      throw err;
    }
  }

  /**
   * A reader of `name` gave up on its whole NAR at its deadline (`err`): while that fetch
   * runs on, later readers are told so at once (#materialise) instead of each waiting out
   * its own deadline.
   */
  #noteOverdue(name: string, err: unknown): void {
    const running = this.#materialiser.inFlight(name);
    if (running && isNarfsError(err, 'ERR_DEADLINE') && !this.#overdue.has(name)) {
      this.#overdue.add(name);
      void running.then(() => this.#overdue.delete(name));
    }
  }

  async #fetchListing(info: PathInfo, signal: AbortSignal): Promise<{ listing: NarNode; json: string } | undefined> {
    const rel = `${info.narInfo.storePath.hashPart}.ls`;
    let bytes: Buffer | undefined;
    try {
      bytes = await this.#opts.datalakes.getBytesFrom(info.datalake, rel, { signal });
    } catch (err) {
      // A listing is an optimisation: without it the NAR itself tells the structure.
      this.#opts.logger.warn('listing fetch failed; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
    if (!bytes) return undefined;
    const json = listingToMeta(bytes);
    try {
      const listing = parseListingJson(bytes);
      checkListingBounds(listing, info.narInfo.narSize);
      return { listing, json };
    } catch (err) {
      this.#opts.logger.warn('listing rejected; using the NAR', { datalake: info.datalake.displayUrl, path: rel, err });
      return undefined;
    }
  }

  /**
   * The filesystem holds no inode of `name` any more: forget the listing and tree held for
   * it (RootNodes.release). A later `resolve` loads them again (tree store, metadata cache,
   * index, `.ls`, NAR), so memory follows what the kernel holds, not every path ever looked at.
   */
  release(name: string): void {
    this.#shown.delete(name);
    this.#trees.delete(name);
    this.#noIndex.delete(name);
    this.#breadth.delete(name);
    this.#early.delete(name);
  }

  #show(name: string, listing: NarNode, verified: boolean): NarNode {
    this.#shown.set(name, { listing, verified });
    return listing;
  }

  async close(): Promise<void> {
    // What was fetched and verified by range goes into the cache before the blob store
    // closes. The background commits of whole NARs' staged files run on to their end for a
    // bounded time (Materialiser.stop), then stop after their batch under way: what they
    // committed is committed, the rest is fetched again when next read.
    await this.flushStaged();
    await this.#materialiser.stop();
    await Promise.all([...this.#treePuts, ...[...this.#writing.values()].map((w) => w.put)]);
    this.#trees.clear();
  }
}

/** A published listing must at least fit in the NAR it claims to describe. */
function checkListingBounds(node: NarNode, narSize: number): void {
  if (node instanceof CompactDirectory && node.index === 0) {
    // A listing read compactly: one pass over its arrays, not an object per entry.
    if (node.listing.maxFileEnd() > narSize) throw new NarfsError('ERR_LISTING_PARSE', 'a file of the listing lies beyond NarSize');
    return;
  }
  if (node.type === 'regular') {
    if (node.narOffset + node.size > narSize) {
      throw new NarfsError('ERR_LISTING_PARSE', 'a file of the listing lies beyond NarSize');
    }
  } else if (node.type === 'directory') {
    for (const child of node.entries.values()) checkListingBounds(child, narSize);
  }
}

/** Whether two narinfos lead to the same NAR bytes (same datalake, URL, hash and size). */
function sameNar(a: PathInfo, b: PathInfo): boolean {
  return a.datalake === b.datalake && a.narInfo.url === b.narInfo.url && a.narInfo.compression === b.narInfo.compression
    && a.narInfo.narSize === b.narInfo.narSize && hashEquals(a.narInfo.narHash, b.narInfo.narHash);
}

/**
 * The metadata cache keeps listings as text. A `.ls` that is UTF-8 is kept as its text (as
 * before names were bytes); one that is not (names that are not UTF-8) is kept as the
 * marker NUL + one char per byte, which no JSON text starts with.
 */
function listingToMeta(bytes: Buffer): string {
  return isUtf8(bytes) ? bytes.toString('utf8') : `\u0000${bytes.toString('latin1')}`;
}

/**
 * Verified bytes to keep until their commit: a view when they lie in a sealed buffer
 * (decoded frames, or a ranged body verified on a worker: sealed-buffers.ts), else a copy
 * (`bytes` may be a view into a buffer that another holder may reuse). A view keeps the
 * whole buffer until the commit of its file, which follows at once (staged files, chunk
 * writes), or for files kept longer (#along, frames only) until they are let go, the
 * bound counting the whole frame.
 */
function keepable(bytes: Buffer): Buffer {
  return isSealed(bytes.buffer) ? bytes : Buffer.from(bytes);
}

function listingFromMeta(text: string): Uint8Array | string {
  return text.startsWith('\u0000') ? Buffer.from(text.slice(1), 'latin1') : text;
}
