import { skipOrFail } from '../../support/environment.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { isNarfsError } from '../../../src/errors.js';
import { decodeNix32, encodeNix32, nix32Length } from '../../../src/nix/nix32.js';
import { HELLO_NAR_HASH_HEX, HELLO_NAR_HASH_NIX32, TREE_NAR_HASH_HEX, TREE_NAR_HASH_NIX32 } from './golden.js';
import { haveNix, nixText } from './nix-tool.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

describe('nix32', () => {
  it('has the lengths of Nix', () => {
    assert.equal(nix32Length(32), 52);
    assert.equal(nix32Length(20), 32);
    assert.equal(nix32Length(16), 26);
    assert.equal(nix32Length(64), 103);
    assert.equal(nix32Length(1), 2);
    assert.equal(nix32Length(0), 0);
  });

  it('encodes and decodes the worked examples', () => {
    assert.equal(encodeNix32(Buffer.from(HELLO_NAR_HASH_HEX, 'hex')), HELLO_NAR_HASH_NIX32);
    assert.equal(encodeNix32(Buffer.from(TREE_NAR_HASH_HEX, 'hex')), TREE_NAR_HASH_NIX32);
    assert.equal(decodeNix32(TREE_NAR_HASH_NIX32, 32).toString('hex'), TREE_NAR_HASH_HEX);
  });

  it('puts byte 0 in the least significant (rightmost) characters', () => {
    const b = Buffer.alloc(20);
    b[0] = 1;
    assert.equal(encodeNix32(b), `${'0'.repeat(31)}1`);
    b[0] = 0;
    b[19] = 0x80;
    assert.equal(encodeNix32(b), `h${'0'.repeat(31)}`); // 2^159 = 16 << 155 → digit 16 = 'h'
  });

  it('round-trips random data of every hash size', () => {
    for (const n of [1, 2, 5, 16, 20, 32, 64]) {
      for (let k = 0; k < 50; k++) {
        const b = randomBytes(n);
        const s = encodeNix32(b);
        assert.equal(s.length, nix32Length(n));
        assert.deepEqual(decodeNix32(s, n), b);
      }
    }
  });

  it('agrees with `nix hash to-base32`', function () {
    if (!haveNix()) skipOrFail(this, 'nix');
    const hashes = Array.from({ length: 8 }, () => randomBytes(32).toString('hex'));
    const out = nixText('nix', ['hash', 'to-base32', '--type', 'sha256', ...hashes]).split('\n');
    assert.deepEqual(out, hashes.map((h) => encodeNix32(Buffer.from(h, 'hex'))));
    const sha512 = randomBytes(64).toString('hex');
    assert.equal(nixText('nix', ['hash', 'to-base32', '--type', 'sha512', sha512]), encodeNix32(Buffer.from(sha512, 'hex')));
  });

  it('rejects characters outside the alphabet', () => {
    const good = TREE_NAR_HASH_NIX32;
    for (const c of ['e', 'o', 'u', 't', 'A', '-', ' ', 'é']) {
      const bad = good.slice(0, 10) + c + good.slice(11);
      assert.throws(() => decodeNix32(bad, 32), isCode('ERR_NIX32'), c);
    }
  });

  it('rejects a wrong length', () => {
    assert.throws(() => decodeNix32(TREE_NAR_HASH_NIX32.slice(1), 32), isCode('ERR_NIX32'));
    assert.throws(() => decodeNix32(`0${TREE_NAR_HASH_NIX32}`, 32), isCode('ERR_NIX32'));
    assert.throws(() => decodeNix32('', 20), isCode('ERR_NIX32'));
  });

  it('rejects non-zero excess bits', () => {
    // 52 chars carry 260 bits: the top 4 bits of the first character must be zero.
    assert.deepEqual(decodeNix32(`1${'0'.repeat(51)}`, 32).at(31), 0x80);
    assert.throws(() => decodeNix32(`2${'0'.repeat(51)}`, 32), isCode('ERR_NIX32'));
    assert.throws(() => decodeNix32(`z${'0'.repeat(51)}`, 32), isCode('ERR_NIX32'));
    // 32 chars carry exactly 160 bits: every first character is fine.
    assert.equal(decodeNix32(`z${'0'.repeat(31)}`, 20).at(19), 0xf8);
  });
});
