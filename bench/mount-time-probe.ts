/**
 * How long `narfs mount` takes to answer: from the spawn of `bin/narfs mount` on a fresh
 * cache (the HTTP datalake over the modelled link, as in scenario 1) to the first `stat` of
 * the mount's root that the mount answers (its st_dev is no longer the parent
 * directory's), and to the "narfs: mounted" line (printed after the daemon's own liveness
 * check). Prints each run and the range. For measuring start-up changes; the figures of the
 * benchmark come from `npm run bench` (scenario 1's "mount time" row).
 *
 *   node --import tsx bench/mount-time-probe.ts [--runs 5] [--warm] [--extra '--opt v ...'] [--compare CHECKOUT]
 *
 * Kernel caches are dropped before each run (as scenario 1 does) unless --warm. --compare
 * alternates runs of this checkout with runs of another built checkout (its bin/narfs),
 * `--runs` each, so that both see the same load on a shared machine.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { claimRunDir, dropCaches, installCleanupHandlers, serveDatalake, sleep, startNarfs } from './bench-processes.js';

const { values: args } = parseArgs({
  options: { compare: { type: 'string' }, runs: { type: 'string', default: '5' }, warm: { type: 'boolean', default: false }, extra: { type: 'string', default: '' } },
});

installCleanupHandlers();
const dir = spawnSync('bash', ['scripts/build-bench-datalake.sh'], { stdio: ['ignore', 'pipe', 'inherit'] }).stdout.toString().trim().split('\n').at(-1)!;
const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { publicKey: string; datalakes: { zstd: { dir: string } } };
const tmp = mkdtempSync('/tmp/narfs-bench-mount-');
claimRunDir(tmp);
const server = await serveDatalake(m.datalakes.zstd.dir, 20, 125_000_000);
const versions = args.compare ? [{ label: 'this checkout', bin: undefined }, { label: args.compare, bin: join(args.compare, 'bin/narfs') }] : [{ label: 'this checkout', bin: undefined }];
const answered = versions.map(() => [] as number[]);
const ready = versions.map(() => [] as number[]);
try {
  for (let i = 0; i < Number(args.runs); i++) {
    for (const [k, v] of (i % 2 ? [...versions.entries()].reverse() : [...versions.entries()])) {
      const d = mkdtempSync(join(tmp, 'run-'));
      const mnt = join(d, 'mnt');
      mkdirSync(mnt);
      const parentDev = statSync(d).dev;
      if (!args.warm) dropCaches();
      const t0 = performance.now();
      let answeredAt = NaN;
      const starting = startNarfs({
        mnt, datalake: server.url, publicKey: m.publicKey, cacheDir: join(d, 'cache'), logFile: join(d, 'log'),
        extraArgs: args.extra.split(' ').filter(Boolean), ...(v.bin ? { narfsBin: v.bin } : {}),
      });
      let failed = false;
      starting.catch(() => { failed = true; });
      // A stat of the mountpoint blocks until the daemon answers once it is mounted.
      while (!failed) {
        if (statSync(mnt).dev !== parentDev) { answeredAt = performance.now() - t0; break; }
        await sleep(1);
      }
      const mount = await starting;
      const readyAt = performance.now() - t0;
      await mount.stop();
      answered[k]!.push(answeredAt);
      ready[k]!.push(readyAt);
      console.log(`run ${i + 1}, ${v.label}: root stat answered ${answeredAt.toFixed(0)} ms; "narfs: mounted" seen ${readyAt.toFixed(0)} ms`);
    }
  }
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)} ms (median ${[...xs].sort((a, b) => a - b)[xs.length >> 1]!.toFixed(0)})`;
  for (const [k, v] of versions.entries()) console.log(`${v.label}: root stat answered: ${range(answered[k]!)}; "narfs: mounted": ${range(ready[k]!)}`);
} finally {
  await server.stop();
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(0);
