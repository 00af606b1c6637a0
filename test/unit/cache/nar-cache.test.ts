/**
 * NarCache on a real temp directory: a NAR appears only through commit (listing renamed
 * into place before the NAR), abort leaves nothing, init() empties tmp/, and a listing
 * without its NAR is never served.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { isNarfsError } from '../../../src/errors.js';
import { NarCache } from '../../../src/cache/nar-cache.js';
import { listingToJson } from '../../../src/nix/nar-listing.js';
import { parseNar } from '../../../src/nix/nar-parser.js';
import { writeNar } from '../../../src/nix/nar-writer.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

const NAME1 = '0123456789abcdfghijklmnpqrsvwxyz-hello-2.12';
const NAME2 = '11111111111111111111111111111111-zlib';
const NAR = writeNar({
  type: 'directory',
  entries: { bin: { type: 'directory', entries: { hello: { type: 'regular', contents: 'hi\n', executable: true } } } },
});
const LISTING = listingToJson(parseNar(NAR));
const RECORD = { narHash: { algo: 'sha256' as const, digest: createHash('sha256').update(NAR).digest() }, narSize: NAR.length };

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

describe('NarCache', () => {
  let dir: string;
  let cache: NarCache;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-narcache-'));
    cache = new NarCache(dir);
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function store(name: string, bytes: Buffer, listing: Uint8Array): Promise<void> {
    const t = await cache.createTemp(name);
    await t.handle.write(bytes);
    await t.commit(listing, RECORD);
  }

  it('init() creates nar/ and tmp/, and empties a tmp/ left by a crash', async () => {
    await mkdir(join(dir, 'tmp', 'nested'), { recursive: true });
    await writeFile(join(dir, 'tmp', `${NAME1}.123.deadbeef.nar`), 'half a NAR');
    await writeFile(join(dir, 'tmp', 'nested', 'x'), 'x');
    await cache.init();
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    assert.deepEqual(await readdir(join(dir, 'nar')), []);
  });

  it('init() keeps the NARs already cached', async () => {
    await cache.init();
    await store(NAME1, NAR, LISTING);
    await new NarCache(dir).init();
    assert.equal(await cache.has(NAME1), true);
    assert.deepEqual(await cache.readListing(NAME1), LISTING);
  });

  it('init() on a path that is a file fails with ERR_CACHE_IO', async () => {
    const file = join(dir, 'file');
    await writeFile(file, '');
    await assert.rejects(new NarCache(file).init(), isCode('ERR_CACHE_IO'));
  });

  it('commit puts the NAR and its listing in nar/ and leaves tmp/ empty', async () => {
    await cache.init();
    const t = await cache.createTemp(NAME1);
    assert.ok(t.path.startsWith(join(dir, 'tmp') + '/'), t.path);
    await t.handle.write(NAR);
    assert.equal(await cache.has(NAME1), false, 'nothing is visible before commit');
    assert.equal(await cache.readListing(NAME1), undefined);
    assert.deepEqual(await cache.cachedNames(), []);
    await t.commit(LISTING, RECORD);

    assert.equal(cache.narPath(NAME1), join(dir, 'nar', `${NAME1}.nar`));
    assert.deepEqual(await readFile(cache.narPath(NAME1)), NAR);
    assert.deepEqual(await readFile(join(dir, 'nar', `${NAME1}.listing.json`)), LISTING);
    assert.deepEqual((await readdir(join(dir, 'nar'))).sort(), [`${NAME1}.listing.json`, `${NAME1}.nar`, `${NAME1}.verified.json`]);
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    assert.equal(await exists(t.path), false);
    assert.equal(await cache.has(NAME1), true);
    assert.deepEqual(await cache.readListing(NAME1), LISTING);
  });

  it('commit writes the listing before the NAR: when the NAR cannot be renamed, only the listing is there and it is not served', async () => {
    await cache.init();
    // A directory where the NAR should go makes the last rename fail (EISDIR).
    await mkdir(cache.narPath(NAME1));
    const t = await cache.createTemp(NAME1);
    await t.handle.write(NAR);
    await assert.rejects(t.commit(LISTING, RECORD), isCode('ERR_CACHE_IO'));
    assert.deepEqual(await readFile(join(dir, 'nar', `${NAME1}.listing.json`)), LISTING, 'listing was renamed first');
    assert.equal(await exists(t.path), false, 'the temp NAR is removed on failure');
    assert.equal(await cache.has(NAME1), false);
    assert.equal(await cache.readListing(NAME1), undefined);
  });

  it('abort leaves nothing behind, and may be called twice', async () => {
    await cache.init();
    const t = await cache.createTemp(NAME1);
    await t.handle.write(NAR);
    await t.abort();
    await t.abort();
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    assert.deepEqual(await readdir(join(dir, 'nar')), []);
    assert.equal(await cache.has(NAME1), false);
    assert.deepEqual(await cache.cachedNames(), []);
  });

  it('two temps of one name do not collide, and the last commit wins', async () => {
    await cache.init();
    const a = await cache.createTemp(NAME1);
    const b = await cache.createTemp(NAME1);
    assert.notEqual(a.path, b.path);
    await a.handle.write(Buffer.from('first'));
    await b.handle.write(NAR);
    await a.commit(Buffer.from('{"first":true}'), RECORD);
    await b.commit(LISTING, RECORD);
    assert.deepEqual(await readFile(cache.narPath(NAME1)), NAR);
    assert.deepEqual(await cache.readListing(NAME1), LISTING);
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
  });

  it('createTemp before init() fails with ERR_CACHE_IO', async () => {
    await assert.rejects(cache.createTemp(NAME1), isCode('ERR_CACHE_IO'));
  });

  it('cachedNames lists committed NARs only', async () => {
    assert.deepEqual(await cache.cachedNames(), [], 'no nar/ yet is no names, not an error');
    await cache.init();
    await store(NAME2, NAR, LISTING);
    await store(NAME1, NAR, LISTING);
    const pending = await cache.createTemp(`${'2'.repeat(32)}-pending`);
    await pending.handle.write(NAR);
    await writeFile(join(dir, 'nar', `${'3'.repeat(32)}-orphan.listing.json`), LISTING);
    assert.deepEqual((await cache.cachedNames()).sort(), [NAME1, NAME2].sort());
    await pending.abort();
  });

  it('readListing is undefined when the NAR is missing, even if a listing file exists', async () => {
    await cache.init();
    await writeFile(join(dir, 'nar', `${NAME1}.listing.json`), LISTING);
    assert.equal(await cache.has(NAME1), false);
    assert.equal(await cache.readListing(NAME1), undefined);
    assert.equal(await cache.readListing(NAME2), undefined);
  });

  it('readListing is undefined when the NAR exists without its listing', async () => {
    await cache.init();
    await writeFile(cache.narPath(NAME1), NAR);
    assert.equal(await cache.has(NAME1), true);
    assert.equal(await cache.readListing(NAME1), undefined);
  });

  describe('lookup and verify: what was verified can rot on disk', () => {
    const ok = async () => {
      await cache.init();
      await store(NAME1, NAR, LISTING);
    };
    const gone = async () => {
      assert.equal(await cache.has(NAME1), false);
      assert.deepEqual(await readdir(join(dir, 'nar')), [], 'the whole entry is dropped');
    };

    it('an intact entry is ok, with its listing', async () => {
      await ok();
      const r = await cache.lookup(NAME1, RECORD);
      assert.equal(r.state, 'ok');
      assert.deepEqual(listingToJson((r as { listing: Parameters<typeof listingToJson>[0] }).listing), LISTING);
      assert.deepEqual(await cache.verify(NAME1), { state: 'ok', bytes: NAR.length });
    });

    it('a missing entry is absent', async () => {
      await cache.init();
      assert.deepEqual(await cache.lookup(NAME1, RECORD), { state: 'absent' });
      assert.deepEqual(await cache.verify(NAME1), { state: 'absent' });
    });

    it('a truncated NAR is damaged (ERR_CACHE_CORRUPT) and dropped', async () => {
      await ok();
      await writeFile(cache.narPath(NAME1), NAR.subarray(0, NAR.length - 8));
      const r = await cache.lookup(NAME1, RECORD);
      assert.equal(r.state, 'damaged');
      assert.equal((r as { error: { code: string } }).error.code, 'ERR_CACHE_CORRUPT');
      await gone();
    });

    it('a corrupt listing is damaged and dropped, not a permanent parse error', async () => {
      await ok();
      await writeFile(join(dir, 'nar', `${NAME1}.listing.json`), '{"version":1,"root":');
      assert.equal((await cache.lookup(NAME1, RECORD)).state, 'damaged');
      await gone();
    });

    it('an entry verified against another NarHash (the narinfo changed) is dropped', async () => {
      await ok();
      const other = { narHash: { algo: 'sha256' as const, digest: Buffer.alloc(32, 7) }, narSize: NAR.length };
      assert.equal((await cache.lookup(NAME1, other)).state, 'damaged');
      await gone();
    });

    it('an entry without its record is dropped', async () => {
      await ok();
      await rm(join(dir, 'nar', `${NAME1}.verified.json`));
      assert.equal((await cache.lookup(NAME1, RECORD)).state, 'damaged');
      await gone();
    });

    it('a flipped bit passes the cheap lookup but not verify, which drops it', async () => {
      await ok();
      const flipped = Buffer.from(NAR);
      flipped[flipped.length - 20]! ^= 0x01;
      await writeFile(cache.narPath(NAME1), flipped);
      assert.equal((await cache.lookup(NAME1, RECORD)).state, 'ok', 'same size: only a hash finds it');
      const v = await cache.verify(NAME1);
      assert.equal(v.state, 'damaged');
      assert.equal((v as { error: { code: string } }).error.code, 'ERR_CACHE_CORRUPT');
      await gone();
    });
  });
});
