/**
 * Offline, end to end on a real FUSE mount: a mount whose datalakes are all dead at start
 * (a refused port and a blackhole that accepts and never answers) still starts — a warning,
 * not a refusal — and serves everything its cache holds: real Nix's `nix hash path` over
 * each cached path equals the narinfo's NarHash, and the root lists them. An uncached
 * path fails with EIO in under 2 s, every time, and is not remembered as absent: when the
 * datalake comes back (same URL), the very same path works without a restart.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, pathByRole, type Fixtures, type FixtureRole } from '../support/fixtures.js';
import { FaultNarServer } from '../support/fault-nar-server.js';
import { BlackholeServer } from '../support/blackhole-server.js';
import { NIX_ENV, probe, run, withMount, type TestMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

const CACHED: FixtureRole[] = ['single-file', 'single-exec', 'single-symlink', 'tree', 'traps', 'self-ref'];
const UNCACHED: FixtureRole = 'many-files';
const FAIL_FAST_MS = 2000;

describe('e2e: offline mount over a warm cache', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let lakeDir: string;
  let server: FaultNarServer;
  let hole: BlackholeServer;
  let cacheDir: string;

  before(async function () {
    this.timeout(20 * 60_000);
    fixtures = await loadFixtures();
    lakeDir = fixtures.datalakes['xz'].dir;
    server = await FaultNarServer.start(lakeDir);
    hole = await BlackholeServer.start();
    cacheDir = await mkdtemp(join(tmpdir(), 'narfs-offline-cache-'));
  });
  after(async () => {
    await server?.close();
    await hole?.close();
    if (cacheDir) await rm(cacheDir, { recursive: true, force: true });
  });

  const base = (role: FixtureRole) => storePathBase(parseStorePath(pathByRole(fixtures, role).storePath));

  async function expectNarHash(m: TestMount, role: FixtureRole): Promise<void> {
    const b = base(role);
    const ni = parseNarInfo(await readFile(join(lakeDir, `${b.slice(0, 32)}.narinfo`), 'utf8'));
    const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(m.mnt, b)], NIX_ENV);
    assert.equal(h.code, 0, `nix hash path ${b}: ${h.stderr}`);
    assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'), `NarHash of ${b}`);
  }

  it('starts with every datalake dead, serves the cached paths, fails the others fast, and recovers', async () => {
    // 1. Warm the cache while the datalake answers.
    await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir }, async (m) => {
      for (const role of CACHED) await expectNarHash(m, role);
    });

    // 2. Every datalake dead: a refused port (the one the cache was filled from) and a blackhole.
    await server.fail('refuse');
    await withMount({ datalakes: [server.url, hole.url], trustedPublicKeys: fixtures.publicKey, cacheDir, opTimeoutMs: 30_000 }, async (m) => {
      assert.ok(m.logs.some((l) => l.level === 'warn' && l.msg.startsWith('no datalake answers; starting offline')),
        m.logs.map((l) => l.msg).join('\n'));
      const root = await probe('readdir', m.mnt);
      for (const role of CACHED) assert.ok(root.names?.includes(base(role)), `the root lists cached ${base(role)}`);
      for (const role of CACHED) await expectNarHash(m, role);

      const uncached = join(m.mnt, base(UNCACHED));
      for (let i = 0; i < 3; i++) {
        const r = await probe('stat', uncached);
        assert.equal(r.code, 'EIO', `attempt ${i}: ${JSON.stringify(r)}`);
        assert.ok(r.ms < FAIL_FAST_MS, `attempt ${i}: EIO after ${r.ms} ms`);
      }
      const codes = m.logs.map((l) => (l.fields.err as { code?: string } | undefined)?.code).filter(Boolean);
      assert.ok(codes.includes('ERR_DATALAKE_UNAVAILABLE'), codes.join());

      // 3. The datalake comes back on the same URL: the same path works, no restart.
      await server.clear();
      let last: unknown;
      const until = Date.now() + 30_000;
      for (;;) {
        const r = await probe('stat', uncached);
        if (r.ok) break;
        last = r;
        assert.ok(Date.now() < until, `still failing 30 s after the datalake came back: ${JSON.stringify(last)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.ok(m.logs.some((l) => l.msg === 'datalake is up again' && l.fields.datalake === server.url));
      await expectNarHash(m, UNCACHED);
    });
  });
});
