/**
 * HttpDatalake on the authenticated HTTPS path, against a real node:https server with a CA
 * made in the test (openssl): TLS with an unknown CA, netrc and bearer token files accepted,
 * wrong, missing, expired and rotated tokens (401/403), tokens scoped to a host and never
 * sent to another origin on a redirect, endpoint down, stalled body, 500s, unreadable
 * files, and no secret in any error.
 */
import { skipOrFail } from '../support/environment.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { HttpDatalake, type HttpDatalakeOptions } from '../../src/datalake/http-datalake.js';
import { isNarfsError, type NarfsError } from '../../src/errors.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { buildNixBinaryCache, haveNix, type NixBinaryCache } from '../support/nix-binary-cache.js';
import { haveOpenssl, makeTestCa, type TestCa } from '../support/test-ca.js';
import { failure } from '../support/failure.js';

const FAST: HttpDatalakeOptions = {
  connectTimeoutMs: 1000,
  headersTimeoutMs: 1000,
  bodyTimeoutMs: 1000,
  smallFileTimeoutMs: 5000,
  attempts: 3,
  retryBaseMs: 20,
  closeTimeoutMs: 500,
};

function drain(s: Readable): Promise<{ bytes: number; error: unknown }> {
  return new Promise((resolve) => {
    let bytes = 0;
    s.on('data', (c: Buffer) => (bytes += c.length));
    s.once('end', () => resolve({ bytes, error: undefined }));
    s.once('error', (error) => resolve({ bytes, error }));
  });
}

describe('HttpDatalake: authenticated HTTPS', function () {
  let cache: NixBinaryCache;
  let ca: TestCa;
  let otherCa: TestCa;
  let server: HttpDatalakeServer;
  let lakes: HttpDatalake[] = [];
  let narinfo: string;
  let nar: string;
  let token: string;
  let tokenFile: string;
  /** Every error seen in this suite: none may carry a secret. */
  const seen: unknown[] = [];
  const secrets: string[] = [];

  const lake = (options: HttpDatalakeOptions, url = server.url): HttpDatalake => {
    const d = new HttpDatalake(url, { ...FAST, sslCertFile: ca.caFile, ...options });
    lakes.push(d);
    return d;
  };
  const fails = async (p: Promise<unknown>, code: string) => {
    const e = await failure(p, code);
    seen.push(e);
    return e;
  };
  const write = (name: string, text: string) => {
    const f = path.join(ca.dir, name);
    return fsp.writeFile(f, text, { mode: 0o600 }).then(() => f);
  };

  before(async function () {
    if (!(await haveNix())) skipOrFail(this, 'nix');
    if (!(await haveOpenssl())) skipOrFail(this, 'openssl');
    cache = await buildNixBinaryCache();
    ca = await makeTestCa('narfs-test-ca');
    otherCa = await makeTestCa('narfs-other-ca');
    const tree = cache.storePaths.find((p) => p.endsWith('-narfs-datalake-tree'))!;
    const hash = path.basename(tree).slice(0, 32);
    narinfo = `${hash}.narinfo`;
    nar = cache.narUrls.get(hash)!;
    token = `tok-${randomBytes(16).toString('hex')}`;
    secrets.push(token);
    tokenFile = await write('token', `${token}\n`);
  });
  after(async function () {
    await cache?.cleanup();
    await ca?.cleanup();
    await otherCa?.cleanup();
  });
  beforeEach(async function () {
    server = await HttpDatalakeServer.start({ root: cache.dir, tls: { key: ca.key, cert: ca.cert } });
  });
  afterEach(async function () {
    await Promise.all(lakes.map((d) => d.close()));
    lakes = [];
    await server.close();
  });

  describe('TLS', function () {
    it('a server whose CA is not trusted is ERR_DATALAKE_TLS, at once and not retried', async function () {
      const t0 = Date.now();
      // A retry would first sleep at least 5 s (half of retryBaseMs), well within the deadline.
      const slowRetry = { ...FAST, attempts: 5, retryBaseMs: 10_000, smallFileTimeoutMs: 60_000 };
      const e = await fails(new HttpDatalake(server.url, slowRetry).open(), 'ERR_DATALAKE_TLS');
      assert.ok(Date.now() - t0 < 4000, 'no backoff: a TLS failure is not retried');
      assert.match(e.hint, /--ssl-cert-file/);
      await fails(lake({ sslCertFile: otherCa.caFile }).open(), 'ERR_DATALAKE_TLS');
      assert.equal(server.count('*'), 0, 'no request got through');
    });

    it('with --ssl-cert-file naming the CA, the same server is served', async function () {
      const d = lake({});
      assert.deepEqual(await d.open(), { storeDir: '/nix/store', wantMassQuery: false, priority: 50 });
      assert.deepEqual(await d.getBytes(narinfo), await fsp.readFile(path.join(cache.dir, narinfo)));
    });

    it('a missing or non-PEM CA bundle is ERR_DATALAKE_FILE naming the file', async function () {
      const e = await fails(lake({ sslCertFile: path.join(ca.dir, 'nope.pem') }).open(), 'ERR_DATALAKE_FILE');
      assert.match(e.message, /nope\.pem/);
      await fails(lake({ sslCertFile: tokenFile }).getBytes(narinfo), 'ERR_DATALAKE_FILE');
    });
  });

  describe('bearer token files', function () {
    it('the token is sent as Authorization: Bearer, trimmed', async function () {
      server.requireBearer(token);
      const d = lake({ bearerTokenFiles: [{ file: tokenFile }] });
      await d.open();
      assert.ok(await d.getBytes(narinfo));
      assert.ok(server.requests.every((r) => r.headers.authorization === `Bearer ${token}`));
    });

    it('no token, or a wrong one: 401 is ERR_DATALAKE_AUTH for narinfos and NARs, never absence', async function () {
      server.requireBearer(token);
      const none = await fails(lake({}).getBytes(narinfo), 'ERR_DATALAKE_AUTH');
      assert.equal(none.details?.credentials, 'none');
      assert.match(none.hint, /--netrc-file, --bearer-token-file or the S3 keys/);
      const wrongFile = await write('wrong-token', 'not-the-token\n');
      const wrong = lake({ bearerTokenFiles: [{ file: wrongFile }] });
      const e = await fails(wrong.getBytes(narinfo), 'ERR_DATALAKE_AUTH');
      assert.equal(e.details?.credentials, 'configured');
      await fails(wrong.getStream(nar), 'ERR_DATALAKE_AUTH');
      await fails(wrong.open(), 'ERR_DATALAKE_AUTH');
    });

    it('an expired token answered 403: open() is ERR_DATALAKE_AUTH; a narinfo 403 stays absent as in Nix', async function () {
      server.requireBearer('the-new-token', 403);
      const d = lake({ bearerTokenFiles: [{ file: tokenFile }] });
      const e = await fails(d.open(), 'ERR_DATALAKE_AUTH');
      assert.equal(e.details?.status, 403);
      assert.equal(await d.getBytes(narinfo), undefined);
      // Without credentials, a 403 on nix-cache-info is what it always was: no binary cache.
      await fails(lake({}).open(), 'ERR_NOT_BINARY_CACHE');
    });

    it('a rotated token file is read again after a 401: one failed request, then served', async function () {
      const rotating = await write('rotating-token', 'token-one\n');
      server.requireBearer('token-one');
      const d = lake({ bearerTokenFiles: [{ file: rotating }] });
      await d.open();
      server.requireBearer('token-two');
      await fsp.writeFile(rotating, 'token-two\n');
      const before = server.count(narinfo);
      assert.ok(await d.getBytes(narinfo));
      assert.equal(server.count(narinfo) - before, 2, 'a 401, then the retry with the new token');
      // Unchanged file: the 401 is final after one re-read, not retried.
      server.requireBearer('token-three');
      const n = server.count(narinfo);
      await fails(d.getBytes(narinfo), 'ERR_DATALAKE_AUTH');
      assert.equal(server.count(narinfo) - n, 1);
    });

    it('a token scoped to another host is not sent; one scoped to this host:port is', async function () {
      server.requireBearer(token);
      const port = new URL(server.url).port;
      await fails(lake({ bearerTokenFiles: [{ host: 'localhost', file: tokenFile }] }).getBytes(narinfo), 'ERR_DATALAKE_AUTH');
      assert.equal(server.requests.at(-1)?.headers.authorization, undefined);
      assert.ok(await lake({ bearerTokenFiles: [{ host: `127.0.0.1:${port}`, file: tokenFile }] }).getBytes(narinfo));
      assert.ok(await lake({ bearerTokenFiles: [{ host: `localhost`, file: tokenFile }] }, server.url.replace('127.0.0.1', 'localhost')).getBytes(narinfo));
    });

    it('an empty, unreadable or multi-token file is ERR_DATALAKE_FILE, never its contents', async function () {
      const empty = await write('empty-token', ' \n');
      await fails(lake({ bearerTokenFiles: [{ file: empty }] }).open(), 'ERR_DATALAKE_FILE');
      await fails(lake({ bearerTokenFiles: [{ file: path.join(ca.dir, 'missing-token') }] }).getBytes(narinfo), 'ERR_DATALAKE_FILE');
      const two = await write('two-tokens', `${token}\nsecond-${token}\n`);
      const e = await fails(lake({ bearerTokenFiles: [{ file: two }] }).open(), 'ERR_DATALAKE_FILE');
      assert.ok(!inspect(e, { depth: 20 }).includes(token));
    });

    it('never reaches another origin on a redirect', async function () {
      // A plain-HTTP front that redirects every request to the real datalake on another
      // port: the token is for the front (scoped to it), the redirect target must not see it.
      const target = await HttpDatalakeServer.start({ root: cache.dir });
      const front = http.createServer((req, res) => {
        res.writeHead(302, { location: `${target.url}${req.url ?? '/'}` }).end();
      });
      await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
      try {
        const frontUrl = `http://127.0.0.1:${(front.address() as AddressInfo).port}`;
        const d = lake({ bearerTokenFiles: [{ file: tokenFile }] }, frontUrl);
        await d.open();
        assert.deepEqual(await d.getBytes(narinfo), await fsp.readFile(path.join(cache.dir, narinfo)));
        assert.ok(target.count('*') >= 2);
        for (const r of target.requests) assert.equal(r.headers.authorization, undefined, `${r.relPath} got credentials`);
      } finally {
        front.closeAllConnections();
        await new Promise<void>((r) => front.close(() => r()));
        await target.close();
      }
    });
  });

  describe('netrc files', function () {
    let basicServer: HttpDatalakeServer;
    const password = `pw ${randomBytes(8).toString('hex')}`;
    beforeEach(async function () {
      secrets.push(password);
      basicServer = await HttpDatalakeServer.start({
        root: cache.dir, tls: { key: ca.key, cert: ca.cert }, auth: { username: 'alice', password },
      });
    });
    afterEach(async function () {
      await basicServer.close();
    });

    it('the machine entry of the host is sent as Basic auth (quoted password with a space)', async function () {
      const netrc = await write('netrc', `machine other.example login bob password x\nmachine 127.0.0.1\n  login alice\n  password "${password}"\n`);
      const d = lake({ netrcFile: netrc }, basicServer.url);
      await d.open();
      assert.ok(await d.getStream(nar).then((s) => s && drain(s)));
      const expected = 'Basic ' + Buffer.from(`alice:${password}`).toString('base64');
      assert.ok(basicServer.requests.every((r) => r.headers.authorization === expected));
    });

    it('the default entry is used when no machine matches; none at all is ERR_DATALAKE_AUTH', async function () {
      const withDefault = await write('netrc-default', `machine other.example login bob password x\ndefault login alice password "${password}"\n`);
      assert.ok(await lake({ netrcFile: withDefault }, basicServer.url).getBytes(narinfo));
      const otherOnly = await write('netrc-other', 'machine other.example login bob password x\n');
      await fails(lake({ netrcFile: otherOnly }, basicServer.url).getBytes(narinfo), 'ERR_DATALAKE_AUTH');
    });

    it('credentials in the URL win over the netrc file', async function () {
      const netrc = await write('netrc-wrong', 'machine 127.0.0.1 login alice password wrong\n');
      const url = basicServer.url.replace('https://', `https://alice:${encodeURIComponent(password)}@`);
      assert.ok(await lake({ netrcFile: netrc }, url).getBytes(narinfo));
      await fails(lake({ netrcFile: netrc }, basicServer.url).getBytes(narinfo), 'ERR_DATALAKE_AUTH');
    });
  });

  describe('faults on the HTTPS path', function () {
    beforeEach(function () {
      server.requireBearer(token);
    });
    const authed = () => lake({ bearerTokenFiles: [{ file: tokenFile }] });

    it('endpoint down: ERR_DATALAKE_UNAVAILABLE', async function () {
      const d = authed();
      await d.open();
      await server.close();
      await fails(d.getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      await fails(d.getStream(nar), 'ERR_DATALAKE_UNAVAILABLE');
    });

    it('a stalled body: ERR_DATALAKE_TIMEOUT on the stream', async function () {
      server.stallBody(nar, 1024);
      const s = await authed().getStream(nar);
      assert.ok(s);
      const { bytes, error } = await drain(s);
      assert.equal(bytes, 1024);
      assert.ok(isNarfsError(error, 'ERR_DATALAKE_TIMEOUT'), inspect(error));
      seen.push(error);
    });

    it('500s: retried, then ERR_DATALAKE_UNAVAILABLE; a transient 500 heals', async function () {
      server.status(narinfo, 500);
      await fails(authed().getBytes(narinfo), 'ERR_DATALAKE_UNAVAILABLE');
      assert.equal(server.count(narinfo), 3);
      server.clear(narinfo).failTimes(narinfo, 2, 500);
      assert.ok(await authed().getBytes(narinfo));
    });
  });

  after(function () {
    assert.ok(seen.length >= 10, `the suite saw ${seen.length} errors`);
    for (const e of seen) {
      const text = inspect(e, { depth: 20 }) + JSON.stringify((e as NarfsError).details ?? {});
      for (const s of secrets) assert.ok(!text.includes(s), `a secret in: ${text}`);
    }
  });
});
