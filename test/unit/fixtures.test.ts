// Sanity of the fixture datalakes (scripts/build-fixtures.sh) against real Nix: the
// manifest says what the datalakes hold, and Nix agrees.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import {
  FIXTURE_BUILD_TIMEOUT_MS,
  FIXTURE_DATALAKES,
  type FixtureRole,
  type Fixtures,
  hashPart,
  listingPath,
  loadFixtures,
  narInfoPath,
  nixEnv,
  pathByRole,
} from '../support/fixtures.js';

const run = promisify(execFile);

/** `Key: value` lines of a narinfo (first occurrence of each key). */
function narInfoFields(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(': ');
    if (i > 0 && !fields.has(line.slice(0, i))) fields.set(line.slice(0, i), line.slice(i + 2));
  }
  return fields;
}

describe('fixture datalakes (real Nix)', function () {
  let f: Fixtures;
  let cacheHome: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    f = await loadFixtures();
    cacheHome = await mkdtemp(join(tmpdir(), 'narfs-fixtures-test-'));
  });
  after(async function () {
    if (cacheHome) await rm(cacheHome, { recursive: true, force: true });
  });

  it('has every datalake and every role', function () {
    assert.deepEqual(Object.keys(f.datalakes).sort(), [...FIXTURE_DATALAKES].sort());
    const single: FixtureRole[] = [
      'single-file', 'single-exec', 'single-symlink', 'traps', 'byte-names', 'tree', 'self-ref',
      'many-files', 'large-file', 'multi-output', 'multi-output-doc', 'top',
    ];
    for (const role of single) assert.ok(pathByRole(f, role), role);
    assert.ok(f.paths.some((p) => p.role === 'drv' && p.storePath === f.topDrv));
    assert.ok(f.paths.some((p) => p.role === 'source'));
    assert.equal(pathByRole(f, 'top').storePath, f.top);
    const self = pathByRole(f, 'self-ref');
    assert.ok(self.references.includes(self.storePath), 'self-ref references itself');
    const outputs = f.paths.filter((p) => p.role !== 'drv' && p.role !== 'source' && p.role !== 'top');
    for (const o of outputs) assert.ok(pathByRole(f, 'top').references.includes(o.storePath), o.role);
    for (const o of [...outputs, pathByRole(f, 'top')]) assert.ok(o.deriver?.endsWith('.drv'), o.role);
  });

  it('puts every path in every datalake, as the manifest says', async function () {
    for (const [name, dl] of Object.entries(f.datalakes)) {
      assert.ok(existsSync(join(dl.dir, 'nix-cache-info')), `${name}/nix-cache-info`);
      for (const p of f.paths) {
        const info = narInfoFields(await readFile(narInfoPath(dl.dir, hashPart(p.storePath)), 'utf8'));
        assert.equal(info.get('StorePath'), p.storePath, `${name} ${p.storePath}`);
        assert.equal(info.get('NarHash'), p.narHash, `${name} ${p.storePath}`);
        assert.equal(Number(info.get('NarSize')), p.narSize, `${name} ${p.storePath}`);
        assert.equal(info.get('Compression'), dl.compression, `${name} ${p.storePath}`);
        assert.ok(existsSync(join(dl.dir, info.get('URL') ?? '-')), `${name} NAR of ${p.storePath}`);
        assert.equal(existsSync(listingPath(dl.dir, p.storePath)), dl.listing, `${name} .ls of ${p.storePath}`);
      }
    }
  });

  it('is readable by nix path-info', async function () {
    this.timeout(30_000);
    const { stdout } = await run(
      'nix',
      ['path-info', '--json', '--store', f.datalakes.xz.url, f.top, f.largeFile.storePath],
      { env: nixEnv(cacheHome) },
    );
    const infos = JSON.parse(stdout) as { path: string; narSize: number; references: string[] }[];
    assert.equal(infos.length, 2);
    for (const info of infos) {
      const p = f.paths.find((q) => q.storePath === info.path);
      assert.ok(p, info.path);
      assert.equal(info.narSize, p.narSize);
      assert.deepEqual([...info.references].sort(), p.references);
    }
  });

  it('verifies with the trusted key, and not other-key or unsigned', async function () {
    this.timeout(60_000);
    const all = f.paths.map((p) => p.storePath);
    const verify = (url: string, contents: boolean) =>
      run(
        'nix',
        ['store', 'verify', '--store', url, '--trusted-public-keys', f.publicKey,
          ...(contents ? [] : ['--no-contents']), ...all],
        { env: nixEnv(cacheHome), maxBuffer: 16 << 20 },
      );
    await verify(f.datalakes.xz.url, false);
    await verify(f.datalakes.zstd.url, true); // also re-hashes every NAR
    // Input-addressed outputs need a trusted signature (CA sources and .drv files don't).
    await assert.rejects(verify(f.datalakes['other-key'].url, false));
    await assert.rejects(verify(f.datalakes.unsigned.url, false));
  });
});
