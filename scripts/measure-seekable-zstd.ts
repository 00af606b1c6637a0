/**
 * Measures what `narfs index --seekable` costs in size: for each NAR source, the total of
 * the chunk-aligned independent zstd frames (SeekableZstdEncoder) at several chunk sizes
 * versus one plain zstd stream of the same NAR at the same level (`zstd -<level> -c`, what
 * Nix writes for `?compression=zstd`). One pass per source: the NAR streams once through
 * NarParser, every encoder and `zstd`.
 *
 *   node --import tsx scripts/measure-seekable-zstd.ts [--level 3] [--chunks 256K,512K,1M] [--frames 1M,1M,1M] SOURCE...
 *
 * --frames: the frame target of each chunk size (small files and NAR framing pack up to it;
 * a chunk of a multi-chunk file is always a frame of its own). Default: the chunk size.
 *
 * SOURCE: a directory or file (dumped with `nix-store --dump`), a `.nar` file, or a
 * file:// datalake (every NAR it holds, decompressed with src/compression). Prints one line
 * per source and a total line; ratio = seekable / plain.
 */
import { spawn } from 'node:child_process';
import { createReadStream, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { parseArgs } from 'node:util';

import { createDecompressor } from '../src/compression/decompress.js';
import { SeekableZstdEncoder } from '../src/index/seekable-zstd-encoder.js';
import { NarParser } from '../src/nix/nar-parser.js';
import { parseNarInfo } from '../src/nix/narinfo.js';

const { values, positionals } = parseArgs({
  options: { level: { type: 'string', default: '3' }, chunks: { type: 'string', default: '256K,512K,1M' }, frames: { type: 'string', default: '' } },
  allowPositionals: true,
});
const level = Number(values.level);
const size = (s: string): number => Number(/^(\d+)K$/i.exec(s)?.[1] ?? NaN) * 1024 || Number(/^(\d+)M$/i.exec(s)?.[1] ?? NaN) * 1048576;
const chunkSizes = values.chunks!.split(',').map(size);
/** Frame target per chunk size (default: the chunk size itself). */
const frameTargets = values.frames === '' ? chunkSizes : values.frames!.split(',').map(size);

interface Tally {
  nar: number;
  plain: number;
  seekable: number[];
  frames: number[];
}

async function measure(nar: Readable): Promise<Tally> {
  const encoders = chunkSizes.map((cs, i) => new SeekableZstdEncoder(cs, level, frameTargets[i]));
  const parser = new NarParser({ onFileStart: (_p, size, _x, off) => encoders.forEach((e) => e.addFile(off, size)) });
  const z = spawn('zstd', [`-${level}`, '-c', '-q'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let plain = 0;
  z.stdout.on('data', (b: Buffer) => (plain += b.length));
  const zDone = new Promise<void>((res, rej) => z.on('close', (c) => (c === 0 ? res() : rej(new Error(`zstd exited ${c}`)))));
  let narBytes = 0;
  for await (const chunk of nar) {
    const b = chunk as Buffer;
    narBytes += b.length;
    parser.write(b);
    for (const e of encoders) e.push(b);
    if (!z.stdin.write(b)) await new Promise((r) => z.stdin.once('drain', r));
  }
  parser.end();
  for (const e of encoders) e.end();
  z.stdin.end();
  await zDone;
  return { nar: narBytes, plain, seekable: encoders.map((e) => e.compressedSize), frames: encoders.map((e) => e.narOffsets.length) };
}

function* sources(arg: string): Generator<{ name: string; open: () => Promise<Readable> }> {
  if (arg.startsWith('file://')) {
    const dir = new URL(arg).pathname;
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.narinfo')).sort()) {
      const ni = parseNarInfo(readFileSync(join(dir, f), 'utf8'));
      yield {
        name: `${arg}/${f}`,
        open: async () => createReadStream(join(dir, ni.url)).pipe(await createDecompressor(ni.compression)),
      };
    }
  } else if (arg.endsWith('.nar') && statSync(arg).isFile()) {
    yield { name: arg, open: async () => createReadStream(arg) };
  } else {
    yield { name: arg, open: async () => spawn('nix-store', ['--dump', arg], { stdio: ['ignore', 'pipe', 'inherit'] }).stdout };
  }
}

const total: Tally = { nar: 0, plain: 0, seekable: chunkSizes.map(() => 0), frames: chunkSizes.map(() => 0) };
const mib = (n: number): string => (n / 1048576).toFixed(1).padStart(8);
const row = (name: string, t: Tally): string =>
  `${name.padEnd(40)} NAR ${mib(t.nar)} MiB  zstd-${level} ${mib(t.plain)} MiB  ` +
  chunkSizes.map((cs, i) => `${cs / 1024}K/${frameTargets[i]! / 1024}K: ${mib(t.seekable[i]!)} (${(t.seekable[i]! / t.plain).toFixed(3)}x, ${t.frames[i]} frames)`).join('  ');
for (const arg of positionals) {
  const per: Tally = { nar: 0, plain: 0, seekable: chunkSizes.map(() => 0), frames: chunkSizes.map(() => 0) };
  for (const s of sources(arg)) {
    const t = await measure(await s.open());
    for (const acc of [per, total]) {
      acc.nar += t.nar;
      acc.plain += t.plain;
      t.seekable.forEach((v, i) => (acc.seekable[i]! += v));
      t.frames.forEach((v, i) => (acc.frames[i]! += v));
    }
  }
  console.log(row(arg, per));
}
console.log(row('TOTAL', total));
