/**
 * Exclusive `flock(2)` locks with a deadline, for a runtime that has no flock API.
 *
 * Node cannot flock(), and Nix's `big-lock` is an flock (src/libutil/unix/file-system.cc
 * `lockFile`, used by src/libstore/local-store.cc), so a lock narfs takes must be the same
 * kind. The locks of one call are held by ONE chain of small processes started with one
 * spawn: util-linux `flock -x -w <s> <file1> flock -x -w <s> <file2> … cat`, each flock
 * taking its file in the order given and running the next. `cat` runs only once every lock
 * is held; it echoes the byte we wrote to its stdin, which is our "held" signal (no shell
 * in between). We release by closing the pipe; if this process dies, even by SIGKILL, the
 * kernel closes the pipe, `cat` sees EOF, and each flock exits and drops its lock — a lock
 * can never outlive its owner, and no stale-lock detection is needed.
 *
 * Invariant: `lockFiles` resolves only once every lock is held, and rejects with the given
 * code (ERR_DB_LOCKED by default) no later than `timeoutMs` (+ a spawn's slack) after the
 * call, naming the lock that was busy; a chain given up on is killed as a process group.
 */
import { spawn } from 'node:child_process';
import { NarfsError, type ErrorCode } from '../errors.js';

export interface HeldLock {
  readonly paths: readonly string[];
  /** Releases the locks; resolves when the holder processes have exited. Idempotent. */
  release(): Promise<void>;
}

export interface LockSpec {
  path: string;
  /** What the lock protects, for the message. */
  what?: string;
}

export interface LockFileOptions {
  timeoutMs: number;
  /** Code raised when the deadline passes. */
  code?: ErrorCode;
}

/** flock -E code of the i-th lock of a chain (an inner flock's status passes through the outer ones). */
const CONFLICT_EXIT = 70;
const MAX_LOCKS = 8;
const SLACK_MS = 1000;

/** Takes `locks` exclusively, in order, held by one process chain. */
export function lockFiles(locks: readonly LockSpec[], options: LockFileOptions): Promise<HeldLock> {
  if (locks.length === 0 || locks.length > MAX_LOCKS) throw new NarfsError('ERR_INTERNAL', `lockFiles takes 1 to ${MAX_LOCKS} locks`);
  const timeoutMs = Math.max(0, options.timeoutMs);
  const code = options.code ?? 'ERR_DB_LOCKED';
  const paths = locks.map((l) => l.path);
  const whatOf = (i: number) => locks[i]?.what ?? locks[i]?.path ?? '?';
  const seconds = (timeoutMs / 1000).toFixed(3);
  // -o: the next command does not inherit the lock fd; each flock holds its own until its child exits.
  const argv = locks.flatMap((l, i) => ['flock', '-x', '-o', '-E', String(CONFLICT_EXIT + i), '-w', seconds, l.path]);
  return new Promise<HeldLock>((resolvePromise, reject) => {
    const child = spawn(argv[0]!, [...argv.slice(1), 'cat'], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let settled = false;
    let stdout = '';
    let stderr = '';
    const exited = new Promise<void>((res) => child.once('close', () => res()));
    const killChain = () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    };
    const settle = (err: NarfsError | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        child.stdin.destroy();
        killChain();
        reject(err);
        return;
      }
      let released = false;
      resolvePromise({
        paths,
        release: async () => {
          if (!released) {
            released = true;
            child.stdin.end();
          }
          await exited;
        },
      });
    };
    // Backstop: each flock's own -w normally fires first, but a chain waits once per lock.
    const timer = setTimeout(
      () => settle(new NarfsError(code, `timed out after ${timeoutMs} ms waiting for the lock on ${locks.map((_, i) => whatOf(i)).join(' and ')}`, { details: { paths } })),
      timeoutMs + SLACK_MS,
    );
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout += d;
      if (stdout.startsWith('held\n')) settle(undefined);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr += d;
    });
    child.stdin.on('error', () => {
      /* EPIPE after the holder exited: nothing to release */
    });
    // Buffered in the pipe until `cat` runs, i.e. until every lock is held.
    child.stdin.write('held\n');
    child.once('error', (e) => settle(new NarfsError('ERR_DB_IO', `cannot run flock(1) for ${whatOf(0)}: ${e.message}`, { cause: e })));
    child.once('close', (status) => {
      const i = status === null ? -1 : status - CONFLICT_EXIT;
      if (i >= 0 && i < locks.length) {
        settle(new NarfsError(code, `another process held the lock on ${whatOf(i)} for ${timeoutMs} ms`, { details: { path: locks[i]!.path } }));
      } else {
        settle(new NarfsError('ERR_DB_IO', `flock(1) on ${paths.join(', ')} failed (exit ${status}): ${stderr.trim()}`, { details: { paths } }));
      }
    });
  });
}

/** One exclusive lock (see lockFiles). */
export function lockFile(path: string, options: LockFileOptions & { what?: string }): Promise<HeldLock> {
  return lockFiles([{ path, ...(options.what === undefined ? {} : { what: options.what }) }], options);
}
