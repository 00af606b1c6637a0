/**
 * Diagnostic for scenario 6 (RSS after the 100,000-file walk) on the native engine, in this
 * process: RSS, peak RSS (VmHWM), V8 heap, external and array-buffer memory, glibc malloc
 * (mallinfo2 via /proc is not available, so `smaps_rollup` anonymous memory is shown) and
 * the engine's node count at each stage: idle, after resolving the 100k path's listing
 * (`stat`), after the walk, after the kernel forgets (drop_caches) and a GC. With
 * `--snapshot` it also writes a heap snapshot after the walk and prints the largest
 * constructors by self size. Needs a built bench datalake (scripts/build-bench-datalake.sh).
 * Run with `node --expose-gc --import tsx bench/rss-probe.ts <bench build dir> [--snapshot]`.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import { withMount } from '../test/support/mount-harness.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: rss-probe.ts <bench build dir> [--snapshot]');
const snapshot = process.argv.includes('--snapshot');
/** `--v8-flag=<flag>`: a V8 flag set before the mount (e.g. --semi-space-growth-factor=1). */
for (const a of process.argv) if (a.startsWith('--v8-flag=')) v8.setFlagsFromString(a.slice('--v8-flag='.length));
/** `--quick`: no 25 s wait after the forget (the peak figures only). */
const quick = process.argv.includes('--quick');
const man = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { datalakes: { zstd: { dir: string } }; publicKey: string; many: string };
const many = man.many.replace('/nix/store/', '');
const run = promisify(execFile);
const drop = () => { writeFileSync('/proc/sys/vm/drop_caches', '3'); };
const gc = (globalThis as { gc?: () => void }).gc;

function status(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync('/proc/self/status', 'utf8').split('\n')) {
    const m = /^(VmRSS|VmHWM|RssAnon|RssFile|Threads):\s+(\d+)/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

const MB = (n: number) => (n / 2 ** 20).toFixed(1);

/**
 * Anonymous RSS by kind of mapping (/proc/self/smaps): the brk heap (glibc's main arena),
 * 64 MiB-aligned reservations of at most 64 MiB (glibc's thread arenas: libuv, LevelDB and
 * FUSE reader threads allocate there), and the rest (V8's pages and large mmaps).
 */
function anonByKind(): string {
  const sum = { heap: 0, arenas: 0, other: 0 };
  let kind: keyof typeof sum | undefined;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (m) {
      const start = BigInt(`0x${m[1]}`), end = BigInt(`0x${m[2]}`);
      const name = m[4]!;
      if (name === '[heap]') kind = 'heap';
      else if (name !== '' || m[3] !== '0') kind = undefined;
      else if (start % (64n << 20n) === 0n && end - start <= 64n << 20n) kind = 'arenas';
      else kind = 'other';
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (r && kind) sum[kind] += Number(r[1]) * 1024;
  }
  return `brk ${MB(sum.heap)} arenas ${MB(sum.arenas)} other ${MB(sum.other)}`;
}
function report(stage: string, nodes?: number): void {
  const s = status();
  const h = v8.getHeapStatistics();
  const mu = process.memoryUsage();
  console.log(`${stage.padEnd(22)} RSS ${MB(s.VmRSS! * 1024)} (anon ${MB(s.RssAnon! * 1024)}, file ${MB(s.RssFile! * 1024)}) HWM ${MB(s.VmHWM! * 1024)} | heap used ${MB(h.used_heap_size)} total ${MB(h.total_heap_size)} | external ${MB(mu.external)} arrayBuffers ${MB(mu.arrayBuffers)} | C nodes ${nodes ?? '-'} | threads ${s.Threads} | anon: ${anonByKind()}`);
}

function snapshotSummary(): void {
  const file = `/tmp/rss-probe-${process.pid}.heapsnapshot`;
  v8.writeHeapSnapshot(file);
  const snap = JSON.parse(readFileSync(file, 'utf8')) as { snapshot: { meta: { node_fields: string[]; node_types: string[][] } }; nodes: number[]; strings: string[] };
  const f = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0]!;
  const n = f.length;
  const iType = f.indexOf('type'), iName = f.indexOf('name'), iSize = f.indexOf('self_size');
  const by = new Map<string, { count: number; size: number }>();
  for (let i = 0; i < snap.nodes.length; i += n) {
    const t = types[snap.nodes[i + iType]!]!;
    const key = t === 'object' || t === 'closure' ? `${t}:${snap.strings[snap.nodes[i + iName]!]}` : t;
    const e = by.get(key) ?? { count: 0, size: 0 };
    e.count++; e.size += snap.nodes[i + iSize]!;
    by.set(key, e);
  }
  for (const [k, v] of [...by].sort((a, b) => b[1].size - a[1].size).slice(0, 15)) {
    console.log(`  ${k.slice(0, 50).padEnd(50)} ${String(v.count).padStart(8)} ${MB(v.size).padStart(7)} MiB`);
  }
}

await withMount({ datalakes: [`file://${man.datalakes.zstd.dir}`], trustedPublicKeys: man.publicKey }, async (m) => {
  const nodes = () => m.running.engine.stats()?.nodes;
  gc?.();
  report('idle', nodes());
  await run('stat', [join(m.mnt, many)]);
  report('listing resolved', nodes());
  gc?.();
  report('  after gc', nodes());
  const t0 = performance.now();
  const { stdout } = await run('find', [join(m.mnt, many), '-printf', '%s\n'], { maxBuffer: 1 << 28 });
  report(`walked ${stdout.split('\n').length - 1} ${(performance.now() - t0).toFixed(0)}ms`, nodes());
  gc?.();
  report('  after gc', nodes());
  if (snapshot) snapshotSummary();
  drop();
  for (let i = 0; i < 50 && (nodes() ?? 0) > 1000; i++) await new Promise((r) => setTimeout(r, 100));
  // The daemon's own release (StoreFilesystem: a compacting GC 6 s after the burst; that
  // mark-compact arms V8's memory reducer, which shrinks the young generation ~8 s later).
  await new Promise((r) => setTimeout(r, quick ? 500 : 25_000));
  report('forgotten (daemon)', nodes());
  gc?.();
  await new Promise((r) => setTimeout(r, 500));
  report('  + gc', nodes());
  for (const sp of v8.getHeapSpaceStatistics()) {
    console.log(`  ${sp.space_name.padEnd(24)} size ${MB(sp.space_size)} used ${MB(sp.space_used_size)} physical ${MB(sp.physical_space_size)}`);
  }
});
