/**
 * Diagnostic for scenario 4 (metadata walk, kernel caches dropped) on the native engine,
 * in this process: the walk's time next to local disk, the FUSE requests it caused
 * (handed to JS vs answered in C, from the engine's `stats()`) and how busy the JS thread
 * was meanwhile (event-loop utilisation). Walks run as child processes, asynchronously
 * (this process serves the mount). Needs a built bench datalake (scripts/build-bench-datalake.sh).
 *
 * Usage: node --import tsx bench/walk-probe.ts <bench build dir>
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { withMount } from '../test/support/mount-harness.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: walk-probe.ts <bench build dir>');
const man = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { datalakes: { zstd: { dir: string } }; publicKey: string; closure: string[] };
const names = man.closure.map((p) => p.replace('/nix/store/', ''));
const run = promisify(execFile);
const drop = () => { writeFileSync('/proc/sys/vm/drop_caches', '3'); };
async function walk(store: string): Promise<number> {
  const t0 = performance.now();
  await run('find', [...names.map((n) => join(store, n)), '-printf', '%s %l\n'], { maxBuffer: 1 << 28 });
  return performance.now() - t0;
}

await withMount({ datalakes: [`file://${man.datalakes.zstd.dir}`], trustedPublicKeys: man.publicKey }, async (m) => {
  await walk(m.mnt); // resolve and cache every listing
  for (let rep = 0; rep < 3; rep++) {
    drop();
    const s0 = m.running.engine.stats()!;
    const e0 = performance.eventLoopUtilization();
    const ms = await walk(m.mnt);
    const e = performance.eventLoopUtilization(e0);
    const s1 = m.running.engine.stats()!;
    drop();
    const disk = await walk('/nix/store');
    console.log(`walk ${ms.toFixed(0)} ms (disk ${disk.toFixed(0)} ms, ${(ms / disk).toFixed(2)}x): requests to JS ${s1.toJs - s0.toJs}, in C ${s1.inC - s0.inC}; JS thread busy ${(e.utilization * 100).toFixed(0)}% (${e.active.toFixed(0)} ms)`);
  }
});
process.exit(0);
