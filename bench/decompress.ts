/**
 * Decompression benchmark: our `createDecompressor` against the reference C tools.
 *
 * Invariant: a benchmark is not a test. Each row prints the throughput (MB/s of
 * *decompressed* output) of the reference tool (`<tool> -dc file > /dev/null`, run by the
 * shell) and of ours (the file piped through `createDecompressor` and consumed in Node as
 * the materialiser would consume it), measured in the same run, interleaved, best of N.
 *
 * Input: a NAR-like (length-prefixed, 8-byte padded) concatenation of regular files from
 * /usr/lib and /usr/share, interleaved, truncated to --size-mb, then compressed with each
 * tool at the level Nix uses by default (libarchive/libbrotli defaults: xz -6, zstd -3,
 * bzip2 -9, gzip -6, brotli -q 11 -w 22). Built once, cached in
 * /var/cache/narfs/bench-decompress/<size>mb/ (override with NARFS_BENCH_DIR).
 *
 * Usage: npx tsx bench/decompress.ts [--size-mb 300] [--runs 3] [--methods xz,zstd]
 *        [--prepare-only] [--candidates]
 * --candidates also measures the in-repo alternatives: for zstd other output chunk sizes and
 * `zstd -dc` as a child process; for gzip and br Node's zlib with its defaults, without
 * input batching, with other chunk sizes, and the C tool as a child process.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, openSync, closeSync, readSync } from 'node:fs';
import { mkdir, readdir, lstat, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Writable, type Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { availableParallelism, loadavg } from 'node:os';
import { createBrotliDecompress, createGunzip } from 'node:zlib';
import { createDecompressor, defaultDecompressorPool } from '../src/compression/decompress.js';
import { spawnDecompressor } from '../src/compression/child-decompressor.js';
import { createZlibDecompressor } from '../src/compression/zlib-decompressor.js';
import { ZstdDecompressor } from '../src/compression/zstd-decompressor.js';

interface Args {
  sizeMb: number;
  runs: number;
  methods: string[];
  prepareOnly: boolean;
  candidates: boolean;
}

const ALL_METHODS = ['xz', 'zstd', 'bzip2', 'br', 'gzip'] as const;

/** method → [file extension, compress argv, reference decompress argv] */
const TOOLS: Record<string, { ext: string; compress: string[]; reference: string[] }> = {
  xz: { ext: 'xz', compress: ['xz', '-6', '-T1', '-c'], reference: ['xz', '-dc'] },
  zstd: { ext: 'zst', compress: ['zstd', '-3', '-q', '-c'], reference: ['zstd', '-dc'] },
  bzip2: { ext: 'bz2', compress: ['bzip2', '-9', '-c'], reference: ['bzip2', '-dc'] },
  br: { ext: 'br', compress: ['brotli', '-q', '11', '-w', '22', '-c'], reference: ['brotli', '-dc'] },
  gzip: { ext: 'gz', compress: ['gzip', '-6', '-c'], reference: ['gzip', '-dc'] },
};

function parseArgs(argv: string[]): Args {
  const args: Args = { sizeMb: 300, runs: 3, methods: [...ALL_METHODS], prepareOnly: false, candidates: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--size-mb') args.sizeMb = Number(next());
    else if (a === '--runs') args.runs = Number(next());
    else if (a === '--methods') args.methods = next().split(',');
    else if (a === '--prepare-only') args.prepareOnly = true;
    else if (a === '--candidates') args.candidates = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!Number.isInteger(args.sizeMb) || args.sizeMb <= 0) throw new Error('--size-mb must be a positive integer');
  if (!Number.isInteger(args.runs) || args.runs <= 0) throw new Error('--runs must be a positive integer');
  for (const m of args.methods) if (!(m in TOOLS)) throw new Error(`unknown method ${m}`);
  return args;
}

async function listFiles(root: string, out: string[], maxFile: number): Promise<void> {
  let entries: string[];
  try {
    entries = (await readdir(root)).sort();
  } catch {
    return;
  }
  for (const name of entries) {
    const p = join(root, name);
    let st;
    try {
      st = await lstat(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) await listFiles(p, out, maxFile);
    else if (st.isFile() && st.size > 0 && st.size <= maxFile) out.push(p);
  }
}

/** Writes the uncompressed input: files of /usr/lib and /usr/share, interleaved. */
async function buildInput(path: string, sizeBytes: number): Promise<void> {
  const lib: string[] = [];
  const share: string[] = [];
  await listFiles('/usr/lib', lib, 64 << 20);
  await listFiles('/usr/share', share, 64 << 20);
  const order: string[] = [];
  for (let i = 0; i < Math.max(lib.length, share.length); i++) {
    if (i < lib.length) order.push(lib[i]!);
    if (i < share.length) order.push(share[i]!);
  }
  const tmp = `${path}.tmp`;
  const out = createWriteStream(tmp);
  let written = 0;
  const write = (b: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      written += b.length;
      out.write(b, (e) => (e ? reject(e) : resolve()));
    });
  const u64 = (n: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };
  const pad = (n: number): Buffer => Buffer.alloc((8 - (n % 8)) % 8);
  for (const p of order) {
    if (written >= sizeBytes) break;
    let data: Buffer;
    try {
      const fd = openSync(p, 'r');
      try {
        const st = await stat(p);
        data = Buffer.alloc(st.size);
        let off = 0;
        while (off < data.length) {
          const n = readSync(fd, data, off, data.length - off, off);
          if (n === 0) break;
          off += n;
        }
        data = data.subarray(0, off);
      } finally {
        closeSync(fd);
      }
    } catch {
      continue;
    }
    const name = Buffer.from(p);
    await write(Buffer.concat([u64(name.length), name, pad(name.length), u64(data.length)]));
    const room = sizeBytes - written;
    const chunk = data.length > room ? data.subarray(0, room) : data;
    await write(chunk);
    await write(pad(chunk.length));
  }
  await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
  await rename(tmp, path);
}

function run(argv: string[], stdinPath: string, stdoutPath: string | null): Promise<void> {
  return new Promise((resolve, reject) => {
    const [cmd, ...rest] = argv;
    const child = spawn(cmd!, rest, { stdio: ['pipe', stdoutPath === null ? 'ignore' : 'pipe', 'inherit'] });
    const jobs: Promise<unknown>[] = [pipeline(createReadStream(stdinPath), child.stdin!)];
    if (stdoutPath !== null) jobs.push(pipeline(child.stdout!, createWriteStream(stdoutPath)));
    const exited = new Promise<void>((res, rej) =>
      child.on('close', (code, sig) => (code === 0 ? res() : rej(new Error(`${argv.join(' ')}: exit ${code ?? sig}`)))),
    );
    Promise.all([...jobs, exited]).then(() => resolve(), reject);
  });
}

async function prepare(args: Args): Promise<{ dir: string; raw: string; rawSize: number }> {
  const base = process.env.NARFS_BENCH_DIR ?? '/var/cache/narfs/bench-decompress';
  const dir = join(base, `${args.sizeMb}mb`);
  await mkdir(dir, { recursive: true });
  const raw = join(dir, 'input.nar');
  if (!existsSync(raw)) {
    console.error(`building ${raw} (${args.sizeMb} MB)...`);
    await buildInput(raw, args.sizeMb * 1024 * 1024);
  }
  const rawSize = (await stat(raw)).size;
  await Promise.all(
    args.methods.map(async (m) => {
      const t = TOOLS[m]!;
      const file = join(dir, `input.nar.${t.ext}`);
      if (existsSync(file)) return;
      console.error(`compressing with ${t.compress.join(' ')}...`);
      const t0 = performance.now();
      await run(t.compress, raw, `${file}.tmp`);
      await rename(`${file}.tmp`, file);
      console.error(`  ${m} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }),
  );
  return { dir, raw, rawSize };
}

/** Seconds for `<tool> -dc file > /dev/null`. */
async function timeReference(argv: readonly string[], file: string): Promise<number> {
  const devNull = openSync('/dev/null', 'w');
  try {
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      const child = spawn(argv[0]!, [...argv.slice(1), file], { stdio: ['ignore', devNull, 'inherit'] });
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(' ')} exited ${code}`))));
    });
    return (performance.now() - t0) / 1000;
  } finally {
    closeSync(devNull);
  }
}

/** Seconds for file → decompressor → a Node consumer that counts the bytes. */
async function timeOurs(make: () => Promise<Duplex>, file: string, expected: number): Promise<number> {
  const t0 = performance.now();
  const d = await make();
  let n = 0;
  await pipeline(
    createReadStream(file, { highWaterMark: 64 * 1024 }),
    d,
    new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        cb();
      },
    }),
  );
  const s = (performance.now() - t0) / 1000;
  if (n !== expected) throw new Error(`decompressed ${n} bytes, expected ${expected}`);
  return s;
}

interface Row {
  label: string;
  reference: number;
  ours: number;
  /** ours/reference of each run (the two measured back to back). */
  ratios: number[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const { dir, rawSize } = await prepare(args);
  if (args.prepareOnly) return;
  const mb = rawSize / 1e6;
  const loadStart = loadavg()[0]!.toFixed(2);
  const candidates: { method: string; label: string; make: () => Promise<Duplex> }[] = [];
  for (const m of args.methods) {
    candidates.push({ method: m, label: m, make: () => createDecompressor(m) });
    if (args.candidates && m === 'zstd') {
      for (const kb of [128, 256, 1024]) {
        candidates.push({ method: m, label: `zstd (napi ${kb}K)`, make: async () => new ZstdDecompressor(kb * 1024) });
      }
      candidates.push({
        method: m,
        label: 'zstd (zstd -dc child)',
        make: () => spawnDecompressor(['zstd', '-dc'], defaultDecompressorPool),
      });
    }
    if (args.candidates && (m === 'gzip' || m === 'br')) {
      const tool = m === 'gzip' ? 'gzip' : 'brotli';
      const plain = m === 'gzip' ? createGunzip : createBrotliDecompress;
      candidates.push({ method: m, label: `${m} (zlib defaults)`, make: async () => plain() });
      candidates.push({ method: m, label: `${m} (zlib 128K unbatched)`, make: async () => plain({ chunkSize: 128 * 1024 }) });
      for (const kb of [256, 1024]) {
        candidates.push({ method: m, label: `${m} (zlib ${kb}K batched)`, make: async () => createZlibDecompressor(m, kb * 1024) });
      }
      candidates.push({
        method: m,
        label: `${m} (${tool} -dc child)`,
        make: () => spawnDecompressor([tool, '-dc'], defaultDecompressorPool),
      });
    }
  }
  const best = new Map<string, Row>();
  for (let r = 0; r < args.runs; r++) {
    for (const c of candidates) {
      const t = TOOLS[c.method]!;
      const file = join(dir, `input.nar.${t.ext}`);
      const ref = mb / (await timeReference(t.reference, file));
      const ours = mb / (await timeOurs(c.make, file, rawSize));
      const row = best.get(c.label) ?? { label: c.label, reference: 0, ours: 0, ratios: [] };
      row.reference = Math.max(row.reference, ref);
      row.ours = Math.max(row.ours, ours);
      row.ratios.push(ours / ref);
      best.set(c.label, row);
      console.error(`run ${r + 1}: ${c.label.padEnd(30)} ref ${ref.toFixed(0).padStart(5)}  ours ${ours.toFixed(0).padStart(5)} MB/s`);
    }
  }
  console.log(
    `input: ${mb.toFixed(0)} MB uncompressed; ${availableParallelism()} cores; node ${process.version}; ` +
      `${args.runs} runs; load average ${loadStart} at start, ${loadavg()[0]!.toFixed(2)} at end`,
  );
  console.log('MB/s = decompressed output; reference and ours: best run; ratio: best/best; paired: median of per-run ratios');
  console.log(`${'method'.padEnd(30)} ${'reference'.padEnd(22)} ${'ours'.padStart(6)}  ratio  paired`);
  for (const row of best.values()) {
    const ref = `${row.reference.toFixed(0).padStart(6)} ${TOOLS[row.label.split(' ')[0]!]!.reference.join(' ')}`;
    console.log(
      `${row.label.padEnd(30)} ${ref.padEnd(22)} ${row.ours.toFixed(0).padStart(6)}  ${(row.ours / row.reference).toFixed(2).padStart(5)}  ${median(row.ratios).toFixed(2).padStart(6)}`,
    );
  }
}

await main();
