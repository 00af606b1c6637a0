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
 * Invariants: directory entries are Maps in bytewise order of their UTF-8 names (never
 * plain objects, so a name like `__proto__` is just a name); names, targets and depth obey
 * the NAR rules of nar-parser.ts. A regular file of size 0 may lack narOffset (read as 0);
 * its offset is meaningless and `listingsEqual` ignores it. Unknown JSON keys are ignored
 * (Nix adds fields over time); known keys with the wrong type are errors (ERR_LISTING_PARSE).
 * JSON.parse keeps the last of duplicate keys.
 */

import { NarfsError } from '../errors.js';

export interface NarRegular {
  type: 'regular';
  size: number;
  executable: boolean;
  narOffset: number;
}

export interface NarSymlink {
  type: 'symlink';
  target: string;
}

export interface NarDirectory {
  type: 'directory';
  entries: Map<string, NarNode>;
}

export type NarNode = NarRegular | NarSymlink | NarDirectory;

/** Limits shared with the NAR parser (Nix HEAD archive.cc bounds). */
export const NAR_MAX_NAME_BYTES = 255;
export const NAR_MAX_TARGET_BYTES = 4095;
/** A node at this depth (root = 0) is rejected. */
export const NAR_MAX_DEPTH = 64;

/** Why a NAR entry name is invalid, or undefined when valid (name as UTF-8 bytes). */
export function narNameProblem(name: Uint8Array): string | undefined {
  const len = name.length;
  if (len === 0) return 'empty name';
  if (len > NAR_MAX_NAME_BYTES) return `name longer than ${NAR_MAX_NAME_BYTES} bytes`;
  if (name[0] === 0x2e && (len === 1 || (len === 2 && name[1] === 0x2e))) return "name '.' or '..'";
  for (let i = 0; i < len; i++) {
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
  // A target that is not UTF-8 cannot be served byte for byte through a string-based
  // FUSE binding (readlink would return U+FFFD and `nix hash path` would differ).
  if (!isUtf8(target)) return 'symlink target is not valid UTF-8';
  return undefined;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
function isUtf8(bytes: Uint8Array): boolean {
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Bytewise (UTF-8) order of names, as Nix's std::map<std::string, …>. */
export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

// ---------------------------------------------------------------------------
// JSON reader

export function parseListingJson(text: string): NarNode {
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
      const problem = narTargetProblem(Buffer.from(target, 'utf8'));
      if (problem !== undefined) throw listingError(`has an invalid symlink at ${where}: ${problem}`);
      return { type: 'symlink', target };
    }
    case 'directory': {
      const raw = v['entries'];
      if (!isPlainObject(raw)) throw listingError(`has a directory without an entries object at ${where}`);
      const named: Array<{ name: string; bytes: Buffer }> = [];
      for (const name of Object.keys(raw)) {
        const bytes = Buffer.from(name, 'utf8');
        // Lone surrogates do not survive UTF-8; such a name cannot be a NAR name.
        if (bytes.toString('utf8') !== name) throw listingError(`has a name that is not valid Unicode at ${where}`);
        const problem = narNameProblem(bytes);
        if (problem !== undefined) throw listingError(`has an invalid entry ${JSON.stringify(name)} at ${where}: ${problem}`);
        named.push({ name, bytes });
      }
      // Object.keys puts integer-like keys first; NAR order is bytewise.
      named.sort((a, b) => Buffer.compare(a.bytes, b.bytes));
      const entries = new Map<string, NarNode>();
      for (const { name } of named) {
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
 * The `.ls` form Nix 2.8 writes: `{"version":1,"root":…}`, keys in the order
 * type, size, executable (only when true), narOffset (always), entries bytewise sorted.
 */
export function listingToJson(node: NarNode): string {
  return `{"version":1,"root":${nodeToJson(node)}}`;
}

function nodeToJson(node: NarNode): string {
  switch (node.type) {
    case 'regular':
      return `{"type":"regular","size":${node.size}${node.executable ? ',"executable":true' : ''},"narOffset":${node.narOffset}}`;
    case 'symlink':
      return `{"type":"symlink","target":${JSON.stringify(node.target)}}`;
    case 'directory': {
      const names = [...node.entries.keys()].sort(compareNames);
      const parts = names.map((n) => `${JSON.stringify(n)}:${nodeToJson(node.entries.get(n)!)}`);
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
      if (b.type !== 'directory' || a.entries.size !== b.entries.size) return false;
      for (const [name, child] of a.entries) {
        const other = b.entries.get(name);
        if (other === undefined || !listingsEqual(child, other)) return false;
      }
      return true;
    }
  }
}
