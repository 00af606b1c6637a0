/**
 * rewriteNarInfoFile: points a narinfo at another file of the same NAR (a seekable
 * re-encoding): replaces the values of URL, Compression, FileHash and FileSize and keeps
 * every other line byte for byte (StorePath, NarHash, NarSize, References, Deriver, System,
 * Sig, CA, and keys narfs does not know), in their order.
 *
 * Why the Sig lines stay valid: Nix's fingerprint (`ValidPathInfo::fingerprint`,
 * src/libstore/path-info.cc) covers the store path, NarHash, NarSize and References only,
 * none of the lines rewritten here.
 *
 * Invariant: the result parses (parseNarInfo) to the same narinfo except the four fields,
 * checked before it is returned (ERR_INTERNAL otherwise). Missing FileHash/FileSize lines
 * are added after Compression, where Nix's `NarInfo::to_string` writes them.
 */
import { isDeepStrictEqual } from 'node:util';

import { NarfsError } from '../errors.js';
import { formatHash, type Hash } from '../nix/hash.js';
import { parseNarInfo, type NarInfo } from '../nix/narinfo.js';

export interface NarFileFields {
  url: string;
  compression: string;
  fileHash: Hash;
  fileSize: number;
}

export function rewriteNarInfoFile(text: string, fields: NarFileFields, whence = '<narinfo>'): string {
  const before = parseNarInfo(text, whence);
  const values: Record<string, string> = {
    URL: fields.url,
    Compression: fields.compression,
    FileHash: formatHash(fields.fileHash, 'nix32'),
    FileSize: String(fields.fileSize),
  };
  for (const v of Object.values(values)) {
    if (/[\n\r]/.test(v)) throw new NarfsError('ERR_INVALID_ARGUMENT', 'a narinfo value cannot contain a line break');
  }
  const lines = text.split('\n');
  // parseNarInfo checked that the text ends in '\n': the last element is ''.
  lines.pop();
  const seen = new Set<string>();
  const out: string[] = [];
  for (const line of lines) {
    const colon = line.indexOf(':');
    const key = colon < 0 ? '' : line.slice(0, colon);
    if (Object.hasOwn(values, key)) {
      if (seen.has(key)) continue; // a repeated line: Nix keeps the last; one is enough
      seen.add(key);
      out.push(`${key}: ${values[key]}`);
      continue;
    }
    out.push(line);
  }
  // Add what was missing, after the Compression line (or after URL).
  for (const key of ['FileSize', 'FileHash', 'Compression']) {
    if (seen.has(key)) continue;
    const anchor = ['Compression', 'URL'].map((k) => out.findIndex((l) => l.startsWith(`${k}:`))).find((i) => i >= 0) ?? 0;
    out.splice(anchor + 1, 0, `${key}: ${values[key]}`);
    seen.add(key);
  }
  const result = `${out.join('\n')}\n`;
  const after = parseNarInfo(result, whence);
  const strip = (ni: NarInfo): Partial<NarInfo> => {
    const { url: _u, compression: _c, fileHash: _h, fileSize: _s, ...rest } = ni;
    return rest;
  };
  if (
    !isDeepStrictEqual(strip(before), strip(after)) ||
    after.url !== fields.url ||
    after.compression !== fields.compression ||
    after.fileSize !== fields.fileSize ||
    after.fileHash === undefined ||
    !after.fileHash.digest.equals(fields.fileHash.digest)
  ) {
    throw new NarfsError('ERR_INTERNAL', `rewriting the NAR file fields of ${whence} changed other fields`);
  }
  return result;
}
