/**
 * LevelMetadataCache on a real LevelDB in a temp dir: positive entries persist, negative
 * entries expire, a narinfo replaces a negative entry, and a second open of a database that
 * is in use fails with ERR_CACHE_LOCKED (classic-level reports it as LEVEL_DATABASE_NOT_OPEN
 * whose cause has code LEVEL_LOCKED).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Level } from 'level';

import { isNarfsError, NarfsError } from '../../../src/errors.js';
import { LARGE_LISTING, LevelMetadataCache } from '../../../src/cache/level-metadata-cache.js';
import type { NarInfoEntry } from '../../../src/cache/metadata-cache.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

const H1 = '0123456789abcdfghijklmnpqrsvwxyz';
const H2 = '11111111111111111111111111111111';
const H3 = '22222222222222222222222222222222';
const H4 = '33333333333333333333333333333333';

function entry(hashPart: string, name: string): NarInfoEntry {
  return {
    name: `${hashPart}-${name}`,
    text: `StorePath: /nix/store/${hashPart}-${name}\nURL: nar/x.nar\nNarHash: sha256:abc\nNarSize: 1\n`,
    source: 'file:///datalake',
    fetchedAt: 1_700_000_000_000,
  };
}

/**
 * Waits until the wall clock has passed `instant` (ms since the epoch). The TTL tests
 * wait for the expiry itself, computed from the times around the write, so a slow
 * machine only makes them wait less, never fail.
 */
async function untilAfter(instant: number): Promise<void> {
  while (Date.now() <= instant) await new Promise((r) => setTimeout(r, instant - Date.now() + 1));
}

/**
 * TTL of a negative entry that must still be live at the next read: the cache reads the
 * wall clock itself (no clock hook in src), so the margin covers a stall of the loaded
 * machine between a write and the read after it.
 */
const LIVE_TTL_MS = 3_000;

describe('LevelMetadataCache', () => {
  let dir: string;
  let dbDir: string;
  const opened: LevelMetadataCache[] = [];

  async function open(): Promise<LevelMetadataCache> {
    const c = await LevelMetadataCache.open(dbDir);
    opened.push(c);
    return c;
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-meta-'));
    dbDir = join(dir, 'meta');
  });

  afterEach(async () => {
    for (const c of opened.splice(0)) await c.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });

  it('is empty when new', async () => {
    const c = await open();
    assert.equal(await c.getNarInfo(H1), undefined);
    assert.equal(await c.getListing(H1), undefined);
    assert.deepEqual(await c.knownNames(), []);
  });

  it('round-trips positive entries, and they survive close and reopen', async () => {
    const c = await open();
    const e1 = entry(H1, 'hello-2.12');
    const e2 = entry(H2, 'zlib');
    await c.putNarInfo(H1, e1);
    await c.putNarInfo(H2, e2);
    assert.deepEqual(await c.getNarInfo(H1), { kind: 'positive', entry: e1 });
    assert.deepEqual(await c.getNarInfo(H2), { kind: 'positive', entry: e2 });
    assert.equal(await c.getNarInfo(H3), undefined);
    await c.close();
    opened.length = 0;

    const again = await open();
    assert.deepEqual(await again.getNarInfo(H1), { kind: 'positive', entry: e1 });
    assert.deepEqual(await again.getNarInfo(H2), { kind: 'positive', entry: e2 });
    assert.deepEqual((await again.knownNames()).sort(), [e1.name, e2.name].sort());
  });

  it('overwrites a positive entry with a newer one', async () => {
    const c = await open();
    await c.putNarInfo(H1, entry(H1, 'old'));
    const newer = { ...entry(H1, 'old'), source: 'https://cache.example', fetchedAt: 2 };
    await c.putNarInfo(H1, newer);
    assert.deepEqual(await c.getNarInfo(H1), { kind: 'positive', entry: newer });
    assert.deepEqual(await c.knownNames(), [newer.name]);
  });

  it('keeps a negative entry until its TTL, then forgets it', async () => {
    const c = await open();
    const before = Date.now();
    await c.putNegative(H1, LIVE_TTL_MS);
    const written = Date.now();
    const got = await c.getNarInfo(H1);
    assert.equal(got?.kind, 'negative');
    assert.ok(got?.kind === 'negative');
    assert.ok(got.expiresAt >= before + LIVE_TTL_MS && got.expiresAt <= written + LIVE_TTL_MS, `expiresAt ${got.expiresAt}`);
    assert.equal(await c.getNarInfo(H2), undefined, 'one negative entry does not hide another path');
    await untilAfter(got.expiresAt);
    assert.equal(await c.getNarInfo(H1), undefined);
    assert.deepEqual(await c.knownNames(), [], 'negative entries are not known names');
  });

  it('deletes an expired negative entry from the database', async () => {
    const c = await open();
    await c.putNegative(H1, 30);
    await untilAfter(Date.now() + 30); // the entry expires at most 30 ms after the write
    assert.equal(await c.getNarInfo(H1), undefined);
    await c.close();
    opened.length = 0;
    const raw = new Level<string, string>(dbDir, { valueEncoding: 'utf8' });
    try {
      assert.equal(await raw.get(`neg!${H1}`), undefined);
    } finally {
      await raw.close();
    }
  });

  it('stores no negative entry for a TTL of 0', async () => {
    const c = await open();
    await c.putNegative(H1, 0);
    assert.equal(await c.getNarInfo(H1), undefined);
  });

  it('putNarInfo clears a negative entry of the same path', async () => {
    const c = await open();
    await c.putNegative(H1, 60_000);
    assert.equal((await c.getNarInfo(H1))?.kind, 'negative');
    const e = entry(H1, 'pushed-later');
    await c.putNarInfo(H1, e);
    assert.deepEqual(await c.getNarInfo(H1), { kind: 'positive', entry: e });
    await c.close();
    opened.length = 0;
    const raw = new Level<string, string>(dbDir, { valueEncoding: 'utf8' });
    try {
      assert.equal(await raw.get(`neg!${H1}`), undefined, 'the negative key is gone, not just shadowed');
    } finally {
      await raw.close();
    }
  });

  it('negative entries survive reopen until they expire', async () => {
    const c = await open();
    await c.putNegative(H2, 60_000);
    await c.close();
    opened.length = 0;
    const again = await open();
    assert.equal((await again.getNarInfo(H2))?.kind, 'negative');
  });

  it('knownNames lists the basenames of positive entries only, not listings', async () => {
    const c = await open();
    await c.putNarInfo(H2, entry(H2, 'b'));
    await c.putNarInfo(H1, entry(H1, 'a'));
    await c.putNegative(H3, 60_000);
    await c.putListing(H3, '{"version":1,"root":{"type":"directory","entries":{}}}');
    assert.deepEqual((await c.knownNames()).sort(), [`${H1}-a`, `${H2}-b`]);
  });

  it('round-trips listings verbatim, and they survive reopen', async () => {
    const c = await open();
    const json = '{"version":1,"root":{"type":"regular","size":3,"executable":true,"narOffset":96}}';
    const weird = '{"root":{"type":"symlink","target":"é/😀"},"version":1}';
    await c.putListing(H1, json);
    await c.putListing(H2, weird);
    assert.equal(await c.getListing(H1), json);
    assert.equal(await c.getListing(H2), weird);
    assert.equal(await c.getListing(H3), undefined);
    assert.equal(await c.getNarInfo(H1), undefined, 'a listing is not a narinfo');
    await c.close();
    opened.length = 0;
    const again = await open();
    assert.equal(await again.getListing(H1), json);
    assert.equal(await again.getListing(H2), weird);
  });

  it('a second open of a database in use fails with ERR_CACHE_LOCKED, and works once it is closed', async () => {
    const first = await open();
    await first.putNarInfo(H1, entry(H1, 'kept'));
    let caught: unknown;
    try {
      await open();
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof NarfsError, `expected a NarfsError, got ${String(caught)}`);
    assert.equal(caught.code, 'ERR_CACHE_LOCKED');
    // The shape classic-level gives today, which the mapping relies on.
    const cause = caught.cause as { code?: string; cause?: { code?: string; message?: string } };
    assert.equal(cause.code, 'LEVEL_DATABASE_NOT_OPEN');
    assert.equal(cause.cause?.code, 'LEVEL_LOCKED');
    assert.match(String(cause.cause?.message), /lock/i);

    await first.close();
    opened.length = 0;
    const second = await open();
    assert.equal((await second.getNarInfo(H1))?.kind, 'positive');
  });

  it('a directory that cannot be a database fails with ERR_CACHE_IO', async () => {
    await writeFile(dbDir, 'not a directory');
    await assert.rejects(LevelMetadataCache.open(dbDir), isCode('ERR_CACHE_IO'));
  });

  it('after close, reads and writes fail with ERR_CACHE_IO', async () => {
    const c = await open();
    await c.close();
    opened.length = 0;
    await assert.rejects(c.getNarInfo(H1), isCode('ERR_CACHE_IO'));
    await assert.rejects(c.getListing(H1), isCode('ERR_CACHE_IO'));
    await assert.rejects(c.putNegative(H1, 1000), isCode('ERR_CACHE_IO'));
    await assert.rejects(c.putListing(H1, '{}'), isCode('ERR_CACHE_IO'));
  });

  // Regression (src/cache/level-metadata-cache.ts): putNarInfo used to build its chained batch with
  // `this.#db.batch()` outside #wrap, and abstract-level throws LEVEL_DATABASE_NOT_OPEN from
  // batch() synchronously, so the raw `Error: Database is not open` escaped (not a
  // NarfsError), and knownNames() iterated without any wrapping.
  it('after close, putNarInfo and knownNames also fail with ERR_CACHE_IO (not a raw level Error)', async () => {
    const c = await open();
    await c.close();
    opened.length = 0;
    await assert.rejects(c.putNarInfo(H1, entry(H1, 'x')), isCode('ERR_CACHE_IO'));
    await assert.rejects(c.knownNames(), isCode('ERR_CACHE_IO'));
  });

  it('a large listing stays out of LevelDB (a file of its own); a damaged file reads as not cached', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'narfs-meta-large-'));
    try {
      const cache = await LevelMetadataCache.open(dir);
      const small = JSON.stringify({ version: 1, root: { type: 'regular', size: 1 } });
      const big = JSON.stringify({ version: 1, root: { type: 'directory', entries: Object.fromEntries(
        Array.from({ length: 40_000 }, (_, i) => [`file-é${i}`, { type: 'regular', size: i, narOffset: i * 2 }])) } });
      const bytesMarked = `\u0000${'\u00e9\u00ff'.repeat(LARGE_LISTING)}`; // the marked form of a non-UTF-8 .ls
      // Non-BMP characters across every chunk boundary of the write (surrogate pairs must not be split).
      const astral = `{"x":"${'\u{1F600}a'.repeat(LARGE_LISTING)}"}`;
      assert.ok(big.length >= LARGE_LISTING);
      await cache.putListing(H1, small);
      await cache.putListing(H2, big);
      await cache.putListing(H3, bytesMarked);
      await cache.putListing(H4, astral);
      assert.equal(await cache.getListing(H4), astral);
      // LevelDB's own files (its log holds every put until a table is written) stay small.
      const sizes = await Promise.all((await readdir(dir)).filter((f) => /\.(log|ldb|sst)$/.test(f))
        .map(async (f) => (await stat(join(dir, f))).size));
      assert.ok(sizes.every((n) => n < 64 * 1024), `LevelDB files ${JSON.stringify(sizes)}`);
      assert.equal(await cache.getListing(H2), big);
      assert.equal(await cache.getListing(H3), bytesMarked);
      await cache.close();
      const again = await LevelMetadataCache.open(dir);
      try {
        assert.equal(await again.getListing(H2), big);
        assert.equal(await again.getListing(H1), small);
        // One byte changed: not served (the caller fetches the .ls again and puts it back).
        const file = join(dir, 'listings', `${H2}.ls`);
        const bytes = await readFile(file);
        bytes[100] = bytes[100]! ^ 1;
        await writeFile(file, bytes);
        assert.equal(await again.getListing(H2), undefined);
        await again.putListing(H2, big);
        assert.equal(await again.getListing(H2), big);
        await again.deleteListing(H2);
        assert.equal(await again.getListing(H2), undefined);
        await assert.rejects(stat(file), /ENOENT/);
      } finally {
        await again.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
