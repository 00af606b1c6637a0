/**
 * IndexBuilder: a NarHandler (nar-parser.ts) that computes, while a NarParser streams a
 * NAR, the SHA-256 of every regular file and of each of its chunks (chunk k = bytes
 * [k * chunkSize, (k + 1) * chunkSize) of the file's contents; none with `chunkHashes:
 * false`, for a whole-only index), and with the parser's tree gives the unsigned NarIndex
 * of nar-index.ts.
 *
 * Use: `const b = new IndexBuilder(chunkSize); const p = new NarParser(b); p.write(...);
 * const root = p.end(); const idx = b.finish(root, narHash, narSize, storePath);`.
 * To also unpack, wrap it: call the builder's handler methods from your own handler.
 *
 * Invariants: contents are hashed as they pass and never kept (memory is O(number of
 * files × chunks × 32 bytes)); `finish` checks that the files it hashed are exactly the
 * regular files of size > 0 of the tree, in NAR order, and that the tree lays out NarSize
 * bytes (ERR_INVALID_ARGUMENT otherwise: the caller fed another NAR than it describes),
 * unless `check: false` (a caller that parses the encoded index anyway, which lays the
 * tree out again, and whose encoder finds every file of the tree among the files hashed).
 * A file of one chunk whose contents come in one piece (most small files) is hashed in one
 * call (crypto.hash) rather than through a Hash object: ~40 % less time per small file
 * (measured on a NAR of 100,000 small files).
 */

import { createHash, hash, type Hash as CryptoHash } from 'node:crypto';

import { NarfsError } from '../errors.js';
import type { Hash } from './hash.js';
import { chunkCount, encodeNarIndex, isValidChunkSize, parseNarIndex, type IndexedFile, type NarIndex } from './nar-index.js';
import type { NarNode } from './nar-listing.js';
import type { NarHandler } from './nar-parser.js';

export interface IndexBuilderOptions {
  /**
   * False: whole-file hashes only, no chunk hashes (the index is `wholeOnly`): for a tree
   * whose files are committed whole, never read by range. Default true.
   */
  chunkHashes?: boolean;
  /** Called when a regular file of size > 0 is complete, with its hashes. */
  onFileHashed?(path: readonly string[], file: IndexedFile, executable: boolean): void;
}

export class IndexBuilder implements NarHandler {
  readonly chunkSize: number;
  private readonly files: IndexedFile[] = [];
  private readonly onFileHashed: IndexBuilderOptions['onFileHashed'];
  private readonly wholeOnly: boolean;

  // The file being hashed.
  private size = 0;
  private narOffset = 0;
  private executable = false;
  /** The file's hash so far; undefined until its first contents (then maybe hashed in one call: `oneShot`). */
  private whole: CryptoHash | undefined;
  private oneShot: Buffer | undefined;
  private chunk: CryptoHash | undefined;
  /** Bytes of the current chunk hashed so far. */
  private chunkFill = 0;
  private chunkHashes: Buffer = Buffer.alloc(0);
  private chunkIndex = 0;
  private received = 0;

  constructor(chunkSize: number, options: IndexBuilderOptions = {}) {
    if (!isValidChunkSize(chunkSize)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `chunk size ${chunkSize} is not a power of two in 64 KiB..4 MiB`);
    }
    this.chunkSize = chunkSize;
    this.onFileHashed = options.onFileHashed;
    this.wholeOnly = options.chunkHashes === false;
  }

  onFileStart(_path: readonly string[], size: number, executable: boolean, narOffset: number): void {
    this.size = size;
    this.narOffset = narOffset;
    this.executable = executable;
    this.received = 0;
    this.whole = undefined;
    this.oneShot = undefined;
    if (size === 0) return;
    const n = this.wholeOnly ? 1 : chunkCount(size, this.chunkSize);
    // One-chunk files (and every file of a whole-only index): the file hash alone.
    this.chunk = n > 1 ? createHash('sha256') : undefined;
    this.chunkHashes = n > 1 ? Buffer.allocUnsafe(32 * n) : Buffer.alloc(0);
    this.chunkIndex = 0;
    this.chunkFill = 0;
  }

  onFileContents(_path: readonly string[], data: Buffer, offsetInFile: number): void {
    if (offsetInFile !== this.received) throw internal(`contents at ${offsetInFile}, expected ${this.received}`);
    if (offsetInFile === 0 && data.length === this.size && this.chunk === undefined) {
      this.received = data.length;
      this.oneShot = hash('sha256', data, 'buffer') as unknown as Buffer;
      return;
    }
    this.received += data.length;
    (this.whole ??= createHash('sha256')).update(data);
    if (this.chunk === undefined) return;
    let pos = 0;
    while (pos < data.length) {
      const n = Math.min(this.chunkSize - this.chunkFill, data.length - pos);
      this.chunk.update(data.subarray(pos, pos + n));
      this.chunkFill += n;
      pos += n;
      if (this.chunkFill === this.chunkSize) this.endChunk();
    }
  }

  onFileEnd(path: readonly string[]): void {
    if (this.size === 0) return;
    if (this.received !== this.size) throw internal(`file ended after ${this.received} of ${this.size} bytes`);
    const sha256 = this.oneShot ?? this.whole!.digest();
    if (this.chunk !== undefined && this.chunkFill > 0) this.endChunk();
    const file: IndexedFile = {
      narOffset: this.narOffset,
      size: this.size,
      sha256,
      chunkHashes: this.chunk !== undefined ? this.chunkHashes : this.wholeOnly && chunkCount(this.size, this.chunkSize) > 1 ? Buffer.alloc(0) : sha256,
    };
    if (this.chunk !== undefined && this.chunkIndex !== chunkCount(this.size, this.chunkSize)) {
      throw internal(`file hashed into ${this.chunkIndex} chunks`);
    }
    this.whole = undefined;
    this.oneShot = undefined;
    this.chunk = undefined;
    this.files.push(file);
    this.onFileHashed?.(path, file, this.executable);
  }

  private endChunk(): void {
    this.chunk!.digest().copy(this.chunkHashes, 32 * this.chunkIndex);
    this.chunkIndex++;
    this.chunkFill = 0;
    if (this.chunkIndex < chunkCount(this.size, this.chunkSize)) this.chunk = createHash('sha256');
  }

  /**
   * The unsigned index of the NAR the parser read: `root` is what `NarParser#end` returned,
   * `narHash`/`narSize` those of the same bytes (the caller computed or verified them).
   */
  finish(root: NarNode, narHash: Hash, narSize: number, storePath: string, { check: selfCheck = true }: { check?: boolean } = {}): NarIndex {
    const idx: NarIndex = { storePath, narHash, narSize, chunkSize: this.chunkSize, root, files: this.files, signatures: [] };
    if (this.wholeOnly) idx.wholeOnly = true;
    if (!selfCheck) return idx;
    // The parser lays the tree out again and must find the same files and size.
    let check: NarIndex;
    try {
      check = parseNarIndex(encodeNarIndex(idx));
    } catch (e) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `the index built for ${storePath} is inconsistent: ${(e as Error).message}`, { cause: e });
    }
    if (check.files.length !== this.files.length || check.files.some((f, i) => f.narOffset !== this.files[i]!.narOffset)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `the files hashed for ${storePath} are not the files of its tree`);
    }
    return idx;
  }
}

function internal(why: string): NarfsError {
  return new NarfsError('ERR_INTERNAL', `IndexBuilder: ${why}`);
}
