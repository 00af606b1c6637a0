/**
 * End to end on a real FUSE mount: for every store path of every fixture datalake, real
 * Nix's `nix hash path` over the mounted path equals the narinfo's NarHash, and
 * `diff -r` against the same path in the local Nix store shows nothing.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run, withMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

describe('e2e: every fixture store path through a real mount', function () {
  this.timeout(30 * 60_000);
  let fixtures: Fixtures;

  before(async () => {
    fixtures = await loadFixtures();
  });

  it('serves byte-exact store paths from every datalake (nix hash path, diff -r)', async () => {
    const signed = Object.entries(fixtures.datalakes).filter(([, d]) => d.signedBy === 'narfs-fixture-1');
    assert.ok(signed.length >= 12, `expected a datalake per compression with and without .ls, got ${signed.length}`);
    for (const [name, lake] of signed) {
      await withMount({ datalakes: [`file://${lake.dir}`], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        for (const p of fixtures.paths) {
          const base = storePathBase(parseStorePath(p.storePath));
          const hashPart = base.slice(0, 32);
          const ni = parseNarInfo(await readFile(join(lake.dir, `${hashPart}.narinfo`), 'utf8'));
          const mounted = join(m.mnt, base);
          const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', mounted], NIX_ENV);
          assert.equal(h.code, 0, `${name}: nix hash path ${base} failed: ${h.stderr}`);
          assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'), `${name}: NarHash of ${base}`);
          const d = await run('diff', ['-r', '--no-dereference', mounted, p.storePath]);
          assert.equal(d.code, 0, `${name}: diff -r ${base}: ${d.stdout}${d.stderr}`);
        }
        const errors = m.logs.filter((l) => l.level === 'error');
        assert.deepEqual(errors, [], `${name}: no error lines`);
      });
    }
  });
});
