/**
 * The native engine mounted through fusermount3: the daemon gets its /dev/fuse descriptor
 * from fusermount3 over SCM_RIGHTS, serves a store path to its user, and unmounts on
 * SIGTERM. Run as root, and as `nobody` (the unprivileged case). fusermount3 opens
 * /dev/fuse with the caller's rights; where the machine's /dev/fuse is 0600 (as in some
 * containers; Debian's udev makes it 0666) the nobody case runs in a private mount
 * namespace whose /dev/fuse is a 0666 node of the same device, so the host is not changed
 * and the case is never skipped. Probes run as the daemon's user, in its mount namespace:
 * without allow_other the kernel refuses every other uid, root included. The files are
 * whole local blobs: root's daemon passes them through (FUSE passthrough needs
 * CAP_SYS_ADMIN, which fusermount3 does not change), nobody's reads them by pread in C.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chown, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';

const execFileP = promisify(execFile);
const DAEMON = fileURLToPath(new URL('../support/native-user-mount.ts', import.meta.url));
const PROBE = fileURLToPath(new URL('../support/fs-probe.mjs', import.meta.url));
const NOBODY = 65534;
const NAME = '0123456789abcdfghijklmnpqrsvwxyz-user-1.0';
const AS_NOBODY = ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups'];

/** Runs `argv` as root, or as nobody through setpriv. */
function asUser(user: 'root' | 'nobody', argv: string[]): [string, string[]] {
  return user === 'root' ? [argv[0]!, argv.slice(1)] : ['setpriv', [...AS_NOBODY, '--', ...argv]];
}

/**
 * The daemon's command: as nobody with a private /dev/fuse of mode 0666 when the host's
 * does not let others open it (a namespace of its own: the bind mount dies with it).
 */
function daemonCommand(user: 'root' | 'nobody', argv: string[], privateFuse: boolean): [string, string[]] {
  const [cmd, args] = asUser(user, argv);
  if (!privateFuse) return [cmd, args];
  const script = 'set -e; d=$(mktemp -d); mknod -m 0666 "$d/fuse" c 10 229; mount --bind "$d/fuse" /dev/fuse; exec "$@"';
  return ['unshare', ['--mount', '--propagation', 'private', '--', 'bash', '-c', script, 'narfs-user-mount', cmd, ...args]];
}

/** A probe as `user`, inside the mount namespace of process `nsPid` (the daemon's). */
async function probeAs(user: 'root' | 'nobody', op: string, path: string, nsPid?: number): Promise<Record<string, unknown>> {
  let [cmd, args] = asUser(user, [process.execPath, PROBE, op, path]);
  if (nsPid !== undefined) [cmd, args] = ['nsenter', [`--mount=/proc/${nsPid}/ns/mnt`, '--', cmd, ...args]];
  const { stdout } = await execFileP(cmd, args, { timeout: 60_000 });
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** Whether nobody may open /dev/fuse (fusermount3 opens it with the caller's rights). */
async function othersMayOpenFuse(): Promise<boolean> {
  const st = await stat('/dev/fuse').catch(() => undefined);
  return st !== undefined && (st.mode & 0o006) === 0o006;
}

async function mountedAt(mnt: string, pid: number | 'self' = 'self'): Promise<string | undefined> {
  const info = await readFile(`/proc/${pid}/mountinfo`, 'utf8').catch(() => '');
  const line = info.split('\n').find((l) => l.split(' ')[4] === mnt);
  return line?.split(' - ')[1]?.split(' ')[0];
}

describe('e2e: native engine, unprivileged mount through fusermount3', function () {
  this.timeout(5 * 60_000);

  before(function () {
    if (process.getuid?.() !== 0) this.skip(); // the test switches users itself
  });

  for (const user of ['root', 'nobody'] as const) {
  it(`mounts as ${user}, serves a store path byte-exact, refuses writes, unmounts on SIGTERM`, async function () {
    const privateFuse = user === 'nobody' && !(await othersMayOpenFuse());
    const root = await mkdtemp(join(tmpdir(), 'narfs-user-'));
    const mnt = join(root, 'store');
    await mkdir(mnt);
    if (user === 'nobody') {
      await chown(root, NOBODY, NOBODY);
      await chown(mnt, NOBODY, NOBODY);
    }
    const [cmd, args] = daemonCommand(user, [process.execPath, '--import', 'tsx', DAEMON, mnt, NAME], privateFuse);
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'], cwd: fileURLToPath(new URL('../..', import.meta.url)), env: { ...process.env, HOME: root },
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const end = Date.now() + 120_000;
      while (!out.includes('mounted')) {
        if (child.exitCode !== null || Date.now() > end) assert.fail(`daemon did not mount: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const ns = privateFuse ? child.pid! : undefined;
      assert.equal(await mountedAt(mnt, ns ?? 'self'), 'fuse.narfs');
      const dir = join(mnt, NAME);
      assert.deepEqual((await probeAs(user, 'readdir', dir, ns)).names, ['bin', 'data.txt', 'link']);
      const data = await probeAs(user, 'read', join(dir, 'data.txt'), ns);
      assert.equal(data.bytes, 'unprivileged narfs\n'.length);
      assert.equal((await probeAs(user, 'readlink', join(dir, 'link'), ns)).target, 'data.txt');
      assert.equal(((await probeAs(user, 'stat', join(dir, 'bin', 'hello'), ns)).mode as number) & 0o777, 0o555);
      const w = await probeAs(user, 'write', join(dir, 'new'), ns);
      assert.equal(w.code, 'EROFS');
      if (user === 'nobody') {
        // Without allow_other the mount is its user's alone: root is refused too.
        const other = await probeAs('root', 'readdir', dir, ns);
        assert.equal(other.code, 'EACCES', JSON.stringify(other));
      }
      child.kill('SIGTERM');
      assert.equal(await exited, 0, err);
      assert.ok(out.includes('unmounted'));
      const stats = JSON.parse(/^stats (.*)$/m.exec(out)?.[1] ?? 'null') as Record<string, number | boolean> | null;
      assert.ok(stats, out);
      if (user === 'root') {
        assert.equal(stats.passthroughEnabled, true, JSON.stringify(stats));
        assert.ok((stats.passthroughOpens as number) >= 1, JSON.stringify(stats));
        assert.equal(stats.readsInC, 0, JSON.stringify(stats));
      } else {
        // No CAP_SYS_ADMIN: passthrough is not even asked for; C serves the bytes by pread.
        assert.equal(stats.passthroughEnabled, false, JSON.stringify(stats));
        assert.equal(stats.passthroughOpens, 0, JSON.stringify(stats));
        assert.equal(stats.passthroughFallbacks, 0, JSON.stringify(stats));
        assert.ok((stats.readsInC as number) >= 1, JSON.stringify(stats));
      }
      if (!privateFuse) assert.equal(await mountedAt(mnt), undefined);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      if (await mountedAt(mnt)) await forceUnmount(mnt, { abort: true });
      await rm(root, { recursive: true, force: true });
    }
  });
  }
});
