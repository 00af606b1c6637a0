/**
 * SlicedRootNodes: the root of a slice mount. It wraps the store's RootNodes so that the
 * root directory lists exactly the slice's closures (SliceFilter.listed) and a lookup of
 * any other name is absent without reaching the store (no metadata, no datalake request).
 * Names the filter retains (registered in a lower store, then dropped from the slice)
 * still resolve, but are not listed.
 */
import type { NarNode } from '../nix/nar-listing.js';
import type { RootNodes } from '../fs/store-filesystem.js';
import type { SliceFilter } from './slice-filter.js';

export class SlicedRootNodes implements RootNodes {
  constructor(private readonly inner: RootNodes, private readonly filter: SliceFilter) {}

  resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined> {
    if (!this.filter.admits(name)) return Promise.resolve(undefined);
    return this.inner.resolve(name, signal);
  }

  knownNames(): Iterable<string> {
    return this.filter.listed();
  }

  isListed(name: string): boolean {
    return this.filter.isListed(name);
  }

  release(name: string): void {
    this.inner.release?.(name);
  }
}
