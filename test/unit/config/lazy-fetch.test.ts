/**
 * `--lazy-fetch KEY=V,...` (mount-config.ts parseLazyFetch / buildMountConfig): sizes,
 * shares and counts parsed into LazyStore options; unknown keys and bad values are ERR_USAGE.
 */
import assert from 'node:assert/strict';
import { isNarfsError } from '../../../src/errors.js';
import { buildMountConfig, parseLazyFetch } from '../../../src/config/mount-config.js';

describe('--lazy-fetch', () => {
  it('parses every key into the LazyStore option it tunes', () => {
    assert.deepEqual(parseLazyFetch('neighbour-bytes=256K, neighbour-file-bytes=64K,escalate-share=0.5,escalate-streak=0,bulk-request-bytes=16M,bulk-concurrency=8,stage-bytes=32M,warm-references=0,neighbour-after-misses=2'), {
      neighbourBytes: 256 * 1024, neighbourFileBytes: 64 * 1024, escalateShare: 0.5, escalateStreak: 0,
      bulkRequestBytes: 16 << 20, bulkConcurrency: 8, stageMaxBytes: 32 << 20, warmReferences: 0, neighbourAfterMisses: 2,
    });
    assert.deepEqual(parseLazyFetch('neighbour-bytes=0'), { neighbourBytes: 0 });
    assert.deepEqual(parseLazyFetch('walk-whole-bytes=512M,whole-nar-bytes=1M'), { walkWholeBytes: 512 << 20, wholeNarMaxBytes: 1 << 20 });
    assert.deepEqual(parseLazyFetch('walk-whole-bytes=0'), { walkWholeBytes: 0 });
  });

  it('rejects unknown keys and bad values with ERR_USAGE', () => {
    for (const bad of ['neighbours=1M', 'neighbour-bytes', 'escalate-share=2', 'escalate-share=-1', 'escalate-streak=1.5', 'bulk-concurrency=0', 'bulk-request-bytes=1K', 'neighbour-bytes=lots', 'walk-whole-bytes=big']) {
      assert.throws(() => parseLazyFetch(bad), (e: unknown) => isNarfsError(e) && e.code === 'ERR_USAGE', bad);
    }
  });

  it('reaches the mount configuration', () => {
    const c = buildMountConfig({ mountpoint: '/mnt', datalake: ['file:///x'], noRequireSigs: true, lazyFetch: 'neighbour-bytes=512K' });
    assert.deepEqual(c.lazyFetch, { neighbourBytes: 512 * 1024 });
  });
});
