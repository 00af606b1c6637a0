/**
 * HttpDatalake and DatalakeSet against a real HTTP server that misbehaves on purpose
 * (test/support/http-datalake-server.ts): statuses, retries, stalls, truncation, aborts,
 * dead servers, credentials, and the set's fall-through and priority order.
 *
 * Deadlines are configured short here. undici's own header/body timers have ~1 s
 * resolution, so elapsed-time bounds allow SLACK_MS on top of the configured deadline.
 */
import { skipOrFail } from '../support/environment.js';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { DatalakeSet } from '../../src/datalake/datalake-set.js';
import { FileDatalake } from '../../src/datalake/file-datalake.js';
import { HttpDatalake, type HttpDatalakeOptions } from '../../src/datalake/http-datalake.js';
import { openDatalake } from '../../src/datalake/open-datalake.js';
import { isNarfsError, type NarfsError } from '../../src/errors.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { buildNixBinaryCache, haveNix, type NixBinaryCache } from '../support/nix-binary-cache.js';
import { failure } from '../support/failure.js';

const SLACK_MS = 1500;

/**
 * An abort or close must settle the call within this, measured from the abort, while the
 * deadlines it pre-empts are 10-20 s: far apart, so a loaded machine cannot blur them.
 */
const PROMPT_MS = 2000;

const FAST: HttpDatalakeOptions = {
  connectTimeoutMs: 500,
  headersTimeoutMs: 300,
  bodyTimeoutMs: 300,
  smallFileTimeoutMs: 1500,
  attempts: 3,
  retryBaseMs: 20,
  closeTimeoutMs: 500,
};

/** Reads a stream to its end or error; resolves with what happened. `onBytes` sees the running count. */
function drain(s: Readable, onBytes?: (bytes: number) => void): Promise<{ bytes: number; error: unknown }> {
  return new Promise((resolve) => {
    let bytes = 0;
    s.on('data', (c: Buffer) => {
      bytes += c.length;
      onBytes?.(bytes);
    });
    s.once('end', () => resolve({ bytes, error: undefined }));
    s.once('error', (error) => resolve({ bytes, error }));
  });
}

describe('HttpDatalake faults', function () {
  let cache: NixBinaryCache;
  let server: HttpDatalakeServer;
  let lakes: HttpDatalake[] = [];
  let narinfo: string;
  let bigNar: string;
  let bigNarSize: number;

  const lake = (options: HttpDatalakeOptions = FAST, url = server.url): HttpDatalake => {
    const d = new HttpDatalake(url, options);
    lakes.push(d);
    return d;
  };

  before(async function () {
    if (!(await haveNix())) skipOrFail(this, 'nix');
    cache = await buildNixBinaryCache();
    const tree = cache.storePaths.find((p) => p.endsWith('-narfs-datalake-tree'))!;
    const hash = path.basename(tree).slice(0, 32);
    narinfo = `${hash}.narinfo`;
    bigNar = cache.narUrls.get(hash)!;
    bigNarSize = (await fsp.stat(path.join(cache.dir, bigNar))).size;
    assert.ok(bigNarSize > 256 * 1024, 'the fixture NAR must span many chunks');
  });
  after(async function () {
    await cache?.cleanup();
  });
  beforeEach(async function () {
    server = await HttpDatalakeServer.start({ root: cache.dir });
  });
  afterEach(async function () {
    await Promise.all(lakes.map((d) => d.close()));
    lakes = [];
    await server.close();
  });

  describe('statuses and retries', function () {
    it('404 is absence: undefined, asked once', async function () {
      server.status(narinfo, 404);
      assert.equal(await lake().getBytes(narinfo), undefined);
      assert.equal(await lake().getStream(narinfo), undefined);
      assert.equal(server.count(narinfo), 2);
    });

    it('403 is absence too (S3 answers 403 for missing keys)', async function () {
      server.status(narinfo, 403);
      assert.equal(await lake().getBytes(narinfo), undefined);
      assert.equal(server.count(narinfo), 1);
    });

    it('500 is retried, then ERR_DATALAKE_UNAVAILABLE carrying the status', async function () {
      server.status(narinfo, 500);
      const err = await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      assert.equal(err.details?.status, 500);
      assert.equal(server.count(narinfo), 3);
      await failure(lake().getStream(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      assert.equal(server.count(narinfo), 6);
    });

    it('failTimes(2) succeeds on the third attempt', async function () {
      server.failTimes(narinfo, 2, 503);
      const got = await lake().getBytes(narinfo);
      assert.deepEqual(got, await fsp.readFile(path.join(cache.dir, narinfo)));
      assert.equal(server.count(narinfo), 3);
      server.clear().failTimes(bigNar, 2, 502);
      const s = await lake().getStream(bigNar);
      assert.ok(s);
      assert.equal((await drain(s)).bytes, bigNarSize);
    });

    it('429 honours Retry-After, and fails at once when it lies beyond the deadline', async function () {
      server.failTimes(narinfo, 1, 429, { retryAfter: 1 });
      const t0 = Date.now();
      assert.ok(await lake({ ...FAST, smallFileTimeoutMs: 5000 }).getBytes(narinfo));
      assert.ok(Date.now() - t0 >= 950, `waited only ${Date.now() - t0} ms`);
      server.clear().failTimes(narinfo, 1, 429, { retryAfter: 60 });
      const t1 = Date.now();
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      assert.ok(Date.now() - t1 < SLACK_MS, `took ${Date.now() - t1} ms`);
    });

    it('other 4xx is ERR_DATALAKE_HTTP, not retried', async function () {
      server.status(narinfo, 400);
      const err = await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_HTTP');
      assert.equal(err.details?.status, 400);
      assert.equal(server.count(narinfo), 1);
    });

    it('Content-Encoding: gzip/br small files are decoded; others and encoded NARs refused', async function () {
      const plain = await fsp.readFile(path.join(cache.dir, narinfo));
      server.transform(narinfo, (b) => gzipSync(b)).header(narinfo, 'Content-Encoding', 'gzip');
      assert.deepEqual(await lake().getBytes(narinfo), plain);
      server.clear().transform(narinfo, (b) => brotliCompressSync(b)).header(narinfo, 'Content-Encoding', 'br');
      assert.deepEqual(await lake().getBytes(narinfo), plain);
      server.clear().header(narinfo, 'Content-Encoding', 'xz');
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_HTTP');
      server.clear().header(narinfo, 'Content-Encoding', 'gzip'); // claims gzip, is not
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_HTTP');
      server.clear().header(bigNar, 'Content-Encoding', 'gzip');
      await failure(lake().getStream(bigNar), 'ERR_DATALAKE_HTTP');
    });

    it('a server without nix-cache-info is not a binary cache', async function () {
      server.status('nix-cache-info', 404);
      await failure(lake().open(), 'ERR_NOT_BINARY_CACHE');
    });
  });

  describe('deadlines', function () {
    it('stalled headers: getBytes fails with ERR_DATALAKE_TIMEOUT within its deadline', async function () {
      server.stallHeaders(narinfo);
      const t0 = Date.now();
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_TIMEOUT');
      const ms = Date.now() - t0;
      assert.ok(ms < FAST.smallFileTimeoutMs! + SLACK_MS, `took ${ms} ms`);
    });

    it('stalled headers: getStream fails with ERR_DATALAKE_TIMEOUT after its attempts', async function () {
      server.stallHeaders(bigNar);
      const t0 = Date.now();
      await failure(lake({ ...FAST, attempts: 1 }).getStream(bigNar), 'ERR_DATALAKE_TIMEOUT');
      const ms = Date.now() - t0;
      assert.ok(ms < FAST.headersTimeoutMs! + SLACK_MS, `took ${ms} ms`);
      assert.equal(server.count(bigNar), 1);
    });

    it('a body stalled mid-way errors the stream with ERR_DATALAKE_TIMEOUT', async function () {
      server.stallBody(bigNar, 100_000);
      const s = await lake().getStream(bigNar);
      assert.ok(s);
      const t0 = Date.now();
      const { bytes, error } = await drain(s);
      const ms = Date.now() - t0;
      assert.ok(isNarfsError(error, 'ERR_DATALAKE_TIMEOUT'), inspect(error));
      assert.equal(bytes, 100_000);
      assert.ok(ms < FAST.bodyTimeoutMs! + SLACK_MS, `took ${ms} ms`);
    });

    it('a small body stalled mid-way: getBytes retries within its overall deadline', async function () {
      server.stallBody(narinfo, 10);
      const t0 = Date.now();
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_TIMEOUT');
      assert.ok(Date.now() - t0 < FAST.smallFileTimeoutMs! + SLACK_MS, `took ${Date.now() - t0} ms`);
    });
  });

  describe('truncation', function () {
    it('a stream shorter than Content-Length ends in ERR_DATALAKE_TRUNCATED', async function () {
      server.truncate(bigNar, 150_000);
      const s = await lake().getStream(bigNar);
      assert.ok(s);
      const { bytes, error } = await drain(s);
      assert.ok(isNarfsError(error, 'ERR_DATALAKE_TRUNCATED'), inspect(error));
      assert.equal(bytes, 150_000);
      assert.equal(server.count(bigNar), 1, 'getStream does not retry once the body is the caller’s');
    });

    it('a truncated small file is retried, then ERR_DATALAKE_TRUNCATED', async function () {
      server.truncate(narinfo, 20);
      await failure(lake().getBytes(narinfo), 'ERR_DATALAKE_TRUNCATED');
      assert.equal(server.count(narinfo), 3);
    });
  });

  describe('aborts, dead servers, close', function () {
    it('the caller’s signal aborts a stalled getBytes promptly with ERR_ABORTED', async function () {
      server.stallHeaders(narinfo);
      const ac = new AbortController();
      const call = failure(lake({ ...FAST, headersTimeoutMs: 10_000, smallFileTimeoutMs: 20_000 }).getBytes(narinfo, { signal: ac.signal }), 'ERR_ABORTED');
      await server.waitForRequest(narinfo); // the server holds it: the call is stalled
      const t0 = Date.now();
      ac.abort();
      await call;
      assert.ok(Date.now() - t0 < PROMPT_MS, `took ${Date.now() - t0} ms`);
    });

    it('the caller’s signal aborts a stalled getStream (headers, then body) promptly', async function () {
      const slow = { ...FAST, headersTimeoutMs: 10_000, bodyTimeoutMs: 10_000 };
      server.stallHeaders(bigNar);
      const ac = new AbortController();
      const call = failure(lake(slow).getStream(bigNar, { signal: ac.signal }), 'ERR_ABORTED');
      await server.waitForRequest(bigNar); // held without headers
      let t0 = Date.now();
      ac.abort();
      await call;
      assert.ok(Date.now() - t0 < PROMPT_MS, `took ${Date.now() - t0} ms`);

      server.clear().stallBody(bigNar, 1000);
      const ac2 = new AbortController();
      const s = await lake(slow).getStream(bigNar, { signal: ac2.signal });
      assert.ok(s);
      // Abort once the 1000 bytes the server sends have arrived: the body is stalled then.
      let stalled!: () => void;
      const got1000 = new Promise<void>((r) => (stalled = r));
      const done = drain(s, (bytes) => {
        if (bytes >= 1000) stalled();
      });
      await got1000;
      t0 = Date.now();
      ac2.abort();
      const { bytes, error } = await done;
      assert.ok(isNarfsError(error, 'ERR_ABORTED'), inspect(error));
      assert.equal(bytes, 1000);
      assert.ok(Date.now() - t0 < PROMPT_MS, `took ${Date.now() - t0} ms`);
    });

    it('a dead server (port closed) is ERR_DATALAKE_UNAVAILABLE, fast', async function () {
      const url = server.url;
      await server.close();
      const t0 = Date.now();
      await failure(lake(FAST, url).getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      await failure(lake(FAST, url).getStream(bigNar), 'ERR_DATALAKE_UNAVAILABLE');
      await failure(lake(FAST, url).open(), 'ERR_DATALAKE_UNAVAILABLE');
      assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
    });

    it('close() fails in-flight calls with ERR_ABORTED and returns promptly', async function () {
      server.stallHeaders(narinfo).stallBody(bigNar, 1000);
      const d = lake({ ...FAST, headersTimeoutMs: 10_000, bodyTimeoutMs: 10_000, smallFileTimeoutMs: 20_000 });
      const s = await d.getStream(bigNar);
      assert.ok(s);
      let bodyStalled!: () => void;
      const got1000 = new Promise<void>((r) => (bodyStalled = r));
      const streamDone = drain(s, (bytes) => {
        if (bytes >= 1000) bodyStalled();
      });
      const pending = failure(d.getBytes(narinfo), 'ERR_ABORTED');
      // Close while both are in flight: the narinfo held by the server, the body stalled.
      await Promise.all([server.waitForRequest(narinfo), got1000]);
      const t0 = Date.now();
      await d.close();
      await pending;
      const { error } = await streamDone;
      assert.ok(isNarfsError(error, 'ERR_ABORTED'), inspect(error));
      assert.ok(Date.now() - t0 < PROMPT_MS, `took ${Date.now() - t0} ms`);
    });
  });

  describe('credentials', function () {
    const secret = 'Sup3r-s3cret';
    let authServer: HttpDatalakeServer;
    beforeEach(async function () {
      authServer = await HttpDatalakeServer.start({ root: cache.dir, auth: { username: 'alice', password: secret } });
    });
    afterEach(async function () {
      await authServer.close();
    });
    const withCreds = (base: string, pass: string) => base.replace('http://', `http://alice:${pass}@`);

    it('are sent as Basic auth and never shown', async function () {
      const d = lake(FAST, withCreds(authServer.url, secret));
      assert.equal(d.displayUrl, authServer.url);
      assert.ok(await d.open());
      assert.match(String(authServer.requests[0]?.headers.authorization), /^Basic /);
    });

    it('appear in no message, detail or cause of any failure', async function () {
      const errors: unknown[] = [];
      const bad = lake(FAST, withCreds(authServer.url, 'wrong-' + secret));
      errors.push(await failure(bad.getBytes(narinfo), 'ERR_DATALAKE_AUTH')); // 401
      authServer.status(narinfo, 500);
      errors.push(await failure(lake(FAST, withCreds(authServer.url, secret)).getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE'));
      const deadUrl = withCreds(authServer.url, secret);
      await authServer.close();
      errors.push(await failure(lake(FAST, deadUrl).getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE'));
      for (const u of ['ftp://alice:' + secret + '@h/x', 'http://alice:' + secret + '@[::1']) {
        try {
          openDatalake(u);
          assert.fail('accepted ' + u);
        } catch (e) {
          errors.push(e);
        }
      }
      for (const e of errors) {
        const text = inspect(e, { depth: 20 }) + JSON.stringify((e as NarfsError).details ?? {});
        assert.ok(!text.includes(secret), text);
        assert.ok(!text.includes('alice'), text);
      }
    });
  });

  describe('the fault server itself', function () {
    it('transform rewrites bodies; latency and bandwidth are modelled', async function () {
      server.transform(narinfo, (b) => Buffer.from(b.toString().replace('StorePath', 'Xtorepath')));
      assert.match(String(await lake().getBytes(narinfo)), /^Xtorepath/);
      server.link({ latencyMs: 150, bytesPerSecond: 1_000_000 });
      const t0 = Date.now();
      const s = await lake({ ...FAST, smallFileTimeoutMs: 5000 }).getStream(bigNar);
      assert.ok(s);
      assert.equal((await drain(s)).bytes, bigNarSize);
      const ms = Date.now() - t0;
      assert.ok(ms >= 150 + (bigNarSize / 1_000_000) * 1000 * 0.8, `took only ${ms} ms`);
    });
  });
});

describe('DatalakeSet', function () {
  let cache: NixBinaryCache;
  let empty: string;
  let servers: HttpDatalakeServer[] = [];
  let sets: DatalakeSet[] = [];
  let narinfo: string;

  const serve = async (root: string) => {
    const s = await HttpDatalakeServer.start({ root });
    servers.push(s);
    return s;
  };
  const track = (set: DatalakeSet) => (sets.push(set), set);

  before(async function () {
    if (!(await haveNix())) skipOrFail(this, 'nix');
    cache = await buildNixBinaryCache();
    narinfo = path.basename(cache.storePaths[0]!).slice(0, 32) + '.narinfo';
    empty = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-empty-lake-'));
    await fsp.writeFile(path.join(empty, 'nix-cache-info'), 'StoreDir: /nix/store\n');
  });
  after(async function () {
    await cache?.cleanup();
    if (empty) await fsp.rm(empty, { recursive: true, force: true });
  });
  afterEach(async function () {
    await Promise.all(sets.map((s) => s.close()));
    await Promise.all(servers.map((s) => s.close()));
    sets = [];
    servers = [];
  });

  it('falls through from a failing datalake to a working one', async function () {
    const failing = await serve(cache.dir);
    const working = await serve(cache.dir);
    const set = track(DatalakeSet.fromUrls([failing.url, working.url], FAST));
    await set.open();
    failing.status('*', 500);
    const found = await set.getBytes(narinfo);
    assert.ok(found);
    assert.equal(found.datalake.displayUrl, working.url);
    assert.equal(failing.count(narinfo), 3);
    const nar = await set.getBytesFrom(found.datalake, cache.narUrls.get(narinfo.slice(0, 32))!);
    assert.ok(nar && nar.length > 0);
  });

  it('asks in Priority order (lower first); ties keep the given order', async function () {
    const a = await serve(cache.dir);
    const b = await serve(cache.dir);
    const c = await serve(cache.dir);
    b.transform('nix-cache-info', (buf) => Buffer.from(buf.toString() + 'Priority: 10\n'));
    const set = track(DatalakeSet.fromUrls([a.url, b.url, c.url, `${c.url}?priority=5`], FAST));
    await set.open();
    assert.deepEqual(
      set.datalakes.map((d) => d.displayUrl),
      [c.url, b.url, a.url, c.url],
    );
    const found = await set.getBytes(narinfo);
    assert.equal(found?.datalake, set.datalakes[0]);
  });

  it('absent everywhere ⇒ undefined; absent or failing ⇒ ERR_DATALAKE_UNAVAILABLE', async function () {
    const a = await serve(cache.dir);
    const set = track(new DatalakeSet([new FileDatalake(`file://${empty}`), new HttpDatalake(a.url, FAST)]));
    await set.open();
    assert.equal(await set.getBytes('0'.repeat(32) + '.narinfo'), undefined);
    a.status('*', 503);
    const err = await failure(set.getBytes('0'.repeat(32) + '.narinfo'), 'ERR_DATALAKE_UNAVAILABLE');
    assert.equal((err.details?.failures as unknown[]).length, 1);
    assert.ok(isNarfsError(err.cause, 'ERR_DATALAKE_UNAVAILABLE'));
    await failure(set.getStream('0'.repeat(32) + '.narinfo'), 'ERR_DATALAKE_UNAVAILABLE');
  });

  it('another StoreDir is ERR_CACHE_INFO naming the datalake', async function () {
    const a = await serve(cache.dir);
    a.transform('nix-cache-info', () => Buffer.from('StoreDir: /gnu/store\n'));
    const err = await failure(track(DatalakeSet.fromUrls([a.url])).open(), 'ERR_CACHE_INFO');
    assert.ok(err.message.includes(a.url), err.message);
    assert.ok(err.message.includes('/gnu/store'));
  });

  it('a datalake down at start is kept, logged, and used once it answers', async function () {
    const a = await serve(cache.dir);
    a.status('nix-cache-info', 503);
    const logged: string[] = [];
    const logger = { info: (m: string) => logged.push('info ' + m), warn: (m: string) => logged.push('warn ' + m) };
    const set = track(
      new DatalakeSet([new FileDatalake(`file://${empty}`), new HttpDatalake(a.url, FAST)], { logger, reopenAfterMs: 0 }),
    );
    await set.open();
    assert.deepEqual(set.status().map((s) => s.up), [true, false]);
    assert.ok(logged.some((l) => l.startsWith('warn datalake unreachable at start')), logged.join('\n'));
    // While it is down, absence cannot be concluded.
    await failure(set.getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
    a.clear();
    const found = await set.getBytes(narinfo);
    assert.equal(found?.datalake.displayUrl, a.url);
    assert.ok(logged.includes('info datalake is up again'));
  });

  it('a set where none opens is ERR_DATALAKE_UNAVAILABLE with every cause', async function () {
    const a = await serve(cache.dir);
    const b = await serve(cache.dir);
    const urls = [a.url, b.url];
    await a.close();
    b.stallHeaders('nix-cache-info');
    const err = await failure(track(DatalakeSet.fromUrls(urls, FAST)).open(), 'ERR_DATALAKE_UNAVAILABLE');
    assert.ok(err.cause instanceof AggregateError);
    assert.equal((err.details?.failures as unknown[]).length, 2);
  });

  it('the caller’s abort ends the walk at once', async function () {
    const a = await serve(cache.dir);
    const b = await serve(cache.dir);
    const set = track(DatalakeSet.fromUrls([a.url, b.url], { ...FAST, headersTimeoutMs: 10_000, smallFileTimeoutMs: 20_000 }));
    await set.open();
    a.stallHeaders(narinfo);
    const ac = new AbortController();
    const call = failure(set.getBytes(narinfo, { signal: ac.signal }), 'ERR_ABORTED');
    await a.waitForRequest(narinfo); // the first datalake holds it
    ac.abort();
    await call;
    assert.equal(b.count(narinfo), 0);
  });

  it('rejects unknown schemes with ERR_DATALAKE_URL, and knows s3://', function () {
    for (const u of ['ftp://host/x', '/plain/path', 'gopher:x']) {
      assert.throws(() => openDatalake(u), (e: unknown) => isNarfsError(e, 'ERR_DATALAKE_URL'));
    }
    assert.equal(openDatalake('s3://bucket?region=eu-west-1').displayUrl.startsWith('s3://bucket'), true);
  });
});
