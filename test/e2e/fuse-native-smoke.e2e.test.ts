/**
 * Smoke test of the fallback FUSE backend (`fuse-native`, libfuse 2): the e2e suite runs
 * on the native engine by default; this keeps the fallback honest on a few paths — real
 * Nix's `nix hash path` over the mount equals the narinfo's NarHash, a write is EROFS, a
 * missing name ENOENT. NARFS_FUSE_BACKEND is set for this file only.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, probe, run, withMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

describe('e2e: fuse-native fallback backend (smoke)', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let saved: string | undefined;

  before(async () => {
    fixtures = await loadFixtures();
    saved = process.env['NARFS_FUSE_BACKEND'];
    process.env['NARFS_FUSE_BACKEND'] = 'fuse-native';
  });
  after(() => {
    if (saved === undefined) delete process.env['NARFS_FUSE_BACKEND'];
    else process.env['NARFS_FUSE_BACKEND'] = saved;
  });

  it('serves store paths byte-exact, refuses writes, and says ENOENT', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      assert.equal(m.running.engine.backend, 'fuse-native');
      for (const p of fixtures.paths.slice(0, 4)) {
        const sp = parseStorePath(p.storePath);
        const ni = parseNarInfo(await readFile(join(lake.dir, `${sp.hashPart}.narinfo`), 'utf8'));
        const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(m.mnt, storePathBase(sp))], NIX_ENV);
        assert.equal(h.code, 0, h.stderr);
        assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'));
      }
      const first = storePathBase(parseStorePath(fixtures.largeFile.storePath)); // a directory
      assert.equal((await probe('write', join(m.mnt, first, 'new'))).code, 'EROFS');
      assert.equal((await probe('stat', join(m.mnt, first, 'no-such-name'))).code, 'ENOENT');
    });
  });
});
