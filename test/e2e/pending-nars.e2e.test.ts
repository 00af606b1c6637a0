/**
 * An unmount while the files of a just verified NAR are still being committed keeps that
 * NAR (pending/, PendingNars) instead of waiting for the commit or dropping it; the next
 * mount on the same cache reads it back (NarHash checked again) instead of asking the
 * datalake, and real Nix agrees with every byte (`nix hash path` = NarHash); `narfs status`
 * shows the kept NAR before and the read-back after, and /metrics counts it.
 *
 * Real mounts (in-process daemon), a real HTTP server over an unindexed zstd fixture
 * datalake written by real Nix (3,000 files). The first mount's commit is held by reads
 * noted every 10 ms against a pause of 3 s (commitQuietMs), so the stop comes while it is
 * under way whatever the machine's speed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { NIX_ENV, run, withMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import type { MountConfig } from '../../src/config/mount-config.js';

describe('e2e: an unmount keeps the NAR whose commit it ended; the next mount reads it back', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let cacheRoot: string;

  before(async () => {
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    cacheRoot = await mkdtemp(join(tmpdir(), 'narfs-pending-e2e-'));
  });
  afterEach(async () => {
    await rm(cacheRoot, { recursive: true, force: true });
  });

  it('keeps the verified NAR at the unmount, and the remount serves it without a datalake fetch; nix hash path = NarHash', async () => {
    const lake = fixtures.datalakes['zstd']!;
    const base = pathByRole(fixtures, 'many-files').storePath.slice('/nix/store/'.length);
    const narInfo = parseNarInfo(await readFile(join(lake.dir, `${base.slice(0, 32)}.narinfo`), 'utf8'));
    const want = formatHash(narInfo.narHash, 'nix32');
    const cacheDir = join(cacheRoot, 'cache');
    const server = await HttpDatalakeServer.start({ root: lake.dir });
    const hashPath = async (mnt: string) => {
      const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(mnt, base)], NIX_ENV);
      assert.equal(h.code, 0, `nix hash path ${base}: ${h.stderr}`);
      return `sha256:${h.stdout.trim()}`;
    };
    try {
      const held = { useIndexes: false, commitQuietMs: 3000, commitYieldMaxMs: 600_000 } as Partial<MountConfig>;
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir, extra: held }, async (m) => {
        const hold = setInterval(() => m.running.materialiser.noteRead(), 10);
        try {
          assert.equal(await hashPath(m.mnt), want);
          assert.equal(server.count(narInfo.url), 1);
        } finally {
          clearInterval(hold);
        }
        // The unmount (withMount's close) comes now, with the commit under way.
      });
      const kept = await readdir(join(cacheDir, 'pending'));
      assert.equal(kept.length, 1, 'the NAR is kept');
      assert.ok(kept[0]!.startsWith(`${base.slice(0, 32)}.${narInfo.narHash.digest.toString('hex')}.${narInfo.narSize}.`), kept[0]);

      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir, extra: { useIndexes: false } }, async (m) => {
        assert.deepEqual((await m.running.status()).narCache.kept, { nars: 1, bytes: narInfo.narSize }, 'narfs status shows the kept NAR');
        assert.equal(await hashPath(m.mnt), want);
        assert.equal(server.count(narInfo.url), 1, 'the NAR was not fetched again');
        assert.equal(m.running.materialiser.resumed, 1);
        const st = await m.running.status();
        assert.deepEqual([st.narCache.keptReads, st.narCache.keptRefused, st.narCache.fetches, st.narCache.kept], [1, 0, 0, { nars: 0, bytes: 0 }]);
        assert.equal(m.running.metrics.keptReadBytes.get(), narInfo.narSize);
        await m.waitForLog((l) => l.msg === 'materialised' && l.fields['path'] === base, 'the commit of the path');
        assert.deepEqual(await readdir(join(cacheDir, 'pending')), [], 'read back and removed');
        assert.deepEqual(m.logs.filter((l) => l.level === 'error' || l.level === 'warn').map((l) => l.msg), []);
      });
      // Committed whole now: a third mount serves it from blobs, nothing kept, nothing fetched.
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir, extra: { useIndexes: false } }, async (m) => {
        assert.equal(await hashPath(m.mnt), want);
        assert.equal(m.running.materialiser.resumed, 0);
        assert.equal(m.running.materialiser.fetches, 0);
      });
      assert.equal(server.count(narInfo.url), 1);
    } finally {
      await server.close();
    }
  });
});
