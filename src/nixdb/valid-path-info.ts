/**
 * What narfs registers per store path: the metadata Nix keeps in `ValidPaths`, `Refs` and
 * `DerivationOutputs` (src/libstore/path-info.hh `ValidPathInfo`, written by
 * src/libstore/local-store.cc `addValidPath`). The store layer adapts narinfos to this.
 *
 * Invariant: `validateValidPathInfos` accepts a batch only if every row it implies is one
 * Nix 2.26 would itself write and read back: full logical store paths, `sha256:<64 hex>`
 * NAR hashes, a non-negative integer size, full-path references (self included), a `.drv`
 * deriver, space-free signatures, and — for `.drv` paths only, and then always — the
 * statically known outputs (Nix fills DerivationOutputs for every valid .drv).
 */
import { NarfsError } from '../errors.js';
import { LOGICAL_STORE_DIR } from './lower-store-layout.js';
import { isStorePathBase } from '../nix/store-path.js';

export interface ValidPathInfo {
  /** Full path, `/nix/store/<hash>-<name>`. */
  path: string;
  /** `sha256:` + 64 lowercase hex digits (what Nix stores in ValidPaths.hash). */
  narHash: string;
  narSize: number;
  /** Full paths, including `path` itself when it refers to itself. */
  references: string[];
  /** Full path of the `.drv` that produced it. */
  deriver?: string;
  /** `<key name>:<base64>` signatures. */
  sigs: string[];
  /** Content address (`fixed:r:sha256:…`, `text:sha256:…`), verbatim from the narinfo. */
  ca?: string;
  /** For `.drv` paths: the outputs whose paths the derivation fixes (see parseDerivationOutputs). */
  drvOutputs?: Array<{ id: string; path: string }>;
}

/** A full logical store path (src/libstore/path.cc rules, via src/nix/store-path). */
export function isStorePath(p: string): boolean {
  return p.startsWith(`${LOGICAL_STORE_DIR}/`) && isStorePathBase(p.slice(LOGICAL_STORE_DIR.length + 1));
}

function invalid(path: string, message: string): never {
  throw new NarfsError('ERR_INVALID_ARGUMENT', `invalid ValidPathInfo for ${path}: ${message}`, { details: { path } });
}

/** Validates a batch; throws ERR_INVALID_ARGUMENT naming the first offending path. */
export function validateValidPathInfos(infos: readonly ValidPathInfo[]): void {
  const seen = new Set<string>();
  for (const info of infos) {
    const p = info.path;
    if (typeof p !== 'string' || !isStorePath(p)) invalid(String(p), 'path is not a /nix/store path');
    if (seen.has(p)) invalid(p, 'the path appears twice in the batch');
    seen.add(p);
    if (typeof info.narHash !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(info.narHash)) {
      invalid(p, `narHash must be sha256:<64 lowercase hex>, got ${JSON.stringify(info.narHash)}`);
    }
    if (!Number.isSafeInteger(info.narSize) || info.narSize < 0) invalid(p, `narSize ${info.narSize} is not a size`);
    if (!Array.isArray(info.references)) invalid(p, 'references must be an array');
    for (const r of info.references) if (typeof r !== 'string' || !isStorePath(r)) invalid(p, `reference ${JSON.stringify(r)} is not a store path`);
    if (info.deriver !== undefined && (!isStorePath(info.deriver) || !info.deriver.endsWith('.drv'))) {
      invalid(p, `deriver ${JSON.stringify(info.deriver)} is not a .drv store path`);
    }
    if (!Array.isArray(info.sigs)) invalid(p, 'sigs must be an array');
    for (const s of info.sigs) if (typeof s !== 'string' || !/^[^\s:]+:\S+$/.test(s)) invalid(p, `signature ${JSON.stringify(s)} is malformed`);
    if (info.ca !== undefined && (typeof info.ca !== 'string' || !/^(text|fixed):\S+$/.test(info.ca))) {
      invalid(p, `ca ${JSON.stringify(info.ca)} is not a content address`);
    }
    const isDrv = p.endsWith('.drv');
    if (isDrv && info.drvOutputs === undefined) invalid(p, 'a .drv path needs drvOutputs (parse the .drv with parseDerivationOutputs)');
    if (!isDrv && info.drvOutputs !== undefined) invalid(p, 'drvOutputs are only for .drv paths');
    if (info.drvOutputs) {
      const ids = new Set<string>();
      for (const o of info.drvOutputs) {
        if (typeof o.id !== 'string' || o.id === '' || ids.has(o.id)) invalid(p, `output id ${JSON.stringify(o.id)} is empty or repeated`);
        ids.add(o.id);
        if (typeof o.path !== 'string' || !isStorePath(o.path)) invalid(p, `output ${o.id} path ${JSON.stringify(o.path)} is not a store path`);
      }
    }
  }
}
