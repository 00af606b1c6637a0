/**
 * SeekableZstdEncoder: re-encodes a NAR as a sequence of independent zstd frames whose
 * boundaries respect the chunks of a narfs index (nar-index.ts), so that any chunk can be
 * decompressed from one ranged read of the frames holding it, without the rest.
 *
 * Frame rule (the invariant a reader relies on): every chunk of every regular file (bytes
 * [narOffset + k·chunkSize, min(narOffset + (k+1)·chunkSize, narOffset + size)) of the NAR)
 * lies inside exactly one frame. A frame is cut only at a chunk boundary or outside file
 * contents: before every chunk of a file larger than one chunk and before the next file
 * after it (so such a chunk is a frame with at most NAR framing bytes besides), and before
 * a small file (one chunk) that would take the frame past `frameTarget` bytes, so small files pack into frames of
 * about `frameTarget` (>= chunkSize). Runs of non-content bytes (names, symlinks, headers)
 * are cut at `frameTarget` too. Packing small files matters for size: a frame starts with
 * an empty zstd window, and many small files compress well only against their neighbours
 * (measured in index-command.ts).
 *
 * Frames are plain zstd frames (content size in the header, no checksum: the index's chunk
 * hashes verify the bytes) at the given level; concatenated, they are one valid `.zst` file
 * that `zstd -d` and Nix decode as a whole. `narOffsets[i]`/`fileOffsets[i]` are where frame
 * i starts in the NAR and in the compressed file (the SeekableFrames of the index).
 *
 * Use: feed the NAR's bytes to a NarParser whose handler calls `addFile` on each
 * `onFileStart` (size > 0), THEN `push` the same bytes here (the parser reports a file
 * before its contents begin, so every file whose contents start in a buffer is known when
 * that buffer is pushed). Memory: one frame (about chunkSize) at a time.
 */
import { createRequire } from 'node:module';

import { NarfsError } from '../errors.js';

interface CCtx {
  compress(data: Uint8Array): Buffer;
  setParameters(p: { compressionLevel?: number; contentSizeFlag?: boolean; checksumFlag?: boolean }): void;
}

function newCompressor(level: number): CCtx {
  const { Compressor } = createRequire(import.meta.url)('zstd-napi') as { Compressor: new () => CCtx };
  const c = new Compressor();
  c.setParameters({ compressionLevel: level, contentSizeFlag: true, checksumFlag: false });
  return c;
}

export class SeekableZstdEncoder {
  readonly narOffsets: number[] = [];
  readonly fileOffsets: number[] = [];
  private readonly cctx: CCtx;
  private readonly files: Array<{ start: number; end: number }> = [];
  private next = 0;
  /** NAR bytes consumed. */
  private pos = 0;
  /** No cut before this NAR offset (the end of the chunk being added). */
  private noCutUntil = 0;
  private parts: Buffer[] = [];
  private frameLen = 0;
  /** The frame holds a chunk of a multi-chunk file: only NAR framing bytes may join it. */
  private frameHasBig = false;
  private frameStart = 0;
  private fileLen = 0;
  private ended = false;

  /** Frames of small files and NAR framing grow up to this many bytes (>= chunkSize). */
  readonly frameTarget: number;

  constructor(
    readonly chunkSize: number,
    level = 3,
    frameTarget = chunkSize,
  ) {
    this.cctx = newCompressor(level);
    this.frameTarget = Math.max(frameTarget, chunkSize);
  }

  /** Compressed bytes emitted so far. */
  get compressedSize(): number {
    return this.fileLen;
  }

  /** A regular file of `size` > 0 whose contents start at `narOffset` (NAR order). */
  addFile(narOffset: number, size: number): void {
    if (size === 0) return;
    const last = this.files[this.files.length - 1];
    if (narOffset < this.pos || (last !== undefined && narOffset < last.end)) {
      throw new NarfsError('ERR_INTERNAL', `SeekableZstdEncoder: file at ${narOffset} announced late or out of order`);
    }
    this.files.push({ start: narOffset, end: narOffset + size });
  }

  /** NAR bytes, in order; returns the frames completed (compressed). */
  push(bytes: Buffer): Buffer[] {
    if (this.ended) throw new NarfsError('ERR_INTERNAL', 'SeekableZstdEncoder: push after end');
    const out: Buffer[] = [];
    const cs = this.chunkSize;
    let i = 0;
    while (i < bytes.length) {
      const p = this.pos;
      let stepEnd: number;
      if (p >= this.noCutUntil) {
        while (this.next < this.files.length && this.files[this.next]!.end <= p) this.next++;
        // Files fully passed are forgotten: memory stays bounded by the files ahead.
        if (this.next > 1024) {
          this.files.splice(0, this.next);
          this.next = 0;
        }
        const f = this.files[this.next];
        if (f !== undefined && p >= f.start) {
          // At a chunk boundary inside a file's contents.
          const len = Math.min(cs, f.end - p);
          // A chunk of a multi-chunk file starts a frame of its own (one chunk = one frame);
          // small files pack up to frameTarget.
          const big = f.end - f.start > cs;
          if (this.frameLen > 0 && (big || this.frameHasBig || this.frameLen + len > this.frameTarget)) this.cut(out);
          if (big) this.frameHasBig = true;
          this.noCutUntil = p + len;
          stepEnd = this.noCutUntil;
        } else {
          if (this.frameLen >= this.frameTarget) this.cut(out);
          stepEnd = Math.min(f !== undefined ? f.start : Number.MAX_SAFE_INTEGER, p + Math.max(1, this.frameTarget - this.frameLen));
        }
      } else {
        stepEnd = this.noCutUntil;
      }
      const n = Math.min(stepEnd - p, bytes.length - i);
      this.parts.push(bytes.subarray(i, i + n));
      this.frameLen += n;
      this.pos += n;
      i += n;
    }
    return out;
  }

  /** Flushes the last frame. */
  end(): Buffer[] {
    if (this.ended) return [];
    const out: Buffer[] = [];
    this.cut(out);
    this.ended = true;
    if (this.narOffsets.length === 0) throw new NarfsError('ERR_INTERNAL', 'SeekableZstdEncoder: empty NAR');
    return out;
  }

  private cut(out: Buffer[]): void {
    if (this.frameLen === 0) return;
    const data = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.frameLen);
    const frame = this.cctx.compress(data);
    this.narOffsets.push(this.frameStart);
    this.fileOffsets.push(this.fileLen);
    this.fileLen += frame.length;
    this.frameStart += this.frameLen;
    this.parts = [];
    this.frameLen = 0;
    this.frameHasBig = false;
    out.push(frame);
  }
}
