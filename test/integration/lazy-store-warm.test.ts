/**
 * LazyStore warms the metadata of a closure (issue 10): resolving a store path fetches the
 * narinfos of its References in the background, so that a later lookup of a dependency
 * pays no round trip. Against a real HTTP datalake (HttpDatalakeServer counting requests)
 * serving the fixture `none` datalake; waits are on the server's request events, bounded.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { openStoreStack } from '../../src/daemon/store-stack.js';
import { hashPart, loadFixtures, pathByRole, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { captureLogger } from '../support/mount-harness.js';

describe('LazyStore: warming the narinfos of a resolved path\'s references', function () {
  this.timeout(120_000);
  let fx: Fixtures;
  let tmp: string;
  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-warm-'));
  });
  after(async () => {
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  });

  async function open(warmReferences?: number) {
    const server = await HttpDatalakeServer.start({ root: fx.datalakes.none.dir });
    const stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: parseTrustedPublicKeys(fx.publicKey), requireSigs: true,
      cacheDir: await fsp.mkdtemp(path.join(tmp, 'cache-')), negativeTtlMs: 1000,
      ...(warmReferences === undefined ? {} : { lazyFetch: { warmReferences } }),
    }, captureLogger([]));
    return { server, stack, close: async () => { await stack.close(); await server.close(); } };
  }

  const refsOf = (top: string): string[] => fx.paths.filter((p) => p.storePath !== top && p.role !== 'drv' && p.role !== 'source').map((p) => p.storePath);

  it('resolving `top` fetches its references\' narinfos in the background; their lookups then ask the datalake nothing', async () => {
    const top = pathByRole(fx, 'top').storePath;
    const e = await open();
    try {
      assert.ok(await e.stack.store.resolve(path.basename(top), AbortSignal.timeout(60_000)));
      const refs = refsOf(top);
      assert.ok(refs.length >= 5);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(refs.map((r) => e.server.waitForRequest(`${hashPart(r)}.narinfo`))),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('the references\' narinfos were not fetched')), 30_000); }),
      ]).finally(() => clearTimeout(timer));
      for (const r of refs) {
        assert.ok(await e.stack.infos.get(parseStorePath(r), AbortSignal.timeout(60_000)));
        assert.equal(e.server.count(`${hashPart(r)}.narinfo`), 1, `${storePathBase(parseStorePath(r))}: one narinfo request, the warming one`);
      }
    } finally {
      await e.close();
    }
  });

  it('warm-references=0 turns it off', async () => {
    const top = pathByRole(fx, 'top').storePath;
    const e = await open(0);
    try {
      await e.stack.store.resolve(path.basename(top), AbortSignal.timeout(60_000));
      await e.stack.store.resolve(path.basename(top), AbortSignal.timeout(60_000));
      for (const r of refsOf(top)) assert.equal(e.server.count(`${hashPart(r)}.narinfo`), 0);
      assert.equal(e.stack.store.counters.warmedInfos, 0);
    } finally {
      await e.close();
    }
  });
});
