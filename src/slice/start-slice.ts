/**
 * startSlice: keeps a slice mount's SliceFilter in step with its slice list.
 *
 * At start: the list kept by an earlier run (same --slice) is applied at once, with its
 * closures, so an offline start shows what it showed before; then the list is fetched and
 * the closures computed before the mount serves. A start with no kept list fails on a
 * configuration error (bad list, 401/403, 404, a secret file readable by others), and
 * starts with an empty slice, retried every interval, when the network is the problem.
 *
 * Every `refreshMs` (a timer re-armed after each refresh, so refreshes never overlap):
 * a conditional fetch; when the list changed, or a root's closure was not complete last
 * time, the closures are recomputed (narinfos come from the metadata cache when known)
 * and the filter replaced: new roots' closures appear, paths no root reaches any more
 * stop being listed. A failing fetch or closure keeps what is shown (logged once per
 * error code until it heals). After a suspend/resume nothing needs remounting: the
 * datalakes' pools reconnect on the next request (DatalakeSet probes a datalake marked
 * down), and the next refresh runs one interval of awake time after the last one.
 *
 * With a lower store, the closures of roots whose paths appeared are registered there
 * (registerClosure, one transaction per refresh); registration that fails is retried at
 * the next refresh. Paths that leave the slice are not unregistered (README).
 */
import { isNarfsError, toNarfsError, type NarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HttpAccessOptions } from '../datalake/http-datalake.js';
import { parseStorePathBase, type StorePath } from '../nix/store-path.js';
import type { PathInfo } from '../store/path-info-service.js';
import { registerClosure } from '../store/register-closure.js';
import { SliceFilter, sliceClosure } from './slice-filter.js';
import type { SlicedPathInfoService } from './sliced-path-info-service.js';
import { SliceSource } from './slice-source.js';

export interface SliceSettings {
  /** FILE or http(s) URL of the list of roots. */
  location: string;
  /** Time between two fetches of the list (ms). */
  refreshMs: number;
}

export interface StartSliceDeps {
  settings: SliceSettings;
  cacheDir: string;
  access?: HttpAccessOptions;
  filter: SliceFilter;
  infos: SlicedPathInfoService;
  /** Whole contents of a single-file store path (a .drv), for lower-store registration. */
  readFile(info: PathInfo, signal?: AbortSignal): Promise<Buffer>;
  /** Root of a lower store whose database gets the slice's closures registered. */
  lower?: string;
  logger: Logger;
  /** Aborted when the daemon shuts down. */
  signal: AbortSignal;
}

export interface RunningSlice {
  readonly filter: SliceFilter;
  /** One refresh now (tests, `narfs status`); resolves when it is done. */
  refresh(): Promise<void>;
  close(): Promise<void>;
}

/** Errors that the network does not explain: a start without a kept list fails on them. */
const CONFIG_ERRORS = new Set(['ERR_SLICE_PARSE', 'ERR_SLICE_FETCH', 'ERR_DATALAKE_AUTH', 'ERR_SECRET_PERMISSIONS', 'ERR_DATALAKE_FILE', 'ERR_DATALAKE_TLS', 'ERR_USAGE']);

export async function startSlice(deps: StartSliceDeps): Promise<RunningSlice> {
  const { filter, logger, settings } = deps;
  const source = new SliceSource(settings.location, deps.cacheDir, deps.access ?? {});
  let roots: StorePath[] = [];
  let closures = new Map<string, string[]>();
  let dirty = true; // the closures need (re)computing
  let unregistered = new Set<string>(); // roots whose closure is not yet registered in the lower store
  const reported = new Set<string>();
  // The first closures are all registered (idempotent): the kept list may come from a run without --lower.
  let registerAll = deps.lower !== undefined;

  const kept = await source.loadKept();
  if (kept) {
    roots = kept.roots;
    closures = new Map(Object.entries(kept.closures));
    filter.set(union(closures));
    logger.info('slice: using the list kept from the last run until it is fetched again', {
      slice: source.display, roots: roots.length, paths: filter.size, fetchedAt: new Date(kept.fetchedAt).toISOString(),
    });
  }

  const report = (what: string, err: NarfsError) => {
    if (reported.has(err.code)) return;
    reported.add(err.code);
    logger.warn(what, { slice: source.display, err });
  };

  const refresh = async (): Promise<void> => {
    const fetched = await source.fetch(deps.signal);
    if (fetched.changed) {
      roots = fetched.snapshot.roots;
      dirty = true;
    }
    if (dirty) {
      const r = await sliceClosure(roots, (sp) => deps.infos.getUnsliced(sp, deps.signal).then((i) => i?.narInfo), { previous: closures });
      for (const u of r.unresolved) {
        logger.warn('slice: a root is left out for now', { root: u.root, ...(u.missing ? { missing: u.missing } : {}), err: u.error });
      }
      // A root left out is tried again at every refresh (it may be uploaded later).
      dirty = r.unresolved.length > 0;
      const before = closures;
      closures = r.closures;
      const { added, removed } = filter.set(union(closures));
      for (const [root, names] of closures) if (registerAll || !sameSet(before.get(root), names)) unregistered.add(root);
      registerAll = false;
      for (const root of [...unregistered]) if (!closures.has(root)) unregistered.delete(root);
      if (added.length > 0 || removed.length > 0 || fetched.changed) {
        logger.info('slice updated', { slice: source.display, roots: roots.length, paths: filter.size, added: added.length, removed: removed.length });
      }
      await source.keep(closures).catch((err: unknown) => report('slice: cannot keep the list in the cache directory', toNarfsError(err, 'ERR_CACHE_IO')));
    }
    if (deps.lower && unregistered.size > 0) {
      const pending = [...unregistered];
      await registerClosure(deps.lower, pending.map(parseStorePathBase), {
        infos: deps.infos, readFile: deps.readFile, addKnown: () => {}, logger,
      }, { signal: deps.signal });
      unregistered = new Set([...unregistered].filter((r) => !pending.includes(r)));
    }
  };

  try {
    await refresh();
  } catch (e) {
    const err = toNarfsError(e);
    if (!kept && CONFIG_ERRORS.has(err.code)) {
      await source.close();
      throw err;
    }
    report(kept ? 'slice: cannot fetch the list; serving the kept one' : 'slice: cannot fetch the list; starting with an empty slice', err);
  }

  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let closed = false;
  const once = (): Promise<void> => {
    running ??= refresh().then(() => {
      if (reported.size > 0) logger.info('slice: the list is fetched again', { slice: source.display });
      reported.clear();
    }, (e: unknown) => {
      const err = toNarfsError(e);
      if (!isNarfsError(err, 'ERR_ABORTED')) report('slice: refresh failed; keeping the slice as it is', err);
    }).finally(() => {
      running = undefined;
    });
    return running;
  };
  const arm = () => {
    if (closed) return;
    timer = setTimeout(() => void once().finally(arm), settings.refreshMs);
  };
  arm();
  return {
    filter,
    refresh: once,
    async close() {
      closed = true;
      clearTimeout(timer);
      await running?.catch(() => {});
      await source.close();
    },
  };
}

function union(closures: ReadonlyMap<string, readonly string[]>): Set<string> {
  const out = new Set<string>();
  for (const names of closures.values()) for (const n of names) out.add(n);
  return out;
}

function sameSet(a: readonly string[] | undefined, b: readonly string[]): boolean {
  if (!a || a.length !== b.length) return false;
  const s = new Set(a);
  return b.every((x) => s.has(x));
}
