/**
 * SliceFilter: which store paths a slice mount shows, and sliceClosure, which computes
 * them: the closures of the slice's roots under the References of verified narinfos
 * (Nix's closure, as `nix-store --query --requisites` walks it).
 *
 * Invariants:
 * - `listed` is exactly the closure of the roots whose closure is known: the root
 *   directory shows these names and nothing else;
 * - `admits(name)` is the one gate in front of every lookup: a name neither listed nor
 *   `retained` is absent at once, with no request to any datalake (a path that only
 *   shares a hash part with a listed one is absent too: the whole basename must match);
 * - `retained` names are admitted but not listed: paths registered in a lower store that
 *   have since left the slice (their rows stay valid for Nix, so their directories must
 *   stay reachable by name; see README, "your slice on a laptop");
 * - a root whose closure cannot be resolved now (a datalake down, a reference in no
 *   datalake) is left out of the new closure, unless its previous closure is known: then
 *   that one is kept (offline, nothing that was visible disappears because of the
 *   network). sliceClosure never throws for one root: it reports the root.
 */
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import { storePathBase, type StorePath } from '../nix/store-path.js';
import type { NarInfo } from '../nix/narinfo.js';

export class SliceFilter {
  /** hash part → basename of every listed path. */
  #listed = new Map<string, string>();
  /** hash part → basename of paths admitted without being listed. */
  readonly #retained = new Map<string, string>();

  /** Replaces the listed set; returns what appeared and what left. */
  set(names: Iterable<string>): { added: string[]; removed: string[] } {
    const next = new Map<string, string>();
    for (const n of names) next.set(n.slice(0, 32), n);
    const added = [...next.values()].filter((n) => this.#listed.get(n.slice(0, 32)) !== n);
    const removed = [...this.#listed.values()].filter((n) => next.get(n.slice(0, 32)) !== n);
    this.#listed = next;
    return { added, removed };
  }

  /** Admits names without listing them (registered in the lower store). */
  retain(names: Iterable<string>): void {
    for (const n of names) this.#retained.set(n.slice(0, 32), n);
  }

  admits(name: string): boolean {
    const hp = name.slice(0, 32);
    return this.#listed.get(hp) === name || this.#retained.get(hp) === name;
  }

  admitsHashPart(hashPart: string): boolean {
    return this.#listed.has(hashPart) || this.#retained.has(hashPart);
  }

  isListed(name: string): boolean {
    return this.#listed.get(name.slice(0, 32)) === name;
  }

  listed(): Iterable<string> {
    return this.#listed.values();
  }

  get size(): number {
    return this.#listed.size;
  }
}

/** Verified narinfo of a store path, undefined when no datalake has it; throws on failure. */
export type NarInfoLookup = (sp: StorePath) => Promise<Pick<NarInfo, 'storePath' | 'references'> | undefined>;

export interface UnresolvedRoot {
  root: string;
  /** ERR_PATH_NOT_FOUND when the root or a reference is in no datalake, else the failure's code. */
  error: NarfsError;
  /** The reference that could not be resolved (undefined: the root itself). */
  missing?: string;
}

export interface SliceClosure {
  /** Root basename → basenames of its closure (itself included), for the roots resolved. */
  closures: Map<string, string[]>;
  unresolved: UnresolvedRoot[];
}

/**
 * The closure of each root, resolved through `lookup` (each path asked once, `concurrency`
 * lookups at a time). `previous` (root → closure) stands in for a root that fails now.
 */
export async function sliceClosure(
  roots: readonly StorePath[], lookup: NarInfoLookup,
  options: { concurrency?: number; previous?: ReadonlyMap<string, readonly string[]> } = {},
): Promise<SliceClosure> {
  const limit = options.concurrency ?? 16;
  const memo = new Map<string, Promise<string[]>>(); // base → its references' bases
  let active = 0;
  const waiting: Array<() => void> = [];
  const slot = async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= limit) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
  const refsOf = (sp: StorePath): Promise<string[]> => {
    const base = storePathBase(sp);
    let p = memo.get(base);
    if (!p) {
      p = slot(() => lookup(sp)).then((info) => {
        if (!info || storePathBase(info.storePath) !== base) throw new MissingPath(base);
        return info.references.map(storePathBase);
      });
      p.catch(() => {}); // observed by every root that reaches it
      memo.set(base, p);
    }
    return p;
  };
  const closures = new Map<string, string[]>();
  const unresolved: UnresolvedRoot[] = [];
  await Promise.all(roots.map(async (root) => {
    const rootBase = storePathBase(root);
    const seen = new Set<string>([rootBase]);
    try {
      let frontier: StorePath[] = [root];
      while (frontier.length > 0) {
        const refs = await Promise.all(frontier.map(refsOf));
        frontier = [];
        for (const r of refs.flat()) {
          if (seen.has(r)) continue;
          seen.add(r);
          frontier.push({ hashPart: r.slice(0, 32), name: r.slice(33) });
        }
      }
      closures.set(rootBase, [...seen]);
    } catch (err) {
      const previous = options.previous?.get(rootBase);
      if (previous) closures.set(rootBase, [...previous]);
      const missing = err instanceof MissingPath ? err.base : undefined;
      const error = err instanceof MissingPath
        ? new NarfsError('ERR_PATH_NOT_FOUND', missing === rootBase ? `${rootBase} is in no datalake` : `${missing}, in the closure of ${rootBase}, is in no datalake`)
        : toNarfsError(err, 'ERR_DATALAKE_UNAVAILABLE');
      unresolved.push({ root: rootBase, error, ...(missing !== undefined && missing !== rootBase ? { missing } : {}) });
    }
  }));
  return { closures, unresolved };
}

/** Whether an unresolved root failed for a passing reason (network), not for absence. */
export function isTransient(u: UnresolvedRoot): boolean {
  return !isNarfsError(u.error, 'ERR_PATH_NOT_FOUND');
}

class MissingPath extends Error {
  constructor(readonly base: string) {
    super(`${base} is in no datalake`);
  }
}
