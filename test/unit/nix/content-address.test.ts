import { skipOrFail } from '../../support/environment.js';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import { isNarfsError } from '../../../src/errors.js';
import {
  compressHash,
  isSelfCertifyingNarInfo,
  makeFixedOutputPath,
  makeStorePath,
  makeTextPath,
  parseContentAddress,
  renderContentAddress,
} from '../../../src/nix/content-address.js';
import { formatHash, parseHash, type Hash } from '../../../src/nix/hash.js';
import { parseNarInfo, type NarInfo } from '../../../src/nix/narinfo.js';
import { parseStorePathBase, storePathFull } from '../../../src/nix/store-path.js';
import { REF_NARINFO, TREE_NAR_HASH_HEX, TREE_NAR_HASH_NIX32, TREE_NARINFO } from './golden.js';
import { haveNix, nixText } from './nix-tool.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const TREE = parseStorePathBase('d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree');
const treeHash = parseHash(`sha256:${TREE_NAR_HASH_NIX32}`);

describe('content-address', () => {
  it('parses and renders every method', () => {
    const cases: Array<[string, string, string]> = [
      [`fixed:r:sha256:${TREE_NAR_HASH_NIX32}`, 'nar', `fixed:r:sha256:${TREE_NAR_HASH_NIX32}`],
      [`fixed:r:sha256:${TREE_NAR_HASH_HEX}`, 'nar', `fixed:r:sha256:${TREE_NAR_HASH_NIX32}`],
      [`fixed:sha256:${TREE_NAR_HASH_NIX32}`, 'flat', `fixed:sha256:${TREE_NAR_HASH_NIX32}`],
      [`text:sha256:${TREE_NAR_HASH_NIX32}`, 'text', `text:sha256:${TREE_NAR_HASH_NIX32}`],
      [`fixed:git:sha1:${'0'.repeat(40)}`, 'git', `fixed:git:sha1:${'0'.repeat(32)}`],
    ];
    for (const [input, method, rendered] of cases) {
      const ca = parseContentAddress(input);
      assert.equal(ca.method, method);
      assert.equal(renderContentAddress(ca), rendered);
    }
  });

  it('rejects malformed content addresses', () => {
    for (const s of [
      '',
      'fixed',
      `source:sha256:${TREE_NAR_HASH_NIX32}`,
      `fixed:r:sha257:${TREE_NAR_HASH_NIX32}`,
      `fixed:r:sha256-${TREE_NAR_HASH_NIX32}`,
      `fixed:r:sha256:${TREE_NAR_HASH_NIX32.slice(1)}`,
      `text:sha1:${'0'.repeat(40)}`,
      `fixed:r:sha256:sha256-i9OmqEWMo7vpWPpkPFe+L7bdPBkFt0/FN9sEmzLVeJw=`, // SRI not allowed inside
    ]) {
      assert.throws(() => parseContentAddress(s), isCode('ERR_HASH_FORMAT'), s);
    }
  });

  it('XOR-folds hashes like compressHash', () => {
    const h = Buffer.alloc(32);
    h[0] = 1;
    h[20] = 3;
    h[31] = 0xff;
    const c = compressHash(h, 20);
    assert.equal(c.length, 20);
    assert.equal(c[0], 2);
    assert.equal(c[11], 0xff);
  });

  it('recomputes the worked example paths (§2.9, §4)', () => {
    assert.deepEqual(makeStorePath('source', TREE_NAR_HASH_HEX, 'tree'), TREE);
    assert.deepEqual(makeFixedOutputPath('nar', treeHash, 'tree'), TREE);
    const ref = parseContentAddress('text:sha256:1dh6gv19lkgs611jrxfd43pcindgh1622ga44q5vlhf0wvrycyv9');
    assert.deepEqual(
      makeTextPath(ref.hash, 'ref.txt', [TREE]),
      parseStorePathBase('h03k8arrvrzapcax6dwdh33dxc160650-ref.txt'),
    );
    // Without the reference the path differs: references are part of the type.
    assert.notDeepEqual(makeTextPath(ref.hash, 'ref.txt'), parseStorePathBase('h03k8arrvrzapcax6dwdh33dxc160650-ref.txt'));
  });

  it('agrees with `nix-store --print-fixed-path` for random hashes', function () {
    if (!haveNix()) skipOrFail(this, 'nix');
    const cases: Array<{ method: 'nar' | 'flat'; hash: Hash; name: string }> = [
      { method: 'nar', hash: { algo: 'sha256', digest: randomBytes(32) }, name: 'src-1.0.tar.gz' },
      { method: 'flat', hash: { algo: 'sha256', digest: randomBytes(32) }, name: 'foo.patch' },
      { method: 'nar', hash: { algo: 'sha1', digest: randomBytes(20) }, name: 'x' },
      { method: 'flat', hash: { algo: 'sha512', digest: randomBytes(64) }, name: 'y=?_+' },
      { method: 'flat', hash: { algo: 'md5', digest: randomBytes(16) }, name: 'z' },
    ];
    for (const c of cases) {
      const args = ['--print-fixed-path', ...(c.method === 'nar' ? ['--recursive'] : []), c.hash.algo, formatHash(c.hash, 'nix32', false), c.name];
      assert.equal(storePathFull(makeFixedOutputPath(c.method, c.hash, c.name)), nixText('nix-store', args), JSON.stringify(args));
    }
  });

  it('puts references into the type of NAR+sha256 paths', () => {
    const h: Hash = { algo: 'sha256', digest: createHash('sha256').update('x').digest() };
    const plain = makeFixedOutputPath('nar', h, 'p');
    const withRef = makeFixedOutputPath('nar', h, 'p', [TREE]);
    const withSelf = makeFixedOutputPath('nar', h, 'p', [], true);
    assert.notDeepEqual(plain, withRef);
    assert.notDeepEqual(plain, withSelf);
    assert.deepEqual(withRef, makeStorePath(`source:${storePathFull(TREE)}`, h, 'p'));
    assert.deepEqual(withSelf, makeStorePath('source:self', h, 'p'));
    assert.throws(() => makeFixedOutputPath('flat', h, 'p', [TREE]), isCode('ERR_INVALID_ARGUMENT'));
  });

  describe('isSelfCertifyingNarInfo', () => {
    const tree = (): NarInfo => parseNarInfo(TREE_NARINFO);

    it('accepts the fixed:r:sha256 worked example', () => {
      assert.equal(isSelfCertifyingNarInfo(tree()), true);
    });

    it('refuses text: and flat fixed: (they need content hashing)', () => {
      assert.equal(isSelfCertifyingNarInfo(parseNarInfo(REF_NARINFO)), false);
      const flat = tree();
      flat.ca = `fixed:sha256:${TREE_NAR_HASH_NIX32}`;
      assert.equal(isSelfCertifyingNarInfo(flat), false);
    });

    it('refuses when CA is absent or malformed', () => {
      const ni = tree();
      delete ni.ca;
      assert.equal(isSelfCertifyingNarInfo(ni), false);
      ni.ca = 'garbage';
      assert.equal(isSelfCertifyingNarInfo(ni), false);
    });

    it('refuses when the CA hash is not the NarHash', () => {
      const ni = tree();
      ni.narHash = { algo: 'sha256', digest: Buffer.alloc(32) };
      assert.equal(isSelfCertifyingNarInfo(ni), false);
    });

    it('refuses when the path does not recompute (name, hash part, references)', () => {
      const renamed = tree();
      renamed.storePath = { ...renamed.storePath, name: 'tree2' };
      assert.equal(isSelfCertifyingNarInfo(renamed), false);
      const withRef = tree();
      withRef.references = [parseStorePathBase('h03k8arrvrzapcax6dwdh33dxc160650-ref.txt')];
      assert.equal(isSelfCertifyingNarInfo(withRef), false);
      const withSelf = tree();
      withSelf.references = [withSelf.storePath];
      assert.equal(isSelfCertifyingNarInfo(withSelf), false);
    });

    it('accepts a recomputed path with references and a self-reference', () => {
      const h = parseHash(`sha256:${TREE_NAR_HASH_NIX32}`);
      const sp = makeFixedOutputPath('nar', h, 'x', [TREE], true);
      const ni: NarInfo = {
        ...tree(),
        storePath: sp,
        references: [TREE, sp],
      };
      assert.equal(isSelfCertifyingNarInfo(ni), true);
    });
  });
});
