/**
 * Reads of a path whose NAR just matched are served by the native engine from the NAR's
 * staging file while the path's files are committed to the blob store in the background
 * (LazyStore.contentFile → Materialiser.stagedLocation); when the commit ends and removes
 * the staging file, the engine is told (watchDropped) and lets go of it, and a file kept
 * open across that moment keeps reading right bytes.
 *
 * Real mount, real cache, an unindexed zstd fixture datalake written by real Nix. The
 * commit is held by reads noted every 10 ms against a pause of 3 s (commitQuietMs), so
 * nothing depends on the machine's speed: the staging file stays until the test lets go.
 * Skipped when NARFS_FUSE_BACKEND selects fuse-native.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
import { withMount } from '../support/mount-harness.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import type { MountConfig } from '../../src/config/mount-config.js';
import type { NarNode, NarRegular } from '../../src/nix/nar-listing.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The regular file at `rel` (slash-separated) under `root`. */
function nodeAt(root: NarNode, rel: string): NarRegular {
  let n: NarNode | undefined = root;
  for (const part of rel.split('/').filter(Boolean)) n = n?.type === 'directory' ? n.entries.get(part) : undefined;
  assert.ok(n?.type === 'regular', `${rel} is a regular file`);
  return n;
}

describe('e2e: native engine, reads from the staging file of a just verified NAR', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native') this.skip();
    fixtures = await loadFixtures();
  });

  it('serves a just verified file in C from the staging file; an open file reads right across the commit\'s end', async () => {
    const lake = fixtures.datalakes['zstd']!;
    const large = pathByRole(fixtures, 'large-file');
    const name = storePathBase(parseStorePath(large.storePath));
    // Held by the reads noted below; the cap is far above this test's waits.
    const extra = { useIndexes: false, commitQuietMs: 3000, commitYieldMaxMs: 600_000 } as Partial<MountConfig>;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey, extra }, async (m) => {
      const hold = setInterval(() => m.running.materialiser.noteRead(), 10);
      try {
        const file = join(m.mnt, name, fixtures.largeFile.relPath);
        // The first read fetches and verifies the NAR (through JS).
        const first = await open(file, 'r');
        const head = Buffer.alloc(4096);
        assert.equal((await first.read(head, 0, head.length, 0)).bytesRead, head.length);
        await first.close();
        const root = await m.running.store.resolve(name, AbortSignal.timeout(60_000));
        const narOffset = nodeAt(root!, fixtures.largeFile.relPath).narOffset;
        // Opened again: C is given the file's place in the staging file and reads it there.
        const before = m.running.engine.stats()!;
        const fh = await open(file, 'r');
        const size = fixtures.largeFile.size;
        const got = Buffer.alloc(size);
        const half = Math.floor(size / 2);
        let at = 0;
        while (at < half) at += (await fh.read(got, at, Math.min(1 << 20, half - at), at)).bytesRead;
        const mid = m.running.engine.stats()!;
        assert.ok(mid.bytesInC - before.bytesInC >= half, `${mid.bytesInC - before.bytesInC} of ${half} bytes read in C`);
        const loc = m.running.store.contentFile(name, narOffset);
        assert.ok(loc && basename(dirname(dirname(loc.path))) === 'tmp' && loc.offset === narOffset, `located in the staging file: ${JSON.stringify(loc)}`);
        // Let the commit run and end: the staging file goes, the engine lets go of it.
        clearInterval(hold);
        await m.waitForLog((l) => l.msg === 'materialised' && l.fields['path'] === name, 'the commit of the path');
        while (at < size) at += (await fh.read(got, at, Math.min(1 << 20, size - at), at)).bytesRead;
        await fh.close();
        // Every byte right: the same as the committed, verified blob now serves.
        const now = m.running.store.contentFile(name, narOffset);
        assert.ok(now && now.offset === 0, 'a blob once committed');
        assert.equal(sha(got), sha(await readFile(now.path)));
        assert.equal(sha(got), sha(await readFile(file)));
      } finally {
        clearInterval(hold);
      }
    });
  });
});
