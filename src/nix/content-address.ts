/**
 * Content addresses and the store paths they imply (`ContentAddress::parse/render` in
 * src/libstore/content-address.cc; `makeStorePath`, `makeType`, `makeFixedOutputPath`,
 * `makeTextPath` in src/libstore/store-api.cc; `compressHash` in src/libutil/hash.cc).
 *
 * Format: `text:sha256:<digest>`, `fixed:r:<algo>:<digest>` (NAR serialisation),
 * `fixed:<algo>:<digest>` (flat file), `fixed:git:<algo>:<digest>` (git-hashing); the digest
 * is unprefixed base16/nix32/base64 (never SRI) and is rendered in nix32.
 *
 * Store path digest: sha256 of `<type>:sha256:<base16 inner hash>:/nix/store:<name>`,
 * XOR-folded to 20 bytes (`out[i % 20] ^= h[i]`), printed in nix32. `type` is
 * `source[:<ref path>…][:self]` for NAR+SHA-256 content, `text[:<ref path>…]` for text,
 * `output:out` for other fixed outputs (inner hash = sha256 of `fixed:out:[r:]<algo>:<hex>:`).
 *
 * Trust (Nix `ValidPathInfo::checkSignatures` returns "max" when `isContentAddressed`):
 * `isSelfCertifyingNarInfo` only accepts `fixed:r:sha256:<h>` where h is the narinfo's own
 * NarHash, because then verifying the NAR against NarHash also proves the path name.
 * `text:` and flat `fixed:` hash the file contents rather than the NAR, so they can be
 * trusted only after hashing the contents, which this pure module cannot do; git-hashing
 * is not supported. Those return false here.
 */

import { createHash } from 'node:crypto';

import { NarfsError } from '../errors.js';
import { formatHash, hashEquals, isHashAlgo, parseHashDigest, type Hash } from './hash.js';
import type { NarInfo } from './narinfo.js';
import { encodeNix32 } from './nix32.js';
import {
  STORE_DIR,
  compareStorePaths,
  isValidStorePathName,
  storePathEquals,
  storePathFull,
  type StorePath,
} from './store-path.js';

/** How the content was hashed: text file, flat file, NAR serialisation, git tree. */
export type ContentAddressMethod = 'text' | 'flat' | 'nar' | 'git';

export interface ContentAddress {
  method: ContentAddressMethod;
  hash: Hash;
}

export function parseContentAddress(s: string): ContentAddress {
  const bad = (why: string): NarfsError =>
    new NarfsError('ERR_HASH_FORMAT', `content address '${s.length > 200 ? `${s.slice(0, 200)}…` : s}' ${why}`, {
      hint: 'Content addresses look like fixed:r:sha256:<nix32>, fixed:sha256:<nix32> or text:sha256:<nix32>.',
    });
  const colon = s.indexOf(':');
  if (colon < 0) throw bad('has no prefix');
  const prefix = s.slice(0, colon);
  let rest = s.slice(colon + 1);
  let method: ContentAddressMethod;
  if (prefix === 'text') {
    method = 'text';
  } else if (prefix === 'fixed') {
    if (rest.startsWith('r:')) {
      method = 'nar';
      rest = rest.slice(2);
    } else if (rest.startsWith('git:')) {
      method = 'git';
      rest = rest.slice(4);
    } else {
      method = 'flat';
    }
  } else {
    throw bad(`has the unknown prefix '${prefix}'`);
  }
  const c = rest.indexOf(':');
  if (c < 0) throw bad('lacks the hash algorithm');
  const algo = rest.slice(0, c);
  if (!isHashAlgo(algo)) throw bad(`has the unknown hash algorithm '${algo}'`);
  if (method === 'text' && algo !== 'sha256') throw bad('text content addresses must use sha256');
  try {
    return { method, hash: parseHashDigest(rest.slice(c + 1), algo) };
  } catch (e) {
    throw bad('has a malformed digest');
  }
}

export function renderContentAddress(ca: ContentAddress): string {
  const h = formatHash(ca.hash, 'nix32');
  switch (ca.method) {
    case 'text':
      return `text:${h}`;
    case 'flat':
      return `fixed:${h}`;
    case 'nar':
      return `fixed:r:${h}`;
    case 'git':
      return `fixed:git:${h}`;
  }
}

/** Nix `compressHash`: XOR-fold a digest to `size` bytes. */
export function compressHash(digest: Uint8Array, size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0; i < digest.length; i++) out[i % size] = out[i % size]! ^ digest[i]!;
  return out;
}

/**
 * Nix `Store::makeStorePath(type, hash, name)`. `innerHash` is a Hash or the base16 of a
 * SHA-256 digest; the fingerprint carries it as `<algo>:<base16>`.
 */
export function makeStorePath(type: string, innerHash: string | Hash, name: string): StorePath {
  if (!isValidStorePathName(name)) {
    throw new NarfsError('ERR_STORE_PATH', `invalid store path name '${name}'`);
  }
  let inner: string;
  if (typeof innerHash === 'string') {
    if (!/^[0-9a-f]{64}$/.test(innerHash)) {
      throw new NarfsError('ERR_HASH_FORMAT', 'makeStorePath wants the lowercase base16 of a sha256 digest');
    }
    inner = `sha256:${innerHash}`;
  } else {
    inner = formatHash(innerHash, 'base16');
  }
  const fingerprint = `${type}:${inner}:${STORE_DIR}:${name}`;
  const digest = createHash('sha256').update(fingerprint, 'utf8').digest();
  return { hashPart: encodeNix32(compressHash(digest, 20)), name };
}

/** Nix `makeType`: `<type>:<ref full path>…[:self]`, references in sorted order. */
export function makeType(type: string, references: readonly StorePath[], hasSelfReference = false): string {
  let out = type;
  let prev: StorePath | undefined;
  for (const r of [...references].sort(compareStorePaths)) {
    if (prev === undefined || !storePathEquals(prev, r)) out += `:${storePathFull(r)}`; // a set, as in Nix
    prev = r;
  }
  if (hasSelfReference) out += ':self';
  return out;
}

/**
 * Nix `makeFixedOutputPath`. `references` excludes the path itself (say so with
 * `hasSelfReference`). Only NAR+SHA-256 may have references.
 */
export function makeFixedOutputPath(
  method: 'nar' | 'flat',
  hash: Hash,
  name: string,
  references: readonly StorePath[] = [],
  hasSelfReference = false,
): StorePath {
  if (method === 'nar' && hash.algo === 'sha256') {
    return makeStorePath(makeType('source', references, hasSelfReference), hash, name);
  }
  if (references.length > 0 || hasSelfReference) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `fixed output '${name}' must not have references`);
  }
  const prefix = method === 'nar' ? 'r:' : '';
  const inner = createHash('sha256')
    .update(`fixed:out:${prefix}${formatHash(hash, 'base16')}:`, 'utf8')
    .digest('hex');
  return makeStorePath('output:out', inner, name);
}

/** Nix `makeTextPath`: sha256 of the file contents; text paths cannot refer to themselves. */
export function makeTextPath(hash: Hash, name: string, references: readonly StorePath[] = []): StorePath {
  if (hash.algo !== 'sha256') {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `text path '${name}' must be hashed with sha256`);
  }
  return makeStorePath(makeType('text', references), hash, name);
}

/** Store path implied by a content address (the path's own references given apart). */
export function makeContentAddressedPath(
  ca: ContentAddress,
  name: string,
  references: readonly StorePath[] = [],
  hasSelfReference = false,
): StorePath {
  switch (ca.method) {
    case 'text':
      if (hasSelfReference) throw new NarfsError('ERR_INVALID_ARGUMENT', `text path '${name}' cannot refer to itself`);
      return makeTextPath(ca.hash, name, references);
    case 'nar':
    case 'flat':
      return makeFixedOutputPath(ca.method, ca.hash, name, references, hasSelfReference);
    case 'git':
      throw new NarfsError('ERR_INVALID_ARGUMENT', 'git-hashing content addresses are not supported');
  }
}

/**
 * True only when the narinfo proves itself: `CA: fixed:r:sha256:<h>` with h equal to its
 * NarHash, and the store path recomputes from h, the name and the references. Such a path
 * needs no signature once the NAR has been checked against NarHash. Never throws.
 */
export function isSelfCertifyingNarInfo(ni: NarInfo): boolean {
  if (ni.ca === undefined) return false;
  let ca: ContentAddress;
  try {
    ca = parseContentAddress(ni.ca);
  } catch {
    return false;
  }
  if (ca.method !== 'nar' || ca.hash.algo !== 'sha256') return false;
  if (!hashEquals(ca.hash, ni.narHash)) return false;
  const others = ni.references.filter((r) => !storePathEquals(r, ni.storePath));
  const hasSelf = others.length !== ni.references.length;
  try {
    const computed = makeFixedOutputPath('nar', ca.hash, ni.storePath.name, others, hasSelf);
    return storePathEquals(computed, ni.storePath);
  } catch {
    return false;
  }
}
