/**
 * Where the files of a lower store live, given its root (`local?root=<lowerRoot>`).
 *
 * Follows src/libstore/local-fs-store.cc and local-store.cc (2.26.3): for a chroot store
 * the state dir is `<root>/nix/var/nix`, the database `<state>/db/db.sqlite`, the schema
 * version `<state>/db/schema`, the big lock `<state>/db/big-lock`; the physical store dir
 * is `<root>/nix/store` while paths stay logical (`/nix/store/…`).
 *
 * Invariant: pure path arithmetic, no I/O. narfs-private files all start with `db.sqlite.narfs-`
 * so they are easy to recognise and never collide with SQLite's own `-wal`/`-shm`/`-journal`.
 */
import { resolve, join } from 'node:path';
import { STORE_DIR } from '../nix/store-path.js';

export interface LowerStoreLayout {
  root: string;
  /** Physical store dir (the FUSE mountpoint). */
  storeDir: string;
  stateDir: string;
  dbDir: string;
  dbPath: string;
  schemaPath: string;
  bigLockPath: string;
  /** flock()ed exclusively by every narfs writer (serialises generations). */
  writerLockPath: string;
  /** Prefix of the next generation being written: `<prefix><pid>`. */
  generationPrefix: string;
}

/** The logical store dir every path in the database lives in. */
export const LOGICAL_STORE_DIR = STORE_DIR;

export function lowerStoreLayout(lowerRoot: string): LowerStoreLayout {
  const root = resolve(lowerRoot);
  const stateDir = join(root, 'nix/var/nix');
  const dbDir = join(stateDir, 'db');
  const dbPath = join(dbDir, 'db.sqlite');
  return {
    root,
    storeDir: join(root, 'nix/store'),
    stateDir,
    dbDir,
    dbPath,
    schemaPath: join(dbDir, 'schema'),
    bigLockPath: join(dbDir, 'big-lock'),
    writerLockPath: `${dbPath}.narfs-lock`,
    generationPrefix: `${dbPath}.narfs-new-`,
  };
}
