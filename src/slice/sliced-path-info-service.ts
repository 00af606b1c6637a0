/**
 * SlicedPathInfoService: a PathInfoService that answers only for the store paths of a
 * slice (SliceFilter.admits): every other path is absent at once, before the metadata
 * cache or any datalake is asked. It is the `infos` of a slice mount's stack, so the
 * lower-store socket and `narfs register` through the daemon see the slice only, as the
 * filesystem does. `getUnsliced` is the one way around the gate: computing the slice's
 * closures needs the narinfos of paths that are not (yet) in it.
 */
import type { StorePath } from '../nix/store-path.js';
import { storePathBase } from '../nix/store-path.js';
import { PathInfoService, type PathInfo } from '../store/path-info-service.js';
import type { SliceFilter } from './slice-filter.js';

export class SlicedPathInfoService extends PathInfoService {
  readonly #filter: SliceFilter;

  constructor(filter: SliceFilter, ...args: ConstructorParameters<typeof PathInfoService>) {
    super(...args);
    this.#filter = filter;
  }

  override async get(sp: StorePath, signal?: AbortSignal): Promise<PathInfo | undefined> {
    if (!this.#filter.admits(storePathBase(sp))) return undefined;
    return super.get(sp, signal);
  }

  override getByHashPart(hashPart: string, signal?: AbortSignal): Promise<PathInfo | undefined> {
    if (!this.#filter.admitsHashPart(hashPart)) return Promise.resolve(undefined);
    return super.getByHashPart(hashPart, signal);
  }

  /** The verified narinfo of `sp` whether or not it is in the slice. */
  async getUnsliced(sp: StorePath, signal?: AbortSignal): Promise<PathInfo | undefined> {
    const info = await super.getByHashPart(sp.hashPart, signal);
    return info && storePathBase(info.narInfo.storePath) === storePathBase(sp) ? info : undefined;
  }
}
