/**
 * `narfs status` (control socket op `status`) and the Prometheus endpoint
 * (`--metrics-listen`) against a live `narfs mount` process, with values checked after
 * known work: reading N store paths of a fresh cache costs exactly N narinfo misses, N
 * NAR fetches of Σ NarSize bytes (Σ FileSize downloaded) and 3N datalake requests
 * (narinfo, .ls, NAR); a second daemon on the same cache reads them again with N narinfo
 * hits, N NAR-cache hits and no fetch, and reports a dead second datalake as down (exit 3).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { loadFixtures, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures, type FixturePath } from '../support/fixtures.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import type { NarfsStatus } from '../../src/daemon/status-operation.js';

const execFileP = promisify(execFile);

/** Roles whose store paths hold at least one non-empty regular file (reading it needs the NAR). */
const ROLES = ['single-file', 'single-exec', 'multi-output', 'many-files'];

async function status(cacheDir: string): Promise<{ code: number; st: NarfsStatus }> {
  try {
    const { stdout } = await execFileP(process.execPath, [NARFS_BIN, 'status', '--cache-dir', cacheDir, '--json'], { timeout: 120_000 });
    return { code: 0, st: JSON.parse(stdout) as NarfsStatus };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (e.code === 3 && e.stdout) return { code: 3, st: JSON.parse(e.stdout) as NarfsStatus };
    throw new Error(`narfs status failed (${String(e.code)}): ${e.stderr ?? String(err)}`);
  }
}

/** The samples of a scrape: `name{labels}` → value. */
async function scrape(address: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${address}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

function metricsAddress(d: CliDaemon): string {
  const m = /metrics endpoint listening.*?http:\/\/([^/\s"]+)\/metrics/.exec(d.stderr.join(''));
  assert.ok(m, `the daemon logs its metrics address; stderr: ${d.stderr.join('')}`);
  return m[1]!;
}

/** Reads every regular file of `paths` under the mount, in a child process. */
async function readAll(mnt: string, paths: FixturePath[]): Promise<void> {
  const dirs = paths.map((p) => join(mnt, basename(p.storePath)));
  await execFileP('sh', ['-c', 'find "$@" -type f -exec cat {} + > /dev/null', 'sh', ...dirs], { timeout: 300_000, maxBuffer: 1 << 20 });
}

async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('e2e: narfs status and /metrics after known work', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let root: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fixtures = await loadFixtures();
    root = await mkdtemp(join(tmpdir(), 'narfs-status-'));
  });
  after(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('counts narinfo misses, NAR fetches, bytes and datalake requests; a restart counts hits and a down datalake', async () => {
    const lake = fixtures.datalakes['xz'];
    const chosen = fixtures.paths.filter((p) => ROLES.includes(p.role));
    assert.equal(chosen.length, ROLES.length);
    const n = chosen.length;
    const narSize = chosen.reduce((a, p) => a + p.narSize, 0);
    let fileSize = 0;
    for (const p of chosen) {
      const text = await readFile(join(lake.dir, `${basename(p.storePath).slice(0, 32)}.narinfo`), 'utf8');
      fileSize += Number(/^FileSize: (\d+)$/m.exec(text)![1]);
    }
    const mnt = join(root, 'nix', 'store');
    await mkdir(mnt, { recursive: true });
    const cacheDir = join(root, 'cache');
    // Warming the references' narinfos (on by default) would fetch paths this test does not
    // read; its subject is the counters of what is read, so warming is off here (it has its
    // own test: test/integration/lazy-store-warm.test.ts).
    const common = [mnt, '--trusted-public-keys', fixtures.publicKey, '--cache-dir', cacheDir, '--log-format', 'json',
      '--lazy-fetch', 'warm-references=0'];

    // 1. A fresh cache: everything is fetched once.
    let d = await startNarfsMount([...common, '--datalake', lake.url, '--metrics-listen', '127.0.0.1:0']);
    try {
      const address = metricsAddress(d);
      const idle = await status(cacheDir);
      assert.equal(idle.code, 0);
      assert.equal(idle.st.mountpoint, mnt);
      assert.equal(idle.st.narCache.fetches, 0);
      assert.equal(idle.st.narinfoCache.misses, 0);

      await readAll(mnt, chosen);
      const { code, st } = await status(cacheDir);
      assert.equal(code, 0);
      assert.deepEqual(st.datalakes.map((x) => [x.url, x.up]), [[lake.url, true]]);
      assert.equal(st.narinfoCache.misses, n, 'one narinfo miss per path');
      assert.equal(st.narinfoCache.hits, 0);
      assert.equal(st.narCache.fetches, n, 'one NAR fetch per path');
      assert.equal(st.narCache.fetchErrors, 0);
      assert.equal(st.narCache.bytesFetched, narSize, 'Σ NarSize');
      assert.equal(st.narCache.bytesDownloaded, fileSize, 'Σ FileSize');
      assert.equal(st.narCache.inFlight, 0);
      assert.equal(st.fuse.openFiles, 0, 'cat closed every file');
      assert.ok(st.fuse.inodes > n, `inodes ${st.fuse.inodes}`);
      assert.ok(st.cache.sizeBytes >= narSize, `cache on disk ${st.cache.sizeBytes} ≥ ${narSize}`);

      const m = await scrape(address);
      const lbl = `datalake="${lake.url}"`;
      assert.equal(m.get(`narfs_nar_fetches_total{${lbl},outcome="ok"}`), n);
      assert.equal(m.get(`narfs_nar_fetched_bytes_total{${lbl}}`), narSize);
      assert.equal(m.get(`narfs_nar_downloaded_bytes_total{${lbl}}`), fileSize);
      assert.equal(m.get(`narfs_nar_fetch_duration_seconds_count{${lbl}}`), n);
      assert.equal(m.get(`narfs_nar_fetch_duration_seconds_bucket{${lbl},le="+Inf"}`), n);
      assert.equal(m.get(`narfs_datalake_request_duration_seconds_count{${lbl},outcome="ok"}`), 4 * n, 'narinfo, .narfs-index (absent), .ls and NAR per path');
      assert.equal(m.get('narfs_narinfo_cache_lookups_total{result="miss"}'), n);
      assert.equal(m.get(`narfs_datalake_up{${lbl}}`), 1);
      assert.ok((m.get('narfs_fuse_op_duration_seconds_count{op="lookup"}') ?? 0) >= n);
      assert.ok((m.get('narfs_fuse_op_duration_seconds_count{op="read"}') ?? 0) >= n, 'first reads go through JS');
      assert.equal(m.get('narfs_nar_fetches_in_flight'), 0);
      assert.equal(m.get('narfs_inodes'), st.fuse.inodes);
      // Split into blobs once the mount is idle; a stop before that keeps the NARs in
      // pending/ and the next start reads them back (not counted as hits of the NAR cache).
      for (const p of chosen) await d.waitForOutput('stderr', new RegExp(`materialised.*${basename(p.storePath)}`), `the commit of ${basename(p.storePath)}`);
    } finally {
      assert.equal(await d.stop(), 0);
    }

    // 2. Same cache, plus a datalake that does not answer: hits only, and one datalake down.
    const dead = `http://127.0.0.1:${await closedPort()}`;
    d = await startNarfsMount([...common, '--datalake', lake.url, '--datalake', dead]);
    try {
      await readAll(mnt, chosen);
      const { code, st } = await status(cacheDir);
      assert.equal(code, 3, 'exit 3: a datalake is down');
      assert.deepEqual(st.datalakes.map((x) => [x.url, x.up]).sort(), [[dead, false], [lake.url, true]].sort());
      assert.ok(st.datalakes.find((x) => x.url === dead)?.error?.code?.startsWith('ERR_DATALAKE'));
      assert.equal(st.narinfoCache.hits, n, 'narinfos come from the metadata cache');
      assert.equal(st.narinfoCache.misses, 0);
      assert.equal(st.narCache.hits, n, 'NARs come from the NAR cache');
      assert.equal(st.narCache.fetches, 0);
      assert.equal(st.narCache.bytesFetched, 0);
      const text = await execFileP(process.execPath, [NARFS_BIN, 'status', '--cache-dir', cacheDir]).catch((e: { stdout: string }) => e);
      assert.match(text.stdout, /DOWN http:\/\/127\.0\.0\.1/);
      assert.match(text.stdout, new RegExp(`NAR cache: ${n} hits, 0 fetches`));
    } finally {
      assert.equal(await d.stop(), 0);
    }
  });

  it('narfs status without a daemon fails with ERR_CONTROL (exit 1)', async () => {
    const r = await execFileP(process.execPath, [NARFS_BIN, 'status', '--cache-dir', join(root, 'nothing')]).then(
      () => assert.fail('status succeeded without a daemon'), (e: { code: number; stderr: string }) => e);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /ERR_CONTROL: no narfs daemon serves/);
  });
});
