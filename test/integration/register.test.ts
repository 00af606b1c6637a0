/**
 * `narfs register` against Nix's own reading of the result (Debian bookworm's Nix 2.8,
 * `--store <lower root>`): the rows say exactly what the narinfos say, the contents verify
 * through the mount, registration is idempotent, and a closure with a missing reference
 * leaves the database byte for byte unchanged.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, probe, run } from '../support/mount-harness.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase, storePathFull } from '../../src/nix/store-path.js';

const sha256File = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

describe('integration: narfs register, checked by Nix 2.8', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let daemon: CliDaemon | undefined;
  const narinfos = new Map<string, NarInfo>();

  before(async () => {
    fixtures = await loadFixtures();
    const dir = fixtures.datalakes['xz']!.dir;
    for (const f of await readdir(dir)) {
      if (!f.endsWith('.narinfo')) continue;
      const ni = parseNarInfo(await readFile(join(dir, f), 'utf8'));
      narinfos.set(storePathFull(ni.storePath), ni);
    }
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-register-'));
  });
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
    await rm(root, { recursive: true, force: true });
  });

  it('registers every path (--all) through the daemon; Nix 2.8 reads back the narinfos exactly', async () => {
    const lower = join(root, 'lower');
    const mnt = join(lower, 'nix/store');
    await mkdir(mnt, { recursive: true });
    const cache = join(root, 'cache');
    daemon = await startNarfsMount([mnt, '--lower', lower, '--datalake', fixtures.datalakes['xz']!.url,
      '--trusted-public-keys', fixtures.publicKey, '--cache-dir', cache]);
    const reg = await run(process.execPath, [NARFS_BIN, 'register', '--lower', lower, '--cache-dir', cache, '--all']);
    assert.equal(reg.code, 0, reg.stderr);
    assert.match(reg.stdout, new RegExp(`registered ${narinfos.size} paths .*\\(${narinfos.size} new, 0 already valid\\)`));

    // nix path-info --json: hash, size, references, deriver, signatures, ca.
    const pi = await run('nix', ['path-info', '--store', lower, '--json', '--all'], NIX_ENV);
    assert.equal(pi.code, 0, pi.stderr);
    const infos = JSON.parse(pi.stdout) as Array<{ path: string; narHash: string; narSize: number; references: string[]; deriver?: string; signatures?: string[]; ca?: string }>;
    assert.equal(infos.length, narinfos.size);
    for (const info of infos) {
      const ni = narinfos.get(info.path);
      assert.ok(ni, `${info.path} is not in the datalake`);
      assert.equal(info.narHash, formatHash(ni.narHash, 'sri'), info.path);
      assert.equal(info.narSize, ni.narSize, info.path);
      assert.deepEqual([...info.references].sort(), ni.references.map(storePathFull).sort(), info.path);
      assert.equal(info.deriver, ni.deriver ? storePathFull(ni.deriver) : undefined, info.path);
      assert.deepEqual([...(info.signatures ?? [])].sort(), [...ni.sigs].sort(), info.path);
      assert.equal(info.ca, ni.ca, info.path);
    }

    // nix-store -q: references, referrers, deriver; --dump-db.
    for (const [p, ni] of narinfos) {
      const refs = await run('nix-store', ['--store', lower, '-q', '--references', p], NIX_ENV);
      assert.deepEqual(refs.stdout.split('\n').filter(Boolean).sort(), ni.references.map(storePathFull).sort(), p);
      const referrers = await run('nix-store', ['--store', lower, '-q', '--referrers', p], NIX_ENV);
      const expected = [...narinfos].filter(([, o]) => o.references.some((r) => storePathFull(r) === p)).map(([q]) => q).sort();
      assert.deepEqual(referrers.stdout.split('\n').filter(Boolean).sort(), expected, p);
      const deriver = await run('nix-store', ['--store', lower, '-q', '--deriver', p], NIX_ENV);
      assert.equal(deriver.stdout.trim(), ni.deriver ? storePathFull(ni.deriver) : 'unknown-deriver', p);
    }
    const dump = await run('nix-store', ['--store', lower, '--dump-db'], NIX_ENV);
    assert.equal(dump.code, 0, dump.stderr);
    const lines = dump.stdout.split('\n');
    for (let i = 0; i < lines.length && lines[i];) {
      const p = lines[i]!;
      const ni = narinfos.get(p)!;
      assert.equal(lines[i + 1], formatHash(ni.narHash, 'base16', false), p);
      assert.equal(Number(lines[i + 2]), ni.narSize, p);
      assert.equal(lines[i + 3], ni.deriver ? storePathFull(ni.deriver) : '', p);
      const n = Number(lines[i + 4]);
      assert.deepEqual(lines.slice(i + 5, i + 5 + n).sort(), ni.references.map(storePathFull).sort(), p);
      i += 5 + n;
    }

    // The root lists every registered path (Nix's --verify drops rows without an entry)...
    const listing = await probe('readdir', mnt);
    for (const p of narinfos.keys()) assert.ok(listing.names?.includes(storePathBase(parseStorePath(p))), `${p} not listed`);
    // ...and every path's contents verify through the mount.
    const verify = await run('nix-store', ['--store', lower, '--verify', '--check-contents'], NIX_ENV);
    assert.equal(verify.code, 0, verify.stderr);
    assert.doesNotMatch(verify.stderr, /modified|invalid|disappeared/, verify.stderr);

    // Idempotent: a second registration adds nothing and leaves the file as it was.
    const db = join(lower, 'nix/var/nix/db/db.sqlite');
    const reg2Before = await sha256File(db);
    const reg2 = await run(process.execPath, [NARFS_BIN, 'register', '--lower', lower, '--cache-dir', cache, fixtures.top]);
    assert.equal(reg2.code, 0, reg2.stderr);
    assert.match(reg2.stdout, /\(0 new, \d+ already valid\)/);
    assert.equal(await sha256File(db), reg2Before);
  });

  it('a closure with a reference missing from the datalake fails whole; the database is unchanged', async () => {
    const server = await HttpDatalakeServer.start({ root: fixtures.datalakes['xz']!.dir });
    try {
      const lower = join(root, 'lower');
      const cache = join(root, 'cache');
      const common = ['--lower', lower, '--cache-dir', cache, '--datalake', server.url, '--trusted-public-keys', fixtures.publicKey];
      // A first, complete registration creates the database.
      const single = fixtures.paths.find((p) => p.role === 'single-file')!.storePath;
      const first = await run(process.execPath, [NARFS_BIN, 'register', ...common, single]);
      assert.equal(first.code, 0, first.stderr);
      const db = join(lower, 'nix/var/nix/db/db.sqlite');
      const before = await sha256File(db);
      // Now one reference of the top path's closure is missing.
      const top = narinfos.get(fixtures.top)!;
      const victim = top.references.find((r) => storePathFull(r) !== fixtures.top)!;
      server.status(`${victim.hashPart}.narinfo`, 404);
      const r = await run(process.execPath, [NARFS_BIN, 'register', ...common, fixtures.top]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /ERR_CLOSURE_INCOMPLETE/);
      assert.match(r.stderr, new RegExp(storePathBase(victim)));
      const details = /^ {2}details: (.*)$/m.exec(r.stderr);
      assert.ok(details, `the missing path is printed as details: ${r.stderr}`);
      assert.deepEqual((JSON.parse(details[1]!) as { missing: string[] }).missing, [storePathFull(victim)]);
      assert.equal(await sha256File(db), before, 'the database is byte-identical');
      const pi = await run('nix', ['path-info', '--store', lower, '--all'], NIX_ENV);
      assert.deepEqual(pi.stdout.split('\n').filter(Boolean), [single]);
    } finally {
      await server.close();
    }
  });
});
