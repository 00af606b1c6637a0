/**
 * Textual hashes as Nix reads and writes them (`Hash::parseAnyPrefixed`, `Hash::parseAny`,
 * `Hash::to_string` in src/libutil/hash.cc).
 *
 * Format: `<algo>:<digest>` where the digest encoding is chosen by its length (base16 in
 * either case, nix32, or padded base64), or SRI `<algo>-<base64>`. Algorithms: md5, sha1,
 * sha256, sha512. The lengths never collide (e.g. sha256: 64 hex, 52 nix32, 44 base64).
 *
 * Invariant: a parsed Hash always has a digest of exactly the algorithm's size. Every
 * malformed spelling throws ERR_HASH_FORMAT (nix32 problems included).
 */

import { NarfsError } from '../errors.js';
import { base64Length, decodeBase64Strict, encodeBase64 } from './base64.js';
import { decodeNix32, encodeNix32, isNix32, nix32Length } from './nix32.js';

export type HashAlgo = 'md5' | 'sha1' | 'sha256' | 'sha512';

export interface Hash {
  algo: HashAlgo;
  digest: Buffer;
}

export type HashEncoding = 'nix32' | 'base16' | 'base64' | 'sri';

export const HASH_SIZE: Readonly<Record<HashAlgo, number>> = {
  md5: 16,
  sha1: 20,
  sha256: 32,
  sha512: 64,
};

export function isHashAlgo(s: string): s is HashAlgo {
  return s === 'md5' || s === 'sha1' || s === 'sha256' || s === 'sha512';
}

const HEX_RE = /^[0-9a-fA-F]*$/;

/**
 * Nix `Hash::parseAnyPrefixed`: the algorithm must be given, as `algo:` or SRI `algo-`.
 */
export function parseHash(s: string): Hash {
  const prefixed = splitPrefix(s);
  if (prefixed === undefined) {
    throw hashError(s, 'does not include a type (expected sha256:… or sha256-…)');
  }
  return prefixed.sri ? parseSri(s, prefixed.algo, prefixed.rest) : parseDigest(s, prefixed.algo, prefixed.rest);
}

/**
 * Nix `Hash::parseAny(s, defaultAlgo)`: like `parseHash`, but an unprefixed digest is read
 * as `defaultAlgo`. As in Nix, a prefix naming another algorithm than `defaultAlgo` is an
 * error ("hash should have type"), not a silent switch of algorithm.
 */
export function parseHashAnyOrDefault(s: string, defaultAlgo: HashAlgo): Hash {
  const prefixed = splitPrefix(s);
  if (prefixed === undefined) return parseDigest(s, defaultAlgo, s);
  if (prefixed.algo !== defaultAlgo) {
    throw hashError(s, `should have type '${defaultAlgo}'`);
  }
  return prefixed.sri ? parseSri(s, prefixed.algo, prefixed.rest) : parseDigest(s, prefixed.algo, prefixed.rest);
}

/**
 * Parses an unprefixed, non-SRI digest of a known algorithm (Nix `Hash::parseNonSRIUnprefixed`,
 * used by content addresses `fixed:r:sha256:<digest>`).
 */
export function parseHashDigest(digest: string, algo: HashAlgo): Hash {
  return parseDigest(digest, algo, digest);
}

/**
 * Renders a hash. `nix32`, `base16` and `base64` are prefixed with `algo:` unless
 * `includeAlgo` is false; `sri` is always `algo-<base64>`.
 */
export function formatHash(h: Hash, enc: HashEncoding, includeAlgo = true): string {
  let digest: string;
  switch (enc) {
    case 'nix32':
      digest = encodeNix32(h.digest);
      break;
    case 'base16':
      digest = h.digest.toString('hex');
      break;
    case 'base64':
      digest = encodeBase64(h.digest);
      break;
    case 'sri':
      return `${h.algo}-${encodeBase64(h.digest)}`;
    default:
      throw new NarfsError('ERR_INVALID_ARGUMENT', `unknown hash encoding '${String(enc)}'`);
  }
  return includeAlgo ? `${h.algo}:${digest}` : digest;
}

export function hashEquals(a: Hash, b: Hash): boolean {
  return a.algo === b.algo && a.digest.length === b.digest.length && a.digest.equals(b.digest);
}

// ---------------------------------------------------------------------------

interface Prefix {
  algo: HashAlgo;
  rest: string;
  sri: boolean;
}

/** `algo:rest` or `algo-rest`; undefined when there is no prefix at all. */
function splitPrefix(s: string): Prefix | undefined {
  const colon = s.indexOf(':');
  if (colon >= 0) {
    const algo = s.slice(0, colon);
    if (!isHashAlgo(algo)) throw hashError(s, `unknown hash algorithm '${algo}'`);
    return { algo, rest: s.slice(colon + 1), sri: false };
  }
  const dash = s.indexOf('-');
  if (dash >= 0) {
    const algo = s.slice(0, dash);
    if (!isHashAlgo(algo)) throw hashError(s, `unknown hash algorithm '${algo}'`);
    return { algo, rest: s.slice(dash + 1), sri: true };
  }
  return undefined;
}

function parseSri(whole: string, algo: HashAlgo, rest: string): Hash {
  const size = HASH_SIZE[algo];
  const digest = rest.length === base64Length(size) ? decodeBase64Strict(rest) : undefined;
  if (digest === undefined || digest.length !== size) {
    throw hashError(whole, `invalid SRI ${algo} digest`);
  }
  return { algo, digest };
}

function parseDigest(whole: string, algo: HashAlgo, rest: string): Hash {
  const size = HASH_SIZE[algo];
  if (rest.length === size * 2) {
    if (!HEX_RE.test(rest)) throw hashError(whole, 'invalid base16 digest');
    return { algo, digest: Buffer.from(rest, 'hex') };
  }
  if (rest.length === nix32Length(size)) {
    if (!isNix32(rest, size)) throw hashError(whole, 'invalid nix32 digest');
    return { algo, digest: decodeNix32(rest, size) };
  }
  if (rest.length === base64Length(size)) {
    const digest = decodeBase64Strict(rest);
    if (digest === undefined || digest.length !== size) throw hashError(whole, 'invalid base64 digest');
    return { algo, digest };
  }
  throw hashError(whole, `has wrong length for a ${algo} hash`);
}

function hashError(s: string, why: string): NarfsError {
  const shown = s.length > 140 ? `${s.slice(0, 140)}…` : s;
  return new NarfsError('ERR_HASH_FORMAT', `hash '${shown}' ${why}`);
}
