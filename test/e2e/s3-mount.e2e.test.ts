/**
 * End to end over s3://: a fixture datalake uploaded by a real S3 client (s3cmd) into a
 * real S3 engine (Swift's s3api, test/support/s3-engine.ts), mounted by narfs with keys from
 * an AWS credentials-file profile; for every fixture store path, real Nix's `nix hash path`
 * over the mounted path equals the narinfo's NarHash, and `diff -r` against the local store
 * is empty. Wrong keys make the mount fail with ERR_DATALAKE_AUTH in its causes, never
 * "path not found".
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run, withMount } from '../support/mount-harness.js';
import { skipOrFail } from '../support/environment.js';
import { S3Engine } from '../support/s3-engine.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

/** Runs `fn` with these variables in process.env (the in-process daemon reads them), then restores it. */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = new Map(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('e2e: every fixture store path through a real mount of an s3:// datalake', function () {
  this.timeout(30 * 60_000);
  let fixtures: Fixtures;
  let engine: S3Engine;
  let home: string;
  let awsEnv: Record<string, string>;
  /** Datalakes uploaded, each into its own bucket: with and without .ls listings. */
  const lakes = ['xz', 'zstd-nols'] as const;

  before(async function () {
    if (!(await S3Engine.available())) skipOrFail(this, 'the S3 engine (python3-swift, s3cmd)');
    fixtures = await loadFixtures();
    engine = await S3Engine.start();
    home = await mkdtemp(join(tmpdir(), 'narfs-s3-e2e-'));
    const creds = join(home, 'credentials');
    await writeFile(creds, `[narfs-e2e]\naws_access_key_id = ${engine.accessKey}\naws_secret_access_key = ${engine.secretKey}\n`, { mode: 0o600 });
    // No keys in the environment: they must come from the profile named in the URL.
    awsEnv = { AWS_SHARED_CREDENTIALS_FILE: creds, AWS_CONFIG_FILE: join(home, 'config'), AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_PROFILE: '' };
    for (const name of lakes) await engine.populate(`narfs-${name}`, fixtures.datalakes[name].dir);
  });
  after(async function () {
    await engine?.stop();
    if (home) await rm(home, { recursive: true, force: true });
  });

  it('serves byte-exact store paths (nix hash path, diff -r)', async function () {
    for (const name of lakes) {
      const lake = fixtures.datalakes[name];
      const url = engine.url(`narfs-${name}`, '', { profile: 'narfs-e2e' });
      await withEnv(awsEnv, () =>
        withMount({ datalakes: [url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
          for (const p of fixtures.paths) {
            const base = storePathBase(parseStorePath(p.storePath));
            const ni = parseNarInfo(await readFile(join(lake.dir, `${base.slice(0, 32)}.narinfo`), 'utf8'));
            const mounted = join(m.mnt, base);
            const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', mounted], NIX_ENV);
            assert.equal(h.code, 0, `${name}: nix hash path ${base} failed: ${h.stderr}`);
            assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'), `${name}: NarHash of ${base}`);
            const d = await run('diff', ['-r', '--no-dereference', mounted, p.storePath]);
            assert.equal(d.code, 0, `${name}: diff -r ${base}: ${d.stdout}${d.stderr}`);
          }
          assert.deepEqual(m.logs.filter((l) => l.level === 'error'), [], `${name}: no error lines`);
        }),
      );
    }
  });

  it('wrong keys fail the mount with ERR_DATALAKE_AUTH, not absence', async function () {
    const creds = join(home, 'wrong');
    await writeFile(creds, `[narfs-e2e]\naws_access_key_id = ${engine.accessKey}\naws_secret_access_key = wrong-secret\n`, { mode: 0o600 });
    const url = engine.url('narfs-xz', '', { profile: 'narfs-e2e' });
    const err = await withEnv({ ...awsEnv, AWS_SHARED_CREDENTIALS_FILE: creds }, () =>
      withMount({ datalakes: [url], trustedPublicKeys: fixtures.publicKey }, async () => 'mounted'),
    ).then((v) => v, (e: unknown) => e);
    assert.notEqual(err, 'mounted', 'the mount must not start with wrong keys');
    const shown = inspect(err, { depth: 20 });
    assert.match(shown, /ERR_DATALAKE_AUTH/);
    assert.match(shown, /SignatureDoesNotMatch/);
    assert.ok(!shown.includes('wrong-secret'), shown);
  });
});
