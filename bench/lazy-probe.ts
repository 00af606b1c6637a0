/**
 * One narfs run of scenario 1, 9 or 11 (bench/run.ts) on an indexed datalake over the
 * modelled remote link, without the `nix copy` reference, optionally under `--cpu-prof`:
 * prints the time, the server's requests and body bytes, the daemon's store counters (from
 * its log) and, with --prof, the V8 self time per function. For explaining one figure of
 * the benchmark between full runs; the figures the RESULTS cite come from `npm run bench`.
 *
 *   node --import tsx bench/lazy-probe.ts --scenario 1|9|9l|9s|10|11 --variant none|seekable|xz|zstd [--traced] [--running] [--prof [--callers fn,fn] [--caller-depth N]] [--extra '--opt v ...'] [--narfs-bin CHECKOUT/bin/narfs]
 *
 * --running: a first use on a running daemon (scenario 1's "running daemon" contender): once
 * the mount answers the kernel caches are dropped again, then the clock starts when the
 * daemon is idle (no CPU, request or body byte for 300 ms) and stops when the work ends
 * (the unmount is not timed); requests and bytes count from the clock start to its stop.
 * A daemon not idle within 10 s fails the run (not timed).
 * --traced: a read trace is recorded on an untimed first run; the measured run replays it:
 * alone with `--prefetch-trace` (from the mount's start); with --running, as scenario 1's
 * "running daemon + narfs prefetch --trace --detach" contender: at the clock start the real
 * CLI `narfs prefetch --trace <trace> --detach --cache-dir <cache>` is spawned and the work
 * starts at the same moment; its exit is awaited after the clock stops (a non-zero exit
 * fails the run).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { claimRunDir, currentRss, deleteNow, dropCaches, installCleanupHandlers, peakRss, serveDatalake, settleDeletions, startNarfs, startPrefetchTrace, waitIdle } from './bench-processes.js';
import { fivePercentWorkload, readEverything, readRanges, replayWorkload, type RangeRead, type WorkloadOp } from './workloads.js';
import { prepareBigPath, prepareIndexed } from './indexed-datalakes.js';
import { loadProfile, selfTimes } from './cpu-profile.js';

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', default: '1' }, variant: { type: 'string', default: 'seekable' }, traced: { type: 'boolean', default: false },
    prof: { type: 'boolean', default: false }, running: { type: 'boolean', default: false }, extra: { type: 'string', default: '' },
    // Another built checkout's bin/narfs (an older narfs, measured under the same conditions).
    'narfs-bin': { type: 'string' },
    // With --prof: the functions whose callers (--caller-depth frames up) are summed.
    callers: { type: 'string', default: '#row,get' },
    'caller-depth': { type: 'string', default: '3' },
  },
});
const callersOf = args.callers.split(',');
const callerDepth = Number(args['caller-depth']);
const LATENCY_MS = 20;
const BYTES_PER_SECOND = 125_000_000;

function profileSummary(dir: string): string[] {
  const p = loadProfile(dir);
  if (!p) return ['(no profile)'];
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const callers = new Map<string, number>();
  const { self, total } = selfTimes(p, (n, dt) => {
    if (!callersOf.includes(n.callFrame.functionName)) return;
    const chain: string[] = [];
    for (let q = parent.get(n.id); q !== undefined && chain.length < callerDepth; q = parent.get(q)) chain.push(byId.get(q)!.callFrame.functionName);
    callers.set(chain.join(' < '), (callers.get(chain.join(' < ')) ?? 0) + dt);
  });
  const top = [...callers.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `   ${callersOf.join('|')} from ${k}: ${(v / 1000).toFixed(0)} ms`);
  // Self time per module of the daemon (dist/…), to see a module's share when no single
  // function of it makes the top list.
  const byModule = new Map<string, number>();
  for (const [k, v] of self) {
    const mod = /^\S+ (dist\/\S+):\d+$/.exec(k)?.[1];
    if (mod) byModule.set(mod, (byModule.get(mod) ?? 0) + v);
  }
  const modules = [...byModule.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${(v / 1000).toFixed(0)} ms ${k}`).join(' | ');
  return [...top, `total ${(total / 1000).toFixed(0)} ms sampled`, ...[...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)
    .map(([k, v]) => `${(v / 1000).toFixed(0).padStart(6)} ms ${((100 * v) / total).toFixed(1).padStart(5)} %  ${k}`), `by module: ${modules}`];
}

/**
 * CPU time (user and system, ms) and minor page faults of a process or thread from its
 * /proc stat line (fields 14 and 15, in clock ticks: 10 ms at the usual 100 Hz; field 10,
 * minflt). Unlike the profile's samples it does not count the time the thread waited for
 * a CPU on a loaded machine.
 */
function cpuMs(statPath: string): { user: number; sys: number; faults: number } {
  try {
    const f = readFileSync(statPath, 'utf8').replace(/^.*\) /s, '').split(' ');
    return { user: (Number(f[11]) * 1000) / 100, sys: (Number(f[12]) * 1000) / 100, faults: Number(f[7]) };
  } catch {
    return { user: NaN, sys: NaN, faults: NaN };
  }
}
const cpuText = (c: { user: number; sys: number; faults: number }) => `${c.user + c.sys} ms (user ${c.user}, sys ${c.sys}; ${c.faults} minor faults)`;

installCleanupHandlers();
// The files an earlier probe or bench run deleted must not be reused under the clock (bench-processes.ts retire).
await settleDeletions();
const dir = spawnSync('bash', ['scripts/build-bench-datalake.sh'], { stdio: ['ignore', 'pipe', 'inherit'] }).stdout.toString().trim().split('\n').at(-1)!;
const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
const idx = prepareIndexed(m, (s) => process.stderr.write(`${s}\n`));
// Scenario 10: the first 4 KiB of the 16 MiB file in the middle of the 1 GiB path.
const big = args.scenario === '10' ? prepareBigPath(m, (s) => process.stderr.write(`${s}\n`)) : undefined;
// xz / zstd: the unindexed bench datalakes (whole NARs), for scenario 1's unindexed rows.
const dl = big ? (args.variant === 'none' ? big.none : big.seekable)
  : args.variant === 'xz' || args.variant === 'zstd' ? (m.datalakes[args.variant] as { dir: string }).dir
  : args.variant === 'none' ? idx.none : idx.seekable;
const tmp = mkdtempSync('/tmp/narfs-bench-probe-');
claimRunDir(tmp);
// NARFS_PROBE_PATHS=headers,doc: scenario 11 reads only the store paths whose names end so.
const onlyPaths = process.env.NARFS_PROBE_PATHS?.split(',').filter(Boolean);
const names = (m.closure as string[]).map((p) => basename(p)).filter((n) => !onlyPaths || onlyPaths.some((x) => n.endsWith(`-${x}`)));

// Scenario 9's reads, listed once before any clock (a find over the local closure, which
// dropCaches leaves cold): as bench/run.ts, the timed work only reads.
const fivePercent: RangeRead[] = args.scenario.startsWith('9') ? fivePercentWorkload(m).reads : [];

// NARFS_PROBE_TIMELINE=1: the server logs every request (serve-datalake.ts); the measured
// run's requests, mount and workload marks are printed in ms from its start.
const serveLog = join(tmp, 'serve.log');
if (process.env.NARFS_PROBE_TIMELINE) process.env.NARFS_SERVE_LOG = serveLog;
const server = await serveDatalake(dl, LATENCY_MS, BYTES_PER_SECOND);
try {
  const ops = JSON.parse(readFileSync(m.workload.file, 'utf8')) as WorkloadOp[];
  const extra = args.extra ? args.extra.split(' ').filter(Boolean) : [];
  const run = async (work: (mnt: string) => Promise<number> | number, more: string[], prof: boolean, running = false, traceAtClock?: string) => {
    const d = mkdtempSync(join(tmp, 'narfs-'));
    mkdirSync(join(d, 'mnt'));
    const profDir = join(d, 'prof');
    const cache = join(d, 'cache');
    dropCaches();
    let s0: { requests: number; bodyBytes: number } = await server.stats();
    let s1: { requests: number; bodyBytes: number } | undefined;
    let t0 = performance.now();
    let wall0 = Date.now();
    const mount = await startNarfs({ mnt: join(d, 'mnt'), datalake: server.url, publicKey: m.publicKey, cacheDir: cache, logFile: join(d, 'log'),
      nodeFlags: [...(prof ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []), ...(process.env.NARFS_PROBE_NODE_FLAGS?.split(' ').filter(Boolean) ?? [])], extraArgs: [...extra, ...more], ...(args['narfs-bin'] ? { narfsBin: args['narfs-bin'] } : {}) });
    let read = 0;
    let mounted = Date.now() - wall0;
    let worked = 0;
    let t = NaN;
    let cpu = { main: { user: NaN, sys: NaN, faults: NaN }, all: { user: NaN, sys: NaN, faults: NaN } };
    let rss = { peak: NaN, now: NaN };
    try {
      if (running) {
        // As bench/run.ts: caches dropped first (their FORGETs are answered before the
        // clock), then the clock starts once the daemon is idle; a daemon still busy after
        // 10 s is no first use on a running daemon and is not timed.
        dropCaches();
        const idle = await waitIdle(mount.pid, server);
        console.log(`  mounted in ${mount.mountMs.toFixed(0)} ms; ${idle.idle ? 'idle' : 'NOT idle after 10 s'} after ${Date.now() - wall0} ms: ${idle.requests - s0.requests} requests, ${idle.bodyBytes - s0.bodyBytes} bytes before the clock`);
        if (!idle.idle) throw new Error('the daemon was not idle 10 s after mounting: the run is not timed');
        s0 = { requests: idle.requests, bodyBytes: idle.bodyBytes };
        t0 = performance.now();
        wall0 = Date.now();
        mounted = 0;
      }
      const prefetch = running && traceAtClock ? startPrefetchTrace(traceAtClock, cache, join(d, 'prefetch-trace.log')) : undefined;
      try {
        read = await work(mount.mnt);
        if (running) {
          t = performance.now() - t0;
          // Counted when the clock stops: later background fetches are not the workload's.
          s1 = await server.stats();
        }
      } finally {
        await prefetch?.done;
      }
      if (prefetch) console.log(`  narfs prefetch --trace --detach exited 0 (${Date.now() - wall0} ms after the clock start)`);
      worked = Date.now() - wall0;
      cpu = { main: cpuMs(`/proc/${mount.pid}/task/${mount.pid}/stat`), all: cpuMs(`/proc/${mount.pid}/stat`) };
      if (process.env.NARFS_PROBE_THREADS) {
        // CPU per thread of the daemon (name: its comm), the busiest first.
        const rows = readdirSync(`/proc/${mount.pid}/task`).map((t) => {
          const c = cpuMs(`/proc/${mount.pid}/task/${t}/stat`);
          let name = '?';
          try { name = readFileSync(`/proc/${mount.pid}/task/${t}/comm`, 'utf8').trim(); } catch { /* gone */ }
          return { t, name, ...c };
        }).sort((a, b) => (b.user + b.sys) - (a.user + a.sys));
        for (const r of rows.filter((x) => x.user + x.sys >= 50)) console.log(`  thread ${r.t} ${r.name}: user ${r.user} ms, sys ${r.sys} ms`);
      }
      rss = { peak: peakRss(mount.pid), now: currentRss(mount.pid) };
      if (process.env.NARFS_PROBE_STATUS) {
        // NARFS_PROBE_STATUS=1: the engine's request counts (where each FUSE opcode was answered).
        const st = spawnSync(process.execPath, [fileURLToPath(new URL('../bin/narfs', import.meta.url)), 'status', '--cache-dir', cache, '--json'], { encoding: 'utf8', timeout: 30_000 });
        try {
          const e = (JSON.parse(st.stdout) as { fuse?: { engine?: Record<string, unknown> } }).fuse?.engine ?? {};
          const pick = ['toJs', 'toJsByOpcode', 'inC', 'inCByOpcode', 'readsInC', 'passthroughOpens', 'locationOpens', 'locationFallbacks'];
          console.log(`  engine: ${JSON.stringify(Object.fromEntries(pick.map((k) => [k, e[k]])))}`);
        } catch { console.log(`  narfs status failed: ${st.stderr.slice(0, 400)}`); }
      }
      if (process.env.NARFS_PROBE_TWICE) {
        // The same work again on the now warm mount: its local cost alone.
        const w0 = Date.now();
        await work(mount.mnt);
        console.log(`  again on the warm mount: ${Date.now() - w0} ms`);
      }
    } catch (e) {
      await mount.stop();
      for (const l of readFileSync(mount.logFile, 'utf8').split('\n').filter((x) => /"level":"(warn|error)"/.test(x)).slice(0, 8)) console.log(`  log: ${l.slice(0, 1500)}`);
      throw e;
    } finally {
      await mount.stop();
      // NARFS_PROBE_KEEP_STDOUT=FILE: the daemon's stdout (node's --trace-* output) is kept there.
      if (process.env.NARFS_PROBE_KEEP_STDOUT) spawnSync('cp', [`${mount.logFile}.stdout`, process.env.NARFS_PROBE_KEEP_STDOUT]);
    }
    if (!running) t = performance.now() - t0;
    s1 ??= await server.stats();
    const log = readFileSync(mount.logFile, 'utf8');
    return { t, requests: s1.requests - s0.requests, bytes: s1.bodyBytes - s0.bodyBytes, read, log, profDir, d, wall0, mounted, worked, cpu, rss };
  };
  let more: string[] = [];
  const large = m.largeFile.replace(/^\/nix\/store\//, '');
  const work = big ? async (mnt: string) => {
    // The mount is up: time the first byte alone (open + read 4 KiB), as the bench does.
    const t = performance.now();
    const n = readRanges(mnt, [{ path: big.file, offset: 0, length: 4096 }]);
    console.log(`  first byte: ${(performance.now() - t).toFixed(1)} ms (from ${Date.now()} wall)`);
    return n;
  }
    : args.scenario === '9' ? (mnt: string) => readRanges(mnt, fivePercent)
    : args.scenario === '9l' ? (mnt: string) => readRanges(mnt, fivePercent.filter((r) => r.path === large))
    : args.scenario === '9s' ? (mnt: string) => readRanges(mnt, fivePercent.filter((r) => r.path !== large))
    : args.scenario === '11' ? async (mnt: string) => {
      if (process.env.NARFS_PROBE_PATH_TIMES) {
        // Each store path's reader on its own, with the time it ended: which one sets the run's length.
        const t = performance.now();
        await Promise.all(names.map(async (n) => { await readEverything(mnt, [n], 300_000); console.log(`  ${n.slice(33)} read in ${(performance.now() - t).toFixed(0)} ms`); }));
      } else await readEverything(mnt, names, 300_000);
      return m.closureStats.bytes as number;
    }
      : (mnt: string) => {
        // NARFS_PROBE_OP_TIMES=FILE: each replayed operation and its time, as JSON lines.
        const out = process.env.NARFS_PROBE_OP_TIMES;
        const times: Array<{ op: string; path: string; ms: number }> | undefined = out ? [] : undefined;
        const r = replayWorkload(mnt, ops, times);
        if (out && times) writeFileSync(out, times.map((x) => JSON.stringify(x)).join('\n') + '\n');
        // As bench/run.ts: a workload whose operations failed measured nothing (a narfs that
        // answers every open with an error is fast).
        if (r.unexpected.length) throw new Error(`narfs workload: ${r.unexpected.length} operations failed: ${r.unexpected.slice(0, 5).join('; ')}`);
        return r.bytes;
      };
  let traceAtClock: string | undefined;
  if (args.traced) {
    const trace = join(tmp, 'trace.txt');
    await run((mnt) => replayWorkload(mnt, ops).bytes, ['--record-trace', trace], false);
    // On a running daemon the trace is replayed on demand at the clock start, not from the mount's start.
    if (args.running) traceAtClock = trace;
    else more = ['--prefetch-trace', trace];
  }
  if (process.env.NARFS_PROBE_READS && args.scenario.startsWith('9')) {
    // The workload's files (many are served without JS once cached: the daemon's log misses them).
    for (const x of fivePercent) console.log(`  PROBE wants ${x.path.slice(x.path.indexOf('/'))} ${x.length}`);
  }
  const r = await run(work, more, args.prof, args.running, traceAtClock);
  console.log(`scenario ${args.scenario} ${args.variant}${args.traced ? ' traced' : ''}${args.running ? ' on a running daemon' : ''} ${args.extra}: ${r.t.toFixed(0)} ms; ${r.requests} requests, ${(r.bytes / 2 ** 20).toFixed(1)} MiB fetched, ${(r.read / 2 ** 20).toFixed(1)} MiB read (fetched/read ${(r.bytes / r.read).toFixed(2)})`);
  console.log(`  daemon CPU from its start to the end of the work: main thread ${cpuText(r.cpu.main)}, process ${cpuText(r.cpu.all)}; RSS at the end ${(r.rss.now / 2 ** 20).toFixed(0)} MiB, peak ${(r.rss.peak / 2 ** 20).toFixed(0)} MiB`);
  const stats = r.log.split('\n').filter((l) => /counters|stats|escalat|bulk|materialised|commit of/.test(l)).slice(-8);
  for (const l of stats) console.log(`  log: ${l.slice(0, 600)}`);
  // NARFS_PROBE_GREP=REGEX: every line of the daemon's log that matches.
  if (process.env.NARFS_PROBE_GREP) {
    const re = new RegExp(process.env.NARFS_PROBE_GREP);
    for (const l of r.log.split('\n').filter((x) => re.test(x))) console.log(`  ${l.slice(0, 600)}`);
  }
  if (process.env.NARFS_PROBE_READS) for (const l of r.log.split('\n').filter((x) => x.startsWith('PROBE') || /"level":"(warn|error)"/.test(x))) console.log(`  ${l.slice(0, 800)}`);
  if (process.env.NARFS_PROBE_TIMELINE) {
    const marks: Array<[number, string]> = [[r.mounted, 'MOUNTED (narfs: mounted seen)'], [r.worked, 'WORKLOAD DONE']];
    for (const l of readFileSync(serveLog, 'utf8').split('\n').filter(Boolean)) {
      const [ms, path, range] = l.split('\t');
      if (Number(ms) >= r.wall0) marks.push([Number(ms) - r.wall0, `GET ${path!.length > 40 ? `${path!.slice(0, 12)}..${path!.slice(-20)}` : path} ${range}`]);
    }
    for (const l of r.log.split('\n').filter(Boolean)) {
      try { const j = JSON.parse(l) as { time: string; msg: string }; marks.push([Date.parse(j.time) - r.wall0, `log ${j.msg}`]); } catch { /* not JSON */ }
    }
    for (const [ms, what] of marks.sort((a, b) => a[0] - b[0])) console.log(`  ${String(ms).padStart(6)} ms  ${what}`);
  }
  if (args.prof) for (const l of profileSummary(r.profDir)) console.log(`  ${l}`);
  if (args.prof) {
    // The worker threads' profiles (verify pool, blob writers): busy time and top functions each.
    for (const f of readdirSync(r.profDir).filter((n) => n.endsWith('.cpuprofile')).slice(1)) {
      const sub = join(r.profDir, `t-${f}`);
      mkdirSync(sub);
      spawnSync('cp', [join(r.profDir, f), sub]);
      const lines = profileSummary(sub).filter((l) => !l.startsWith('   #row'));
      console.log(`  thread ${f}: ${lines.slice(0, 6).join(' | ')}`);
    }
  }
  // NARFS_PROBE_KEEP_PROF=<dir>: the profiles are kept there (the run's directory is removed).
  if (args.prof && process.env.NARFS_PROBE_KEEP_PROF) spawnSync('cp', ['-r', r.profDir, process.env.NARFS_PROBE_KEEP_PROF]);
} finally {
  await server.stop();
  deleteNow([tmp]);
}
process.exit(0);
