/**
 * The first open after a daemon restart over a warm cache (native engine, real mount, real
 * cache on disk): a cached file written by the earlier process is re-hashed at OPEN, off
 * the JS thread (src/cache/blob-store.ts pin → verifyBlob, native/src/hash_file.cc), and
 * the open is then answered whole by C (passthrough as root, else pread from C): no READ
 * of it reaches JS, by the engine's counters. A bit flipped in that cached file between
 * two runs is never served: while its NAR cannot be fetched the read is EIO; once it can,
 * the file is fetched again and read right.
 * Skipped when NARFS_FUSE_BACKEND selects fuse-native.
 */
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, narInfoPath, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { probe, withMount, type TestMount } from '../support/mount-harness.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';

/**
 * Reads `rel` and waits until its files are committed to the blob store (they are split once
 * the mount is idle; an unmount before that would keep the NAR in pending/ instead).
 */
const readAndCommit = (rel: string) => async (m: TestMount) => {
  const r = await probe('read', join(m.mnt, rel));
  await m.running.materialiser.flush();
  return r;
};

const READ = 15; // FUSE_READ
const OPEN = 14; // FUSE_OPEN

describe('e2e: native engine, first open after a restart over a warm cache', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let root: string;

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native') this.skip();
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-first-open-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('a cached file of an earlier process is verified at open and opened whole in C: no READ reaches JS', async () => {
    const lake = fixtures.datalakes['none']!;
    const cacheDir = join(root, 'cache');
    const rel = join(storePathBase(parseStorePath(fixtures.largeFile.storePath)), fixtures.largeFile.relPath);
    const opts = { datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey, cacheDir };
    const first = await withMount(opts, readAndCommit(rel));
    assert.equal(first.ok, true, JSON.stringify(first));
    await withMount(opts, async (m) => {
      const file = join(m.mnt, rel);
      // The lookups first, so that what is counted below is the open and its reads.
      assert.equal((await probe('stat', file)).ok, true);
      const before = m.running.engine.stats()!;
      const again = await probe('read', file);
      const after = m.running.engine.stats()!;
      assert.equal(again.sha256, first.sha256);
      assert.equal(after.toJsByOpcode[OPEN] ?? 0, (before.toJsByOpcode[OPEN] ?? 0) + 1, 'the first open is JS\'s (it checks the file)');
      assert.equal(after.toJsByOpcode[READ] ?? 0, before.toJsByOpcode[READ] ?? 0, 'no READ reached JS');
      if (after.passthroughEnabled) {
        assert.equal(after.passthroughOpens, before.passthroughOpens + 1, 'the first open is a passthrough open');
      } else {
        assert.ok(after.bytesInC - before.bytesInC >= fixtures.largeFile.size, `bytes read in C: ${after.bytesInC - before.bytesInC}`);
      }
    });
  });

  it('a bit flipped in a cached file between two runs is never served: EIO while the NAR cannot be had, the right bytes after', async () => {
    const lake = fixtures.datalakes['none']!;
    const server = await HttpDatalakeServer.start({ root: lake.dir });
    try {
      const cacheDir = join(root, 'cache');
      const rel = join(storePathBase(parseStorePath(fixtures.largeFile.storePath)), fixtures.largeFile.relPath);
      const ni = parseNarInfo(await readFile(narInfoPath(lake.dir, fixtures.largeFile.storePath), 'utf8'));
      const opts = { datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, cacheDir };
      const first = await withMount(opts, readAndCommit(rel));
      assert.equal(first.ok, true, JSON.stringify(first));
      // The cache is content-addressed: the blob is named by the file's SHA-256.
      const blob = join(cacheDir, 'blobs', first.sha256!.slice(0, 2), first.sha256!);
      await chmod(blob, 0o644);
      const bytes = await readFile(blob);
      const mid = bytes.length >> 1;
      bytes[mid] = bytes[mid]! ^ 0x04;
      await writeFile(blob, bytes);
      server.status(ni.url, 500);
      await withMount(opts, async (m) => {
        const r = await probe('read', join(m.mnt, rel));
        assert.equal(r.ok, false, `the damaged file was served: ${JSON.stringify(r)}`);
        assert.equal(r.code, 'EIO');
        await m.waitForLog((l) => /damaged/.test(l.msg), 'the damage is logged');
      });
      server.clear();
      await withMount(opts, async (m) => {
        const r = await probe('read', join(m.mnt, rel));
        assert.equal(r.sha256, first.sha256, 'fetched again, read right');
      });
    } finally {
      await server.close();
    }
  });
});
