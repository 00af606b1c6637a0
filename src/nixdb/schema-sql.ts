/**
 * The lower-store database schema, exactly as Nix 2.26.3 leaves it after a read-write open.
 *
 * Follows src/libstore/schema.sql @ 2.26.3 (identical in 2.8.0 apart from a comment) plus
 * the `SchemaMigrations` table that `LocalStore::upgradeDBSchema` (src/libstore/local-store.cc,
 * since 2.26.0) creates on every open. A read-only (`immutable=1`) 2.26 open cannot create
 * it and fails with "attempt to write a readonly database", so narfs always creates it.
 *
 * Invariant: `SCHEMA_SQL` is the DDL of nix-formats.md §5.2 statement for statement; the
 * schema file beside the database holds `NIX_SCHEMA_VERSION` ("10", no newline), the only
 * version narfs reads or writes (`nixSchemaVersion` in local-store.hh).
 */

/** `nixSchemaVersion` of Nix 2.0 … 2.26 (and HEAD). */
export const NIX_SCHEMA_VERSION = 10;

export const SCHEMA_SQL = `
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null, -- base16 representation
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to \`on
-- delete restrict' on the \`reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
`;

/** `LocalStore::upgradeDBSchema` (2.26): run on every open by Nix, so harmless to repeat. */
export const SCHEMA_MIGRATIONS_SQL = 'create table if not exists SchemaMigrations (migration text primary key not null);';

/**
 * Tables and columns narfs reads or writes. A database lacking any of them is not one
 * narfs knows (ERR_DB_SCHEMA). `SchemaMigrations` is not required: a database written by
 * Nix < 2.26 lacks it and narfs adds it (as 2.26 would) in the next generation it writes.
 * Extra tables (Realisations, … from ca-derivations) and extra columns are left alone.
 */
export const REQUIRED_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  ValidPaths: ['id', 'path', 'hash', 'registrationTime', 'deriver', 'narSize', 'ultimate', 'sigs', 'ca'],
  Refs: ['referrer', 'reference'],
  DerivationOutputs: ['drv', 'id', 'path'],
};
