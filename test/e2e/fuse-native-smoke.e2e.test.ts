/**
 * Smoke test of the fallback FUSE backend (`fuse-native`, libfuse 2): the e2e suite runs
 * on the native engine by default; this keeps the fallback honest on a few paths — real
 * Nix's `nix hash path` over the mount equals the narinfo's NarHash, a write is EROFS, a
 * missing name ENOENT. NARFS_FUSE_BACKEND is set for this file only.
 * The byte-names fixture (names and a symlink target that are not UTF-8) is not served by
 * this backend: its listing and the non-UTF-8 target answer EIO, logged as
 * ERR_NAME_NOT_UTF8; its UTF-8 names still work.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
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
      // byte-names cannot pass through a UTF-8 string binding: checked on its own below.
      for (const p of fixtures.paths.filter((x) => x.role !== 'byte-names').slice(0, 4)) {
        const sp = parseStorePath(p.storePath);
        const ni = parseNarInfo(await readFile(join(lake.dir, `${sp.hashPart}.narinfo`), 'utf8'));
        const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(m.mnt, storePathBase(sp))], NIX_ENV);
        assert.equal(h.code, 0, h.stderr);
        assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'));
      }
      const first = storePathBase(parseStorePath(fixtures.largeFile.storePath)); // a directory
      assert.equal((await probe('write', join(m.mnt, first, 'new'))).code, 'EROFS');
      assert.equal((await probe('stat', join(m.mnt, first, 'no-such-name'))).code, 'ENOENT');

      const bytes = join(m.mnt, storePathBase(parseStorePath(pathByRole(fixtures, 'byte-names').storePath)));
      assert.equal((await probe('readdir', bytes)).code, 'EIO', 'a listing with names that are not UTF-8');
      assert.equal((await probe('readlink', join(bytes, 'link'))).code, 'EIO', 'a target that is not UTF-8');
      assert.equal((await probe('read', join(bytes, 'caf\u00e9'))).code, undefined, 'a UTF-8 name in the same directory');
      const coded = m.logs.filter((l) => l.level === 'error' && JSON.stringify(l.fields).includes('ERR_NAME_NOT_UTF8'));
      assert.ok(coded.length >= 1, `ERR_NAME_NOT_UTF8 logged: ${m.logs.map((l) => `${l.level} ${l.msg} ${JSON.stringify(l.fields)}`).join(' | ')}`);
    });
  });
});
