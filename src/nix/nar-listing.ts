/**
 * NAR listings: the tree of a NAR with file sizes and content offsets, and its `.ls` JSON
 * form (`listNar` in src/libstore/nar-accessor.cc, written by `addToStoreCommon` in
 * src/libstore/binary-cache-store.cc).
 *
 * Format: `{"version":1,"root":<node>}` (either key order; a bare node as kept by
 * RemoteFSAccessor is also read), node = `{"type":"regular","size":n[,"executable":true]
 * [,"narOffset":n]}` | `{"type":"symlink","target":s}` | `{"type":"directory","entries":{…}}`.
 * `narOffset` is the offset of the first content byte in the uncompressed NAR.
 *
 * Names and symlink targets are bytes (Nix allows any byte but NUL, and '/' in names).
 * They are held as *byte strings*: JS strings whose every code unit is one byte (0-255),
 * i.e. `Buffer#toString('latin1')` of the bytes. One-byte strings are V8's compact
 * representation, Map lookups stay string lookups, and code-unit order is byte order.
 * Convert at the edges only: `Buffer.from(s, 'latin1')` gives the bytes back;
 * `byteString(unicode)` gives the byte string of a Unicode name (its UTF-8 bytes).
 *
 * `.ls` bytes: Nix 2.8 writes names and targets with its own JSON writer (`toJSON` in
 * src/libutil/json.cc): the raw bytes, only `"` `\` and bytes < 0x20 escaped, so a name
 * that is not UTF-8 gives a `.ls` that is not UTF-8 (newer Nix, with nlohmann::json,
 * refuses to write such a listing). `parseListingJson` reads bytes that way (each byte one
 * char; a `\uXXXX` escape of a code point >= 0x80 stands for its UTF-8 bytes), and
 * `listingToJson` writes exactly what Nix 2.8 writes. A listing in the form Nix writes comes
 * back as a compact listing behind this interface (compact-listing.ts: a directory's
 * `entries` is a fresh Map on each access); any other form goes through JSON.parse.
 *
 * Invariants: directory entries are Maps in bytewise order of their names (never plain
 * objects, so a name like `__proto__` is just a name); names, targets and depth obey the
 * NAR rules of nar-parser.ts. A regular file of size 0 may lack narOffset (read as 0);
 * its offset is meaningless and `listingsEqual` ignores it. Unknown JSON keys are ignored
 * (Nix adds fields over time); known keys with the wrong type are errors (ERR_LISTING_PARSE).
 * JSON.parse keeps the last of duplicate keys.
 */

import { NarfsError } from '../errors.js';
import { readCompactListing } from './compact-listing.js';

export interface NarRegular {
  type: 'regular';
  size: number;
  executable: boolean;
  narOffset: number;
}

export interface NarSymlink {
  type: 'symlink';
  /** Byte string (see the header). */
  target: string;
}

export interface NarDirectory {
  type: 'directory';
  /** Keyed by byte strings (see the header), in bytewise order. */
  entries: Map<string, NarNode>;
}

export type NarNode = NarRegular | NarSymlink | NarDirectory;

/** Limits shared with the NAR parser (Nix HEAD archive.cc bounds). */
export const NAR_MAX_NAME_BYTES = 255;
export const NAR_MAX_TARGET_BYTES = 4095;
/** A node at this depth (root = 0) is rejected. */
export const NAR_MAX_DEPTH = 64;

/** The byte string of a Unicode name or target: its UTF-8 bytes, one char each. */
export function byteString(unicode: string): string {
  return Buffer.from(unicode, 'utf8').toString('latin1');
}

/** The bytes of a byte string. */
export function stringBytes(bytes: string): Buffer {
  return Buffer.from(bytes, 'latin1');
}

/** True when every code unit of `s` is a byte (0-255): `s` can be a byte string. */
export function isByteString(s: string): boolean {
  // eslint-disable-next-line no-control-regex
  return !/[^\u0000-\u00ff]/.test(s);
}

/** Why a NAR entry name is invalid, or undefined when valid. */
export function narNameProblem(name: Uint8Array, start = 0, end = name.length): string | undefined {
  const len = end - start;
  if (len === 0) return 'empty name';
  if (len > NAR_MAX_NAME_BYTES) return `name longer than ${NAR_MAX_NAME_BYTES} bytes`;
  if (name[start] === 0x2e && (len === 1 || (len === 2 && name[start + 1] === 0x2e))) return "name '.' or '..'";
  for (let i = start; i < end; i++) {
    const c = name[i];
    if (c === 0x2f) return "name contains '/'";
    if (c === 0) return 'name contains NUL';
  }
  return undefined;
}

/** Why a symlink target is invalid, or undefined when valid. */
export function narTargetProblem(target: Uint8Array): string | undefined {
  if (target.length === 0) return 'empty symlink target';
  if (target.length > NAR_MAX_TARGET_BYTES) return `symlink target longer than ${NAR_MAX_TARGET_BYTES} bytes`;
  if (target.includes(0)) return 'symlink target contains NUL';
  return undefined;
}

/** Bytewise order of byte-string names, as Nix's std::map<std::string, …>. */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The children of `dir` in bytewise name order, reading `entries` once: a compact
 * listing's directory builds it on each access (compact-listing.ts), so a walker that
 * looked each child up through it would be quadratic.
 */
export function sortedEntries(dir: NarDirectory): Array<[string, NarNode]> {
  return [...dir.entries].sort((x, y) => compareNames(x[0], y[0]));
}

// ---------------------------------------------------------------------------
// JSON reader

/**
 * Reads a listing from the bytes of a `.ls` file (or from Unicode JSON text, taken as its
 * UTF-8 bytes). Names and targets come out as byte strings.
 */
export function parseListingJson(input: Uint8Array | string): NarNode {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  // The form Nix writes is read straight into typed arrays (no JSON object tree, no text copy).
  const compact = readCompactListing(bytes);
  if (compact !== undefined) return compact.node(0);
  return parseListingTree(bytes);
}

/**
 * `parseListingJson` through JSON.parse, for every form (a tree of plain objects and Maps).
 * The reference the compact reader must agree with.
 */
export function parseListingTree(bytes: Buffer): NarNode {
  let text = bytes.toString('latin1');
  if (text.includes('\\u')) text = text.replace(ESCAPE, unicodeEscapeToBytes);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw listingError('is not JSON', e);
  }
  if (!isPlainObject(doc)) throw listingError('is not a JSON object');
  if (hasOwn(doc, 'root') || hasOwn(doc, 'version')) {
    if (doc['version'] !== 1) throw listingError(`has unsupported version ${JSON.stringify(doc['version'])}`);
    if (!hasOwn(doc, 'root')) throw listingError('has no root');
    return readNode(doc['root'], 0, '/');
  }
  return readNode(doc, 0, '/');
}

/** JSON escapes, matched left to right so `\\\\u` is an escaped backslash and a `u`. */
const ESCAPE = /\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\[^u]/g;

/** A `\uXXXX` escape (or surrogate pair) of a code point >= 0x80 → its UTF-8 bytes as chars. */
function unicodeEscapeToBytes(m: string, hi: string | undefined, lo: string | undefined, one: string | undefined): string {
  let cp: number;
  if (hi !== undefined && lo !== undefined) {
    cp = 0x10000 + ((parseInt(hi, 16) - 0xd800) << 10) + (parseInt(lo, 16) - 0xdc00);
  } else if (one !== undefined) {
    cp = parseInt(one, 16);
    // ASCII escapes stay; a lone surrogate stays too and is refused as not a byte string.
    if (cp < 0x80 || (cp >= 0xd800 && cp <= 0xdfff)) return m;
  } else {
    return m;
  }
  return Buffer.from(String.fromCodePoint(cp), 'utf8').toString('latin1');
}

function readNode(v: unknown, depth: number, where: string): NarNode {
  if (depth >= NAR_MAX_DEPTH) throw listingError(`nests deeper than ${NAR_MAX_DEPTH} levels at ${where}`);
  if (!isPlainObject(v)) throw listingError(`has a node that is not an object at ${where}`);
  const type = v['type'];
  switch (type) {
    case 'regular': {
      const size = readUint(v, 'size', where, true)!;
      const ex = hasOwn(v, 'executable') ? v['executable'] : false;
      if (typeof ex !== 'boolean') throw listingError(`has a non-boolean executable at ${where}`);
      let narOffset = readUint(v, 'narOffset', where, false);
      if (narOffset === undefined || narOffset === 0) {
        if (size !== 0) throw listingError(`lacks narOffset for a non-empty file at ${where}`);
        narOffset = 0;
      }
      return { type: 'regular', size, executable: ex, narOffset };
    }
    case 'symlink': {
      const target = v['target'];
      if (typeof target !== 'string') throw listingError(`has a symlink without a string target at ${where}`);
      if (!isByteString(target)) throw listingError(`has a symlink target that is not valid Unicode at ${where}`);
      const problem = narTargetProblem(Buffer.from(target, 'latin1'));
      if (problem !== undefined) throw listingError(`has an invalid symlink at ${where}: ${problem}`);
      return { type: 'symlink', target };
    }
    case 'directory': {
      const raw = v['entries'];
      if (!isPlainObject(raw)) throw listingError(`has a directory without an entries object at ${where}`);
      const named: string[] = [];
      for (const name of Object.keys(raw)) {
        // A lone surrogate escape cannot be a NAR name.
        if (!isByteString(name)) throw listingError(`has a name that is not valid Unicode at ${where}`);
        const problem = narNameProblem(Buffer.from(name, 'latin1'));
        if (problem !== undefined) throw listingError(`has an invalid entry ${JSON.stringify(name)} at ${where}: ${problem}`);
        named.push(name);
      }
      // Object.keys puts integer-like keys first; NAR order is bytewise (= code-unit order).
      named.sort(compareNames);
      const entries = new Map<string, NarNode>();
      for (const name of named) {
        const child = Object.getOwnPropertyDescriptor(raw, name)!.value as unknown;
        entries.set(name, readNode(child, depth + 1, where === '/' ? `/${name}` : `${where}/${name}`));
      }
      return { type: 'directory', entries };
    }
    default:
      throw listingError(`has the unknown node type ${JSON.stringify(type)} at ${where}`);
  }
}

function readUint(o: Record<string, unknown>, key: string, where: string, required: boolean): number | undefined {
  if (!hasOwn(o, key)) {
    if (required) throw listingError(`lacks ${key} at ${where}`);
    return undefined;
  }
  const n = o[key];
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw listingError(`has an invalid ${key} at ${where}`);
  }
  return n;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function hasOwn(o: object, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, key);
}

function listingError(why: string, cause?: unknown): NarfsError {
  return new NarfsError('ERR_LISTING_PARSE', `NAR listing ${why}`, cause === undefined ? {} : { cause });
}

// ---------------------------------------------------------------------------
// JSON writer and comparison

/**
 * The `.ls` bytes Nix 2.8 writes: `{"version":1,"root":…}`, keys in the order
 * type, size, executable (only when true), narOffset (always), entries bytewise sorted,
 * names and targets as raw bytes (`toJSON` of src/libutil/json.cc).
 */
export function listingToJson(node: NarNode): Buffer {
  return Buffer.from(`{"version":1,"root":${nodeToJson(node)}}`, 'latin1');
}

/** A byte string as Nix 2.8's `toJSON(std::ostream &, const char *, const char *)` writes it. */
function jsonBytes(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (!/["\\\u0000-\u001f]/.test(s)) return `"${s}"`;
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22 || c === 0x5c) out += `\\${s[i]}`;
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c < 0x20) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += s[i];
  }
  return `${out}"`;
}

function nodeToJson(node: NarNode): string {
  switch (node.type) {
    case 'regular':
      return `{"type":"regular","size":${node.size}${node.executable ? ',"executable":true' : ''},"narOffset":${node.narOffset}}`;
    case 'symlink':
      return `{"type":"symlink","target":${jsonBytes(node.target)}}`;
    case 'directory': {
      const parts = sortedEntries(node).map(([n, child]) => `${jsonBytes(n)}:${nodeToJson(child)}`);
      return `{"type":"directory","entries":{${parts.join(',')}}}`;
    }
  }
}

/**
 * Same tree: types, names, sizes, executable bits, symlink targets and narOffsets
 * (narOffset of empty files excepted).
 */
export function listingsEqual(a: NarNode, b: NarNode): boolean {
  switch (a.type) {
    case 'regular':
      return (
        b.type === 'regular' &&
        a.size === b.size &&
        a.executable === b.executable &&
        (a.size === 0 || a.narOffset === b.narOffset)
      );
    case 'symlink':
      return b.type === 'symlink' && a.target === b.target;
    case 'directory': {
      if (b.type !== 'directory') return false;
      // Each side's `entries` once: a compact listing's directory builds it on each access
      // (compact-listing.ts), so a look-up per child would make this quadratic.
      const mine = a.entries;
      const theirs = b.entries;
      if (mine.size !== theirs.size) return false;
      for (const [name, child] of mine) {
        const other = theirs.get(name);
        if (other === undefined || !listingsEqual(child, other)) return false;
      }
      return true;
    }
  }
}
