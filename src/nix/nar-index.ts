/**
 * The narfs index of a store path (`<hashPart>.narfs-index`, beside its `.narinfo`): the
 * NAR's tree, the SHA-256 of every regular file and of each of its chunks, optionally the
 * frame table of a seekable zstd NAR, and ed25519 signatures over all of it.
 *
 * Why it exists: a Nix signature covers only the whole NAR's hash (`ValidPathInfo::
 * fingerprint` in src/libstore/path-info.cc), so a part of a NAR cannot be verified
 * against it. The index is signed by the same keys, in the same `name:base64` form, over a
 * fingerprint that binds it to the narinfo:
 *
 *   narfs-index-1;<full store path>;sha256:<nix32 NarHash>;<NarSize>;sha256:<nix32 of the body>
 *
 * A narinfo fingerprint starts with `1;`, so neither kind of signature can pass as the
 * other. The body hash covers the whole tree (names, types, executable bits, sizes, symlink
 * targets), every file and chunk hash, the chunk size and the frame table.
 *
 * Byte format (all integers are unsigned LEB128 varints, minimal, at most 2^53 - 1):
 *
 *   body:
 *     magic      8 bytes "NARFSIX\x01"
 *     storePath  varint length ‖ bytes (a valid full store path)
 *     narHash    32 bytes (SHA-256 digest)
 *     narSize    varint
 *     chunkLog2  1 byte, 16..22 (chunk size 64 KiB..4 MiB)
 *     flags      1 byte: bit 0 = frame table present; bit 1 = whole-file hashes only (a
 *                local tree made from a whole verified NAR: no chunk hashes; never
 *                valid in a published index); other bits 0
 *     root       node
 *     [frames]   fileHash 32 bytes (SHA-256) ‖ fileSize varint ‖ count varint (>= 1) ‖
 *                count - 1 pairs (narDelta varint > 0, fileDelta varint > 0); frame 0
 *                starts at 0/0, frame i at the sums of the deltas; every frame non-empty
 *   signatures:  count varint ‖ count × (varint length ‖ ASCII `name:base64`), strictly
 *                ascending, no duplicates
 *   and nothing after.
 *
 *   node := 0x00 regular ‖ size varint ‖ hashes
 *         | 0x01 executable regular ‖ size varint ‖ hashes
 *         | 0x02 symlink ‖ varint length ‖ target bytes
 *         | 0x03 directory ‖ count varint ‖ count × (varint length ‖ name bytes ‖ node)
 *   hashes (only when size > 0) := sha256 32 bytes ‖ (chunkCount > 1 and not whole-file
 *   hashes only ? chunkCount × 32 bytes)
 *   (a file of one chunk has one chunk hash: the file's SHA-256, stored once)
 *
 * Names and symlink targets are bytes (byte strings in memory, as in nar-listing.ts), obey
 * the NAR rules, and entries are strictly ascending bytewise. Offsets are not stored: the
 * NAR serialisation is a function of the tree (`dumpPath` in src/libutil/archive.cc), so
 * the parser computes every file's `narOffset` and the NAR's size from the tree and
 * rejects an index whose narSize differs. `files` is every regular file of size > 0 in
 * NAR order (= tree order), hence sorted by narOffset and non-overlapping.
 *
 * Invariants: parseNarIndex is strict and bounds-checked (every malformed or truncated
 * input, trailing bytes included, throws ERR_INDEX_PARSE, never allocates more than the
 * input's size); encodeNarIndex(parseNarIndex(b)) = b.
 */

import { createHash } from 'node:crypto';

import { NarfsError } from '../errors.js';
import { formatHash, hashEquals, type Hash } from './hash.js';
import {
  NAR_MAX_DEPTH,
  narNameProblem,
  narTargetProblem,
  sortedEntries,
  type NarDirectory,
  type NarNode,
  type NarRegular,
} from './nar-listing.js';
import { NAR_MAGIC } from './nar-parser.js';
import type { NarInfo } from './narinfo.js';
import { signFingerprint, verifySignature, type PublicKey, type SecretKey } from './signature.js';
import { encodeNix32 } from './nix32.js';
import { parseStorePath, storePathFull } from './store-path.js';

export interface IndexedFile {
  /** Of the first content byte in the uncompressed NAR (as in .ls). */
  narOffset: number;
  size: number;
  /** 32 bytes: SHA-256 of the whole file contents (the cache key). */
  sha256: Buffer;
  /**
   * 32 * chunkCount(size) bytes: SHA-256 of each chunk. Empty for a file of more than one
   * chunk in an index of whole-file hashes only (`wholeOnly`): no chunk of it matches.
   */
  chunkHashes: Buffer;
}

export interface SeekableFrames {
  /** FileHash of the seekable .nar.zst this table maps (must equal the narinfo's). */
  fileHash: Hash;
  fileSize: number;
  /** Frame i covers NAR bytes [narOffsets[i], narOffsets[i+1]) (last: to NarSize). */
  narOffsets: number[];
  /** ... and compressed bytes [fileOffsets[i], fileOffsets[i+1]) (last: to fileSize). */
  fileOffsets: number[];
}

export interface NarIndex {
  /** Full path /nix/store/<hash>-<name>. */
  storePath: string;
  /** sha256. */
  narHash: Hash;
  narSize: number;
  /** Power of two, 64 KiB..4 MiB. */
  chunkSize: number;
  /** The whole tree (names, types, executable, sizes, narOffsets, symlink targets). */
  root: NarNode;
  /** Every regular file with size > 0, sorted by narOffset (NAR order). */
  files: IndexedFile[];
  frames?: SeekableFrames;
  /**
   * Whole-file hashes only, no chunk hashes (a tree made from a whole verified NAR, whose
   * files are committed whole: hashing each chunk too was a third pass over its bytes on
   * the way to its first read). Such an index serves no ranged read, and a published one
   * is refused (verifyNarIndex).
   */
  wholeOnly?: boolean;
  /** "keyname:base64". */
  signatures: string[];
}

export const NAR_INDEX_MAGIC = Buffer.from('NARFSIX\x01', 'latin1');
export const NAR_INDEX_FINGERPRINT_PREFIX = 'narfs-index-1;';
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;
/** The file suffix beside `<hashPart>.narinfo`. */
export const NAR_INDEX_SUFFIX = '.narfs-index';

const MIN_CHUNK_LOG2 = 16;
const MAX_CHUNK_LOG2 = 22;
const FLAG_FRAMES = 1;
const FLAG_WHOLE_ONLY = 2;
const T_REGULAR = 0;
const T_EXECUTABLE = 1;
const T_SYMLINK = 2;
const T_DIRECTORY = 3;
const MAX_SIGNATURE_BYTES = 1024;

/** ceil(size / chunkSize); 0 for an empty file. */
export function chunkCount(size: number, chunkSize: number): number {
  return size === 0 ? 0 : Math.ceil(size / chunkSize);
}

/** True when `n` is a chunk size an index may have (a power of two, 64 KiB..4 MiB). */
export function isValidChunkSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}

/** Length of chunk `i` of `file`. */
export function chunkLength(file: IndexedFile, chunkSize: number, i: number): number {
  return Math.min(chunkSize, file.size - i * chunkSize);
}

/** The expected SHA-256 of chunk `i` of `file` (a view). */
export function chunkHash(file: IndexedFile, i: number): Buffer {
  return file.chunkHashes.subarray(i * 32, i * 32 + 32);
}

/** True when `bytes` are exactly chunk `i` of `file` (length and SHA-256). */
export function chunkMatches(idx: Pick<NarIndex, 'chunkSize'>, file: IndexedFile, i: number, bytes: Uint8Array): boolean {
  if (!Number.isInteger(i) || i < 0 || i >= chunkCount(file.size, idx.chunkSize)) return false;
  if (bytes.length !== chunkLength(file, idx.chunkSize, i)) return false;
  return createHash('sha256').update(bytes).digest().equals(chunkHash(file, i));
}

/** The file whose contents hold `narOffset` (binary search), or undefined. */
export function findFile(idx: Pick<NarIndex, 'files'>, narOffset: number): IndexedFile | undefined {
  const files = idx.files;
  let lo = 0;
  let hi = files.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const f = files[mid]!;
    if (narOffset < f.narOffset) hi = mid - 1;
    else if (narOffset >= f.narOffset + f.size) lo = mid + 1;
    else return f;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// NAR layout (the sizes `dumpPath` writes)

const strLen = (n: number): number => 8 + n + ((8 - (n % 8)) % 8);
const KW = (s: string): number => strLen(Buffer.byteLength(s, 'latin1'));
const L_MAGIC = KW(NAR_MAGIC);
const L_OPEN = KW('(');
const L_CLOSE = KW(')');
const L_TYPE = KW('type');
const L_REGULAR = KW('regular');
const L_EXECUTABLE = KW('executable') + KW('');
const L_CONTENTS = KW('contents') + 8;
const L_SYMLINK = KW('symlink') + KW('target');
const L_DIRECTORY = KW('directory');
const L_ENTRY = KW('entry') + L_OPEN + KW('name') + KW('node');

// ---------------------------------------------------------------------------
// Encoding

class Writer {
  private buf = Buffer.allocUnsafe(4096);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.length++] = b;
  }

  varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw encodeError(`${n} is not a non-negative safe integer`);
    this.reserve(8);
    while (n >= 0x80) {
      this.buf[this.length++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.length++] = n;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  lenBytes(b: Uint8Array): void {
    this.varint(b.length);
    this.bytes(b);
  }

  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }
}

function encodeError(why: string): NarfsError {
  return new NarfsError('ERR_INVALID_ARGUMENT', `cannot encode narfs index: ${why}`);
}

function writeBody(w: Writer, idx: NarIndex): void {
  if (!isValidChunkSize(idx.chunkSize)) throw encodeError(`chunk size ${idx.chunkSize} is not a power of two in 64 KiB..4 MiB`);
  if (idx.narHash.algo !== 'sha256' || idx.narHash.digest.length !== 32) throw encodeError('NarHash is not sha256');
  parseStorePath(idx.storePath);
  w.bytes(NAR_INDEX_MAGIC);
  w.lenBytes(Buffer.from(idx.storePath, 'latin1'));
  w.bytes(idx.narHash.digest);
  w.varint(idx.narSize);
  w.byte(Math.log2(idx.chunkSize));
  w.byte((idx.frames === undefined ? 0 : FLAG_FRAMES) | (idx.wholeOnly ? FLAG_WHOLE_ONLY : 0));
  const files = new Map<number, IndexedFile>();
  for (const f of idx.files) files.set(f.narOffset, f);
  writeNode(w, idx.root, idx.chunkSize, files, idx.wholeOnly === true);
  if (idx.frames !== undefined) {
    const fr = idx.frames;
    if (fr.fileHash.algo !== 'sha256' || fr.fileHash.digest.length !== 32) throw encodeError('frame FileHash is not sha256');
    if (fr.narOffsets.length === 0 || fr.narOffsets.length !== fr.fileOffsets.length) throw encodeError('frame table is empty or ragged');
    if (fr.narOffsets[0] !== 0 || fr.fileOffsets[0] !== 0) throw encodeError('frame 0 does not start at 0');
    w.bytes(fr.fileHash.digest);
    w.varint(fr.fileSize);
    w.varint(fr.narOffsets.length);
    for (let i = 1; i < fr.narOffsets.length; i++) {
      w.varint(fr.narOffsets[i]! - fr.narOffsets[i - 1]!);
      w.varint(fr.fileOffsets[i]! - fr.fileOffsets[i - 1]!);
    }
  }
}

function writeNode(w: Writer, node: NarNode, chunkSize: number, files: Map<number, IndexedFile>, wholeOnly: boolean): void {
  switch (node.type) {
    case 'regular': {
      w.byte(node.executable ? T_EXECUTABLE : T_REGULAR);
      w.varint(node.size);
      if (node.size === 0) return;
      const f = files.get(node.narOffset);
      if (f === undefined || f.size !== node.size) throw encodeError(`no file entry for the file at NAR offset ${node.narOffset}`);
      const n = chunkCount(f.size, chunkSize);
      const kept = n > 1 && !wholeOnly;
      if (f.sha256.length !== 32 || f.chunkHashes.length !== (kept ? 32 * n : n > 1 ? 0 : 32)) throw encodeError(`file at NAR offset ${f.narOffset} has malformed hashes`);
      w.bytes(f.sha256);
      if (kept) w.bytes(f.chunkHashes);
      return;
    }
    case 'symlink':
      w.byte(T_SYMLINK);
      w.lenBytes(Buffer.from(node.target, 'latin1'));
      return;
    case 'directory': {
      w.byte(T_DIRECTORY);
      const children = sortedEntries(node);
      w.varint(children.length);
      for (const [name, child] of children) {
        w.lenBytes(Buffer.from(name, 'latin1'));
        writeNode(w, child, chunkSize, files, wholeOnly);
      }
      return;
    }
  }
}

function encodeBody(idx: NarIndex): Buffer {
  const w = new Writer();
  writeBody(w, idx);
  return w.result();
}

/** The index bytes, signatures included (sorted, without duplicates). */
export function encodeNarIndex(idx: NarIndex): Buffer {
  const w = new Writer();
  writeBody(w, idx);
  const sigs = [...new Set(idx.signatures)].sort();
  w.varint(sigs.length);
  for (const s of sigs) {
    const b = Buffer.from(s, 'latin1');
    if (signatureProblem(b) !== undefined) throw encodeError(`signature '${s.slice(0, 40)}' is malformed`);
    w.lenBytes(b);
  }
  return w.result();
}

// ---------------------------------------------------------------------------
// Parsing

class Reader {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  fail(why: string): NarfsError {
    return new NarfsError('ERR_INDEX_PARSE', `narfs index is malformed at byte ${this.pos}: ${why}`, { details: { offset: this.pos } });
  }

  need(n: number, what: string): void {
    if (n > this.buf.length - this.pos) throw this.fail(`truncated (${what})`);
  }

  byte(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  varint(what: string): number {
    let n = 0;
    let mul = 1;
    for (let i = 0; ; i++) {
      const b = this.byte(what);
      if (i === 7 && b > 0x0f) throw this.fail(`${what} is larger than 2^53 - 1`);
      n += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) throw this.fail(`${what} is not minimally encoded`);
        return n;
      }
      mul *= 0x80;
    }
  }

  take(n: number, what: string): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  lenBytes(what: string, max: number): Buffer {
    const at = this.lenAt(what, max);
    return this.buf.subarray(at, this.pos);
  }

  /** A length-prefixed field, skipped: where it starts (it ends at the new `pos`). */
  lenAt(what: string, max: number): number {
    const n = this.varint(`${what} length`);
    if (n > max) throw this.fail(`${what} longer than ${max} bytes`);
    this.need(n, what);
    const at = this.pos;
    this.pos += n;
    return at;
  }
}

interface ParseState {
  r: Reader;
  chunkSize: number;
  /** Bytes of the NAR laid out so far. */
  narPos: number;
  files: IndexedFile[];
  wholeOnly: boolean;
}

/** The chunk hashes of a file of more than one chunk in a whole-only index: none. */
const NO_CHUNK_HASHES = Buffer.alloc(0);

/** Reads a narfs index; strict and bounds-checked (ERR_INDEX_PARSE). */
export function parseNarIndex(bytes: Uint8Array): NarIndex {
  // Own copy: the views kept in the result must not alias the caller's buffer.
  const buf = Buffer.from(bytes);
  const r = new Reader(buf);
  if (!r.take(NAR_INDEX_MAGIC.length, 'magic').equals(NAR_INDEX_MAGIC)) {
    r.pos = 0;
    throw r.fail('bad magic (not a narfs index, or an unknown version)');
  }
  const spBytes = r.lenBytes('store path', 400);
  const storePath = spBytes.toString('latin1');
  try {
    if (storePathFull(parseStorePath(storePath)) !== storePath) throw new Error('not canonical');
  } catch (e) {
    throw Object.assign(r.fail(`'${storePath.slice(0, 80)}' is not a store path`), { cause: e });
  }
  const narHash: Hash = { algo: 'sha256', digest: r.take(32, 'NarHash') };
  const narSize = r.varint('NarSize');
  const log2 = r.byte('chunk size');
  if (log2 < MIN_CHUNK_LOG2 || log2 > MAX_CHUNK_LOG2) throw r.fail(`chunk size 2^${log2} is not in 64 KiB..4 MiB`);
  const chunkSize = 2 ** log2;
  const flags = r.byte('flags');
  if ((flags & ~(FLAG_FRAMES | FLAG_WHOLE_ONLY)) !== 0) throw r.fail(`unknown flags 0x${flags.toString(16)}`);
  const wholeOnly = (flags & FLAG_WHOLE_ONLY) !== 0;

  const st: ParseState = { r, chunkSize, narPos: L_MAGIC, files: [], wholeOnly };
  const root = readNode(st, 0);
  if (st.narPos !== narSize) throw r.fail(`the tree lays out a NAR of ${st.narPos} bytes, not NarSize ${narSize}`);

  let frames: SeekableFrames | undefined;
  if ((flags & FLAG_FRAMES) !== 0) {
    const fileHash: Hash = { algo: 'sha256', digest: r.take(32, 'frame FileHash') };
    const fileSize = r.varint('frame FileSize');
    const count = r.varint('frame count');
    if (count === 0) throw r.fail('frame table is empty');
    // Each further frame takes at least 2 bytes: bound before allocating.
    r.need(2 * (count - 1), 'frame table');
    const narOffsets = [0];
    const fileOffsets = [0];
    for (let i = 1; i < count; i++) {
      const dn = r.varint('frame NAR delta');
      const df = r.varint('frame file delta');
      if (dn === 0 || df === 0) throw r.fail(`frame ${i - 1} is empty`);
      narOffsets.push(narOffsets[i - 1]! + dn);
      fileOffsets.push(fileOffsets[i - 1]! + df);
    }
    if (narOffsets[count - 1]! >= narSize) throw r.fail('frame table reaches beyond NarSize');
    if (fileOffsets[count - 1]! >= fileSize) throw r.fail('frame table reaches beyond its FileSize');
    frames = { fileHash, fileSize, narOffsets, fileOffsets };
  }

  const bodyEnd = r.pos;
  const sigCount = r.varint('signature count');
  r.need(sigCount, 'signatures');
  const signatures: string[] = [];
  for (let i = 0; i < sigCount; i++) {
    const b = r.lenBytes('signature', MAX_SIGNATURE_BYTES);
    const problem = signatureProblem(b);
    if (problem !== undefined) throw r.fail(`signature ${i} ${problem}`);
    const s = b.toString('latin1');
    if (i > 0 && !(signatures[i - 1]! < s)) throw r.fail('signatures are not strictly ascending');
    signatures.push(s);
  }
  if (r.pos !== buf.length) throw r.fail(`${buf.length - r.pos} bytes after the end`);

  const idx: NarIndex = { storePath, narHash, narSize, chunkSize, root, files: st.files, signatures };
  if (frames !== undefined) idx.frames = frames;
  if (wholeOnly) idx.wholeOnly = true;
  parsedBodies.set(idx, { body: buf.subarray(0, bodyEnd), ...shapeOf(idx) });
  return idx;
}

/**
 * The body bytes of each index parseNarIndex returned. Only one spelling of an index is
 * accepted (encodeNarIndex gives the input back byte for byte: the fuzz target "index"
 * checks it), so these bytes are encodeBody of the parsed index and narIndexFingerprint
 * hashes them instead of encoding 17k files again (~30 ms on the JS thread, on the path of
 * a first read). Parsed indexes are read-only; should a caller still replace one of their
 * fields (or add or drop a file), the shape no longer matches and the body is encoded.
 */
const parsedBodies = new WeakMap<NarIndex, { body: Buffer } & ReturnType<typeof shapeOf>>();

function shapeOf(idx: NarIndex) {
  return { storePath: idx.storePath, narHash: idx.narHash, narSize: idx.narSize, chunkSize: idx.chunkSize, root: idx.root, files: idx.files, count: idx.files.length, frames: idx.frames, wholeOnly: idx.wholeOnly };
}

function bodyOf(idx: NarIndex): Buffer {
  const kept = parsedBodies.get(idx);
  if (kept !== undefined) {
    const now = shapeOf(idx);
    if ((Object.keys(now) as Array<keyof typeof now>).every((k) => now[k] === kept[k])) return kept.body;
  }
  return encodeBody(idx);
}

function readNode(st: ParseState, depth: number): NarNode {
  const r = st.r;
  if (depth >= NAR_MAX_DEPTH) throw r.fail(`nests ${NAR_MAX_DEPTH} levels deep`);
  st.narPos += L_OPEN + L_TYPE;
  const type = r.byte('node type');
  switch (type) {
    case T_REGULAR:
    case T_EXECUTABLE: {
      const executable = type === T_EXECUTABLE;
      const size = r.varint('file size');
      st.narPos += L_REGULAR + (executable ? L_EXECUTABLE : 0) + L_CONTENTS;
      const node: NarRegular = { type: 'regular', size, executable, narOffset: st.narPos };
      if (size > 0) {
        const sha256 = r.take(32, 'file hash');
        const n = chunkCount(size, st.chunkSize);
        // n > 1 needs 32 * n bytes of input: checked by take before anything is allocated.
        const chunkHashes = n <= 1 ? sha256 : st.wholeOnly ? NO_CHUNK_HASHES : r.take(32 * n, 'chunk hashes');
        st.files.push({ narOffset: st.narPos, size, sha256, chunkHashes });
      }
      st.narPos += size + ((8 - (size % 8)) % 8) + L_CLOSE;
      if (!Number.isSafeInteger(st.narPos)) throw r.fail('file sizes overflow');
      return node;
    }
    case T_SYMLINK: {
      const target = r.lenBytes('symlink target', 4095);
      const problem = narTargetProblem(target);
      if (problem !== undefined) throw r.fail(problem);
      st.narPos += L_SYMLINK + strLen(target.length) + L_CLOSE;
      return { type: 'symlink', target: target.toString('latin1') };
    }
    case T_DIRECTORY: {
      st.narPos += L_DIRECTORY;
      const count = r.varint('entry count');
      // Each entry takes at least 3 bytes (name length, a name byte, a node type).
      r.need(3 * count, 'directory entries');
      const dir: NarDirectory = { type: 'directory', entries: new Map() };
      let prev: string | undefined;
      for (let i = 0; i < count; i++) {
        // The name is checked and decoded where it lies: no view per entry (17k in the
        // bench's `headers`, each a Buffer the young generation must collect).
        const at = r.lenAt('name', 255);
        const n = r.pos - at;
        const problem = narNameProblem(r.buf, at, r.pos);
        if (problem !== undefined) throw r.fail(problem);
        const name = r.buf.toString('latin1', at, r.pos);
        if (prev !== undefined && !(prev < name)) throw r.fail(`entry '${name}' is not after '${prev}' (unsorted or duplicate)`);
        prev = name;
        st.narPos += L_ENTRY + strLen(n);
        dir.entries.set(name, readNode(st, depth + 1));
        st.narPos += L_CLOSE;
      }
      st.narPos += L_CLOSE;
      return dir;
    }
    default:
      r.pos--;
      throw r.fail(`unknown node type ${type}`);
  }
}

/** Why the bytes of a signature are not `name:base64` in printable ASCII, or undefined. */
function signatureProblem(b: Uint8Array): string | undefined {
  if (b.length === 0) return 'is empty';
  if (b.length > MAX_SIGNATURE_BYTES) return 'is too long';
  let colon = -1;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c < 0x21 || c > 0x7e) return 'has a byte that is not printable ASCII';
    if (c === 0x3a && colon < 0) colon = i;
  }
  if (colon <= 0) return "has no 'name:' prefix";
  return undefined;
}

// ---------------------------------------------------------------------------
// Signatures and binding

/** `narfs-index-1;<storePath>;sha256:<nix32 NarHash>;<NarSize>;sha256:<nix32 of the body>`. */
export function narIndexFingerprint(idx: NarIndex): string {
  const body = createHash('sha256').update(bodyOf(idx)).digest();
  return `${NAR_INDEX_FINGERPRINT_PREFIX}${idx.storePath};${formatHash(idx.narHash, 'nix32')};${idx.narSize};sha256:${encodeNix32(body)}`;
}

/** A `name:base64` signature of the index (add it to `signatures`). */
export function signNarIndex(idx: NarIndex, sk: SecretKey): string {
  return signFingerprint(narIndexFingerprint(idx), sk);
}

/** ERR_INDEX_BINDING unless the index describes the narinfo's store path, NarHash and NarSize. */
export function checkNarIndexBinding(idx: NarIndex, ni: Pick<NarInfo, 'storePath' | 'narHash' | 'narSize'>): void {
  const sp = storePathFull(ni.storePath);
  const why =
    idx.storePath !== sp
      ? `is for ${idx.storePath}`
      : !hashEquals(idx.narHash, ni.narHash)
        ? `has NarHash ${formatHash(idx.narHash, 'nix32')}, the narinfo ${formatHash(ni.narHash, 'nix32')}`
        : idx.narSize !== ni.narSize
          ? `has NarSize ${idx.narSize}, the narinfo ${ni.narSize}`
          : undefined;
  if (why !== undefined) {
    throw new NarfsError('ERR_INDEX_BINDING', `the narfs index of ${sp} ${why}`, { details: { storePath: sp } });
  }
}

/**
 * Checks the binding to the narinfo (storePath, NarHash, NarSize: ERR_INDEX_BINDING) and,
 * when `requireSigs`, that a signature verifies with one of `keys` (ERR_INDEX_SIGNATURE).
 */
export function verifyNarIndex(idx: NarIndex, ni: NarInfo, keys: readonly PublicKey[], requireSigs: boolean): void {
  checkNarIndexBinding(idx, ni);
  if (idx.wholeOnly) {
    throw new NarfsError('ERR_INDEX_UNUSABLE', `the narfs index of ${idx.storePath} has no chunk hashes (a local tree, not a published index)`, {
      details: { storePath: idx.storePath },
    });
  }
  if (!requireSigs) return;
  const fp = narIndexFingerprint(idx);
  for (const sig of idx.signatures) {
    if (verifySignature(fp, sig, keys)) return;
  }
  throw new NarfsError('ERR_INDEX_SIGNATURE', `the narfs index of ${idx.storePath} has no valid signature by a trusted key`, {
    details: { storePath: idx.storePath, signatures: idx.signatures.length },
  });
}
