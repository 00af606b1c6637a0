import { skipOrFail } from '../../support/environment.js';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import { isNarfsError } from '../../../src/errors.js';
import { formatHash, hashEquals, parseHash, parseHashAnyOrDefault, type Hash } from '../../../src/nix/hash.js';
import { TREE_NAR_HASH_HEX, TREE_NAR_HASH_NIX32 } from './golden.js';
import { haveNix, nixText } from './nix-tool.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const tree: Hash = { algo: 'sha256', digest: Buffer.from(TREE_NAR_HASH_HEX, 'hex') };
const TREE_B64 = 'i9OmqEWMo7vpWPpkPFe+L7bdPBkFt0/FN9sEmzLVeJw=';

describe('hash', () => {
  it('parses every prefixed encoding of the same sha256', () => {
    for (const s of [
      `sha256:${TREE_NAR_HASH_NIX32}`,
      `sha256:${TREE_NAR_HASH_HEX}`,
      `sha256:${TREE_NAR_HASH_HEX.toUpperCase()}`,
      `sha256:${TREE_B64}`,
      `sha256-${TREE_B64}`,
    ]) {
      const h = parseHash(s);
      assert.ok(hashEquals(h, tree), s);
    }
  });

  it('formats in every encoding', () => {
    assert.equal(formatHash(tree, 'nix32'), `sha256:${TREE_NAR_HASH_NIX32}`);
    assert.equal(formatHash(tree, 'base16'), `sha256:${TREE_NAR_HASH_HEX}`);
    assert.equal(formatHash(tree, 'base64'), `sha256:${TREE_B64}`);
    assert.equal(formatHash(tree, 'sri'), `sha256-${TREE_B64}`);
    assert.equal(formatHash(tree, 'base16', false), TREE_NAR_HASH_HEX);
  });

  it('agrees with `nix hash to-sri` / `to-base16` for every algorithm', function () {
    if (!haveNix()) skipOrFail(this, 'nix');
    for (const algo of ['md5', 'sha1', 'sha256', 'sha512'] as const) {
      const digest = createHash(algo).update(randomBytes(10)).digest();
      const h: Hash = { algo, digest };
      assert.equal(nixText('nix', ['hash', 'to-sri', formatHash(h, 'nix32')]), formatHash(h, 'sri'));
      assert.equal(nixText('nix', ['hash', 'to-base16', formatHash(h, 'sri')]), digest.toString('hex'));
      assert.equal(nixText('nix', ['hash', 'to-base32', formatHash(h, 'base64')]), formatHash(h, 'nix32', false));
      for (const enc of ['nix32', 'base16', 'base64', 'sri'] as const) {
        assert.ok(hashEquals(parseHash(formatHash(h, enc)), h), `${algo} ${enc}`);
      }
    }
  });

  it('requires a prefix in parseHash', () => {
    assert.throws(() => parseHash(TREE_NAR_HASH_NIX32), isCode('ERR_HASH_FORMAT'));
    assert.throws(() => parseHash(TREE_NAR_HASH_HEX), isCode('ERR_HASH_FORMAT'));
  });

  it('accepts an unprefixed digest with a default algorithm', () => {
    assert.ok(hashEquals(parseHashAnyOrDefault(TREE_NAR_HASH_HEX, 'sha256'), tree));
    assert.ok(hashEquals(parseHashAnyOrDefault(TREE_NAR_HASH_NIX32, 'sha256'), tree));
    assert.ok(hashEquals(parseHashAnyOrDefault(`sha256:${TREE_NAR_HASH_NIX32}`, 'sha256'), tree));
    assert.ok(hashEquals(parseHashAnyOrDefault(`sha256-${TREE_B64}`, 'sha256'), tree));
    // As in Nix, a prefix that contradicts the expected algorithm is an error.
    const sha1 = formatHash({ algo: 'sha1', digest: Buffer.alloc(20) }, 'base16');
    assert.throws(() => parseHashAnyOrDefault(sha1, 'sha256'), isCode('ERR_HASH_FORMAT'));
  });

  it('rejects malformed hashes', () => {
    const bad = [
      `sha257:${TREE_NAR_HASH_NIX32}`, // unknown algorithm
      `SHA256:${TREE_NAR_HASH_NIX32}`, // algorithms are lowercase
      `sha256:${TREE_NAR_HASH_NIX32.slice(1)}`, // wrong length
      `sha256:${TREE_NAR_HASH_NIX32}0`,
      `sha256:${TREE_NAR_HASH_HEX.slice(0, 63)}g`, // bad hex
      `sha256:e${TREE_NAR_HASH_NIX32.slice(1)}`, // bad nix32 char
      `sha256:2${TREE_NAR_HASH_NIX32.slice(1)}`, // nix32 excess bits
      `sha256:${TREE_B64.slice(0, -1)}`, // base64 without padding
      `sha256:${TREE_B64.slice(0, 42)}x=`, // non-canonical base64 (trailing bits)
      `sha256-${TREE_NAR_HASH_HEX}`, // SRI must be base64
      `sha1:${TREE_NAR_HASH_HEX}`, // a sha256 digest under another algorithm
      'sha256:',
      '',
      ':',
    ];
    for (const s of bad) assert.throws(() => parseHash(s), isCode('ERR_HASH_FORMAT'), s);
  });

  it('compares algorithm and digest', () => {
    const other: Hash = { algo: 'sha256', digest: Buffer.from(tree.digest) };
    assert.ok(hashEquals(tree, other));
    other.digest[0] = other.digest[0]! ^ 1;
    assert.ok(!hashEquals(tree, other));
    assert.ok(!hashEquals({ algo: 'md5', digest: Buffer.alloc(16) }, { algo: 'sha1', digest: Buffer.alloc(16) }));
  });
});
