/** Test helpers: inputs compressed by the real C tools, and a collecting consumer. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { Readable, Writable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** method → argv that compresses stdin to stdout at Nix's default level. */
export const COMPRESS_ARGV: Record<string, string[] | null> = {
  none: null,
  xz: ['xz', '-6', '-c'],
  zstd: ['zstd', '-3', '-q', '-c'],
  bzip2: ['bzip2', '-9', '-c'],
  br: ['brotli', '-q', '11', '-w', '22', '-c'],
  gzip: ['gzip', '-6', '-c'],
};

export function compressWithTool(method: string, data: Buffer, argv = COMPRESS_ARGV[method]): Buffer {
  if (argv === undefined) throw new Error(`no compressor for ${method}`);
  if (argv === null) return data;
  return execFileSync(argv[0]!, argv.slice(1), { input: data, maxBuffer: 1 << 30 });
}

/** Deterministic, mildly compressible data (text-ish runs mixed with noise). */
export function sampleData(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const words = ['nix', 'store', '/lib/', 'narfs', 'ELF', '\0\0\0\0', 'usr/share/doc', '0123456789'];
  let i = 0;
  while (i < size) {
    if (rnd() % 4 === 0) {
      out[i++] = rnd() & 0xff;
    } else {
      const w = words[rnd() % words.length]!;
      i += out.write(w, i, 'latin1');
    }
  }
  return out;
}

/** Splits into chunks of an odd size, as a network body would arrive. */
export function chunksOf(data: Buffer, size = 7919): Buffer[] {
  const chunks: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) chunks.push(data.subarray(i, i + size));
  return chunks;
}

/** Pipes `input` through `d` and returns everything it yields. */
export async function collect(d: Duplex, input: Buffer): Promise<Buffer> {
  const parts: Buffer[] = [];
  await pipeline(
    Readable.from(chunksOf(input)),
    d,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        parts.push(chunk);
        callback();
      },
    }),
  );
  return Buffer.concat(parts);
}

/** Pids of our live child processes whose command name is one of `names`. */
export function childPids(names: readonly string[]): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
    } catch {
      continue;
    }
    // pid (comm) state ppid ...
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const fields = stat.slice(close + 2).split(' ');
    if (Number(fields[1]) === process.pid && fields[0] !== 'Z' && names.includes(comm)) pids.push(Number(entry));
  }
  return pids;
}

export function processExists(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
