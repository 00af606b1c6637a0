/**
 * Faults on the s3:// path, and ranged reads.
 *
 * Against the real S3 engine (Swift's s3api, test/support/s3-engine.ts): wrong keys are
 * ERR_DATALAKE_AUTH at open() and on every call (never "absent"), a missing bucket is
 * ERR_NOT_BINARY_CACHE, profiles come from a credentials file, and getRange returns
 * exactly the bytes asked for.
 * Against HttpDatalakeServer posing as a path-style S3 endpoint (the bucket is its base
 * path; it can stall, fail and log headers on demand): endpoint down, stalled body, 500s
 * retried, unsigned requests, a 403 without an S3 code as absence, Range ignored by the server.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { S3Datalake } from '../../src/datalake/s3-datalake.js';
import { openDatalake } from '../../src/datalake/open-datalake.js';
import { isNarfsError, type NarfsError } from '../../src/errors.js';
import { skipOrFail } from '../support/environment.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { buildNixBinaryCache, haveNix, type NixBinaryCache } from '../support/nix-binary-cache.js';
import { S3Engine } from '../support/s3-engine.js';

async function rejectsWith(p: Promise<unknown>, code: string): Promise<NarfsError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isNarfsError(e), `expected a NarfsError, got ${inspect(e)}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  assert.fail(`expected rejection with ${code}`);
}

async function readStream(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

let cache: NixBinaryCache;
let home: string;
let hashParts: string[];
/** The largest NAR of the cache (many chunks, for stalls and ranges). */
let bigNar: string;

before(async function () {
  if (!(await haveNix())) skipOrFail(this, 'nix');
  cache = await buildNixBinaryCache();
  home = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-s3-home-'));
  hashParts = cache.storePaths.map((p) => path.basename(p).slice(0, 32));
  let best = -1;
  for (const url of cache.narUrls.values()) {
    const size = (await fsp.stat(path.join(cache.dir, url))).size;
    if (size > best) [best, bigNar] = [size, url];
  }
});
after(async function () {
  await cache?.cleanup();
  if (home) await fsp.rm(home, { recursive: true, force: true });
});

describe('S3Datalake against the real S3 engine (Swift s3api)', function () {
  let engine: S3Engine;
  const bucket = 'narfs-faults';

  before(async function () {
    if (!(await S3Engine.available())) skipOrFail(this, 'the S3 engine (python3-swift, s3cmd)');
    engine = await S3Engine.start();
    // Visible in the test log: how long the engine takes to start here.
    console.log(`      (S3 engine ready in ${engine.startMs} ms)`);
    await engine.populate(bucket, cache.dir);
  });
  after(async function () {
    await engine?.stop();
  });

  const lake = (env: Record<string, string>, params: Record<string, string> = {}, b = bucket) =>
    new S3Datalake(engine.url(b, '', params), { credentialSources: { env, homeDir: home }, attempts: 2, retryBaseMs: 20 });

  it('a wrong secret is ERR_DATALAKE_AUTH at open() and on every call, never absence', async function () {
    const d = lake({ AWS_ACCESS_KEY_ID: engine.accessKey, AWS_SECRET_ACCESS_KEY: 'not-the-secret-key' });
    try {
      const e = await rejectsWith(d.open(), 'ERR_DATALAKE_AUTH');
      assert.match(e.message, /SignatureDoesNotMatch/);
      assert.match(e.hint, /AWS_SECRET_ACCESS_KEY/);
      await rejectsWith(d.getBytes(`${hashParts[0]}.narinfo`), 'ERR_DATALAKE_AUTH');
      await rejectsWith(d.getBytes(`${'0'.repeat(32)}.narinfo`), 'ERR_DATALAKE_AUTH');
      await rejectsWith(d.getStream(bigNar), 'ERR_DATALAKE_AUTH');
      await rejectsWith(d.getRange(bigNar, 0, 10), 'ERR_DATALAKE_AUTH');
      const shown = inspect(e, { depth: 20 }) + d.displayUrl;
      assert.ok(!shown.includes('not-the-secret-key'), shown);
    } finally {
      await d.close();
    }
  });

  it('an unknown access key is ERR_DATALAKE_AUTH too, and the key id is not repeated', async function () {
    const d = lake({ AWS_ACCESS_KEY_ID: 'nobody:here', AWS_SECRET_ACCESS_KEY: 'whatever-secret' });
    try {
      const e = await rejectsWith(d.open(), 'ERR_DATALAKE_AUTH');
      const shown = inspect(e, { depth: 20 });
      assert.ok(!shown.includes('whatever-secret') && !shown.includes('nobody:here'), shown);
    } finally {
      await d.close();
    }
  });

  it('a missing bucket is ERR_NOT_BINARY_CACHE naming the bucket, not absence', async function () {
    const d = lake(engine.env(), {}, 'no-such-bucket');
    try {
      const e = await rejectsWith(d.open(), 'ERR_NOT_BINARY_CACHE');
      assert.match(e.message, /bucket 'no-such-bucket' does not exist/);
      // Later calls too: a vanished bucket is not "every path is absent".
      await rejectsWith(d.getBytes(`${hashParts[0]}.narinfo`), 'ERR_NOT_BINARY_CACHE');
    } finally {
      await d.close();
    }
  });

  it('keys come from a profile of a credentials file (profile= and AWS_PROFILE); a missing profile is ERR_DATALAKE_AUTH', async function () {
    const creds = path.join(home, 'creds');
    await fsp.writeFile(
      creds,
      `[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[narfs-test]\naws_access_key_id = ${engine.accessKey}\n` +
        `# a comment\naws_secret_access_key = ${engine.secretKey}\n`,
      { mode: 0o600 },
    );
    const env = { AWS_SHARED_CREDENTIALS_FILE: creds, AWS_CONFIG_FILE: path.join(home, 'nope') };
    for (const d of [lake(env, { profile: 'narfs-test' }), lake({ ...env, AWS_PROFILE: 'narfs-test' })]) {
      try {
        assert.equal((await d.open()).storeDir, '/nix/store');
        assert.match(await d.credentialSource(), /^profile narfs-test/);
      } finally {
        await d.close();
      }
    }
    const dflt = lake(env);
    try {
      await rejectsWith(dflt.open(), 'ERR_DATALAKE_AUTH'); // [default] has wrong keys
    } finally {
      await dflt.close();
    }
    const missing = lake(env, { profile: 'typo' });
    try {
      const e = await rejectsWith(missing.open(), 'ERR_DATALAKE_AUTH');
      assert.match(e.message, /typo/);
    } finally {
      await missing.close();
    }
  });

  it('getRange returns exactly the bytes asked for, clipped at the end; absent is undefined', async function () {
    const d = lake(engine.env());
    try {
      const whole = await fsp.readFile(path.join(cache.dir, bigNar));
      assert.ok(whole.length > 256 * 1024, `${bigNar} is ${whole.length} bytes`);
      for (const [off, len] of [[0, 1], [0, 4096], [1, 100], [200_000, 65_536], [whole.length - 10, 10], [whole.length - 5, 100]] as const) {
        const got = await d.getRange(bigNar, off, len);
        assert.ok(got, `range ${off}+${len}`);
        assert.deepEqual(got, whole.subarray(off, Math.min(off + len, whole.length)), `range ${off}+${len}`);
      }
      assert.equal((await d.getRange(bigNar, 5, 0))?.length, 0);
      await rejectsWith(d.getRange(bigNar, whole.length, 10), 'ERR_INVALID_ARGUMENT');
      assert.equal(await d.getRange(`nar/${'0'.repeat(52)}.nar.xz`, 0, 10), undefined);
      await rejectsWith(d.getRange('../x', 0, 10), 'ERR_INVALID_ARGUMENT');
    } finally {
      await d.close();
    }
  });

  it('open() through openDatalake reads the process environment, as the daemon does', async function () {
    const saved = { ...process.env };
    Object.assign(process.env, engine.env(), { AWS_SHARED_CREDENTIALS_FILE: path.join(home, 'nope'), AWS_CONFIG_FILE: path.join(home, 'nope') });
    const d = openDatalake(engine.url(bucket));
    try {
      assert.equal((await d.open()).priority, 50);
    } finally {
      await d.close();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });
});

describe('S3Datalake faults (HttpDatalakeServer as a path-style S3 endpoint)', function () {
  let server: HttpDatalakeServer;
  const env = { AWS_ACCESS_KEY_ID: 'AKIDTEST', AWS_SECRET_ACCESS_KEY: 'test-secret-value' };

  beforeEach(async function () {
    server = await HttpDatalakeServer.start({ root: cache.dir, basePath: '/bucket' });
  });
  afterEach(async function () {
    await server?.close();
  });

  const lake = (e: Record<string, string>, opts: ConstructorParameters<typeof S3Datalake>[1] = {}) =>
    new S3Datalake(`s3://bucket?endpoint=http://127.0.0.1:${server.port}`, { credentialSources: { env: e, homeDir: home }, retryBaseMs: 20, ...opts });

  it('signs every request (SigV4 Authorization, x-amz-date, content hash) with path-style addressing', async function () {
    const d = lake(env);
    try {
      await d.open();
      const h = server.requests.at(-1)!.headers;
      assert.match(String(h.authorization), /^AWS4-HMAC-SHA256 Credential=AKIDTEST\/\d{8}\/us-east-1\/s3\/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=[0-9a-f]{64}$/);
      assert.equal(h.host, `127.0.0.1:${server.port}`);
      assert.match(String(h['x-amz-date']), /^\d{8}T\d{6}Z$/);
      assert.equal(server.requests.at(-1)!.relPath, 'nix-cache-info');
    } finally {
      await d.close();
    }
  });

  it('without credentials, requests go unsigned, and a 403 (no S3 code) is absence, as in Nix', async function () {
    const d = lake({});
    try {
      assert.equal(await d.credentialSource(), 'none (unsigned requests)');
      await d.open();
      assert.equal(server.requests.at(-1)!.headers.authorization, undefined);
      server.status(`${hashParts[0]}.narinfo`, 403);
      assert.equal(await d.getBytes(`${hashParts[0]}.narinfo`), undefined);
      server.status('nix-cache-info', 403);
      const e = await rejectsWith(d.open(), 'ERR_NOT_BINARY_CACHE');
      assert.match(e.message, /unsigned/);
    } finally {
      await d.close();
    }
  });

  it('an endpoint that is down is ERR_DATALAKE_UNAVAILABLE, fast', async function () {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const d = new S3Datalake(`s3://bucket?endpoint=http://127.0.0.1:${port}`, { credentialSources: { env, homeDir: home }, retryBaseMs: 20 });
    const t0 = Date.now();
    try {
      await rejectsWith(d.open(), 'ERR_DATALAKE_UNAVAILABLE');
      assert.ok(Date.now() - t0 < 5_000, `took ${Date.now() - t0} ms`);
    } finally {
      await d.close();
    }
  });

  it('500s are retried; once the attempts are spent they are ERR_DATALAKE_UNAVAILABLE', async function () {
    const d = lake(env, { attempts: 3 });
    try {
      const rel = `${hashParts[0]}.narinfo`;
      server.failTimes(rel, 2, 500);
      assert.deepEqual(await d.getBytes(rel), await fsp.readFile(path.join(cache.dir, rel)));
      assert.equal(server.count(rel), 3);
      server.clear().status(rel, 503);
      await rejectsWith(d.getBytes(rel), 'ERR_DATALAKE_UNAVAILABLE');
      assert.equal(server.count(rel), 6);
      server.clear().failTimes(bigNar, 1, 500);
      const s = await d.getStream(bigNar);
      assert.deepEqual(await readStream(s!), await fsp.readFile(path.join(cache.dir, bigNar)));
    } finally {
      await d.close();
    }
  });

  it('a stalled body ends the stream with ERR_DATALAKE_TIMEOUT, and getBytes within its deadline', async function () {
    const d = lake(env, { bodyTimeoutMs: 1_000, smallFileTimeoutMs: 4_000, attempts: 1 });
    try {
      server.stallBody(bigNar, 70_000);
      const s = await d.getStream(bigNar);
      assert.ok(s);
      const err = await readStream(s).then(() => undefined, (e: unknown) => e);
      assert.ok(isNarfsError(err, 'ERR_DATALAKE_TIMEOUT'), inspect(err));
      const t0 = Date.now();
      const e = await d.getBytes(bigNar).then(() => undefined, (x: unknown) => x);
      assert.ok(isNarfsError(e) && (e.code === 'ERR_DATALAKE_TIMEOUT'), inspect(e));
      assert.ok(Date.now() - t0 < 8_000, `took ${Date.now() - t0} ms`);
    } finally {
      await d.close();
    }
  });

  it('a truncated body is ERR_DATALAKE_TRUNCATED on the stream', async function () {
    const d = lake(env, { attempts: 1 });
    try {
      server.truncate(bigNar, 50_000);
      const s = await d.getStream(bigNar);
      const err = await readStream(s!).then(() => undefined, (e: unknown) => e);
      assert.ok(isNarfsError(err, 'ERR_DATALAKE_TRUNCATED'), inspect(err));
    } finally {
      await d.close();
    }
  });

  it('getRange on a server that ignores Range (200) still returns exactly the slice', async function () {
    const d = lake(env);
    try {
      const whole = await fsp.readFile(path.join(cache.dir, bigNar));
      assert.deepEqual(await d.getRange(bigNar, 1000, 5000), whole.subarray(1000, 6000));
      assert.equal(server.requests.at(-1)!.headers.range, 'bytes=1000-5999');
      await rejectsWith(d.getRange(bigNar, whole.length + 1, 5), 'ERR_INVALID_ARGUMENT');
    } finally {
      await d.close();
    }
  });
});
