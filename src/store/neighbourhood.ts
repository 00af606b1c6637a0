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
 * Invariants: pure (no I/O); the result never holds the file itself, a file of another
 * directory, a file larger than `maxFileBytes`, or a file `isHeld` says is held; the sizes
 * of the result add up to at most `budgetBytes`; the scan looks at most `maxScan` files
 * each side (bounded work per miss).
 */
import type { IndexedFile, NarIndex } from '../nix/nar-index.js';
import type { NarNode } from '../nix/nar-listing.js';

export interface NeighbourOptions {
  /** Most bytes of neighbours (file sizes) fetched along with one miss. */
  budgetBytes: number;
  /** Files larger than this are not neighbours (read-ahead serves large files). */
  maxFileBytes: number;
  /** Whether the cache already holds (or is fetching) a file. */
  isHeld: (file: IndexedFile) => boolean;
  /** Files looked at each side of the missed one. Default 4096. */
  maxScan?: number;
}

const dirsByIndex = new WeakMap<NarIndex, Int32Array>();

/** The directory number of each of `idx.files` (same number: same parent directory). */
export function directoriesOf(idx: NarIndex): Int32Array {
  let dirs = dirsByIndex.get(idx);
  if (dirs) return dirs;
  const byOffset = new Map<number, number>();
  let next = 0;
  const walk = (node: NarNode, dir: number): void => {
    if (node.type === 'regular') {
      if (node.size > 0) byOffset.set(node.narOffset, dir);
      return;
    }
    if (node.type !== 'directory') return;
    const me = next++;
    for (const child of node.entries.values()) walk(child, me);
  };
  walk(idx.root, -1);
  dirs = new Int32Array(idx.files.length);
  idx.files.forEach((f, i) => {
    dirs![i] = byOffset.get(f.narOffset) ?? -1;
  });
  dirsByIndex.set(idx, dirs);
  return dirs;
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

/**
 * The small siblings of `file` (same directory) that are not held, nearest first in NAR
 * order (alternating sides by distance), until their sizes reach the budget. Returned in
 * NAR order.
 */
export function neighbours(idx: NarIndex, file: IndexedFile, o: NeighbourOptions): IndexedFile[] {
  const i = fileIndexOf(idx, file);
  if (i < 0 || o.budgetBytes <= 0) return [];
  const dirs = directoriesOf(idx);
  const dir = dirs[i]!;
  const files = idx.files;
  const maxScan = o.maxScan ?? 4096;
  const out: IndexedFile[] = [];
  let budget = o.budgetBytes;
  let l = i - 1;
  let r = i + 1;
  let scannedL = 0;
  let scannedR = 0;
  const okL = () => l >= 0 && scannedL < maxScan;
  const okR = () => r < files.length && scannedR < maxScan;
  while (budget > 0 && (okL() || okR())) {
    // The nearer side in NAR bytes goes first.
    const takeRight = !okL() || (okR() && files[r]!.narOffset - (file.narOffset + file.size) <= file.narOffset - (files[l]!.narOffset + files[l]!.size));
    const j = takeRight ? r++ : l--;
    if (takeRight) scannedR++;
    else scannedL++;
    const f = files[j]!;
    if (dirs[j] !== dir || f.size > o.maxFileBytes || o.isHeld(f)) continue;
    if (f.size > budget) {
      // Too big for what is left on this side: stop that side (nearer files came first).
      if (takeRight) r = files.length;
      else l = -1;
      continue;
    }
    budget -= f.size;
    out.push(f);
  }
  return out.sort((a, b) => a.narOffset - b.narOffset);
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
