/**
 * The benchmark's workloads, identical for every contender: each takes the directory
 * that plays /nix/store (a narfs mount, a squashfuse mount, a chroot store's
 * <root>/nix/store, or /nix/store itself) and store-path-relative names.
 *
 * The scenario-1 replay runs synchronously in this process, one operation after another
 * (as a starting interpreter does); the others run native tools (find, cat) so the
 * harness's own speed never is what gets measured. Those are spawned asynchronously, so
 * a signal reaches the benchmark's handlers (which unmount) while they run.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

export interface WorkloadOp { op: 'read' | 'readdir' | 'stat' | 'readlink'; path: string; missing?: boolean }

export interface ReplayResult { ops: number; bytes: number; unexpected: string[] }

const buf = Buffer.allocUnsafe(1 << 20);

function readWhole(path: string): number {
  const fd = openSync(path, 'r');
  let total = 0;
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      total += n;
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

/** Scenario 1: the recorded operations of interpreters and a C preprocessor starting. */
export function replayWorkload(store: string, ops: WorkloadOp[], timings?: Array<{ op: string; path: string; ms: number }>): ReplayResult {
  let bytes = 0;
  const unexpected: string[] = [];
  for (const o of ops) {
    const t0 = timings ? performance.now() : 0;
    try {
      replayOne(o);
    } finally {
      timings?.push({ op: o.op, path: o.path, ms: performance.now() - t0 });
    }
  }
  return { ops: ops.length, bytes, unexpected };

  function replayOne(o: WorkloadOp): void {
    const p = join(store, o.path);
    try {
      switch (o.op) {
        case 'read': bytes += readWhole(p); break;
        case 'readdir': readdirSync(p); break;
        case 'readlink': readlinkSync(p); break;
        case 'stat': {
          const st = lstatSync(p, { throwIfNoEntry: false });
          if (!st && !o.missing) unexpected.push(`missing ${o.path}`);
          break;
        }
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (!(o.missing && (code === 'ENOENT' || code === 'ENOTDIR'))) unexpected.push(`${o.op} ${o.path}: ${code}`);
    }
  }
}

/** Waits for every background job in $pids and fails if any did (plain `wait` would not). */
const WAIT_ALL = 'rc=0; for pid in $pids; do wait "$pid" || rc=1; done; exit $rc';

/**
 * Runs a command; resolves with its exit status, stdout line count and stderr tail. With
 * `timeoutMs`, the command runs in its own process group, which gets SIGKILL at the
 * deadline (the result then has `timedOut`).
 */
export function runCommand(cmd: string, args: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number): Promise<{ status: number | null; signal: string | null; lines: number; stderr: string; timedOut?: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env, detached: timeoutMs !== undefined });
    let timedOut = false;
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ }
    }, timeoutMs);
    let lines = 0;
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => { for (let i = d.indexOf(10); i !== -1; i = d.indexOf(10, i + 1)) lines++; });
    child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('close', (status, signal) => { clearTimeout(timer); resolve({ status, signal, lines, stderr, ...(timedOut ? { timedOut } : {}) }); });
  });
}

/** Thrown by a workload stopped at its deadline. */
export class WorkloadTimeout extends Error {}

/**
 * The native tools' C library setting: glibc serves allocations below 1 MiB from its heap
 * and keeps up to 16 MiB free at the heap's top. coreutils' `cat` (9.1, Debian bookworm)
 * allocates a page-aligned 128 KiB buffer for every file it reads and frees it after;
 * glibc's default gives that aligned block a mapping of its own each time (its adaptive
 * threshold never catches up with an aligned request), so every file cost `cat` an mmap,
 * a munmap and 32 page faults: a warm read of the bench closure's 17,106-file headers
 * path from local disk took 1.26 s with them and 0.28 s without (this machine, a PVM
 * guest whose page faults are dear). That cost is `cat`'s, the same under every
 * contender, and no part of what the benchmark compares (bench/RESULTS.md).
 */
const READER_MALLOC = 'glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=16777216';
const readerEnv = (): NodeJS.ProcessEnv => {
  const tunables = process.env.GLIBC_TUNABLES;
  return { ...process.env, GLIBC_TUNABLES: tunables ? `${READER_MALLOC}:${tunables}` : READER_MALLOC };
};

async function sh(script: string, args: string[], timeoutMs?: number): Promise<void> {
  const r = await runCommand('sh', ['-c', script, 'sh', ...args], readerEnv(), timeoutMs);
  if (r.timedOut) throw new WorkloadTimeout(`workload stopped after ${timeoutMs} ms`);
  if (r.status !== 0) throw new Error(`workload failed (${r.status ?? r.signal}): ${r.stderr.slice(-2000)}`);
}

/**
 * Scenario 2 and 11: every byte of every file, one reader per store path (as nix copy works
 * per path). With `timeoutMs`, the readers are killed at the deadline (WorkloadTimeout).
 */
export async function readEverything(store: string, names: string[], timeoutMs?: number): Promise<void> {
  await sh(`for p; do (find "$p" -type f -print0 | xargs -0 -r cat > /dev/null) & pids="$pids $!"; done; ${WAIT_ALL}`, names.map((n) => join(store, n)), timeoutMs);
}

/** Scenario 3: one sequential read of a file, 1 MiB at a time. */
export function readFileSequential(path: string): number {
  return readWhole(path);
}

/** Scenario 4 and 6: lstat of every entry and readlink of every symlink (find's %s and %l). */
export async function walkMetadata(store: string, names: string[]): Promise<number> {
  const r = await runCommand('find', [...names.map((n) => join(store, n)), '-printf', '%s %l\n']);
  if (r.status !== 0) throw new Error(`find failed (${r.status ?? r.signal}): ${r.stderr.slice(-2000)}`);
  return r.lines;
}

/** Scenario 5: concurrent readers, one `cat` per file. */
export async function concurrentReaders(store: string, files: string[]): Promise<void> {
  await sh(`for f; do cat "$f" > /dev/null & pids="$pids $!"; done; ${WAIT_ALL}`, files.map((f) => join(store, f)));
}

/** One read of scenario 9: `length` bytes at `offset` of a file (whole file: offset 0, length -1). */
export interface RangeRead { path: string; offset: number; length: number }

/** What fivePercentWorkload reads of the bench manifest. */
export interface FivePercentManifest { roles: unknown; largeFile: string; closureStats: { bytes: number } }

/**
 * The workload of issue 10's measurement on this closure, built from the local copy of the
 * closure (same names and sizes): Python's top-level stdlib modules, Perl's top-level
 * modules, the top-level libc headers and the small files (< 16 KiB) of the `doc` path in
 * path order until the total reaches 5 % of the closure's file bytes, plus 16 windows of
 * 1 MiB spread over the largest file (offsets k/16 of it plus 100,000 bytes, so not
 * chunk-aligned). Whole files are read whole. Used by bench/run.ts and bench/lazy-probe.ts.
 */
export function fivePercentWorkload(m: FivePercentManifest): { reads: RangeRead[]; bytes: number } {
  const sh1 = (cmd: string) => spawnSync('sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout.trim();
  const rel = (p: string) => p.replace(/^\/nix\/store\//, '');
  const files = (dir: string, findArgs: string[]): Array<{ path: string; size: number }> =>
    sh1(`find ${dir} ${findArgs.join(' ')} -type f -printf '%s %p\\n' | sort -k2`).split('\n').filter(Boolean)
      .map((l) => { const i = l.indexOf(' '); return { size: Number(l.slice(0, i)), path: rel(l.slice(i + 1)) }; });
  const roles = m.roles as Record<string, string>;
  const reads: RangeRead[] = [];
  let bytes = 0;
  const whole = (f: { path: string; size: number }) => { reads.push({ path: f.path, offset: 0, length: -1 }); bytes += f.size; };
  for (const f of files(`${roles.python}/usr/lib/python3.11`, ['-maxdepth 1', "-name '*.py'"])) whole(f);
  for (const f of files(`${roles.perl}/usr/share/perl/5.36*`, ['-maxdepth 1', "-name '*.pm'"])) whole(f);
  for (const f of files(`${roles.headers}/usr/include`, ['-maxdepth 1', "-name '*.h'"])) whole(f);
  const large = rel(m.largeFile);
  const size = Number(sh1(`stat -c %s ${m.largeFile}`));
  for (let k = 0; k < 16; k++) { reads.push({ path: large, offset: Math.floor((k * size) / 16) + 100_000, length: 1 << 20 }); bytes += 1 << 20; }
  const target = 0.05 * m.closureStats.bytes;
  for (const f of files(`${roles.doc}`, ['-size -16k'])) { if (bytes >= target) break; if (f.size > 0) whole(f); }
  return { reads, bytes };
}

/**
 * Scenario 9: reads the given ranges one after another (as a program opening modules and
 * seeking into a large file does); returns the bytes read. A short read is an error.
 */
export function readRanges(store: string, reads: RangeRead[]): number {
  let total = 0;
  for (const r of reads) {
    const p = join(store, r.path);
    if (r.length < 0) { total += readWhole(p); continue; }
    const fd = openSync(p, 'r');
    try {
      let got = 0;
      while (got < r.length) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, r.length - got), r.offset + got);
        if (n === 0) throw new Error(`short read of ${r.path} at ${r.offset + got}`);
        got += n;
      }
      total += got;
    } finally {
      closeSync(fd);
    }
  }
  return total;
}
