/**
 * createLowerStore + registerValidPaths checked by real Nix (Debian nix-bin 2.8,
 * `--store <lowerRoot>`) against the truth: the same paths in the machine's real store.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import Database from 'better-sqlite3';
import { createLowerStore, lowerStoreLayout, registerValidPaths } from '../../src/nixdb/index.js';
import {
  fakeChain,
  immutableQuery,
  lines,
  newLowerRoot,
  nix,
  pathInfos,
  realClosure,
  sha256File,
  snapshotDir,
  type PathInfoJson,
} from './nixdb-fixtures.js';

function normaliseSql(sql: string): string {
  return sql
    .replace(/--[^\n]*/g, '')
    .replace(/\s+/g, ' ')
    .replace(/\s*([(),])\s*/g, '$1')
    .trim()
    .toLowerCase();
}

function schemaOf(dbPath: string): Map<string, string> {
  const db = new Database(dbPath, { readonly: true });
  try {
    const rows = db.prepare(`select name, sql from sqlite_master where sql is not null order by name`).all() as Array<{ name: string; sql: string }>;
    return new Map(rows.map((r) => [r.name, normaliseSql(r.sql)]));
  } finally {
    db.close();
  }
}

function comparable(j: PathInfoJson) {
  return {
    path: j.path,
    narHash: j.narHash,
    narSize: j.narSize,
    references: [...j.references].sort(),
    deriver: j.deriver,
    signatures: [...(j.signatures ?? [])].sort(),
    ca: j.ca,
  };
}

/** `nix-store --dump-db` output split into per-path blocks, as a map path → block. */
function dumpBlocks(dump: string): Map<string, string> {
  const ls = dump.split('\n');
  const blocks = new Map<string, string>();
  let i = 0;
  while (i < ls.length && ls[i] !== '') {
    const n = Number(ls[i + 4]);
    const block = ls.slice(i, i + 5 + n);
    // references are printed in the store's order; compare them as a set
    blocks.set(ls[i]!, [...block.slice(0, 5), ...block.slice(5).sort()].join('\n'));
    i += 5 + n;
  }
  return blocks;
}

describe('nixdb: register a real closure, checked by Nix 2.8', function () {
  this.timeout(300_000);
  let lower: string;
  let closure: ReturnType<typeof realClosure>;
  const lowerStore = () => lower;

  before(async function () {
    closure = realClosure();
    lower = newLowerRoot('register');
  });

  after(function () {
    if (lower) rmSync(lower, { recursive: true, force: true });
  });

  it('creates the files Nix creates, with the 2.26.3 DDL', async function () {
    const r = await createLowerStore(lower);
    assert.equal(r.created, true);
    const l = lowerStoreLayout(lower);
    assert.equal(readFileSync(l.schemaPath, 'latin1'), '10');
    assert.equal(statSync(l.bigLockPath).mode & 0o777, 0o600);
    assert.equal(statSync(l.bigLockPath).size, 0);
    for (const d of ['profiles/per-user', 'gcroots/per-user', 'temproots', 'db']) assert.ok(statSync(join(l.stateDir, d)).isDirectory(), d);
    assert.ok(statSync(l.storeDir).isDirectory());
    assert.ok(lstatSync(join(l.stateDir, 'gcroots/profiles')).isSymbolicLink());
    assert.equal(readlinkSync(join(l.stateDir, 'gcroots/profiles')), '../profiles');
    // rollback-journal mode (header bytes 18/19 = 1), no sidecars
    const header = readFileSync(l.dbPath).subarray(0, 20);
    assert.deepEqual([header[18], header[19]], [1, 1]);
    assert.deepEqual(Object.keys(snapshotDir(l.dbDir)).filter((n) => n.startsWith('db.sqlite')), ['db.sqlite', 'db.sqlite.narfs-lock']);

    // The DDL equals what Nix itself creates (2.8 here; 2.26.3 adds SchemaMigrations).
    const nixRoot = newLowerRoot('nix-made');
    try {
      nix('nix-store', ['--store', nixRoot, '--dump-db']);
      const theirs = schemaOf(join(nixRoot, 'nix/var/nix/db/db.sqlite'));
      const ours = schemaOf(l.dbPath);
      theirs.set('SchemaMigrations', normaliseSql('CREATE TABLE SchemaMigrations (migration text primary key not null)'));
      const names = (m: Map<string, string>) => [...m.keys()].filter((k) => !k.startsWith('sqlite_')).sort();
      assert.deepEqual(names(ours), names(theirs));
      for (const name of names(theirs)) assert.equal(ours.get(name), theirs.get(name), name);
    } finally {
      rmSync(nixRoot, { recursive: true, force: true });
    }
  });

  it('is idempotent: a second createLowerStore changes nothing', async function () {
    const l = lowerStoreLayout(lower);
    const before = snapshotDir(l.dbDir);
    const r = await createLowerStore(lower);
    assert.equal(r.created, false);
    assert.deepEqual(snapshotDir(l.dbDir), before);
  });

  it('registers the closure in one go and then adds nothing on a second call', async function () {
    const l = lowerStoreLayout(lower);
    const r1 = await registerValidPaths(lower, closure.infos, { registrationTime: 1_700_000_000 });
    assert.deepEqual(r1, { added: closure.infos.length, alreadyValid: 0 });
    const before = sha256File(l.dbPath);
    const inode = statSync(l.dbPath).ino;
    const r2 = await registerValidPaths(lower, closure.infos);
    assert.deepEqual(r2, { added: 0, alreadyValid: closure.infos.length });
    assert.equal(sha256File(l.dbPath), before, 'the database must not change');
    assert.equal(statSync(l.dbPath).ino, inode, 'no new generation for nothing');
    // a subset again, and a superset: only the new ones are added
    const r3 = await registerValidPaths(lower, closure.infos.slice(0, 2));
    assert.deepEqual(r3, { added: 0, alreadyValid: 2 });
    // rows as Nix writes them (§5.4): self-reference present, NULLs where Nix writes NULL
    const db = new Database(l.dbPath, { readonly: true });
    try {
      const self = db
        .prepare('select count(*) from Refs r join ValidPaths v on r.referrer = v.id where r.referrer = r.reference and v.path = ?')
        .pluck()
        .get(closure.out);
      assert.equal(self, 1);
      const drv = db.prepare('select * from ValidPaths where path = ?').get(closure.drv) as Record<string, unknown>;
      assert.equal(drv.deriver, null);
      assert.equal(drv.ultimate, null);
      assert.equal(drv.sigs, null, 'the .drv is not signed by the fixture');
      assert.equal(drv.registrationTime, 1_700_000_000);
      assert.match(String(drv.hash), /^sha256:[0-9a-f]{64}$/);
      const outputs = db
        .prepare('select d.id, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ? order by d.id')
        .all(closure.drv);
      assert.deepEqual(outputs, [
        { id: 'dev', path: closure.dev },
        { id: 'out', path: closure.out },
      ]);
    } finally {
      db.close();
    }
  });

  it('copies the files under <lower>/nix/store (cp -a; the FUSE comes later)', function () {
    // Nix 2.8 reads .drv files for --derivation / --outputs, and --verify needs them all.
    const l = lowerStoreLayout(lower);
    execFileSync('cp', ['-a', ...closure.truth.map((j) => j.path), `${l.storeDir}/`]);
    // Exactly the closure is there, each copy with the NAR hash the real store registered
    // (the NAR covers contents, executable bits, symlink targets and names).
    const names = closure.truth.map((j) => basename(j.path)).sort();
    assert.deepEqual(readdirSync(l.storeDir).sort(), names);
    const copies = closure.truth.map((j) => join(l.storeDir, basename(j.path)));
    const hashes = lines(nix('nix', ['hash', 'path', '--sri', ...copies]));
    assert.deepEqual(
      hashes.map((h, i) => `${basename(copies[i]!)} ${h}`),
      closure.truth.map((j) => `${basename(j.path)} ${j.narHash}`),
    );
  });

  it('nix path-info --json -r through the lower store equals the real store', function () {
    const roots = [closure.out, closure.dev];
    const lowerInfos = [...pathInfos(['-r', ...roots], lowerStore()), ...pathInfos(['-r', '--derivation', closure.drv], lowerStore())];
    const got = new Map(lowerInfos.map((j) => [j.path, comparable(j)]));
    assert.deepEqual(
      [...got.values()].sort((a, b) => (a.path < b.path ? -1 : 1)),
      closure.truth.map(comparable),
    );
    // signatures really travelled (the fixture signs out and dev)
    assert.ok((got.get(closure.out)?.signatures.length ?? 0) > 0);
  });

  it('nix-store -q --references/--referrers/--deriver/--outputs agree with the real store', function () {
    const batch = new Set(closure.truth.map((j) => j.path));
    for (const j of closure.truth) {
      const q = (store: string[], flag: string, p: string) => lines(nix('nix-store', [...store, '-q', flag, p])).sort();
      assert.deepEqual(q(['--store', lower], '--references', j.path), q([], '--references', j.path), `references of ${j.path}`);
      // the real store may have other referrers (other builds); the lower one has those of the batch
      const expected = closure.truth.filter((k) => k.references.includes(j.path)).map((k) => k.path).sort();
      const referrers = q(['--store', lower], '--referrers', j.path);
      assert.deepEqual(referrers, expected, `referrers of ${j.path}`);
      for (const r of referrers) assert.ok(batch.has(r));
      if (!j.path.endsWith('.drv')) {
        assert.deepEqual(q(['--store', lower], '--deriver', j.path), q([], '--deriver', j.path), `deriver of ${j.path}`);
      }
    }
    const outputs = lines(nix('nix-store', ['--store', lower, '-q', '--outputs', closure.drv])).sort();
    assert.deepEqual(outputs, [closure.dev, closure.out].sort());
    assert.deepEqual(outputs, lines(nix('nix-store', ['-q', '--outputs', closure.drv])).sort());
  });

  it('nix-store --dump-db of the lower store matches the real store', function () {
    const ours = dumpBlocks(nix('nix-store', ['--store', lower, '--dump-db']));
    const theirs = dumpBlocks(nix('nix-store', ['--dump-db', ...closure.truth.map((j) => j.path)]));
    assert.deepEqual([...ours.keys()].sort(), [...theirs.keys()].sort());
    for (const [p, block] of theirs) assert.equal(ours.get(p), block, p);
  });

  it('nix-store --verify --check-contents passes with the files present', function () {
    const out = nix('nix-store', ['--store', lower, '--verify', '--check-contents']);
    assert.doesNotMatch(out, /modified|invalid|error/i);
    // and nothing was invalidated by the verify
    assert.equal(lines(nix('nix-store', ['--store', lower, '-q', '--requisites', closure.out])).length > 0, true);
    assert.deepEqual(
      [...dumpBlocks(nix('nix-store', ['--store', lower, '--dump-db'])).keys()].sort(),
      closure.truth.map((j) => j.path).sort(),
    );
  });

  it('after a read-write Nix open (WAL), registers more by folding the WAL into a new generation', async function () {
    const l = lowerStoreLayout(lower);
    // Nix 2.8 has opened the store read-write above: WAL mode, persistent -wal/-shm.
    const header = readFileSync(l.dbPath).subarray(0, 20);
    assert.deepEqual([header[18], header[19]], [2, 2], 'Nix converted the database to WAL');
    const more = fakeChain('after-wal', 3, closure.out);
    const r = await registerValidPaths(lower, more);
    assert.deepEqual(r, { added: 3, alreadyValid: 0 });
    const h2 = readFileSync(l.dbPath).subarray(0, 20);
    assert.deepEqual([h2[18], h2[19]], [1, 1], 'back in rollback-journal mode');
    assert.ok(!existsSync(`${l.dbPath}-wal`) && !existsSync(`${l.dbPath}-shm`));
    // an immutable reader (ignores WAL) sees old and new rows
    const n = Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths'));
    assert.equal(n, closure.truth.length + 3);
    // and so does Nix
    const last = more[2]!.path;
    assert.deepEqual(lines(nix('nix-store', ['--store', lower, '-q', '--references', last])).sort(), [more[1]!.path, last].sort());
    assert.ok(lines(nix('nix-store', ['--store', lower, '-q', '--requisites', last])).includes(closure.src));
  });
});
