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
import { SCHEMA_MIGRATIONS_SQL, SCHEMA_SQL } from './schema-sql.js';
import { createLowerStore, ensureStateDirs, writeSchemaFile } from './create-lower-store.js';
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

/** What one batch of registerValidPathBatches came to. */
export type BatchOutcome = { ok: true; value: RegisterValidPathsResult } | { ok: false; error: NarfsError };

export interface RegisterBatchesOptions extends RegisterValidPathsOptions {
  /**
   * Create the lower store if there is none, in the same locked section and the same
   * generation as the rows (createLowerStore's files and DDL); the value is passed on as
   * its `createStoreDir`. Without it a missing store is ERR_DB_SCHEMA.
   */
  create?: { createStoreDir: boolean };
}

function closureError(missing: string[]): NarfsError {
  return new NarfsError(
    'ERR_CLOSURE_INCOMPLETE',
    `${missing.length} reference(s) are neither in the batch nor valid: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`,
    { details: { missing: missing.slice(0, 100) } },
  );
}

/**
 * Plans the batches against `db` as if they were registered one after the other: each is
 * all-or-nothing, and a batch may rely on paths of earlier batches that succeed. Returns
 * the outcomes and the rows to insert.
 */
function planBatches(db: Database.Database, batches: ReadonlyArray<readonly ValidPathInfo[]>, empty: boolean): { outcomes: BatchOutcome[]; fresh: readonly ValidPathInfo[] } {
  const outcomes: BatchOutcome[] = [];
  const parts: Array<readonly ValidPathInfo[]> = [];
  const addedHere = new Set<string>();
  const known = (paths: Iterable<string>): Set<string> => {
    const inDb = empty ? new Set<string>() : validSubset(db, paths);
    for (const p of paths) if (addedHere.has(p)) inDb.add(p);
    return inDb;
  };
  for (const infos of batches) {
    const batch = new Set(infos.map((i) => i.path));
    const valid = known(batch);
    const mine = valid.size === 0 ? infos : infos.filter((i) => !valid.has(i.path));
    if (mine.length > 0) {
      const referenced = new Set<string>();
      for (const info of mine) for (const r of info.references) if (!batch.has(r)) referenced.add(r);
      const present = known(referenced);
      const missing = [...referenced].filter((r) => !present.has(r)).sort();
      if (missing.length > 0) {
        outcomes.push({ ok: false, error: closureError(missing) });
        continue;
      }
      for (const i of mine) addedHere.add(i.path);
      parts.push(mine);
    }
    outcomes.push({ ok: true, value: { added: mine.length, alreadyValid: valid.size } });
  }
  return { outcomes, fresh: parts.length === 1 ? parts[0]! : parts.flat() };
}

/** Inserts the planned rows into `db` (a private generation) in one transaction. */
function insertPlanned(db: Database.Database, fresh: readonly ValidPathInfo[], empty: boolean, registrationTime: number): void {
  const rows = empty ? 0 : (db.prepare('select max(id) from ValidPaths').pluck().get() as number);
  const bulk = fresh.length >= BULK_MIN_ROWS && fresh.length >= rows;
  // The foreign keys check, row by row, what planBatches proved (every reference is in the
  // batch or valid), and every id comes from a row just inserted or looked up; a bulk insert
  // skips them (the pragma is a no-op inside a transaction, so it is set around it).
  if (bulk) db.pragma('foreign_keys = OFF');
  db.transaction(() => {
    db.exec(SCHEMA_MIGRATIONS_SQL);
    if (bulk) withoutSecondaryIndexes(db, () => insertBatch(db, fresh, registrationTime));
    else insertBatch(db, fresh, registrationTime);
  })();
  if (bulk) db.pragma('foreign_keys = ON');
}

/**
 * Registers several batches in ONE new generation (one lock, one copy, one fsync), with
 * the outcome of each as if they had been registered one after the other in this order:
 * a batch that is invalid or whose closure is incomplete fails alone, the others land.
 * A path in two batches counts as added for the first and already valid for the second.
 * Errors that concern the store (locks, schema, I/O) reject the whole call.
 */
export async function registerValidPathBatches(
  lowerRoot: string,
  batches: ReadonlyArray<readonly ValidPathInfo[]>,
  options: RegisterBatchesOptions = {},
): Promise<BatchOutcome[]> {
  const layout = lowerStoreLayout(lowerRoot);
  const registrationTime = options.registrationTime ?? Math.floor(Date.now() / 1000);
  if (!Number.isSafeInteger(registrationTime) || registrationTime < 0) {
    throw new NarfsError('ERR_INVALID_ARGUMENT', `registrationTime ${registrationTime} is not a time`);
  }
  const outcomes: Array<BatchOutcome | undefined> = batches.map((infos) => {
    try {
      validateValidPathInfos(infos);
      return infos.length === 0 ? { ok: true, value: { added: 0, alreadyValid: 0 } } : undefined;
    } catch (e) {
      return { ok: false, error: e instanceof NarfsError ? e : new NarfsError('ERR_INVALID_ARGUMENT', String(e), { cause: e }) };
    }
  });
  const todo = batches.map((b, i) => ({ b, i })).filter(({ i }) => outcomes[i] === undefined);
  const finish = (planned: BatchOutcome[]): BatchOutcome[] => {
    todo.forEach(({ i }, k) => { outcomes[i] = planned[k]; });
    return outcomes as BatchOutcome[];
  };
  const allDone = () => finish(todo.map(({ b }) => ({ ok: true, value: { added: 0, alreadyValid: b.length } })));

  const state = checkLowerStoreFiles(layout);
  if (state !== 'present' && !options.create) {
    throw new NarfsError('ERR_DB_SCHEMA', `no lower database at ${layout.dbPath}`, {
      hint: 'Create the lower store with createLowerStore() before registering paths.',
    });
  }
  if (todo.length === 0) {
    if (state !== 'present') await createLowerStore(lowerRoot, { createStoreDir: options.create!.createStoreDir, ...lockTimeout(options) });
    return finish([]);
  }
  if (state === 'present' && todo.every(({ b }) => allValidInLiveFile(layout, b))) {
    // Without locks first: a read-only SQLite connection is consistent on its own (it takes
    // SQLite's shared lock, and narfs never writes the live file), so "all valid" is a
    // safe answer and the common re-registration costs no lock, no copy and no spawn.
    return allDone();
  }
  if (state !== 'present') ensureStateDirs(layout, options.create!.createStoreDir);

  return withWriterLocks(layout, options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS, () => {
    const now = checkLowerStoreFiles(layout);
    if (now === 'present') {
      if (todo.every(({ b }) => allValidInLiveFile(layout, b))) return allDone();
      return finish(writeGeneration(layout, (db) => {
        checkLowerSchema(db, layout);
        // An empty table (a first, bulk registration) needs no per-path lookups.
        const empty = db.prepare('select not exists (select 1 from ValidPaths)').pluck().get() === 1;
        const { outcomes: planned, fresh } = planBatches(db, todo.map(({ b }) => b), empty);
        if (fresh.length === 0) return { value: planned, commit: false };
        insertPlanned(db, fresh, empty, registrationTime);
        return { value: planned, commit: true };
      }));
    }
    if (!options.create) throw new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath} disappeared`);
    // No store yet: createLowerStore's generation and the rows in one. It is installed even
    // when every batch fails, so the store exists afterwards either way.
    if (now === 'absent') writeSchemaFile(layout);
    return finish(writeGeneration(layout, (db) => {
      db.exec(SCHEMA_SQL);
      db.exec(SCHEMA_MIGRATIONS_SQL);
      const { outcomes: planned, fresh } = planBatches(db, todo.map(({ b }) => b), true);
      if (fresh.length > 0) insertPlanned(db, fresh, true, registrationTime);
      return { value: planned, commit: true };
    }, { fromScratch: true }));
  });
}

function lockTimeout(options: { lockTimeoutMs?: number }): { lockTimeoutMs?: number } {
  return options.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: options.lockTimeoutMs };
}

/**
 * Makes `infos` valid in the lower store at `lowerRoot` (created by createLowerStore).
 * Resolves with how many paths were added and how many were valid already.
 */
export async function registerValidPaths(
  lowerRoot: string,
  infos: readonly ValidPathInfo[],
  options: RegisterBatchesOptions = {},
): Promise<RegisterValidPathsResult> {
  validateValidPathInfos(infos);
  const [outcome] = await registerValidPathBatches(lowerRoot, [infos], options);
  if (!outcome!.ok) throw outcome!.error;
  return outcome!.value;
}
