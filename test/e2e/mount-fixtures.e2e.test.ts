/**
 * End to end on a real FUSE mount: for every store path of every fixture datalake, real
 * Nix's `nix hash path` over the mounted path equals the narinfo's NarHash, and
 * `diff -r` against the same path in the local Nix store shows nothing.
 *
 * One test per datalake, so one broken compression does not hide the others. The tests
 * are generated from FIXTURE_DATALAKES, the declared list of datalakes that
 * scripts/build-fixtures.sh writes (known when mocha collects tests, without building
 * anything); the first test checks that the manifest of the built fixtures names exactly
 * those datalakes as signed by the trusted key, so the list cannot drift from the build.
 * Missing fixtures fail the `before` hook (loadFixtures), never turn into zero tests.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_BUILD_TIMEOUT_MS, FIXTURE_DATALAKES, loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run, withMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

const TRUSTED_KEY_NAME = 'narfs-fixture-1';
/** Signed by a key the test does not trust, or not signed: a mount refuses their paths. */
const UNTRUSTED = new Set<string>(['other-key', 'unsigned']);
const SIGNED = FIXTURE_DATALAKES.filter((name) => !UNTRUSTED.has(name));

describe('e2e: every fixture store path through a real mount', function () {
  // Per test: one mount, `nix hash path` and `diff -r` of every fixture path (a 40 MiB
  // file among them) on a loaded 2-core machine.
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fixtures = await loadFixtures();
  });

  it('tests every datalake the fixture manifest signs with the trusted key', function () {
    assert.ok(SIGNED.length >= 12, `expected a datalake per compression with and without .ls, got ${SIGNED.length}`);
    const signedInManifest = Object.entries(fixtures.datalakes)
      .filter(([, d]) => d.signedBy === TRUSTED_KEY_NAME)
      .map(([name]) => name)
      .sort();
    assert.deepEqual(signedInManifest, [...SIGNED].sort());
  });

  for (const name of SIGNED) {
    it(`serves byte-exact store paths from the ${name} datalake (nix hash path, diff -r)`, async function () {
      const lake = fixtures.datalakes[name];
      assert.ok(lake, `the fixture manifest has no datalake ${name}`);
      assert.equal(lake.signedBy, TRUSTED_KEY_NAME);
      const problems: string[] = [];
      // The daemon runs in this process: a listener leak warning of its signals shows here
      // (many NARs committing at once once listened to one shared signal past its limit).
      const onWarning = (w: Error) => {
        if (w.name === 'MaxListenersExceededWarning') problems.push(`process warning: ${w.message}`);
      };
      process.on('warning', onWarning);
      try {
        await withMount({ datalakes: [`file://${lake.dir}`], trustedPublicKeys: fixtures.publicKey }, async (m) => {
          for (const p of fixtures.paths) {
            const base = storePathBase(parseStorePath(p.storePath));
            const hashPart = base.slice(0, 32);
            const ni = parseNarInfo(await readFile(join(lake.dir, `${hashPart}.narinfo`), 'utf8'));
            const mounted = join(m.mnt, base);
            const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', mounted], NIX_ENV);
            if (h.code !== 0) problems.push(`nix hash path ${base} failed: ${h.stderr.trim()}`);
            else if (`sha256:${h.stdout.trim()}` !== formatHash(ni.narHash, 'nix32')) {
              problems.push(`NarHash of ${base}: sha256:${h.stdout.trim()}, narinfo says ${formatHash(ni.narHash, 'nix32')}`);
            }
            const d = await run('diff', ['-r', '--no-dereference', mounted, p.storePath]);
            if (d.code !== 0) problems.push(`diff -r ${base}: ${d.stdout}${d.stderr}`.trim());
          }
          for (const l of m.logs.filter((x) => x.level === 'error')) problems.push(`error line: ${l.msg} ${JSON.stringify(l.fields)}`);
        });
      } finally {
        process.off('warning', onWarning);
      }
      assert.deepEqual(problems, [], `${name}: ${problems.length} problem(s)`);
    });
  }
});
