/**
 * The signature policy with keys made on the spot: an ed25519 key pair from node:crypto
 * written as Nix writes secret keys (`<name>:base64(seed ‖ public key)`), narinfos signed
 * with signFingerprint, and a self-certifying `fixed:r:sha256` narinfo whose store path is
 * computed with makeFixedOutputPath.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';

import { isNarfsError, NarfsError } from '../../../src/errors.js';
import { makeFixedOutputPath } from '../../../src/nix/content-address.js';
import { formatHash, type Hash } from '../../../src/nix/hash.js';
import { formatNarInfo, parseNarInfo, type NarInfo } from '../../../src/nix/narinfo.js';
import {
  narInfoFingerprint,
  parseSecretKey,
  publicKeyOf,
  signFingerprint,
  type PublicKey,
  type SecretKey,
} from '../../../src/nix/signature.js';
import { parseStorePathBase, type StorePath } from '../../../src/nix/store-path.js';
import { writeNar } from '../../../src/nix/nar-writer.js';
import { checkSignaturePolicy, enforceSignaturePolicy } from '../../../src/store/signature-policy.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

/** A secret key in Nix's text form, from a fresh node:crypto ed25519 key pair. */
function makeSecretKey(name: string): SecretKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const seed = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
  const pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  return parseSecretKey(`${name}:${Buffer.concat([seed, pub]).toString('base64')}`);
}

const TRUSTED = makeSecretKey('cache.example.org-1');
const UNTRUSTED = makeSecretKey('evil.example.org-1');
/** Same name as the trusted key, other key material. */
const IMPOSTOR = makeSecretKey('cache.example.org-1');
const TRUSTED_PK: PublicKey = publicKeyOf(TRUSTED);

const NAR = writeNar({ type: 'regular', contents: 'hello\n' });
const NAR_HASH: Hash = { algo: 'sha256', digest: createHash('sha256').update(NAR).digest() };
const REF = parseStorePathBase('11111111111111111111111111111111-glibc-2.40');

function narInfo(storePath: StorePath, extra: Partial<NarInfo> = {}): NarInfo {
  // Through text and back, so the object is exactly what the parser hands the policy.
  return parseNarInfo(formatNarInfo({
    storePath,
    url: 'nar/x.nar',
    compression: 'none',
    narHash: NAR_HASH,
    narSize: NAR.length,
    references: [REF],
    sigs: [],
    ...extra,
  }));
}

function signed(ni: NarInfo, ...keys: SecretKey[]): NarInfo {
  const fp = narInfoFingerprint(ni);
  return { ...ni, sigs: keys.map((k) => signFingerprint(fp, k)).sort() };
}

const INPUT_ADDRESSED = parseStorePathBase('0123456789abcdfghijklmnpqrsvwxyz-hello-2.12');
const POLICY = { requireSigs: true, trustedKeys: [TRUSTED_PK] };

describe('signature policy', () => {
  describe('enforceSignaturePolicy', () => {
    it('accepts a narinfo signed by a trusted key', () => {
      const ni = signed(narInfo(INPUT_ADDRESSED), TRUSTED);
      assert.equal(ni.sigs.length, 1);
      assert.ok(ni.sigs[0]!.startsWith('cache.example.org-1:'));
      assert.doesNotThrow(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'));
    });

    it('accepts a narinfo with one good signature among bad ones', () => {
      const ni = signed(narInfo(INPUT_ADDRESSED), UNTRUSTED, IMPOSTOR, TRUSTED);
      assert.equal(ni.sigs.length, 3);
      assert.doesNotThrow(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'));
    });

    it('refuses a narinfo without signatures with ERR_NARINFO_SIGNATURE', () => {
      const ni = narInfo(INPUT_ADDRESSED);
      assert.deepEqual(ni.sigs, []);
      let caught: unknown;
      try {
        enforceSignaturePolicy(ni, POLICY, 'https://cache.example.org');
      } catch (e) {
        caught = e;
      }
      assert.ok(caught instanceof NarfsError);
      assert.equal(caught.code, 'ERR_NARINFO_SIGNATURE');
      assert.match(caught.message, /0123456789abcdfghijklmnpqrsvwxyz-hello-2\.12/);
      assert.match(caught.message, /signed by: none/);
      assert.deepEqual(caught.details, { source: 'https://cache.example.org' });
    });

    it('refuses a narinfo signed only by an untrusted key', () => {
      const ni = signed(narInfo(INPUT_ADDRESSED), UNTRUSTED);
      assert.throws(
        () => enforceSignaturePolicy(ni, POLICY, 'file:///lake'),
        (e: unknown) => isCode('ERR_NARINFO_SIGNATURE')(e) && /signed by: evil\.example\.org-1/.test((e as Error).message),
      );
    });

    it('refuses a signature under the trusted name made by another key', () => {
      const ni = signed(narInfo(INPUT_ADDRESSED), IMPOSTOR);
      assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
    });

    it('refuses the trusted key\'s own signature filed under another key name', () => {
      const good = signed(narInfo(INPUT_ADDRESSED), TRUSTED);
      const renamed = { ...good, sigs: good.sigs.map((s) => s.replace(/^[^:]*:/, 'mirror.example.org-1:')) };
      assert.throws(() => enforceSignaturePolicy(renamed, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
    });

    it('refuses a trusted signature over other contents (NarHash changed after signing)', () => {
      const good = signed(narInfo(INPUT_ADDRESSED), TRUSTED);
      const other: Hash = { algo: 'sha256', digest: createHash('sha256').update('other').digest() };
      const tampered = { ...good, narHash: other };
      assert.throws(() => enforceSignaturePolicy(tampered, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
      const moreRefs = { ...good, references: [] };
      assert.throws(() => enforceSignaturePolicy(moreRefs, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
    });

    it('accepts anything when signatures are not required', () => {
      const policy = { requireSigs: false, trustedKeys: [] };
      assert.doesNotThrow(() => enforceSignaturePolicy(narInfo(INPUT_ADDRESSED), policy, 'file:///lake'));
      assert.doesNotThrow(() => enforceSignaturePolicy(signed(narInfo(INPUT_ADDRESSED), UNTRUSTED), policy, 'x'));
    });

    describe('self-certifying content-addressed paths', () => {
      const caPath = makeFixedOutputPath('nar', NAR_HASH, 'hello-src', [REF]);
      const ca = `fixed:r:${formatHash(NAR_HASH, 'nix32')}`;

      it('accepts a fixed:r:sha256 narinfo without signature whose path recomputes', () => {
        assert.match(ca, /^fixed:r:sha256:[0-9a-z]{52}$/);
        const ni = narInfo(caPath, { ca });
        assert.deepEqual(ni.sigs, []);
        assert.equal(ni.ca, ca);
        assert.doesNotThrow(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'));
        // even with no trusted keys at all
        assert.doesNotThrow(() => enforceSignaturePolicy(ni, { requireSigs: true, trustedKeys: [] }, 'file:///lake'));
      });

      it('accepts a self-referencing fixed:r:sha256 path', () => {
        const self = makeFixedOutputPath('nar', NAR_HASH, 'hello-src', [REF], true);
        const ni = narInfo(self, { ca, references: [REF, self] });
        assert.doesNotThrow(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'));
      });

      it('refuses the same CA on a path it does not recompute to', () => {
        const ni = narInfo(INPUT_ADDRESSED, { ca });
        assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
      });

      it('refuses it when the references differ from those the path was made with', () => {
        const ni = narInfo(caPath, { ca, references: [] });
        assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
      });

      it('refuses it when the CA hash is not the NarHash', () => {
        const other: Hash = { algo: 'sha256', digest: createHash('sha256').update('other').digest() };
        const otherPath = makeFixedOutputPath('nar', other, 'hello-src', [REF]);
        const ni = narInfo(otherPath, { ca: `fixed:r:${formatHash(other, 'nix32')}` });
        assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
      });

      it('refuses a CA that is not fixed:r, even on a path that recomputes as fixed:r', () => {
        const digest = formatHash(NAR_HASH, 'nix32', false);
        for (const other of [`fixed:sha256:${digest}`, `text:sha256:${digest}`]) {
          const ni = narInfo(caPath, { ca: other });
          assert.equal(ni.ca, other);
          assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'), other);
        }
      });

      it('refuses a flat fixed:sha256 narinfo without signature', () => {
        const flatPath = makeFixedOutputPath('flat', NAR_HASH, 'hello-src');
        const ni = narInfo(flatPath, { ca: `fixed:${formatHash(NAR_HASH, 'nix32')}`, references: [] });
        assert.throws(() => enforceSignaturePolicy(ni, POLICY, 'file:///lake'), isCode('ERR_NARINFO_SIGNATURE'));
      });
    });
  });

  describe('checkSignaturePolicy', () => {
    it('refuses no trusted keys with signatures required (ERR_SIGNATURE_POLICY)', () => {
      assert.throws(() => checkSignaturePolicy({ requireSigs: true, trustedKeys: [] }), isCode('ERR_SIGNATURE_POLICY'));
    });

    it('accepts trusted keys, or no keys without required signatures', () => {
      assert.doesNotThrow(() => checkSignaturePolicy({ requireSigs: true, trustedKeys: [TRUSTED_PK] }));
      assert.doesNotThrow(() => checkSignaturePolicy({ requireSigs: false, trustedKeys: [] }));
    });
  });
});
