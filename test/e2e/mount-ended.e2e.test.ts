/**
 * A mount ended by someone else (src/fuse/native-mount.ts `ended`, mount-daemon.ts,
 * src/cli/main.ts): the daemon must not live on without its mount, holding the cache's
 * locks so that no other mount can use that cache.
 *
 * - `fusermount -u` from outside: the daemon stops, exit 0, the cache closed cleanly.
 * - The FUSE connection aborted through fusectl: the dead mount (every call on it fails
 *   with ENOTCONN) is detached by the daemon, which exits 1 so that a service manager
 *   restarts it.
 *
 * Every wait is on an event (the ready line, the process's exit); whatever happens, the
 * mount is detached and the daemon stopped.
 */
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { run } from '../support/mount-harness.js';
import { spawnNarfs, type CliDaemon } from '../support/cli-daemon.js';
import { mountEntry } from '../../src/fuse/mount-state.js';

describe('e2e: a mount ended from outside', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let mnt: string;
  let cacheDir: string;
  const daemons: CliDaemon[] = [];

  before(async () => {
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-ended-'));
    mnt = join(root, 'nix', 'store');
    cacheDir = join(root, 'cache');
    await mkdir(mnt, { recursive: true });
  });
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
    await run('fusermount', ['-uz', mnt]);
    await rm(root, { recursive: true, force: true });
  });

  const mounted = async (): Promise<CliDaemon> => {
    const d = spawnNarfs(['mount', mnt, '--datalake', `file://${fixtures.datalakes['zstd']!.dir}`,
      '--trusted-public-keys', fixtures.publicKey, '--cache-dir', cacheDir]);
    daemons.push(d);
    await d.waitForOutput('stdout', /narfs: mounted/, 'the ready line');
    // The mount serves: a store path of the datalake is there.
    await stat(fixtures.top.replace('/nix/store', mnt));
    return d;
  };

  const cacheClosedCleanly = (): number | undefined => {
    const db = new Database(join(cacheDir, 'meta.sqlite'), { readonly: true });
    try {
      return (db.prepare("SELECT value FROM state WHERE key = 'clean'").get() as { value: number } | undefined)?.value;
    } finally {
      db.close();
    }
  };

  it('unmounted with fusermount -u: the daemon stops on its own, exit 0, cache closed cleanly', async () => {
    const d = await mounted();
    const r = await run('fusermount', ['-u', mnt]);
    assert.equal(r.code, 0, `fusermount -u failed: ${r.stderr}`);
    assert.equal(await d.exit, 0, d.stderr.join(''));
    assert.match(d.stderr.join(''), /unmounted from outside; stopping/);
    assert.equal(await mountEntry(mnt), undefined, 'something is still mounted');
    assert.equal(cacheClosedCleanly(), 1, 'the blob store was not closed cleanly');
  });

  it('its FUSE connection aborted: the daemon detaches the dead mount and exits 1', async () => {
    const d = await mounted();
    const entry = await mountEntry(mnt);
    assert.ok(entry && /^fuse/.test(entry.fstype), `not a FUSE mount: ${JSON.stringify(entry)}`);
    const connections = '/sys/fs/fuse/connections';
    if (!(await stat(`${connections}/${entry.dev.split(':')[1]}`).then(() => true, () => false))) {
      const m = await run('mount', ['-t', 'fusectl', 'none', connections]);
      assert.equal(m.code, 0, `cannot mount fusectl: ${m.stderr}`);
    }
    await writeFile(`${connections}/${entry.dev.split(':')[1]}/abort`, '1');
    assert.equal(await d.exit, 1, d.stderr.join(''));
    assert.match(d.stderr.join(''), /FUSE connection was aborted \(the dead mount was detached\); stopping/);
    assert.equal(await mountEntry(mnt), undefined, 'the dead mount was left behind');
    assert.equal(cacheClosedCleanly(), 1, 'the blob store was not closed cleanly');
  });
});
