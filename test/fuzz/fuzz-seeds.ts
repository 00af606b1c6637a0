/**
 * Fuzz seeds: real files written by Nix, taken from the fixture datalakes of
 * scripts/build-fixtures.sh (`<fixtures>/datalakes/<name>/`).
 *
 * - narinfo: every `.narinfo` of every datalake (all compressions, signed by either key or
 *   unsigned, with FileHash/FileSize/Deriver/CA/References variants);
 * - ls: every `.ls` listing;
 * - nar: the uncompressed NARs of the `none` datalake up to MAX_NAR_SEED_BYTES (all but
 *   the 40 MiB large-file one): `nix-store --dump` output as the binary cache stored it;
 * - drv: the `.drv` files of the closure, taken out of their NARs in `none` (a .drv is a
 *   store path whose NAR is a single regular file).
 * - index: the narfs index (src/nix/nar-index.ts) of each of those NARs, built by
 *   IndexBuilder at the smallest chunk size (so files have several chunks) and signed by a
 *   fixed test key, and the same with whole-file hashes only (the cache's tree of a whole
 *   NAR).
 *
 * Invariant: seeds are deduplicated by content and sorted (by name, then bytes), so the
 * seed list — and hence every generated input — is the same on every run.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';

import { encodeNarIndex, MIN_CHUNK_SIZE, signNarIndex } from '../../src/nix/nar-index.js';
import { IndexBuilder } from '../../src/nix/nar-index-builder.js';
import { NarParser, parseNar } from '../../src/nix/nar-parser.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { storePathFull } from '../../src/nix/store-path.js';
import type { FuzzTargetName } from './fuzz-targets.js';

export const MAX_NAR_SEED_BYTES = 1 << 20;

export type FuzzSeeds = Record<FuzzTargetName, Buffer[]>;

interface FixtureManifest {
  paths: Array<{ storePath: string; role: string }>;
}

function uniqueSorted(files: Array<{ name: string; bytes: Buffer }>): Buffer[] {
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : Buffer.compare(a.bytes, b.bytes)));
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (const f of files) {
    const key = f.bytes.toString('base64');
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(f.bytes);
  }
  return out;
}

/** Loads the seeds from a fixture directory (the last line build-fixtures.sh prints). */
export function loadFuzzSeeds(fixtureDir: string): FuzzSeeds {
  const lakes = join(fixtureDir, 'datalakes');
  const narinfos: Array<{ name: string; bytes: Buffer }> = [];
  const listings: Array<{ name: string; bytes: Buffer }> = [];
  for (const lake of readdirSync(lakes).sort()) {
    for (const f of readdirSync(join(lakes, lake)).sort()) {
      const name = `${lake}/${f}`;
      if (f.endsWith('.narinfo')) narinfos.push({ name, bytes: readFileSync(join(lakes, lake, f)) });
      else if (f.endsWith('.ls')) listings.push({ name, bytes: readFileSync(join(lakes, lake, f)) });
    }
  }

  const none = join(lakes, 'none');
  const nars: Array<{ name: string; bytes: Buffer }> = [];
  for (const f of readdirSync(join(none, 'nar')).sort()) {
    const path = join(none, 'nar', f);
    if (f.endsWith('.nar') && statSync(path).size <= MAX_NAR_SEED_BYTES) nars.push({ name: f, bytes: readFileSync(path) });
  }
  const indexes: Array<{ name: string; bytes: Buffer }> = [];
  for (const f of readdirSync(none).sort()) {
    if (!f.endsWith('.narinfo')) continue;
    const ni = parseNarInfo(readFileSync(join(none, f), 'utf8'));
    if (ni.narSize > MAX_NAR_SEED_BYTES) continue;
    const nar = readFileSync(join(none, ni.url));
    indexes.push({ name: f, bytes: indexSeed(nar, storePathFull(ni.storePath)) });
    // The tree the cache keeps of a whole NAR: whole-file hashes only.
    indexes.push({ name: `${f}.whole`, bytes: indexSeed(nar, storePathFull(ni.storePath), false) });
  }

  const manifest = JSON.parse(readFileSync(join(fixtureDir, 'manifest.json'), 'utf8')) as FixtureManifest;
  const drvs: Array<{ name: string; bytes: Buffer }> = [];
  for (const p of manifest.paths) {
    if (p.role !== 'drv') continue;
    const hashPart = p.storePath.slice('/nix/store/'.length, '/nix/store/'.length + 32);
    const ni = parseNarInfo(readFileSync(join(none, `${hashPart}.narinfo`), 'utf8'));
    const nar = readFileSync(join(none, ni.url));
    const root = parseNar(nar);
    if (root.type !== 'regular') throw new Error(`fuzz seeds: ${p.storePath} is not a regular file`);
    drvs.push({ name: p.storePath, bytes: Buffer.from(nar.subarray(root.narOffset, root.narOffset + root.size)) });
  }

  const seeds: FuzzSeeds = {
    nar: uniqueSorted(nars),
    narinfo: uniqueSorted(narinfos),
    ls: uniqueSorted(listings),
    drv: uniqueSorted(drvs),
    index: uniqueSorted(indexes),
  };
  for (const [name, list] of Object.entries(seeds)) {
    if (list.length === 0) throw new Error(`fuzz seeds: no ${name} seeds under ${fixtureDir}`);
  }
  return seeds;
}

/** The signed index of a NAR, as `narfs index` would write it (fixed key, so seeds are stable). */
function indexSeed(nar: Buffer, storePath: string, chunkHashes = true): Buffer {
  const b = new IndexBuilder(MIN_CHUNK_SIZE, { chunkHashes });
  const p = new NarParser(b);
  p.write(nar);
  const idx = b.finish(p.end(), { algo: 'sha256', digest: createHash('sha256').update(nar).digest() }, nar.length, storePath);
  const seed = Buffer.alloc(32, 0x5a);
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const spki = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
  idx.signatures = [signNarIndex(idx, { name: 'fuzz-seed-1', seed, publicKey: Buffer.from(spki.subarray(12)) })];
  return encodeNarIndex(idx);
}
