/**
 * Neighbourhood of a file in an indexed store path: which other files to fetch together
 * with a file that missed, and the directory of every file.
 *
 * NAR order is depth-first in bytewise name order (`dumpPath`, src/libutil/archive.cc), so
 * the regular files of one directory are adjacent in the NAR, interrupted only by the
 * contents of its subdirectories. A program that opens one file of a directory (a module,
 * a header) very often opens its siblings next; on a remote datalake each such open is a
 * round trip. `neighbours` picks the not-yet-held small siblings nearest to the missed file
 * in NAR order, until their bytes reach a budget (about what the link carries in one round
 * trip), so that the caller can fetch them in the same few ranged requests.
 *
 * Which siblings (bench scenario 9: a program reading a directory's small files skips its
 * large ones; scenario 1: interpreters load modules of every size):
 * - Reach grows with what the store path has shown: a sibling may be as large as the
 *   largest file that missed in the path so far (at least NEIGHBOUR_START_FILE_BYTES, at
 *   most `maxFileBytes`). While a path is read only in small files (pages of a doc path),
 *   only small siblings come along; once a large file of it has been read (a module of an
 *   interpreter's library), large siblings come along in all its directories. Per
 *   directory instead, scenario 1 missed 41 more files than before (every package
 *   directory of Python's library started small again) and took 0.3-0.5 s longer.
 * - Unframed NARs (plain HTTP Range): the chunk fetcher lets up to `gapBytes` unwanted NAR
 *   bytes sit between two files of one request (chunk-fetcher.ts fetchRegion). The caller
 *   fetches each side of the missed file in a region of its own (one region would bridge
 *   the missed file's own request in flight and fetch its bytes twice), so the first
 *   sibling taken on a side bridges nothing. A later sibling is skipped when taking it
 *   would put more than twice the reach of unwanted bytes (the larger siblings it skips)
 *   into a gap the fetcher bridges after the previous one of its side; a sibling beyond
 *   `gapBytes`, or past a file held or coming, starts a request of its own and costs no
 *   gap (`neighbourRegions` splits the fetch at the missed file and at such files: the
 *   fetcher joins a chunk in flight but bridges the bytes around it, fetching them again). The files lying wholly inside
 *   such a bridged gap (between two siblings of one side) are fetched anyway: they join the
 *   result whatever their directory, if no larger than `maxFileBytes` (should the fetcher
 *   split the request there, `maxRequestBytes`, such a file costs its bytes). Seekable
 *   NARs: the frames a request decodes bring every file inside them along already, so
 *   neither rule applies.
 *
 * Subtrees (`noteSubtreeMiss`, `subtreeFiles`): a program that has missed files in several
 * subdirectories of one directory (an interpreter importing packages of its library:
 * `encodings/`, `json/`, `re/` of python3.11; a compiler following `bits/`, `sys/`,
 * `gnu/` of an include directory) goes on into its other subdirectories, each new one a
 * round trip for its first file, which no sibling rule can foresee (bench scenario 1: the
 * first file of a new directory was about half of its ~110 sequential round trips). Once
 * SUBTREE_MIN_CHILDREN distinct subdirectories of a directory have missed, the small files
 * of its whole subtree (contiguous in NAR order) are worth fetching at once, if they add up
 * to no more than a budget (a subtree larger than that, e.g. all of `include/`, is left to
 * the other rules). Only misses the reader jumped to count: one before the path's previous
 * miss in NAR order, or after it past a small file (within the reach) neither held nor
 * coming, which the reader left unread. A reader going through a tree in order, reading
 * its small files (bench scenario 9: the doc path's small files in path order, stopping at
 * 5 % of the closure) is served by the sibling and walk rules; counting its directories
 * fetched the doc files past where it stopped (fetched/read 1.48 -> 1.62).
 *
 * Invariants: no I/O; the only state is per index (WeakMaps on the index): its largest miss
 * (raised by `noteMiss` alone), its previous miss and, per directory, the subdirectories
 * that missed or the reach its subtree was chosen at (`noteSubtreeMiss` alone; a directory
 * is chosen again only at twice that reach, so at most log2(maxFileBytes / 16 KiB) + 1
 * times); `neighbours` and `subtreeFiles` are read-only; the result never holds
 * the missed file (by narOffset) or a file `isHeld` says is held; apart from files inside
 * a bridged gap of one side (unframed only, each at most `maxFileBytes`), it holds only
 * files of the missed file's directory no larger than the reach, whose sizes add up to at
 * most `budgetBytes`; the scan looks at most `maxScan` files each side (bounded work per
 * miss).
 */
import type { IndexedFile, NarIndex } from '../nix/nar-index.js';
import type { NarNode } from '../nix/nar-listing.js';
import { DEFAULT_GAP_BYTES } from './chunk-fetcher.js';

export interface NeighbourOptions {
  /** Most bytes of neighbours (file sizes) fetched along with one miss. */
  budgetBytes: number;
  /** Files larger than this are not neighbours (read-ahead serves large files). */
  maxFileBytes: number;
  /** Whether the cache already holds (or is fetching) a file. */
  isHeld: (file: IndexedFile) => boolean;
  /** Files looked at each side of the missed one. Default 4096. */
  maxScan?: number;
  /**
   * Unwanted NAR bytes the fetcher lets sit between two files of one request (its
   * RegionOptions.gapBytes for this fetch). Default the fetcher's, DEFAULT_GAP_BYTES.
   */
  gapBytes?: number;
}

/** Whether `idx` maps a seekable NAR's frames (a ranged read decodes whole frames). */
export function isFramed(idx: NarIndex): boolean {
  return idx.frames !== undefined && idx.frames.narOffsets.length > 0;
}

/** A path's reach before any file of it larger than this has missed. */
export const NEIGHBOUR_START_FILE_BYTES = 16 * 1024;
/**
 * Unwanted bytes (in reaches) a neighbour may bridge in one request. Bench probe, none
 * datalake: 1 gave scenario 9 fetched/read 1.47 but scenario 1 about 0.3 s more than
 * without the rule; no rule 1.55; 2 gave 1.50 and scenario 1 as without it.
 */
const GAP_REACHES = 2;

/** Per index: the largest file that missed in it. */
const largestMissByIndex = new WeakMap<NarIndex, number>();

/**
 * A store path's directories, numbered in NAR order (0: the root directory): each one's
 * parent (-1 for the root) and the range [start, end) of `idx.files` in its subtree (NAR
 * order is depth-first, so a subtree's files are contiguous; start = end: no file).
 */
export interface DirectoryTree { parent: Int32Array; start: Int32Array; end: Int32Array }

const dirsByIndex = new WeakMap<NarIndex, { dirs: Int32Array; tree: DirectoryTree }>();

function directoryTables(idx: NarIndex): { dirs: Int32Array; tree: DirectoryTree } {
  let t = dirsByIndex.get(idx);
  if (t) return t;
  const byOffset = new Map<number, number>();
  const parents: number[] = [];
  const walk = (node: NarNode, dir: number): void => {
    if (node.type === 'regular') {
      if (node.size > 0) byOffset.set(node.narOffset, dir);
      return;
    }
    if (node.type !== 'directory') return;
    const me = parents.length;
    parents.push(dir);
    for (const child of node.entries.values()) walk(child, me);
  };
  walk(idx.root, -1);
  const dirs = new Int32Array(idx.files.length);
  const parent = Int32Array.from(parents);
  const start = new Int32Array(parent.length).fill(idx.files.length);
  const end = new Int32Array(parent.length);
  idx.files.forEach((f, i) => {
    const d = byOffset.get(f.narOffset) ?? -1;
    dirs[i] = d;
    for (let a = d; a >= 0; a = parent[a]!) {
      if (i < start[a]!) start[a] = i;
      if (i + 1 > end[a]!) end[a] = i + 1;
    }
  });
  for (let a = 0; a < start.length; a++) if (start[a]! > end[a]!) start[a] = end[a]!;
  t = { dirs, tree: { parent, start, end } };
  dirsByIndex.set(idx, t);
  return t;
}

/** The directory number of each of `idx.files` (same number: same parent directory). */
export function directoriesOf(idx: NarIndex): Int32Array {
  return directoryTables(idx).dirs;
}

/** The directories of `idx` as a tree (see DirectoryTree). */
export function directoryTreeOf(idx: NarIndex): DirectoryTree {
  return directoryTables(idx).tree;
}

/** Subdirectories of one directory that must have missed before its subtree is fetched. */
export const SUBTREE_MIN_CHILDREN = 3;

/**
 * Per index and directory: its subdirectories that missed, or, once its subtree was
 * chosen, the reach it was chosen at.
 */
const subtreeMissesByIndex = new WeakMap<NarIndex, Map<number, Set<number> | { reach: number }>>();
/** Per index: the position in `idx.files` of its previous miss (noteSubtreeMiss). */
const lastMissByIndex = new WeakMap<NarIndex, number>();
/** Files looked at between two misses to tell a jump; farther apart counts as one. */
const JUMP_SCAN = 4096;

/**
 * Whether a reader whose previous miss in `idx` was at position `from` jumped to `to`:
 * backwards, or forwards past a file of at most `reach` bytes that `isHeld` says is
 * neither held nor coming (one it left unread).
 */
export function jumpedTo(idx: NarIndex, from: number | undefined, to: number, reach: number, isHeld: (f: IndexedFile) => boolean): boolean {
  if (from === undefined || to <= from) return true;
  if (to - from > JUMP_SCAN) return true;
  for (let j = from + 1; j < to; j++) {
    const f = idx.files[j]!;
    if (f.size <= reach && !isHeld(f)) return true;
  }
  return false;
}

/**
 * Notes a miss of `idx.files[i]` for the subtree rule (see the header). A miss the reader
 * jumped to (`jumpedTo`, from the previous one) tells every directory above the file's own
 * which of its subdirectories missed. Returns the nearest such directory that has now
 * seen SUBTREE_MIN_CHILDREN subdirectories miss and was not chosen before, or one chosen
 * before at half the path's reach or less (the reader has since missed larger files: its
 * subtree's files up to the new reach are worth as much), or undefined. A directory
 * returned counts as chosen at the current reach, whether or not its files then fit a
 * budget.
 */
export function noteSubtreeMiss(idx: NarIndex, i: number, maxFileBytes: number, isHeld: (f: IndexedFile) => boolean): number | undefined {
  const from = lastMissByIndex.get(idx);
  lastMissByIndex.set(idx, i);
  const reach = reachOf(idx, maxFileBytes);
  if (!jumpedTo(idx, from, i, reach, isHeld)) return undefined;
  const { dirs, tree } = directoryTables(idx);
  let seen = subtreeMissesByIndex.get(idx);
  if (!seen) {
    seen = new Map();
    subtreeMissesByIndex.set(idx, seen);
  }
  let chosen: number | undefined;
  for (let child = dirs[i] ?? -1, a = child >= 0 ? tree.parent[child]! : -1; a >= 0; child = a, a = tree.parent[a]!) {
    let s = seen.get(a);
    if (s !== undefined && !(s instanceof Set)) {
      if (chosen === undefined && reach >= 2 * s.reach) {
        s.reach = reach;
        chosen = a;
      }
      continue;
    }
    if (!s) {
      s = new Set();
      seen.set(a, s);
    }
    s.add(child);
    if (chosen === undefined && s.size >= SUBTREE_MIN_CHILDREN) {
      seen.set(a, { reach });
      chosen = a;
    }
  }
  return chosen;
}

/**
 * The files of directory `dir`'s subtree that are no larger than the path's reach (as for
 * neighbours, at most `maxFileBytes`) and not held, in NAR order; undefined when their
 * sizes add up to more than `budgetBytes` (too large a subtree to fetch on a guess). Not
 * larger files on a guess: a rule that took the largest size that fit the budget fetched
 * a reader of small doc files (scenario 9) the large files of the directories it had
 * read (1.48 -> 1.50 fetched/read); files larger than what missed so far come once the
 * reach has grown (noteSubtreeMiss chooses the directory again).
 */
export function subtreeFiles(idx: NarIndex, dir: number, o: { budgetBytes: number; maxFileBytes: number; isHeld: (f: IndexedFile) => boolean }): IndexedFile[] | undefined {
  const { tree } = directoryTables(idx);
  const reach = reachOf(idx, o.maxFileBytes);
  const out: IndexedFile[] = [];
  let bytes = 0;
  for (let j = tree.start[dir]!; j < tree.end[dir]!; j++) {
    const f = idx.files[j]!;
    if (f.size > reach || o.isHeld(f)) continue;
    bytes += f.size;
    if (bytes > o.budgetBytes) return undefined;
    out.push(f);
  }
  return out;
}

/** The position of `file` in `idx.files` (sorted by narOffset), or -1. */
export function fileIndexOf(idx: NarIndex, file: IndexedFile): number {
  const files = idx.files;
  let lo = 0;
  let hi = files.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const at = files[mid]!.narOffset;
    if (at === file.narOffset) return mid;
    if (at < file.narOffset) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** The position of the first of `files` (sorted by narOffset) at or after NAR byte `at`. */
function firstFileFrom(files: readonly IndexedFile[], at: number): number {
  let lo = 0;
  let hi = files.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (files[mid]!.narOffset < at) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether a file `isHeld` says is held (or coming) starts in NAR bytes [a, b). */
function heldWithin(files: readonly IndexedFile[], a: number, b: number, isHeld: (f: IndexedFile) => boolean): boolean {
  for (let j = firstFileFrom(files, a); j < files.length && files[j]!.narOffset < b; j++) if (isHeld(files[j]!)) return true;
  return false;
}

/**
 * Notes that a file of `size` bytes missed in `idx` (every miss, also of a file too large
 * to bring neighbours, or one whose neighbours are not fetched): the path's reach grows.
 */
export function noteMiss(idx: NarIndex, size: number): void {
  if (size > (largestMissByIndex.get(idx) ?? 0)) largestMissByIndex.set(idx, size);
}

/** How large a neighbour may be in `idx` now. */
function reachOf(idx: NarIndex, maxFileBytes: number): number {
  return Math.min(maxFileBytes, Math.max(NEIGHBOUR_START_FILE_BYTES, largestMissByIndex.get(idx) ?? 0));
}

/**
 * The small siblings of `file` (same directory) that are not held, nearest first in NAR
 * order (alternating sides by distance), within the path's reach and the gap rule,
 * until their sizes reach the budget; plus the files inside bridged gaps (unframed).
 * Returned in NAR order. Read-only: the caller notes the miss (`noteMiss`).
 */
export function neighbours(idx: NarIndex, file: IndexedFile, o: NeighbourOptions): IndexedFile[] {
  const i = fileIndexOf(idx, file);
  if (i < 0 || o.budgetBytes <= 0) return [];
  const dirs = directoriesOf(idx);
  const dir = dirs[i]!;
  const files = idx.files;
  const maxScan = o.maxScan ?? 4096;
  const reach = reachOf(idx, o.maxFileBytes);
  const framed = isFramed(idx);
  const gap = Math.max(0, o.gapBytes ?? DEFAULT_GAP_BYTES);
  const out: IndexedFile[] = [];
  let budget = o.budgetBytes;
  let l = i - 1;
  let r = i + 1;
  let scannedL = 0;
  let scannedR = 0;
  // Where the nearest taken file of a side ends (right) / starts (left): the gap a new one
  // bridges. None yet: the first file of a side starts a request of its own (the missed
  // file's request is not the neighbours'), so it bridges nothing.
  let lastR: number | undefined;
  let lastL: number | undefined;
  // Per side, in NAR order: [end of one taken file, start of the next] bridged by the fetcher.
  const bridged: Array<[number, number]> = [];
  const okL = () => l >= 0 && scannedL < maxScan;
  const okR = () => r < files.length && scannedR < maxScan;
  while (budget > 0 && (okL() || okR())) {
    // The nearer side in NAR bytes goes first.
    const takeRight = !okL() || (okR() && files[r]!.narOffset - (file.narOffset + file.size) <= file.narOffset - (files[l]!.narOffset + files[l]!.size));
    const j = takeRight ? r++ : l--;
    if (takeRight) scannedR++;
    else scannedL++;
    const f = files[j]!;
    if (dirs[j] !== dir || f.size > reach || o.isHeld(f)) continue;
    // The gap to the previous file taken on this side: bridged by the fetcher when at most
    // `gap` bytes and holding no held file (neighbourRegions splits the fetch there).
    const last = takeRight ? lastR : lastL;
    const [a, b] = takeRight ? [last ?? -1, f.narOffset] : [f.narOffset + f.size, last ?? -1];
    const unwanted = framed || last === undefined || b - a > gap || heldWithin(files, a, b, o.isHeld) ? Infinity : b - a;
    if (unwanted !== Infinity && unwanted > GAP_REACHES * reach) continue;
    if (f.size > budget) {
      // Too big for what is left on this side: stop that side (nearer files came first).
      if (takeRight) r = files.length;
      else l = -1;
      continue;
    }
    budget -= f.size;
    out.push(f);
    if (unwanted !== Infinity) bridged.push([a, b]);
    if (takeRight) lastR = f.narOffset + f.size;
    else lastL = f.narOffset;
  }
  out.sort((a, b) => a.narOffset - b.narOffset);
  if (framed || bridged.length === 0) return out;
  // The files wholly inside a gap the fetcher bridges come with the request anyway; not
  // one larger than a neighbour may be (should the fetcher split the request there, it
  // costs its bytes).
  const inGaps: IndexedFile[] = [];
  for (const [end, next] of bridged) {
    for (let j = firstFileFrom(files, end); j < files.length && files[j]!.narOffset < next; j++) {
      const f = files[j]!;
      if (f.narOffset + f.size <= next && f.size <= o.maxFileBytes && f.narOffset !== file.narOffset && !o.isHeld(f)) inGaps.push(f);
    }
  }
  return inGaps.length === 0 ? out : [...out, ...inGaps].sort((a, b) => a.narOffset - b.narOffset);
}

/**
 * `near` (neighbours of `file`, in NAR order) split into the groups to fetch as regions of
 * their own: a region never spans the missed file (its own request is in flight) nor a
 * file `isHeld` says is held or coming, within `gapBytes` of NAR bytes, which the fetcher
 * would bridge and so fetch a second time (chunk-fetcher.ts fetchRegion joins a chunk in
 * flight but still bridges the bytes around it).
 */
export function neighbourRegions(idx: NarIndex, file: IndexedFile, near: readonly IndexedFile[], isHeld: (f: IndexedFile) => boolean, gapBytes = DEFAULT_GAP_BYTES): IndexedFile[][] {
  const out: IndexedFile[][] = [];
  let prev: IndexedFile | undefined;
  for (const f of near) {
    const a = prev ? prev.narOffset + prev.size : 0;
    const apart = prev === undefined || (prev.narOffset < file.narOffset) !== (f.narOffset < file.narOffset)
      || (f.narOffset - a <= gapBytes && heldWithin(idx.files, a, f.narOffset, isHeld));
    if (apart) out.push([f]);
    else out[out.length - 1]!.push(f);
    prev = f;
  }
  return out;
}

/**
 * The NAR bytes [start, end) of the seekable frames that hold NAR bytes [a, b) of `idx`
 * (undefined without frames). A ranged read of [a, b) decodes these frames whole, and the
 * chunk fetcher hands every file inside them over: neighbours there need no request.
 */
export function frameSpan(idx: NarIndex, a: number, b: number): { start: number; end: number } | undefined {
  const fr = idx.frames;
  if (!fr || fr.narOffsets.length === 0) return undefined;
  const at = (x: number): number => {
    let lo = 0;
    let hi = fr.narOffsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (fr.narOffsets[mid]! <= x) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const j = at(Math.max(a, b - 1));
  return { start: fr.narOffsets[at(a)]!, end: j + 1 < fr.narOffsets.length ? fr.narOffsets[j + 1]! : idx.narSize };
}
