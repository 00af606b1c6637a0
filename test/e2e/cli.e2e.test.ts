/**
 * The `narfs` command as a user runs it: ready line, one log line per materialised path,
 * read-only and missing paths, SIGTERM unmounts and exits 0, a stale mount of a killed
 * run is cleaned up, and errors print their code and hint. Every wait is on the daemon's
 * output or exit (CliDaemon.waitForOutput), never on the clock.
 */
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { probe, run } from '../support/mount-harness.js';
import { NARFS_BIN, spawnNarfs, type CliDaemon } from '../support/cli-daemon.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

const BIN = NARFS_BIN;
type Daemon = CliDaemon;
const startDaemon = spawnNarfs;

async function isMounted(mnt: string): Promise<boolean> {
  return (await readFile('/proc/self/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === mnt);
}

describe('e2e: the narfs command', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let mnt: string;
  let lake: string;
  const daemons: Daemon[] = [];

  before(async () => {
    fixtures = await loadFixtures();
    lake = `file://${fixtures.datalakes['zstd']!.dir}`;
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-cli-'));
    mnt = join(root, 'nix', 'store');
    await mkdir(mnt, { recursive: true });
  });
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
    await run('fusermount', ['-uz', mnt]);
    await rm(root, { recursive: true, force: true });
  });

  const mountArgs = () => ['mount', mnt, '--datalake', lake, '--trusted-public-keys', fixtures.publicKey, '--cache-dir', join(root, 'cache')];

  it('mounts, serves, refuses writes, and unmounts cleanly on SIGTERM', async () => {
    const d = startDaemon(mountArgs());
    daemons.push(d);
    await d.waitForOutput('stdout', /narfs: mounted/, 'the ready line');
    assert.match(d.stdout.join(''), new RegExp(`narfs: mounted ${mnt}`));

    const top = storePathBase(parseStorePath(fixtures.top));
    const missing = `${'0'.repeat(32)}-missing`;
    assert.equal((await probe('stat', join(mnt, missing))).code, 'ENOENT');
    const st = await probe('stat', join(mnt, top));
    assert.equal(st.ok, true);
    assert.equal(st.mode! & 0o7777, 0o555);
    assert.equal(st.mtimeMs, 1000);
    assert.equal(st.uid, 0);

    const large = storePathBase(parseStorePath(fixtures.largeFile.storePath));
    const r = await probe('read', join(mnt, large, fixtures.largeFile.relPath));
    assert.equal(r.ok, true);
    assert.equal(r.bytes, fixtures.largeFile.size);
    await d.waitForOutput('stderr', new RegExp(`materialised path=${large} bytes=\\d+ ms=\\d+ (?:commitMs=\\d+ )?source=`), 'the materialised log line');

    for (const op of ['write', 'mkdir'] as const) {
      assert.equal((await probe(op, join(mnt, large, 'new-file'))).code, 'EROFS', op);
      assert.equal((await probe(op, join(mnt, 'new-entry'))).code, 'EROFS', `${op} at the root`);
    }
    // Existing entries: overwriting or removing them is refused too.
    assert.equal((await probe('write', join(mnt, large, fixtures.largeFile.relPath))).code, 'EROFS');
    assert.equal((await probe('unlink', join(mnt, large, fixtures.largeFile.relPath))).code, 'EROFS');
    assert.equal((await probe('unlink', join(mnt, top, 'paths.txt'))).code, 'EROFS');

    d.child.kill('SIGTERM');
    assert.equal(await d.exit, 0);
    assert.equal(await isMounted(mnt), false);
  });

  it('cleans up the stale mount of a killed run', async () => {
    const d1 = startDaemon(mountArgs());
    daemons.push(d1);
    await d1.waitForOutput('stdout', /narfs: mounted/, 'the ready line');
    d1.child.kill('SIGKILL');
    await d1.exit;
    assert.equal((await probe('stat', mnt)).code, 'ENOTCONN');
    const d2 = startDaemon(mountArgs());
    daemons.push(d2);
    await d2.waitForOutput('stdout', /narfs: mounted/, 'the ready line of the second mount');
    // stderr is another pipe: its line may arrive after the ready line.
    await d2.waitForOutput('stderr', /stale mount/, 'the stale-mount notice');
    assert.equal((await probe('readdir', mnt)).ok, true);
    d2.child.kill('SIGINT');
    assert.equal(await d2.exit, 0);
  });

  it('prints the code and hint of an error and exits non-zero', async () => {
    const noKeys = await run(process.execPath, [BIN, 'mount', mnt, '--datalake', lake]);
    assert.equal(noKeys.code, 1);
    assert.match(noKeys.stderr, /ERR_SIGNATURE_POLICY/);
    assert.match(noKeys.stderr, /hint: .*--no-require-sigs/);
    const usage = await run(process.execPath, [BIN, 'mount']);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /ERR_USAGE/);
    const json = await run(process.execPath, [BIN, 'mount', mnt, '--datalake', 'ftp://host/cache', '--no-require-sigs', '--log-format', 'json']);
    assert.notEqual(json.code, 0);
    const line = JSON.parse(json.stderr.trim().split('\n').pop()!) as { code: string; hint: string };
    assert.equal(line.code, 'ERR_DATALAKE_URL');
    assert.ok(line.hint.length > 0);
    const help = await run(process.execPath, [BIN, '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /narfs mount <mountpoint>/);
  });
});
