/**
 * "Your slice on a laptop", end to end: `narfs mount --slice URL` run by a normal user
 * (a system user the test creates and removes), no --cache-dir, against a datalake on
 * loopback that serves one binary cache under two customers' prefixes, each behind its
 * own bearer token and with its own slice list.
 *
 * The daemon runs as that user, through fusermount3, in a mount namespace of its own
 * whose /dev/fuse is a 0666 node of the same device (this machine's is 0600; see
 * native-unprivileged.e2e.test.ts); every probe and `nix hash path` runs as that user in
 * that namespace. Checked: the root lists exactly the closures of the customer's roots;
 * every visible path hashes to its NarHash; a path of the datalake outside the slice is
 * ENOENT and the server saw no request for it; a second user cannot read the mount
 * (no allow_other); the cache is $XDG_CACHE_HOME/narfs, 0700; refresh with 304 and with
 * a changed list (a root appears, a root disappears); an offline restart comes up from
 * the kept list and the cache; a token file readable by others is refused, and the token
 * is in no log and no argv.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NARFS_BIN, spawnNarfs, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { CustomerDatalakeServer } from '../support/customer-datalake-server.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, pathByRole, type FixtureRole, type Fixtures } from '../support/fixtures.js';

const execFileP = promisify(execFile);
const PROBE = fileURLToPath(new URL('../support/fs-probe.mjs', import.meta.url));
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const TOOL_MS = 120_000;

interface TestUser { name: string; uid: number; gid: number }

async function createUser(): Promise<TestUser> {
  const name = `narfs-t-${randomBytes(4).toString('hex')}`;
  await execFileP('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name]);
  const { stdout } = await execFileP('id', ['-u', name]);
  const { stdout: g } = await execFileP('id', ['-g', name]);
  return { name, uid: Number(stdout.trim()), gid: Number(g.trim()) };
}

const asUser = (u: TestUser, argv: string[]): string[] =>
  ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), '--clear-groups', '--', ...argv];

/** The daemon's command line: in a private mount namespace with a 0666 /dev/fuse, as `u`. */
function inOwnNamespace(u: TestUser, env: Record<string, string>) {
  return (argv: string[]): [string, string[]] => {
    const script = 'set -e; d=$(mktemp -d); mknod -m 0666 "$d/fuse" c 10 229; mount --bind "$d/fuse" /dev/fuse; exec "$@"';
    const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    return ['unshare', ['--mount', '--propagation', 'private', '--', 'bash', '-c', script, 'narfs-slice', ...asUser(u, ['env', ...envArgs, ...argv])]];
  };
}

/** Runs `argv` as `u` inside the mount namespace of process `pid`. */
async function runIn(pid: number, u: TestUser, argv: string[], env: Record<string, string> = {}): Promise<string> {
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const { stdout } = await execFileP('nsenter', [`--mount=/proc/${pid}/ns/mnt`, '--', ...asUser(u, ['env', ...envArgs, ...argv])], { timeout: TOOL_MS, cwd: '/' });
  return stdout;
}

async function probe(pid: number, u: TestUser, op: string, path: string): Promise<{ ok: boolean; code?: string; names?: string[] }> {
  return JSON.parse(await runIn(pid, u, [process.execPath, PROBE, op, path])) as { ok: boolean; code?: string; names?: string[] };
}

describe('e2e: a customer slice mounted by a normal user', function () {
  this.timeout(10 * 60_000);
  let fx: Fixtures;
  let server: CustomerDatalakeServer;
  let user: TestUser;
  let other: TestUser;
  let home: string;
  let mnt: string;
  const daemons: CliDaemon[] = [];
  const acmeToken = `acme-${randomBytes(12).toString('hex')}`;
  const globexToken = `globex-${randomBytes(12).toString('hex')}`;

  const storePath = (role: FixtureRole) => pathByRole(fx, role).storePath;
  const base = (p: string) => p.slice('/nix/store/'.length);
  /** The closure of `roots` from the manifest (what Nix recorded). */
  const closureOf = (roots: string[]): string[] => {
    const refs = new Map(fx.paths.map((p) => [p.storePath, p.references]));
    const out = new Set<string>();
    const walk = (p: string) => {
      if (out.has(p)) return;
      out.add(p);
      for (const r of refs.get(p) ?? []) walk(r);
    };
    roots.forEach(walk);
    return [...out].map(base).sort();
  };

  before(async function () {
    if (process.getuid?.() !== 0) this.skip(); // the test creates users and namespaces itself
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
    user = await createUser();
    other = await createUser();
    home = await mkdtemp(join(tmpdir(), 'narfs-slice-home-'));
    await chmod(home, 0o755);
    await chown(home, user.uid, user.gid);
    mnt = join(home, 'nix-slice', 'nix', 'store');
    await mkdir(mnt, { recursive: true });
    await mkdir(join(home, '.config', 'narfs'), { recursive: true, mode: 0o700 });
    for (const d of [join(home, 'nix-slice'), join(home, 'nix-slice', 'nix'), mnt, join(home, '.config'), join(home, '.config', 'narfs')]) {
      await chown(d, user.uid, user.gid);
    }
    await writeFile(join(home, '.config', 'narfs', 'token'), acmeToken + '\n', { mode: 0o600 });
    await chown(join(home, '.config', 'narfs', 'token'), user.uid, user.gid);
    server = await CustomerDatalakeServer.start(fx.datalakes.xz.dir);
    server.setCustomer('acme', acmeToken, [storePath('single-symlink'), storePath('multi-output')]);
    server.setCustomer('globex', globexToken, [storePath('single-exec'), storePath('self-ref')]);
  });

  afterEach(async function () {
    for (const d of daemons.splice(0)) await d.stop();
  });

  after(async function () {
    await server?.close();
    if (home) await rm(home, { recursive: true, force: true });
    for (const u of [user, other]) if (u) await execFileP('userdel', [u.name]).catch(() => {});
  });

  const env = () => ({ HOME: home, XDG_CACHE_HOME: join(home, '.cache'), XDG_CONFIG_HOME: join(home, '.config') });
  const mountArgs = (refresh: string) => [
    mnt, '--datalake', server.url('acme'), '--bearer-token-file', join(home, '.config', 'narfs', 'token'),
    '--trusted-public-keys', fx.publicKey, '--slice', `${server.url('acme')}/roots.txt`, '--slice-refresh', refresh,
  ];
  const start = async (refresh: string): Promise<CliDaemon> => {
    const d = await startNarfsMount(mountArgs(refresh), undefined, { wrap: inOwnNamespace(user, env()), env: { ...process.env, PATH: process.env.PATH ?? '' } });
    daemons.push(d);
    return d;
  };
  const listing = async (d: CliDaemon) => {
    const r = await probe(d.child.pid!, user, 'readdir', mnt);
    assert.ok(r.ok, JSON.stringify(r));
    // `.links` is the store's own directory (as in a real /nix/store), not a store path.
    return r.names!.filter((n) => n !== '.links').sort();
  };
  const nixHash = async (d: CliDaemon, name: string) =>
    (await runIn(d.child.pid!, user, ['nix', '--extra-experimental-features', 'nix-command', 'hash', 'path', '--base32', join(mnt, name)], env())).trim();
  const narHashOf = (name: string) => fx.paths.find((p) => base(p.storePath) === name)!.narHash.replace(/^sha256:/, '');
  /** Waits for the server to see `n` more requests of roots.txt (the refresh timer ran). */
  const refreshes = async (n: number) => {
    const seen = server.requests.filter((r) => r.relPath === 'roots.txt').length;
    const end = Date.now() + TOOL_MS;
    while (server.requests.filter((r) => r.relPath === 'roots.txt').length < seen + n) {
      if (Date.now() > end) assert.fail('the slice list was not fetched again');
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  it('lists exactly the slice closures, each hashing to its NarHash; others are ENOENT with no request; other users are refused', async function () {
    const d = await start('300s');
    const want = closureOf([storePath('single-symlink'), storePath('multi-output')]);
    assert.deepEqual(await listing(d), want);
    for (const name of want) assert.equal(await nixHash(d, name), narHashOf(name), name);
    // In the datalake (globex's root, and top), but not in acme's slice.
    for (const outside of [storePath('single-exec'), storePath('top')]) {
      const r = await probe(d.child.pid!, user, 'stat', join(mnt, base(outside)));
      assert.equal(r.code, 'ENOENT', JSON.stringify(r));
      assert.deepEqual(server.requestsFor(base(outside).slice(0, 32)), [], `the datalake was asked for ${base(outside)}`);
    }
    assert.ok(server.requests.every((r) => r.customer === 'acme'), 'only acme\'s prefix was used');
    const denied = await probe(d.child.pid!, other, 'readdir', mnt);
    assert.equal(denied.code, 'EACCES', JSON.stringify(denied));
    const cache = await stat(join(home, '.cache', 'narfs'));
    assert.equal(cache.mode & 0o777, 0o700);
    assert.equal(cache.uid, user.uid);
    // The token is in no log line and in no process's argv.
    assert.ok(!d.stderr.join('').includes(acmeToken) && !d.stdout.join('').includes(acmeToken));
    const { stdout: ps } = await execFileP('ps', ['-eo', 'args']);
    assert.ok(!ps.includes(acmeToken), 'the token is in some argv');
    // `narfs status` and `narfs gc` work as the user, on the user's cache (no --cache-dir).
    const st = JSON.parse(await runIn(d.child.pid!, user, [process.execPath, NARFS_BIN, 'status', '--json'], env())) as {
      mountpoint: string; cache: { dir: string; files?: { bytes: number; maxBytes: number } };
    };
    assert.equal(st.mountpoint, mnt);
    assert.equal(st.cache.dir, join(home, '.cache', 'narfs'));
    assert.ok(st.cache.files && st.cache.files.bytes > 0 && st.cache.files.maxBytes > 0, JSON.stringify(st.cache));
    const gc = await runIn(d.child.pid!, user, [process.execPath, NARFS_BIN, 'gc', '--max-size', '0'], env());
    assert.match(gc, /narfs: gc freed .* the cache holds 0\.0 MiB/);
    // Evicted, the files come back verified on the next read.
    for (const name of want) assert.equal(await nixHash(d, name), narHashOf(name), name);
  });

  it('refreshes: an unchanged list is a 304; a new root appears and a removed one disappears', async function () {
    const d = await start('1s');
    const before = closureOf([storePath('single-symlink'), storePath('multi-output')]);
    assert.deepEqual(await listing(d), before);
    await refreshes(2);
    const lists = server.requests.filter((r) => r.relPath === 'roots.txt');
    assert.equal(lists.at(-1)!.status, 304, JSON.stringify(lists));
    assert.ok(lists.at(-1)!.ifNoneMatch);
    // Acme's build service adds tree and drops multi-output.
    server.setCustomer('acme', acmeToken, [storePath('single-symlink'), storePath('tree')]);
    const after = closureOf([storePath('single-symlink'), storePath('tree')]);
    const end = Date.now() + TOOL_MS;
    let now = await listing(d);
    while (JSON.stringify(now) !== JSON.stringify(after)) {
      if (Date.now() > end) assert.deepEqual(now, after, 'the listing did not follow the new slice list');
      await new Promise((r) => setTimeout(r, 200));
      now = await listing(d);
    }
    const tree = base(storePath('tree'));
    assert.equal(await nixHash(d, tree), narHashOf(tree));
    const gone = await probe(d.child.pid!, user, 'stat', join(mnt, base(storePath('multi-output-doc'))));
    assert.equal(gone.code, 'ENOENT', JSON.stringify(gone));
  });

  it('offline: a restart with the datalake gone comes up from the kept slice list and serves the cache', async function () {
    const port = server.port;
    const online = await start('300s');
    const want = closureOf([storePath('single-symlink'), storePath('tree')]);
    assert.deepEqual(await listing(online), want);
    for (const name of want) assert.equal(await nixHash(online, name), narHashOf(name), name);
    await online.stop();
    daemons.splice(daemons.indexOf(online), 1);
    await server.close();
    try {
      const offline = await start('300s');
      assert.deepEqual(await listing(offline), want);
      for (const name of want) assert.equal(await nixHash(offline, name), narHashOf(name), name);
      assert.match(offline.stderr.join(''), /kept/);
    } finally {
      await server.listen(port);
    }
  });

  it('refuses a bearer token file that others may read, naming it, with the chmod hint; the token is not printed', async function () {
    const token = join(home, '.config', 'narfs', 'token');
    await chmod(token, 0o644);
    try {
      const d = spawnNarfs(['mount', ...mountArgs('300s')], { wrap: inOwnNamespace(user, env()) });
      daemons.push(d);
      const code = await d.exit;
      const err = d.stderr.join('');
      assert.equal(code, 1, err);
      assert.match(err, /ERR_SECRET_PERMISSIONS/);
      assert.ok(err.includes(`chmod 600 ${token}`), err);
      assert.ok(!err.includes(acmeToken));
    } finally {
      await chmod(token, 0o600);
    }
  });

  it('suspend/resume: the datalake goes away and comes back; the same mount fetches new paths again', async function () {
    const port = server.port;
    const d = await start('1s');
    await server.close();
    // While it is away: refreshes fail, what is shown stays.
    const shown = await listing(d);
    await d.waitForOutput('stderr', /slice: refresh failed/, 'a failed refresh while the datalake is away');
    assert.deepEqual(await listing(d), shown);
    await server.listen(port);
    server.setCustomer('acme', acmeToken, [storePath('single-symlink'), storePath('tree'), storePath('byte-names')]);
    const bn = base(storePath('byte-names'));
    const end = Date.now() + TOOL_MS;
    for (;;) {
      const r = await probe(d.child.pid!, user, 'stat', join(mnt, bn));
      if (r.ok) break;
      if (Date.now() > end) assert.fail(`${bn} did not appear after the datalake came back: ${d.stderr.join('')}`);
      await new Promise((r2) => setTimeout(r2, 200));
    }
    assert.equal(await nixHash(d, bn), narHashOf(bn));
  });
});
