/**
 * nix32: Nix's base-32 encoding of hashes (`printHash32` / `parseHash32` in
 * src/libutil/hash.cc).
 *
 * Format: alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no e, o, u, t). The byte array is
 * read as a little-endian integer (byte 0 least significant) and written most significant
 * 5-bit group first, so a hash of n bytes takes floor((8n - 1) / 5) + 1 characters
 * (52 for SHA-256, 32 for the 20-byte store path digest).
 *
 * Invariant: decoding is strict. The length must match the byte length exactly, every
 * character must be in the alphabet, and bits beyond 8n must be zero, so each byte string
 * has exactly one nix32 spelling (Nix: "invalid base-32 hash").
 */

import { NarfsError } from '../errors.js';

export const NIX32_ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

/** charCode → digit value, or -1 for characters outside the alphabet. */
const DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < NIX32_ALPHABET.length; i++) DIGIT[NIX32_ALPHABET.charCodeAt(i)] = i;

/** Number of nix32 characters for a hash of `byteLength` bytes. */
export function nix32Length(byteLength: number): number {
  if (!Number.isInteger(byteLength) || byteLength < 0) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `invalid byte length ${byteLength}`);
  }
  return byteLength === 0 ? 0 : Math.floor((byteLength * 8 - 1) / 5) + 1;
}

export function encodeNix32(bytes: Uint8Array): string {
  const len = nix32Length(bytes.length);
  let out = '';
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    const lo = bytes[i]! >> j;
    const hi = i + 1 < bytes.length ? bytes[i + 1]! << (8 - j) : 0;
    out += NIX32_ALPHABET[(lo | hi) & 0x1f];
  }
  return out;
}

/** True iff `s` is a valid nix32 spelling of `byteLength` bytes. Never throws. */
export function isNix32(s: string, byteLength: number): boolean {
  return tryDecode(s, byteLength) !== undefined;
}

export function decodeNix32(s: string, byteLength: number): Buffer {
  const out = tryDecode(s, byteLength);
  if (out === undefined) {
    throw new NarfsError('ERR_NIX32', `invalid nix32 string for ${byteLength} bytes: '${truncate(s)}'`);
  }
  return out;
}

function tryDecode(s: string, byteLength: number): Buffer | undefined {
  const len = nix32Length(byteLength);
  if (s.length !== len) return undefined;
  const out = Buffer.alloc(byteLength);
  for (let n = 0; n < len; n++) {
    const code = s.charCodeAt(len - 1 - n);
    const digit = code < 128 ? DIGIT[code]! : -1;
    if (digit < 0) return undefined;
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    out[i] = out[i]! | ((digit << j) & 0xff);
    const carry = digit >> (8 - j);
    if (i + 1 < byteLength) out[i + 1] = out[i + 1]! | carry;
    else if (carry !== 0) return undefined; // excess bits must be zero
  }
  return out;
}

function truncate(s: string): string {
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}
