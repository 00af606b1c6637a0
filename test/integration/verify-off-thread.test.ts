/**
 * The verification of a fetched NAR (decompression, SHA-256, strict parse, the write to
 * the temp file) runs on worker threads, not on the thread that answers the kernel:
 * while a large zstd NAR is materialised, the main event loop stays responsive.
 *
 * Asserted on CPU time, not wall time: the main thread's share of the process's CPU time
 * (utime + stime from /proc, proc(5)) over the fetch. Before the work moved off the
 * thread, the main thread did nearly all of it; now the workers do most. CPU time does not
 * grow when a loaded machine delays the thread, so the bound (< 0.5) holds on a busy 2-core
 * CI machine. The event loop's utilisation and timer delay are logged for a reader, not
 * asserted: on an idle machine ELU is 0.20-0.33, but one CI run measured 0.52 while other
 * work shared the two cores.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import type { NarNode } from '../../src/nix/nar-listing.js';

/** CPU time (clock ticks, user + system) of this process, or of its main thread. */
function cpuTicks(which: 'process' | 'main'): number {
  const stat = readFileSync(which === 'process' ? '/proc/self/stat' : `/proc/self/task/${process.pid}/stat`, 'utf8');
  // Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

describe('integration: NAR verification off the main thread', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let stack: StoreStack | undefined;
  const logs: LogLine[] = [];

  before(async () => {
    fixtures = await loadFixtures();
    root = await mkdtemp(join(tmpdir(), 'narfs-verify-off-thread-'));
  });
  after(async () => {
    await stack?.close();
    await rm(root, { recursive: true, force: true });
  });

  it('keeps the main event loop responsive while a large zstd NAR is materialised', async () => {
    stack = await openStoreStack({
      datalakes: [fixtures.datalakes['zstd']!.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir: join(root, 'cache'), negativeTtlMs: 1000,
    }, captureLogger(logs));
    const p = pathByRole(fixtures, 'large-file');
    const name = p.storePath.slice('/nix/store/'.length);
    const signal = AbortSignal.timeout(240_000);
    let node = (await stack.store.resolve(name, signal))!;
    for (const part of fixtures.largeFile.relPath.split('/').filter(Boolean)) {
      node = (node as { entries: Map<string, NarNode> }).entries.get(part)!;
    }
    assert.equal(node.type, 'regular');
    const file = node as NarNode & { type: 'regular' };
    // Warm up: the first fetch starts the pool's workers; measure a second fetch.
    const small = pathByRole(fixtures, 'single-exec').storePath.slice('/nix/store/'.length);
    const smallNode = (await stack.store.resolve(small, signal))!;
    if (smallNode.type === 'regular') await stack.store.read(small, smallNode.narOffset, 1, signal);

    // Measured: the fetch alone (a 1-byte read makes the store materialise the whole NAR).
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    const elu0 = performance.eventLoopUtilization();
    const main0 = cpuTicks('main');
    const proc0 = cpuTicks('process');
    await stack.store.read(name, file.narOffset, 1, signal);
    const mainTicks = cpuTicks('main') - main0;
    const procTicks = cpuTicks('process') - proc0;
    const elu = performance.eventLoopUtilization(elu0);
    h.disable();
    const bytes = await stack.store.read(name, file.narOffset, file.size, signal);
    const expected = createHash('sha256').update(await readFile(join(p.storePath, fixtures.largeFile.relPath))).digest('hex');
    assert.equal(createHash('sha256').update(bytes).digest('hex'), expected);
    const maxMs = h.max / 1e6;
    const p99Ms = h.percentile(99) / 1e6;
    const share = mainTicks / procTicks;
    console.log(`      main thread: ${mainTicks} of the process's ${procTicks} CPU ticks (${(share * 100).toFixed(0)} %); loop ELU ${elu.utilization.toFixed(3)} over ${elu.idle + elu.active | 0} ms, delay p99 ${p99Ms.toFixed(1)} ms, max ${maxMs.toFixed(1)} ms`);
    assert.ok(procTicks >= 10, `the fetch took ${procTicks} CPU ticks: too little work to tell where it ran`);
    assert.ok(share < 0.5, `the main thread did ${(share * 100).toFixed(0)}% of the fetch's CPU work`);
  });
});
