/**
 * Real VMs on a narfs mount over virtiofs (issue 12 item 3). QEMU (TCG: this machine's KVM
 * cannot run a stock kernel, fuse-engine.md §7) boots Debian's kernel with the initramfs of
 * scripts/build-vm-guest.sh; virtiofsd (bookworm: QEMU's C one, /usr/lib/qemu/virtiofsd;
 * trixie: the Rust one) exports host directories read-only with the options of
 * systemd/narfs-virtiofsd@.service (test/support/qemu-guest.ts). The guest has no network.
 *
 * 1. Tar mode: the guest mounts the export of a narfs mount on /nix/store, tars seven store
 *    paths and sends each tar over its second serial port; here every tree is unpacked and
 *    its NAR hash (nix-hash) must equal the narinfo's NarHash.
 * 2. Local-overlay: the host mounts narfs with the lower database beside it (`--lower`,
 *    `narfs register` of the fixture closure), and exports the store mount, the database
 *    directory and the trixie chroot (scripts/build-trixie-chroot.sh, Nix 2.26). The guest
 *    boots into the chroot (overlay with a tmpfs), mounts the store and the database as a
 *    read-only lower store, puts OverlayFS on /nix/store and runs Nix 2.26 on
 *    `local-overlay://` (test/support/vm-local-overlay-guest.sh): path infos of the closure
 *    must equal the narinfos (NarHash, NarSize, references, deriver, signatures); `nix store
 *    verify` (contents and signatures) and `nix-store --verify --check-contents` pass;
 *    `nix-store --realise` of the valid root needs no download; an unregistered path is
 *    invalid, and valid once registered while the guest runs (a new database generation
 *    through the export); Nix's check-mount is on (a wrong upper layer is refused); a build reads a
 *    lower file and only it (output and .drv) lands in the upper layer.
 *
 * Either way the narfs daemon must have fetched NARs while the guest ran: the guest's reads
 * went through it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadFixtures, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { run, withMount } from '../support/mount-harness.js';
import { skipOrFail } from '../support/environment.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { QemuGuest, VIRTIOFSD, type GuestRun } from '../support/qemu-guest.js';
import { newcArchive } from '../support/newc-cpio.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';
import type { NarfsStatus } from '../../src/daemon/status-operation.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { hashEquals, parseHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathFull } from '../../src/nix/store-path.js';

const execFileP = promisify(execFile);
const REPO = fileURLToPath(new URL('../../', import.meta.url));
/** Roles covering regular, executable and empty files, symlinks, nested and empty dirs, odd names (traps). */
const ROLES = ['single-file', 'single-exec', 'single-symlink', 'tree', 'self-ref', 'multi-output', 'traps'];
/** Bound of the tar guest: boot (2-3 s under TCG when idle) and reads, on a loaded machine. */
const TAR_GUEST_MS = 240_000;
/**
 * Bound of the local-overlay guest: boot into the chroot over virtiofs, six Nix 2.26 runs
 * under TCG that read the whole closure (a 40 MiB file, 3000 small ones) twice. About a
 * minute when the machine is idle; generous for a loaded 2-core machine.
 */
const NIX_GUEST_MS = 12 * 60_000;

function explain(r: GuestRun): string {
  return `qemu exit ${r.code}${r.killed ? ' (killed)' : ''} after ${Math.round(r.ms / 1000)} s\n--- ttyS1:\n${r.out.slice(-4000)}\n--- console:\n${r.console.slice(-3000)}`;
}

describe('e2e: QEMU guests on narfs over virtiofs', function () {
  this.timeout(20 * 60_000);
  let fixtures: Fixtures;
  let guest: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    const tools = await execFileP('sh', ['-c', 'command -v qemu-system-x86_64 && command -v unshare && command -v nix-hash']).then(() => true, () => false);
    if (!tools || !VIRTIOFSD || process.getuid?.() !== 0) skipOrFail(this, 'qemu-system-x86_64 and virtiofsd (package qemu-system-x86), unshare, nix-hash and root');
    fixtures = await loadFixtures();
    const { stdout } = await execFileP('bash', [join(REPO, 'scripts/build-vm-guest.sh')], { timeout: 20 * 60_000, maxBuffer: 1 << 20 });
    guest = stdout.trim().split('\n').pop()!;
  });

  it('a guest reads store paths whose NAR hashes match their narinfos', async () => {
    const chosen = fixtures.paths.filter((p) => ROLES.includes(p.role));
    assert.equal(chosen.length, ROLES.length);
    const names = chosen.map((p) => basename(p.storePath));
    const dir = await mkdtemp(join(tmpdir(), 'narfs-vm-'));
    const vm = new QemuGuest(dir);
    try {
      await withMount({ datalakes: [fixtures.datalakes['xz'].url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        try {
          assert.equal(m.running.materialiser.fetches, 0);
          await vm.export('nixstore', m.mnt, 'always');
          const r = await vm.boot({ guest, append: `narfs.paths=${names.join(',')}`, deadlineMs: TAR_GUEST_MS });
          assert.equal(r.code, 0, explain(r));
          assert.match(r.out, /(^|\n)DONE\n?$/, explain(r));
          assert.doesNotMatch(r.out, /MOUNT FAILED/);
          // Each tar back into a tree; its NAR hash against the narinfo's.
          for (const p of chosen) {
            const name = basename(p.storePath);
            const got = new RegExp(`BEGIN ${name}\\n([\\s\\S]*?)END ${name} rc=(\\d+)\\n`).exec(r.out);
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
          await vm.stop(); // before the mount goes: virtiofsd holds descriptors on it
        }
      });
    } finally {
      await vm.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  describe('Nix 2.26 in the guest on a local-overlay store whose lower store is exported over virtiofs', () => {
    let chroot: string;
    let work: string | undefined;
    let daemon: CliDaemon | undefined;
    let vm: QemuGuest | undefined;

    before(async function () {
      this.timeout(20 * 60_000);
      const c = await run('bash', [join(REPO, 'scripts/build-trixie-chroot.sh')], {}, 15 * 60_000);
      if (c.code !== 0) skipOrFail(this, `the trixie chroot (${c.stderr.trim().split('\n').pop()})`);
      chroot = c.stdout.trim().split('\n').pop()!;
    });
    after(async () => {
      await vm?.stop();
      await daemon?.stop();
      if (work) {
        await forceUnmount(join(work, 'lower/nix/store'));
        await rm(work, { recursive: true, force: true });
      }
    });

    it('path infos match the narinfos, contents verify, realise downloads nothing, a build lands in the upper layer', async () => {
      work = await mkdtemp(join(tmpdir(), 'narfs-vm-overlay-'));
      const lower = join(work, 'lower');
      const mnt = join(lower, 'nix/store');
      const cache = join(work, 'cache');
      await mkdir(mnt, { recursive: true });
      const lake = fixtures.datalakes['zstd'];
      daemon = await startNarfsMount([mnt, '--datalake', lake.url, '--trusted-public-keys', fixtures.publicKey,
        '--cache-dir', cache, '--lower', lower]);
      const reg = await run(process.execPath, [NARFS_BIN, 'register', '--lower', lower, '--cache-dir', cache, fixtures.top]);
      assert.equal(reg.code, 0, reg.stderr);
      // NAR fetches of the daemon, through its control socket (`narfs status`): layout-free.
      const fetches = async () => {
        const st = await run(process.execPath, [NARFS_BIN, 'status', '--cache-dir', cache, '--json']);
        assert.equal(st.code, 0, st.stderr);
        return (JSON.parse(st.stdout) as NarfsStatus).narCache.fetches;
      };
      const fetchesBefore = await fetches();

      // Not in the closure of top (builder scripts): in the datalake, never registered.
      const unreg = fixtures.paths.find((p) => p.role === 'source')!.storePath;
      const env = [`TOP=${fixtures.top}`, `LARGE=${fixtures.largeFile.storePath}`, `UNREG=${unreg}`, `KEY='${fixtures.publicKey}'`].join('\n') + '\n';
      const script = await readFile(join(REPO, 'test/support/vm-local-overlay-guest.sh'));
      const initrdExtra = newcArchive([
        { name: 'narfs' }, { name: 'narfs/run', data: script, mode: 0o755 }, { name: 'narfs/env', data: env },
      ]);

      const dir = join(work, 'vm');
      await mkdir(dir);
      vm = new QemuGuest(dir);
      await vm.export('nixstore', mnt, 'always');
      // The database may get a new generation (a rename) while the guest runs: not cached for a day.
      await vm.export('nixdb', join(lower, 'nix/var/nix/db'), 'auto');
      await vm.export('root', chroot, 'always');
      // When the guest asks (after its other checks), UNREG is registered while it runs.
      let lateReg: Awaited<ReturnType<typeof run>> | undefined;
      const onLine = async (line: string) => {
        if (line !== `REGISTER ${unreg}`) return;
        lateReg = await run(process.execPath, [NARFS_BIN, 'register', '--lower', lower, '--cache-dir', cache, unreg]);
      };
      const r = await vm.boot({ guest, append: 'narfs.root=root', initrdExtra, memMiB: 1024, deadlineMs: NIX_GUEST_MS, onLine });
      await vm.stop();
      if (process.env.NARFS_TEST_LOG) process.stderr.write(`${explain(r)}\n`);
      assert.equal(r.code, 0, explain(r));
      assert.doesNotMatch(r.out, /GUEST FAILED/, explain(r));
      assert.match(r.out, /(^|\n)DONE rc=0\n?$/, explain(r));
      assert.deepEqual(r.lineErrors, []);
      assert.equal(lateReg?.code, 0, `narfs register while the guest ran: ${lateReg?.stderr}`);

      const lines = r.out.split('\n');
      const facts = (tag: string) => lines.filter((l) => l.startsWith(tag + ' ')).map((l) => l.slice(tag.length + 1));
      assert.match(facts('NIXVERSION')[0] ?? '', /\(Nix\) 2\.(2[6-9]|[3-9]\d)\./);

      // The expected closure, from the narinfos of the datalake.
      const narinfo = async (p: string) => parseNarInfo(await readFile(join(lake.dir, `${parseStorePath(p).hashPart}.narinfo`), 'utf8'));
      const expected = new Map<string, NarInfo>();
      for (const queue = [fixtures.top]; queue.length > 0;) {
        const p = queue.pop()!;
        if (expected.has(p)) continue;
        const ni = await narinfo(p);
        expected.set(p, ni);
        queue.push(...ni.references.map(storePathFull));
      }
      interface Info { narHash: string; narSize: number; references: string[]; deriver: string | null; signatures?: string[] }
      const infos = JSON.parse(facts('PATHINFO')[0] ?? '{}') as Record<string, Info>;
      assert.deepEqual(Object.keys(infos).sort(), [...expected.keys()].sort(), 'the closure Nix sees in the guest');
      for (const [p, ni] of expected) {
        const got = infos[p]!;
        assert.ok(hashEquals(parseHash(got.narHash), ni.narHash), `NarHash of ${p}: ${got.narHash}`);
        assert.equal(got.narSize, ni.narSize, `NarSize of ${p}`);
        assert.deepEqual([...got.references].sort(), ni.references.map(storePathFull).sort(), `references of ${p}`);
        assert.equal(got.deriver, ni.deriver ? storePathFull(ni.deriver) : null, `deriver of ${p}`);
        assert.deepEqual([...(got.signatures ?? [])].sort(), [...ni.sigs].sort(), `signatures of ${p}`);
      }
      assert.deepEqual(facts('STOREVERIFY'), ['ok'], 'nix store verify (contents and signatures) in the guest');
      assert.deepEqual(facts('VERIFYALL'), ['ok'], 'nix-store --verify --check-contents in the guest');
      assert.deepEqual(facts('REALISED'), [fixtures.top], 'nix-store --realise of the valid root, without network');
      assert.deepEqual(facts('UNREG'), ['invalid'], 'a path the database does not list is not valid');
      assert.deepEqual(facts('LATE'), ['valid'], 'a path registered while the guest ran is valid there (database export with cache=auto)');
      assert.deepEqual(facts('CHECKMOUNT'), ['refused mounted incorrectly'], 'Nix checked the guest\'s overlay mount against the store settings');

      const built = facts('BUILT')[0] ?? '';
      assert.match(built, /^\/nix\/store\/[a-z0-9]{32}-narfs-vm-build \S/, 'the build read a lower file');
      const readme = await run('sh', ['-c', `head -n1 "${join(mnt, basename(fixtures.largeFile.storePath), 'share/narfs/README')}"`]);
      assert.equal(built.slice(built.indexOf(' ') + 1), readme.stdout.trim(), 'the build output holds the line it read');
      // The upper layer holds what was built (the output and its .drv), nothing of the lower closure.
      const upper = facts('UPPER');
      assert.ok(upper.includes(basename(built.split(' ')[0]!)), `the build output is in the upper layer: ${upper.join(', ')}`);
      for (const u of upper) assert.match(u, /^[a-z0-9]{32}-narfs-vm-build(\.drv)?$/, `only the build is in the upper layer: ${upper.join(', ')}`);
      assert.equal(upper.length, 2, `the output and its .drv in the upper layer: ${upper.join(', ')}`);

      // The guest's reads (verify, build) went through this daemon: it fetched the NARs.
      // Verify read every file of the closure: each path's NAR was fetched, except a path
      // that is one symlink (its listing answers readlink without the NAR).
      const fetchesAfter = await fetches();
      const symlinkOnly = fixtures.paths.filter((p) => p.role === 'single-symlink' && expected.has(p.storePath)).length;
      assert.ok(fetchesAfter - fetchesBefore >= expected.size - symlinkOnly,
        `narfs fetched the closure for the guest (${fetchesBefore} -> ${fetchesAfter} NAR fetches, closure ${expected.size})`);
    });
  });
});
