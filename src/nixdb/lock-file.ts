/**
 * Exclusive `flock(2)` locks with a deadline, for a runtime that has no flock API.
 *
 * Node cannot flock(), and Nix's `big-lock` is an flock (src/libutil/unix/file-system.cc
 * `lockFile`, used by src/libstore/local-store.cc), so a lock narfs takes must be the same
 * kind. The locks of one call are held by a helper process, taken in the order given:
 *
 * - `narfs-flock` (native/client/flock-helper.c, built with the addon): a small process
 *   that takes a lock set on request, blocking in flock(2) with a timer like flock(1) -w,
 *   and drops it on request. It is kept after the release, idle and unref'd, for the next
 *   call of this thread (at most one idle helper; a call never shares a helper with
 *   another), so a registration costs two pipe round trips instead of three process
 *   starts (~6 ms: issue 13).
 * - Without it (an unbuilt checkout): one chain of util-linux processes started with one
 *   spawn, `flock -x -w <s> <file1> flock -x -w <s> <file2> … cat`, each flock taking its
 *   file in the order given and running the next; `cat` echoes the byte we wrote to its
 *   stdin once every lock is held (no shell in between). We release by closing the pipe.
 *
 * Either way the holder reads a pipe from us: if this process dies, even by SIGKILL (or
 * the worker thread that owns the pipe is terminated), the pipe closes, the holder sees
 * EOF and exits, and the kernel drops the locks — a lock can never outlive its owner, and
 * no stale-lock detection is needed.
 *
 * Invariant: `lockFiles` resolves only once every lock is held, and rejects with the given
 * code (ERR_DB_LOCKED by default) no later than `timeoutMs` (+ a spawn's slack) after the
 * call, naming the lock that was busy; a holder given up on is killed (a chain as a
 * process group) and never reused.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NarfsError, type ErrorCode } from '../errors.js';

export interface HeldLock {
  readonly paths: readonly string[];
  /** Releases the locks; resolves when they are dropped. Idempotent. */
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

/** The helper built by node-gyp (build/Release at the checkout root), from src/ or dist/src/. */
const HELPER = ['../../build/Release/narfs-flock', '../../../build/Release/narfs-flock']
  .map((rel) => fileURLToPath(new URL(rel, import.meta.url)))
  .find((p) => existsSync(p));

/** Takes `locks` exclusively, in order, held by one helper process (see the header). */
export function lockFiles(locks: readonly LockSpec[], options: LockFileOptions): Promise<HeldLock> {
  if (locks.length === 0 || locks.length > MAX_LOCKS) throw new NarfsError('ERR_INTERNAL', `lockFiles takes 1 to ${MAX_LOCKS} locks`);
  return HELPER ? lockWithHelper(HELPER, locks, options) : lockWithChain(locks, options);
}

interface Helper {
  child: ChildProcessWithoutNullStreams;
  /** Answer lines not yet taken. */
  lines: string[];
  partial: string;
  onLine: (() => void) | undefined;
  dead: boolean;
}

/** This thread's idle helper (module state is per thread). */
let idleHelper: Helper | undefined;

function startHelper(path: string): Helper {
  const child = spawn(path, [], { stdio: ['pipe', 'pipe', 'ignore'] }) as unknown as ChildProcessWithoutNullStreams;
  const h: Helper = { child, lines: [], partial: '', onLine: undefined, dead: false };
  const gone = () => {
    h.dead = true;
    if (idleHelper === h) idleHelper = undefined;
    h.onLine?.();
  };
  child.once('error', gone);
  child.once('exit', gone);
  child.stdin.on('error', () => {});
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    const parts = (h.partial + d).split('\n');
    h.partial = parts.pop()!;
    h.lines.push(...parts);
    h.onLine?.();
  });
  return h;
}

function setRef(h: Helper, ref: boolean): void {
  for (const x of [h.child, h.child.stdin, h.child.stdout] as Array<{ ref(): void; unref(): void }>) {
    if (ref) x.ref();
    else x.unref();
  }
}

/** The next answer line of `h`, or undefined when it died. */
function nextLine(h: Helper): Promise<string | undefined> {
  return new Promise((resolve) => {
    const check = () => {
      if (h.lines.length > 0) {
        h.onLine = undefined;
        resolve(h.lines.shift());
      } else if (h.dead) {
        h.onLine = undefined;
        resolve(undefined);
      }
    };
    h.onLine = check;
    check();
  });
}

function killHelper(h: Helper): void {
  h.dead = true;
  if (idleHelper === h) idleHelper = undefined;
  h.child.kill('SIGKILL');
}

function keepHelper(h: Helper): void {
  if (h.dead) return;
  if (idleHelper && idleHelper !== h) {
    h.child.stdin.end();
    return;
  }
  setRef(h, false);
  idleHelper = h;
}

async function lockWithHelper(path: string, locks: readonly LockSpec[], options: LockFileOptions): Promise<HeldLock> {
  const timeoutMs = Math.max(0, options.timeoutMs);
  const code = options.code ?? 'ERR_DB_LOCKED';
  const paths = locks.map((l) => l.path);
  const whatOf = (i: number) => locks[i]?.what ?? locks[i]?.path ?? '?';
  let h = idleHelper;
  idleHelper = undefined;
  if (!h || h.dead) h = startHelper(path);
  setRef(h, true);
  const helper = h;
  helper.child.stdin.write(Buffer.concat([
    Buffer.from(`L ${Math.round(timeoutMs)} ${locks.length}\n`),
    ...paths.map((p) => Buffer.concat([Buffer.from(p), Buffer.from([0])])),
  ]));
  let timer: NodeJS.Timeout | undefined;
  // Backstop: the helper's own timer normally answers first, but it waits once per lock.
  const backstop = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), timeoutMs + SLACK_MS); });
  const answer = await Promise.race([nextLine(helper), backstop]);
  clearTimeout(timer);
  if (answer === 'timeout') {
    killHelper(helper);
    throw new NarfsError(code, `timed out after ${timeoutMs} ms waiting for the lock on ${locks.map((_, i) => whatOf(i)).join(' and ')}`, { details: { paths } });
  }
  if (answer === 'held') {
    let released: Promise<void> | undefined;
    return {
      paths,
      release: () => {
        released ??= (async () => {
          if (helper.dead) return;
          helper.child.stdin.write('U\n');
          const r = await nextLine(helper);
          if (r === 'released') keepHelper(helper);
          else killHelper(helper);
        })();
        return released;
      },
    };
  }
  const busy = /^busy (\d+)$/.exec(answer ?? '');
  if (busy) {
    keepHelper(helper);
    const i = Number(busy[1]);
    throw new NarfsError(code, `another process held the lock on ${whatOf(i)} for ${timeoutMs} ms`, { details: { path: locks[i]?.path } });
  }
  const failed = /^error (\d+) (.*)$/.exec(answer ?? '');
  if (failed) {
    keepHelper(helper);
    throw new NarfsError('ERR_DB_IO', `flock on ${locks[Number(failed[1])]?.path ?? '?'} failed: ${failed[2]}`, { details: { paths } });
  }
  killHelper(helper);
  throw new NarfsError('ERR_DB_IO', `the lock helper ${path} ${answer === undefined ? 'exited' : `answered ${JSON.stringify(answer)}`} while taking ${paths.join(', ')}`, { details: { paths } });
}

/** Takes `locks` exclusively, in order, held by one util-linux process chain. */
function lockWithChain(locks: readonly LockSpec[], options: LockFileOptions): Promise<HeldLock> {
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
