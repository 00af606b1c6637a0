/**
 * Registers store paths as valid in the lower store: `ValidPaths`, `Refs` (self-references
 * included) and `DerivationOutputs` rows, as Nix itself would write them.
 *
 * Follows src/libstore/local-store.cc (2.26.3) `registerValidPaths` / `addValidPath`:
 * all rows of a batch in one transaction, `ValidPaths` rows first and `Refs` after (the
 * foreign keys are immediate), `insert or replace` for Refs and DerivationOutputs,
 * `narSize` NULL when 0, `sigs` space-joined or NULL, `ultimate` NULL (nothing in a lower
 * store was built here), `registrationTime` = time(0). Nix's closure invariant — every
 * reference of a valid path is valid — is checked before anything is written.
 *
 * Invariant: all-or-nothing and idempotent. Paths already valid are left exactly as they
 * are (not compared, not updated); when nothing is new the database is not written at all.
 * A reference that is neither in the batch nor already valid is ERR_CLOSURE_INCOMPLETE and
 * the database stays byte-identical. Writes go through writeGeneration (copy, change,
 * fsync, rename), so readers that never lock (`immutable=1`) never see a partial batch.
 */
import Database from 'better-sqlite3';
import { NarfsError } from '../errors.js';
import { checkLowerSchema, checkLowerStoreFiles, headerIsWal, readSqliteHeader, withLiveDatabase } from './check-lower-schema.js';
import { lowerStoreLayout, type LowerStoreLayout } from './lower-store-layout.js';
import { SCHEMA_MIGRATIONS_SQL } from './schema-sql.js';
import { validateValidPathInfos, type ValidPathInfo } from './valid-path-info.js';
import { DEFAULT_LOCK_TIMEOUT_MS, withWriterLocks } from './with-writer-locks.js';
import { hasLiveSidecars, writeGeneration } from './write-generation.js';

export type { ValidPathInfo } from './valid-path-info.js';

export interface RegisterValidPathsOptions {
  /** How long to wait for other writers (and read-write Nix processes); default 30 s. */
  lockTimeoutMs?: number;
  /** ValidPaths.registrationTime in seconds since the epoch; default now. */
  registrationTime?: number;
}

export interface RegisterValidPathsResult {
  /** Paths written by this call. */
  added: number;
  /** Paths of the batch that were valid already (left untouched). */
  alreadyValid: number;
}

/** Which of `paths` have a ValidPaths row. */
function validSubset(db: Database.Database, paths: Iterable<string>): Set<string> {
  const q = db.prepare('select 1 from ValidPaths where path = ?').pluck();
  const valid = new Set<string>();
  for (const p of paths) if (q.get(p) !== undefined) valid.add(p);
  return valid;
}

/** Does every one of `paths` have a ValidPaths row? Stops at the first that does not. */
function allValid(db: Database.Database, paths: readonly string[]): boolean {
  const q = db.prepare('select 1 from ValidPaths where path = ?').pluck();
  for (const p of paths) if (q.get(p) === undefined) return false;
  return true;
}

/** The fast path: answer "is anything new?" from the live file without copying it. */
function allValidInLiveFile(layout: LowerStoreLayout, infos: readonly ValidPathInfo[]): boolean {
  if (hasLiveSidecars(layout) || headerIsWal(readSqliteHeader(layout.dbPath))) return false;
  return withLiveDatabase(layout, (db) => {
    try {
      checkLowerSchema(db, layout);
      return allValid(db, infos.map((i) => i.path));
    } catch (e) {
      if (e instanceof NarfsError) throw e;
      throw new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath}: ${(e as Error).message}`, { cause: e });
    }
  });
}

/**
 * The secondary indexes a bulk insert drops and rebuilds (schema.sql): building an index
 * once from sorted keys is far cheaper than a million random inserts into it.
 */
const REBUILT_INDEXES = ['IndexReferrer', 'IndexReference', 'IndexDerivationOutputs'];

/** A batch this large (and at least as large as the table) is inserted with the indexes dropped. */
export const BULK_MIN_ROWS = 20_000;

/**
 * Runs `fn` with the secondary indexes dropped, then recreates each from its own DDL as
 * stored in sqlite_master (so the schema text stays byte-identical). In the caller's
 * transaction: a failure leaves the private copy to be discarded anyway.
 */
function withoutSecondaryIndexes(db: Database.Database, fn: () => void): void {
  const ddl = db.prepare(`select name, sql from sqlite_master where type = 'index' and sql is not null and name in (${REBUILT_INDEXES.map(() => '?').join(', ')})`)
    .all(...REBUILT_INDEXES) as Array<{ name: string; sql: string }>;
  for (const { name } of ddl) db.exec(`drop index "${name}"`);
  fn();
  for (const { sql } of ddl) db.exec(sql);
}

const REFS_PER_STATEMENT = 200;

function insertBatch(db: Database.Database, infos: readonly ValidPathInfo[], registrationTime: number): void {
  const insertPath = db.prepare(
    'insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, NULL, ?, ?)',
  );
  const idOf = db.prepare('select id from ValidPaths where path = ?').pluck();
  const insertRef = db.prepare('insert or replace into Refs (referrer, reference) values (?, ?)');
  const insertOutput = db.prepare('insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)');
  const ids = new Map<string, number | bigint>();
  const id = (path: string): number | bigint => {
    let v = ids.get(path);
    if (v === undefined) {
      v = idOf.get(path) as number | bigint | undefined;
      if (v === undefined) throw new NarfsError('ERR_INTERNAL', `no ValidPaths row for ${path} after the closure check`);
      ids.set(path, v);
    }
    return v;
  };
  for (const info of infos) {
    const sigs = [...new Set(info.sigs)];
    const r = insertPath.run(
      info.path,
      info.narHash,
      registrationTime,
      info.deriver ?? null,
      info.narSize === 0 ? null : info.narSize,
      sigs.length === 0 ? null : sigs.join(' '),
      info.ca ?? null,
    );
    ids.set(info.path, r.lastInsertRowid);
  }
  // Refs rows go in REFS_PER_STATEMENT at a time: one call into SQLite per chunk, not per row.
  const insertRefs = db.prepare(`insert or replace into Refs (referrer, reference) values ${Array(REFS_PER_STATEMENT).fill('(?, ?)').join(', ')}`);
  const pending: Array<number | bigint> = [];
  for (const info of infos) {
    const referrer = id(info.path);
    for (const ref of new Set(info.references)) {
      pending.push(referrer, id(ref));
      if (pending.length === 2 * REFS_PER_STATEMENT) {
        insertRefs.run(pending);
        pending.length = 0;
      }
    }
    for (const o of info.drvOutputs ?? []) insertOutput.run(referrer, o.id, o.path);
  }
  for (let i = 0; i < pending.length; i += 2) insertRef.run(pending[i], pending[i + 1]);
}

/**
 * Makes `infos` valid in the lower store at `lowerRoot` (created by createLowerStore).
 * Resolves with how many paths were added and how many were valid already.
 */
export async function registerValidPaths(
  lowerRoot: string,
  infos: readonly ValidPathInfo[],
  options: RegisterValidPathsOptions = {},
): Promise<RegisterValidPathsResult> {
  validateValidPathInfos(infos);
  const layout = lowerStoreLayout(lowerRoot);
  const registrationTime = options.registrationTime ?? Math.floor(Date.now() / 1000);
  if (!Number.isSafeInteger(registrationTime) || registrationTime < 0) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `registrationTime ${registrationTime} is not a time`);
  }
  if (checkLowerStoreFiles(layout) !== 'present') {
    throw new NarfsError('ERR_DB_SCHEMA', `no lower database at ${layout.dbPath}`, {
      hint: 'Create the lower store with createLowerStore() before registering paths.',
    });
  }
  if (infos.length === 0) return { added: 0, alreadyValid: 0 };
  // Without locks first: a read-only SQLite connection is consistent on its own (it takes
  // SQLite's shared lock, and narfs never writes the live file), so "all valid" is a
  // safe answer and the common re-registration costs no lock, no copy and no spawn.
  if (allValidInLiveFile(layout, infos)) return { added: 0, alreadyValid: infos.length };

  return withWriterLocks(layout, options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS, () => {
    if (checkLowerStoreFiles(layout) !== 'present') throw new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath} disappeared`);
    if (allValidInLiveFile(layout, infos)) return { added: 0, alreadyValid: infos.length };

    return writeGeneration(layout, (db) => {
      checkLowerSchema(db, layout);
      const batch = new Set(infos.map((i) => i.path));
      // An empty table (a first, bulk registration) needs no per-path lookups.
      const empty = db.prepare('select not exists (select 1 from ValidPaths)').pluck().get() === 1;
      const valid = empty ? new Set<string>() : validSubset(db, batch);
      const fresh = valid.size === 0 ? infos : infos.filter((i) => !valid.has(i.path));
      const result = { added: fresh.length, alreadyValid: valid.size };
      if (fresh.length === 0) return { value: result, commit: false };

      const referenced = new Set<string>();
      for (const info of fresh) for (const r of info.references) if (!batch.has(r)) referenced.add(r);
      const present = empty ? new Set<string>() : validSubset(db, referenced);
      const missing = [...referenced].filter((r) => !present.has(r)).sort();
      if (missing.length > 0) {
        throw new NarfsError(
          'ERR_CLOSURE_INCOMPLETE',
          `${missing.length} reference(s) are neither in the batch nor valid: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`,
          { details: { missing: missing.slice(0, 100) } },
        );
      }
      const rows = empty ? 0 : (db.prepare('select max(id) from ValidPaths').pluck().get() as number);
      const bulk = fresh.length >= BULK_MIN_ROWS && fresh.length >= rows;
      // The foreign keys check, row by row, what the closure check above proved for the
      // batch (every reference is in it or valid), and every id comes from a row just
      // inserted or looked up; a bulk insert skips them (the pragma is a no-op inside a
      // transaction, so it is set around it).
      if (bulk) db.pragma('foreign_keys = OFF');
      db.transaction(() => {
        db.exec(SCHEMA_MIGRATIONS_SQL);
        if (bulk) withoutSecondaryIndexes(db, () => insertBatch(db, fresh, registrationTime));
        else insertBatch(db, fresh, registrationTime);
      })();
      if (bulk) db.pragma('foreign_keys = ON');
      return { value: result, commit: true };
    });
  });
}
