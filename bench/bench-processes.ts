/**
 * The processes a benchmark run starts (narfs daemons, squashfuse, the HTTP datalake)
 * and the promise that every mount is gone when the run ends: normally (finally), on
 * SIGINT/SIGTERM/SIGHUP (handlers), or on a crash (`exit` hook, synchronous). Only
 * processes started here are signalled, by pid; a mount that survives its process is
 * detached with `fusermount -uz`.
 *
 * Daemons run detached (their own process group), so a Ctrl-C in the terminal reaches
 * the benchmark, which unmounts in order, rather than every daemon at once. Their
 * stdout/stderr go to files, never to pipes: the benchmark runs synchronous workloads
 * that would leave a pipe unread and block a daemon that logs.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, openSync, readFileSync, readdirSync, realpathSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const NARFS_BIN = resolve(REPO, 'bin/narfs');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Tracked {
  kind: string;
  child: ChildProcess;
  mnt?: string;
}

const tracked = new Set<Tracked>();
let handlersInstalled = false;

/** Installs the signal and exit handlers once. `onSignal` runs before exiting. */
export function installCleanupHandlers(onSignal: () => void = () => {}): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const bail = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nbench: ${sig}: unmounting ${[...tracked].filter((t) => t.mnt).length} mount(s)\n`);
    cleanupAllSync();
    onSignal();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', bail);
  process.on('SIGTERM', bail);
  process.on('SIGHUP', bail);
  process.on('exit', () => cleanupAllSync());
}

function isMounted(mnt: string): boolean {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[4] === mnt);
}

/** Last resort, synchronous: TERM every tracked process, detach every mount. */
export function cleanupAllSync(): void {
  for (const t of tracked) {
    if (t.child.exitCode === null && t.child.signalCode === null && t.child.pid) {
      try { process.kill(t.child.pid, 'SIGTERM'); } catch { /* gone */ }
    }
  }
  const deadline = Date.now() + 3000;
  for (const t of tracked) {
    while (t.mnt && isMounted(t.mnt) && Date.now() < deadline) spawnSync('sleep', ['0.05']);
    if (t.mnt && isMounted(t.mnt)) spawnSync('fusermount', ['-uz', t.mnt]);
    if (t.child.exitCode === null && t.child.pid) {
      try { process.kill(t.child.pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
  tracked.clear();
}

/**
 * Cleans up after an earlier run that was killed with SIGKILL: in every run directory
 * `<prefix>*` whose `owner.pid` (see `claimRunDir`) is not a live process, TERMs the
 * daemons that run started (listed in `children`, checked against /proc/<pid>/cmdline so
 * a reused pid is left alone), detaches its mounts and deletes the directory.
 */
export function cleanupStaleRuns(prefix: string): void {
  const dirOf = (mp: string) => { const i = mp.indexOf('/', prefix.length); return i === -1 ? mp : mp.slice(0, i); };
  const parent = prefix.slice(0, prefix.lastIndexOf('/')) || '/';
  const stem = prefix.slice(prefix.lastIndexOf('/') + 1);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((mp) => mp.startsWith(prefix));
  const dirs = new Set([...readdirSync(parent).filter((n) => n.startsWith(stem)).map((n) => `${parent}/${n}`), ...mounts.map(dirOf)]);
  for (const dir of dirs) {
    let owner = NaN;
    try { owner = Number(readFileSync(`${dir}/owner.pid`, 'utf8')); } catch { if (!mounts.some((mp) => dirOf(mp) === dir)) continue; }
    if (owner > 0) { try { process.kill(owner, 0); continue; } catch { /* dead: stale */ } }
    let children: string[] = [];
    try { children = readFileSync(`${dir}/children`, 'utf8').split('\n').filter(Boolean); } catch { /* none */ }
    for (const pid of children) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) { process.kill(Number(pid), 'SIGTERM'); process.stderr.write(`bench: stopping pid ${pid} left by a killed run\n`); }
      } catch { /* gone */ }
    }
    for (const mp of mounts.filter((m) => dirOf(m) === dir)) {
      process.stderr.write(`bench: detaching a stale mount ${mp}\n`);
      spawnSync('fusermount', ['-uz', mp]);
    }
    if (existsSync(`${dir}/owner.pid`)) rmSync(dir, { recursive: true, force: true });
  }
}

let runDir = '';
/** Marks `dir` as this process's run directory (see cleanupStaleRuns). */
export function claimRunDir(dir: string): void {
  runDir = dir;
  writeFileSync(`${dir}/owner.pid`, String(process.pid));
}

function recordChild(pid: number | undefined): void {
  if (runDir && pid) appendFileSync(`${runDir}/children`, `${pid}\n`);
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((res) => {
    const t = setTimeout(() => res(false), ms);
    child.once('exit', () => { clearTimeout(t); res(true); });
  });
}

async function stopTracked(t: Tracked): Promise<void> {
  try {
    if (t.child.pid && t.child.exitCode === null && t.child.signalCode === null) process.kill(t.child.pid, 'SIGTERM');
    if (!(await waitExit(t.child, 10_000)) && t.child.pid) {
      process.stderr.write(`bench: ${t.kind} pid ${t.child.pid} ignored SIGTERM for 10 s; SIGKILL\n`);
      process.kill(t.child.pid, 'SIGKILL');
      await waitExit(t.child, 5000);
    }
  } catch { /* already gone */ }
  if (t.mnt && isMounted(t.mnt)) spawnSync('fusermount', ['-uz', t.mnt]);
  tracked.delete(t);
}

/** Peak resident set (VmHWM) of a live process, in bytes. */
export function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Current resident set (VmRSS) of `pid`, in bytes. */
export function currentRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/**
 * VmRSS once it has stopped falling for `quietMs`, at most `maxMs`. FORGETs arrive at
 * once, but V8 gives freed heap pages back only when its memory reducer runs, after some
 * seconds of low allocation (measured: ~10-15 s after drop_caches), so the quiet window
 * must be longer than that.
 */
export async function settledRss(pid: number, quietMs = 25_000, maxMs = 60_000): Promise<number> {
  const start = Date.now();
  let low = currentRss(pid);
  let lowAt = Date.now();
  while (Date.now() - lowAt < quietMs && Date.now() - start < maxMs) {
    await new Promise((r) => setTimeout(r, 250));
    const now = currentRss(pid);
    if (now < low - 512 * 1024) { low = now; lowAt = Date.now(); }
  }
  return currentRss(pid);
}

/** CPU time (user + system, clock ticks) of every thread of `pid` so far (/proc/<pid>/stat). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of proc(5))
}

/**
 * Waits until a mounted daemon is idle: neither its CPU time nor the datalake's request
 * count nor the body bytes it sent moved for `quietMs` (a first use on a running daemon
 * starts from there: start-up work done, nothing fetched meanwhile). At most `maxMs`;
 * returns whether it became idle and the requests and body bytes of the datalake by then.
 */
export async function waitIdle(pid: number, server: ServedDatalake, quietMs = 300, maxMs = 10_000): Promise<{ idle: boolean; requests: number; bodyBytes: number }> {
  const start = Date.now();
  let last = { ticks: cpuTicks(pid), stats: await server.stats() };
  let since = Date.now();
  for (;;) {
    await sleep(50);
    const now = { ticks: cpuTicks(pid), stats: await server.stats() };
    // Body bytes too: a long download in flight makes no new request, and its socket's
    // reads may cost the daemon too little CPU to move the tick count.
    if (now.ticks !== last.ticks || now.stats.requests !== last.stats.requests || now.stats.bodyBytes !== last.stats.bodyBytes) { last = now; since = Date.now(); }
    if (Date.now() - since >= quietMs) return { idle: true, ...now.stats };
    if (Date.now() - start >= maxMs) return { idle: false, ...now.stats };
  }
}

/**
 * Deleting the outputs of timed runs (narfs caches, `nix copy` stores: ~23k files each)
 * between runs skews the next run. On a journal-less ext4 (this machine's root) every inode
 * allocation passes over the inodes of its block group freed in the last 60 s (360 s while
 * their inode table block is dirty; fs/ext4/ialloc.c find_inode_bit / recently_deleted), so
 * a run that creates 23k files right after another deleted 23k pays for that scan: `nix
 * copy` of the bench closure from file:// zstd took 1.9-2.0 s with nothing deleted before
 * it and 10.2-12.4 s right after the previous copy's store was deleted (and the benchmark
 * alternates contenders as A B B A, so a contender often followed itself). So outputs are
 * retired, not deleted: they stay until `deleteRetired` after the last timed run (or until
 * free space runs low, see `retire`), and a run starts only once the deletions of an
 * earlier run have settled (`settleDeletions`).
 */
const DELETED_STAMP = '/var/cache/narfs/bench/.deleted-at';
/** 60 s (RECENTCY_MIN) once the inode tables are written back (sync), plus margin. */
const SETTLE_MS = 65_000;
/** Below this much free space, retired outputs are deleted (and the deletion settles) before the next run. */
const MIN_FREE_BYTES = 12 * 2 ** 30;
const retired: string[] = [];

/** Deletes `paths`, writes the inode tables back and notes when (for settleDeletions). */
export function deleteNow(paths: readonly string[]): void {
  for (const p of paths) rmSync(p, { recursive: true, force: true });
  spawnSync('sync');
  try { writeFileSync(DELETED_STAMP, String(Date.now())); } catch { /* no bench dir yet: nothing to settle */ }
}

/** Waits until the deletions noted by deleteNow are older than SETTLE_MS (a message says why). */
export async function settleDeletions(say: (s: string) => void = (s) => process.stderr.write(`bench: ${s}\n`)): Promise<void> {
  let at = NaN;
  try { at = Number(readFileSync(DELETED_STAMP, 'utf8')); } catch { return; }
  const wait = at + SETTLE_MS - Date.now();
  if (!(wait > 0)) return;
  say(`waiting ${(wait / 1000).toFixed(0)} s for the files deleted at ${new Date(at).toISOString()} to be reusable without the journal-less ext4's recently-deleted scan`);
  await sleep(wait);
}

/**
 * Keeps `path` (an output of a timed run) until deleteRetired. When the filesystem has
 * less than MIN_FREE_BYTES free, everything retired is deleted now and the next run waits
 * for the deletion to settle.
 */
export async function retire(path: string): Promise<void> {
  retired.push(path);
  let free = Infinity;
  try { const st = statfsSync(path); free = st.bavail * st.bsize; } catch { /* keep going */ }
  if (free >= MIN_FREE_BYTES) return;
  deleteNow(retired.splice(0));
  await settleDeletions((s) => process.stderr.write(`bench: free space below ${MIN_FREE_BYTES / 2 ** 30} GiB: retired outputs deleted; ${s}\n`));
}

/** Deletes every retired output (after the last timed run). */
export function deleteRetired(): void {
  deleteNow(retired.splice(0));
}

export function dropCaches(): void {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

export interface NarfsMount {
  mnt: string;
  pid: number;
  logFile: string;
  /** ms from the spawn of `narfs mount` to its "narfs: mounted" line (the mount answered a statfs). */
  mountMs: number;
  /** Unmounts (SIGTERM, then fusermount -uz), returns the daemon's log. */
  stop(): Promise<string>;
}

export interface NarfsOptions {
  mnt: string;
  datalake: string;
  publicKey: string;
  cacheDir: string;
  logFile: string;
  /** Extra node flags, e.g. --cpu-prof for a diagnostic run. */
  nodeFlags?: string[];
  /** FUSE backend (`--fuse-backend`): the native engine (default) or fuse-native. */
  backend?: 'native' | 'fuse-native';
  /** More `narfs mount` options, e.g. `--lower DIR`. */
  extraArgs?: string[];
  /** Another checkout's bin/narfs (built), to compare two versions (default: this one's). */
  narfsBin?: string;
}

/**
 * Refuses another checkout whose `build/` (the native addon) is not its own: its JS calls
 * the addon with the arguments of its own version, so a borrowed newer addon fails every
 * FUSE OPEN ("argument 5 must be a number"), and a comparison would time a narfs that
 * serves nothing.
 */
export function checkOwnBuild(narfsBin: string): void {
  const checkout = dirname(dirname(realpathSync(narfsBin)));
  const build = resolve(checkout, 'build');
  const real = existsSync(build) ? realpathSync(build) : build;
  const rel = relative(checkout, real);
  if (!existsSync(resolve(real, 'Release', 'narfs_fuse.node')) || rel.startsWith('..')) {
    throw new Error(`${narfsBin}: ${build} is not that checkout's own native build (it is ${real}); ` +
      `build it there: node-gyp rebuild (with --nodedir=/usr where node's headers are not downloadable)`);
  }
}

/** Starts `bin/narfs mount` and resolves when it prints that it is mounted. */
export async function startNarfs(o: NarfsOptions, timeoutMs = 60_000): Promise<NarfsMount> {
  if (o.narfsBin !== undefined) checkOwnBuild(o.narfsBin);
  const outFile = `${o.logFile}.stdout`;
  const out = openSync(outFile, 'w');
  const spawnedAt = performance.now();
  const err = openSync(o.logFile, 'w');
  const args = [o.narfsBin ?? NARFS_BIN, 'mount', o.mnt,
    '--datalake', o.datalake, '--trusted-public-keys', o.publicKey, '--cache-dir', o.cacheDir,
    '--log-format', 'json', ...(o.backend ? ['--fuse-backend', o.backend] : []), ...(o.extraArgs ?? [])];
  // As a user starts it: bin/narfs run as a program, whose sh lines set the daemon's
  // environment (the allocator's huge pages) before node starts. Node flags (--cpu-prof,
  // which NODE_OPTIONS refuses) need node itself: such a diagnostic run lacks that
  // environment unless the caller's own has it.
  const child = o.nodeFlags?.length
    ? spawn(process.execPath, [...o.nodeFlags, ...args], { stdio: ['ignore', out, err], detached: true, cwd: REPO })
    : spawn(args[0]!, args.slice(1), { stdio: ['ignore', out, err], detached: true, cwd: REPO, env: { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` } });
  closeSync(out);
  closeSync(err);
  recordChild(child.pid);
  const t: Tracked = { kind: 'narfs', child, mnt: o.mnt };
  tracked.add(t);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (existsSync(outFile) && readFileSync(outFile, 'utf8').includes('narfs: mounted')) break;
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      await stopTracked(t);
      throw new Error(`narfs did not mount ${o.mnt} (exit ${child.exitCode ?? child.signalCode}):\n${readFileSync(o.logFile, 'utf8').slice(-2000)}`);
    }
    await sleep(5);
  }
  const mountMs = performance.now() - spawnedAt;
  return {
    mnt: o.mnt,
    pid: child.pid!,
    logFile: o.logFile,
    mountMs,
    async stop() {
      await stopTracked(t);
      return readFileSync(o.logFile, 'utf8');
    },
  };
}

export interface SquashfuseMount { mnt: string; pid: number; stop(): Promise<void> }

/** Mounts `image` with squashfuse in the foreground (so we own its pid). */
/** Starts squashfuse (high-level libfuse) or `squashfuse_ll` (its low-level, inode-based build). */
export async function startSquashfuse(image: string, mnt: string, timeoutMs = 30_000, binary: 'squashfuse' | 'squashfuse_ll' = 'squashfuse'): Promise<SquashfuseMount> {
  const child = spawn(binary, ['-f', image, mnt], { stdio: 'ignore', detached: true });
  recordChild(child.pid);
  const t: Tracked = { kind: 'squashfuse', child, mnt };
  tracked.add(t);
  const deadline = Date.now() + timeoutMs;
  while (!isMounted(mnt)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stopTracked(t);
      throw new Error(`squashfuse did not mount ${mnt}`);
    }
    await sleep(5);
  }
  return { mnt, pid: child.pid!, stop: () => stopTracked(t) };
}

export interface ServedDatalake {
  url: string;
  /** Totals served so far: requests (every path) and body bytes written. */
  stats(): Promise<{ requests: number; bodyBytes: number }>;
  stop(): Promise<number>;
}

/** The HTTP datalake in a child process, with the modelled link. */
export async function serveDatalake(root: string, latencyMs: number, bytesPerSecond: number): Promise<ServedDatalake> {
  const child = spawn(process.execPath, ['--import', 'tsx', resolve(REPO, 'bench/serve-datalake.ts'), root,
    String(latencyMs), String(bytesPerSecond)], { stdio: ['pipe', 'pipe', 'inherit'], detached: true, cwd: REPO });
  recordChild(child.pid);
  const t: Tracked = { kind: 'http-datalake', child };
  tracked.add(t);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  const deadline = Date.now() + 30_000;
  while (!/^url (\S+)$/m.test(out)) {
    if (child.exitCode !== null || Date.now() > deadline) { await stopTracked(t); throw new Error('the HTTP datalake did not start'); }
    await sleep(10);
  }
  const url = /^url (\S+)$/m.exec(out)![1]!;
  let asked = 0;
  return {
    url,
    async stats() {
      // The n-th `stats` line answers the n-th question (one server, answers in order).
      const n = ++asked;
      child.stdin!.write('stats\n');
      const until = Date.now() + 10_000;
      for (;;) {
        const answers = [...out.matchAll(/^stats (\d+) (\d+)$/gm)];
        const a = answers[n - 1];
        if (a) return { requests: Number(a[1]), bodyBytes: Number(a[2]) };
        if (child.exitCode !== null || Date.now() > until) throw new Error('the HTTP datalake did not answer `stats`');
        await sleep(5);
      }
    },
    async stop() {
      await stopTracked(t);
      const m = /^requests (\d+)$/m.exec(out);
      return m ? Number(m[1]) : NaN;
    },
  };
}

export interface PrefetchTraceRun {
  pid: number;
  /** Resolves when the command exited 0; rejects with its output otherwise. */
  done: Promise<void>;
}

/**
 * Spawns the real CLI `narfs prefetch --trace <trace> --detach --cache-dir <cacheDir>`
 * (what a build job runs at its start on a running daemon) and returns at once: the
 * caller starts its workload alongside. Output to `logFile` (never a pipe: the workload
 * that runs meanwhile is synchronous). Run as a user runs it, `bin/narfs` as a program:
 * through a running daemon that is the C client (native/client/fast-client.c), no Node.
 */
export function startPrefetchTrace(trace: string, cacheDir: string, logFile: string, narfsBin = NARFS_BIN): PrefetchTraceRun {
  const err = openSync(logFile, 'w');
  const child = spawn(narfsBin, ['prefetch', '--trace', trace, '--detach', '--cache-dir', cacheDir], { stdio: ['ignore', err, err], cwd: REPO });
  closeSync(err);
  recordChild(child.pid);
  const t: Tracked = { kind: 'narfs prefetch', child };
  tracked.add(t);
  const done = new Promise<void>((res, rej) => {
    child.once('error', (e) => { tracked.delete(t); rej(e); });
    child.once('exit', (code, signal) => {
      tracked.delete(t);
      if (code === 0) res();
      else rej(new Error(`narfs prefetch --trace exited ${code ?? signal}: ${readFileSync(logFile, 'utf8').slice(-2000)}`));
    });
  });
  return { pid: child.pid!, done };
}
