/**
 * The units of systemd/ as scripts/install-units.sh installs them pass
 * `systemd-analyze verify` with no message at all (a bad setting is only a warning there,
 * an ordering cycle is an error: both fail this test), and keep the properties the
 * deployment depends on: Type=notify, a watchdog, ordering before nix-daemon, the config
 * file, no mount-namespace hardening that would hide the mount, and a read-only virtiofsd
 * export with cache=always and no file handles.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { skipOrFail } from '../support/environment.js';

const execFileP = promisify(execFile);
const INSTALL = fileURLToPath(new URL('../../scripts/install-units.sh', import.meta.url));
const NARFS_BIN = fileURLToPath(new URL('../../bin/narfs', import.meta.url));

describe('systemd units (systemd-analyze verify)', function () {
  this.timeout(180_000);
  let root: string;
  let units: string;

  before(async function () {
    const ok = await execFileP('systemd-analyze', ['--version']).then(() => true, () => false);
    if (!ok) skipOrFail(this, 'systemd-analyze (package systemd)');
    root = await mkdtemp(join(tmpdir(), 'narfs-units-'));
    await execFileP('bash', [INSTALL, '--prefix', root, '--with-overlay', '--no-reload', '--narfs', NARFS_BIN]);
    units = join(root, 'etc/systemd/system');
  });
  after(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('every unit verifies without a message', async () => {
    const names = ['narfs.service', 'narfs-virtiofsd@vm1.service', 'narfs-virtiofsd-db@vm1.service', 'nix-store.mount'];
    const r = await execFileP('systemd-analyze', ['verify', '--man=no', ...names], { cwd: units, timeout: 120_000 })
      .then(({ stdout, stderr }) => ({ code: 0, out: stdout + stderr }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), '', 'systemd-analyze verify printed messages');
  });

  it('narfs.service: notify, watchdog, before nix-daemon, config file, no private mounts, fd store for restarts', async () => {
    const text = await readFile(join(units, 'narfs.service'), 'utf8');
    const settings = text.split('\n').filter((l) => !l.startsWith('#'));
    const has = (re: RegExp) => settings.some((l) => re.test(l));
    assert.ok(has(/^Type=notify$/));
    assert.ok(has(/^WatchdogSec=\d+/));
    assert.ok(has(/^Before=.*\bnix-daemon\.service\b/));
    assert.ok(has(new RegExp(`^ExecStart=${NARFS_BIN} mount \\S+ --config \\S+`)));
    // Restart without unmount: the fd store and a runtime directory kept across restarts;
    // no `umount -l` around the process (it would detach the mount a restart keeps).
    assert.ok(has(/^FileDescriptorStoreMax=[1-9]/));
    assert.ok(has(/^RuntimeDirectory=narfs$/) && has(/^RuntimeDirectoryPreserve=restart$/));
    assert.ok(!has(/umount/), 'no umount in ExecStartPre/ExecStopPost');
    for (const hidden of ['ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateMounts', 'PrivateDevices', 'ReadOnlyPaths', 'InaccessiblePaths', 'ReadWritePaths', 'TemporaryFileSystem']) {
      assert.ok(!has(new RegExp(`^${hidden}=`)), `${hidden}= would hide the mount`);
    }
  });

  it('narfs-virtiofsd@.service: after narfs, read-only, cache=always, no file handles, no xattr', async () => {
    const text = await readFile(join(units, 'narfs-virtiofsd@.service'), 'utf8');
    assert.match(text, /^After=narfs\.service$/m);
    // A restart of narfs keeps the mount: it must not restart the export (the guest would
    // have to mount again); a stop does stop it.
    assert.doesNotMatch(text, /^(Requires|PartOf|BindsTo)=narfs\.service$/m);
    assert.match(text, /^StopPropagatedFrom=narfs\.service$/m);
    assert.match(text, /^BindReadOnlyPaths=\/var\/lib\/narfs\/lower\/nix\/store:/m);
    assert.match(text, /--readonly --cache=always/);
    assert.match(text, /--inode-file-handles=never/);
    assert.match(text, /-o cache=always/);
    assert.match(text, /-o no_xattr/);
  });
});
