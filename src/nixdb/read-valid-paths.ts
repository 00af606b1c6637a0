/**
 * readValidPaths: every path of the lower store's `ValidPaths` (Nix's QueryValidPaths,
 * local-store.cc), for the mount's root listing.
 *
 * Invariant: read-only, and never blocks on writers: narfs writers replace the file by
 * rename (write-generation.ts), so a plain read-only open sees one whole generation.
 * A lower store without a database yet has no valid paths.
 */
import { existsSync } from 'node:fs';
import { NarfsError } from '../errors.js';
import { lowerStoreLayout } from './lower-store-layout.js';
import { withLiveDatabase } from './check-lower-schema.js';

export function readValidPaths(lowerRoot: string): string[] {
  const layout = lowerStoreLayout(lowerRoot);
  if (!existsSync(layout.dbPath)) return [];
  return withLiveDatabase(layout, (db) => {
    try {
      db.pragma('busy_timeout = 100');
      return db.prepare('select path from ValidPaths').pluck().all() as string[];
    } catch (err) {
      throw new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath} has no readable ValidPaths table`, { cause: err });
    }
  });
}
