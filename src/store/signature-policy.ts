/**
 * SignaturePolicy: which narinfos narfs accepts, like Nix's `require-sigs`
 * (LocalStore::pathInfoIsUntrusted / ValidPathInfo::checkSignatures, path-info.cc).
 *
 * Invariant: with `requireSigs` (the default) a narinfo is accepted only when one of its
 * `Sig:` lines verifies (ed25519 over the fingerprint) with a trusted key, or when it is
 * self-certifying (a `fixed:r:sha256` content address that recomputes to its own path).
 * Starting with no trusted keys and without `--no-require-sigs` is refused.
 */
import { NarfsError } from '../errors.js';
import type { NarInfo } from '../nix/narinfo.js';
import { verifyNarInfo, type PublicKey } from '../nix/signature.js';
import { isSelfCertifyingNarInfo } from '../nix/content-address.js';
import { storePathBase } from '../nix/store-path.js';

export interface SignaturePolicy {
  requireSigs: boolean;
  trustedKeys: PublicKey[];
}

export function checkSignaturePolicy(policy: SignaturePolicy): void {
  if (policy.requireSigs && policy.trustedKeys.length === 0) {
    throw new NarfsError('ERR_SIGNATURE_POLICY', 'no trusted public keys, and signatures are required');
  }
}

/** Throws ERR_NARINFO_SIGNATURE unless the policy accepts the narinfo. */
export function enforceSignaturePolicy(ni: NarInfo, policy: SignaturePolicy, source: string): void {
  if (!policy.requireSigs) return;
  if (verifyNarInfo(ni, policy.trustedKeys).trusted) return;
  if (isSelfCertifyingNarInfo(ni)) return;
  const names = ni.sigs.map((s) => s.split(':', 1)[0]).join(', ') || 'none';
  throw new NarfsError(
    'ERR_NARINFO_SIGNATURE',
    `${storePathBase(ni.storePath)} from ${source} has no valid signature by a trusted key (signed by: ${names})`,
    { details: { source } },
  );
}
