/**
 * A real mount over a real HTTP server (port 0) serving a fixture datalake, with faults.
 * Each fault must give the documented errno and error code, within its deadline, and
 * leave nothing in the cache.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { cacheFiles, gatedProbe, probe, untilCacheEmpty, withMount, type LogLine, type TestMount } from '../support/mount-harness.js';
import { formatNarInfo, parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { parseListingJson } from '../../src/nix/nar-listing.js';

const OP_TIMEOUT_MS = 2500;
const SLACK_MS = 2500;

function codes(logs: LogLine[]): string[] {
  return logs.map(codeOf).filter(Boolean);
}

function codeOf(l: LogLine): string {
  return (l.fields.err as { code?: string } | undefined)?.code ?? '';
}

describe('integration: faults of an HTTP datalake under a real mount', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let server: HttpDatalakeServer;
  let lakeDir: string;
  let target: { base: string; hashPart: string; ni: NarInfo; file: string; contentOffset: number };

  before(async () => {
    fixtures = await loadFixtures();
    lakeDir = fixtures.datalakes['none']!.dir;
    server = await HttpDatalakeServer.start({ root: lakeDir });
    // A store path with a regular file: the large file's path.
    const sp = parseStorePath(fixtures.largeFile.storePath);
    const base = storePathBase(sp);
    const ni = parseNarInfo(await readFile(join(lakeDir, `${sp.hashPart}.narinfo`), 'utf8'));
    let node = parseListingJson(await readFile(join(lakeDir, `${sp.hashPart}.ls`), 'utf8'));
    for (const part of fixtures.largeFile.relPath.split('/').filter(Boolean)) {
      assert.equal(node.type, 'directory');
      node = (node as { entries: Map<string, typeof node> }).entries.get(part)!;
    }
    assert.equal(node.type, 'regular');
    const contentOffset = (node as { narOffset: number }).narOffset;
    target = { base, hashPart: sp.hashPart, ni, file: fixtures.largeFile.relPath, contentOffset };
  });
  after(async () => server?.close());
  afterEach(() => server.clear());

  const mount = <T>(fn: (m: TestMount) => Promise<T>) =>
    withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, opTimeoutMs: OP_TIMEOUT_MS }, fn);
  const filePath = (m: TestMount) => join(m.mnt, target.base, target.file);
  const narinfo = () => `${target.hashPart}.narinfo`;

  it('a name that is not a store path is ENOENT without any request', async () => {
    await mount(async (m) => {
      const before = server.totalRequests;
      for (const name of ['foo', 'hello-2.12', `${'e'.repeat(32)}-x`, `${target.hashPart}`]) {
        const r = await probe('stat', join(m.mnt, name));
        assert.equal(r.code, 'ENOENT', name);
      }
      assert.equal(server.totalRequests, before);
    });
  });

  it('404 and 403 mean absent: ENOENT, remembered for the negative TTL', async () => {
    await mount(async (m) => {
      server.status(narinfo(), 404);
      assert.equal((await probe('stat', join(m.mnt, target.base))).code, 'ENOENT');
      const n = server.count(narinfo());
      assert.equal((await probe('stat', join(m.mnt, target.base))).code, 'ENOENT');
      assert.equal(server.count(narinfo()), n, 'negative entry cached');
    });
    await mount(async (m) => {
      server.status(narinfo(), 403);
      assert.equal((await probe('stat', join(m.mnt, target.base))).code, 'ENOENT');
    });
  });

  it('500 on the narinfo: EIO with ERR_DATALAKE_* within the deadline; transient 500s are retried', async () => {
    await mount(async (m) => {
      server.status(narinfo(), 500);
      const r = await probe('stat', join(m.mnt, target.base));
      assert.equal(r.code, 'EIO');
      assert.ok(r.ms < OP_TIMEOUT_MS + SLACK_MS, `took ${r.ms} ms`);
      assert.ok(codes(m.logs).some((c) => c.startsWith('ERR_DATALAKE_')), codes(m.logs).join());
    });
    server.clear();
    await mount(async (m) => {
      server.failTimes(narinfo(), 2, 500);
      const r = await probe('stat', join(m.mnt, target.base));
      assert.equal(r.ok, true, JSON.stringify(r));
    });
  });

  it('a stalled narinfo answer gives EIO within the deadline, never a hang', async () => {
    await mount(async (m) => {
      server.stallHeaders(narinfo());
      const r = await probe('stat', join(m.mnt, target.base));
      assert.equal(r.code, 'EIO');
      assert.ok(r.ms < OP_TIMEOUT_MS + SLACK_MS, `took ${r.ms} ms`);
    });
  });

  it('NAR faults (500, stall, truncation, wrong hash) give EIO with their code and leave nothing cached', async () => {
    const url = target.ni.url;
    const cases: Array<{ what: string; arm: () => void; code: RegExp }> = [
      { what: '500', arm: () => server.status(url, 500), code: /^ERR_DATALAKE_/ },
      { what: 'stall mid-body', arm: () => server.stallBody(url, 100_000), code: /^ERR_(DATALAKE_TIMEOUT|DEADLINE)/ },
      { what: 'truncated', arm: () => server.truncate(url, 200_000), code: /^ERR_(DATALAKE_TRUNCATED|NAR_SIZE_MISMATCH|NAR_TRUNCATED)$/ },
      {
        what: 'wrong hash',
        arm: () => server.transform(url, (body) => { const b = Buffer.from(body); const i = target.contentOffset + 1000; b[i] = b[i]! ^ 0xff; return b; }),
        code: /^ERR_NAR_HASH_MISMATCH$/,
      },
    ];
    for (const c of cases) {
      server.clear();
      c.arm();
      await mount(async (m) => {
        const st = await probe('stat', filePath(m));
        assert.equal(st.ok, true, `${c.what}: stat works from the .ls listing alone`);
        const r = await probe('read', filePath(m));
        assert.equal(r.code, 'EIO', `${c.what}: ${JSON.stringify(r)}`);
        assert.ok(r.ms < OP_TIMEOUT_MS + SLACK_MS, `${c.what}: took ${r.ms} ms`);
        await m.waitForLog((l) => c.code.test(codeOf(l)), `${c.what}: a line with code ${String(c.code)}`);
        await untilCacheEmpty(m.cacheDir);
      });
    }
  });

  it('a narinfo with a bad or missing signature is refused: EIO, ERR_NARINFO_SIGNATURE', async () => {
    const variants: Array<[string, (ni: NarInfo) => NarInfo]> = [
      ['bad', (ni) => ({ ...ni, sigs: ni.sigs.map((s) => s.replace(/:(.)/, (_m, c: string) => `:${c === 'A' ? 'B' : 'A'}`)) })],
      ['missing', (ni) => ({ ...ni, sigs: [] })],
      ['tampered NarSize', (ni) => ({ ...ni, narSize: ni.narSize + 1 })],
    ];
    for (const [what, change] of variants) {
      server.clear();
      server.transform(narinfo(), (body) => Buffer.from(formatNarInfo(change(parseNarInfo(body.toString('utf8'))))));
      await mount(async (m) => {
        const r = await probe('stat', join(m.mnt, target.base));
        assert.equal(r.code, 'EIO', `${what}: ${JSON.stringify(r)}`);
        assert.ok(codes(m.logs).includes('ERR_NARINFO_SIGNATURE'), `${what}: ${codes(m.logs).join()}`);
        assert.deepEqual((await cacheFiles(m.cacheDir)).stored, []);
      });
    }
  });

  it('32 parallel readers of one unmaterialised path cause one NAR fetch', async () => {
    // The default operation deadline (30 s): the first reader waits while the NAR is held.
    await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      // The NAR answer is held until all 32 readers are about to read and the fetch has
      // reached the server, so they really overlap one fetch in flight; started first and
      // let go together, so their start-up is not spent inside the operation deadline.
      server.hold(target.ni.url);
      const before = server.count(target.ni.url);
      const readers = Array.from({ length: 32 }, () => gatedProbe('read', filePath(m)));
      await Promise.all(readers.map((r) => r.ready));
      for (const r of readers) r.go();
      await Promise.all([...readers.map((r) => r.going), server.waitForRequest(target.ni.url, before + 1)]);
      server.release(target.ni.url);
      const results = await Promise.all(readers.map((r) => r.result));
      const shas = new Set(results.map((r) => r.sha256));
      assert.ok(results.every((r) => r.ok), JSON.stringify(results.find((r) => !r.ok)));
      assert.equal(shas.size, 1);
      assert.equal(server.count(target.ni.url) - before, 1);
      assert.equal(m.running.materialiser.fetches, 1);
    });
  });

  it('cached paths survive a restart of the daemon', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const cacheDir = await mkdtemp(join(tmpdir(), 'narfs-cache-'));
    try {
      let sha: string | undefined;
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir }, async (m) => {
        sha = (await probe('read', filePath(m))).sha256;
      });
      const before = server.count(target.ni.url);
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir }, async (m) => {
        const r = await probe('read', filePath(m));
        assert.equal(r.sha256, sha);
        const root = await probe('readdir', m.mnt);
        assert.ok(root.names?.includes(target.base), 'the root lists cached paths');
      });
      assert.equal(server.count(target.ni.url), before, 'no NAR fetch after restart');
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});
