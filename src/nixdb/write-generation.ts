/**
 * Replaces the lower database by a new, complete generation — the only way narfs writes it.
 *
 * Why: Nix opens a `read-only=true` lower store with SQLite `immutable=1`
 * (src/libstore/sqlite.cc, local-store.cc 2.26.3): no locks, no WAL, and SQLite assumes
 * the file never changes while it is open. Any in-place write (even one SQLite transaction
 * in rollback or WAL mode, or a checkpoint) can be seen half-done by such a reader. So the
 * live file is never written: we copy it to `db.sqlite.narfs-new-<pid>`, change the copy,
 * fsync it and rename() it over `db.sqlite`. A reader that opened the old inode keeps a
 * consistent old file; a reader that opens after the rename sees the complete new one.
 * A crash at any point leaves either the old or the new file in place (plus a stale
 * generation file, removed by the next writer).
 *
 * WAL: a read-write Nix open converts the file to WAL (persistent `-wal`/`-shm`). SQLite
 * replays a `-wal` (or a hot `-journal`) found beside a database on open, so after the rename
 * a stale sidecar of the old generation would corrupt the new one for non-immutable
 * readers. Therefore the sidecars are copied with the file, folded into the copy (the copy
 * is switched back to `journal_mode=DELETE`), and the old sidecars are unlinked just before
 * the rename. This is only safe while no read-write Nix has the store open, which the
 * caller guarantees by holding `big-lock` exclusively (Nix holds it shared while open).
 *
 * Invariant: callers hold the narfs writer lock and big-lock exclusively; the live
 * `db.sqlite` is only ever replaced by rename(), never modified.
 */
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  fsyncSync,
  openSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { NarfsError } from '../errors.js';
import type { LowerStoreLayout } from './lower-store-layout.js';

/** Page cache of the connection that builds a generation, KiB. */
const BUILD_CACHE_KIB = 512 * 1024;

/** SQLite's names for the files that belong to a database file. */
export const SIDECAR_SUFFIXES = ['-wal', '-shm', '-journal'] as const;

export interface GenerationResult<T> {
  value: T;
  /** false ⇒ the generation is discarded and the live database stays as it is. */
  commit: boolean;
}

export interface WriteGenerationOptions {
  /** Start from an empty database instead of a copy of the live one. */
  fromScratch?: boolean;
}

function fsyncPath(path: string, flags: string | number = 'r'): void {
  const fd = openSync(path, flags);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function unlinkIfExists(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** SQLite errors become coded errors: a damaged file is a schema problem, the rest I/O. */
function sqliteToNarfs(e: unknown, file: string): NarfsError {
  if (e instanceof NarfsError) return e;
  const code = (e as { code?: unknown }).code;
  const message = e instanceof Error ? e.message : String(e);
  if (code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB') {
    return new NarfsError('ERR_DB_SCHEMA', `${file}: the database is corrupt: ${message}`, { cause: e });
  }
  return new NarfsError('ERR_DB_IO', `${file}: ${message}`, { cause: e });
}

/** Removes generation files left by writers that died (all are stale under the writer lock). */
export function removeStaleGenerations(layout: LowerStoreLayout): number {
  const prefix = basename(layout.generationPrefix);
  let removed = 0;
  for (const name of readdirSync(layout.dbDir)) {
    if (name.startsWith(prefix)) {
      unlinkIfExists(join(layout.dbDir, name));
      removed++;
    }
  }
  return removed;
}

/** Is there a `-wal` or `-journal` with content beside the live database? */
export function hasLiveSidecars(layout: LowerStoreLayout): boolean {
  for (const s of ['-wal', '-journal']) {
    const p = layout.dbPath + s;
    if (existsSync(p) && statSync(p).size > 0) return true;
  }
  return false;
}

/**
 * Builds the next generation with `build(db)` on a private copy and, if it says so,
 * installs it atomically. `build` runs synchronously inside no transaction; it opens its own.
 */
export function writeGeneration<T>(
  layout: LowerStoreLayout,
  build: (db: Database.Database) => GenerationResult<T>,
  options: WriteGenerationOptions = {},
): T {
  removeStaleGenerations(layout);
  const gen = `${layout.generationPrefix}${process.pid}`;
  let installed = false;
  try {
    if (!options.fromScratch) {
      // Reflink where the filesystem can (btrfs, xfs): O(1); otherwise a plain copy.
      copyFileSync(layout.dbPath, gen, constants.COPYFILE_FICLONE);
      for (const s of ['-wal', '-journal']) {
        if (existsSync(layout.dbPath + s)) {
          copyFileSync(layout.dbPath + s, gen + s);
        }
      }
    }
    let db: Database.Database;
    try {
      db = new Database(gen, { fileMustExist: !options.fromScratch });
    } catch (e) {
      throw new NarfsError('ERR_DB_IO', `cannot open ${gen}: ${(e as Error).message}`, { cause: e });
    }
    let result: GenerationResult<T>;
    try {
      // Fold any WAL / hot journal into the copy and leave it in rollback (DELETE) mode,
      // the mode immutable readers and stale-sidecar-free renames need.
      const mode = db.pragma('journal_mode = DELETE', { simple: true });
      if (mode !== 'delete') throw new NarfsError('ERR_DB_IO', `${gen}: cannot leave journal mode ${String(mode)}`);
      // The copy is private until renamed and discarded on any failure (also one inside a
      // transaction), so it needs no journal, no syncs and no file locks while it is built;
      // one fsync before the rename makes it durable. The cache holds a big batch's pages
      // (SQLite allocates it only as pages are used).
      db.pragma('journal_mode = OFF');
      db.pragma('synchronous = OFF');
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma(`cache_size = -${BUILD_CACHE_KIB}`);
      db.pragma('foreign_keys = ON');
      result = build(db);
    } catch (e) {
      throw sqliteToNarfs(e, gen);
    } finally {
      db.close();
    }
    if (!result.commit) return result.value;
    for (const s of SIDECAR_SUFFIXES) {
      if (existsSync(gen + s)) throw new NarfsError('ERR_DB_IO', `${gen}${s} survived closing the generation`);
    }
    if (!options.fromScratch) {
      // Keep owner and mode of the live file (we may run as root for a store owned by someone else).
      const st = statSync(layout.dbPath);
      chmodSync(gen, st.mode & 0o7777);
      if (process.getuid?.() === 0) chownSync(gen, st.uid, st.gid);
    } else {
      chmodSync(gen, 0o644);
    }
    fsyncPath(gen, 'r+');
    // Old sidecars must go before the new file appears (see header); the copy already
    // contains everything they held.
    for (const s of SIDECAR_SUFFIXES) unlinkIfExists(layout.dbPath + s);
    renameSync(gen, layout.dbPath);
    installed = true;
    fsyncPath(dirname(layout.dbPath));
    return result.value;
  } finally {
    if (!installed) {
      unlinkIfExists(gen);
      for (const s of SIDECAR_SUFFIXES) unlinkIfExists(gen + s);
    }
  }
}
