import assert from 'node:assert/strict';

import { rewriteNarInfoFile } from '../../../src/index/rewrite-narinfo-file.js';
import { parseNarInfo } from '../../../src/nix/narinfo.js';
import { verifyNarInfo, parsePublicKey } from '../../../src/nix/signature.js';
import { TEST_CACHE_PUBLIC_KEY, TREE_NARINFO } from '../nix/golden.js';

const NEW = {
  url: 'nar/0vr2y3rfbxhs2mv1inb416nmyakji0r4zkb69wwmmi3w36kgpq7b.nar.zst',
  compression: 'zstd',
  fileHash: { algo: 'sha256' as const, digest: Buffer.alloc(32, 7) },
  fileSize: 4242,
};

describe('rewriteNarInfoFile', () => {
  it('replaces the four file fields and keeps every other line byte for byte (the signature stays valid)', () => {
    const text = TREE_NARINFO.replace('NarHash:', 'X-Unknown: kept as is\nNarHash:');
    const out = rewriteNarInfoFile(text, NEW);
    const changed = new Set(['URL', 'Compression', 'FileHash', 'FileSize']);
    const keep = (t: string) => t.split('\n').filter((l) => !changed.has(l.slice(0, l.indexOf(':'))));
    assert.deepEqual(keep(out), keep(text));
    const ni = parseNarInfo(out);
    assert.equal(ni.url, NEW.url);
    assert.equal(ni.compression, 'zstd');
    assert.equal(ni.fileSize, 4242);
    assert.deepEqual(ni.fileHash, NEW.fileHash);
    assert.equal(verifyNarInfo(ni, [parsePublicKey(TEST_CACHE_PUBLIC_KEY)]).trusted, true);
    assert.equal(verifyNarInfo(parseNarInfo(TREE_NARINFO), [parsePublicKey(TEST_CACHE_PUBLIC_KEY)]).trusted, true);
  });

  it('adds missing FileHash, FileSize and Compression where Nix writes them', () => {
    const bare = TREE_NARINFO.split('\n').filter((l) => !/^(FileHash|FileSize|Compression):/.test(l)).join('\n');
    const out = rewriteNarInfoFile(bare, NEW);
    const keys = out.split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));
    assert.deepEqual(keys.slice(0, 5), ['StorePath', 'URL', 'Compression', 'FileHash', 'FileSize']);
    assert.equal(parseNarInfo(out).fileSize, 4242);
  });

  it('refuses values with line breaks', () => {
    assert.throws(() => rewriteNarInfoFile(TREE_NARINFO, { ...NEW, url: 'nar/x\nSig: evil:AAAA' }), /line break/);
  });
});
