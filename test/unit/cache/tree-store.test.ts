/**
 * TreeStore on a real temp directory: a tree is found only for the narinfo it was checked
 * against, a damaged one is dropped, the count bound evicts the least recently used but
 * never a pinned one, and `verify` finds a flipped bit.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { TreeStore } from '../../../src/cache/tree-store.js';
import { IndexBuilder } from '../../../src/nix/nar-index-builder.js';
import { NarParser } from '../../../src/nix/nar-parser.js';
import { writeNar } from '../../../src/nix/nar-writer.js';
import { parseStorePath } from '../../../src/nix/store-path.js';
import type { NarIndex } from '../../../src/nix/nar-index.js';

function indexOf(storePath: string, text: string): NarIndex {
  const nar = writeNar({ type: 'directory', entries: { f: { type: 'regular', contents: text }, l: { type: 'symlink', target: 'f' } } });
  const b = new IndexBuilder(64 * 1024);
  const p = new NarParser(b);
  p.write(nar);
  return b.finish(p.end(), { algo: 'sha256', digest: createHash('sha256').update(nar).digest() }, nar.length, storePath);
}

const SP = (c: string, name: string) => `/nix/store/${c.repeat(32)}-${name}`;
const record = (idx: NarIndex) => ({ storePath: parseStorePath(idx.storePath), narHash: idx.narHash, narSize: idx.narSize });

describe('TreeStore', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'narfs-trees-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('keeps a tree with its source and finds it only for the narinfo it was checked against', async () => {
    const trees = await TreeStore.open(dir);
    const idx = indexOf(SP('a', 'hello'), 'hi\n');
    await trees.put(idx, 'nar');
    const found = await trees.lookup(record(idx));
    assert.equal(found.state, 'ok');
    if (found.state !== 'ok') return;
    assert.equal(found.tree.source, 'nar');
    assert.deepEqual(found.tree.index.files, idx.files);
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    // Reopened: still there. Another NarHash in force: dropped.
    const again = await TreeStore.open(dir);
    assert.deepEqual(again.names(), [`${'a'.repeat(32)}-hello`]);
    const other = { ...record(idx), narHash: { algo: 'sha256' as const, digest: Buffer.alloc(32, 7) } };
    const stale = await again.lookup(other);
    assert.equal(stale.state, 'damaged');
    if (stale.state === 'damaged') assert.equal(stale.error.code, 'ERR_INDEX_BINDING');
    assert.deepEqual(await readdir(join(dir, 'trees')), []);
    assert.equal((await again.lookup(record(idx))).state, 'absent');
  });

  it('drops a tree whose bytes changed on disk, in lookup and in verify', async () => {
    const trees = await TreeStore.open(dir);
    const a = indexOf(SP('a', 'a'), 'aaa');
    const b = indexOf(SP('b', 'b'), 'bbb');
    const c = indexOf(SP('c', 'c'), 'ccc');
    for (const i of [a, b, c]) await trees.put(i, 'signed');
    for (const n of [`${'a'.repeat(32)}-a`, `${'b'.repeat(32)}-b`]) {
      const p = join(dir, 'trees', n);
      const bytes = await readFile(p);
      bytes[bytes.length - 5] = bytes[bytes.length - 5]! ^ 1;
      await chmod(p, 0o644);
      await writeFile(p, bytes);
    }
    const r = await trees.lookup(record(a));
    assert.equal(r.state, 'damaged');
    if (r.state === 'damaged') assert.equal(r.error.code, 'ERR_CACHE_CORRUPT');
    const v = await trees.verify();
    assert.equal(v.checked, 2);
    assert.deepEqual(v.dropped.map((d) => [d.name, d.error.code]), [[`${'b'.repeat(32)}-b`, 'ERR_CACHE_CORRUPT']]);
    assert.deepEqual(trees.names(), [`${'c'.repeat(32)}-c`]);
    assert.equal((await trees.lookup(record(c))).state, 'ok');
  });

  it('is bounded by count: the least recently used tree goes first, never a pinned one', async () => {
    const trees = await TreeStore.open(dir, { maxCount: 2 });
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((x) => indexOf(SP(x, x), x)) as [NarIndex, NarIndex, NarIndex, NarIndex];
    await trees.put(a, 'nar');
    await trees.put(b, 'nar');
    assert.equal((await trees.lookup(record(a))).state, 'ok'); // a used after b
    await trees.put(c, 'nar');
    assert.deepEqual(trees.names().sort(), [`${'a'.repeat(32)}-a`, `${'c'.repeat(32)}-c`]);
    const unpin = trees.pin(`${'a'.repeat(32)}-a`);
    await trees.put(d, 'nar');
    assert.deepEqual(trees.names().sort(), [`${'a'.repeat(32)}-a`, `${'d'.repeat(32)}-d`], 'c went, pinned a stayed');
    unpin();
    assert.equal((await readdir(join(dir, 'trees'))).length, 2);
  });
});
