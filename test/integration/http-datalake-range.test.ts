/**
 * HttpDatalake.getRange against a real HTTP server on 127.0.0.1 (HttpDatalakeServer) with
 * faults: a 206 whose Content-Range is not the one asked for, a server that ignores Range
 * (200 with the whole body), 416, a stalled range (its deadline), a 5xx then success (the
 * retry), and the pool a range travels on: a ranged read never waits for a socket held by
 * a stalled NAR stream or by a stalled small-file read. Waits are on server events; the
 * only deadlines are the datalake's own.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HttpDatalake } from '../../src/datalake/http-datalake.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { failure } from '../support/failure.js';

describe('HttpDatalake.getRange', function () {
  let dir: string;
  let server: HttpDatalakeServer;
  let d: HttpDatalake | undefined;
  const NAR = 'nar/blob.nar';
  const SMALL = 'x.narinfo';
  const body = randomBytes(3 << 20);

  before(async function () {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-range-'));
    await fsp.mkdir(path.join(dir, 'nar'));
    await fsp.writeFile(path.join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\n');
    await fsp.writeFile(path.join(dir, NAR), body);
    await fsp.writeFile(path.join(dir, SMALL), 'StorePath: x\n');
  });
  beforeEach(async function () {
    server = await HttpDatalakeServer.start({ root: dir });
  });
  afterEach(async function () {
    await d?.close();
    d = undefined;
    await server.close();
  });
  after(async function () {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('sends one Range request and returns its 206 body', async function () {
    d = new HttpDatalake(server.url);
    assert.deepEqual(await d.getRange(NAR, 1000, 5000), body.subarray(1000, 6000));
    assert.equal(server.count(NAR), 1);
    assert.equal(server.requests.at(-1)!.headers.range, 'bytes=1000-5999');
  });

  it('a server that ignores Range (200, whole body) still gives the exact bytes', async function () {
    server.ignoreRange(NAR);
    d = new HttpDatalake(server.url);
    assert.deepEqual(await d.getRange(NAR, 0, 10), body.subarray(0, 10));
    assert.deepEqual(await d.getRange(NAR, 2_000_000, 12345), body.subarray(2_000_000, 2_012_345));
    assert.deepEqual(await d.getRange(NAR, body.length - 3, 100), body.subarray(body.length - 3));
    await failure(d.getRange(NAR, body.length, 1), 'ERR_INVALID_ARGUMENT');
  });

  it('a 206 with another Content-Range than asked for is ERR_DATALAKE_HTTP, never sliced', async function () {
    d = new HttpDatalake(server.url);
    server.header(NAR, 'Content-Range', `bytes 0-99/${body.length}`);
    await failure(d.getRange(NAR, 100, 100), 'ERR_DATALAKE_HTTP');
    server.header(NAR, 'Content-Range', `bytes 100-149/${body.length}`); // shorter, yet not at the end
    await failure(d.getRange(NAR, 100, 100), 'ERR_DATALAKE_HTTP');
    server.clear(NAR);
    assert.deepEqual(await d.getRange(NAR, 100, 100), body.subarray(100, 200));
  });

  it('an offset past the end is ERR_INVALID_ARGUMENT (416), not absence', async function () {
    d = new HttpDatalake(server.url);
    const err = await failure(d.getRange(NAR, body.length, 10), 'ERR_INVALID_ARGUMENT');
    assert.match(err.message, /past the end/);
    assert.equal(await d.getRange('nar/none.nar', 0, 10), undefined);
  });

  it('a stalled range hits its deadline (headers or body): ERR_DATALAKE_TIMEOUT', async function () {
    d = new HttpDatalake(server.url, { rangeTimeoutMs: 400, attempts: 1 });
    server.stallHeaders(NAR);
    const t0 = Date.now();
    await failure(d.getRange(NAR, 0, 100), 'ERR_DATALAKE_TIMEOUT');
    server.clear(NAR).stallBody(NAR, 10);
    await failure(d.getRange(NAR, 0, 100), 'ERR_DATALAKE_TIMEOUT');
    // Two deadlines of 400 ms; generous bound for a loaded machine, yet far below undici's 10 s.
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
  });

  it('a 503 is retried like getBytes', async function () {
    d = new HttpDatalake(server.url, { retryBaseMs: 1 });
    server.failTimes(NAR, 2, 503);
    assert.deepEqual(await d.getRange(NAR, 7, 9), body.subarray(7, 16));
    assert.equal(server.count(NAR), 3);
  });

  it('a truncated 206 body is retried, then ERR_DATALAKE_TRUNCATED', async function () {
    d = new HttpDatalake(server.url, { retryBaseMs: 1, attempts: 2 });
    server.truncate(NAR, 50);
    await failure(d.getRange(NAR, 0, 1000), 'ERR_DATALAKE_TRUNCATED');
    assert.equal(server.count(NAR), 2);
  });

  it('ranges have their own pool: a stalled NAR stream and a stalled small file hold no socket a range needs', async function () {
    this.timeout(30_000); // on a shared pool the range would wait for the stalled socket until this fails
    d = new HttpDatalake(server.url, { connections: 1, metadataConnections: 1, rangeConnections: 1, bodyTimeoutMs: 60_000, headersTimeoutMs: 60_000 });
    const OTHER = 'nar/other.nar';
    await fsp.writeFile(path.join(dir, OTHER), randomBytes(1 << 20));
    server.stallBody(OTHER, 1024).stallHeaders(SMALL);
    const stream = await d.getStream(OTHER);
    assert.ok(stream);
    const small = d.getBytes(SMALL).catch((e: unknown) => e);
    await server.waitForRequest(SMALL);
    assert.deepEqual(await d.getRange(NAR, 5, 5), body.subarray(5, 10));
    stream.destroy();
    await d.close();
    d = undefined;
    await small;
  });
});
