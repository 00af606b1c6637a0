/**
 * `npm run bench`: narfs against its peers on one benchmark datalake built by real Nix
 * (scripts/build-bench-datalake.sh), every contender measured in the same run.
 *
 * Invariants:
 * - a benchmark is not a test: it prints medians and ratios against peers, never passes
 *   or fails on a threshold (it fails only when a workload returns wrong results);
 * - contenders alternate within each repetition (A B, then B A, ...), so drift on the
 *   machine spreads over all of them;
 * - "empty cache" means a fresh narfs --cache-dir, a fresh chroot store for nix copy, and
 *   dropped kernel caches, for every run;
 * - every mount is unmounted in a finally, on SIGINT/SIGTERM/SIGHUP, and at exit
 *   (bench/bench-processes.ts). Run it with `node --import tsx`, not the `tsx` CLI: tsx's
 *   parent process SIGKILLs a child that does not acknowledge a relayed signal within
 *   30 ms, which would leave the mounts behind.
 *
 * Usage: node --import tsx bench/run.ts (npm run bench --) [--reps N (default 5)] [--latency-ms 20] [--bandwidth-mbit 1000]
 *        [--only 1,2,3,4,5,6,7,8,9,10,11] [--no-results-md] [--results-md] [--fuse-transports dev,uring]
 *        (scenarios 3-5 add a native-engine contender over FUSE io_uring where the kernel has it, and a
 *        row "…: io_uring / /dev/fuse" of per-repetition ratios; 7: registration, bench/register-scale.ts;
 *        8: nix path-info through the lower socket vs the lower database, bench/lower-path-info.ts;
 *        9-11 and scenario 1's indexed rows: per-file laziness, bench/indexed-datalakes.ts)
 * Writes bench/results/latest.json and (unless --only or --no-results-md; --results-md forces it)
 * bench/RESULTS.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import {
  cleanupAllSync, claimRunDir, currentRss, dropCaches, settledRss, installCleanupHandlers, peakRss, serveDatalake, startNarfs, startPrefetchTrace, startSquashfuse,
  cleanupStaleRuns, waitIdle, type NarfsMount, type ServedDatalake, deleteRetired, retire, settleDeletions,
} from './bench-processes.js';
import { registerScale } from './register-scale.js';
import { lowerPathInfo } from './lower-path-info.js';
import { concurrentReaders, readEverything, readFileSequential, readRanges, replayWorkload, runCommand, walkMetadata, WorkloadTimeout, fivePercentWorkload, type WorkloadOp } from './workloads.js';
import { prepareBigPath, prepareIndexed, type BigPath, type IndexedDatalakes } from './indexed-datalakes.js';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const TMP_PREFIX = '/tmp/narfs-bench-';

interface Manifest {
  key: string; dir: string; nixVersion: string; publicKey: string;
  /** The Debian packages each role's store path copies (scripts/bench/packages.txt), at their installed versions. */
  packages: Array<{ role: string; name: string; version: string }>;
  roles: Record<string, string>; top: string; many: string; closure: string[];
  closureStats: { files: number; dirs: number; symlinks: number; bytes: number };
  datalakes: Record<'xz' | 'zstd' | 'none', { dir: string; compression: string; narBytes: number }>;
  squashfs: string;
  workload: { file: string; ops: number; reads: number; readBytes: number };
  largeFile: string; readers: string[];
}

interface Row {
  scenario: string;
  contender: string;
  unit: 'ms' | 'MiB' | 'x' | 'n';
  reference: boolean;
  values: number[];
  notes: string[];
  /** Runs whose workload failed (no value recorded for them). */
  failures?: number;
}

const { values: args } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    'latency-ms': { type: 'string', default: '20' },
    'bandwidth-mbit': { type: 'string', default: '1000' },
    only: { type: 'string' },
    'no-results-md': { type: 'boolean', default: false },
    'results-md': { type: 'boolean', default: false },
    'fuse-backends': { type: 'string', default: 'native' },
    'fuse-transports': { type: 'string' },
  },
});
/** narfs FUSE backends measured side by side (`--fuse-backends native,fuse-native`). */
const BACKENDS = (args['fuse-backends'] ?? 'native').split(',').map((s) => s.trim()).filter(Boolean) as Array<'native' | 'fuse-native'>;
for (const b of BACKENDS) if (b !== 'native' && b !== 'fuse-native') throw new Error(`--fuse-backends: unknown backend ${b}`);
/** The contender name of narfs on backend `b` (the plain name when only one backend runs). */
const narfsName = (what: string, b: string): string => (BACKENDS.length > 1 ? `narfs ${b} (${what})` : `narfs (${what})`);
/**
 * Native-engine transports measured side by side in scenarios 3-5 (`--fuse-transports
 * dev,uring`; default: both where the kernel has FUSE over io_uring). The uring contender
 * sets the fuse module parameter enable_uring to Y while it is mounted and restores it.
 */
const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';
const TRANSPORTS = (args['fuse-transports'] ?? (existsSync(URING_PARAM) ? 'dev,uring' : 'dev')).split(',').map((s) => s.trim()).filter(Boolean);
for (const t of TRANSPORTS) if (t !== 'dev' && t !== 'uring') throw new Error(`--fuse-transports: unknown transport ${t}`);
const URING_PEER = 'narfs io_uring (warm cache)';
const HAVE_SQUASHFUSE_LL = spawnSync('sh', ['-c', 'command -v squashfuse_ll'], { stdio: 'ignore' }).status === 0;
const REPS = Number(args.reps);
const LATENCY_MS = Number(args['latency-ms']);
const BYTES_PER_SECOND = Math.round((Number(args['bandwidth-mbit']) * 1e6) / 8);
const ONLY = new Set((args.only ?? '1,2,3,4,5,6,7,8,9,10,11').split(',').map((s) => s.trim()));
const NIX_ENV = {
  ...process.env,
  NIX_CONFIG: 'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\nwarn-dirty = false\n' +
    // Loopback servers reuse ports: Nix's narinfo cache (keyed by URL) must not answer for another datalake.
    'narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\n',
};

const rows: Row[] = [];
function row(scenario: string, contender: string, unit: Row['unit'] = 'ms', reference = false): Row {
  let r = rows.find((x) => x.scenario === scenario && x.contender === contender);
  if (!r) { r = { scenario, contender, unit, reference, values: [], notes: [] }; rows.push(r); }
  return r;
}
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
/** Where the logs of failed narfs runs are kept (the run dir is removed at the end). */
const FAILURE_DIR = '/var/tmp/narfs-bench-failures';
/**
 * A narfs run whose workload failed (wrong results: EIO, ...): no time is recorded, the
 * failure is a note, and the daemon's log is kept in FAILURE_DIR.
 */
function recordFailure(scenario: string, contender: string, t: number, message: string, logFile?: string, logText?: string): void {
  mkdirSync(FAILURE_DIR, { recursive: true });
  const kept = join(FAILURE_DIR, `${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
  writeFileSync(kept, logText ?? (logFile && existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''));
  const first = /cat: [^\n]*/.exec(message)?.[0] ?? message.split('\n')[0]!;
  const r = row(scenario, contender);
  r.failures = (r.failures ?? 0) + 1;
  r.notes.push(`FAILED after ${(t / 1000).toFixed(1)} s: ${first.slice(0, 200)} (daemon log: ${kept})`);
  log(`${scenario} / ${contender}: FAILED after ${(t / 1000).toFixed(1)} s: ${first.slice(0, 300)}`);
}
const ms = (t0: number) => performance.now() - t0;
const base = (p: string) => basename(p);
/** A then B, then B then A, ...: the order of contenders in repetition `rep`. */
const order = <T>(xs: T[], rep: number): T[] => { const k = rep % xs.length; return [...xs.slice(k), ...xs.slice(0, k)]; };

let runRoot = '';
function freshDir(name: string): string {
  const d = join(runRoot, `${name}-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(d, { recursive: true });
  return d;
}

function materialisedStats(logText: string): { paths: number; bytes: number } {
  let paths = 0, bytes = 0;
  for (const line of logText.split('\n')) {
    if (!line.includes('materialised')) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (j.msg !== 'materialised') continue;
      paths++;
      const f = (j.fields ?? j) as Record<string, unknown>;
      bytes += Number(f.bytes ?? f.narSize ?? 0);
    } catch { /* text line */ }
  }
  return { paths, bytes };
}

async function nixCopy(from: string, storeRoot: string, m: Manifest): Promise<void> {
  const r = await runCommand('nix', ['copy', '--from', from, '--to', storeRoot, '--option', 'trusted-public-keys', m.publicKey, m.top], NIX_ENV);
  if (r.status !== 0) throw new Error(`nix copy --from ${from} failed (${r.status ?? r.signal}): ${r.stderr}`);
}

async function mountNarfs(m: Manifest, datalake: string, cacheDir: string, backend: 'native' | 'fuse-native' = BACKENDS[0]!, extraArgs: string[] = []): Promise<NarfsMount> {
  const d = freshDir('narfs');
  const mnt = join(d, 'mnt');
  mkdirSync(mnt);
  return startNarfs({ mnt, datalake, publicKey: m.publicKey, cacheDir, logFile: join(d, 'narfs.log'), backend, extraArgs });
}

// ---- Scenario 1: first use of a closure over the modelled remote datalake ----------
/** A datalake scenario 1, 9 and 11 serve over the modelled link. */
interface Variant { label: string; dir: string }
let indexed: IndexedDatalakes | undefined;
function variants(m: Manifest, which: Array<'xz' | 'zstd' | 'seekable' | 'none-indexed'>): Variant[] {
  const all = {
    xz: { label: 'xz, unindexed', dir: m.datalakes.xz.dir },
    zstd: { label: 'zstd, unindexed', dir: m.datalakes.zstd.dir },
    seekable: { label: 'zstd-seekable, indexed', dir: indexed!.seekable },
    'none-indexed': { label: 'none, indexed', dir: indexed!.none },
  };
  return which.map((w) => all[w]);
}
const remote = `remote ${LATENCY_MS} ms ${args['bandwidth-mbit']} Mbit/s`;
const mib = (b: number) => b / 2 ** 20;

/**
 * One narfs run on a fresh cache against `server`: mount, `work`, unmount. Returns the
 * time, the server's requests and body bytes during it, the daemon's log and the mount
 * time (spawn to "narfs: mounted").
 *
 * `running`: a first use on a running daemon (narfs started once, like nix-daemon): once
 * the mount answers, the kernel caches are dropped again (the FORGETs this sends are
 * answered before the clock), then the clock starts only when the daemon is idle
 * (waitIdle: no CPU time, no request and no body byte for 300 ms); it stops when the
 * workload ends (the daemon keeps running: the unmount is not timed). Requests and bytes
 * count from the clock start to the end of the workload (not what the daemon fetches in
 * the background afterwards); `startUp` is what the start-up itself fetched. A daemon that
 * is not idle after 10 s is not timed at all (`t` NaN, `startUp.idle` false, the workload
 * not run): what it was still doing might have warmed the cache for the workload.
 *
 * `traceAtClock` (with `running`): at the clock start the real CLI `narfs prefetch --trace
 * <trace> --detach --cache-dir <the mount's cache>` is spawned and the workload starts at
 * the same moment (the child runs alongside the synchronous workload), as a build job
 * asking its worker's daemon for what it read last time; its exit is awaited after the
 * clock stops (untimed), and a non-zero exit fails the run.
 */
async function narfsRemoteRun(m: Manifest, server: ServedDatalake, work: (mnt: string) => Promise<number> | number, extraArgs: string[] = [], running = false, traceAtClock?: string): Promise<{ t: number; requests: number; bodyBytes: number; read: number; logText: string; cache: string; mountMs: number; startUp?: { idle: boolean; waitedMs: number; requests: number; bodyBytes: number } }> {
  const cache = freshDir('cache');
  let before: { requests: number; bodyBytes: number } = await server.stats();
  let after: { requests: number; bodyBytes: number } | undefined;
  let t0 = performance.now();
  const mount = await mountNarfs(m, server.url, cache, BACKENDS[0], extraArgs);
  let read = 0;
  let t = NaN;
  let startUp: { idle: boolean; waitedMs: number; requests: number; bodyBytes: number } | undefined;
  try {
    if (running) {
      const waited = performance.now();
      dropCaches();
      const idle = await waitIdle(mount.pid, server);
      startUp = { idle: idle.idle, waitedMs: ms(waited), requests: idle.requests - before.requests, bodyBytes: idle.bodyBytes - before.bodyBytes };
      if (idle.idle) {
        before = { requests: idle.requests, bodyBytes: idle.bodyBytes };
        t0 = performance.now();
        const prefetch = traceAtClock ? startPrefetchTrace(traceAtClock, cache, join(dirname(mount.logFile), 'prefetch-trace.log')) : undefined;
        try {
          read = await work(mount.mnt);
          t = ms(t0);
          // Counted when the clock stops: fetches the daemon goes on with are not the workload's.
          after = await server.stats();
        } finally {
          await prefetch?.done;
        }
      }
    } else {
      read = await work(mount.mnt);
    }
  } finally { await mount.stop(); }
  if (!running) t = ms(t0);
  after ??= await server.stats();
  return {
    t, requests: after.requests - before.requests, bodyBytes: after.bodyBytes - before.bodyBytes, read, logText: readFileSync(mount.logFile, 'utf8'), cache,
    mountMs: mount.mountMs, ...(startUp ? { startUp } : {}),
  };
}

async function nixCopyRemoteRun(m: Manifest, server: ServedDatalake, work: (store: string) => Promise<void> | void): Promise<{ t: number; bodyBytes: number }> {
  const root = freshDir('store');
  const before = await server.stats();
  const t0 = performance.now();
  await nixCopy(server.url, root, m);
  await work(join(root, 'nix/store'));
  const t = ms(t0);
  const after = await server.stats();
  await retire(root);
  return { t, bodyBytes: after.bodyBytes - before.bodyBytes };
}

/** Scenario 1's narfs contender with a read trace of an earlier mount (`--prefetch-trace`). */
const TRACED = 'narfs --prefetch-trace (trace of an earlier run; mount + workload)';
/**
 * Scenario 1's narfs contender on a running daemon: mounted and idle on an empty cache
 * before the clock starts (narfsRemoteRun `running`), untraced. (`--prefetch-trace`
 * replays from the moment the daemon starts, before the clock: a warm cache, not a first
 * use; the on-demand replay is RUNNING_TRACED.)
 */
const RUNNING = 'narfs on a running daemon (idle mount, empty cache; workload only)';
/**
 * Scenario 1's running-daemon contender with the trace replayed on demand: as RUNNING, and
 * at the clock start `narfs prefetch --trace <trace> --detach` (the real CLI, a child
 * process) is spawned with the workload (narfsRemoteRun `traceAtClock`), as a build job
 * asking its worker's daemon for what it read last time. Indexed variants only.
 */
const RUNNING_TRACED = 'narfs on a running daemon + `narfs prefetch --trace --detach` started with the workload';
/** Not a contender: how long each narfs run of the scenario took to mount. */
const MOUNT_TIME = 'mount time of the narfs runs (spawn to "narfs: mounted"; not a contender)';
/** Rows that only inform (MOUNT_TIME): no ratio, never a peer. */
const notContender = (contender: string) => contender.includes('not a contender');

async function scenario1(m: Manifest, ops: WorkloadOp[]): Promise<void> {
  for (const v of variants(m, ['seekable', 'none-indexed', 'xz', 'zstd'])) {
    const server = await serveDatalake(v.dir, LATENCY_MS, BYTES_PER_SECOND);
    const name = `1 first use, ${v.label}, ${remote}`;
    // Indexed datalakes: a read trace recorded on one untimed run, replayed by a third contender.
    const indexedVariant = v.label.includes('indexed') && !v.label.includes('unindexed');
    const trace = join(runRoot, `trace-${v.label.replace(/[^a-z]+/g, '-')}.txt`);
    const isNarfs = (who: string) => who === 'narfs' || who === 'traced' || who === 'running' || who === 'running traced';
    const contender = (who: string) => (who === 'narfs' ? 'narfs (mount + workload)' : who === 'traced' ? TRACED : who === 'running' ? RUNNING
      : who === 'running traced' ? RUNNING_TRACED : 'nix copy + workload on disk');
    try {
      if (indexedVariant) {
        const r = await narfsRemoteRun(m, server, (mnt) => replayWorkload(mnt, ops).bytes, ['--record-trace', trace]);
        await retire(r.cache);
        log(`${name}: recorded a read trace of ${readFileSync(trace, 'utf8').split('\n').length - 2} files`);
      }
      for (let rep = 0; rep < REPS; rep++) {
        for (const who of order(indexedVariant ? ['narfs', 'nix copy', 'traced', 'running', 'running traced'] : ['narfs', 'nix copy', 'running'], rep)) {
          dropCaches();
          if (isNarfs(who)) {
            let res: ReturnType<typeof replayWorkload> | undefined;
            const r = await narfsRemoteRun(m, server, (mnt) => { res = replayWorkload(mnt, ops); return res.bytes; }, who === 'traced' ? ['--prefetch-trace', trace] : [],
              who === 'running' || who === 'running traced', who === 'running traced' ? trace : undefined);
            const c = contender(who);
            if (r.startUp && !r.startUp.idle) {
              // Not a first use: whatever the daemon was still doing may have warmed its cache.
              row(name, MOUNT_TIME).values.push(r.mountMs);
              recordFailure(name, c, r.mountMs + r.startUp.waitedMs, `the daemon was not idle 10 s after mounting (start-up: ${r.startUp.requests} requests, ${r.startUp.bodyBytes} bytes); the workload was not timed`, undefined, r.logText);
              await retire(r.cache);
              log(`${name}: ${who} rep ${rep + 1}: not idle, not timed`);
              continue;
            }
            if (res!.unexpected.length) throw new Error(`narfs workload: ${res!.unexpected.slice(0, 5).join('; ')}`);
            const st = materialisedStats(r.logText);
            row(name, c).values.push(r.t);
            const startUp = r.startUp ? `; start-up before the clock: ${r.startUp.requests} requests, ${r.startUp.bodyBytes} bytes` : '';
            row(name, c).notes.push(`whole NARs ${st.paths} (${mib(st.bytes).toFixed(0)} MiB); read ${mib(r.read).toFixed(1)} MiB; fetched ${mib(r.bodyBytes).toFixed(1)} MiB in ${r.requests} requests (fetched/read ${(r.bodyBytes / r.read).toFixed(2)})${startUp}`);
            row(name, MOUNT_TIME).values.push(r.mountMs);
            await retire(r.cache);
          } else {
            const r = await nixCopyRemoteRun(m, server, (store) => {
              const res = replayWorkload(store, ops);
              if (res.unexpected.length) throw new Error(`disk workload: ${res.unexpected.slice(0, 5).join('; ')}`);
            });
            row(name, 'nix copy + workload on disk', 'ms', true).values.push(r.t);
            row(name, 'nix copy + workload on disk').notes.push(`fetched ${mib(r.bodyBytes).toFixed(0)} MiB`);
          }
          log(`${name}: ${who} rep ${rep + 1}: ${row(name, contender(who)).values.at(-1)!.toFixed(0)} ms${isNarfs(who) ? ` (mounted in ${row(name, MOUNT_TIME).values.at(-1)!.toFixed(0)} ms)` : ''}`);
        }
      }
    } finally {
      await server.stop();
    }
  }
}

// ---- Scenario 9: bytes fetched / bytes read, a ~5 %-read workload, indexed -----------
async function scenario9(m: Manifest): Promise<void> {
  const w = fivePercentWorkload(m);
  const pct = (100 * w.bytes) / m.closureStats.bytes;
  for (const v of variants(m, ['seekable', 'none-indexed'])) {
    const server = await serveDatalake(v.dir, LATENCY_MS, BYTES_PER_SECOND);
    const name = `9 first use, ${pct.toFixed(1)} %-read workload (${w.reads.length} reads, ${mib(w.bytes).toFixed(1)} MiB), ${v.label}, ${remote}`;
    const ratioName = `9 bytes fetched / bytes read, ${pct.toFixed(1)} %-read workload, ${v.label}`;
    try {
      for (let rep = 0; rep < REPS; rep++) {
        for (const who of order(['narfs', 'nix copy'], rep)) {
          dropCaches();
          if (who === 'narfs') {
            const r = await narfsRemoteRun(m, server, (mnt) => readRanges(mnt, w.reads));
            if (r.read !== w.bytes) throw new Error(`narfs read ${r.read} bytes of ${w.bytes}`);
            row(name, 'narfs (mount + workload)').values.push(r.t);
            row(ratioName, 'narfs', 'x').values.push(r.bodyBytes / r.read);
            row(ratioName, 'narfs').notes.push(`fetched ${mib(r.bodyBytes).toFixed(1)} MiB in ${r.requests} requests for ${mib(r.read).toFixed(1)} MiB read; whole NARs ${materialisedStats(r.logText).paths}`);
            await retire(r.cache);
          } else {
            const r = await nixCopyRemoteRun(m, server, (store) => { readRanges(store, w.reads); });
            row(name, 'nix copy + workload on disk', 'ms', true).values.push(r.t);
          }
        }
        log(`${name}: rep ${rep + 1}: ${rows.filter((x) => x.scenario === name || x.scenario === ratioName).map((x) => `${x.contender} ${x.values.at(-1)!.toFixed(2)}`).join(' / ')}`);
      }
    } finally {
      await server.stop();
    }
  }
}

// ---- Scenario 10: first byte of a file inside a 1 GiB store path -------------------
async function scenario10(m: Manifest): Promise<void> {
  const big = prepareBigPath(m, log);
  const modelFirst = 3 * LATENCY_MS + (512 * 1024 * 1000) / BYTES_PER_SECOND;
  const modelWhole = 3 * LATENCY_MS + (big.fileSize * 1000) / BYTES_PER_SECOND;
  for (const [label, dir, extra] of [['none, indexed', big.none, []], ['zstd-seekable, indexed', big.seekable, []], ['none, --no-indexes (whole NAR, as before)', big.none, ['--no-indexes']]] as const) {
    const reps = extra.length ? 1 : REPS;
    const server = await serveDatalake(dir, LATENCY_MS, BYTES_PER_SECOND);
    const what = `a ${mib(big.fileSize).toFixed(0)} MiB file in the middle of a ${(big.narSize / 2 ** 30).toFixed(2)} GiB store path, ${label}, ${remote}`;
    const firstName = `10 first byte (open + read 4 KiB) of ${what}`;
    const wholeName = `10 whole file of ${what}`;
    try {
      for (let rep = 0; rep < reps; rep++) {
        const cache = freshDir('cache');
        const d = freshDir('narfs');
        mkdirSync(join(d, 'mnt'));
        const mount = await startNarfs({ mnt: join(d, 'mnt'), datalake: server.url, publicKey: m.publicKey, cacheDir: cache, logFile: join(d, 'narfs.log'), backend: BACKENDS[0], extraArgs: [...extra] });
        try {
          dropCaches();
          const s0 = await server.stats();
          const t0 = performance.now();
          const n = readRanges(mount.mnt, [{ path: big.file, offset: 0, length: 4096 }]);
          const t1 = ms(t0);
          const s1 = await server.stats();
          const all = readRanges(mount.mnt, [{ path: big.file, offset: 0, length: -1 }]);
          const t2 = ms(t0);
          const s2 = await server.stats();
          if (n !== 4096 || all !== big.fileSize) throw new Error(`read ${n} / ${all} bytes`);
          row(firstName, 'narfs', 'ms').values.push(t1);
          row(firstName, 'narfs').notes.push(`${s1.requests - s0.requests} requests, ${mib(s1.bodyBytes - s0.bodyBytes).toFixed(2)} MiB; model 3 round trips + one 512 KiB chunk = ${modelFirst.toFixed(0)} ms`);
          row(wholeName, 'narfs', 'ms').values.push(t2);
          row(wholeName, 'narfs').notes.push(`${s2.requests - s0.requests} requests, ${mib(s2.bodyBytes - s0.bodyBytes).toFixed(1)} MiB; model 3 round trips + the file's bytes = ${modelWhole.toFixed(0)} ms`);
        } finally { await mount.stop(); }
        await retire(cache);
        log(`${firstName}: ${row(firstName, 'narfs').values.at(-1)!.toFixed(0)} ms; whole ${row(wholeName, 'narfs').values.at(-1)!.toFixed(0)} ms; ${row(wholeName, 'narfs').notes.at(-1)}`);
      }
    } finally {
      await server.stop();
    }
  }
}

// ---- Scenario 11: full materialisation over the modelled link, indexed; dedupe -------
/** Scenario 11's narfs read is stopped here (recorded as a lower bound; later reps skipped). */
const FULL_READ_DEADLINE_MS = 150_000;
function cacheContentBytes(cache: string): number {
  return Number(sh1(`find ${cache}/blobs ${cache}/partial -type f -printf '%s\\n' 2>/dev/null | awk '{s+=$1} END {print s+0}'`));
}

async function scenario11(m: Manifest): Promise<void> {
  const names = m.closure.map(base);
  for (const v of variants(m, ['none-indexed', 'seekable'])) {
    const server = await serveDatalake(v.dir, LATENCY_MS, BYTES_PER_SECOND);
    const name = `11 full materialisation, ${v.label}, ${remote}`;
    let stopped = false;
    try {
      for (let rep = 0; rep < REPS && !stopped; rep++) {
        for (const who of order(['narfs', 'nix copy'], rep)) {
          dropCaches();
          if (who === 'narfs') {
            // A deadline: a narfs that fetches far more than the NARs would hold the run for long.
            let failed = '';
            const r = await narfsRemoteRun(m, server, async (mnt) => {
              try { await readEverything(mnt, names, FULL_READ_DEADLINE_MS); } catch (e) { if (e instanceof WorkloadTimeout) stopped = true; else failed = (e as Error).message; }
              return m.closureStats.bytes;
            });
            if (failed) recordFailure(name, 'narfs (mount + read all)', r.t, failed, undefined, r.logText);
            else row(name, 'narfs (mount + read all)').values.push(r.t);
            const held = cacheContentBytes(r.cache);
            row(name, 'narfs (mount + read all)').notes.push(`${stopped ? `STOPPED at the ${FULL_READ_DEADLINE_MS / 1000} s deadline (the time is a lower bound); ` : ''}fetched ${mib(r.bodyBytes).toFixed(0)} MiB in ${r.requests} requests; cache holds ${mib(held).toFixed(1)} MiB of content${stopped || failed ? ' (incomplete: no dedupe figure)' : ` for ${mib(m.closureStats.bytes).toFixed(1)} MiB of files (dedupe saves ${mib(m.closureStats.bytes - held).toFixed(1)} MiB)`}`);
            await retire(r.cache);
          } else {
            const r = await nixCopyRemoteRun(m, server, () => {});
            row(name, 'nix copy', 'ms', true).values.push(r.t);
            row(name, 'nix copy').notes.push(`fetched ${mib(r.bodyBytes).toFixed(0)} MiB`);
          }
        }
        log(`${name}: rep ${rep + 1}: ${rows.filter((x) => x.scenario === name).map((x) => `${x.contender} ${x.values.at(-1)!.toFixed(0)}`).join(' / ')}`);
      }
    } finally {
      await server.stop();
    }
  }
}

// ---- Scenario 2: full materialisation, file:// ------------------------------------
const memAfter2: number[] = [];
let warmCache = '';
async function scenario2(m: Manifest): Promise<void> {
  const names = m.closure.map(base);
  for (const c of ['xz', 'zstd', 'none'] as const) {
    const url = `file://${m.datalakes[c].dir}`;
    const name = `2 full materialisation, ${c}, file://`;
    for (let rep = 0; rep < REPS; rep++) {
      for (const who of order(['narfs', 'nix copy'], rep)) {
        dropCaches();
        if (who === 'narfs') {
          const cache = freshDir('cache');
          const t0 = performance.now();
          const mount = await mountNarfs(m, url, cache);
          let rss = NaN;
          let failed = '';
          try { await readEverything(mount.mnt, names); rss = peakRss(mount.pid); } catch (e) { failed = (e as Error).message; } finally { await mount.stop(); }
          const t = ms(t0);
          if (failed) {
            recordFailure(name, 'narfs (mount + read all)', t, failed, mount.logFile);
          } else {
            row(name, 'narfs (mount + read all)').values.push(t);
            memAfter2.push(rss);
          }
          // Not kept as the warm cache: the stop ends the background commits of the files
          // read (they are fetched again when next read), so this cache is not complete.
          await retire(cache);
        } else {
          const root = freshDir('store');
          const t0 = performance.now();
          await nixCopy(url, root, m);
          row(name, 'nix copy', 'ms', true).values.push(ms(t0));
          await retire(root);
        }
        log(`${name}: ${who} rep ${rep + 1}: ${rows.filter((r) => r.scenario === name).map((r) => r.values.at(-1)?.toFixed(0)).join(' / ')} ms`);
      }
    }
  }
  const r = row('6 memory: narfs peak RSS after scenario 2', 'narfs', 'MiB');
  r.values.push(...memAfter2.map((b) => b / 2 ** 20));
}

async function ensureWarmCache(m: Manifest): Promise<string> {
  if (warmCache) return warmCache;
  warmCache = freshDir('cache');
  // One mount per store path: a daemon holds a descriptor per file read until the kernel
  // forgets its inode, and the whole closure in one mount exceeds RLIMIT_NOFILE (see RESULTS.md).
  for (const n of m.closure.map(base)) {
    const mount = await mountNarfs(m, `file://${m.datalakes.zstd.dir}`, warmCache);
    try {
      await readEverything(mount.mnt, [n]);
      // A stop ends the background commits of an unindexed NAR's files: wait until its files
      // and tree are in the cache ('materialised'), so the warm scenarios read a warm cache.
      await waitMaterialised(mount.logFile, n);
    } finally { await mount.stop(); }
  }
  return warmCache;
}

/** Resolves once the daemon's log (JSON lines) says `name` was materialised; a stopped or failed commit, or 10 minutes without it, throws. */
async function waitMaterialised(logFile: string, name: string): Promise<void> {
  const deadline = performance.now() + 600_000;
  for (;;) {
    for (const line of readFileSync(logFile, 'utf8').split('\n')) {
      if (!line.includes(name)) continue;
      let j: Record<string, unknown>;
      try { j = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
      const f = (j.fields ?? j) as Record<string, unknown>;
      if (f.path !== name) continue;
      if (j.msg === 'materialised') return;
      if (j.level === 'error' || String(j.msg).startsWith('commit of a verified NAR stopped')) throw new Error(`warm cache: ${name}: ${String(j.msg)}`);
    }
    if (performance.now() > deadline) throw new Error(`warm cache: ${name} was not materialised within 10 minutes (log: ${logFile})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface Peer { name: string; store: string; reference?: boolean; narfs?: NarfsMount }

/**
 * narfs on every backend (one warm cache, one mount each), squashfuse, squashfuse_ll (when
 * `withLowLevel` and installed) and local disk, mounted for the whole of `fn`.
 */
async function withPeers(m: Manifest, fn: (peers: Peer[]) => Promise<void>, withLowLevel = false): Promise<void> {
  const cache = await ensureWarmCache(m);
  const mounts: NarfsMount[] = [];
  const squash: Array<{ stop(): Promise<void> }> = [];
  try {
    const peers: Peer[] = [];
    for (const [i, b] of BACKENDS.entries()) {
      // One daemon per cache directory (it is locked): later backends get a copy of the warm cache.
      let dir = cache;
      if (i > 0) {
        dir = `${cache}-${b}`;
        if (!existsSync(dir)) spawnSync('cp', ['-a', cache, dir], { stdio: 'inherit' });
      }
      const narfs = await mountNarfs(m, `file://${m.datalakes.zstd.dir}`, dir, b);
      mounts.push(narfs);
      peers.push({ name: narfsName('warm cache', b), store: narfs.mnt, narfs });
    }
    if (TRANSPORTS.includes('uring') && BACKENDS.includes('native')) {
      const dir = `${cache}-uring`;
      if (!existsSync(dir)) spawnSync('cp', ['-a', cache, dir], { stdio: 'inherit' });
      uringWas ??= readFileSync(URING_PARAM, 'utf8').trim();
      writeFileSync(URING_PARAM, 'Y');
      const narfs = await mountNarfs(m, `file://${m.datalakes.zstd.dir}`, dir, 'native', ['--fuse-transport', 'uring']);
      mounts.push(narfs);
      peers.push({ name: URING_PEER, store: narfs.mnt, narfs });
    }
    for (const bin of withLowLevel && HAVE_SQUASHFUSE_LL ? ['squashfuse', 'squashfuse_ll'] as const : ['squashfuse'] as const) {
      const sqMnt = join(freshDir('squashfs'), 'mnt');
      mkdirSync(sqMnt);
      const sq = await startSquashfuse(m.squashfs, sqMnt, 30_000, bin);
      squash.push(sq);
      peers.push({ name: bin, store: sq.mnt });
    }
    peers.push({ name: 'local disk', store: '/nix/store', reference: true });
    // Look every path up once, so the first timed contender does not pay narfs' root lookups alone.
    for (const p of peers) for (const n of m.closure) spawnSync('ls', ['-d', join(p.store, base(n))], { stdio: 'ignore' });
    await fn(peers);
  } finally {
    for (const sq of squash) await sq.stop();
    for (const narfs of mounts) await narfs.stop();
    if (uringWas !== undefined) writeFileSync(URING_PARAM, uringWas);
  }
}

/** enable_uring before the bench set it (restored when the uring contender stops). */
let uringWas: string | undefined;

/** Per repetition, the uring contender's time over the /dev/fuse one's (> 1: uring slower). */
function transportRatio(name: string): void {
  const dev = rows.find((r) => r.scenario === name && r.contender === narfsName('warm cache', 'native'));
  const uring = rows.find((r) => r.scenario === name && r.contender === URING_PEER);
  if (!dev || !uring) return;
  const r = row(`${name}: io_uring / /dev/fuse`, 'narfs', 'x');
  for (let i = 0; i < Math.min(dev.values.length, uring.values.length); i++) r.values.push(uring.values[i]! / dev.values[i]!);
}

// ---- Scenario 3: sequential read of a large file ------------------------------------
async function scenario3(m: Manifest): Promise<void> {
  const rel = m.largeFile.replace(/^\/nix\/store\//, '');
  const size = Number(spawnSync('stat', ['-c', '%s', m.largeFile]).stdout.toString());
  await withPeers(m, async (peers) => {
    for (const cold of [true, false]) {
      const name = `3 sequential read ${(size / 2 ** 20).toFixed(0)} MiB, page cache ${cold ? 'dropped' : 'warm'}`;
      if (!cold) for (const p of peers) readFileSequential(join(p.store, rel));
      for (let rep = 0; rep < REPS; rep++) {
        for (const p of order(peers, rep)) {
          if (cold) dropCaches();
          const t0 = performance.now();
          const n = readFileSequential(join(p.store, rel));
          const r = row(name, p.name, 'ms', p.reference);
          r.values.push(ms(t0));
          if (n !== size) throw new Error(`${p.name} read ${n} bytes of ${size}`);
        }
      }
      log(`${name}: ${peers.map((p) => `${p.name} ${row(name, p.name).values.map((v) => v.toFixed(0)).join(',')}`).join('; ')}`);
      transportRatio(name);
    }
  });
}

// ---- Scenario 4: metadata walk; 6: memory after it ----------------------------------
async function scenario4(m: Manifest): Promise<void> {
  const names = m.closure.map(base);
  const expected = m.closureStats.files + m.closureStats.dirs + m.closureStats.symlinks;
  await withPeers(m, async (peers) => {
    const name = `4 metadata walk (${expected} entries), kernel caches dropped`;
    for (let rep = 0; rep < REPS; rep++) {
      for (const p of order(peers, rep)) {
        dropCaches();
        const t0 = performance.now();
        const n = await walkMetadata(p.store, names);
        row(name, p.name, 'ms', p.reference).values.push(ms(t0));
        if (n !== expected) throw new Error(`${p.name} walked ${n} entries, expected ${expected}`);
      }
    }
    log(`${name}: ${peers.map((p) => `${p.name} ${row(name, p.name).values.map((v) => v.toFixed(0)).join(',')}`).join('; ')}`);
    transportRatio(name);
    for (const p of peers) {
      if (p.narfs) row('6 memory: narfs peak RSS after scenario 4', p.name.replace(' (warm cache)', ''), 'MiB').values.push(peakRss(p.narfs.pid) / 2 ** 20);
    }
  }, true);
}

// ---- Scenario 5: 16 concurrent readers ------------------------------------------------
async function scenario5(m: Manifest): Promise<void> {
  const rels = m.readers.map((f) => f.replace(/^\/nix\/store\//, ''));
  const total = rels.reduce((s, f) => s + Number(spawnSync('stat', ['-c', '%s', join('/nix/store', f)]).stdout.toString()), 0);
  await withPeers(m, async (peers) => {
    const name = `5 ${rels.length} concurrent readers (${(total / 2 ** 20).toFixed(0)} MiB), page cache dropped`;
    for (let rep = 0; rep < REPS; rep++) {
      for (const p of order(peers, rep)) {
        dropCaches();
        const t0 = performance.now();
        await concurrentReaders(p.store, rels);
        row(name, p.name, 'ms', p.reference).values.push(ms(t0));
      }
    }
    log(`${name}: ${peers.map((p) => `${p.name} ${row(name, p.name).values.map((v) => v.toFixed(0)).join(',')}`).join('; ')}`);
    transportRatio(name);
  });
}

// ---- Scenario 6: a walk over a store path with 100,000 files -----------------------
async function scenario6(m: Manifest): Promise<void> {
  const many = base(m.many);
  const memName = '6 memory: narfs peak RSS after walking 100,000 files';
  const walkName = '6 walk of 100,000 files, empty narfs cache, file:// zstd';
  const forgetName = '6 memory: narfs RSS after the 100,000-file walk and drop_caches (idle RSS beside it)';
  for (let rep = 0; rep < REPS; rep++) {
    for (const who of order([...BACKENDS, 'local disk'], rep)) {
      dropCaches();
      if (who !== 'local disk') {
        const b = who as 'native' | 'fuse-native';
        const cache = freshDir('cache');
        const t0 = performance.now();
        const mount = await mountNarfs(m, `file://${m.datalakes.zstd.dir}`, cache, b);
        try {
          const idle = currentRss(mount.pid);
          const n = await walkMetadata(mount.mnt, [many]);
          row(walkName, narfsName('mount + walk', b)).values.push(ms(t0));
          row(memName, narfsName('peak', b), 'MiB').values.push(peakRss(mount.pid) / 2 ** 20);
          row(memName, narfsName('after the walk', b), 'MiB').values.push(currentRss(mount.pid) / 2 ** 20);
          if (n !== 101_001) throw new Error(`narfs walked ${n} entries of ${many}`);
          // The kernel forgets its inodes; the daemon's table (and RSS) shrinks back.
          dropCaches();
          row(forgetName, narfsName('after', b), 'MiB').values.push(await settledRss(mount.pid) / 2 ** 20);
          row(forgetName, narfsName('idle', b), 'MiB').values.push(idle / 2 ** 20);
        } finally { await mount.stop(); }
        await retire(cache);
      } else {
        const t0 = performance.now();
        await walkMetadata('/nix/store', [many]);
        row(walkName, 'local disk', 'ms', true).values.push(ms(t0));
      }
    }
  }
  log(`${walkName}: ${rows.filter((r) => r.scenario === walkName).map((r) => `${r.contender} ${r.values.map((v) => v.toFixed(0)).join(',')}`).join('; ')}`);
}

// ---- Report ------------------------------------------------------------------------
const median = (xs: number[]) => { if (xs.length === 0) return NaN; const s = [...xs].sort((a, b) => a - b); const k = s.length >> 1; return s.length % 2 ? s[k]! : (s[k - 1]! + s[k]!) / 2; };

interface Summary { scenario: string; contender: string; unit: string; n: number; failures: number; median: number; min: number; max: number; ratio: number | null; values: number[]; notes: string[] }

function summarise(): Summary[] {
  const num = (s: string) => Number(/^\d+/.exec(s)?.[0] ?? 99);
  const sorted = rows.map((r, i) => ({ r, i })).sort((a, b) => num(a.r.scenario) - num(b.r.scenario) || a.i - b.i).map((x) => x.r);
  return sorted.map((r) => {
    const ref = rows.find((x) => x.scenario === r.scenario && x.reference);
    const med = median(r.values);
    return {
      scenario: r.scenario, contender: r.contender, unit: r.unit, n: r.values.length, failures: r.failures ?? 0,
      median: med, min: Math.min(...r.values), max: Math.max(...r.values),
      // A row that is not a contender (the mount time) is no figure against the reference.
      ratio: ref && !notContender(r.contender) ? med / median(ref.values) : null, values: r.values, notes: [...new Set(r.notes)],
    };
  });
}

function fmt(v: number, unit: string): string {
  if (!Number.isFinite(v)) return 'failed';
  if (unit === 'MiB') return `${v.toFixed(0)} MiB`;
  if (unit === 'x') return `${v.toFixed(2)}x`;
  if (unit === 'n') return v.toFixed(0);
  return v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(0)} ms`;
}

function table(sum: Summary[]): string {
  const head = ['scenario', 'contender', 'median', 'min', 'max', 'ratio'];
  const body = sum.map((s) => [s.scenario, s.failures ? `${s.contender} (${s.failures} of ${s.n + s.failures} runs FAILED)` : s.contender, fmt(s.median, s.unit), fmt(s.min, s.unit), fmt(s.max, s.unit),
    s.ratio === null || !Number.isFinite(s.ratio) ? '' : s.contender && rows.find((r) => r.scenario === s.scenario && r.contender === s.contender)?.reference ? '1.00 (ref)' : `${s.ratio.toFixed(2)}`]);
  return [head, head.map(() => '---'), ...body].map((cols) => `| ${cols.join(' | ')} |`).join('\n');
}

/** narfs' median over its best peer's, per scenario: > 1 means narfs is behind. */
function behind(sum: Summary[]): Array<{ scenario: string; narfs: number; peer: string; peerMedian: number; ratio: number }> {
  const out = [];
  for (const scenario of new Set(sum.map((s) => s.scenario))) {
    const n = sum.find((s) => s.scenario === scenario && s.contender.startsWith('narfs'));
    const peers = sum.filter((s) => s.scenario === scenario && !s.contender.startsWith('narfs') && !notContender(s.contender));
    if (!n || peers.length === 0) continue;
    const best = peers.reduce((a, b) => (a.median <= b.median ? a : b));
    out.push({ scenario, narfs: n.median, peer: best.contender, peerMedian: best.median, ratio: n.median / best.median });
  }
  return out.sort((a, b) => b.ratio - a.ratio);
}

function sh1(cmd: string): string {
  return spawnSync('sh', ['-c', cmd]).stdout?.toString().trim() ?? '';
}

function machine(): Record<string, string> {
  const root = sh1("findmnt -no SOURCE,FSTYPE /nix/store || findmnt -no SOURCE,FSTYPE /");
  const dev = basename(root.split(/\s+/)[0] ?? '').replace(/[0-9]+$/, '');
  return {
    cpu: `${cpus()[0]?.model ?? '?'} (nproc ${sh1('nproc')})`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: sh1('uname -sr'),
    disk: `${root}; rotational=${sh1(`cat /sys/block/${dev}/queue/rotational 2>/dev/null`) || '?'}; ${sh1(`lsblk -dno SIZE,MODEL /dev/${dev} 2>/dev/null`)}`,
    node: process.version,
    nix: sh1('nix --version'),
    squashfuse: sh1("dpkg-query -W -f='${Version}' squashfuse"),
    'squashfs-tools': sh1("dpkg-query -W -f='${Version}' squashfs-tools"),
    narfs: sh1(`git -C ${REPO} rev-parse --short HEAD`) + (sh1(`git -C ${REPO} status --porcelain src`) ? ' (src modified)' : ''),
  };
}

function writeResultsMd(sum: Summary[], info: Record<string, unknown>, mach: Record<string, string>): void {
  const file = join(REPO, 'bench/RESULTS.md');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const kept = /<!-- analysis:begin -->[\s\S]*<!-- analysis:end -->/.exec(old)?.[0]
    ?? '<!-- analysis:begin -->\n_No analysis yet._\n<!-- analysis:end -->';
  const b = behind(sum);
  const md = `# narfs benchmark results

Latest \`npm run bench\` on this machine (${info.date}, ${info.reps} repetitions per contender,
alternating; total ${((info.totalMs as number) / 60000).toFixed(1)} min). Generated by \`bench/run.ts\`; the
analysis section is written by hand and kept across runs. Raw numbers: \`bench/results/latest.json\`.

## Machine

${Object.entries(mach).map(([k, v]) => `- ${k}: ${v}`).join('\n')}

## Datalake

${info.datalake}

## Results

Ratio = median / median of the reference contender of the scenario (\`(ref)\`); below 1 is faster.

${table(sum)}

## Where narfs is furthest behind its best peer

| scenario | narfs | best peer | ratio |
| --- | --- | --- | --- |
${b.map((x) => `| ${x.scenario} | ${fmt(x.narfs, 'ms')} | ${x.peer}: ${fmt(x.peerMedian, 'ms')} | ${x.ratio.toFixed(2)} |`).join('\n')}

## Run notes

${sum.filter((s) => s.notes.length).map((s) => `- ${s.scenario} / ${s.contender}: ${s.notes.join('; ')}`).join('\n') || '- none'}

## Analysis

${kept}
`;
  writeFileSync(file, md);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmark drops kernel caches and runs Nix as root: run it as root');
  const started = performance.now();
  installCleanupHandlers(() => {
    if (runRoot) rmSync(runRoot, { recursive: true, force: true });
    if (uringWas !== undefined) writeFileSync(URING_PARAM, uringWas);
  });
  cleanupStaleRuns(TMP_PREFIX);
  if ([...ONLY].every((s) => s === '7' || s === '8')) {
    // Scenarios 7 and 8 need only the fixture datalakes, not the benchmark datalake.
    if (ONLY.has('7')) await registerScale({ reps: REPS, bigReps: 1, sizes: [100_000, 1_000_000], cliSizes: [100_000], xfs: true, workDir: '/var/tmp', log }, row);
    if (ONLY.has('8')) await lowerPathInfo({ reps: Math.max(REPS, 10), log }, row);
    const sum = summarise();
    process.stdout.write(`\n${table(sum)}\n`);
    mkdirSync(join(REPO, 'bench/results'), { recursive: true });
    const file = ONLY.has('7') ? 'latest-register.json' : 'latest-lower.json';
    writeFileSync(join(REPO, 'bench/results', file), JSON.stringify({ date: new Date().toISOString(), reps: REPS, machine: machine(), results: sum }, null, 2) + '\n');
    return;
  }
  log('building (or reusing) the benchmark datalake');
  const b = spawnSync('bash', [join(REPO, 'scripts/build-bench-datalake.sh')], { stdio: ['ignore', 'pipe', 'inherit'] });
  if (b.status !== 0) throw new Error('scripts/build-bench-datalake.sh failed');
  const dir = b.stdout.toString().trim().split('\n').at(-1)!;
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const ops = JSON.parse(readFileSync(m.workload.file, 'utf8')) as WorkloadOp[];
  if (!existsSync(join(REPO, 'dist/src/cli/main.js'))) throw new Error('dist/ is missing: npm run build');
  runRoot = mkdtempSync(TMP_PREFIX);
  claimRunDir(runRoot);
  // Files an earlier run deleted must not be reused under the clock (bench-processes.ts retire).
  await settleDeletions(log);
  const datalake = `${m.closure.length} store paths (top \`${base(m.top)}\`) holding the files of ${m.packages.length} Debian packages (listed with their versions in the build dir's manifest.json), ${m.closureStats.files} files, ${m.closureStats.dirs} directories, ${m.closureStats.symlinks} symlinks, ${(m.closureStats.bytes / 2 ** 20).toFixed(0)} MiB of file content; NARs: xz ${(m.datalakes.xz.narBytes / 2 ** 20).toFixed(0)} MiB, zstd ${(m.datalakes.zstd.narBytes / 2 ** 20).toFixed(0)} MiB, none ${(m.datalakes.none.narBytes / 2 ** 20).toFixed(0)} MiB. Scenario 1 workload: ${m.workload.ops} operations recorded with strace (Python 3.11 importing 17 modules, Perl loading 9 modules, cpp of a file including libc and Python headers), ${m.workload.reads} file reads, ${(m.workload.readBytes / 2 ** 20).toFixed(1)} MiB (${((100 * m.workload.readBytes) / m.closureStats.bytes).toFixed(1)} % of the closure). Remote datalake: HTTP on 127.0.0.1 with ${LATENCY_MS} ms added per request and ${args['bandwidth-mbit']} Mbit/s. Squashfs image: zstd. Build dir: \`${m.dir}\`.`;
  log(datalake);
  try {
    if (['1', '9', '11'].some((x) => ONLY.has(x))) {
      indexed = prepareIndexed(m, log);
      log(`indexed datalakes: ${JSON.stringify(indexed)}`);
    }
    if (ONLY.has('1')) await scenario1(m, ops);
    if (ONLY.has('2')) await scenario2(m);
    if (ONLY.has('3')) await scenario3(m);
    if (ONLY.has('4')) await scenario4(m);
    if (ONLY.has('5')) await scenario5(m);
    if (ONLY.has('6')) await scenario6(m);
    if (ONLY.has('9')) await scenario9(m);
    if (ONLY.has('10')) await scenario10(m);
    if (ONLY.has('11')) await scenario11(m);
    if (ONLY.has('7')) await registerScale({ reps: REPS, bigReps: 1, sizes: [100_000, 1_000_000], cliSizes: [100_000], xfs: true, workDir: '/var/tmp', log }, row);
    if (ONLY.has('8')) await lowerPathInfo({ reps: Math.max(REPS, 10), log }, row);
  } finally {
    cleanupAllSync();
    deleteRetired();
    rmSync(runRoot, { recursive: true, force: true });
  }
  const sum = summarise();
  const totalMs = ms(started);
  const mach = machine();
  const info = { date: new Date().toISOString(), reps: REPS, totalMs, latencyMs: LATENCY_MS, bandwidthMbit: Number(args['bandwidth-mbit']), datalake };
  process.stdout.write(`\n${table(sum)}\n\nnarfs vs its best peer (worst first):\n${behind(sum).map((x) => `  ${x.ratio.toFixed(2)}x  ${x.scenario} (best peer: ${x.peer})`).join('\n')}\n\ntotal ${(totalMs / 60000).toFixed(1)} min\n`);
  mkdirSync(join(REPO, 'bench/results'), { recursive: true });
  writeFileSync(join(REPO, 'bench/results/latest.json'), JSON.stringify({ ...info, machine: mach, manifestKey: m.key, results: sum, behind: behind(sum) }, null, 2) + '\n');
  if (!args['no-results-md'] && (!args.only || args['results-md'])) writeResultsMd(sum, info, mach);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
  cleanupAllSync();
  if (uringWas !== undefined) writeFileSync(URING_PARAM, uringWas);
  process.exitCode = 1;
});
