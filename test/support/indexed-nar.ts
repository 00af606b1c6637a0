/**
 * Test support for per-file laziness: the NarIndex of a NAR held in memory (IndexBuilder fed
 * by a real NarParser), and a minimal seekable zstd writer — independent zstd frames, one
 * starting at every chunk boundary of every file (what `narfs index --seekable` promises;
 * the bytes between files ride in the frame before them), and the frame table mapping them.
 *
 * The seekable file's FileHash is the SHA-256 of the frames back to back; a narinfo that
 * points at it has `Compression: zstd`, that FileHash and FileSize.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Hash } from '../../src/nix/hash.js';
import { chunkCount, type NarIndex, type SeekableFrames } from '../../src/nix/nar-index.js';
import { IndexBuilder } from '../../src/nix/nar-index-builder.js';
import { NarParser } from '../../src/nix/nar-parser.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as { compress(data: Uint8Array, params?: { compressionLevel?: number }): Buffer };

export function sha256(b: Uint8Array): Hash {
  return { algo: 'sha256', digest: createHash('sha256').update(b).digest() };
}

/** The unsigned index of `nar` (as `narfs index` would build it). */
export function indexNar(nar: Buffer, storePath: string, chunkSize: number): NarIndex {
  const b = new IndexBuilder(chunkSize);
  const p = new NarParser(b);
  p.write(nar);
  const root = p.end();
  return b.finish(root, sha256(nar), nar.length, storePath);
}

export interface Seekable {
  /** The .nar.zst bytes: independent frames back to back. */
  bytes: Buffer;
  frames: SeekableFrames;
}

/** Frames cut at every chunk start of every file (and at NAR offset 0). */
export function writeSeekable(nar: Buffer, idx: NarIndex, level = 3): Seekable {
  const cuts = new Set<number>([0]);
  for (const f of idx.files) {
    for (let k = 0; k < chunkCount(f.size, idx.chunkSize); k++) cuts.add(f.narOffset + k * idx.chunkSize);
  }
  const narOffsets = [...cuts].sort((a, b) => a - b);
  const parts: Buffer[] = [];
  const fileOffsets: number[] = [];
  let at = 0;
  for (let i = 0; i < narOffsets.length; i++) {
    const end = i + 1 < narOffsets.length ? narOffsets[i + 1]! : nar.length;
    fileOffsets.push(at);
    const c = zstd.compress(nar.subarray(narOffsets[i]!, end), { compressionLevel: level });
    parts.push(c);
    at += c.length;
  }
  const bytes = Buffer.concat(parts);
  return { bytes, frames: { fileHash: sha256(bytes), fileSize: bytes.length, narOffsets, fileOffsets } };
}

/**
 * A seekable zstd file whose frames each hold `every` NAR bytes (the last one the rest),
 * whatever the files: many small files share a frame, as `narfs index --seekable` packs them.
 */
export function writeSeekableEvery(nar: Buffer, every: number, level = 3): Seekable {
  const parts: Buffer[] = [];
  const narOffsets: number[] = [];
  const fileOffsets: number[] = [];
  let at = 0;
  for (let from = 0; from < nar.length; from += every) {
    narOffsets.push(from);
    fileOffsets.push(at);
    const c = zstd.compress(nar.subarray(from, Math.min(nar.length, from + every)), { compressionLevel: level });
    parts.push(c);
    at += c.length;
  }
  const bytes = Buffer.concat(parts);
  return { bytes, frames: { fileHash: sha256(bytes), fileSize: bytes.length, narOffsets, fileOffsets } };
}
