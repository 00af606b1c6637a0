/**
 * CompactListing: a NAR listing (nar-listing.ts) held in a few typed arrays and one byte
 * buffer instead of one JS object per node, and read straight from `.ls` bytes without
 * building a JSON object tree (a 100,000-file listing is ~3 MB here against ~11 MB of
 * objects and Maps, and reading it allocates no object per node).
 *
 * Layout: node 0 is the root; node i has a kind (regular, executable regular, symlink,
 * directory) and two numbers `a`, `b`: regular = size, narOffset (0 when absent);
 * symlink = start and length of its target in `bytes`; directory = start and count of
 * its children in `kids`. A non-root node's name is `bytes[nameStart, nameStart+nameLen)`.
 * Names and targets are the raw bytes (byte strings at the API, as in nar-listing.ts).
 * Invariant: the children of a directory are in strictly increasing bytewise order of
 * their names (`find` is a binary search), and every name, target and depth obeys the
 * rules that `parseListingJson` checks.
 *
 * `readCompactListing` reads only the form Nix writes (`{"version":1,"root":…}` or a bare
 * node, "type" first in every node, the known keys of each type once each, entries
 * sorted, plain non-negative integers, no invalid name): on anything else it answers
 * undefined and the caller takes the general JSON.parse path, which decides (same result or
 * the same error). Strings are read as `parseListingJson` reads them: each raw byte is one
 * byte, `\uXXXX` of a code point >= 0x80 (or a surrogate pair) stands for its UTF-8 bytes.
 */
import type { NarNode } from './nar-listing.js';

export const K_REGULAR = 0;
export const K_EXECUTABLE = 1;
export const K_SYMLINK = 2;
export const K_DIRECTORY = 3;

const MAX_DEPTH = 64;
const MAX_NAME = 255;
const MAX_TARGET = 4095;

export class CompactListing {
  constructor(
    readonly kind: Uint8Array,
    readonly a: Float64Array,
    readonly b: Float64Array,
    readonly nameStart: Uint32Array,
    readonly nameLen: Uint8Array,
    readonly kids: Uint32Array,
    readonly bytes: Buffer,
  ) {}

  get count(): number {
    return this.kind.length;
  }

  isDirectory(i: number): boolean {
    return this.kind[i] === K_DIRECTORY;
  }

  /** Name of node i (not the root) as a byte string. */
  name(i: number): string {
    const s = this.nameStart[i]!;
    return this.bytes.toString('latin1', s, s + this.nameLen[i]!);
  }

  /** Target of symlink i as a byte string. */
  target(i: number): string {
    const s = this.a[i]!;
    return this.bytes.toString('latin1', s, s + this.b[i]!);
  }

  childCount(dir: number): number {
    return this.kind[dir] === K_DIRECTORY ? this.b[dir]! : 0;
  }

  /** The k-th child (bytewise order) of directory `dir`. */
  child(dir: number, k: number): number {
    return this.kids[this.a[dir]! + k]!;
  }

  /** The child of directory `dir` called `name` (a byte string), or -1. */
  find(dir: number, name: string): number {
    if (this.kind[dir] !== K_DIRECTORY) return -1;
    let lo = this.a[dir]!;
    let hi = lo + this.b[dir]! - 1;
    const bytes = this.bytes;
    const nlen = name.length;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.kids[mid]!;
      const s = this.nameStart[c]!;
      const len = this.nameLen[c]!;
      let cmp = 0;
      const m = len < nlen ? len : nlen;
      for (let j = 0; j < m; j++) {
        const d = bytes[s + j]! - name.charCodeAt(j);
        if (d !== 0) { cmp = d; break; }
      }
      if (cmp === 0) cmp = len - nlen;
      if (cmp === 0) return c;
      if (cmp < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Number of children of `dir` that are directories. */
  subdirs(dir: number): number {
    let n = 0;
    const end = this.a[dir]! + this.childCount(dir);
    for (let k = this.a[dir]!; k < end; k++) if (this.kind[this.kids[k]!] === K_DIRECTORY) n++;
    return n;
  }

  /**
   * The largest narOffset + size of a regular file (0 when there is none): checks a listing
   * against NarSize without walking it through NarNodes (which makes an object per entry).
   */
  maxFileEnd(): number {
    let max = 0;
    const { kind, a, b } = this;
    for (let i = 0; i < kind.length; i++) {
      if (kind[i]! <= K_EXECUTABLE && a[i]! + b[i]! > max) max = a[i]! + b[i]!;
    }
    return max;
  }

  /** Node i as a NarNode (a fresh object; directories are read lazily, see CompactDirectory). */
  node(i: number): NarNode {
    switch (this.kind[i]) {
      case K_REGULAR:
      case K_EXECUTABLE:
        return { type: 'regular', size: this.a[i]!, executable: this.kind[i] === K_EXECUTABLE, narOffset: this.b[i]! };
      case K_SYMLINK:
        return { type: 'symlink', target: this.target(i) };
      default:
        return new CompactDirectory(this, i);
    }
  }
}

/**
 * A directory of a CompactListing behind the NarDirectory interface: `entries` is built on
 * each access (a Map of fresh nodes, bytewise order) and not kept, so walking a listing
 * this way costs transient memory only. A walker reads `entries` once per directory and
 * looks children up in that Map: a look-up through `entries` per child builds the whole
 * Map each time (quadratic; test/unit/nix/nar-listing.test.ts counts the builds).
 */
export class CompactDirectory {
  readonly type = 'directory' as const;
  constructor(readonly listing: CompactListing, readonly index: number) {}

  get entries(): Map<string, NarNode> {
    const l = this.listing;
    const out = new Map<string, NarNode>();
    const n = l.childCount(this.index);
    for (let k = 0; k < n; k++) {
      const c = l.child(this.index, k);
      out.set(l.name(c), l.node(c));
    }
    return out;
  }
}

/** The CompactListing rooted at `node`: its own when `node` is a compact root, else built from the tree. */
export function compactOf(node: NarNode): CompactListing {
  if (node instanceof CompactDirectory && node.index === 0) return node.listing;
  const b = new Builder(64, 256);
  addTree(b, node);
  return b.finish();
}

function addTree(b: Builder, node: NarNode): number {
  switch (node.type) {
    case 'regular':
      return b.node(node.executable ? K_EXECUTABLE : K_REGULAR, node.size, node.narOffset);
    case 'symlink': {
      const start = b.bytesLen;
      b.ensureBytes(node.target.length);
      b.bytesLen += b.bytes.write(node.target, start, 'latin1');
      return b.node(K_SYMLINK, start, node.target.length);
    }
    case 'directory': {
      const i = b.node(K_DIRECTORY, 0, 0);
      // `entries` once: a CompactDirectory builds it on each access. (nar-listing.ts's
      // sortedEntries does the same; this module cannot import it: nar-listing imports it.)
      const entries = node.entries;
      const names = [...entries.keys()].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
      const kids: number[] = [];
      for (const name of names) {
        const start = b.bytesLen;
        b.ensureBytes(name.length);
        b.bytesLen += b.bytes.write(name, start, 'latin1');
        const c = addTree(b, entries.get(name)!);
        b.setName(c, start, name.length);
        kids.push(c);
      }
      b.setKids(i, kids);
      return i;
    }
  }
}

/** Growable arrays of a listing under construction. */
class Builder {
  kind: Uint8Array;
  a: Float64Array;
  b: Float64Array;
  nameStart: Uint32Array;
  nameLen: Uint8Array;
  kids: Uint32Array;
  bytes: Buffer;
  n = 0;
  kidsLen = 0;
  bytesLen = 0;

  constructor(nodes: number, bytes: number) {
    this.kind = new Uint8Array(nodes);
    this.a = new Float64Array(nodes);
    this.b = new Float64Array(nodes);
    this.nameStart = new Uint32Array(nodes);
    this.nameLen = new Uint8Array(nodes);
    this.kids = new Uint32Array(Math.max(1, nodes - 1)); // every node but the root is a child
    this.bytes = Buffer.allocUnsafe(bytes);
  }

  node(kind: number, a: number, b: number): number {
    if (this.n === this.kind.length) this.#grow();
    const i = this.n++;
    this.kind[i] = kind;
    this.a[i] = a;
    this.b[i] = b;
    return i;
  }

  setName(i: number, start: number, len: number): void {
    this.nameStart[i] = start;
    this.nameLen[i] = len;
  }

  setKids(dir: number, kids: number[]): void {
    while (this.kidsLen + kids.length > this.kids.length) this.kids = grow(this.kids, new Uint32Array(this.kids.length * 2));
    this.a[dir] = this.kidsLen;
    this.b[dir] = kids.length;
    for (const k of kids) this.kids[this.kidsLen++] = k;
  }

  ensureBytes(extra: number): void {
    if (this.bytesLen + extra <= this.bytes.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.bytes.length * 2, this.bytesLen + extra));
    this.bytes.copy(next, 0, 0, this.bytesLen);
    this.bytes = next;
  }

  #grow(): void {
    const cap = this.kind.length * 2;
    this.kind = grow(this.kind, new Uint8Array(cap));
    this.a = grow(this.a, new Float64Array(cap));
    this.b = grow(this.b, new Float64Array(cap));
    this.nameStart = grow(this.nameStart, new Uint32Array(cap));
    this.nameLen = grow(this.nameLen, new Uint8Array(cap));
  }

  /**
   * The listing, in arrays of exactly its size: arrays that are already full are used as
   * they are (no copy at the peak), the others are copied and their spare capacity let go.
   */
  finish(): CompactListing {
    const n = this.n;
    const bytes = Buffer.alloc(this.bytesLen);
    this.bytes.copy(bytes, 0, 0, this.bytesLen);
    const fit = <T extends Uint8Array | Uint32Array | Float64Array>(arr: T, len: number): T =>
      (arr.length === len ? arr : arr.slice(0, len)) as T;
    return new CompactListing(
      fit(this.kind, n), fit(this.a, n), fit(this.b, n), fit(this.nameStart, n),
      fit(this.nameLen, n), fit(this.kids, this.kidsLen), bytes,
    );
  }
}

function grow<T extends Uint8Array | Uint32Array | Float64Array>(from: T, to: T): T {
  to.set(from as never);
  return to;
}

// ---------------------------------------------------------------------------
// Reader of the `.ls` form Nix writes

const TYPE_KEY = Buffer.from('"type"', 'latin1');

/** Occurrences of `needle` in `hay` (native search). */
function countOf(hay: Uint8Array, needle: Buffer): number {
  const buf = Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength);
  let n = 0;
  for (let i = buf.indexOf(needle); i >= 0; i = buf.indexOf(needle, i + needle.length)) n++;
  return n;
}

/** Anything outside the form read here: the general parser decides. */
class Unusual extends Error {}
const UNUSUAL = new Unusual();

/** Reads `.ls` bytes in the form Nix writes; undefined when they are in any other form (or invalid). */
export function readCompactListing(input: Uint8Array): CompactListing | undefined {
  try {
    return new Reader(input).read();
  } catch (e) {
    if (e === UNUSUAL) return undefined;
    throw e;
  }
}

const Q = 0x22; // "
const BS = 0x5c; // backslash

class Reader {
  readonly #in: Uint8Array;
  #pos = 0;
  readonly #b: Builder;

  constructor(input: Uint8Array) {
    this.#in = input;
    // Node arrays sized once: every node has one "type" key, so its count bounds the nodes
    // (a name holding `"type"` only adds to it; JSON escapes its quotes as \", so the bound
    // is exact for Nix's listings), and every node but the root is a child. Names are ~10 %
    // of the JSON: start there and grow.
    const nodes = Math.max(1, countOf(input, TYPE_KEY));
    this.#b = new Builder(nodes, Math.max(256, Math.ceil(input.length / 8)));
  }

  read(): CompactListing {
    this.#ws();
    const open = this.#pos;
    this.#expect(0x7b);
    this.#ws();
    const key = this.#key();
    if (key === 'type') {
      this.#pos = open;
      this.#node(0);
    } else if (key === 'version' || key === 'root') {
      let version = false;
      let root = false;
      let k: string | undefined = key;
      for (;;) {
        if (k === 'version' && !version) {
          this.#ws();
          if (this.#in[this.#pos] !== 0x31) throw UNUSUAL;
          this.#pos++;
          this.#noNumberTail();
          version = true;
        } else if (k === 'root' && !root) {
          this.#node(0);
          root = true;
        } else {
          throw UNUSUAL;
        }
        this.#ws();
        if (this.#in[this.#pos] === 0x7d) { this.#pos++; break; }
        this.#expect(0x2c);
        this.#ws();
        k = this.#key();
      }
      if (!version || !root) throw UNUSUAL;
    } else {
      throw UNUSUAL;
    }
    this.#ws();
    if (this.#pos !== this.#in.length) throw UNUSUAL;
    return this.#b.finish();
  }

  /** One node object at depth `depth`; returns its index. */
  #node(depth: number): number {
    if (depth >= MAX_DEPTH) throw UNUSUAL;
    const b = this.#b;
    this.#ws();
    this.#expect(0x7b);
    this.#ws();
    if (this.#key() !== 'type') throw UNUSUAL;
    this.#ws();
    const type = this.#stringValue();
    if (type === 'regular') {
      let size = -1, offset = -1, exec = -1;
      while (this.#more()) {
        const k = this.#key();
        this.#ws();
        if (k === 'size' && size < 0) size = this.#uint();
        else if (k === 'narOffset' && offset < 0) offset = this.#uint();
        else if (k === 'executable' && exec < 0) exec = this.#bool();
        else throw UNUSUAL;
      }
      if (size < 0) throw UNUSUAL;
      if (offset <= 0) {
        if (size !== 0) throw UNUSUAL;
        offset = 0;
      }
      return b.node(exec === 1 ? K_EXECUTABLE : K_REGULAR, size, offset);
    }
    if (type === 'symlink') {
      let start = -1, len = 0;
      while (this.#more()) {
        const k = this.#key();
        this.#ws();
        if (k !== 'target' || start >= 0) throw UNUSUAL;
        start = b.bytesLen;
        len = this.#string();
        b.bytesLen += len;
        if (len === 0 || len > MAX_TARGET || b.bytes.subarray(start, start + len).includes(0)) throw UNUSUAL;
      }
      if (start < 0) throw UNUSUAL;
      return b.node(K_SYMLINK, start, len);
    }
    if (type === 'directory') {
      const i = b.node(K_DIRECTORY, 0, 0);
      let kids: number[] | undefined;
      while (this.#more()) {
        const k = this.#key();
        this.#ws();
        if (k !== 'entries' || kids !== undefined) throw UNUSUAL;
        kids = this.#entries(depth);
      }
      if (kids === undefined) throw UNUSUAL;
      b.setKids(i, kids);
      return i;
    }
    throw UNUSUAL;
  }

  /** The entries object of a directory at `depth`: its children's indices, checked in bytewise order. */
  #entries(depth: number): number[] {
    const b = this.#b;
    const kids: number[] = [];
    this.#expect(0x7b);
    this.#ws();
    if (this.#in[this.#pos] === 0x7d) { this.#pos++; return kids; }
    let prevStart = 0, prevLen = -1;
    for (;;) {
      this.#ws();
      const start = b.bytesLen;
      const len = this.#string();
      b.bytesLen += len;
      checkName(b.bytes, start, len);
      if (prevLen >= 0 && compareBytes(b.bytes, prevStart, prevLen, start, len) >= 0) throw UNUSUAL;
      this.#ws();
      this.#expect(0x3a);
      const c = this.#node(depth + 1);
      b.setName(c, start, len);
      kids.push(c);
      prevStart = start;
      prevLen = len;
      this.#ws();
      if (this.#in[this.#pos] === 0x7d) { this.#pos++; return kids; }
      this.#expect(0x2c);
    }
  }

  /** After a value: true and past the comma when another key follows, false and past `}` at the end. */
  #more(): boolean {
    this.#ws();
    const c = this.#in[this.#pos];
    if (c === 0x7d) { this.#pos++; return false; }
    this.#expect(0x2c);
    this.#ws();
    return true;
  }

  /** A key and its colon, as a string (decoded in the spare bytes, which are given back). */
  #key(): string {
    const b = this.#b;
    const start = b.bytesLen;
    const len = this.#string();
    const key = b.bytes.toString('latin1', start, start + len);
    this.#ws();
    this.#expect(0x3a);
    return key;
  }

  #stringValue(): string {
    const b = this.#b;
    const start = b.bytesLen;
    const len = this.#string();
    return b.bytes.toString('latin1', start, start + len);
  }

  /**
   * A JSON string at the current position, decoded into the builder's bytes from
   * `bytesLen` on (not counted: the caller adds the length to keep it). Returns its length.
   */
  #string(): number {
    const input = this.#in;
    if (input[this.#pos] !== Q) throw UNUSUAL;
    let end = input.indexOf(Q, this.#pos + 1);
    while (end > 0 && input[end - 1] === BS) end = input.indexOf(Q, end + 1);
    // Room for the string (never longer decoded than its JSON; a `\"` may hide the true end).
    this.#b.ensureBytes((end < 0 ? input.length : end) - this.#pos + 8);
    const out = this.#b.bytes;
    let o = this.#b.bytesLen;
    const o0 = o;
    let p = this.#pos + 1;
    for (;;) {
      const c = input[p++];
      if (c === undefined || c < 0x20) throw UNUSUAL;
      if (c === Q) break;
      if (c !== BS) { out[o++] = c; continue; }
      const e = input[p++];
      switch (e) {
        case Q: case BS: case 0x2f: out[o++] = e; break;
        case 0x62: out[o++] = 0x08; break;
        case 0x66: out[o++] = 0x0c; break;
        case 0x6e: out[o++] = 0x0a; break;
        case 0x72: out[o++] = 0x0d; break;
        case 0x74: out[o++] = 0x09; break;
        case 0x75: {
          let cp = hex4(input, p);
          p += 4;
          if (cp >= 0xd800 && cp <= 0xdbff && input[p] === BS && input[p + 1] === 0x75) {
            const lo = hex4(input, p + 2);
            if (lo < 0xdc00 || lo > 0xdfff) throw UNUSUAL;
            p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xd800 && cp <= 0xdfff) {
            throw UNUSUAL;
          }
          o = putUtf8(out, o, cp);
          break;
        }
        default:
          throw UNUSUAL;
      }
    }
    this.#pos = p;
    return o - o0;
  }

  /** A plain non-negative integer (no sign, fraction or exponent), a safe one. */
  #uint(): number {
    const input = this.#in;
    let p = this.#pos;
    const start = p;
    let n = 0;
    while (p < input.length && input[p]! >= 0x30 && input[p]! <= 0x39) n = n * 10 + (input[p++]! - 0x30);
    const len = p - start;
    if (len === 0 || (len > 1 && input[start] === 0x30) || len > 15) throw UNUSUAL;
    this.#pos = p;
    this.#noNumberTail();
    return n;
  }

  #noNumberTail(): void {
    const c = this.#in[this.#pos];
    if (c === 0x2e || c === 0x65 || c === 0x45 || (c !== undefined && c >= 0x30 && c <= 0x39)) throw UNUSUAL;
  }

  #bool(): number {
    const input = this.#in;
    const p = this.#pos;
    if (input[p] === 0x74 && input[p + 1] === 0x72 && input[p + 2] === 0x75 && input[p + 3] === 0x65) { this.#pos += 4; return 1; }
    if (input[p] === 0x66 && input[p + 1] === 0x61 && input[p + 2] === 0x6c && input[p + 3] === 0x73 && input[p + 4] === 0x65) { this.#pos += 5; return 0; }
    throw UNUSUAL;
  }

  #expect(c: number): void {
    if (this.#in[this.#pos] !== c) throw UNUSUAL;
    this.#pos++;
  }

  #ws(): void {
    const input = this.#in;
    let p = this.#pos;
    for (;;) {
      const c = input[p];
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
      else break;
    }
    this.#pos = p;
  }
}

function hex4(input: Uint8Array, p: number): number {
  let v = 0;
  for (let k = 0; k < 4; k++) {
    const c = input[p + k];
    let d: number;
    if (c === undefined) throw UNUSUAL;
    if (c >= 0x30 && c <= 0x39) d = c - 0x30;
    else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
    else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
    else throw UNUSUAL;
    v = v * 16 + d;
  }
  return v;
}

function putUtf8(out: Uint8Array, o: number, cp: number): number {
  if (cp < 0x80) {
    out[o++] = cp;
  } else if (cp < 0x800) {
    out[o++] = 0xc0 | (cp >> 6);
    out[o++] = 0x80 | (cp & 0x3f);
  } else if (cp < 0x10000) {
    out[o++] = 0xe0 | (cp >> 12);
    out[o++] = 0x80 | ((cp >> 6) & 0x3f);
    out[o++] = 0x80 | (cp & 0x3f);
  } else {
    out[o++] = 0xf0 | (cp >> 18);
    out[o++] = 0x80 | ((cp >> 12) & 0x3f);
    out[o++] = 0x80 | ((cp >> 6) & 0x3f);
    out[o++] = 0x80 | (cp & 0x3f);
  }
  return o;
}

/** A NAR entry name's rules (narNameProblem of nar-listing.ts); anything wrong is left to the general parser. */
function checkName(bytes: Uint8Array, start: number, len: number): void {
  if (len === 0 || len > MAX_NAME) throw UNUSUAL;
  if (bytes[start] === 0x2e && (len === 1 || (len === 2 && bytes[start + 1] === 0x2e))) throw UNUSUAL;
  for (let j = start; j < start + len; j++) {
    const c = bytes[j];
    if (c === 0x2f || c === 0) throw UNUSUAL;
  }
}

function compareBytes(bytes: Uint8Array, s1: number, l1: number, s2: number, l2: number): number {
  const m = l1 < l2 ? l1 : l2;
  for (let j = 0; j < m; j++) {
    const d = bytes[s1 + j]! - bytes[s2 + j]!;
    if (d !== 0) return d;
  }
  return l1 - l2;
}
