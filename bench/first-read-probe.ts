/**
 * Scenario 5 on the first run after a daemon start: the bench's 16 concurrent readers
 * (one `cat` per file, page cache dropped), over a warm cache written by an EARLIER
 * process, so every cached file is re-hashed in this one before it is served
 * (src/cache/blob-store.ts). For each of `starts` daemon starts (in-process startMount, a
 * real mount), `reps` runs alternate with local disk; each narfs run prints its time and
 * the engine counters it moved (LOOKUPs, OPENs and READs sent to JS, opens answered in C
 * from a location given with the entry, passthrough opens, READs in C). Runs after the
 * first of a start show whether their OPENs stay in C (native/src/session_passthrough.cc
 * openLocation) although `drop_caches` made the kernel forget every inode.
 *
 * Usage (root): node --import tsx bench/first-read-probe.ts <bench build dir> [starts (3)] [reps (3)]
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startMount } from '../src/daemon/mount-daemon.js';
import { parseTrustedPublicKeys } from '../src/nix/signature.js';
import { forceUnmount } from '../src/fuse/fuse-native-mount.js';
import type { NativeStats } from '../src/fuse/native-mount.js';

const execFileP = promisify(execFile);
const [buildDir, startsArg, repsArg] = process.argv.slice(2);
if (!buildDir) {
  process.stderr.write('usage: first-read-probe.ts <bench build dir> [starts] [reps]\n');
  process.exit(2);
}
const starts = Number(startsArg ?? 3);
const reps = Number(repsArg ?? 3);
const m = JSON.parse(await readFile(join(buildDir, 'manifest.json'), 'utf8')) as {
  publicKey: string; readers: string[]; datalakes: { zstd: { dir: string } };
};
const rels = m.readers.map((f) => f.replace(/^\/nix\/store\//, ''));
const silent = { debug: () => {}, info: () => {}, warn: () => {}, error: (msg: string) => process.stderr.write(`${msg}\n`) };
const dropCaches = () => execFileP('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
async function cats(store: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await execFileP('sh', ['-c', 'for f; do cat "$f" > /dev/null & pids="$pids $!"; done; rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc', 'sh', ...rels.map((r) => join(store, r))]);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
const work = await mkdtemp(join(tmpdir(), 'narfs-first-read-'));
const mnt = join(work, 'mnt');
await mkdir(mnt);
const config = {
  mountpoint: mnt, datalakes: [`file://${m.datalakes.zstd.dir}`], trustedPublicKeys: parseTrustedPublicKeys(m.publicKey),
  requireSigs: true, cacheDir: join(work, 'cache'), opTimeoutMs: 30_000, negativeTtlMs: 30_000, logFormat: 'text' as const,
};
try {
  // The warm cache, written by this process's first daemon (an earlier one for the others).
  {
    const r = await startMount(config, silent);
    try { await cats(mnt); } finally { await r.close(); }
  }
  const delta = (a: NativeStats, b: NativeStats) => `LOOKUP to JS ${(b.toJsByOpcode[1] ?? 0) - (a.toJsByOpcode[1] ?? 0)}, OPEN to JS ${(b.toJsByOpcode[14] ?? 0) - (a.toJsByOpcode[14] ?? 0)}, READ to JS ${(b.toJsByOpcode[15] ?? 0) - (a.toJsByOpcode[15] ?? 0)}, opens in C from a location ${(b.locationOpens ?? 0) - (a.locationOpens ?? 0)}, passthrough opens ${b.passthroughOpens - a.passthroughOpens}, READs in C ${b.readsInC - a.readsInC}`;
  const disk: number[] = [];
  const firsts: number[] = [];
  const laters: number[] = [];
  for (let s = 0; s < starts; s++) {
    const r = await startMount(config, silent);
    try {
      for (const rel of rels) await execFileP('stat', [join(mnt, rel)]); // lookups, as the bench's `ls -d` does for roots
      for (let rep = 0; rep < reps; rep++) {
        await dropCaches();
        disk.push(await cats('/nix/store'));
        await dropCaches();
        const a = r.engine.stats()!;
        const ms = await cats(mnt);
        (rep === 0 ? firsts : laters).push(ms);
        console.log(`start ${s} run ${rep}: narfs ${ms.toFixed(0)} ms (disk ${disk[disk.length - 1]!.toFixed(0)} ms); ${delta(a, r.engine.stats()!)}`);
      }
    } finally {
      await r.close();
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  console.log(`median: disk ${med(disk).toFixed(0)} ms; narfs first run after a start ${med(firsts).toFixed(0)} ms (${(med(disk) / med(firsts)).toFixed(2)}x disk throughput), later runs ${laters.length ? med(laters).toFixed(0) : '-'} ms${laters.length ? ` (${(med(disk) / med(laters)).toFixed(2)}x)` : ''}`);
} finally {
  await forceUnmount(mnt, { abort: true }).catch(() => {});
  await rm(work, { recursive: true, force: true });
}
process.exit(0);
