/**
 * --cache-max-size and `narfs gc --max-size` sizes, the default bound of the cache, and
 * `narfs gc` on an idle cache through the real command, which also removes the NARs a stop
 * kept (pending/) when evicting blobs is not enough.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildMountConfig, defaultCacheMaxBytes, parseSize } from '../../../src/config/mount-config.js';
import { BlobStore } from '../../../src/cache/blob-store.js';
import { isNarfsError } from '../../../src/errors.js';
import { NARFS_BIN } from '../../support/cli-daemon.js';
import { run } from '../../support/mount-harness.js';

const GiB = 2 ** 30;

describe('cache size settings', () => {
  it('parses sizes in powers of 1024, and refuses anything else with ERR_USAGE', () => {
    assert.equal(parseSize('500M', 'x'), 500 * 2 ** 20);
    assert.equal(parseSize('2G', 'x'), 2 * GiB);
    assert.equal(parseSize('2GiB', 'x'), 2 * GiB);
    assert.equal(parseSize('1.5t', 'x'), 1.5 * 2 ** 40);
    assert.equal(parseSize('64K', 'x'), 65536);
    assert.equal(parseSize('4096', 'x'), 4096);
    for (const bad of ['', 'M', '-1G', '2X', '1e9', '2 GB extra']) {
      assert.throws(() => parseSize(bad, '--cache-max-size'), (e: unknown) => isNarfsError(e) && e.code === 'ERR_USAGE', bad);
    }
  });

  it('defaults to 10% of the filesystem, at least 1 GiB unless the filesystem is smaller', () => {
    assert.equal(defaultCacheMaxBytes(100 * GiB), 10 * GiB);
    assert.equal(defaultCacheMaxBytes(5 * GiB), GiB);
    assert.equal(defaultCacheMaxBytes(512 * 2 ** 20), 512 * 2 ** 20);
  });

  it('--cache-max-size reaches the mount configuration', () => {
    const base = { mountpoint: '/m', datalake: ['file:///x'], noRequireSigs: true };
    assert.equal(buildMountConfig({ ...base, cacheMaxSize: '3G' }).cacheMaxBytes, 3 * GiB);
    assert.equal(buildMountConfig(base).cacheMaxBytes, undefined);
  });

  it('narfs gc --max-size trims an idle cache, least recently used first', async function () {
    this.timeout(120_000);
    const dir = await mkdtemp(join(tmpdir(), 'narfs-gc-'));
    try {
      const store = await BlobStore.open(dir);
      const shas: Buffer[] = [];
      for (let i = 0; i < 4; i++) {
        const b = randomBytes(4096);
        const t = store.tempPath();
        await writeFile(t, b);
        shas.push(createHash('sha256').update(b).digest());
        await store.commitFiles([{ sha: shas[i]!, size: 4096, tempPath: t }]);
      }
      store.touch(shas[0]!); // the oldest is used again
      await store.close();
      const r = await run(process.execPath, [NARFS_BIN, 'gc', '--cache-dir', dir, '--max-size', '8K']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /gc freed 0\.0 MiB \(2 files\)/);
      const after = await BlobStore.open(dir);
      assert.deepEqual(shas.map((h) => after.completePath(h, 4096) !== undefined), [true, false, false, true]);
      assert.equal(after.stats().bytes, 8192);
      await after.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('narfs gc removes the NARs a stop kept once evicting blobs is not enough', async function () {
    this.timeout(120_000);
    const dir = await mkdtemp(join(tmpdir(), 'narfs-gc-'));
    try {
      const store = await BlobStore.open(dir);
      const b = randomBytes(4096);
      const t = store.tempPath();
      await writeFile(t, b);
      await store.commitFiles([{ sha: createHash('sha256').update(b).digest(), size: 4096, tempPath: t }]);
      await store.close();
      await mkdir(join(dir, 'pending'));
      const kept = `${'a'.repeat(32)}.${createHash('sha256').update('nar').digest('hex')}.4096.nar`;
      await writeFile(join(dir, 'pending', kept), Buffer.alloc(4096));
      const half = await run(process.execPath, [NARFS_BIN, 'gc', '--cache-dir', dir, '--max-size', '4K']);
      assert.equal(half.code, 0, half.stderr);
      assert.match(half.stdout, /gc freed 0\.0 MiB \(1 files\)/);
      assert.deepEqual(await readdir(join(dir, 'pending')), [kept], 'the blob went first');
      const all = await run(process.execPath, [NARFS_BIN, 'gc', '--cache-dir', dir, '--max-size', '0']);
      assert.equal(all.code, 0, all.stderr);
      assert.match(all.stdout, /gc freed 0\.0 MiB \(1 files\); the cache holds 0\.0 MiB/);
      assert.deepEqual(await readdir(join(dir, 'pending')), []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
