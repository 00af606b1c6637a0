/**
 * indexStorePath: publishes the narfs index of one store path of a datalake (and, with
 * `seekable`, a seekable zstd re-encoding of its NAR). The publisher half of issue 10.
 *
 * Steps: read `<hashPart>.narinfo`; if `<hashPart>.narfs-index` exists, parses, is bound to
 * this narinfo, carries a signature by our key, has the chunk size asked for and (with
 * `seekable`, for a compressed NAR) frames matching the narinfo's FileHash, the path is
 * skipped (idempotence). Otherwise the NAR is fetched ONCE as a stream, decompressed
 * (src/compression), hashed and size-checked against NarHash/NarSize while it streams,
 * parsed by NarParser feeding IndexBuilder (and SeekableZstdEncoder, whose frames go to a
 * local temp file). Nothing is written unless the NAR verified. Then, in this order, so a
 * reader never sees an inconsistent state: the seekable NAR (`nar/<FileHash nix32>.nar.zst`,
 * content-addressed, new), the signed index, the narinfo rewritten to the new file
 * (rewriteNarInfoFile keeps every other line; the Nix signature stays valid). A reader
 * holding the old narinfo sees frames whose FileHash is not its own and falls back to the
 * whole NAR.
 *
 * An index made by another key is replaced, but its signatures are kept when its body is
 * the same (same fingerprint): signatures add up. `Compression: none` NARs are indexed but
 * never re-encoded (ranged reads serve them as they are). The old NAR file is left in place.
 *
 * Memory: bounded by the tree and the hashes (32 bytes per chunk), plus one zstd frame.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import { createDecompressor } from '../compression/decompress.js';
import type { Datalake } from '../datalake/datalake.js';
import type { DatalakeWriter } from '../datalake/datalake-writer.js';
import { NarfsError } from '../errors.js';
import { formatHash, hashEquals, type Hash } from '../nix/hash.js';
import { IndexBuilder } from '../nix/nar-index-builder.js';
import {
  NAR_INDEX_SUFFIX,
  encodeNarIndex,
  narIndexFingerprint,
  parseNarIndex,
  signNarIndex,
  verifyNarIndex,
  type NarIndex,
} from '../nix/nar-index.js';
import { NarParser } from '../nix/nar-parser.js';
import { parseNarInfo, type NarInfo } from '../nix/narinfo.js';
import { encodeNix32 } from '../nix/nix32.js';
import { publicKeyOf, type SecretKey } from '../nix/signature.js';
import { storePathFull } from '../nix/store-path.js';
import { rewriteNarInfoFile } from './rewrite-narinfo-file.js';
import { SeekableZstdEncoder } from './seekable-zstd-encoder.js';

export interface IndexStorePathOptions {
  reader: Datalake;
  writer: DatalakeWriter;
  secretKey: SecretKey;
  chunkSize: number;
  seekable: boolean;
  /** zstd level of the seekable frames (Nix writes zstd NARs at 3). */
  zstdLevel: number;
  /** Frames of small files pack up to this many NAR bytes (default: chunkSize). */
  frameSize?: number;
  /** Where the seekable NAR is staged before upload (default os.tmpdir()). */
  tmpDir?: string;
  signal?: AbortSignal;
}

export interface IndexStorePathResult {
  storePath: string;
  status: 'skipped' | 'indexed';
  /** True when a seekable NAR was written and the narinfo rewritten. */
  reencoded: boolean;
  narSize: number;
  files: number;
  /** The narinfo's FileSize before (when it had one) and after a re-encoding. */
  fileSizeBefore?: number;
  fileSizeAfter?: number;
  frames?: number;
}

export async function indexStorePath(hashPart: string, o: IndexStorePathOptions): Promise<IndexStorePathResult> {
  const niRel = `${hashPart}.narinfo`;
  const idxRel = `${hashPart}${NAR_INDEX_SUFFIX}`;
  const niBytes = await o.reader.getBytes(niRel, withSignal(o.signal));
  if (niBytes === undefined) {
    throw new NarfsError('ERR_PATH_NOT_FOUND', `${o.reader.displayUrl} has no ${niRel}`, { details: { hashPart } });
  }
  const niText = niBytes.toString('utf8');
  const ni = parseNarInfo(niText, `${o.reader.displayUrl}/${niRel}`);
  const storePath = storePathFull(ni.storePath);
  const reencode = o.seekable && ni.compression !== 'none';

  const existing = await readExisting(o, idxRel);
  if (existing !== undefined && isCurrent(existing, ni, o, reencode)) {
    return { storePath, status: 'skipped', reencoded: false, narSize: ni.narSize, files: existing.files.length };
  }

  const stream = await o.reader.getStream(ni.url, withSignal(o.signal));
  if (stream === undefined) {
    throw new NarfsError('ERR_NAR_MISSING', `${o.reader.displayUrl} has ${niRel} but not its NAR ${ni.url}`, { details: { storePath } });
  }
  const tmp = reencode ? await fsp.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'narfs-index-')) : undefined;
  try {
    const staged = tmp === undefined ? undefined : path.join(tmp, 'nar.zst');
    const built = await buildFromStream(stream, ni, o, staged);
    const idx = built.index;
    let fileSizeAfter: number | undefined;
    if (built.frames !== undefined && staged !== undefined) {
      const { encoder, fileHash } = built.frames;
      fileSizeAfter = encoder.compressedSize;
      idx.frames = { fileHash, fileSize: fileSizeAfter, narOffsets: encoder.narOffsets, fileOffsets: encoder.fileOffsets };
      const narRel = `nar/${encodeNix32(fileHash.digest)}.nar.zst`;
      await o.writer.putFile(narRel, staged, withSignal(o.signal));
      sign(idx, existing, o.secretKey);
      await o.writer.putBytes(idxRel, encodeNarIndex(idx), withSignal(o.signal));
      const rewritten = rewriteNarInfoFile(niText, { url: narRel, compression: 'zstd', fileHash, fileSize: fileSizeAfter }, niRel);
      await o.writer.putBytes(niRel, Buffer.from(rewritten, 'utf8'), withSignal(o.signal));
    } else {
      sign(idx, existing, o.secretKey);
      await o.writer.putBytes(idxRel, encodeNarIndex(idx), withSignal(o.signal));
    }
    return {
      storePath,
      status: 'indexed',
      reencoded: fileSizeAfter !== undefined,
      narSize: ni.narSize,
      files: idx.files.length,
      ...(ni.fileSize !== undefined ? { fileSizeBefore: ni.fileSize } : {}),
      ...(fileSizeAfter !== undefined ? { fileSizeAfter, frames: idx.frames!.narOffsets.length } : {}),
    };
  } finally {
    if (tmp !== undefined) await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/** The published index, parsed, or undefined when absent or unreadable (it gets replaced). */
async function readExisting(o: IndexStorePathOptions, idxRel: string): Promise<NarIndex | undefined> {
  const bytes = await o.reader.getBytes(idxRel, withSignal(o.signal));
  if (bytes === undefined) return undefined;
  try {
    return parseNarIndex(bytes);
  } catch {
    return undefined;
  }
}

/** True when the published index needs no work: bound, signed by our key, same chunking, frames as asked. */
function isCurrent(idx: NarIndex, ni: NarInfo, o: IndexStorePathOptions, reencode: boolean): boolean {
  try {
    verifyNarIndex(idx, ni, [publicKeyOf(o.secretKey)], true);
  } catch {
    return false;
  }
  if (idx.chunkSize !== o.chunkSize) return false;
  const framesMatch =
    idx.frames !== undefined &&
    ni.compression === 'zstd' &&
    ni.fileHash !== undefined &&
    hashEquals(idx.frames.fileHash, ni.fileHash) &&
    idx.frames.fileSize === ni.fileSize;
  if (reencode) return framesMatch;
  // Frames that no longer match the narinfo would be ignored by readers: rebuild without them.
  return idx.frames === undefined || framesMatch;
}

/** Adds our signature; keeps the old index's signatures when its body is the same. */
function sign(idx: NarIndex, existing: NarIndex | undefined, sk: SecretKey): void {
  const sigs = new Set<string>([signNarIndex(idx, sk)]);
  if (existing !== undefined && narIndexFingerprint(existing) === narIndexFingerprint(idx)) {
    for (const s of existing.signatures) if (!s.startsWith(`${sk.name}:`)) sigs.add(s);
  }
  idx.signatures = [...sigs].sort();
}

interface Built {
  index: NarIndex;
  frames?: { encoder: SeekableZstdEncoder; fileHash: Hash };
}

/** Streams the NAR once: decompress, verify NarHash/NarSize, index, and re-encode into `staged`. */
async function buildFromStream(stream: Readable, ni: NarInfo, o: IndexStorePathOptions, staged: string | undefined): Promise<Built> {
  const storePath = storePathFull(ni.storePath);
  const encoder = staged === undefined ? undefined : new SeekableZstdEncoder(o.chunkSize, o.zstdLevel, o.frameSize ?? o.chunkSize);
  const builder = new IndexBuilder(o.chunkSize);
  const parser = new NarParser({
    onFileStart(p, size, executable, narOffset) {
      builder.onFileStart(p, size, executable, narOffset);
      encoder?.addFile(narOffset, size);
    },
    onFileContents: (p, chunk, off) => builder.onFileContents(p, chunk, off),
    onFileEnd: (p) => builder.onFileEnd(p),
  });
  const narHasher = createHash('sha256');
  const fileHasher = createHash('sha256');
  let narBytes = 0;
  const out = staged === undefined ? undefined : await fsp.open(staged, 'wx', 0o600);
  const decompressor = await createDecompressor(ni.compression, withSignal(o.signal));
  try {
    const consume = async (source: AsyncIterable<Buffer>): Promise<void> => {
      for await (const chunk of source) {
        narBytes += chunk.length;
        if (narBytes > ni.narSize) {
          throw new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR of ${storePath} is longer than its NarSize ${ni.narSize}`, { details: { storePath } });
        }
        narHasher.update(chunk);
        parser.write(chunk);
        if (encoder !== undefined) {
          for (const frame of encoder.push(chunk)) {
            fileHasher.update(frame);
            await writeAll(out!, frame);
          }
        }
      }
    };
    await pipeline(stream, decompressor, consume, withSignal(o.signal));
    if (narBytes !== ni.narSize) {
      throw new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR of ${storePath} is ${narBytes} bytes, its NarSize ${ni.narSize}`, { details: { storePath } });
    }
    const narHash: Hash = { algo: 'sha256', digest: narHasher.digest() };
    if (!hashEquals(narHash, ni.narHash)) {
      throw new NarfsError('ERR_NAR_HASH_MISMATCH', `the NAR of ${storePath} hashes to ${formatHash(narHash, 'nix32')}, not its NarHash ${formatHash(ni.narHash, 'nix32')}`, {
        details: { storePath },
      });
    }
    const root = parser.end();
    const index = builder.finish(root, ni.narHash, ni.narSize, storePath);
    if (encoder === undefined) return { index };
    for (const frame of encoder.end()) {
      fileHasher.update(frame);
      await writeAll(out!, frame);
    }
    await out!.sync();
    return { index, frames: { encoder, fileHash: { algo: 'sha256', digest: fileHasher.digest() } } };
  } finally {
    await out?.close();
    if (!stream.destroyed) stream.destroy();
  }
}

async function writeAll(fh: fsp.FileHandle, b: Buffer): Promise<void> {
  for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
}

function withSignal(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal === undefined ? {} : { signal };
}
