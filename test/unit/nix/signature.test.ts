import { skipOrFail } from '../../support/environment.js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { isNarfsError } from '../../../src/errors.js';
import { formatNarInfo, parseNarInfo } from '../../../src/nix/narinfo.js';
import {
  formatPublicKey,
  narInfoFingerprint,
  parsePublicKey,
  parseSecretKey,
  parseTrustedPublicKeys,
  publicKeyOf,
  signFingerprint,
  verifyNarInfo,
  verifySignature,
  type PublicKey,
} from '../../../src/nix/signature.js';
import { REF_FINGERPRINT, REF_NARINFO, TEST_CACHE_PUBLIC_KEY, TREE_FINGERPRINT, TREE_NARINFO } from './golden.js';
import { haveNix, nix, withTempDir } from './nix-tool.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const testKey = parsePublicKey(TEST_CACHE_PUBLIC_KEY);
const TREE_SIG = parseNarInfo(TREE_NARINFO).sigs[0]!;

/** Flips one bit of the base64 payload of a signature, keeping it well-formed. */
function flipBit(sig: string, byte: number): string {
  const colon = sig.indexOf(':');
  const raw = Buffer.from(sig.slice(colon + 1), 'base64');
  raw[byte] = raw[byte]! ^ 1;
  return `${sig.slice(0, colon)}:${raw.toString('base64')}`;
}

describe('signature', () => {
  it('computes the fingerprints of the worked examples byte for byte', () => {
    assert.equal(narInfoFingerprint(parseNarInfo(TREE_NARINFO)), TREE_FINGERPRINT);
    assert.equal(narInfoFingerprint(parseNarInfo(REF_NARINFO)), REF_FINGERPRINT);
  });

  it('renders NarHash as sha256:<nix32> whatever the narinfo spelling', () => {
    const b16 = TREE_NARINFO.replace(
      'NarHash: sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb',
      'NarHash: sha256:8bd3a6a8458ca3bbe958fa643c57be2fb6dd3c1905b74fc537db049b32d5789c',
    );
    assert.notEqual(b16, TREE_NARINFO);
    assert.equal(narInfoFingerprint(parseNarInfo(b16)), TREE_FINGERPRINT);
  });

  it('sorts full reference paths, self included', () => {
    const ni = parseNarInfo(REF_NARINFO);
    ni.references = [ni.storePath, ...ni.references];
    assert.equal(
      narInfoFingerprint(ni),
      `${REF_FINGERPRINT},/nix/store/h03k8arrvrzapcax6dwdh33dxc160650-ref.txt`,
    );
  });

  it('refuses to fingerprint NarSize 0', () => {
    const ni = parseNarInfo(TREE_NARINFO);
    ni.narSize = 0;
    assert.throws(() => narInfoFingerprint(ni), isCode('ERR_NARINFO_CORRUPT'));
  });

  it('verifies the real signatures of the worked examples', () => {
    assert.deepEqual(verifyNarInfo(parseNarInfo(TREE_NARINFO), [testKey]), { trusted: true, by: 'test-cache-1' });
    assert.deepEqual(verifyNarInfo(parseNarInfo(REF_NARINFO), [testKey]), { trusted: true, by: 'test-cache-1' });
    assert.equal(verifySignature(TREE_FINGERPRINT, TREE_SIG, [testKey]), true);
  });

  it('rejects a signature over another fingerprint', () => {
    assert.equal(verifySignature(REF_FINGERPRINT, TREE_SIG, [testKey]), false);
    const ni = parseNarInfo(TREE_NARINFO);
    ni.narSize += 1;
    assert.deepEqual(verifyNarInfo(ni, [testKey]), { trusted: false });
    // Fields outside the fingerprint do not matter.
    const other = parseNarInfo(formatNarInfo({ ...parseNarInfo(TREE_NARINFO), url: 'nar/other.nar', compression: 'none' }));
    assert.equal(verifyNarInfo(other, [testKey]).trusted, true);
  });

  it('rejects flipped bits, wrong key names, bad base64 and truncation without throwing', () => {
    const bad = [
      flipBit(TREE_SIG, 0),
      flipBit(TREE_SIG, 63),
      TREE_SIG.replace('test-cache-1:', 'test-cache-2:'),
      TREE_SIG.replace('test-cache-1:', ':'),
      TREE_SIG.replace('test-cache-1:', ''),
      TREE_SIG.slice(0, -4), // truncated base64 (48 bytes)
      TREE_SIG.slice(0, -1), // missing padding
      `${TREE_SIG.slice(0, -2)}A=`, // non-canonical
      `test-cache-1:${Buffer.alloc(64).toString('base64')}`,
      `test-cache-1:${Buffer.alloc(65).toString('base64')}`,
      'test-cache-1:!!!!',
      '',
    ];
    for (const s of bad) assert.equal(verifySignature(TREE_FINGERPRINT, s, [testKey]), false, s);
    assert.equal(verifySignature(TREE_FINGERPRINT, TREE_SIG, []), false);
    const ni = parseNarInfo(TREE_NARINFO);
    ni.sigs = bad;
    assert.deepEqual(verifyNarInfo(ni, [testKey]), { trusted: false });
    ni.sigs = [...bad, TREE_SIG];
    assert.equal(verifyNarInfo(ni, [testKey]).trusted, true, 'one good signature among bad ones');
  });

  it('looks keys up by name: a key of another name does not verify', () => {
    const renamed: PublicKey = { name: 'other', key: testKey.key };
    assert.equal(verifySignature(TREE_FINGERPRINT, TREE_SIG, [renamed]), false);
    const wrong = parseTrustedPublicKeys('test-cache-1:fznJoqJ5kzRsvKndmzKc+rx5pQKtzFU7W9SW8Z5loEY=');
    assert.equal(verifySignature(TREE_FINGERPRINT, TREE_SIG, wrong), false);
    assert.equal(verifySignature(TREE_FINGERPRINT, TREE_SIG, [...wrong, testKey]), true);
  });

  it('parses whitespace-separated trusted key lists', () => {
    const keys = parseTrustedPublicKeys(`  cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n\t${TEST_CACHE_PUBLIC_KEY} `);
    assert.deepEqual(keys.map((k) => k.name), ['cache.nixos.org-1', 'test-cache-1']);
    assert.equal(formatPublicKey(keys[1]!), TEST_CACHE_PUBLIC_KEY);
    assert.deepEqual(parseTrustedPublicKeys(''), []);
  });

  it('rejects malformed keys with ERR_KEY_FORMAT', () => {
    for (const s of [
      '',
      'nocolon',
      ':5vMfnT/UI8L+fTADX51o6+4wc2jA8rkPvLKZ7tD0QPE=',
      'k:5vMfnT/UI8L+fTADX51o6+4wc2jA8rkPvLKZ7tD0QP', // truncated
      'k:5vMfnT/UI8L+fTADX51o6+4wc2jA8rkPvLKZ7tD0QPE', // no padding
      `k:${Buffer.alloc(31).toString('base64')}`,
      `k:${Buffer.alloc(64).toString('base64')}`, // a secret key is not a public key
      'k:5vMfnT/UI8L+fTADX51o6+4wc2jA8rkPvLKZ7tD0QPE= ',
    ]) {
      assert.throws(() => parsePublicKey(s), isCode('ERR_KEY_FORMAT'), s);
    }
    assert.throws(() => parseTrustedPublicKeys('a:b c:d'), isCode('ERR_KEY_FORMAT'));
    assert.throws(() => parseSecretKey(TEST_CACHE_PUBLIC_KEY), isCode('ERR_KEY_FORMAT'));
    // A 64-byte secret key whose second half is not the public key of its seed.
    assert.throws(() => parseSecretKey(`k:${Buffer.alloc(64, 1).toString('base64')}`), isCode('ERR_KEY_FORMAT'));
    // Nix ignores a trailing newline in key files.
    assert.deepEqual(parsePublicKey(`${TEST_CACHE_PUBLIC_KEY}\n`), testKey);
  });

  describe('with keys from nix-store --generate-binary-cache-key', () => {
    before(function () {
      if (!haveNix()) skipOrFail(this, 'nix');
    });

    const generate = (name: string): { sec: string; pub: string } =>
      withTempDir((dir) => {
        const sec = join(dir, 'sec');
        const pub = join(dir, 'pub');
        nix('nix-store', ['--generate-binary-cache-key', name, sec, pub]);
        return { sec: readFileSync(sec, 'utf8'), pub: readFileSync(pub, 'utf8') };
      });

    it('derives the same public key as Nix and signs what it verifies', () => {
      const { sec, pub } = generate('narfs-test-1');
      const sk = parseSecretKey(sec);
      const pk = parsePublicKey(pub);
      assert.equal(sk.name, 'narfs-test-1');
      assert.deepEqual(publicKeyOf(sk), pk);
      assert.equal(formatPublicKey(pk), pub);

      const ni = parseNarInfo(REF_NARINFO);
      const sig = signFingerprint(narInfoFingerprint(ni), sk);
      assert.match(sig, /^narfs-test-1:[A-Za-z0-9+/]{86}==$/);
      assert.equal(verifySignature(REF_FINGERPRINT, sig, [pk]), true);
      assert.equal(verifySignature(REF_FINGERPRINT, sig, [testKey]), false);
      assert.equal(verifySignature(`${REF_FINGERPRINT}x`, sig, [pk]), false);
      assert.equal(verifySignature(REF_FINGERPRINT, flipBit(sig, 10), [pk]), false);

      ni.sigs = [sig];
      assert.deepEqual(verifyNarInfo(ni, [testKey, pk]), { trusted: true, by: 'narfs-test-1' });
      assert.deepEqual(verifyNarInfo(ni, [testKey]), { trusted: false });
    });

    it('matches Nix: the public key Nix computes from the secret key equals ours', () => {
      const { sec } = generate('narfs-test-2');
      const fromNix = nix('nix', ['key', 'convert-secret-to-public'], sec).toString('utf8').trim();
      assert.equal(formatPublicKey(publicKeyOf(parseSecretKey(sec))), fromNix);
    });
  });
});
