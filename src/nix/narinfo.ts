/**
 * `.narinfo` and `nix-cache-info` files of a binary cache (`NarInfo::NarInfo` and
 * `NarInfo::to_string` in src/libstore/nar-info.cc; `BinaryCacheStore::init` in
 * src/libstore/binary-cache-store.cc).
 *
 * Parser quirks kept from Nix: each line is `Key: value\n` where the separator is assumed to
 * be `": "` (the character after the colon is skipped unseen) and every line, the last one
 * included, must end in `\n`; unknown keys are ignored; a missing or empty Compression
 * means `bzip2`; `Deriver: unknown-deriver` means no deriver; References and Sig are sets.
 *
 * Errors: broken framing, malformed values (hashes, store paths, numbers, CA), a second
 * References or CA line, and a NarHash that is not sha256 throw ERR_NARINFO_PARSE; a
 * missing StorePath, NarHash or URL, or a missing or zero NarSize throw ERR_NARINFO_CORRUPT
 * (Nix: "NAR info file is corrupt").
 */

import { NarfsError, type ErrorCode } from '../errors.js';
import { parseContentAddress } from './content-address.js';
import { formatHash, parseHash, type Hash } from './hash.js';
import {
  compareStorePaths,
  parseStorePath,
  parseStorePathBase,
  storePathBase,
  storePathEquals,
  storePathFull,
  type StorePath,
} from './store-path.js';

export interface NarInfo {
  storePath: StorePath;
  url: string;
  compression: string;
  fileHash?: Hash;
  fileSize?: number;
  narHash: Hash;
  narSize: number;
  /** Sorted by basename, without duplicates; includes the path itself if self-referencing. */
  references: StorePath[];
  deriver?: StorePath;
  /** Raw `name:base64` strings, sorted, without duplicates (a std::set in Nix). */
  sigs: string[];
  /** The CA line verbatim (checked with parseContentAddress). */
  ca?: string;
  /** Written by Nix 2.8 only; ignored by Nix ≥ 2.10. */
  system?: string;
}

export interface CacheInfo {
  /** undefined when the file has no StoreDir line; the caller decides what that means. */
  storeDir: string | undefined;
  wantMassQuery: boolean;
  priority: number;
}

/** Nix's default `priority` of a binary cache (BinaryCacheStoreConfig). */
export const DEFAULT_CACHE_PRIORITY = 50;

const DECIMAL_RE = /^[0-9]+$/;

export function parseNarInfo(text: string, whence = '<narinfo>'): NarInfo {
  const fail = (code: ErrorCode, why: string, cause?: unknown): NarfsError =>
    new NarfsError(code, `NAR info file '${whence}' is corrupt: ${why}`, {
      ...(cause === undefined ? {} : { cause }),
      details: { whence },
    });

  let storePath: StorePath | undefined;
  let url = '';
  let compression = '';
  let fileHash: Hash | undefined;
  let fileSize: number | undefined;
  let narHash: Hash | undefined;
  let narSize = 0;
  let references: StorePath[] | undefined;
  let deriver: StorePath | undefined;
  const sigs = new Set<string>();
  let ca: string | undefined;
  let sawCa = false;
  let system: string | undefined;

  const parseSize = (key: string, value: string): number => {
    const n = Number(value);
    if (!DECIMAL_RE.test(value) || !Number.isSafeInteger(n)) throw fail('ERR_NARINFO_PARSE', `bad ${key} '${value}'`);
    return n;
  };
  const parseHashField = (key: string, value: string): Hash => {
    try {
      return parseHash(value);
    } catch (e) {
      throw fail('ERR_NARINFO_PARSE', `bad ${key} '${value}'`, e);
    }
  };
  const parsePathField = (key: string, value: string, full: boolean): StorePath => {
    try {
      return full ? parseStorePath(value) : parseStorePathBase(value);
    } catch (e) {
      throw fail('ERR_NARINFO_PARSE', `bad ${key} '${value}'`, e);
    }
  };

  let pos = 0;
  const len = text.length;
  while (pos < len) {
    const colon = text.indexOf(':', pos);
    if (colon < 0) throw fail('ERR_NARINFO_PARSE', `expecting ':' at offset ${pos}`);
    const eol = text.indexOf('\n', colon + 2);
    if (eol < 0) throw fail('ERR_NARINFO_PARSE', `expecting '\\n' after offset ${colon}`);
    const name = text.slice(pos, colon);
    const value = text.slice(colon + 2, eol);
    pos = eol + 1;

    switch (name) {
      case 'StorePath':
        storePath = parsePathField(name, value, true);
        break;
      case 'URL':
        url = value;
        break;
      case 'Compression':
        compression = value;
        break;
      case 'FileHash':
        fileHash = parseHashField(name, value);
        break;
      case 'FileSize':
        fileSize = parseSize(name, value);
        break;
      case 'NarHash':
        narHash = parseHashField(name, value);
        if (narHash.algo !== 'sha256') throw fail('ERR_NARINFO_PARSE', `NarHash '${value}' is not sha256`);
        break;
      case 'NarSize':
        narSize = parseSize(name, value);
        break;
      case 'References': {
        if (references !== undefined) throw fail('ERR_NARINFO_PARSE', 'extra References');
        const refs: StorePath[] = [];
        for (const tok of value.split(' ')) if (tok !== '') refs.push(parsePathField(name, tok, false));
        references = refs;
        break;
      }
      case 'Deriver':
        if (value !== 'unknown-deriver') deriver = parsePathField(name, value, false);
        break;
      case 'Sig':
        sigs.add(value);
        break;
      case 'CA':
        if (sawCa) throw fail('ERR_NARINFO_PARSE', 'extra CA');
        sawCa = true;
        if (value !== '') {
          try {
            parseContentAddress(value);
          } catch (e) {
            throw fail('ERR_NARINFO_PARSE', `bad CA '${value}'`, e);
          }
          ca = value;
        }
        break;
      case 'System':
        system = value;
        break;
      default:
        break; // forward compatible: unknown keys are ignored
    }
  }

  if (compression === '') compression = 'bzip2';
  if (storePath === undefined) throw fail('ERR_NARINFO_CORRUPT', 'StorePath missing');
  if (narHash === undefined) throw fail('ERR_NARINFO_CORRUPT', 'NarHash missing');
  if (url === '') throw fail('ERR_NARINFO_CORRUPT', 'URL missing');
  if (narSize === 0) throw fail('ERR_NARINFO_CORRUPT', 'NarSize missing or zero');

  const ni: NarInfo = {
    storePath,
    url,
    compression,
    narHash,
    narSize,
    references: sortedUnique(references ?? []),
    sigs: [...sigs].sort(),
  };
  if (fileHash !== undefined) ni.fileHash = fileHash;
  if (fileSize !== undefined) ni.fileSize = fileSize;
  if (deriver !== undefined) ni.deriver = deriver;
  if (ca !== undefined) ni.ca = ca;
  if (system !== undefined) ni.system = system;
  return ni;
}

/**
 * Writes a narinfo in the order of Nix `NarInfo::to_string` (System, from Nix 2.8, after
 * Deriver). Hashes are written `sha256:<nix32>`. Does not validate: tests use it to build
 * modified narinfos.
 */
export function formatNarInfo(ni: NarInfo): string {
  let out = `StorePath: ${storePathFull(ni.storePath)}\n`;
  out += `URL: ${ni.url}\n`;
  out += `Compression: ${ni.compression}\n`;
  if (ni.fileHash !== undefined) out += `FileHash: ${formatHash(ni.fileHash, 'nix32')}\n`;
  if (ni.fileSize !== undefined && ni.fileSize !== 0) out += `FileSize: ${ni.fileSize}\n`;
  out += `NarHash: ${formatHash(ni.narHash, 'nix32')}\n`;
  out += `NarSize: ${ni.narSize}\n`;
  out += `References: ${sortedUnique(ni.references).map(storePathBase).join(' ')}\n`;
  if (ni.deriver !== undefined) out += `Deriver: ${storePathBase(ni.deriver)}\n`;
  if (ni.system !== undefined) out += `System: ${ni.system}\n`;
  for (const sig of [...new Set(ni.sigs)].sort()) out += `Sig: ${sig}\n`;
  if (ni.ca !== undefined) out += `CA: ${ni.ca}\n`;
  return out;
}

/**
 * Parses `nix-cache-info` like Nix `BinaryCacheStore::init`: lines split on `\n`; key =
 * text before the first `:`, value = the rest trimmed; lines without `:` and unknown keys
 * are ignored. WantMassQuery is true iff the value is exactly `1`; Priority is read like
 * `std::stoi` (leading integer, rest ignored) and defaults to 50.
 */
export function parseCacheInfo(text: string): CacheInfo {
  const info: CacheInfo = { storeDir: undefined, wantMassQuery: false, priority: DEFAULT_CACHE_PRIORITY };
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t\n\r]+|[ \t\n\r]+$/g, '');
    if (key === 'StoreDir') {
      info.storeDir = value;
    } else if (key === 'WantMassQuery') {
      info.wantMassQuery = value === '1';
    } else if (key === 'Priority') {
      const m = /^[ \t\n\r\f\v]*([+-]?[0-9]+)/.exec(value);
      const n = m === null ? NaN : Number(m[1]);
      if (!Number.isInteger(n) || n < -2147483648 || n > 2147483647) {
        throw new NarfsError('ERR_CACHE_INFO', `nix-cache-info has an invalid Priority '${value}'`);
      }
      info.priority = n;
    }
  }
  return info;
}

function sortedUnique(paths: readonly StorePath[]): StorePath[] {
  const sorted = [...paths].sort(compareStorePaths);
  return sorted.filter((p, i) => i === 0 || !storePathEquals(sorted[i - 1]!, p));
}
