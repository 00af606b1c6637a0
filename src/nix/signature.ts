/**
 * narinfo fingerprints and ed25519 signatures (`ValidPathInfo::fingerprint`,
 * `ValidPathInfo::checkSignature` in src/libstore/path-info.cc; `SecretKey`/`PublicKey`
 * and `verifyDetached` in src/libutil/signature/local-keys.cc).
 *
 * Fingerprint (byte-exact): `1;<full path>;sha256:<nix32 NarHash>;<NarSize>;<sorted full
 * reference paths joined by ','>`. Keys: `<name>:<base64>`; a secret key is the 64-byte
 * libsodium key (seed ‖ public key), a public key 32 bytes. A signature is
 * `<key name>:<base64 of the 64-byte detached signature>`.
 *
 * Invariant: verification never throws. A signature with an unknown key name, bad base64,
 * a wrong length or a wrong value simply does not verify (Nix throws on a wrong length;
 * narfs treats it as invalid so one bad Sig line cannot hide a good one).
 */

import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

import { NarfsError } from '../errors.js';
import { decodeBase64Strict, encodeBase64 } from './base64.js';
import { formatHash } from './hash.js';
import type { NarInfo } from './narinfo.js';
import { storePathFull } from './store-path.js';

export interface PublicKey {
  name: string;
  /** 32 bytes. */
  key: Buffer;
}

export interface SecretKey {
  name: string;
  /** 32-byte ed25519 seed. */
  seed: Buffer;
  /** 32 bytes, derived from the seed (and checked against the key file). */
  publicKey: Buffer;
}

/** DER prefixes that wrap a raw 32-byte ed25519 key into PKCS#8 / SPKI (RFC 8410). */
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export function narInfoFingerprint(ni: Pick<NarInfo, 'storePath' | 'narHash' | 'narSize' | 'references'>): string {
  if (ni.narSize === 0) {
    throw new NarfsError('ERR_NARINFO_CORRUPT', `cannot calculate fingerprint of '${storePathFull(ni.storePath)}': size is not known`);
  }
  const refs = [...new Set(ni.references.map(storePathFull))].sort().join(',');
  return `1;${storePathFull(ni.storePath)};${formatHash(ni.narHash, 'nix32')};${ni.narSize};${refs}`;
}

export function parsePublicKey(s: string): PublicKey {
  const { name, payload } = splitKey(s, 'public');
  if (payload.length !== 32) throw keyError('public key is not valid (not 32 bytes)');
  return { name, key: payload };
}

export function parseSecretKey(s: string): SecretKey {
  const { name, payload } = splitKey(s, 'secret');
  if (payload.length !== 64) throw keyError('secret key is not valid (not 64 bytes)');
  const seed = Buffer.from(payload.subarray(0, 32));
  const stored = Buffer.from(payload.subarray(32));
  const derived = derivePublicKey(seed);
  if (!derived.equals(stored)) throw keyError('secret key is not valid (its public half does not match its seed)');
  return { name, seed, publicKey: derived };
}

/** The public half of a secret key, as `nix key convert-secret-to-public` would give it. */
export function publicKeyOf(sk: SecretKey): PublicKey {
  return { name: sk.name, key: Buffer.from(sk.publicKey) };
}

export function formatPublicKey(pk: PublicKey): string {
  return `${pk.name}:${encodeBase64(pk.key)}`;
}

/** Parses a `trusted-public-keys` value: keys separated by any whitespace. */
export function parseTrustedPublicKeys(whitespaceList: string): PublicKey[] {
  return whitespaceList
    .split(/\s+/)
    .filter((s) => s !== '')
    .map(parsePublicKey);
}

export function signFingerprint(fp: string, sk: SecretKey): string {
  const sig = sign(null, Buffer.from(fp, 'utf8'), privateKeyObject(sk.seed));
  return `${sk.name}:${encodeBase64(sig)}`;
}

export function verifySignature(fp: string, sig: string, keys: readonly PublicKey[]): boolean {
  const colon = sig.indexOf(':');
  if (colon <= 0) return false;
  const name = sig.slice(0, colon);
  const raw = decodeBase64Strict(sig.slice(colon + 1));
  if (raw === undefined || raw.length !== 64) return false;
  const data = Buffer.from(fp, 'utf8');
  for (const k of keys) {
    if (k.name !== name || k.key.length !== 32) continue;
    try {
      if (verify(null, data, publicKeyObject(k.key), raw)) return true;
    } catch {
      // a key Node cannot import is simply not a match
    }
  }
  return false;
}

/** Trusted iff one of the narinfo's Sig lines verifies with a trusted key. Never throws. */
export function verifyNarInfo(ni: NarInfo, keys: readonly PublicKey[]): { trusted: boolean; by?: string } {
  let fp: string;
  try {
    fp = narInfoFingerprint(ni);
  } catch {
    return { trusted: false };
  }
  for (const sig of ni.sigs) {
    if (verifySignature(fp, sig, keys)) return { trusted: true, by: sig.slice(0, sig.indexOf(':')) };
  }
  return { trusted: false };
}

// ---------------------------------------------------------------------------

function splitKey(s: string, kind: 'public' | 'secret'): { name: string; payload: Buffer } {
  const colon = s.indexOf(':');
  if (colon <= 0) throw keyError(`${kind} key has no '<name>:' prefix`);
  const name = s.slice(0, colon);
  // Nix's base64Decode skips '\n' (key files may end in one); nothing else is tolerated.
  const payload = decodeBase64Strict(s.slice(colon + 1).replace(/\n/g, ''));
  if (payload === undefined) throw keyError(`${kind} key '${name}' is not valid base64`);
  return { name, payload };
}

function keyError(why: string): NarfsError {
  return new NarfsError('ERR_KEY_FORMAT', why);
}

function privateKeyObject(seed: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

/**
 * The KeyObject of a trusted key, made once per key Buffer: creating it costs more than a
 * verification, and a closure of thousands of paths checks against the same few keys.
 */
const keyObjects = new WeakMap<Buffer, KeyObject>();

function publicKeyObject(key: Buffer): KeyObject {
  let obj = keyObjects.get(key);
  if (obj === undefined) {
    obj = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, key]), format: 'der', type: 'spki' });
    keyObjects.set(key, obj);
  }
  return obj;
}

function derivePublicKey(seed: Buffer): Buffer {
  const spki = createPublicKey(privateKeyObject(seed)).export({ format: 'der', type: 'spki' });
  return Buffer.from(spki.subarray(SPKI_PREFIX.length));
}
