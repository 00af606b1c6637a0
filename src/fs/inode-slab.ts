/**
 * InodeSlab: the inode table of StoreFilesystem as parallel typed arrays (a slab), not a Map
 * of objects: a 100,000-file walk holds ~100,000 inodes, and an object of 6 fields plus a
 * Map entry each cost ~150 bytes of JS heap; here a live inode costs ~29 bytes of slot and
 * ~8 of index, outside the JS heap (array buffers).
 *
 * Layout: slot s holds one inode: `ino[s]` (its number, 0 = free slot), `root[s]` (an id
 * the caller gives, here the StoreRoot), `idx[s]` (node index in that root's listing),
 * `nlookup[s]`, `handles[s]`, `pinned[s]`. Free slots are chained through `idx` (head
 * `#free`, -1 = none). Slot 0 is never used.
 * Index: inode number -> slot by open addressing (linear probing) on an Int32Array of
 * slots (0 = empty; the number is compared through `ino[slot]`), at most half full: 8
 * bytes per slot. Removal shifts the following run back (no tombstones), so a lookup never
 * walks over dead entries.
 *
 * Invariants:
 * - A number is in the index exactly while its slot is live; `slotOf` of any other number
 *   (never allocated, or freed, whatever slot it had) is -1. Numbers are the caller's:
 *   StoreFilesystem never reuses one within a mount, so a stale number can never reach
 *   another inode even when its slot was reused.
 * - Slots are internal: callers keep numbers, not slots, across calls that may allocate
 *   or free (`alloc` may grow, `free` may compact: slots move, numbers do not).
 * - Memory follows the live count: the arrays double when full and are compacted to twice
 *   the live count when it falls to a quarter of the capacity (at least MIN_CAP slots), so
 *   after the kernel forgets a walk the old buffers become garbage.
 */

const MIN_CAP = 1024;

export class InodeSlab {
  #cap = 0;
  #ino!: Float64Array;
  #root!: Int32Array;
  #idx!: Int32Array;
  #nlookup!: Float64Array;
  #handles!: Int32Array;
  #pinned!: Uint8Array;
  /** Slots ever handed out below this (fresh slots are taken from here up). */
  #top = 1;
  #free = -1;
  #live = 0;
  /** The index: slot of each entry, 0 = empty. */
  #index!: Int32Array;
  #mask = 0;

  constructor(capacity = MIN_CAP) {
    this.#alloc(Math.max(MIN_CAP, pow2(capacity)));
  }

  /** Live inodes. */
  get size(): number {
    return this.#live;
  }

  /** Slots the arrays have room for (for memory tests and metrics). */
  get capacity(): number {
    return this.#cap;
  }

  /** Bytes of the arrays (slots and index). */
  get bytes(): number {
    return this.#cap * 29 + this.#index.length * 4;
  }

  /** The slot of inode `ino`, or -1. */
  slotOf(ino: number): number {
    if (ino <= 0) return -1;
    const index = this.#index;
    const inos = this.#ino;
    const mask = this.#mask;
    for (let h = hash(ino) & mask; ; h = (h + 1) & mask) {
      const s = index[h]!;
      if (s === 0) return -1;
      if (inos[s] === ino) return s;
    }
  }

  has(ino: number): boolean {
    return this.slotOf(ino) >= 0;
  }

  /** Adds inode `ino` (not live) and returns its slot. */
  alloc(ino: number, root: number, idx: number, pinned: boolean): number {
    if (this.slotOf(ino) >= 0) throw new Error(`inode ${ino} is already in the table`);
    let s = this.#free;
    if (s >= 0) {
      this.#free = this.#idx[s]!;
    } else {
      if (this.#top >= this.#cap) this.#resize(this.#cap * 2);
      s = this.#top++;
    }
    this.#ino[s] = ino;
    this.#root[s] = root;
    this.#idx[s] = idx;
    this.#nlookup[s] = 0;
    this.#handles[s] = 0;
    this.#pinned[s] = pinned ? 1 : 0;
    this.#insert(ino, s);
    this.#live++;
    return s;
  }

  /** Removes inode `ino`; false when it was not live. May compact (slots move). */
  free(ino: number): boolean {
    const s = this.slotOf(ino);
    if (s < 0) return false;
    this.#remove(ino, s);
    this.#ino[s] = 0;
    this.#root[s] = -1;
    this.#idx[s] = this.#free;
    this.#free = s;
    this.#live--;
    if (this.#cap > MIN_CAP && this.#live * 4 <= this.#cap) this.#resize(Math.max(MIN_CAP, pow2(this.#live * 2)));
    return true;
  }

  ino(s: number): number { return this.#ino[s]!; }
  root(s: number): number { return this.#root[s]!; }
  idx(s: number): number { return this.#idx[s]!; }
  nlookup(s: number): number { return this.#nlookup[s]!; }
  setNlookup(s: number, n: number): void { this.#nlookup[s] = n; }
  handles(s: number): number { return this.#handles[s]!; }
  setHandles(s: number, n: number): void { this.#handles[s] = n; }
  pinned(s: number): boolean { return this.#pinned[s] === 1; }
  setPinned(s: number, p: boolean): void { this.#pinned[s] = p ? 1 : 0; }

  #alloc(cap: number): void {
    this.#cap = cap;
    this.#ino = new Float64Array(cap);
    this.#root = new Int32Array(cap);
    this.#idx = new Int32Array(cap);
    this.#nlookup = new Float64Array(cap);
    this.#handles = new Int32Array(cap);
    this.#pinned = new Uint8Array(cap);
    this.#index = new Int32Array(cap * 2);
    this.#mask = cap * 2 - 1;
  }

  /** New arrays of `cap` slots holding the live inodes packed from slot 1 (slots move). */
  #resize(cap: number): void {
    const ino = this.#ino, root = this.#root, idx = this.#idx;
    const nl = this.#nlookup, hd = this.#handles, pn = this.#pinned, top = this.#top;
    this.#alloc(cap);
    let t = 1;
    for (let s = 1; s < top; s++) {
      if (ino[s] === 0) continue;
      this.#ino[t] = ino[s]!;
      this.#root[t] = root[s]!;
      this.#idx[t] = idx[s]!;
      this.#nlookup[t] = nl[s]!;
      this.#handles[t] = hd[s]!;
      this.#pinned[t] = pn[s]!;
      this.#insert(ino[s]!, t);
      t++;
    }
    this.#top = t;
    this.#free = -1;
  }

  #insert(ino: number, s: number): void {
    const index = this.#index;
    const mask = this.#mask;
    let h = hash(ino) & mask;
    while (index[h] !== 0) h = (h + 1) & mask;
    index[h] = s;
  }

  /**
   * Removes entry (ino, slot s) from the index, shifting back the rest of its run (Knuth
   * 6.4 Algorithm R). Runs before `ino[s]` is cleared (homes are computed from `ino`).
   */
  #remove(ino: number, s: number): void {
    const index = this.#index, inos = this.#ino, mask = this.#mask;
    let i = hash(ino) & mask;
    while (index[i] !== s) i = (i + 1) & mask;
    let j = i;
    for (;;) {
      index[i] = 0;
      for (;;) {
        j = (j + 1) & mask;
        if (index[j] === 0) return;
        const home = hash(inos[index[j]!]!) & mask;
        // Entry j may move to hole i when its home is not cyclically in (i, j].
        if (i <= j ? home <= i || home > j : home <= i && home > j) break;
      }
      index[i] = index[j]!;
      i = j;
    }
  }
}

/** Fibonacci hashing of an integer number up to 2^53 (both 32-bit halves). */
function hash(n: number): number {
  const h = Math.imul((n | 0) ^ Math.imul((n / 4294967296) | 0, 0x85ebca6b), 0x9e3779b1);
  return (h ^ (h >>> 15)) >>> 0;
}

function pow2(n: number): number {
  let c = 1;
  while (c < n) c *= 2;
  return c;
}
