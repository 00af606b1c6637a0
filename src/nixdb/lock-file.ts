/**
 * Exclusive `flock(2)` locks with a deadline, for a runtime that has no flock API.
 *
 * Node cannot flock(), and Nix's `big-lock` is an flock (src/libutil/unix/file-system.cc
 * `lockFile`, used by src/libstore/local-store.cc), so a lock narfs takes must be the same
 * kind. Each lock is held by a small child process: util-linux `flock -x -w <s> <file>`
 * running `cat` on a pipe from us. We release by closing the pipe; if this process dies,
 * even by SIGKILL, the kernel closes the pipe, `cat` sees EOF and the lock is gone — a lock
 * can never outlive its owner, and no stale-lock detection is needed.
 *
 * Invariant: `lockFile` resolves only once the lock is held, and rejects with the given code
 * (ERR_DB_LOCKED by default) no later than `timeoutMs` (+ a spawn's slack) after the call.
 */
import { spawn } from 'node:child_process';
import { NarfsError, type ErrorCode } from '../errors.js';

export interface HeldLock {
  readonly path: string;
  /** Releases the lock; resolves when the holder process has exited. Idempotent. */
  release(): Promise<void>;
}

export interface LockFileOptions {
  timeoutMs: number;
  /** Code raised when the deadline passes. */
  code?: ErrorCode;
  /** What the lock protects, for the message. */
  what?: string;
}

const CONFLICT_EXIT = 75;

export function lockFile(path: string, options: LockFileOptions): Promise<HeldLock> {
  const timeoutMs = Math.max(0, options.timeoutMs);
  const code = options.code ?? 'ERR_DB_LOCKED';
  const what = options.what ?? path;
  return new Promise<HeldLock>((resolvePromise, reject) => {
    // -o: the command does not inherit the lock fd; flock itself holds it until cat exits.
    const child = spawn(
      'flock',
      ['-x', '-o', '-E', String(CONFLICT_EXIT), '-w', (timeoutMs / 1000).toFixed(3), path, 'sh', '-c', 'echo locked && exec cat >/dev/null'],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let settled = false;
    let stdout = '';
    let stderr = '';
    const exited = new Promise<void>((res) => child.once('close', () => res()));
    const settle = (err: NarfsError | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        child.stdin.destroy();
        if (child.exitCode === null) child.kill('SIGKILL');
        reject(err);
        return;
      }
      let released = false;
      resolvePromise({
        path,
        release: async () => {
          if (!released) {
            released = true;
            child.stdin.end();
          }
          await exited;
        },
      });
    };
    // Backstop in case flock hangs: its own -w should fire first.
    const timer = setTimeout(
      () => settle(new NarfsError(code, `timed out after ${timeoutMs} ms waiting for the lock on ${what}`, { details: { path } })),
      timeoutMs + 2000,
    );
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout += d;
      if (stdout.startsWith('locked\n')) settle(undefined);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr += d;
    });
    child.stdin.on('error', () => {
      /* EPIPE after the holder exited: nothing to release */
    });
    child.once('error', (e) => settle(new NarfsError('ERR_DB_IO', `cannot run flock(1) for ${what}: ${e.message}`, { cause: e })));
    child.once('close', (status) => {
      if (status === CONFLICT_EXIT) {
        settle(new NarfsError(code, `another process held the lock on ${what} for ${timeoutMs} ms`, { details: { path } }));
      } else {
        settle(new NarfsError('ERR_DB_IO', `flock(1) on ${what} failed (exit ${status}): ${stderr.trim()}`, { details: { path } }));
      }
    });
  });
}
