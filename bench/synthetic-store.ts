/**
 * Synthetic store paths for the registration benchmark (bench/register-scale.ts): rows
 * for `registerValidPaths`, the same rows in `nix-store --dump-db` format for
 * `nix-store --load-db` (nix-formats.md §5.5), and a signed file:// datalake of them for
 * the `narfs register` command.
 *
 * Shape: path i of a set refers to itself and to paths ⌊i/2⌋, ⌊i/3⌋, ⌊i/7⌋ of the same
 * set (those below i), so a set is one closure rooted at path 0 whose depth is log2(n):
 * Nix's topoSortPaths recurses once per level, and a chain of 10^6 would overflow its stack.
 * A set with `base` set refers from its path 0 to `base` (already valid) as well.
 * Everything is a function of the tag and the index: the same call gives the same rows.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatNarInfo, type NarInfo } from '../src/nix/narinfo.js';
import { narInfoFingerprint, signFingerprint, type SecretKey } from '../src/nix/signature.js';
import { parseStorePath } from '../src/nix/store-path.js';
import type { ValidPathInfo } from '../src/nixdb/index.js';

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

export function syntheticPath(tag: string, i: number): string {
  const h = createHash('sha256').update(`${tag}/${i}`).digest();
  let part = '';
  for (let k = 0; k < 32; k++) part += NIX32[h[k]! % 32];
  return `/nix/store/${part}-${tag}-${i}`;
}

/** Indices path i refers to, besides itself. */
function parents(i: number): number[] {
  if (i === 0) return [];
  return [...new Set([i >> 1, Math.floor(i / 3), Math.floor(i / 7)])].filter((j) => j < i);
}

/** `n` rows of one closure; `sign` adds a real signature (else a well-formed fake one). */
export function syntheticInfos(tag: string, n: number, options: { base?: string; sign?: SecretKey } = {}): ValidPathInfo[] {
  const paths = Array.from({ length: n }, (_, i) => syntheticPath(tag, i));
  const fakeSig = `bench-1:${Buffer.alloc(64, 7).toString('base64')}`;
  return paths.map((path, i) => {
    const references = [path, ...parents(i).map((j) => paths[j]!)];
    if (i === 0 && options.base) references.push(options.base);
    const narHash = createHash('sha256').update(path).digest();
    const info: ValidPathInfo = { path, narHash: `sha256:${narHash.toString('hex')}`, narSize: 1000 + (i % 5000), references, sigs: [fakeSig] };
    if (options.sign) {
      const fp = narInfoFingerprint({
        storePath: parseStorePath(path), narHash: { algo: 'sha256', digest: narHash }, narSize: info.narSize,
        references: references.map(parseStorePath),
      });
      info.sigs = [signFingerprint(fp, options.sign)];
    }
    return info;
  });
}

/** The rows in `nix-store --dump-db` format (what `--load-db` reads; sigs and ca are lost). */
export function dumpDb(infos: readonly ValidPathInfo[]): string {
  const parts: string[] = [];
  for (const i of infos) {
    parts.push(i.path, i.narHash.replace(/^sha256:/, ''), String(i.narSize), i.deriver ?? '', String(i.references.length), ...i.references);
  }
  return parts.join('\n') + '\n';
}

/**
 * A file:// binary cache holding narinfos of `infos` (no NARs: registration reads only
 * narinfos, and `.drv` NARs, which synthetic sets have none of).
 */
export function writeSyntheticDatalake(dir: string, infos: readonly ValidPathInfo[]): void {
  mkdirSync(join(dir, 'nar'), { recursive: true });
  writeFileSync(join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n');
  for (const i of infos) {
    const sp = parseStorePath(i.path);
    const narHash = { algo: 'sha256' as const, digest: Buffer.from(i.narHash.slice(7), 'hex') };
    const ni: NarInfo = {
      storePath: sp, url: `nar/${i.narHash.slice(7)}.nar`, compression: 'none', narHash, narSize: i.narSize,
      references: i.references.map(parseStorePath), sigs: i.sigs,
    };
    writeFileSync(join(dir, `${sp.hashPart}.narinfo`), formatNarInfo(ni));
  }
}
