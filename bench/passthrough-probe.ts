/**
 * Measures FUSE passthrough against the pread-from-C path and local disk, for scenario 3's
 * sequential read of a large file, page cache dropped (cold) and warm. The file's bytes
 * are a whole standalone blob (per-file cache layout, test/support/whole-file-content.ts;
 * NAR by `nix-store --dump`), served by two in-process native-engine mounts over the same
 * blob: one with passthrough, one without (every READ answered in C by pread, 1 MiB).
 * Local disk is the original file. Reads run in child processes (1 MiB read(2) calls,
 * timed inside the child), contenders alternate each rep, `drop_caches` 3 before each cold
 * read. Prints medians, min/max and the engine counters seen during the timed reads.
 *
 * Where the kernel has FUSE over io_uring (fuse module parameter enable_uring; set to Y
 * for the run and restored), the two native contenders run again over the io_uring
 * transport (native/src/uring_transport.h): requests per read and time per request are
 * printed for each, so /dev/fuse and io_uring compare in the same run (`--no-uring`: not).
 *
 * Given a directory (a store path) instead, it measures scenario 5 instead: concurrent
 * readers (one `cat` per file, page cache dropped) of up to 16 of its files of 1-8 MB,
 * with the LOOKUPs and OPENs each run sends to JS (after `drop_caches` the kernel has
 * forgotten the inodes; OPENs answered in C from the entry's location are counted apart).
 *
 * Usage (root): node --import tsx bench/passthrough-probe.ts <large file | dir> [reps (7)]
 * e.g. the bench closure's libLLVM-15.so.1 (scenario 3's file) or its `libs` store path.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { StoreFilesystem } from '../src/fs/store-filesystem.js';
import { NativeMount, URING_PARAM, type FuseTransport, type NativeStats } from '../src/fuse/native-mount.js';
import { forceUnmount } from '../src/fuse/fuse-native-mount.js';
import { WholeFileContent } from '../test/support/whole-file-content.js';

const execFileP = promisify(execFile);
const argv = process.argv.slice(2).filter((a) => a !== '--no-uring');
const file = argv[0];
const reps = Number(argv[1] ?? 7);
const withUring = !process.argv.includes('--no-uring') && existsSync(URING_PARAM);
if (!file) {
  process.stderr.write('usage: passthrough-probe.ts <large file> [reps]\n');
  process.exit(2);
}
const NAME = '0123456789abcdfghijklmnpqrsvwxyz-passthrough-probe';
const READER = `const fs=require('fs');const b=Buffer.allocUnsafe(1<<20);const t0=process.hrtime.bigint();
const fd=fs.openSync(process.argv[1],'r');let n=0,k;while((k=fs.readSync(fd,b,0,b.length,null))>0)n+=k;fs.closeSync(fd);
console.log(JSON.stringify({ms:Number(process.hrtime.bigint()-t0)/1e6,n}));`;

async function timeRead(path: string): Promise<{ ms: number; n: number }> {
  const { stdout } = await execFileP(process.execPath, ['-e', READER, path], { encoding: 'utf8' });
  return JSON.parse(stdout) as { ms: number; n: number };
}
/** Scenario 5: one `cat` per file, all at once; ms from start to the last exit. */
async function concurrentCats(paths: string[]): Promise<{ ms: number; n: number }> {
  const t0 = process.hrtime.bigint();
  await execFileP('sh', ['-c', 'for f; do cat "$f" > /dev/null & pids="$pids $!"; done; rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc', 'sh', ...paths]);
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, n: paths.length };
}
/** Requests the engine served per timed run (io_uring: fetched from ring entries) and the wall time per request. */
function perRequest(a: NativeStats, b: NativeStats, t: number[]): string {
  const served = (b.inC - a.inC) + (b.toJs - a.toJs);
  const perRun = served / t.length;
  const viaRing = b.uringActive ? `, via io_uring ${((b.uringRequests - a.uringRequests) / t.length).toFixed(0)}` : '';
  return `; requests/run ${perRun.toFixed(0)}${viaRing}${perRun > 0 ? `, ${((median(t) * 1000) / perRun).toFixed(0)} µs wall per request` : ''}`;
}
const dropCaches = () => execFileP('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const logger = { debug: () => {}, info: () => {}, warn: (m: string) => process.stderr.write(`${m}\n`), error: (m: string) => process.stderr.write(`${m}\n`) };

const isDir = (await stat(file)).isDirectory();
const rels: string[] = [];
if (isDir) {
  for (const e of await readdir(file, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const full = join(e.parentPath ?? e.path, e.name);
    const size = (await stat(full)).size;
    if (size >= 1e6 && size <= 8e6 && rels.length < 16) rels.push(full.slice(file.length + 1));
  }
  rels.sort();
}
const work = await mkdtemp(join(tmpdir(), 'narfs-pt-probe-'));
const content = await WholeFileContent.fromDirectory(file, NAME, join(work, 'cache'));
const mounts: Array<{ name: string; mount: NativeMount; path: string }> = [];
const uringWas = withUring ? (await readFile(URING_PARAM, 'utf8')).trim() : undefined;
try {
  if (withUring) await writeFile(URING_PARAM, 'Y');
  for (const transport of (withUring ? ['dev', 'uring'] : ['dev']) as FuseTransport[]) {
    for (const passthrough of [true, false]) {
      const mnt = join(work, `mnt-${passthrough ? 'pt' : 'pread'}-${transport}`);
      await mkdir(mnt);
      const fs = new StoreFilesystem(content, content, { opTimeoutMs: 30_000, forgets: true });
      const mount = new NativeMount(fs, { mountpoint: mnt, opTimeoutMs: 30_000, logger, passthrough, transport });
      await mount.mount();
      const name = `narfs ${passthrough ? 'passthrough' : 'pread (C)'}${transport === 'uring' ? ' uring' : ''}`;
      mounts.push({ name, mount, path: join(mnt, NAME) });
    }
  }
  const contenders = [...mounts.map((m) => ({ name: m.name, path: m.path, mount: m.mount as NativeMount | undefined })),
    { name: 'local disk', path: file, mount: undefined }];
  if (isDir) {
    for (const c of contenders) await concurrentCats(rels.map((r) => join(c.path, r))); // push the content to C
    const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
    const before = new Map<string, NativeStats | undefined>(contenders.map((c) => [c.name, c.mount?.stats()]));
    for (let rep = 0; rep < reps; rep++) {
      for (const c of rep % 2 === 0 ? contenders : [...contenders].reverse()) {
        await dropCaches();
        times.get(c.name)!.push((await concurrentCats(rels.map((r) => join(c.path, r)))).ms);
      }
    }
    let total = 0;
    for (const r of rels) total += (await stat(join(file, r))).size;
    console.log(`${file}: ${rels.length} concurrent readers (${(total / 2 ** 20).toFixed(1)} MiB), page cache dropped, ${reps} reps`);
    const disk = median(times.get('local disk')!);
    for (const c of contenders) {
      const t = times.get(c.name)!;
      const a = before.get(c.name);
      const b = c.mount?.stats();
      const toJs = (op: number) => (b!.toJsByOpcode[op] ?? 0) - (a!.toJsByOpcode[op] ?? 0);
      const req = a && b ? `; during: READs in C ${b.readsInC - a.readsInC}, passthrough opens ${b.passthroughOpens - a.passthroughOpens}, LOOKUPs to JS ${toJs(1)}, OPENs to JS ${toJs(14)}, opens in C from a location ${b.locationOpens - a.locationOpens}${perRequest(a, b, t)}` : '';
      console.log(`  ${c.name.padEnd(24)} median ${median(t).toFixed(1)} ms, min ${Math.min(...t).toFixed(1)}, max ${Math.max(...t).toFixed(1)}, throughput vs disk ${(disk / median(t)).toFixed(2)}x${req}`);
    }
  }
  const size = isDir ? 0 : (await timeRead(file)).n;
  if (!isDir) for (const c of contenders) await timeRead(c.path); // JS pushes the content to C on the first open
  if (!isDir) console.log(`${file}: ${(size / 2 ** 20).toFixed(1)} MiB, ${reps} reps, 1 MiB reads`);
  for (const cold of isDir ? [] : [true, false]) {
    const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
    const before = new Map<string, NativeStats | undefined>(contenders.map((c) => [c.name, c.mount?.stats()]));
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? contenders : [...contenders].reverse();
      for (const c of order) {
        if (cold) await dropCaches();
        const r = await timeRead(c.path);
        if (r.n !== size) throw new Error(`${c.name} read ${r.n} of ${size} bytes`);
        times.get(c.name)!.push(r.ms);
      }
    }
    const disk = median(times.get('local disk')!);
    console.log(`\n${cold ? 'page cache dropped (cold)' : 'page cache warm'}:`);
    for (const c of contenders) {
      const t = times.get(c.name)!;
      const a = before.get(c.name);
      const b = c.mount?.stats();
      const req = a && b ? `; during: READs in C ${b.readsInC - a.readsInC}, to JS ${b.toJs - a.toJs}, passthrough opens ${b.passthroughOpens - a.passthroughOpens}${perRequest(a, b, t)}` : '';
      const mbs = (size / 2 ** 20) / (median(t) / 1000);
      console.log(`  ${c.name.padEnd(24)} median ${median(t).toFixed(1)} ms (${mbs.toFixed(0)} MiB/s), min ${Math.min(...t).toFixed(1)}, max ${Math.max(...t).toFixed(1)}, ratio ${(median(t) / disk).toFixed(2)}${req}`);
    }
  }
} finally {
  for (const m of mounts) {
    await m.mount.unmount().catch(() => {});
    await forceUnmount(join(m.path, '..'), { abort: true }).catch(() => {});
  }
  if (uringWas !== undefined) await writeFile(URING_PARAM, uringWas);
  await content.close();
  await rm(work, { recursive: true, force: true });
}
process.exit(0);
