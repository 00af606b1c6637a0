/**
 * A real VM reads a narfs mount over virtiofs: narfs mounts the fixture datalake, QEMU's
 * virtiofsd (bookworm: /usr/lib/qemu/virtiofsd, the options of narfs-virtiofsd@.service:
 * cache=always, no xattr, no locks, sandbox=namespace) exports it from a read-only bind
 * mount, and QEMU (TCG: this machine's KVM cannot run a stock kernel, fuse-engine.md §7)
 * boots Debian's kernel with the tiny initramfs of scripts/build-vm-guest.sh. The guest
 * mounts the export on /nix/store, tars each store path it was given and sends the tar
 * over its second serial port; here every tree is unpacked and its NAR hash (nix-hash)
 * must equal the narinfo's NarHash. The narfs daemon must have fetched the paths (the
 * guest's reads went through it).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadFixtures, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { withMount } from '../support/mount-harness.js';
import { skipOrFail } from '../support/environment.js';

const execFileP = promisify(execFile);
const BUILD_GUEST = fileURLToPath(new URL('../../scripts/build-vm-guest.sh', import.meta.url));
const VIRTIOFSD = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd'].find((p) => existsSync(p));
/** Roles covering regular, executable and empty files, symlinks, nested and empty dirs, odd names (traps). */
const ROLES = ['single-file', 'single-exec', 'single-symlink', 'tree', 'self-ref', 'multi-output', 'traps'];
/** Bound of one guest run: boot (2-3 s under TCG when idle) and reads, on a loaded machine. */
const GUEST_MS = 240_000;

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(child.exitCode) : child.once('exit', (c) => r(c))));
}

describe('e2e: a QEMU guest reads narfs over virtiofs', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let guest: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    const qemu = await execFileP('sh', ['-c', 'command -v qemu-system-x86_64 && command -v unshare && command -v nix-hash']).then(() => true, () => false);
    if (!qemu || !VIRTIOFSD || process.getuid?.() !== 0) skipOrFail(this, 'qemu-system-x86_64 and virtiofsd (package qemu-system-x86), unshare, nix-hash and root');
    fixtures = await loadFixtures();
    const { stdout } = await execFileP('bash', [BUILD_GUEST], { timeout: 20 * 60_000, maxBuffer: 1 << 20 });
    guest = stdout.trim().split('\n').pop()!;
  });

  it('the guest reads store paths whose NAR hashes match their narinfos', async () => {
    const chosen = fixtures.paths.filter((p) => ROLES.includes(p.role));
    assert.equal(chosen.length, ROLES.length);
    const names = chosen.map((p) => basename(p.storePath));
    const dir = await mkdtemp(join(tmpdir(), 'narfs-vm-'));
    let virtiofsd: ChildProcess | undefined;
    let qemu: ChildProcess | undefined;
    // Before the mount goes: virtiofsd holds descriptors on it.
    const stopChildren = async () => {
      if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
        qemu.kill('SIGKILL');
        await exited(qemu);
      }
      if (virtiofsd && virtiofsd.exitCode === null && virtiofsd.signalCode === null) {
        virtiofsd.kill('SIGTERM');
        const t = setTimeout(() => virtiofsd!.kill('SIGKILL'), 10_000);
        await exited(virtiofsd);
        clearTimeout(t);
      }
    };
    try {
      await withMount({ datalakes: [fixtures.datalakes['xz'].url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        try {
          assert.equal(m.running.materialiser.fetches, 0);
          const ro = join(dir, 'export');
          const sock = join(dir, 'vfs.sock');
          await mkdir(ro);
          // virtiofsd in its own mount namespace, on a read-only bind of the mount (the C
          // virtiofsd has no --readonly; the Rust one gets it too).
          const vopts = VIRTIOFSD!.endsWith('libexec/virtiofsd')
            ? `--socket-path=${sock} --shared-dir=${ro} --readonly --cache=always --inode-file-handles=never --sandbox=namespace`
            : `--socket-path=${sock} -o source=${ro} -o cache=always -o sandbox=namespace -o no_posix_lock -o no_flock -o no_xattr`;
          let vlog = '';
          virtiofsd = spawn('unshare', ['-m', 'sh', '-c', `mount --bind ${m.mnt} ${ro} && mount -o remount,bind,ro ${ro} && exec ${VIRTIOFSD!} ${vopts}`],
            { stdio: ['ignore', 'pipe', 'pipe'] });
          virtiofsd.stdout!.on('data', (d: Buffer) => (vlog += d.toString()));
          virtiofsd.stderr!.on('data', (d: Buffer) => (vlog += d.toString()));
          const end = Date.now() + 60_000;
          while (!existsSync(sock)) {
            if (virtiofsd.exitCode !== null || Date.now() > end) assert.fail(`virtiofsd did not listen: ${vlog}`);
            await new Promise((r) => setTimeout(r, 50));
          }
          const out = join(dir, 'ttyS1');
          await writeFile(out, '');
          qemu = spawn('qemu-system-x86_64', [
            '-M', 'q35,memory-backend=mem', '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-m', '512M',
            '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-display', 'none', '-no-reboot',
            '-kernel', join(guest, 'vmlinux'), '-initrd', join(guest, 'initramfs.cpio.gz'),
            '-append', `console=ttyS0 quiet panic=-1 narfs.paths=${names.join(',')}`,
            '-serial', `file:${join(dir, 'console')}`, '-chardev', `file,id=out,path=${out}`, '-device', 'isa-serial,chardev=out',
            '-chardev', `socket,id=vfs,path=${sock}`, '-device', 'vhost-user-fs-pci,chardev=vfs,tag=nixstore',
          ], { stdio: 'ignore' });
          const timer = setTimeout(() => qemu!.kill('SIGKILL'), GUEST_MS);
          const code = await exited(qemu);
          clearTimeout(timer);
          const console_ = await readFile(join(dir, 'console'), 'utf8').catch(() => '');
          const text = (await readFile(out, 'latin1')).replace(/\r/g, '');
          assert.equal(code, 0, `qemu exited ${code}; guest console: ${console_.slice(-2000)}`);
          assert.match(text, /\nDONE\n?$|^DONE/m, `the guest finished; ttyS1: ${text.slice(0, 500)}; console: ${console_.slice(-2000)}`);
          assert.doesNotMatch(text, /MOUNT FAILED/);
          // Each tar back into a tree; its NAR hash against the narinfo's.
          for (const p of chosen) {
            const name = basename(p.storePath);
            const re = new RegExp(`BEGIN ${name}\\n([\\s\\S]*?)END ${name} rc=(\\d+)\\n`);
            const got = re.exec(text);
            assert.ok(got, `the guest sent ${name}`);
            assert.equal(got[2], '0', `tar of ${name} in the guest`);
            const x = join(dir, 'x', name.slice(0, 8));
            await mkdir(x, { recursive: true });
            await writeFile(join(dir, 't.tar'), Buffer.from(got[1]!.replace(/\s+/g, ''), 'base64'));
            await execFileP('tar', ['xf', join(dir, 't.tar'), '-C', x]);
            const { stdout } = await execFileP('nix-hash', ['--type', 'sha256', '--base32', join(x, name)]);
            assert.equal(`sha256:${stdout.trim()}`, p.narHash, `NarHash of ${name} as the guest read it`);
          }
          // Nothing else reads this fresh cache: the guest's reads went through narfs.
          assert.ok(m.running.materialiser.fetches > 0, 'narfs fetched the NARs the guest read');
        } finally {
          await stopChildren();
        }
      });
    } finally {
      await stopChildren();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
