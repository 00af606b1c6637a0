/**
 * Creates a lower store that Nix 2.26 accepts as a local store — or checks an existing one.
 *
 * Follows the LocalStore constructor and `openDB` of src/libstore/local-store.cc (2.26.3):
 * the state dirs it creates on open (`profiles/per-user`, `gcroots/per-user`, `temproots`,
 * `db`, the `gcroots/profiles` symlink — relative here, `../profiles`, so the lower root can
 * move; Nix writes the absolute path, which resolves to the same dir), `big-lock` (0600),
 * the database from schema.sql plus `SchemaMigrations`, and the `schema` file (`10`, no
 * newline). A read-only (`immutable=1`) Nix open creates none of these, so they must exist.
 *
 * Invariant: idempotent. An existing store narfs knows is left byte-for-byte as it is
 * (missing state dirs are added; a database from Nix < 2.26 gets `SchemaMigrations` in a
 * new generation, as a 2.26 open would add it); one it does not know is refused with ERR_DB_SCHEMA and
 * left untouched. The schema file is written before the database, so an interrupted
 * creation is recognised (`schema-only`) and finished by the next call.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, symlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { NarfsError } from '../errors.js';
import { checkLowerSchema, checkLowerStoreFiles, withLiveDatabase, type LowerStoreState } from './check-lower-schema.js';
import { lowerStoreLayout, type LowerStoreLayout } from './lower-store-layout.js';
import { NIX_SCHEMA_VERSION, SCHEMA_MIGRATIONS_SQL, SCHEMA_SQL } from './schema-sql.js';
import { DEFAULT_LOCK_TIMEOUT_MS, withWriterLocks } from './with-writer-locks.js';
import { hasLiveSidecars, writeGeneration } from './write-generation.js';

export interface CreateLowerStoreOptions {
  /** How long to wait for other writers (and read-write Nix processes); default 30 s. */
  lockTimeoutMs?: number;
  /**
   * Whether to create `<root>/nix/store` too (default true). The daemon passes false once
   * its FUSE mount is there: a synchronous syscall on its own mount from the thread that
   * serves it would deadlock.
   */
  createStoreDir?: boolean;
}

export interface CreateLowerStoreResult {
  layout: LowerStoreLayout;
  /** true when this call created the database. */
  created: boolean;
}

export function ensureStateDirs(layout: LowerStoreLayout, createStoreDir: boolean): void {
  for (const d of [
    ...(createStoreDir ? [layout.storeDir] : []),
    join(layout.stateDir, 'profiles/per-user'),
    join(layout.stateDir, 'gcroots/per-user'),
    join(layout.stateDir, 'temproots'),
    layout.dbDir,
  ]) {
    mkdirSync(d, { recursive: true, mode: 0o755 });
  }
  const link = join(layout.stateDir, 'gcroots/profiles');
  try {
    symlinkSync('../profiles', link);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  // Nix creates big-lock with mode 0600 (openLockFile); never truncate an existing one.
  closeSync(openSync(layout.bigLockPath, 'a', 0o600));
}

export function writeSchemaFile(layout: LowerStoreLayout): void {
  const tmp = `${layout.schemaPath}.narfs-new-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeSync(fd, String(NIX_SCHEMA_VERSION));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, layout.schemaPath);
}

/** Checks the tables of the live file (read-only; only valid when it has no WAL/journal). */
function verifyLive(layout: LowerStoreLayout): void {
  withLiveDatabase(layout, (db) => checkLowerSchema(db, layout));
}

/** Checks the tables of the live file (no WAL/journal beside it); true when it has all Nix 2.26 creates. */
function completeLive(layout: LowerStoreLayout): boolean {
  return withLiveDatabase(layout, (db) => {
    checkLowerSchema(db, layout);
    return hasSchemaMigrations(db);
  });
}

function hasSchemaMigrations(db: Database.Database): boolean {
  return db.prepare(`select 1 from sqlite_master where type = 'table' and name = 'SchemaMigrations'`).get() !== undefined;
}

export async function createLowerStore(lowerRoot: string, options: CreateLowerStoreOptions = {}): Promise<CreateLowerStoreResult> {
  const layout = lowerStoreLayout(lowerRoot);
  // Refuse before creating anything, so a foreign store stays exactly as it was.
  const before = checkLowerStoreFiles(layout);
  // With a WAL or journal beside it the live file alone may be incomplete; then the tables
  // are checked on the private copy below, still before anything is written.
  const complete = before === 'present' && !hasLiveSidecars(layout) && completeLive(layout);
  ensureStateDirs(layout, options.createStoreDir ?? true);
  // A complete store needs no write, so no lock: the checks above only read, and narfs
  // never changes the live file in place (a read-write Nix that opens it meanwhile leaves
  // a WAL, which the next writer folds in under the locks).
  if (complete) return { layout, created: false };
  const created = await withWriterLocks(layout, options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS, () => {
    const state: LowerStoreState = checkLowerStoreFiles(layout); // again, under the lock
    if (state === 'present') {
      if (!hasLiveSidecars(layout)) {
        verifyLive(layout);
        const db = new Database(layout.dbPath, { readonly: true, fileMustExist: true });
        const complete = (() => {
          try {
            return hasSchemaMigrations(db);
          } finally {
            db.close();
          }
        })();
        if (complete) return false;
      }
      // A WAL to fold in, or a database from Nix < 2.26 that lacks what 2.26 adds on every
      // open (without it read-only opens fail): write one new generation.
      writeGeneration(layout, (db) => {
        checkLowerSchema(db, layout);
        const add = !hasSchemaMigrations(db);
        if (add) db.exec(SCHEMA_MIGRATIONS_SQL);
        return { value: undefined, commit: add };
      });
      return false;
    }
    if (state === 'absent') writeSchemaFile(layout);
    writeGeneration(
      layout,
      (db) => {
        db.exec(SCHEMA_SQL);
        db.exec(SCHEMA_MIGRATIONS_SQL);
        return { value: undefined, commit: true };
      },
      { fromScratch: true },
    );
    return true;
  });
  return { layout, created };
}
