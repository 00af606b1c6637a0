/**
 * The locks every narfs writer of a lower store holds, in this order:
 *   1. `db.sqlite.narfs-lock` exclusively — serialises narfs writers (processes and calls);
 *   2. `big-lock` exclusively — Nix holds it shared (src/libstore/local-store.cc, 2.26.3:
 *      `lockFile(globalLock, ltRead, true)`) for the whole life of every read-write
 *      LocalStore, so holding it exclusively proves no read-write Nix has the database (or
 *      its WAL) open, and keeps new ones out until the rename is done. Read-only
 *      (`read-only=true`) Nix stores take no lock and are safe by construction.
 * Both are taken by one process chain started with one spawn (lock-file.ts).
 *
 * Invariant: `fn` runs only while both locks are held; both are released however `fn`
 * ends; the whole wait is bounded by `timeoutMs`, after which ERR_DB_LOCKED is thrown.
 */
import { lockFiles } from './lock-file.js';
import type { LowerStoreLayout } from './lower-store-layout.js';

export const DEFAULT_LOCK_TIMEOUT_MS = 30_000;

export async function withWriterLocks<T>(layout: LowerStoreLayout, timeoutMs: number, fn: () => T | Promise<T>): Promise<T> {
  const held = await lockFiles([
    { path: layout.writerLockPath, what: `narfs writers of ${layout.dbPath}` },
    { path: layout.bigLockPath, what: `${layout.bigLockPath} (a read-write Nix has the lower store open)` },
  ], { timeoutMs });
  try {
    return await fn();
  } finally {
    await held.release();
  }
}
