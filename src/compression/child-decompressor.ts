/**
 * A Duplex around a decompressor child process (`xz -dc`, `bzip2 -dc`):
 * compressed bytes written to it go to the child's stdin, the child's stdout is read out.
 *
 * Invariants:
 * - The readable side ends only after the child has exited with status 0 *and* had its
 *   stdin closed by us. A non-zero status, a signal, or an exit before the end of our input
 *   destroys the stream with ERR_DECOMPRESS (message: command, status, trimmed stderr); a
 *   stream never ends short in silence.
 * - Memory is bounded on both sides: writes wait for the stdin pipe to drain, and stdout is
 *   paused whenever the consumer stops reading (so the child blocks on a full pipe).
 * - `destroy()` (or a failed pipeline) SIGKILLs the child if it still runs; the pool slot is
 *   released on the child's `close`, i.e. only once the process is gone.
 *
 * Why child processes for xz and bzip2: they decode at 10-100 MB/s, far below what a pipe
 * carries, so the C tool behind a pipe runs at the tool's own speed (measured on a 300 MB
 * NAR-like input, bench/decompress.ts; table in decompress.ts), on its own core, with no
 * dependency and without blocking the event loop. (For zstd, ~1 GB/s, the pipe is the
 * bottleneck: see zstd-decompressor.ts.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Duplex } from 'node:stream';
import { NarfsError } from '../errors.js';
import type { DecompressorPool, ReleaseSlot } from './decompressor-pool.js';

/** At most this much of a child's stderr is kept for the error message. */
const STDERR_LIMIT = 4096;

/** Read-side buffer of the Duplex; with the pipe's 64 KiB this bounds memory per stream. */
const READABLE_HIGH_WATER_MARK = 256 * 1024;
const WRITABLE_HIGH_WATER_MARK = 64 * 1024;

export class ChildDecompressor extends Duplex {
  readonly #child: ChildProcess;
  readonly #command: string;
  readonly #release: ReleaseSlot;
  readonly #stderr: Buffer[] = [];
  #stderrLength = 0;
  /** Our stdin to the child failed (EPIPE: the child stopped reading). */
  #stdinBroken = false;
  /** `_final` ran: the child has been given end-of-input. */
  #inputEnded = false;
  #exited = false;
  #pendingWrite: ((error?: Error | null) => void) | undefined;
  /** The consumer wants data (no push has said "full" since its last read). */
  #wantMore = true;
  /** Output that arrived while the consumer did not want more; pushed on its next read. */
  readonly #held: Buffer[] = [];
  /** The child exited cleanly: end the stream once the held output is out. */
  #endPending = false;

  /** Use `spawnDecompressor`; this takes a child that has already spawned. */
  constructor(child: ChildProcess, command: string, release: ReleaseSlot) {
    super({
      readableHighWaterMark: READABLE_HIGH_WATER_MARK,
      writableHighWaterMark: WRITABLE_HIGH_WATER_MARK,
    });
    this.#child = child;
    this.#command = command;
    this.#release = release;
    const { stdin, stdout, stderr } = child;
    if (stdin === null || stdout === null || stderr === null) {
      throw new NarfsError('ERR_INTERNAL', `${command}: child spawned without pipes`);
    }

    stdin.on('error', () => {
      // EPIPE/ECONNRESET: the child closed its stdin (it failed, or stopped early). The
      // exit status decides the error; if it exits 0 anyway, #stdinBroken makes it one.
      this.#stdinBroken = true;
      this.#flushPendingWrite();
    });
    stdin.on('drain', () => this.#flushPendingWrite());

    stdout.on('data', (chunk: Buffer) => {
      // A chunk that arrives after push() said "full" (a resume and a pause can cross)
      // waits here until the consumer reads, so nothing is pushed past the bound.
      if (!this.#wantMore) {
        this.#held.push(chunk);
        stdout.pause();
        return;
      }
      if (!this.push(chunk)) {
        this.#wantMore = false;
        stdout.pause();
      }
    });
    stdout.on('error', () => {
      // Reported through the exit status (a child whose stdout breaks dies of SIGPIPE).
    });

    stderr.on('data', (chunk: Buffer) => {
      if (this.#stderrLength >= STDERR_LIMIT) return;
      const part = chunk.subarray(0, STDERR_LIMIT - this.#stderrLength);
      this.#stderr.push(part);
      this.#stderrLength += part.length;
    });
    stderr.on('error', () => {});

    child.on('error', (e) => {
      // After a successful spawn only kill() can fail here; the stream must not hang on it.
      this.destroy(new NarfsError('ERR_DECOMPRESS', `${command}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      this.#exited = true;
      this.#release();
      if (this.destroyed) return;
      if (code === 0 && this.#inputEnded && !this.#stdinBroken) {
        if (this.#held.length === 0) this.push(null);
        else this.#endPending = true;
        return;
      }
      let why: string;
      if (code === 0) why = 'exited before reading all of its input (trailing data?)';
      else if (code !== null) why = `exited with status ${code}`;
      else why = `was killed by ${signal ?? 'a signal'}`;
      const text = Buffer.concat(this.#stderr).toString('utf8').trim();
      this.destroy(
        new NarfsError('ERR_DECOMPRESS', `${this.#command} ${why}${text === '' ? '' : `: ${text}`}`, {
          details: { command: this.#command, code, signal, stderr: text },
        }),
      );
    });
  }

  /** Process id of the child (for tests and metrics). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#stdinBroken || this.#exited) {
      // Dropped: the child is gone or not reading; its exit status raises the error.
      callback();
      return;
    }
    if (this.#child.stdin!.write(chunk)) callback();
    else this.#pendingWrite = callback;
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#inputEnded = true;
    this.#child.stdin!.end();
    callback();
  }

  override _read(): void {
    this.#wantMore = true;
    while (this.#held.length > 0 && this.#wantMore) {
      if (!this.push(this.#held.shift()!)) this.#wantMore = false;
    }
    if (this.#held.length === 0 && this.#endPending) {
      this.#endPending = false;
      this.push(null);
      return;
    }
    if (this.#wantMore) this.#child.stdout!.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
    this.#child.stdin!.destroy();
    this.#child.stdout!.destroy();
    this.#flushPendingWrite();
    callback(error);
  }

  #flushPendingWrite(): void {
    const cb = this.#pendingWrite;
    this.#pendingWrite = undefined;
    cb?.();
  }
}

/**
 * Takes a slot of `pool` (waiting while `signal` allows), spawns `argv` and resolves once
 * the process runs. Rejects with ERR_ABORTED if aborted while waiting, and with
 * ERR_COMPRESSION_UNSUPPORTED if the tool cannot be started (not installed).
 */
export async function spawnDecompressor(
  argv: readonly [string, ...string[]],
  pool: DecompressorPool,
  signal?: AbortSignal,
): Promise<ChildDecompressor> {
  const release = await pool.acquire(signal);
  const command = argv.join(' ');
  let child: ChildProcess;
  try {
    child = spawn(argv[0], argv.slice(1), {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
  } catch (e) {
    release();
    throw new NarfsError('ERR_COMPRESSION_UNSUPPORTED', `cannot run ${command}: ${(e as Error).message}`, {
      cause: e,
      hint: `Install the ${argv[0]} command; narfs decompresses this method with it.`,
    });
  }
  return new ChildDecompressor(child, command, release);
}
