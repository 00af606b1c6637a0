/**
 * The whole-NAR path over every fixture datalake (one per compression Nix writes): each
 * store path's NAR is verified, unpacked into the BlobStore and its tree kept. Checked:
 * the tree and the blobs put back together are the NAR itself (same SHA-256 as the
 * narinfo's NarHash, same NarSize), every blob hashes to its name, the tree keeps
 * whole-file hashes only (no chunk hashes: never read by range), and identical files across (and within) store paths are stored once, with
 * the dedupe hits counted exactly. A second stack on the same cache fetches nothing.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures, type FixtureDatalakeName } from '../support/fixtures.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { parseStorePath } from '../../src/nix/store-path.js';
import { parseHash } from '../../src/nix/hash.js';
import { chunkCount, type NarIndex } from '../../src/nix/nar-index.js';
import { NarTokenWriter } from '../../src/nix/nar-writer.js';
import { stringBytes, type NarNode } from '../../src/nix/nar-listing.js';
import type { BlobStore } from '../../src/cache/blob-store.js';

const DATALAKES: FixtureDatalakeName[] = ['none', 'xz-nols', 'zstd', 'bzip2', 'br-nols', 'gzip'];

/** The NAR of `idx.root` with each file's bytes read from the BlobStore. */
async function narFromTree(idx: NarIndex, blobs: BlobStore): Promise<Buffer> {
  const w = new NarTokenWriter();
  w.str('nix-archive-1');
  const byOffset = new Map(idx.files.map((f) => [f.narOffset, f]));
  const node = async (n: NarNode): Promise<void> => {
    w.strs('(', 'type');
    if (n.type === 'regular') {
      w.str('regular');
      if (n.executable) w.strs('executable', '');
      w.str('contents');
      assert.equal(w.byteLength + 8, n.narOffset, 'narOffset as Nix records it');
      const f = byOffset.get(n.narOffset);
      if (n.size === 0) w.str(Buffer.alloc(0));
      else w.str(await readFile(blobs.completePath(f!.sha256, f!.size)!));
    } else if (n.type === 'symlink') {
      w.strs('symlink', 'target', stringBytes(n.target));
    } else {
      w.str('directory');
      for (const [name, child] of n.entries) {
        w.strs('entry', '(', 'name', stringBytes(name), 'node');
        await node(child);
        w.str(')');
      }
    }
    w.str(')');
  };
  await node(idx.root);
  return w.bytes();
}

describe('integration: whole NARs unpacked into the content-addressed cache', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let stack: StoreStack | undefined;

  before(async () => {
    fixtures = await loadFixtures();
    root = await mkdtemp(join(tmpdir(), 'narfs-nar-unpack-'));
  });
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  for (const lake of DATALAKES) {
    it(`${lake}: trees and blobs give back every NAR; identical files are stored once`, async () => {
      const logs: LogLine[] = [];
      const cacheDir = join(root, lake);
      const open = () => openStoreStack({
        datalakes: [fixtures.datalakes[lake].url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
        requireSigs: true, cacheDir, negativeTtlMs: 1000,
      }, captureLogger(logs));
      stack = await open();
      const signal = AbortSignal.timeout(10 * 60_000);
      const expected = new Map<string, number>(); // sha256 hex → size, over every file of every path
      let files = 0;
      for (const p of fixtures.paths) {
        const info = (await stack.infos.get(parseStorePath(p.storePath), signal))!;
        const m = await stack.materialiser.ensure(info, signal);
        assert.equal(m.source, 'nar');
        assert.equal(m.index.storePath, p.storePath);
        const nar = await narFromTree(m.index, stack.blobs);
        assert.equal(nar.length, p.narSize, `${p.role}: NarSize`);
        assert.ok(createHash('sha256').update(nar).digest().equals(parseHash(p.narHash).digest), `${p.role}: NarHash`);
        for (const f of m.index.files) {
          const bytes: Buffer = await readFile(stack.blobs.completePath(f.sha256, f.size)!);
          assert.ok(createHash('sha256').update(bytes).digest().equals(f.sha256), 'blob hashes to its name');
          // A tree made from a whole NAR keeps whole-file hashes only: its files are
          // committed whole and never read by range.
          assert.equal(m.index.wholeOnly, true);
          assert.deepEqual(f.chunkHashes, chunkCount(f.size, m.index.chunkSize) > 1 ? Buffer.alloc(0) : f.sha256);
          expected.set(f.sha256.toString('hex'), f.size);
          files++;
        }
      }
      const st = stack.blobs.stats();
      assert.equal(st.blobs, expected.size, 'one blob per distinct contents');
      assert.equal(st.bytes, [...expected.values()].reduce((a, b) => a + b, 0));
      assert.equal(stack.materialiser.dedupeHits, files - expected.size, 'every repeated file counted as a dedupe hit');
      assert.ok(files - expected.size > 0, 'the fixtures do repeat some files');
      assert.equal(stack.materialiser.fetches, fixtures.paths.length);
      console.log(`      ${lake}: ${fixtures.paths.length} paths, ${files} files, ${expected.size} blobs, ${files - expected.size} dedupe hits`);
      await stack.close();
      // Reopened: everything is served from the cache, nothing fetched.
      stack = await open();
      for (const p of fixtures.paths) {
        const info = (await stack.infos.get(parseStorePath(p.storePath), signal))!;
        await stack.materialiser.ensure(info, signal);
      }
      assert.equal(stack.materialiser.fetches, 0, 'a warm cache fetches nothing');
    });
  }
});
