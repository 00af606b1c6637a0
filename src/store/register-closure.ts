/**
 * registerClosure: makes store paths and their closures valid in a lower store database,
 * so that Nix's local-overlay store reuses them (nix-formats.md §5.6, §6).
 *
 * Invariants: only paths whose narinfos passed the signature policy are registered, and
 * only whole closures (collectClosure); `.drv` paths get their DerivationOutputs from the
 * derivation itself, read through the verified NAR; the write is one all-or-nothing,
 * idempotent transaction (src/nixdb); every registered path is added to the mount's root
 * listing (Nix's `--verify` of a lower store drops rows whose entry is missing).
 */
import { NarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import { formatHash } from '../nix/hash.js';
import { parseDerivationOutputs } from '../nix/derivation.js';
import { storePathBase, storePathFull, type StorePath } from '../nix/store-path.js';
import { registerOffThread, type ValidPathInfo } from '../nixdb/index.js';
import { collectClosure } from './closure.js';
import type { PathInfo, PathInfoService } from './path-info-service.js';

export interface RegisterClosureDeps {
  infos: PathInfoService;
  /** Whole contents of a store path that is a single regular file (a `.drv`). */
  readFile(info: PathInfo, signal?: AbortSignal): Promise<Buffer>;
  /** Makes registered names visible in the mount's root. */
  addKnown(names: string[]): void;
  logger: Logger;
}

export interface RegisterClosureResult {
  closure: number;
  added: number;
  alreadyValid: number;
}

export async function registerClosure(
  lowerRoot: string, roots: StorePath[], deps: RegisterClosureDeps,
  options: { signal?: AbortSignal; lockTimeoutMs?: number } = {},
): Promise<RegisterClosureResult> {
  const started = Date.now();
  const closure = await collectClosure(roots, deps.infos, {
    ...(options.signal ? { signal: options.signal } : {}),
    onProgress: (resolved, queued) => {
      if (resolved >= 200) deps.logger.info('resolving closure', { resolved, queued });
    },
  });
  const rows: ValidPathInfo[] = [];
  for (const info of closure) rows.push(await toValidPathInfo(info, deps, options.signal));
  // Off the thread that serves FUSE; never touching <lower>/nix/store (it may be this
  // very process's mount).
  const r = await registerOffThread(lowerRoot, rows, lockTimeout(options));
  deps.addKnown(closure.map((i) => storePathBase(i.narInfo.storePath)));
  deps.logger.info('registered', { lower: lowerRoot, closure: closure.length, added: r.added, alreadyValid: r.alreadyValid, ms: Date.now() - started });
  return { closure: closure.length, added: r.added, alreadyValid: r.alreadyValid };
}

function lockTimeout(options: { lockTimeoutMs?: number }): { lockTimeoutMs?: number } {
  return options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs };
}

async function toValidPathInfo(info: PathInfo, deps: RegisterClosureDeps, signal?: AbortSignal): Promise<ValidPathInfo> {
  const ni = info.narInfo;
  const path = storePathFull(ni.storePath);
  const row: ValidPathInfo = {
    path,
    narHash: formatHash(ni.narHash, 'base16'),
    narSize: ni.narSize,
    references: ni.references.map(storePathFull),
    sigs: [...ni.sigs],
  };
  if (ni.deriver) row.deriver = storePathFull(ni.deriver);
  if (ni.ca) row.ca = ni.ca;
  if (path.endsWith('.drv')) {
    const text = (await deps.readFile(info, signal)).toString('utf8');
    try {
      row.drvOutputs = parseDerivationOutputs(text)
        .filter((o): o is { id: string; path: string } => o.path !== undefined)
        .map((o) => ({ id: o.id, path: o.path }));
    } catch (err) {
      throw new NarfsError('ERR_DERIVATION_PARSE', `${path}: ${(err as Error).message}`, { cause: err });
    }
  }
  return row;
}
