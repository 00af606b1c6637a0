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

/** The state letter of a process (`R` running, `S` sleeping in a syscall, `Z`…), or undefined when it is gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

export function processExists(pid: number): boolean {
  const state = processState(pid);
  return state !== undefined && state !== 'Z';
}

/**
 * Resolves once `pid` sleeps in a syscall (state S: it is blocked, not computing and not
 * merely preempted) or is gone. The kernel has no event for that, so /proc is polled; the
 * wait ends on the condition, whatever the machine load (the test's timeout bounds it).
 */
export async function untilBlockedOrGone(pid: number): Promise<void> {
  for (;;) {
    const state = processState(pid);
    if (state === undefined || state === 'S' || state === 'Z') return;
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Watches what a decompressor pushes into its readable side, for memory-bound tests that
 * read only when the stream says its buffer is full.
 *
 * Invariant checked: a stream that respects backpressure never pushes data after push()
 * returned false until its consumer reads again (`pushesWhileFull` stays 0), so its buffer
 * never holds much more than the high-water mark (`peakBuffered`).
 */
export class BackpressureProbe {
  /** Bytes the decompressor pushed (produced). */
  pushedBytes = 0;
  /** Largest readableLength seen right after a push. */
  peakBuffered = 0;
  /** Data pushes made after a false push() and before the consumer read again. */
  pushesWhileFull = 0;
  /** push() returned false and the consumer has not read since. */
  full = false;
  /** push(null) happened. */
  ended = false;
  #reading = false;
  #wake: (() => void) | undefined;
  #error: unknown;

  constructor(readonly stream: Duplex) {
    const push = stream.push.bind(stream);
    stream.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (chunk === null) {
        this.ended = true;
        const r = push(null);
        this.#notify();
        return r;
      }
      if (this.full && !this.#reading) this.pushesWhileFull++;
      this.pushedBytes += (chunk as Buffer).length;
      const ok = push(chunk, encoding);
      this.peakBuffered = Math.max(this.peakBuffered, stream.readableLength);
      if (!ok) {
        this.full = true;
        this.#notify();
      }
      return ok;
    };
    stream.on('error', (e) => {
      this.#error = e;
      this.#notify();
    });
  }

  /** Resolves when the buffer is full or the stream has pushed its end; rejects on error. */
  async next(): Promise<'full' | 'ended'> {
    for (;;) {
      if (this.#error !== undefined) throw this.#error;
      if (this.ended) return 'ended';
      if (this.full) return 'full';
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  /**
   * Takes everything buffered (as the consumer). Readable.read() calls _read before it
   * takes the data, so the stream may push, even say "full", during the call: what counts
   * afterwards is whether the buffer is still at its high-water mark.
   */
  read(): Buffer | null {
    this.#reading = true;
    try {
      return this.stream.read() as Buffer | null;
    } finally {
      this.#reading = false;
      this.full = this.stream.readableLength >= this.stream.readableHighWaterMark;
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
