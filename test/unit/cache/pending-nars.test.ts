/**
 * PendingNars on a real temp directory and a real BlobStore: a kept staging file is moved
 * in by rename, with its reservation in the bound (counted once, nothing evicted for it),
 * and handed out once (its reservation adopted by the taker, or released on drop), only for the NarHash and NarSize its name states (an
 * entry of the same path naming another NAR is removed); every entry counts in the
 * BlobStore's bytes until dropped; the open removes what is not an entry (a foreign
 * name, a size that is not the one named, a directory), entries older than a week, a
 * second entry of one path (the newest stays) and those beyond a quarter of the bound
 * (oldest first); trimTo (narfs gc) removes the oldest first until the bound holds; a
 * store path name too long for a file name is kept under its hash part.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobStore } from '../../../src/cache/blob-store.js';
import { PendingNars } from '../../../src/cache/pending-nars.js';
import { silentLogger } from '../../../src/log.js';

const HASH_A = 'a'.repeat(32);
const HASH_B = 'b'.repeat(32);
const HASH_C = 'c'.repeat(32);
const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
const entryName = (hashPart: string, narHash: Buffer, size: number) => `${hashPart}.${narHash.toString('hex')}.${size}.nar`;

describe('PendingNars', () => {
  let dir: string;
  const stores: BlobStore[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-pending-'));
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function blobs(maxBytes?: number): Promise<BlobStore> {
    const s = await BlobStore.open(dir, maxBytes === undefined ? {} : { maxBytes });
    stores.push(s);
    return s;
  }

  async function staging(bytes: number): Promise<string> {
    const p = join(dir, 'tmp', `job.${Math.random().toString(16).slice(2)}`);
    await mkdir(p);
    await writeFile(join(p, 'nar'), Buffer.alloc(bytes, 7));
    return join(p, 'nar');
  }

  it('a keep near the bound evicts nothing: the staging file\'s reservation is handed over', async () => {
    const b = await blobs(1000);
    const t = b.tempPath();
    await writeFile(t, Buffer.alloc(400, 1));
    const blob = createHash('sha256').update(Buffer.alloc(400, 1)).digest();
    await b.commitFiles([{ sha: blob, size: 400, tempPath: t }]);
    const pending = await PendingNars.open(dir, b, silentLogger);
    const held = b.reserve(500);
    assert.equal(await pending.keep(`${HASH_A}-x`, digest('x'), 500, await staging(500), held), true);
    assert.equal(b.stats().bytes, 900);
    assert.ok(b.completePath(blob, 400) !== undefined, 'the blob was not evicted');
    assert.equal(b.stats().evictions, 0);
  });

  it('keeps a staging file by rename, counts it in the bound, and hands it out once for its NarHash and NarSize', async () => {
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger);
    const file = await staging(1000);
    const h = digest('a');
    assert.equal(await pending.keep(`${HASH_A}-name-1.0`, h, 1000, file, b.reserve(1000)), true);
    await assert.rejects(stat(file), 'moved, not copied');
    assert.deepEqual(await readdir(pending.dir), [entryName(HASH_A, h, 1000)]);
    assert.equal(b.stats().bytes, 1000);
    assert.equal(pending.take(`${HASH_B}-other`, h, 1000), undefined);
    const got = pending.take(`${HASH_A}-name-1.0`, h, 1000);
    assert.ok(got);
    assert.equal(got.narSize, 1000);
    assert.equal((await stat(got.path)).size, 1000);
    assert.equal(pending.take(`${HASH_A}-name-1.0`, h, 1000), undefined, 'handed out once');
    await got.drop();
    await got.drop();
    assert.equal(b.stats().bytes, 0, 'released once');
    // Adopted: the taker holds the bytes in the bound until it lets go.
    await pending.keep(`${HASH_B}-b`, h, 500, await staging(500), b.reserve(500));
    const taken = pending.take(`${HASH_B}-b`, h, 500)!;
    const adopted = taken.adopt();
    await taken.drop();
    assert.equal(b.stats().bytes, 500, 'still counted: adopted');
    adopted();
    assert.equal(b.stats().bytes, 0);
    assert.deepEqual(await readdir(pending.dir), []);
    pending.close();
  });

  it('removes an entry of the same path that names another NAR instead of handing it out', async () => {
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger);
    await pending.keep(`${HASH_A}-x`, digest('old'), 10, await staging(10), b.reserve(10));
    assert.equal(pending.take(`${HASH_A}-x`, digest('new'), 10), undefined);
    assert.equal(pending.take(`${HASH_A}-x`, digest('old'), 10), undefined, 'gone');
    // The removal runs in the background: wait for the directory to empty.
    for (let i = 0; i < 100 && (await readdir(pending.dir)).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(await readdir(pending.dir), []);
    assert.equal(b.stats().bytes, 0);
  });

  it('a newer keep of the same path replaces the older entry', async () => {
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger);
    await pending.keep(`${HASH_A}-x`, digest('old'), 10, await staging(10), b.reserve(10));
    await pending.keep(`${HASH_A}-x`, digest('new'), 20, await staging(20), b.reserve(20));
    for (let i = 0; i < 100 && (await readdir(pending.dir)).length > 1; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(await readdir(pending.dir), [entryName(HASH_A, digest('new'), 20)]);
    assert.equal(b.stats().bytes, 20);
    assert.equal(pending.size, 1);
  });

  it('the open keeps the entries and removes what is not one, what is stale, a second entry of a path and what is beyond a quarter of the bound', async () => {
    const pdir = join(dir, 'pending');
    await mkdir(pdir, { recursive: true });
    const now = Date.now();
    const put = async (name: string, size: number, ageMs: number) => {
      await writeFile(join(pdir, name), Buffer.alloc(size));
      const t = new Date(now - ageMs);
      await utimes(join(pdir, name), t, t);
    };
    const keptA = entryName(HASH_A, digest('a'), 100);
    await put(keptA, 100, 1000);
    await put(entryName(HASH_A, digest('a-older'), 100), 100, 2000); // a second entry of path A, older
    await put(entryName(HASH_B, digest('b'), 50), 49, 1000); // size other than the one named
    await put(entryName(HASH_C, digest('c'), 100), 100, 8 * 24 * 3600 * 1000); // older than a week
    await put('notes.txt', 5, 0);
    await put(`${'e'.repeat(32)}.${digest('e').toString('hex')}.10.nar`, 10, 0); // 'e' is not in Nix's base-32
    await mkdir(join(pdir, entryName(HASH_B, digest('dir'), 0)));
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger, now);
    assert.deepEqual(await readdir(pdir), [keptA]);
    assert.equal(pending.size, 1);
    assert.equal(pending.bytes, 100);
    assert.equal(b.stats().bytes, 100);
    pending.close();
    assert.equal(b.stats().bytes, 0, 'close lets go of the bytes');
    assert.deepEqual(await readdir(pdir), [keptA], 'close keeps the files');

    // Within a quarter of a bound of 1000 bytes: 250; the newest stay.
    await rm(join(pdir, keptA));
    await put(entryName(HASH_A, digest('a'), 100), 100, 3000);
    await put(entryName(HASH_B, digest('b'), 100), 100, 2000);
    await put(entryName(HASH_C, digest('c'), 100), 100, 1000);
    const bounded = await blobs(1000);
    const p2 = await PendingNars.open(dir, bounded, silentLogger, now);
    assert.deepEqual((await readdir(pdir)).sort(), [entryName(HASH_B, digest('b'), 100), entryName(HASH_C, digest('c'), 100)]);
    assert.equal(bounded.stats().bytes, 200);
    p2.close();
  });

  it('trimTo removes the oldest entries until the bound holds', async () => {
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger);
    await pending.keep(`${HASH_A}-a`, digest('a'), 100, await staging(100), b.reserve(100));
    await new Promise((r) => setTimeout(r, 5));
    await pending.keep(`${HASH_B}-b`, digest('b'), 100, await staging(100), b.reserve(100));
    await new Promise((r) => setTimeout(r, 5));
    await pending.keep(`${HASH_C}-c`, digest('c'), 100, await staging(100), b.reserve(100));
    assert.deepEqual(await pending.trimTo(300), { freed: 0, removed: 0 });
    assert.deepEqual(await pending.trimTo(150), { freed: 200, removed: 2 });
    assert.deepEqual(await readdir(pending.dir), [entryName(HASH_C, digest('c'), 100)]);
    assert.equal(b.stats().bytes, 100);
  });

  it('keeps a path whose name is too long for a file name under its hash part', async () => {
    const b = await blobs();
    const pending = await PendingNars.open(dir, b, silentLogger);
    const long = `${HASH_A}-${'n'.repeat(211)}`;
    assert.equal(await pending.keep(long, digest('l'), 10, await staging(10), b.reserve(10)), true);
    assert.ok(pending.take(long, digest('l'), 10));
  });
});
