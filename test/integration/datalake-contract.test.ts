/**
 * The Datalake contract (src/datalake/datalake.ts), one scenario suite run against every
 * backend over the same binary cache written by real Nix: FileDatalake, HttpDatalake
 * (plain, under a base path with Basic auth, over https:// with a CA made in the test and a
 * bearer token file), a DatalakeSet whose first member lacks everything (so every hit is a
 * fall-through), and S3Datalake against a real S3 engine (OpenStack Swift's s3api,
 * test/support/s3-engine.ts) filled by a real client (s3cmd).
 */
import { skipOrFail } from '../support/environment.js';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import type { CacheInfo, Datalake, GetOptions } from '../../src/datalake/datalake.js';
import { DatalakeSet } from '../../src/datalake/datalake-set.js';
import { FileDatalake } from '../../src/datalake/file-datalake.js';
import { HttpDatalake } from '../../src/datalake/http-datalake.js';
import { openDatalake } from '../../src/datalake/open-datalake.js';
import { isNarfsError } from '../../src/errors.js';
import { S3Datalake } from '../../src/datalake/s3-datalake.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { S3Engine } from '../support/s3-engine.js';
import { buildNixBinaryCache, haveNix, type NixBinaryCache } from '../support/nix-binary-cache.js';
import { haveOpenssl, makeTestCa } from '../support/test-ca.js';

interface Subject {
  datalake: Datalake;
  /** Whether listNarInfoHashes can list (file://) or must say undefined. */
  canList: boolean;
  /** Strings that must never show up in displayUrl or errors. */
  secrets: string[];
  cleanup(): Promise<void>;
}

type MakeSubject = (cache: NixBinaryCache, ctx: Mocha.Context) => Promise<Subject>;

async function readStream(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    assert.ok(isNarfsError(e), `expected a NarfsError, got ${inspect(e)}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  assert.fail(`expected rejection with ${code}`);
}

/** Adapts a DatalakeSet to the Datalake interface so the same scenarios run on it. */
function setAsDatalake(set: DatalakeSet, displayUrl: string): Datalake {
  let info: CacheInfo | undefined;
  return {
    displayUrl,
    async open(options?: GetOptions) {
      await set.open(options);
      info = set.status().find((s) => s.up)?.cacheInfo;
      return info!;
    },
    async getBytes(rel, options) {
      return (await set.getBytes(rel, options))?.value;
    },
    async getStream(rel, options) {
      return (await set.getStream(rel, options))?.value;
    },
    // Pinned, as a lazy read is: to the datalake that has the files (given last).
    getRange(rel, offset, length, options) {
      return set.getRangeFrom(set.datalakes[set.datalakes.length - 1]!, rel, offset, length, options);
    },
    close: () => set.close(),
  };
}

function datalakeContract(name: string, make: MakeSubject): void {
  describe(`Datalake contract: ${name}`, function () {
    let cache: NixBinaryCache;
    let s: Subject;
    let d: Datalake;
    let hashParts: string[];

    before(async function () {
      cache = sharedCache!;
      s = await make(cache, this);
      d = s.datalake;
      hashParts = cache.storePaths.map((p) => path.basename(p).slice(0, 32));
    });
    after(async function () {
      await s?.datalake.close();
      await s?.cleanup();
    });

    it('open() reads nix-cache-info: /nix/store, Nix defaults for what it omits', async function () {
      const info = await d.open();
      assert.deepEqual(info, { storeDir: '/nix/store', wantMassQuery: false, priority: 50 });
    });

    it('getBytes returns the exact bytes of nix-cache-info and of each narinfo', async function () {
      assert.deepEqual(await d.getBytes('nix-cache-info'), await fsp.readFile(path.join(cache.dir, 'nix-cache-info')));
      for (const h of hashParts) {
        const got = await d.getBytes(`${h}.narinfo`);
        assert.ok(got, `${h}.narinfo missing`);
        assert.deepEqual(got, await fsp.readFile(path.join(cache.dir, `${h}.narinfo`)));
        assert.match(got.toString(), new RegExp(`^StorePath: /nix/store/${h}-`));
      }
    });

    it('getBytes reads .ls listings and whole NARs too', async function () {
      const h = hashParts[0]!;
      const ls = await d.getBytes(`${h}.ls`);
      assert.ok(ls);
      assert.equal(JSON.parse(ls.toString()).version, 1);
      const url = cache.narUrls.get(h)!;
      assert.deepEqual(await d.getBytes(url), await fsp.readFile(path.join(cache.dir, url)));
    });

    it('getStream streams every NAR byte for byte', async function () {
      for (const h of hashParts) {
        const url = cache.narUrls.get(h)!;
        const stream = await d.getStream(url);
        assert.ok(stream, `${url} missing`);
        assert.deepEqual(await readStream(stream), await fsp.readFile(path.join(cache.dir, url)));
      }
    });

    it('getRange returns exactly the bytes asked for, clipped at the end of the file', async function () {
      assert.equal(typeof d.getRange, 'function', 'every backend reads ranges');
      const getRange = d.getRange!.bind(d);
      for (const h of hashParts) {
        const url = cache.narUrls.get(h)!;
        const whole = await fsp.readFile(path.join(cache.dir, url));
        const n = whole.length;
        const cases: Array<[number, number]> = [
          [0, 1], [0, n], [1, n - 2], [Math.floor(n / 2), 7], [n - 1, 1], [n - 5, 100], [Math.floor(n / 3), n],
        ];
        for (const [offset, length] of cases) {
          const got = await getRange(url, offset, length);
          assert.ok(got, `${url} missing`);
          assert.deepEqual(got, whole.subarray(offset, Math.min(n, offset + length)), `${url} bytes ${offset}+${length}`);
        }
        assert.deepEqual(await getRange(url, 3, 0), Buffer.alloc(0));
        await rejectsWith(getRange(url, n, 1), 'ERR_INVALID_ARGUMENT');
        await rejectsWith(getRange(url, n + 1000, 10), 'ERR_INVALID_ARGUMENT');
      }
    });

    it('getRange: absence is undefined; bad arguments and paths are ERR_INVALID_ARGUMENT; abort is ERR_ABORTED', async function () {
      assert.equal(typeof d.getRange, 'function', 'every backend reads ranges');
      const getRange = d.getRange!.bind(d);
      assert.equal(await getRange(`nar/${'0'.repeat(32)}.nar.xz`, 0, 10), undefined);
      for (const bad of ['../nix-cache-info', '/etc/passwd', 'x?y']) await rejectsWith(getRange(bad, 0, 1), 'ERR_INVALID_ARGUMENT');
      const url = cache.narUrls.get(hashParts[0]!)!;
      await rejectsWith(getRange(url, -1, 1), 'ERR_INVALID_ARGUMENT');
      await rejectsWith(getRange(url, 0.5, 1), 'ERR_INVALID_ARGUMENT');
      const ac = new AbortController();
      ac.abort();
      await rejectsWith(getRange(url, 0, 10, { signal: ac.signal }), 'ERR_ABORTED');
    });

    it('absence is undefined, never an error', async function () {
      const missing = '0'.repeat(32);
      assert.equal(await d.getBytes(`${missing}.narinfo`), undefined);
      assert.equal(await d.getStream(`nar/${missing}.nar.xz`), undefined);
      assert.equal(await d.getBytes(`nar/${missing}.nar.xz`), undefined);
      assert.equal(await d.getBytes('no-such-dir/x'), undefined);
      assert.equal(await d.getBytes('nix-cache-info/below-a-file'), undefined);
    });

    it('relPaths that could leave the root are ERR_INVALID_ARGUMENT', async function () {
      for (const bad of ['../nix-cache-info', 'nar/../../etc/passwd', '/etc/passwd', 'http://evil/x', '', 'a//b', './x', 'x?y']) {
        await rejectsWith(d.getBytes(bad), 'ERR_INVALID_ARGUMENT');
        await rejectsWith(d.getStream(bad), 'ERR_INVALID_ARGUMENT');
      }
    });

    it('many concurrent reads all succeed', async function () {
      const h = hashParts[1]!;
      const want = await fsp.readFile(path.join(cache.dir, `${h}.narinfo`));
      const got = await Promise.all(Array.from({ length: 64 }, () => d.getBytes(`${h}.narinfo`)));
      for (const g of got) assert.deepEqual(g, want);
    });

    it('an already aborted signal fails with ERR_ABORTED', async function () {
      const ac = new AbortController();
      ac.abort();
      await rejectsWith(d.getBytes('nix-cache-info', { signal: ac.signal }), 'ERR_ABORTED');
      await rejectsWith(d.getStream(cache.narUrls.get(hashParts[0]!)!, { signal: ac.signal }), 'ERR_ABORTED');
    });

    it('aborting mid-stream ends the stream with ERR_ABORTED', async function () {
      const ac = new AbortController();
      const stream = await d.getStream(cache.narUrls.get(hashParts[0]!)!, { signal: ac.signal });
      assert.ok(stream);
      const err = await new Promise<unknown>((resolve) => {
        stream.once('error', resolve);
        stream.once('end', () => resolve(undefined));
        stream.once('readable', () => ac.abort());
      });
      // A small NAR may have been read completely before the abort landed.
      if (err !== undefined) assert.ok(isNarfsError(err, 'ERR_ABORTED'), inspect(err));
    });

    it('listNarInfoHashes lists the narinfos where the backend can', async function () {
      const list = await d.listNarInfoHashes?.();
      if (s.canList) assert.deepEqual(list, [...hashParts].sort());
      else assert.equal(list, undefined);
    });

    it('displayUrl and errors carry no secret', async function () {
      for (const secret of s.secrets) assert.ok(!d.displayUrl.includes(secret), d.displayUrl);
      const err = await d.getBytes('../x').catch((e: unknown) => e);
      for (const secret of s.secrets) assert.ok(!inspect(err, { depth: 20 }).includes(secret));
    });

    it('after close(), calls fail with ERR_ABORTED', async function () {
      await d.close();
      await rejectsWith(d.getBytes('nix-cache-info'), 'ERR_ABORTED');
      await d.close(); // idempotent
    });
  });
}

let sharedCache: NixBinaryCache | undefined;

describe('Datalake contract', function () {
  before(async function () {
    if (!(await haveNix())) skipOrFail(this, 'nix');
    sharedCache = await buildNixBinaryCache();
  });
  after(async function () {
    await sharedCache?.cleanup();
  });

  datalakeContract('FileDatalake', async (cache) => ({
    datalake: new FileDatalake(`file://${cache.dir}`),
    canList: true,
    secrets: [],
    cleanup: async () => {},
  }));

  datalakeContract('HttpDatalake', async (cache) => {
    const server = await HttpDatalakeServer.start({ root: cache.dir });
    return {
      datalake: new HttpDatalake(server.url),
      canList: false,
      secrets: [],
      cleanup: () => server.close(),
    };
  });

  datalakeContract('HttpDatalake under a base path with Basic auth', async (cache) => {
    const server = await HttpDatalakeServer.start({
      root: cache.dir,
      basePath: '/caches/main',
      auth: { username: 'narfs-user', password: 'pa ss:w0rd/secret' },
    });
    const u = new URL(server.url);
    u.username = 'narfs-user';
    u.password = encodeURIComponent('pa ss:w0rd/secret');
    return {
      datalake: openDatalake(u.toString()),
      canList: false,
      secrets: ['narfs-user', 'w0rd', 'pa%20ss'],
      cleanup: () => server.close(),
    };
  });

  datalakeContract('S3Datalake (OpenStack Swift s3api, signed, under a key prefix)', async (cache, ctx) => {
    if (!(await S3Engine.available())) skipOrFail(ctx, 'the S3 engine (python3-swift, s3cmd)');
    const engine = await S3Engine.start();
    const home = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-s3-home-'));
    try {
      await engine.populate('narfs-contract', cache.dir, 'caches/main');
    } catch (e) {
      await engine.stop();
      throw e;
    }
    return {
      // Keys from a hermetic environment: nobody's ~/.aws is read.
      datalake: new S3Datalake(engine.url('narfs-contract', 'caches/main'), { credentialSources: { env: engine.env(), homeDir: home } }),
      canList: false,
      secrets: [engine.secretKey, engine.accessKey],
      cleanup: async () => {
        await engine.stop();
        await fsp.rm(home, { recursive: true, force: true });
      },
    };
  });

  datalakeContract('HttpDatalake over https:// (own CA, --ssl-cert-file) with a bearer token file', async (cache) => {
    if (!(await haveOpenssl())) throw new Error('openssl is missing (Debian package openssl)');
    const ca = await makeTestCa();
    const server = await HttpDatalakeServer.start({ root: cache.dir, tls: { key: ca.key, cert: ca.cert } });
    const token = `tok-${randomBytes(16).toString('hex')}`;
    server.requireBearer(token);
    const tokenFile = path.join(ca.dir, 'token');
    await fsp.writeFile(tokenFile, `  ${token}\n`, { mode: 0o600 });
    assert.match(server.url, /^https:/);
    return {
      datalake: openDatalake(server.url, { sslCertFile: ca.caFile, bearerTokenFiles: [{ file: tokenFile }] }),
      canList: false,
      secrets: [token],
      cleanup: async () => {
        await server.close();
        await ca.cleanup();
      },
    };
  });

  datalakeContract('DatalakeSet (an empty datalake first, then the real one over HTTP)', async (cache) => {
    const empty = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-empty-lake-'));
    // Same nix-cache-info (no Priority): command-line order puts the empty one first.
    await fsp.copyFile(path.join(cache.dir, 'nix-cache-info'), path.join(empty, 'nix-cache-info'));
    const server = await HttpDatalakeServer.start({ root: cache.dir });
    const set = new DatalakeSet([new FileDatalake(`file://${empty}`), new HttpDatalake(server.url)]);
    return {
      datalake: setAsDatalake(set, 'set'),
      canList: false,
      secrets: [],
      cleanup: async () => {
        await server.close();
        await fsp.rm(empty, { recursive: true, force: true });
      },
    };
  });
});
