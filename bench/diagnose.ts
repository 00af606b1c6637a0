/**
 * Measured reasons behind the benchmark's worst ratios (not part of `npm run bench`):
 * re-runs one workload per scenario once per contender with
 * - `strace -f -c` attached to the FUSE daemon (narfs or squashfuse): `writev` calls are
 *   FUSE replies (libfuse answers every request but FORGET with one writev), `read` calls
 *   are mostly requests read from /dev/fuse, `pread64` are reads of narfs' blob cache;
 * - a V8 CPU profile of narfs (`node --cpu-prof`), summarised as self time per function.
 * strace slows the daemon down, so the times printed here are not the benchmark's.
 *
 *   node --import tsx bench/diagnose.ts [--only walk,read-cold,read-warm,readers,many,full,first-use]
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import {
  claimRunDir, cleanupAllSync, dropCaches, installCleanupHandlers, peakRss, serveDatalake, sleep, startNarfs, startSquashfuse,
} from './bench-processes.js';
import { concurrentReaders, readEverything, readFileSequential, replayWorkload, walkMetadata, type WorkloadOp } from './workloads.js';
import { loadProfile, selfTimes } from './cpu-profile.js';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const { values: args } = parseArgs({ options: { only: { type: 'string', default: 'walk,read-cold,read-warm,readers,many,full,first-use' } } });
const ONLY = new Set(args.only!.split(','));

interface Manifest {
  dir: string; publicKey: string; closure: string[]; many: string; squashfs: string; largeFile: string; readers: string[];
  datalakes: Record<string, { dir: string }>; workload: { file: string };
}

async function straced<T>(pid: number, fn: () => T | Promise<T>): Promise<{ result: T; ms: number; calls: Record<string, number> }> {
  const out = join(tmp, `strace-${pid}-${Date.now()}.txt`);
  const st = spawn('strace', ['-f', '-c', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  await sleep(700); // attach to every thread
  const t0 = performance.now();
  const result = await fn();
  const ms = performance.now() - t0;
  await sleep(200);
  st.kill('SIGINT');
  await new Promise((r) => st.once('exit', r));
  const calls: Record<string, number> = {};
  for (const line of readFileSync(out, 'utf8').split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line);
    if (m) calls[m[2]!] = Number(m[1]);
  }
  return { result, ms, calls };
}

function summariseProfile(dir: string): string[] {
  const p = loadProfile(dir);
  if (!p) return ['(no profile)'];
  const { self, total } = selfTimes(p);
  return [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12)
    .map(([k, v]) => `${((100 * v) / total).toFixed(1).padStart(5)} %  ${k}`);
}

const line = (s: string) => process.stdout.write(s + '\n');
const fmtCalls = (c: Record<string, number>) => ['writev', 'read', 'pread64', 'futex', 'epoll_wait', 'write', 'splice']
  .filter((k) => c[k]).map((k) => `${k}=${c[k]}`).join(' ');

let tmp = '';
async function main(): Promise<void> {
  installCleanupHandlers();
  const dir = spawnSync('bash', [join(REPO, 'scripts/build-bench-datalake.sh')], { stdio: ['ignore', 'pipe', 'inherit'] }).stdout.toString().trim().split('\n').at(-1)!;
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  tmp = mkdtempSync('/tmp/narfs-bench-diag-');
  claimRunDir(tmp);
  const names = m.closure.map((p) => basename(p));
  const rel = (p: string) => p.replace(/^\/nix\/store\//, '');
  const zstd = `file://${m.datalakes.zstd!.dir}`;
  const mkMount = async (cache: string, datalake = zstd, prof = false) => {
    const d = mkdtempSync(join(tmp, 'narfs-'));
    mkdirSync(join(d, 'mnt'));
    const profDir = join(d, 'prof');
    const mnt = await startNarfs({ mnt: join(d, 'mnt'), datalake, publicKey: m.publicKey, cacheDir: cache, logFile: join(d, 'log'),
      nodeFlags: prof ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [] });
    return { mnt, profDir };
  };
  try {
    // A warm cache for the warm-cache scenarios.
    const warm = join(tmp, 'warm-cache');
    { const { mnt } = await mkMount(warm); await readEverything(mnt.mnt, names); await mnt.stop(); }
    const sqMnt = join(tmp, 'sq'); mkdirSync(sqMnt);
    const workloads: Array<[string, (store: string) => unknown, boolean]> = [
      ['walk', (s) => walkMetadata(s, names), true],
      ['read-cold', (s) => readFileSequential(join(s, rel(m.largeFile))), true],
      ['read-warm', (s) => readFileSequential(join(s, rel(m.largeFile))), false],
      ['readers', (s) => concurrentReaders(s, m.readers.map(rel)), true],
    ];
    for (const [name, fn, cold] of workloads) {
      if (!ONLY.has(name)) continue;
      for (const who of ['narfs', 'squashfuse']) {
        const narfs = who === 'narfs' ? await mkMount(warm, zstd, true) : undefined;
        const sq = who === 'squashfuse' ? await startSquashfuse(m.squashfs, sqMnt) : undefined;
        const store = narfs ? narfs.mnt.mnt : sqMnt;
        const pid = narfs ? narfs.mnt.pid : sq!.pid;
        for (const n of names) spawnSync('ls', ['-d', join(store, n)], { stdio: 'ignore' });
        if (!cold) await fn(store); else dropCaches();
        const r = await straced(pid, () => fn(store));
        line(`${name} ${who}: ${r.ms.toFixed(0)} ms under strace; ${fmtCalls(r.calls)}${narfs ? `; peak RSS ${(peakRss(pid) / 2 ** 20).toFixed(0)} MiB` : ''}`);
        if (narfs) { await narfs.mnt.stop(); for (const l of summariseProfile(narfs.profDir)) line(`    ${l}`); }
        await sq?.stop();
      }
    }
    if (ONLY.has('many')) {
      const cache = join(tmp, 'cache-many');
      const { mnt, profDir } = await mkMount(cache, zstd, true);
      dropCaches();
      const r = await straced(mnt.pid, () => walkMetadata(mnt.mnt, [basename(m.many)]));
      line(`many narfs: ${r.ms.toFixed(0)} ms under strace; ${fmtCalls(r.calls)}; peak RSS ${(peakRss(mnt.pid) / 2 ** 20).toFixed(0)} MiB`);
      await mnt.stop();
      for (const l of summariseProfile(profDir)) line(`    ${l}`);
    }
    if (ONLY.has('full')) {
      for (const c of ['zstd', 'none']) {
        const cache = join(tmp, `cache-full-${c}`);
        const { mnt, profDir } = await mkMount(cache, `file://${m.datalakes[c]!.dir}`, true);
        dropCaches();
        const r = await straced(mnt.pid, () => readEverything(mnt.mnt, names));
        line(`full ${c} narfs: ${r.ms.toFixed(0)} ms under strace; ${fmtCalls(r.calls)}; peak RSS ${(peakRss(mnt.pid) / 2 ** 20).toFixed(0)} MiB`);
        const logText = await mnt.stop();
        const mat = logText.split('\n').filter((l) => l.includes('"materialised"')).map((l) => JSON.parse(l) as { path: string; bytes: number; ms: number });
        line(`    materialised: ${mat.map((x) => `${x.path.replace(/^\w+-narfs-bench-/, '')} ${(x.bytes / 2 ** 20).toFixed(0)} MiB in ${x.ms} ms`).join(', ')}`);
        for (const l of summariseProfile(profDir)) line(`    ${l}`);
        rmSync(cache, { recursive: true, force: true });
      }
    }
    if (ONLY.has('first-use')) {
      const ops = JSON.parse(readFileSync(m.workload.file, 'utf8')) as WorkloadOp[];
      for (const c of ['xz', 'zstd']) {
        const server = await serveDatalake(m.datalakes[c]!.dir, 20, 125e6);
        const cache = join(tmp, `cache-first-${c}`);
        dropCaches();
        const t0 = performance.now();
        const { mnt, profDir } = await mkMount(cache, server.url, true);
        const tMount = performance.now() - t0;
        const res = replayWorkload(mnt.mnt, ops);
        const t = performance.now() - t0;
        const logText = await mnt.stop();
        const requests = await server.stop();
        const mat = logText.split('\n').filter((l) => l.includes('"materialised"')).map((l) => JSON.parse(l) as { path: string; bytes: number; ms: number });
        line(`first-use ${c} narfs: ${t.toFixed(0)} ms (mount ready after ${tMount.toFixed(0)} ms); HTTP requests ${requests}; read ${(res.bytes / 2 ** 20).toFixed(1)} MiB; materialised ${mat.length} paths, ${(mat.reduce((s, x) => s + x.bytes, 0) / 2 ** 20).toFixed(0)} MiB: ${mat.map((x) => `${x.path.replace(/^\w+-narfs-bench-/, '')} ${(x.bytes / 2 ** 20).toFixed(0)} MiB in ${x.ms} ms`).join(', ')}`);
        for (const l of summariseProfile(profDir)) line(`    ${l}`);
      }
    }
  } finally {
    cleanupAllSync();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => { process.stderr.write(`diagnose: ${(e as Error).stack ?? e}\n`); cleanupAllSync(); process.exitCode = 1; });
