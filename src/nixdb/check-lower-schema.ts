/**
 * Decides whether a lower store is one narfs may write, without changing a byte of it.
 *
 * Follows src/libstore/local-store.cc (2.26.3) `getSchema` (the `schema` file holds the
 * decimal version; Nix parses it with `string2Int`, so "10\n" is corrupt to Nix too) and
 * the tables of src/libstore/schema.sql.
 *
 * Invariant: every check here only reads. Anything narfs does not know — a schema file
 * other than exactly "10", a database without its schema file, a file that is not SQLite,
 * missing tables or columns — is ERR_DB_SCHEMA, and the caller must then leave the store
 * untouched.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import Database from 'better-sqlite3';
import { NarfsError } from '../errors.js';
import { NIX_SCHEMA_VERSION, REQUIRED_COLUMNS } from './schema-sql.js';
import type { LowerStoreLayout } from './lower-store-layout.js';

/** What is on disk: nothing yet, an interrupted creation (schema file only), or a store. */
export type LowerStoreState = 'absent' | 'schema-only' | 'present';

const SQLITE_MAGIC = 'SQLite format 3\0';

function schemaError(layout: LowerStoreLayout, message: string, cause?: unknown): NarfsError {
  return new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath}: ${message}`, { cause, details: { dbPath: layout.dbPath } });
}

/** Reads the first 100 bytes (the SQLite header) of the database file. */
export function readSqliteHeader(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(100);
    const n = readSync(fd, buf, 0, 100, 0);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** True when the header's read/write format versions (bytes 18, 19) say WAL. */
export function headerIsWal(header: Buffer): boolean {
  return header[18] === 2 || header[19] === 2;
}

/** File-level checks: schema file and SQLite magic. */
export function checkLowerStoreFiles(layout: LowerStoreLayout): LowerStoreState {
  const hasSchema = existsSync(layout.schemaPath);
  const hasDb = existsSync(layout.dbPath);
  if (!hasSchema && !hasDb) return 'absent';
  if (!hasSchema) throw schemaError(layout, `the database has no schema file ${layout.schemaPath}`);
  let version: string;
  try {
    version = readFileSync(layout.schemaPath, 'latin1');
  } catch (e) {
    throw new NarfsError('ERR_DB_IO', `cannot read ${layout.schemaPath}: ${(e as Error).message}`, { cause: e });
  }
  if (version !== String(NIX_SCHEMA_VERSION)) {
    throw schemaError(layout, `schema version ${JSON.stringify(version)}, narfs only knows ${NIX_SCHEMA_VERSION}`);
  }
  if (!hasDb) return 'schema-only';
  let header: Buffer;
  try {
    header = readSqliteHeader(layout.dbPath);
  } catch (e) {
    throw new NarfsError('ERR_DB_IO', `cannot read ${layout.dbPath}: ${(e as Error).message}`, { cause: e });
  }
  if (header.length < 100 || header.subarray(0, 16).toString('latin1') !== SQLITE_MAGIC) {
    throw schemaError(layout, 'not an SQLite 3 database');
  }
  return 'present';
}

/** Table/column checks on an open connection (read-only queries). */
export function checkLowerSchema(db: Database.Database, layout: LowerStoreLayout): void {
  let tables: Set<string>;
  try {
    const rows = db.prepare(`select name from sqlite_master where type = 'table'`).all() as Array<{ name: string }>;
    tables = new Set(rows.map((r) => r.name));
  } catch (e) {
    throw schemaError(layout, `cannot read the schema: ${(e as Error).message}`, e);
  }
  for (const [table, columns] of Object.entries(REQUIRED_COLUMNS)) {
    if (!tables.has(table)) throw schemaError(layout, `table ${table} is missing`);
    const have = new Set((db.prepare(`select name from pragma_table_info(?)`).all(table) as Array<{ name: string }>).map((r) => r.name));
    const missing = columns.filter((c) => !have.has(c));
    if (missing.length > 0) throw schemaError(layout, `table ${table} lacks column(s) ${missing.join(', ')}`);
  }
}

/** Runs `fn` on a read-only connection to the live database file, closed afterwards. */
export function withLiveDatabase<T>(layout: LowerStoreLayout, fn: (db: Database.Database) => T): T {
  let db: Database.Database;
  try {
    db = new Database(layout.dbPath, { readonly: true, fileMustExist: true });
  } catch (e) {
    throw new NarfsError('ERR_DB_SCHEMA', `${layout.dbPath}: cannot be opened as SQLite: ${(e as Error).message}`, { cause: e });
  }
  try {
    return fn(db);
  } finally {
    db.close();
  }
}
