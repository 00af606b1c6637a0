import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

import { SeekableZstdEncoder } from '../../../src/index/seekable-zstd-encoder.js';
import { chunkCount } from '../../../src/nix/nar-index.js';
import { NarParser, parseNar } from '../../../src/nix/nar-parser.js';
import type { NarNode } from '../../../src/nix/nar-listing.js';
import { writeNar, type NarTree } from '../../../src/nix/nar-writer.js';

const { Decompressor } = createRequire(import.meta.url)('zstd-napi') as { Decompressor: new () => { decompress(b: Uint8Array): Buffer } };
const CS = 64 * 1024;

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = 0x61 + ((x >>> 16) % 8); // compressible, not trivially
  }
  return b;
}

const entries: Record<string, NarTree> = {
  'big.bin': { type: 'regular', contents: pattern(3 * CS + 777, 1) },
  'exact.bin': { type: 'regular', contents: pattern(2 * CS, 2) },
  'one-chunk.bin': { type: 'regular', contents: pattern(CS, 3) },
  link: { type: 'symlink', target: 'x'.repeat(4000) },
};
for (let i = 0; i < 300; i++) entries[`small-${String(i).padStart(3, '0')}`] = { type: 'regular', contents: pattern(100 + i * 37, 10 + i) };
entries['z-after'] = { type: 'directory', entries: { tail: { type: 'regular', contents: pattern(5 * CS + 1, 9) }, 'z.txt': { type: 'regular', contents: 'end\n' } } };
const NAR = writeNar({ type: 'directory', entries });

function files(node: NarNode): Array<{ narOffset: number; size: number }> {
  if (node.type === 'regular') return node.size > 0 ? [{ narOffset: node.narOffset, size: node.size }] : [];
  if (node.type === 'symlink') return [];
  return [...node.entries.values()].flatMap(files);
}
const FILES = files(parseNar(NAR));

function encode(writes: number[], frameTarget: number): { file: Buffer; enc: SeekableZstdEncoder } {
  const enc = new SeekableZstdEncoder(CS, 3, frameTarget);
  const parser = new NarParser({ onFileStart: (_p, size, _x, off) => enc.addFile(off, size) });
  const out: Buffer[] = [];
  let off = 0;
  for (let i = 0; off < NAR.length; i++) {
    const piece = NAR.subarray(off, off + writes[i % writes.length]!);
    off += piece.length;
    parser.write(piece);
    out.push(...enc.push(piece));
  }
  parser.end();
  out.push(...enc.end());
  return { file: Buffer.concat(out), enc };
}

const frameOf = (starts: number[], at: number): number => {
  let i = 0;
  while (i + 1 < starts.length && starts[i + 1]! <= at) i++;
  return i;
};

describe('SeekableZstdEncoder', () => {
  for (const frameTarget of [CS, 4 * CS]) {
    it(`frames of at most ~${frameTarget / 1024} KiB of small files; every chunk inside one frame; each frame decodes alone`, () => {
      const { file, enc } = encode([NAR.length], frameTarget);
      const d = new Decompressor();
      assert.ok(d.decompress(file).equals(NAR), 'the concatenated frames are the NAR');
      const n = enc.narOffsets.length;
      assert.equal(enc.fileOffsets.length, n);
      assert.equal(enc.narOffsets[0], 0);
      assert.equal(enc.compressedSize, file.length);
      for (let i = 0; i < n; i++) {
        const narEnd = enc.narOffsets[i + 1] ?? NAR.length;
        const fileEnd = enc.fileOffsets[i + 1] ?? file.length;
        assert.ok(new Decompressor().decompress(file.subarray(enc.fileOffsets[i]!, fileEnd)).equals(NAR.subarray(enc.narOffsets[i]!, narEnd)), `frame ${i}`);
        // Bounded: a frame holds one chunk or small files up to the target, plus NAR framing (< 5 KiB here).
        assert.ok(narEnd - enc.narOffsets[i]! <= frameTarget + 5000, `frame ${i} is ${narEnd - enc.narOffsets[i]!} bytes`);
      }
      for (const f of FILES) {
        const k = chunkCount(f.size, CS);
        for (let c = 0; c < k; c++) {
          const start = f.narOffset + c * CS;
          const last = Math.min(start + CS, f.narOffset + f.size) - 1;
          assert.equal(frameOf(enc.narOffsets, start), frameOf(enc.narOffsets, last), `chunk ${c} of the file at ${f.narOffset}`);
          // A chunk of a multi-chunk file starts its frame and shares it with no other file.
          if (k > 1) {
            assert.ok(enc.narOffsets.includes(start), `chunk ${c} of the big file at ${f.narOffset} does not start a frame`);
            const fi = frameOf(enc.narOffsets, start);
            const frameEnd = enc.narOffsets[fi + 1] ?? NAR.length;
            for (const g of FILES) if (g !== f) assert.ok(g.narOffset >= frameEnd || g.narOffset + g.size <= start, `file at ${g.narOffset} shares the frame of a big chunk`);
          }
        }
      }
      if (frameTarget > CS) assert.ok(n < 30, `small files are packed (${n} frames)`);
    });
  }

  it('gives the same bytes whatever the write sizes', () => {
    const whole = encode([NAR.length], 4 * CS);
    for (const writes of [[1, 7, 4096], [CS - 1], [100_000, 3]]) {
      const other = encode(writes, 4 * CS);
      assert.ok(other.file.equals(whole.file), `writes ${writes.join(',')}`);
      assert.deepEqual(other.enc.narOffsets, whole.enc.narOffsets);
    }
  });

  it('refuses files announced late or out of order', () => {
    const enc = new SeekableZstdEncoder(CS);
    enc.addFile(100, 10);
    assert.throws(() => enc.addFile(105, 10), /out of order/);
    enc.push(Buffer.alloc(200));
    assert.throws(() => enc.addFile(150, 10), /late/);
  });
});
