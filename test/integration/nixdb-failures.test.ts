/**
 * nixdb failure modes: incomplete closures, lock contention, foreign or corrupt databases,
 * a writer killed mid-registration, and readers that never lock (`immutable=1`) running
 * during registrations. Nothing may ever be half-written.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, watch, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import Database from 'better-sqlite3';
import { isNarfsError, type ErrorCode } from '../../src/errors.js';
import { createLowerStore, lowerStoreLayout, registerValidPaths } from '../../src/nixdb/index.js';
import { fakeChain, fakeStorePath, immutableQuery, lines, newLowerRoot, nix, snapshotDir } from './nixdb-fixtures.js';

const CHILD = new URL('./nixdb-register-child.ts', import.meta.url).pathname;

async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    if (!isNarfsError(e, code)) throw e;
    return true;
  });
}

/** Holds an flock on `file` from a child until killed; resolves once it is held. */
function holdFlock(file: string, mode: '-x' | '-s'): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    // The lock fd belongs to the process we kill (sh exec'd into sleep), so killing it releases the lock.
    const c = spawn('sh', ['-c', `exec 9>>"$1"; flock ${mode} 9; echo held; exec sleep 600`, 'holder', file], { stdio: ['ignore', 'pipe', 'ignore'] });
    c.stdout!.once('data', () => resolve(c));
    c.once('error', reject);
  });
}

/**
 * Resolves once some process is blocked waiting for an flock on `file`: /proc/locks lists
 * blocked waiters as `N: -> FLOCK …` lines after the holder's, with the file's inode. The
 * kernel has no event for it, so the file is polled; the wait ends on the condition, or
 * early once `unless()` is true.
 */
async function untilFlockWaiter(file: string, unless: () => boolean): Promise<void> {
  const ino = String(statSync(file).ino);
  const waiting = /^\d+: -> FLOCK\s+\S+\s+\S+\s+\d+\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s/;
  while (!unless()) {
    const locks = readFileSync('/proc/locks', 'latin1').split('\n');
    if (locks.some((l) => waiting.exec(l)?.[1] === ino)) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}

function killAndWait(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}

describe('nixdb: failure modes', function () {
  this.timeout(300_000);
  const roots: string[] = [];
  const fresh = async (tag: string) => {
    const root = newLowerRoot(tag);
    roots.push(root);
    await createLowerStore(root);
    return root;
  };
  after(function () {
    for (const r of roots) rmSync(r, { recursive: true, force: true });
  });

  it('a reference neither in the batch nor valid ⇒ ERR_CLOSURE_INCOMPLETE, DB byte-identical', async function () {
    const root = await fresh('closure');
    const base = fakeChain('closure-base', 5);
    await registerValidPaths(root, base);
    const l = lowerStoreLayout(root);
    const before = snapshotDir(l.dbDir);
    const missing = fakeStorePath('nowhere', 'missing');
    const batch = fakeChain('closure-more', 50, base[4]!.path);
    batch[30] = { ...batch[30]!, references: [...batch[30]!.references, missing] };
    await assert.rejects(registerValidPaths(root, batch), (e: unknown) => {
      assert.ok(isNarfsError(e, 'ERR_CLOSURE_INCOMPLETE'));
      assert.deepEqual(e.details?.missing, [missing]);
      return true;
    });
    assert.deepEqual(snapshotDir(l.dbDir), before);
    assert.equal(Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths')), 5);
    // The already-valid part of a batch counts as present: this one is complete.
    assert.deepEqual(await registerValidPaths(root, [...base, ...fakeChain('closure-ok', 2, base[4]!.path)]), { added: 2, alreadyValid: 5 });
  });

  it('rejects invalid infos with ERR_INVALID_ARGUMENT before touching anything', async function () {
    const root = await fresh('invalid');
    const [good] = fakeChain('invalid', 1);
    const l = lowerStoreLayout(root);
    const before = snapshotDir(l.dbDir);
    for (const bad of [
      { ...good!, path: '/nix/store/short-x' },
      { ...good!, narHash: 'sha256-AAAA' },
      { ...good!, narSize: -1 },
      { ...good!, references: ['relative'] },
      { ...good!, deriver: fakeStorePath('d', 'not-a-drv') },
      { ...good!, sigs: ['no colon'] },
      { ...good!, path: fakeStorePath('x', 'x.drv') }, // a .drv without drvOutputs
    ]) {
      await rejectsWith(registerValidPaths(root, [bad]), 'ERR_INVALID_ARGUMENT');
    }
    await rejectsWith(registerValidPaths(root, [good!, good!]), 'ERR_INVALID_ARGUMENT');
    assert.deepEqual(snapshotDir(l.dbDir), before);
  });

  it('waits for another writer, then fails with ERR_DB_LOCKED within the deadline', async function () {
    const root = await fresh('locked');
    const l = lowerStoreLayout(root);
    const holder = await holdFlock(l.writerLockPath, '-x');
    try {
      const start = Date.now();
      await rejectsWith(registerValidPaths(root, fakeChain('locked', 3), { lockTimeoutMs: 1500 }), 'ERR_DB_LOCKED');
      const waited = Date.now() - start;
      assert.ok(waited >= 1400 && waited < 4000, `waited ${waited} ms`);
    } finally {
      await killAndWait(holder);
    }
    assert.equal(Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths')), 0);
    // released ⇒ the next call goes through
    assert.deepEqual(await registerValidPaths(root, fakeChain('locked', 3)), { added: 3, alreadyValid: 0 });
  });

  it('waits while the lock is held and proceeds once it is released', async function () {
    const root = await fresh('wait');
    const lock = lowerStoreLayout(root).writerLockPath;
    const holder = await holdFlock(lock, '-x');
    let settled = false;
    const registering = registerValidPaths(root, fakeChain('wait', 2), { lockTimeoutMs: 60_000 }).finally(() => {
      settled = true;
    });
    try {
      // Release only once the writer is blocked on the lock, and check it had not gone on.
      await untilFlockWaiter(lock, () => settled);
      assert.equal(settled, false, 'registration settled while the lock was held');
    } finally {
      await killAndWait(holder);
    }
    assert.deepEqual(await registering, { added: 2, alreadyValid: 0 });
  });

  it('a read-write Nix holding big-lock (LOCK_SH) keeps writers out: ERR_DB_LOCKED', async function () {
    const root = await fresh('biglock');
    const holder = await holdFlock(lowerStoreLayout(root).bigLockPath, '-s');
    try {
      await rejectsWith(registerValidPaths(root, fakeChain('biglock', 1), { lockTimeoutMs: 800 }), 'ERR_DB_LOCKED');
    } finally {
      await killAndWait(holder);
    }
  });

  it('two concurrent writers are serialised and both batches land whole', async function () {
    const root = await fresh('concurrent');
    const a = fakeChain('conc-a', 300);
    const b = fakeChain('conc-b', 300);
    const [ra, rb] = await Promise.all([registerValidPaths(root, a), registerValidPaths(root, b)]);
    assert.deepEqual([ra.added, rb.added], [300, 300]);
    assert.equal(Number(immutableQuery(lowerStoreLayout(root).dbPath, 'select count(*) from ValidPaths')), 600);
  });

  describe('foreign or corrupt databases ⇒ ERR_DB_SCHEMA, untouched', function () {
    const cases: Array<[string, (l: ReturnType<typeof lowerStoreLayout>) => void]> = [
      ['not SQLite', (l) => writeFileSync(l.dbPath, Buffer.alloc(8192, 0x5a))],
      ['SQLite header, garbage pages', (l) => {
        const db = new Database(l.dbPath);
        db.close();
        const buf = Buffer.alloc(8192, 0x33);
        Buffer.from('SQLite format 3\0').copy(buf);
        buf.writeUInt16BE(4096, 16);
        buf[18] = 1;
        buf[19] = 1;
        writeFileSync(l.dbPath, buf);
      }],
      ['schema file 11', (l) => writeFileSync(l.schemaPath, '11')],
      ['schema file "10\\n"', (l) => writeFileSync(l.schemaPath, '10\n')],
      ['no schema file', (l) => rmSync(l.schemaPath)],
      ['missing table', (l) => {
        const db = new Database(l.dbPath);
        db.exec('drop table DerivationOutputs');
        db.close();
      }],
      ['missing column', (l) => {
        rmSync(l.dbPath);
        const db = new Database(l.dbPath);
        db.exec('create table ValidPaths (id integer primary key, path text, hash text); create table Refs (referrer, reference); create table DerivationOutputs (drv, id, path)');
        db.close();
      }],
    ];
    for (const [name, damage] of cases) {
      it(name, async function () {
        const root = await fresh(`schema`);
        const l = lowerStoreLayout(root);
        damage(l);
        const before = snapshotDir(l.dbDir);
        await rejectsWith(registerValidPaths(root, fakeChain('schema', 2)), 'ERR_DB_SCHEMA');
        await rejectsWith(createLowerStore(root), 'ERR_DB_SCHEMA');
        assert.deepEqual(snapshotDir(l.dbDir), before);
      });
    }
  });

  it('a writer SIGKILLed in the middle of a large registration leaves all or none of it', async function () {
    const root = await fresh('sigkill');
    const l = lowerStoreLayout(root);
    const base = fakeChain('sigkill-base', 10);
    await registerValidPaths(root, base);
    const N = 20_000;
    const outcomes: number[] = [];
    // Kill points are events the writer's own files show (inotify on the db directory),
    // not delays: when its private generation appears (copy starting), after 1, 10 and
    // 100 writes to it (inserting), and right after it is renamed over db.sqlite. A writer
    // that gets past a point before the kill lands only moves the sample later (even past
    // its exit); all or none must hold wherever it lands.
    const generation = new RegExp(`^${basename(l.dbPath).replace(/\./g, '\\.')}\\.narfs-new-\\d+$`);
    interface Seen { created: boolean; writes: number; renamed: boolean }
    const points: Array<[string, (s: Seen) => boolean]> = [
      ['created', (s) => s.created],
      ['written-1', (s) => s.writes >= 1],
      ['written-10', (s) => s.writes >= 10],
      ['written-100', (s) => s.writes >= 100],
      ['renamed', (s) => s.renamed],
    ];
    for (const [point, reached] of points) {
      const seen: Seen = { created: false, writes: 0, renamed: false };
      let onPoint!: () => void;
      const atPoint = new Promise<void>((resolve) => (onPoint = resolve));
      const watcher = watch(l.dbDir, (type, name) => {
        if (name === null || !generation.test(name)) return;
        if (type === 'change') seen.writes++;
        else if (existsSync(join(l.dbDir, name))) seen.created = true;
        else if (seen.created) seen.renamed = true;
        if (reached(seen)) onPoint();
      });
      const c = spawn(process.execPath, ['--import', 'tsx', CHILD, root, `sigkill-${point}`, String(N), base[9]!.path], { stdio: ['ignore', 'pipe', 'pipe'] });
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      try {
        await Promise.race([atPoint, exited]);
        await killAndWait(c);
      } finally {
        watcher.close();
      }
      const count = Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths'));
      const inBatch = Number(immutableQuery(l.dbPath, `select count(*) from ValidPaths where path like '%-sigkill-${point}-0-%'`));
      assert.ok(inBatch === 0 || inBatch === N, `killed at ${point}: ${inBatch} of ${N} rows`);
      if (point === 'renamed') assert.equal(inBatch, N, 'killed after the rename: the batch is in');
      assert.equal(immutableQuery(l.dbPath, 'pragma integrity_check'), 'ok');
      assert.equal(immutableQuery(l.dbPath, 'pragma foreign_key_check'), '');
      outcomes.push(inBatch === N ? 1 : 0);
      assert.ok(count >= 10);
    }
    // Nix reads it (on a copy: a read-write Nix open would convert the DB to WAL)
    const copy = newLowerRoot('sigkill-copy');
    roots.push(copy);
    spawnSync('cp', ['-a', `${root}/.`, copy]);
    const dump = nix('nix-store', ['--store', copy, '--dump-db']);
    assert.equal(lines(dump).filter((x) => x.startsWith('/nix/store/') && x.includes('-sigkill-')).length > 0, true);
    // the next writer cleans up the dead one's generation and works
    assert.deepEqual(await registerValidPaths(root, fakeChain('sigkill-after', 2, base[9]!.path)), { added: 2, alreadyValid: 0 });
    assert.ok(!readdirSync(l.dbDir).some((n) => n.includes('narfs-new-')));
    console.log(`      (kills that left the batch complete, by kill point ${points.map(([p]) => p).join(', ')}: ${outcomes.join('')})`);
  });

  it('immutable readers in a loop during registrations never fail and never see half a closure', async function () {
    const root = await fresh('readers');
    const l = lowerStoreLayout(root);
    const BATCH = 400;
    const BATCHES = 25;
    // Each query: total rows, rows of incomplete batches (a batch is all paths "readers-<b>-*"),
    // dangling Refs, and a quick_check of the file the reader opened.
    const sql = [
      'select count(*) from ValidPaths;',
      // names are readers-<batch>-<i>: strip the hash part and the trailing index
      `select count(*) from (select rtrim(substr(path, 45), '0123456789') b, count(*) n from ValidPaths group by b having n != ${BATCH});`,
      'select count(*) from Refs r left join ValidPaths v on r.reference = v.id where v.id is null;',
      'pragma quick_check;',
    ].join(' ');
    const reader = spawn(
      'bash',
      ['-c', `while [ ! -e "$1.stop" ]; do sqlite3 -batch -separator ' ' "file:$1?immutable=1" "$2" | tr '\\n' ' ' || echo FAILED; echo; done`, 'reader', l.dbPath, sql],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    reader.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    reader.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const writer = spawnSync(process.execPath, ['--import', 'tsx', CHILD, root, 'readers', String(BATCH), '', String(BATCHES)], { encoding: 'utf8' });
    writeFileSync(`${l.dbPath}.stop`, '');
    await new Promise((r) => reader.once('exit', r));
    rmSync(`${l.dbPath}.stop`);
    assert.equal(writer.status, 0, writer.stderr);
    assert.equal(err, '', 'readers printed errors');
    const results = lines(out).map((x) => x.trim());
    assert.ok(results.length > 20, `only ${results.length} reads`);
    const seen = new Set<number>();
    for (const r of results) {
      const [count, partial, dangling, check] = r.split(/\s+/);
      assert.equal(check, 'ok', r);
      assert.equal(partial, '0', `half a closure: ${r}`);
      assert.equal(dangling, '0', r);
      assert.equal(Number(count) % BATCH, 0, r);
      seen.add(Number(count));
    }
    assert.equal(Number(immutableQuery(l.dbPath, 'select count(*) from ValidPaths')), BATCH * BATCHES);
    console.log(`      (${results.length} immutable reads saw ${seen.size} distinct generations; writer: ${lines(writer.stdout).at(-1)})`);
    assert.ok(existsSync(l.dbPath));
  });
});
