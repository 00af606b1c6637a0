/**
 * The store stack without FUSE: reads through LazyStore from a real fixture datalake.
 * Regression: a newly opened NAR file used to be evicted (closed) by its own opening
 * once the open-file limit was reached, so every read of a further path failed.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { openStoreStack } from '../../src/daemon/store-stack.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import type { NarNode } from '../../src/nix/nar-listing.js';

describe('integration: LazyStore reads without FUSE', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let cacheDir: string;
  before(async () => {
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), 'narfs-lazy-'));
  });
  afterEach(async () => rm(cacheDir, { recursive: true, force: true }));

  it('serves files of more store paths than it keeps open, byte for byte', async () => {
    const logs: LogLine[] = [];
    const stack = await openStoreStack({
      datalakes: [fixtures.datalakes['zstd']!.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir, negativeTtlMs: 1000, maxOpenFiles: 2,
    }, captureLogger(logs));
    try {
      const singleFiles = fixtures.paths.filter((p) => p.role === 'drv' || p.role === 'source' || p.role === 'single-file');
      assert.ok(singleFiles.length >= 6);
      const signal = AbortSignal.timeout(60_000);
      for (const round of [1, 2]) {
        for (const p of singleFiles) {
          const name = p.storePath.slice('/nix/store/'.length);
          const node = (await stack.store.resolve(name, signal)) as NarNode;
          assert.equal(node.type, 'regular', name);
          const bytes = await stack.store.readFile(name, signal);
          const disk = await readFile(p.storePath);
          assert.equal(createHash('sha256').update(bytes).digest('hex'), createHash('sha256').update(disk).digest('hex'), `${name} (round ${round})`);
        }
      }
      assert.deepEqual(logs.filter((l) => l.level === 'error'), []);
    } finally {
      await stack.close();
    }
  });
});
