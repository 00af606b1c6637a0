/**
 * The layered setup end to end, with Nix 2.26 (Debian trixie chroot): narfs mounts the
 * lower store directory; OverlayFS goes on top; Nix's local-overlay store must treat the
 * lower closure as valid, agree with the narinfos, verify contents through the mount, and
 * build on top of it without copying anything of the lower closure into the upper layer.
 * Run for both kinds of lower store, with the same checks:
 * - `database`: narfs writes the lower database (`narfs register`), and the overlay uses
 *   `lower-store=<root>?read-only=true`;
 * - `socket`: narfs serves the lower store over the worker protocol (`--lower-socket`),
 *   the overlay uses `lower-store=unix://<socket>`, nothing is registered, and a path
 *   pushed to the datalake after the mount started is valid at once.
 */
import assert from 'node:assert/strict';
import { copyFile, cp, mkdir, mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { run } from '../support/mount-harness.js';
import { skipOrFail } from '../support/environment.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { parseStorePath, storePathFull } from '../../src/nix/store-path.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const BIN = NARFS_BIN;

for (const kind of ['database', 'socket'] as const) describe(`e2e: Nix 2.26 local-overlay store on top of a narfs lower store (${kind})`, function () {
  this.timeout(20 * 60_000);
  let fixtures: Fixtures;
  let chroot: string;
  let work: string;
  let daemon: CliDaemon | undefined;

  before(async function () {
    fixtures = await loadFixtures();
    const c = await run('bash', [join(REPO, 'scripts/build-trixie-chroot.sh')], {}, 15 * 60_000);
    if (c.code !== 0) skipOrFail(this, `the trixie chroot (${c.stderr.trim().split('\n').pop()})`);
    chroot = c.stdout.trim().split('\n').pop()!;
    // Under /var/tmp, not /tmp: the chroot has its own /tmp.
    await mkdir('/var/tmp', { recursive: true });
    work = await mkdtemp('/var/tmp/narfs-overlay-');
  });
  after(async () => {
    await daemon?.stop();
    if (work) {
      await forceUnmount(join(work, 'lower/nix/store'));
      await rm(work, { recursive: true, force: true });
    }
  });

  it('sees the lower closure as valid, verifies it through the mount, and builds on it', async () => {
    const lower = join(work, 'lower');
    const mnt = join(lower, 'nix/store');
    await mkdir(mnt, { recursive: true });
    const fixtureLake = fixtures.datalakes['zstd']!;
    // A copy, so that a path can be pushed to it while the mount runs (socket kind).
    const lake = { dir: join(work, 'lake'), url: `file://${join(work, 'lake')}` };
    await cp(fixtureLake.dir, lake.dir, { recursive: true });
    const late = fixtures.paths.find((p) => p.role === 'source')!.storePath;
    const lateNarinfo = `${parseStorePath(late).hashPart}.narinfo`;
    await rename(join(lake.dir, lateNarinfo), join(work, lateNarinfo));
    const socket = join(work, 'lower.sock');
    daemon = await startNarfsMount([mnt, '--datalake', lake.url, '--trusted-public-keys', fixtures.publicKey,
      '--cache-dir', join(work, 'cache'), ...(kind === 'database' ? ['--lower', lower] : ['--lower-socket', socket])]);

    let lowerStore: string;
    if (kind === 'database') {
      // bin/narfs run as a program: the fast client, through the mount's daemon.
      const reg = await run(BIN, ['register', '--lower', lower, '--cache-dir', join(work, 'cache'), fixtures.top]);
      assert.equal(reg.code, 0, reg.stderr);
      // Registering again (the Node CLI, through the same daemon) changes nothing.
      const again = await run(process.execPath, [BIN, 'register', '--lower', lower, '--cache-dir', join(work, 'cache'), fixtures.top]);
      assert.match(again.stdout, /\(0 new, \d+ already valid\)/);
      lowerStore = `${lower}?read-only=true`;
    } else {
      lowerStore = `unix://${socket}`;
    }
    // Pushed after the mount started, never registered.
    await rename(join(work, lateNarinfo), join(lake.dir, lateNarinfo));

    await copyFile(join(REPO, 'test/e2e/overlay-inner.sh'), join(work, 'inner.sh'));
    const r = await run('bash', [join(REPO, 'scripts/chroot-run.sh'), '-w', work, '-w', mnt, chroot,
      '/usr/bin/env', `W=${work}`, `TOP=${fixtures.top}`, `LARGE=${fixtures.largeFile.storePath}`, `LATE=${late}`,
      `LOWER_DIR=${mnt}`, `LOWER_STORE=${lowerStore}`, '/bin/bash', join(work, 'inner.sh')],
    {}, 15 * 60_000);
    assert.equal(r.code, 0, `inner script failed:\n${r.stdout}\n${r.stderr}\n--- daemon:\n${daemon.stderr.join('')}`);
    if (process.env.NARFS_TEST_LOG) process.stderr.write(r.stdout);
    const lines = r.stdout.split("\n");
    const facts = (tag: string) => lines.filter((l) => l.startsWith(tag + ' ')).map((l) => l.slice(tag.length + 1));
    assert.match(facts('NIXVERSION')[0] ?? '', /2\.2[6-9]|2\.[3-9]\d/);

    // The expected closure, from the narinfos of the datalake.
    const narinfo = async (p: string) => parseNarInfo(await readFile(join(lake.dir, `${parseStorePath(p).hashPart}.narinfo`), 'utf8'));
    const expected = new Map<string, Awaited<ReturnType<typeof narinfo>>>();
    for (const queue = [fixtures.top]; queue.length > 0;) {
      const p = queue.pop()!;
      if (expected.has(p)) continue;
      const ni = await narinfo(p);
      expected.set(p, ni);
      queue.push(...ni.references.map(storePathFull));
    }
    assert.deepEqual(facts('CLOSURE').sort(), [...expected.keys()].sort());
    assert.deepEqual(facts('VERIFIED').sort(), [...expected.keys()].sort());
    for (const [p, ni] of expected) {
      const refs = facts('REFS').find((l) => l.startsWith(p + ' '))!.slice(p.length + 1).trim();
      assert.equal(refs, ni.references.map(storePathFull).sort().join(' '), `references of ${p}`);
      const deriver = facts('DERIVER').find((l) => l.startsWith(p + ' '))!.slice(p.length + 1).trim();
      assert.equal(deriver, ni.deriver ? storePathFull(ni.deriver) : 'unknown-deriver', `deriver of ${p}`);
      const referrers = facts('REFERRERS').find((l) => l.startsWith(p + ' '))!.slice(p.length + 1).trim().split(' ').filter(Boolean);
      const expectedReferrers = [...expected].filter(([, o]) => o.references.some((x) => storePathFull(x) === p)).map(([q]) => q).sort();
      assert.deepEqual(referrers, expectedReferrers, `referrers of ${p}`);
      const hash = parseStorePath(p).hashPart;
      assert.equal(facts('HASHPART').find((l) => l.startsWith(hash + ' ')), `${hash} ${p}`);
    }
    assert.deepEqual(facts('VERIFY-ALL'), ['ok']);
    // The database knows only what was registered; the socket knows the datalake.
    assert.deepEqual(facts('LATE'), kind === 'socket' ? [late] : ['invalid']);

    const built = facts('BUILT')[0] ?? '';
    assert.match(built, /-narfs-overlay-build .+/);
    const upper = facts('UPPER');
    for (const p of expected.keys()) assert.ok(!upper.includes(p.slice('/nix/store/'.length)), `${p} was copied into the upper layer`);
    assert.ok(upper.some((u) => u.endsWith('-narfs-overlay-build')), `the build output is in the upper layer: ${upper.join(', ')}`);
  });
});
