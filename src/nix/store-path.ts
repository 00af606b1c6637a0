/**
 * Store paths `/nix/store/<hashPart>-<name>` (`StorePath` in src/libstore/path.cc,
 * `checkName` in src/libstore/path.cc, `Store::parseStorePath` in src/libstore/store-api.cc).
 *
 * Format: hashPart = exactly 32 nix32 characters (160 bits); then a `-` (required here, as in
 * Nix HEAD; 2.26.3 skips the character unchecked); name = 1..211 characters of
 * `[0-9A-Za-z+\-._?=]`, not `.` or `..`, and not starting with `.-` or `..-` (Nix ≥ 2.21).
 *
 * Invariant: a StorePath value always satisfies these rules. `parseStorePath` takes the
 * full path literally: it must be exactly `/nix/store/` + a valid basename (Nix would
 * first canonicalise `//`, `/./` or a trailing `/`; narfs refuses such spellings).
 */

import { NarfsError } from '../errors.js';

export const STORE_DIR = '/nix/store';
export const HASH_PART_LENGTH = 32;
export const MAX_NAME_LENGTH = 211;

export interface StorePath {
  hashPart: string;
  name: string;
}

/** charCode → true for nix32 characters. */
const NIX32_CHAR = new Uint8Array(128);
for (const c of '0123456789abcdfghijklmnpqrsvwxyz') NIX32_CHAR[c.charCodeAt(0)] = 1;

/** charCode → true for characters allowed in a store path name. */
const NAME_CHAR = new Uint8Array(128);
for (const c of '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-._?=') {
  NAME_CHAR[c.charCodeAt(0)] = 1;
}

export function isValidHashPart(s: string): boolean {
  if (s.length !== HASH_PART_LENGTH) return false;
  for (let i = 0; i < HASH_PART_LENGTH; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || NIX32_CHAR[c] === 0) return false;
  }
  return true;
}

/** Reason a name is invalid, or undefined when it is valid. */
function nameProblem(name: string): string | undefined {
  const len = name.length;
  if (len === 0) return 'name is empty';
  if (len > MAX_NAME_LENGTH) return `name is longer than ${MAX_NAME_LENGTH} characters`;
  for (let i = 0; i < len; i++) {
    const c = name.charCodeAt(i);
    if (c >= 128 || NAME_CHAR[c] === 0) return `name contains the forbidden character '${name[i]}'`;
  }
  if (name.charCodeAt(0) === 0x2e /* . */) {
    if (name === '.' || name === '..' || name.startsWith('.-') || name.startsWith('..-')) {
      return `name '${name}' is '.' or '..' or starts with '.-' or '..-'`;
    }
  }
  return undefined;
}

export function isValidStorePathName(name: string): boolean {
  return nameProblem(name) === undefined;
}

/** Cheap, never throws: called on every FUSE lookup in the store root. */
export function isStorePathBase(s: string): boolean {
  const len = s.length;
  if (len < HASH_PART_LENGTH + 2 || len > HASH_PART_LENGTH + 1 + MAX_NAME_LENGTH) return false;
  if (s.charCodeAt(HASH_PART_LENGTH) !== 0x2d /* - */) return false;
  for (let i = 0; i < HASH_PART_LENGTH; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || NIX32_CHAR[c] === 0) return false;
  }
  for (let i = HASH_PART_LENGTH + 1; i < len; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || NAME_CHAR[c] === 0) return false;
  }
  if (s.charCodeAt(HASH_PART_LENGTH + 1) === 0x2e /* . */) {
    return nameProblem(s.slice(HASH_PART_LENGTH + 1)) === undefined;
  }
  return true;
}

export function parseStorePathBase(base: string): StorePath {
  if (base.length < HASH_PART_LENGTH + 2) {
    throw storePathError(base, 'is too short for <32-char hash>-<name>');
  }
  const hashPart = base.slice(0, HASH_PART_LENGTH);
  if (!isValidHashPart(hashPart)) throw storePathError(base, 'has an invalid hash part');
  if (base.charCodeAt(HASH_PART_LENGTH) !== 0x2d) throw storePathError(base, "lacks the '-' after the hash part");
  const name = base.slice(HASH_PART_LENGTH + 1);
  const problem = nameProblem(name);
  if (problem !== undefined) throw storePathError(base, problem);
  return { hashPart, name };
}

export function parseStorePath(full: string): StorePath {
  const prefix = `${STORE_DIR}/`;
  if (!full.startsWith(prefix)) throw storePathError(full, `is not in the Nix store ${STORE_DIR}`);
  const base = full.slice(prefix.length);
  if (base.includes('/')) throw storePathError(full, `is not directly under ${STORE_DIR}`);
  return parseStorePathBase(base);
}

/** Makes a StorePath from parts, checking both. */
export function makeStorePathValue(hashPart: string, name: string): StorePath {
  return parseStorePathBase(`${hashPart}-${name}`);
}

export function storePathBase(sp: StorePath): string {
  return `${sp.hashPart}-${sp.name}`;
}

export function storePathFull(sp: StorePath): string {
  return `${STORE_DIR}/${sp.hashPart}-${sp.name}`;
}

export function storePathEquals(a: StorePath, b: StorePath): boolean {
  return a.hashPart === b.hashPart && a.name === b.name;
}

/** Bytewise order of basenames (Nix `StorePath::operator<`); all characters are ASCII. */
export function compareStorePaths(a: StorePath, b: StorePath): number {
  const x = storePathBase(a);
  const y = storePathBase(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function storePathError(s: string, why: string): NarfsError {
  const shown = s.length > 300 ? `${s.slice(0, 300)}…` : s;
  return new NarfsError('ERR_STORE_PATH', `store path '${shown}' ${why}`);
}
