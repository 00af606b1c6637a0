/**
 * Registrations that scale: concurrent registerOffThread calls coalesced into one
 * generation, each keeping its own outcome (register-off-thread.ts,
 * registerValidPathBatches); a store that does not exist yet created in the same
 * generation as its first rows; a bulk batch (indexes rebuilt) that Nix reads back.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, watch } from 'node:fs';
import { join } from 'node:path';
import { isNarfsError } from '../../src/errors.js';
import { createLowerStore, lowerStoreLayout, registerOffThread, registerValidPaths } from '../../src/nixdb/index.js';
import { BULK_MIN_ROWS } from '../../src/nixdb/register-valid-paths.js';
import { fakeChain, fakeStorePath, immutableQuery, newLowerRoot, NIX_CONFIG } from './nixdb-fixtures.js';

describe('nixdb: registrations that scale', function () {
  this.timeout(300_000);
  const roots: string[] = [];
  const root = (tag: string) => {
    const r = newLowerRoot(tag);
    roots.push(r);
    return r;
  };
  after(function () {
    for (const r of roots) rmSync(r, { recursive: true, force: true });
  });

  it('calls that arrive while a registration runs go together into one generation', async function () {
    const r = root('coalesce');
    await createLowerStore(r);
    const l = lowerStoreLayout(r);
    let installs = 0;
    const watcher = watch(l.dbDir, (event, name) => {
      if (event === 'rename' && name === 'db.sqlite') installs++;
    });
    try {
      // The first call starts a job at once; the five after it wait for that job and then
      // share the next one.
      const first = registerOffThread(r, fakeChain('co-first', 2000));
      const rest = Array.from({ length: 5 }, (_, i) => registerOffThread(r, fakeChain(`co-${i}`, 50)));
      const results = await Promise.all([first, ...rest]);
      assert.deepEqual(results.map((x) => x.added), [2000, 50, 50, 50, 50, 50]);
      // inotify events arrive asynchronously: wait until the count stops at its final value.
      await new Promise((res) => setImmediate(res));
      const deadline = Date.now() + 5000;
      while (installs < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 10));
    } finally {
      watcher.close();
    }
    assert.equal(Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths')), 2250);
    assert.equal(installs, 2, `${installs} generations were installed for two jobs`);
  });

  it('in one coalesced job each call keeps its own outcome, as if run one after the other', async function () {
    const r = root('outcomes');
    await createLowerStore(r);
    const l = lowerStoreLayout(r);
    const a = fakeChain('oc-a', 3);
    const dependent = fakeChain('oc-dep', 2, a[2]!.path); // needs a's last path
    const orphan = fakeChain('oc-orphan', 2, fakeStorePath('nowhere', 'missing'));
    const invalid = [{ ...fakeChain('oc-bad', 1)[0]!, narHash: 'md5:nope' }];
    const running = registerOffThread(r, fakeChain('oc-first', 500));
    const calls = [a, dependent, orphan, invalid, a].map((infos) => registerOffThread(r, infos).then(
      (v) => ({ ok: true as const, v }),
      (e: unknown) => ({ ok: false as const, e }),
    ));
    await running;
    const [ra, rdep, rorphan, rinvalid, ragain] = await Promise.all(calls);
    assert.deepEqual(ra, { ok: true, v: { added: 3, alreadyValid: 0 } });
    assert.deepEqual(rdep, { ok: true, v: { added: 2, alreadyValid: 0 } });
    assert.ok(!rorphan!.ok && isNarfsError(rorphan!.e, 'ERR_CLOSURE_INCOMPLETE'), String(!rorphan!.ok && rorphan!.e));
    assert.ok(!rinvalid!.ok && isNarfsError(rinvalid!.e, 'ERR_INVALID_ARGUMENT'), String(!rinvalid!.ok && rinvalid!.e));
    assert.deepEqual(ragain, { ok: true, v: { added: 0, alreadyValid: 3 } });
    assert.equal(Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths')), 505);
    assert.equal(immutableQuery(l.dbPath, `select count(*) from ValidPaths where path like '%oc-orphan%' or path like '%oc-bad%'`), '0');
  });

  it('a store that does not exist yet is created with its first rows; a failed first batch still leaves a store', async function () {
    const r = root('absent');
    const l = lowerStoreLayout(r);
    assert.equal(existsSync(l.dbPath), false);
    assert.deepEqual(await registerOffThread(r, fakeChain('ab', 5)), { added: 5, alreadyValid: 0 });
    assert.equal(readFileSync(l.schemaPath, 'latin1'), '10');
    assert.equal(immutableQuery(l.dbPath, 'select count(*) from ValidPaths'), '5');
    assert.equal(immutableQuery(l.dbPath, `select count(*) from sqlite_master where name = 'SchemaMigrations'`), '1');
    for (const d of ['profiles/per-user', 'gcroots/per-user', 'temproots']) assert.ok(existsSync(join(l.stateDir, d)), d);
    assert.equal(existsSync(l.storeDir), false, 'the worker never creates <lower>/nix/store');

    const r2 = root('absent-fail');
    const l2 = lowerStoreLayout(r2);
    await assert.rejects(registerOffThread(r2, fakeChain('abf', 2, fakeStorePath('nowhere', 'x'))), (e: unknown) => isNarfsError(e, 'ERR_CLOSURE_INCOMPLETE'));
    assert.equal(immutableQuery(l2.dbPath, 'select count(*) from ValidPaths'), '0');
    // Nix opens it read-only, as it opens a store narfs created empty.
    const q = spawnSync('nix', ['path-info', '--store', `local?root=${r2}&read-only=true`, '--all'], { encoding: 'utf8', env: { ...process.env, NIX_CONFIG } });
    assert.equal(q.status, 0, q.stderr);
  });

  it(`a bulk batch (indexes dropped and rebuilt, >= ${BULK_MIN_ROWS} rows) leaves the schema and the rows Nix expects`, async function () {
    const r = root('bulk');
    await createLowerStore(r);
    const l = lowerStoreLayout(r);
    const schemaBefore = immutableQuery(l.dbPath, 'select type, name, sql from sqlite_master order by name');
    const n = BULK_MIN_ROWS + 1000;
    const chain = fakeChain('bulk', n);
    assert.deepEqual(await registerValidPaths(r, chain), { added: n, alreadyValid: 0 });
    assert.equal(immutableQuery(l.dbPath, 'select type, name, sql from sqlite_master order by name'), schemaBefore);
    assert.equal(immutableQuery(l.dbPath, 'select count(*) from Refs'), String(2 * n - 1));
    assert.equal(immutableQuery(l.dbPath, 'pragma integrity_check'), 'ok');
    assert.equal(immutableQuery(l.dbPath, 'pragma foreign_key_check'), '');
    // Nix follows the Refs through the rebuilt indexes (referrers use IndexReference).
    const env = { ...process.env, NIX_CONFIG };
    const store = `local?root=${r}&read-only=true`;
    const refs = spawnSync('nix-store', ['--store', store, '-q', '--referrers', chain[100]!.path], { encoding: 'utf8', env });
    assert.equal(refs.status, 0, refs.stderr);
    assert.deepEqual(refs.stdout.trim().split('\n').sort(), [chain[100]!.path, chain[101]!.path].sort());
    const closure = spawnSync('nix-store', ['--store', store, '-qR', chain[n - 1]!.path], { encoding: 'utf8', env, maxBuffer: 1 << 26 });
    assert.equal(closure.status, 0, closure.stderr);
    assert.equal(closure.stdout.trim().split('\n').length, n);
  });
});
