/**
 * runRegister: `narfs register` on a store stack — turns the user's roots (store paths,
 * basenames, or every narinfo of listable datalakes) into a closure registration in the
 * lower store. Shared by the daemon's control socket and the standalone command.
 */
import { setMaxListeners } from 'node:events';
import { NarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import { parseStorePathBase, STORE_DIR, type StorePath } from '../nix/store-path.js';
import { registerClosure, type RegisterClosureResult } from '../store/register-closure.js';
import type { StoreStack } from './store-stack.js';

export interface RegisterRequest {
  lower: string;
  roots: string[];
  all?: boolean;
}

/** `/nix/store/<base>[/sub/path]` or `<base>` → the store path. */
export function parseRoot(s: string): StorePath {
  let rest = s.trim();
  if (rest.startsWith(STORE_DIR + '/')) rest = rest.slice(STORE_DIR.length + 1);
  const base = rest.split('/')[0] ?? '';
  try {
    return parseStorePathBase(base);
  } catch (err) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `"${s}" is not a store path`, { cause: err, hint: 'Roots look like /nix/store/<hash>-<name> or <hash>-<name>.' });
  }
}

export async function runRegister(stack: StoreStack, request: RegisterRequest, logger: Logger, signal?: AbortSignal): Promise<RegisterClosureResult> {
  const roots = request.roots.map(parseRoot);
  if (request.all) roots.push(...(await allPaths(stack, logger, signal)));
  if (roots.length === 0) throw new NarfsError('ERR_USAGE', 'nothing to register: give store paths, --from-file or --all');
  const effective = signal ?? stack.signal;
  return registerClosure(request.lower, roots, {
    infos: stack.infos,
    readFile: (info, s) => stack.store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, s ?? effective),
    addKnown: (names) => stack.store.addKnown(names),
    logger,
  }, { signal: effective });
}

/** Narinfo lookups of `--all` in flight at once. */
const LOOKUP_WORKERS = 16;

/** Every store path of the datalakes that can be listed (file://). */
async function allPaths(stack: StoreStack, logger: Logger, signal?: AbortSignal): Promise<StorePath[]> {
  const hashes = new Set<string>();
  let listable = 0;
  for (const d of stack.datalakes.datalakes) {
    const list = d.listNarInfoHashes ? await d.listNarInfoHashes(signal ? { signal } : {}) : undefined;
    if (!list) continue;
    listable++;
    for (const h of list) hashes.add(h);
  }
  if (listable === 0) {
    throw new NarfsError('ERR_USAGE', '--all needs a datalake that can be listed', { hint: 'file:// datalakes can be listed; for http(s) give the roots.' });
  }
  logger.info('listing datalakes', { narinfos: hashes.size });
  const out: StorePath[] = [];
  const queue = [...hashes];
  // Each worker's lookup waits on the signal: LOOKUP_WORKERS listeners at once, by design
  // (on a signal of this call's own, so the caller's keeps its leak warning).
  const local = signal ? AbortSignal.any([signal]) : undefined;
  if (local) setMaxListeners(LOOKUP_WORKERS + 4, local);
  const worker = async () => {
    for (let h = queue.shift(); h; h = queue.shift()) {
      const info = await stack.infos.getByHashPart(h, local);
      if (info) out.push(info.narInfo.storePath);
    }
  };
  await Promise.all(Array.from({ length: LOOKUP_WORKERS }, worker));
  return out;
}
