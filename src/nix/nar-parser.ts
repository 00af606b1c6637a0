/**
 * Strict streaming NAR parser (`parseDump`/`parse` in src/libutil/archive.cc, `readString`
 * and `readPadding` in src/libutil/serialise.cc; the listing offsets of
 * `NarMemberConstructor` in src/libstore/nar-accessor.cc).
 *
 * Grammar: see nix-formats.md §1.2. Every rejection rule of §1.3 is enforced (all but the
 * case-hack row 16), each with its own code: bad magic (ERR_NAR_MAGIC), non-zero padding
 * (ERR_NAR_PADDING), any token other than the one the grammar wants, including a missing
 * `contents` as Nix ≥ 2.32 requires (ERR_NAR_TAG), unknown type (ERR_NAR_FILE_TYPE),
 * non-empty executable marker (ERR_NAR_EXECUTABLE), bad or over-long names
 * (ERR_NAR_NAME), unsorted or duplicate names (ERR_NAR_UNSORTED), empty, NUL or over-long
 * symlink targets (ERR_NAR_SYMLINK), keywords over 32 bytes or numbers beyond 2^53
 * (ERR_NAR_LIMIT), a node at depth ≥ 64 (ERR_NAR_DEPTH), bytes after the root node
 * (ERR_NAR_TRAILING) and an early end (ERR_NAR_TRUNCATED).
 *
 * Names and symlink targets are bytes, as in Nix (any byte but NUL, and '/' in names): the
 * listing holds them as byte strings (one char per byte, see nar-listing.ts) and handler
 * paths are arrays of byte strings.
 *
 * Invariants: file contents are never copied: they are counted and, when a handler wants
 * them, handed over as views of the caller's chunk. Chunk boundaries may fall anywhere.
 * `narOffset` of a regular file = offset, in the uncompressed NAR, of the byte right after
 * the 8-byte length of its `contents`, as Nix records it. After the first error the parser
 * stays failed and rethrows that error.
 */

import { NarfsError, type ErrorCode } from '../errors.js';
import {
  NAR_MAX_DEPTH,
  NAR_MAX_NAME_BYTES,
  NAR_MAX_TARGET_BYTES,
  narNameProblem,
  narTargetProblem,
  type NarDirectory,
  type NarNode,
  type NarRegular,
} from './nar-listing.js';

export interface NarHandler {
  /** A regular file begins (called for empty files too). `path` is [] for a root file. */
  onFileStart?(path: readonly string[], size: number, executable: boolean, narOffset: number): void;
  /**
   * Some bytes of a regular file, in order. `chunk` is a view of the buffer passed to
   * `write`: copy it if you keep it past the call.
   */
  onFileContents?(path: readonly string[], chunk: Buffer, offsetInFile: number): void;
  /** A regular file is complete (its padding checked). */
  onFileEnd?(path: readonly string[]): void;
}

export const NAR_MAGIC = 'nix-archive-1';
/** Longest keyword token accepted (Nix HEAD). */
export const NAR_MAX_TAG_BYTES = 32;

/** What the next token must be. */
const enum St {
  Magic,
  Open,
  TypeKw,
  TypeVal,
  RegAfterType, // executable | contents
  ExecVal, // ""
  ContentsKw,
  ContentsSize, // int
  Contents, // file bytes
  ContentsPad,
  Close, // ")" ending a node
  TargetKw,
  TargetVal,
  DirItem, // entry | ")"
  EntryOpen,
  NameKw,
  NameVal,
  NodeKw,
  EntryClose,
  Done,
}

/** Which part of a token is being read. */
const enum Part {
  Len, // the 8-byte length (or the 8-byte contents size)
  Data, // string bytes + padding
}

interface DirFrame {
  node: NarDirectory;
  /** Byte string of the previous entry's name (code-unit order is byte order). */
  prevName: string | undefined;
  /** Name of the entry being parsed in this directory. */
  pendingName: string;
}

const MAX_SAFE_HIGH = 0x1fffff; // high 32 bits of Number.MAX_SAFE_INTEGER

export class NarParser {
  private readonly handler: NarHandler | undefined;
  private readonly wantsContents: boolean;

  private st = St.Magic;
  private part = Part.Len;
  /** Bytes the current token part needs. */
  private want = 8;
  /** Length of the string whose data is being read. */
  private strLen = 0;
  /** Scratch for token parts split across chunks (longest: a target + padding). */
  private readonly scratch = Buffer.allocUnsafe(NAR_MAX_TARGET_BYTES + 8 + 8);
  private have = 0;

  /** Bytes of the NAR consumed by the grammar so far. */
  private consumed = 0;
  private seen = 0;
  /** The first error thrown (a handler's own error is kept as it is). */
  private failure: unknown;
  private failed = false;

  private root: NarNode | undefined;
  private readonly stack: DirFrame[] = [];
  private readonly path: string[] = [];
  private depth = 0;

  private file: NarRegular | undefined;
  private filePath: readonly string[] = [];
  private fileRemaining = 0;
  private executable = false;

  constructor(handler?: NarHandler) {
    this.handler = handler;
    this.wantsContents = handler?.onFileContents !== undefined;
  }

  /** Total bytes passed to `write`. */
  get bytesSeen(): number {
    return this.seen;
  }

  /** True once the root node is complete. */
  get done(): boolean {
    return this.st === St.Done;
  }

  write(chunk: Buffer): void {
    if (this.failed) throw this.failure;
    this.seen += chunk.length;
    try {
      this.consume(chunk);
    } catch (e) {
      this.failed = true;
      this.failure = e;
      throw e;
    }
  }

  end(): NarNode {
    if (this.failed) throw this.failure;
    if (this.st !== St.Done || this.root === undefined) {
      this.failed = true;
      this.failure = this.error('ERR_NAR_TRUNCATED', `NAR ends after ${this.seen} bytes, before the archive is complete`);
      throw this.failure;
    }
    return this.root;
  }

  // -------------------------------------------------------------------------

  private consume(chunk: Buffer): void {
    const len = chunk.length;
    let pos = 0;
    while (pos < len) {
      if (this.st === St.Contents) {
        const n = Math.min(this.fileRemaining, len - pos);
        if (this.wantsContents) {
          this.handler!.onFileContents!(this.filePath, chunk.subarray(pos, pos + n), this.file!.size - this.fileRemaining);
        }
        pos += n;
        this.consumed += n;
        this.fileRemaining -= n;
        if (this.fileRemaining === 0) this.afterContents();
        continue;
      }
      if (this.st === St.Done) {
        throw this.error('ERR_NAR_TRAILING', `NAR has ${len - pos} or more bytes after its end at offset ${this.consumed}`);
      }
      // Gather `want` contiguous bytes: straight from the chunk when possible.
      const want = this.want;
      let buf: Buffer;
      let off: number;
      if (this.have === 0 && len - pos >= want) {
        buf = chunk;
        off = pos;
        pos += want;
      } else {
        const n = Math.min(want - this.have, len - pos);
        chunk.copy(this.scratch, this.have, pos, pos + n);
        this.have += n;
        pos += n;
        if (this.have < want) break;
        buf = this.scratch;
        off = 0;
        this.have = 0;
      }
      this.consumed += want;
      if (this.part === Part.Len) this.onLength(buf, off);
      else this.onData(buf, off);
    }
  }

  /** An 8-byte little-endian number: a string length, or the size of `contents`. */
  private onLength(buf: Buffer, off: number): void {
    const lo = buf.readUInt32LE(off);
    const hi = buf.readUInt32LE(off + 4);
    if (hi > MAX_SAFE_HIGH) {
      throw this.error(
        this.st === St.Magic ? 'ERR_NAR_MAGIC' : 'ERR_NAR_LIMIT',
        `NAR has a number beyond 2^53 at offset ${this.consumed - 8}`,
      );
    }
    const n = hi * 0x100000000 + lo;

    if (this.st === St.ContentsSize) {
      this.startContents(n);
      return;
    }

    // A string: check its length against the limit of what the grammar expects.
    switch (this.st) {
      case St.Magic:
        if (n !== NAR_MAGIC.length) throw this.error('ERR_NAR_MAGIC', "input doesn't look like a Nix archive");
        break;
      case St.ExecVal:
        if (n !== 0) throw this.error('ERR_NAR_EXECUTABLE', 'executable marker has non-empty value');
        break;
      case St.NameVal:
        if (n > NAR_MAX_NAME_BYTES) throw this.error('ERR_NAR_NAME', `NAR entry name is ${n} bytes long (max ${NAR_MAX_NAME_BYTES})`);
        break;
      case St.TargetVal:
        if (n > NAR_MAX_TARGET_BYTES) throw this.error('ERR_NAR_SYMLINK', `NAR symlink target is ${n} bytes long (max ${NAR_MAX_TARGET_BYTES})`);
        break;
      default:
        if (n > NAR_MAX_TAG_BYTES) throw this.error('ERR_NAR_LIMIT', `NAR token is ${n} bytes long (max ${NAR_MAX_TAG_BYTES})`);
    }
    if (n === 0) {
      // The empty string has no data and no padding.
      this.onString(this.scratch, 0, 0);
      return;
    }
    this.strLen = n;
    this.part = Part.Data;
    this.want = (n + 7) & ~7;
  }

  /** String bytes followed by their padding. */
  private onData(buf: Buffer, off: number): void {
    const n = this.strLen;
    const end = off + this.want;
    for (let i = off + n; i < end; i++) {
      if (buf[i] !== 0) throw this.error('ERR_NAR_PADDING', `non-zero padding at offset ${this.consumed - (end - i)}`);
    }
    if (this.st === St.ContentsPad) {
      this.finishFile();
      return;
    }
    this.part = Part.Len;
    this.want = 8;
    this.onString(buf, off, n);
  }

  /** A complete string token; sets up what comes next. */
  private onString(buf: Buffer, off: number, n: number): void {
    switch (this.st) {
      case St.Magic:
        if (!eq(buf, off, n, K_MAGIC)) throw this.error('ERR_NAR_MAGIC', "input doesn't look like a Nix archive");
        this.st = St.Open;
        return;
      case St.Open:
        this.expect(buf, off, n, K_OPEN, "'('");
        this.st = St.TypeKw;
        return;
      case St.TypeKw:
        this.expect(buf, off, n, K_TYPE, "'type'");
        this.st = St.TypeVal;
        return;
      case St.TypeVal:
        if (eq(buf, off, n, K_REGULAR)) {
          this.executable = false;
          this.st = St.RegAfterType;
        } else if (eq(buf, off, n, K_DIRECTORY)) {
          const node: NarDirectory = { type: 'directory', entries: new Map() };
          this.attach(node);
          this.stack.push({ node, prevName: undefined, pendingName: '' });
          this.st = St.DirItem;
        } else if (eq(buf, off, n, K_SYMLINK)) {
          this.st = St.TargetKw;
        } else {
          throw this.error('ERR_NAR_FILE_TYPE', `unknown file type '${show(buf, off, n)}'`);
        }
        return;
      case St.RegAfterType:
        if (eq(buf, off, n, K_EXECUTABLE)) {
          this.executable = true;
          this.st = St.ExecVal;
        } else if (eq(buf, off, n, K_CONTENTS)) {
          this.st = St.ContentsSize;
        } else {
          throw this.tagError("'contents'", buf, off, n);
        }
        return;
      case St.ExecVal:
        // Length 0 was checked in onLength.
        this.st = St.ContentsKw;
        return;
      case St.ContentsKw:
        this.expect(buf, off, n, K_CONTENTS, "'contents'");
        this.st = St.ContentsSize;
        return;
      case St.ContentsSize:
        return; // unreachable: handled in onLength
      case St.Close:
        this.expect(buf, off, n, K_CLOSE, "')'");
        this.closeNode();
        return;
      case St.TargetKw:
        this.expect(buf, off, n, K_TARGET, "'target'");
        this.st = St.TargetVal;
        return;
      case St.TargetVal: {
        const bytes = buf.subarray(off, off + n);
        const problem = narTargetProblem(bytes);
        if (problem !== undefined) throw this.error('ERR_NAR_SYMLINK', `NAR has an invalid symlink: ${problem}`);
        this.attach({ type: 'symlink', target: bytes.toString('latin1') });
        this.st = St.Close;
        return;
      }
      case St.DirItem:
        if (eq(buf, off, n, K_ENTRY)) {
          this.st = St.EntryOpen;
        } else if (eq(buf, off, n, K_CLOSE)) {
          this.stack.pop();
          this.closeNode();
        } else {
          throw this.tagError("'entry' or ')'", buf, off, n);
        }
        return;
      case St.EntryOpen:
        this.expect(buf, off, n, K_OPEN, "'('");
        this.st = St.NameKw;
        return;
      case St.NameKw:
        this.expect(buf, off, n, K_NAME, "'name'");
        this.st = St.NameVal;
        return;
      case St.NameVal:
        this.onName(buf.subarray(off, off + n));
        this.st = St.NodeKw;
        return;
      case St.NodeKw:
        this.expect(buf, off, n, K_NODE, "'node'");
        if (this.depth + 1 >= NAR_MAX_DEPTH) {
          throw this.error('ERR_NAR_DEPTH', `NAR nests deeper than ${NAR_MAX_DEPTH} levels`);
        }
        this.depth++;
        this.path.push(this.stack[this.stack.length - 1]!.pendingName);
        this.st = St.Open;
        return;
      case St.EntryClose:
        this.expect(buf, off, n, K_CLOSE, "')'");
        this.st = St.DirItem;
        return;
      case St.Contents:
      case St.ContentsPad:
      case St.Done:
        throw this.error('ERR_INTERNAL', 'NAR parser reached an impossible state');
    }
  }

  private onName(bytes: Buffer): void {
    const problem = narNameProblem(bytes);
    if (problem !== undefined) {
      throw this.error('ERR_NAR_NAME', `NAR contains invalid file name '${show(bytes, 0, bytes.length)}': ${problem}`);
    }
    const frame = this.stack[this.stack.length - 1]!;
    const name = bytes.toString('latin1'); // a copy: `bytes` may view the scratch buffer
    if (frame.prevName !== undefined && frame.prevName >= name) {
      throw this.error('ERR_NAR_UNSORTED', `NAR directory is not sorted ('${show(bytes, 0, bytes.length)}' after '${show(Buffer.from(frame.prevName, 'latin1'), 0, frame.prevName.length)}')`);
    }
    frame.prevName = name;
    frame.pendingName = name;
  }

  private startContents(size: number): void {
    const file: NarRegular = { type: 'regular', size, executable: this.executable, narOffset: this.consumed };
    this.attach(file);
    this.file = file;
    this.filePath = this.handler === undefined ? this.path : Object.freeze([...this.path]);
    this.handler?.onFileStart?.(this.filePath, size, file.executable, file.narOffset);
    this.fileRemaining = size;
    if (size === 0) this.afterContents();
    else this.st = St.Contents;
  }

  private afterContents(): void {
    const pad = (8 - (this.file!.size % 8)) % 8;
    if (pad === 0) {
      this.finishFile();
    } else {
      this.st = St.ContentsPad;
      this.part = Part.Data;
      this.strLen = 0;
      this.want = pad;
    }
  }

  private finishFile(): void {
    this.handler?.onFileEnd?.(this.filePath);
    this.file = undefined;
    this.part = Part.Len;
    this.want = 8;
    this.st = St.Close;
  }

  /** Places a new node: the root, or the pending entry of the innermost directory. */
  private attach(node: NarNode): void {
    if (this.root === undefined) {
      this.root = node;
      return;
    }
    const frame = this.stack[this.stack.length - 1]!;
    frame.node.entries.set(frame.pendingName, node);
  }

  /** The `)` that ends a node was read. */
  private closeNode(): void {
    if (this.depth === 0) {
      this.st = St.Done;
      return;
    }
    this.depth--;
    this.path.pop();
    this.st = St.EntryClose;
  }

  private expect(buf: Buffer, off: number, n: number, kw: Uint8Array, what: string): void {
    if (!eq(buf, off, n, kw)) throw this.tagError(what, buf, off, n);
  }

  private tagError(what: string, buf: Buffer, off: number, n: number): NarfsError {
    return this.error('ERR_NAR_TAG', `expected tag ${what}, got '${show(buf, off, n)}'`);
  }

  private error(code: ErrorCode, message: string): NarfsError {
    return new NarfsError(code, message, { details: { offset: this.consumed } });
  }
}

/** Parses a whole NAR held in memory. */
export function parseNar(buf: Buffer, handler?: NarHandler): NarNode {
  const p = new NarParser(handler);
  p.write(buf);
  return p.end();
}

// ---------------------------------------------------------------------------

const kw = (s: string): Uint8Array => Buffer.from(s, 'latin1');
const K_MAGIC = kw(NAR_MAGIC);
const K_OPEN = kw('(');
const K_CLOSE = kw(')');
const K_TYPE = kw('type');
const K_REGULAR = kw('regular');
const K_DIRECTORY = kw('directory');
const K_SYMLINK = kw('symlink');
const K_EXECUTABLE = kw('executable');
const K_CONTENTS = kw('contents');
const K_TARGET = kw('target');
const K_ENTRY = kw('entry');
const K_NAME = kw('name');
const K_NODE = kw('node');

function eq(buf: Buffer, off: number, n: number, k: Uint8Array): boolean {
  if (n !== k.length) return false;
  for (let i = 0; i < n; i++) if (buf[off + i] !== k[i]) return false;
  return true;
}

function show(buf: Buffer, off: number, n: number): string {
  const s = buf.toString('utf8', off, off + Math.min(n, 64));
  return JSON.stringify(n > 64 ? `${s}…` : s).slice(1, -1);
}
