/**
 * Diagnostic for scenario 4 (metadata walk, kernel caches dropped) without a bench
 * datalake: the closure of a local store path (e.g. narfs-bench-top) is dumped by real Nix
 * (`nix-store --dump`), its listings served by an in-process native-engine mount
 * (StoreFilesystem, as the daemon does; content is never read by the walk), and
 * `find -printf '%s %l\n'` is timed on it and on /nix/store, caches dropped before each.
 * Prints the FUSE requests the walk handed to JS, by opcode, and those answered in C: what
 * answering more in C could save.
 *
 * Usage (root): node --import tsx bench/walk-breakdown-probe.ts /nix/store/<top> [reps (3)]
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { StoreFilesystem, type ContentReader, type RootNodes } from '../src/fs/store-filesystem.js';
import { NativeMount, type NativeStats } from '../src/fuse/native-mount.js';
import { forceUnmount } from '../src/fuse/fuse-native-mount.js';
import type { NarNode } from '../src/nix/nar-listing.js';
import { parseNar } from '../src/nix/nar-parser.js';
import { dumpNar } from '../test/support/whole-file-content.js';

const run = promisify(execFile);
const top = process.argv[2];
const reps = Number(process.argv[3] ?? 3);
if (!top) throw new Error('usage: walk-breakdown-probe.ts /nix/store/<top> [reps]');
const OPS: Record<number, string> = { 1: 'LOOKUP', 2: 'FORGET', 3: 'GETATTR', 5: 'READLINK', 14: 'OPEN', 15: 'READ', 17: 'STATFS', 18: 'RELEASE', 28: 'READDIR', 36: 'INTERRUPT', 42: 'BATCH_FORGET', 44: 'READDIRPLUS' };

const closure = (await run('nix-store', ['-qR', top])).stdout.trim().split('\n');
const names = closure.map((p) => p.replace('/nix/store/', ''));
const listings = new Map<string, NarNode>();
for (const p of closure) listings.set(p.replace('/nix/store/', ''), parseNar(await dumpNar(p)));
const roots: RootNodes = { resolve: async (n) => listings.get(n), knownNames: () => listings.keys() };
const content: ContentReader = { read: async () => { throw new Error('the walk reads no content'); } };
const logger = { debug: () => {}, info: () => {}, warn: (m: string) => process.stderr.write(`${m}\n`), error: (m: string) => process.stderr.write(`${m}\n`) };

async function walk(store: string): Promise<{ ms: number; lines: number }> {
  const t0 = performance.now();
  const { stdout } = await run('find', [...names.map((n) => join(store, n)), '-printf', '%s %l\n'], { maxBuffer: 1 << 28 });
  return { ms: performance.now() - t0, lines: stdout.split('\n').length - 1 };
}
const drop = () => writeFile('/proc/sys/vm/drop_caches', '3');
const byOp = (a: NativeStats, b: NativeStats) => Object.entries(b.toJsByOpcode)
  .map(([op, n]) => [OPS[Number(op)] ?? op, n - (a.toJsByOpcode[Number(op)] ?? 0)] as const)
  .filter(([, n]) => n > 0).map(([op, n]) => `${op} ${n}`).join(', ');

const work = await mkdtemp(join(tmpdir(), 'narfs-walk-probe-'));
const mnt = join(work, 'mnt');
await mkdir(mnt);
const fs = new StoreFilesystem(roots, content, { opTimeoutMs: 30_000, forgets: true });
const mount = new NativeMount(fs, { mountpoint: mnt, opTimeoutMs: 30_000, logger });
await mount.mount();
try {
  const first = await walk(mnt);
  console.log(`${names.length} store paths, ${first.lines} entries`);
  for (let rep = 0; rep < reps; rep++) {
    await drop();
    const s0 = mount.stats()!;
    const e0 = performance.eventLoopUtilization();
    const w = await walk(mnt);
    const e = performance.eventLoopUtilization(e0);
    const s1 = mount.stats()!;
    await drop();
    const d = await walk('/nix/store');
    if (w.lines !== d.lines) throw new Error(`narfs listed ${w.lines} entries, disk ${d.lines}`);
    console.log(`walk ${w.ms.toFixed(0)} ms vs disk ${d.ms.toFixed(0)} ms (${(w.ms / d.ms).toFixed(2)}x); to JS ${s1.toJs - s0.toJs} (${byOp(s0, s1)}), in C ${s1.inC - s0.inC}; JS thread busy ${(e.utilization * 100).toFixed(0)}%`);
  }
} finally {
  await mount.unmount().catch(() => {});
  await forceUnmount(mnt, { abort: true }).catch(() => {});
  await rm(work, { recursive: true, force: true });
}
process.exit(0);
