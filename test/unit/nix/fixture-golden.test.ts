/**
 * Golden test of the pure parsers against every file real Nix wrote into the fixture
 * datalakes: each narinfo parses and its signature verifies with the fixture key (and
 * fails with the other key); each `.ls` listing equals the listing our strict parser
 * builds from `nix-store --dump` of the same store path, whose bytes hash to NarHash;
 * each narinfo round-trips through formatNarInfo.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadFixtures, listingPath, type Fixtures } from '../../support/fixtures.js';
import { formatNarInfo, parseNarInfo } from '../../../src/nix/narinfo.js';
import { parsePublicKey, verifyNarInfo } from '../../../src/nix/signature.js';
import { parseNar } from '../../../src/nix/nar-parser.js';
import { listingToJson, listingsEqual, parseListingJson, parseListingTree } from '../../../src/nix/nar-listing.js';
import { CompactDirectory, compactOf, readCompactListing } from '../../../src/nix/compact-listing.js';
import { storePathFull } from '../../../src/nix/store-path.js';

const execFileP = promisify(execFile);

describe('golden: parsers against the files real Nix wrote (fixture datalakes)', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  before(async () => {
    fixtures = await loadFixtures();
  });

  it('every narinfo parses, round-trips, and carries a signature that verifies with the right key only', async () => {
    const key = parsePublicKey(fixtures.publicKey);
    const other = parsePublicKey(fixtures.otherPublicKey);
    let count = 0;
    for (const [name, lake] of Object.entries(fixtures.datalakes)) {
      for (const f of (await readdir(lake.dir)).filter((x) => x.endsWith('.narinfo'))) {
        const text = await readFile(join(lake.dir, f), 'utf8');
        const ni = parseNarInfo(text, f);
        assert.equal(ni.compression, lake.compression, `${name}/${f}`);
        assert.deepEqual(parseNarInfo(formatNarInfo(ni)), ni, `${name}/${f} round-trips`);
        const byFixture = verifyNarInfo(ni, [key]).trusted;
        const byOther = verifyNarInfo(ni, [other]).trusted;
        if (lake.signedBy === 'narfs-fixture-1') assert.ok(byFixture && !byOther, `${name}/${f}`);
        else if (lake.signedBy === null) assert.ok(!byFixture && !byOther && ni.sigs.length === 0, `${name}/${f}`);
        else assert.ok(byOther && !byFixture, `${name}/${f}`);
        count++;
      }
    }
    assert.ok(count >= 14 * fixtures.paths.length, `saw ${count} narinfos`);
  });

  it('every .ls equals the strict parse of nix-store --dump, which hashes to NarHash', async () => {
    const lake = fixtures.datalakes['none']!;
    for (const p of fixtures.paths) {
      const { stdout } = await execFileP('nix-store', ['--dump', p.storePath], { encoding: 'buffer', maxBuffer: 1 << 30 });
      const nar = stdout as unknown as Buffer;
      const ni = parseNarInfo(await readFile(join(lake.dir, `${p.storePath.slice(11, 43)}.narinfo`), 'utf8'));
      assert.equal(storePathFull(ni.storePath), p.storePath);
      assert.equal(nar.length, ni.narSize, p.storePath);
      assert.ok(createHash('sha256').update(nar).digest().equals(ni.narHash.digest), p.storePath);
      const fromNar = parseNar(nar);
      // Bytes: Nix 2.8 writes names that are not UTF-8 raw (byte-names fixture).
      const lsBytes = await readFile(listingPath(lake.dir, p.storePath));
      const published = parseListingJson(lsBytes);
      assert.ok(listingsEqual(published, fromNar), `${p.storePath}: .ls differs from the NAR`);
      assert.ok(listingToJson(fromNar).equals(lsBytes), `${p.storePath}: listingToJson is not the .ls Nix wrote, byte for byte`);
    }
  });

  it('every .ls is read by the compact reader (no JSON object tree) and written back byte for byte, names not UTF-8 included', async () => {
    let count = 0;
    let dirs = 0;
    for (const lake of Object.values(fixtures.datalakes)) {
      if (!lake.listing) continue;
      for (const p of fixtures.paths) {
        const lsBytes = await readFile(listingPath(lake.dir, p.storePath));
        const compact = readCompactListing(lsBytes);
        assert.ok(compact !== undefined, `${p.storePath}: the compact reader refused the form Nix writes`);
        const root = compact.node(0);
        if (root instanceof CompactDirectory) dirs++;
        assert.ok(listingToJson(root).equals(lsBytes), `${p.storePath}: the compact listing is not the .ls, byte for byte`);
        const tree = parseListingTree(lsBytes);
        assert.ok(listingsEqual(root, tree) && listingsEqual(tree, root), `${p.storePath}: compact and JSON.parse differ`);
        // A tree made compact again is the same listing.
        assert.ok(listingToJson(compactOf(tree).node(0)).equals(lsBytes), `${p.storePath}: compactOf(tree) differs`);
        count++;
      }
    }
    assert.ok(count >= fixtures.paths.length && dirs > 0, `read ${count} listings`);
  });
});
