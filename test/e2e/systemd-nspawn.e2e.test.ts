/**
 * narfs.service under a real systemd: a `systemd-nspawn` container with systemd as PID 1,
 * booted from this machine's own /usr (`--volatile=yes`: a tmpfs root, /usr read-only from
 * the host, so no image has to be built or downloaded; the checkout, its node_modules and
 * the fixture datalakes are bound in read-only at the same paths; /dev/fuse is bound in;
 * `--private-network`: nothing inside reaches the host's network).
 *
 * The units are the ones scripts/install-units.sh writes, with one test drop-in
 * (WatchdogSec=4s, so a stall is seen in seconds) and systemd-networkd-wait-online masked
 * (in a private network it would hold network-online.target for two minutes). Presets
 * disable everything (an empty /etc is a first boot, where presets enable every service).
 *
 * Checked: `systemctl start` returns (READY=1) only when the mount answers — right after
 * it, the mountpoint is a fuse.narfs mount and a store file reads back, and the engine's
 * /dev/fuse descriptors are in systemd's fd store; STATUS= is shown; watchdog pings
 * arrive; `systemctl restart` while a reader loops over files (dropping each file's page
 * cache, hashing it, `stat`ing it, and looking up new names in directories it looked up
 * before the restart) → the reader sees no error, the same mount (mount ID) and the same
 * inode numbers (nodeids of the old process), and a file it opened before the restart
 * reads back after it; a file a program keeps open and mmapped across the restart (opened
 * in FUSE passthrough, as every running program holds its store libraries) can still be
 * opened, read and exec'd, and its mapping reads the same bytes: the new process answers
 * with the backing id the earlier one gave (src/fuse/backing-journal.ts); kill -9 of the daemon under the same reader → systemd restarts it,
 * the reader (with its mapped file) sees no error either (its requests wait for the new process, which resumes
 * the connection and gets the unanswered ones resent); a stopped (SIGSTOP) daemon → the
 * watchdog restarts it; `systemctl stop` → exit 0, nothing mounted, the fd store empty.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadFixtures, pathByRole, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { skipOrFail } from '../support/environment.js';

const execFileP = promisify(execFile);
const CHECKOUT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const MOUNTPOINT = '/var/lib/narfs/lower/nix/store';
const CACHE_DIR = '/var/cache/narfs-nspawn-test';
/** Bound of a container boot, a unit start or a restart on a loaded 2-core machine. */
const STEP_MS = 180_000;

async function eventually<T>(what: string, f: () => Promise<T | undefined>, ms = STEP_MS): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) assert.fail(`${what}: not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('e2e: narfs.service under systemd (systemd-nspawn)', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let dir: string;
  let nspawn: ChildProcess | undefined;
  let console_ = '';
  let leader = 0;

  /** Runs a command inside the container (all its namespaces). */
  const inside = async (cmd: string[], timeoutMs = STEP_MS) =>
    execFileP('nsenter', ['-t', String(leader), '-a', ...cmd], { timeout: timeoutMs, maxBuffer: 16 << 20 });
  const show = async (): Promise<Record<string, string>> => {
    const { stdout } = await inside(['systemctl', 'show', 'narfs.service', '-p', 'ActiveState', '-p', 'SubState', '-p', 'MainPID',
      '-p', 'NRestarts', '-p', 'Result', '-p', 'StatusText', '-p', 'ExecMainStatus', '-p', 'WatchdogTimestampMonotonic',
      '-p', 'ActiveEnterTimestampMonotonic', '-p', 'NFileDescriptorStore']);
    return Object.fromEntries(stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  };
  /** The engine's counters (`narfs status --json`: fuse.engine, src/fuse/native-mount.ts NativeStats). */
  const engine = async (): Promise<Record<string, number | boolean>> => {
    const { stdout } = await inside([join(CHECKOUT, 'bin/narfs'), 'status', '--cache-dir', CACHE_DIR, '--json']);
    return (JSON.parse(stdout) as { fuse: { engine: Record<string, number | boolean> } }).fuse.engine;
  };
  /** The held file is open in passthrough mode before a restart (else there is nothing to keep). */
  const assertPassthroughInUse = async () => {
    const e = await engine();
    if (!e.passthroughOffered) return; // a kernel before 6.9: nothing to check
    assert.equal(e.passthroughEnabled, true, JSON.stringify(e));
    assert.ok(Number(e.passthroughOpens) > 0, JSON.stringify(e));
  };
  /** After a restart: the new process answers with the earlier process's id of the held file. */
  const assertIdsAdopted = async () => {
    const e = await engine();
    if (!e.passthroughOffered) return;
    assert.ok(Number(e.backingAdopted) >= 1, `the held file's backing id is adopted: ${JSON.stringify(e)}`);
  };
  const fstype = async () => (await inside(['findmnt', '-n', '-o', 'FSTYPE', MOUNTPOINT]).catch(() => ({ stdout: '' }))).stdout.trim();
  let file: { path: string; size: number };
  /** The mount ID of the mount at MOUNTPOINT in the container (a remount gets a new one). */
  const mountId = async () => (await readFile(`/proc/${leader}/mountinfo`, 'utf8')).split('\n')
    .map((l) => l.split(' ')).filter((f) => f[4] === MOUNTPOINT).map((f) => f[0]).join(',');

  /**
   * A reader inside the container, looping until told to stop: a fixed set of files (page
   * cache dropped per file with dd iflag=nocache, so each read reaches the daemon), hashed
   * and compared with the first round, `stat`ed and their inode numbers compared; per round
   * also a few names never looked up before, in a directory looked up in the first round;
   * a file opened in the first round is read at the end. Prints `round N`, `ERR …`, `done`.
   * Across the restart, `held` stays open and mapped by a program (a passthrough file:
   * opened once its bytes are local) and is opened and exec'd (printing `output`) again
   * every round. `cold`, when given, is opened before the restart and not read (its bytes
   * are not local: a cached-io file, and the kernel keeps its inode in that mode while it
   * is open); only after the restart (/run/narfs-reader-restarted) is it read, so its
   * bytes are first verified by the new process, and then opened again every round.
   * The old descriptors and the mapping are read at the end.
   */
  async function startReader(pick: (dirs: string[]) => { held: string; output: string; cold?: string }) {
    const many = basename(pathByRole(fixtures, 'many-files').storePath);
    const dirs = ['tree', 'traps', 'single-file'].map((r) => basename(pathByRole(fixtures, r as 'tree').storePath));
    // Names in directories of many-files the reader never lists: from the datalake's .ls
    // listing (on the host), so the first LOOKUP of each comes after the restart.
    type Listing = { type: string; entries?: Record<string, Listing> };
    const listing = JSON.parse(await readFile(join(fixtures.dir, 'datalakes/xz', `${many.slice(0, 32)}.ls`), 'utf8')) as { root: Listing };
    const later: string[] = [];
    for (const [d, sub] of Object.entries(listing.root.entries ?? {}).slice(1)) {
      for (const [n, e] of Object.entries(sub.entries ?? {})) if (e.type === 'regular' && /^[\w.-]+$/.test(n)) later.push(`${many}/${d}/${n}`);
    }
    const first = Object.keys(listing.root.entries ?? {})[0]!;
    const { held, output, cold = '' } = pick(dirs);
    // Maps the file, tells its hash, and at EOF of stdin hashes the mapping again.
    const holder = [
      'import hashlib, mmap, sys',
      'f = open(sys.argv[1], "rb")',
      'm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)',
      'print("mapped " + hashlib.sha256(m[:]).hexdigest(), flush=True)',
      'sys.stdin.read()',
      'print("unmapping " + hashlib.sha256(m[:]).hexdigest(), flush=True)',
    ].join('\n');
    const script = `
      set -u
      cd ${MOUNTPOINT} || { echo "ERR cd"; exit 1; }
      mapfile -t files < <(find ${dirs.join(' ')} -type f | head -60; find ${many}/${first} -type f | head -20)
      later=(${later.slice(0, 600).join(' ')})
      cold=${cold}
      [ -z "$cold" ] || exec 6< "$cold" || echo "ERR open of the cold file"
      declare -A ref ino
      for f in "\${files[@]}" ${held}; do
        ref[$f]=$(sha256sum < "$f") || echo "ERR first read $f"
        ino[$f]=$(stat -c %i "$f") || echo "ERR first stat $f"
      done
      exec 3< "\${files[0]}"
      # A program keeps ${held} open and mapped across the restart (as every running
      # program does with its store libraries); new opens and execs of it must still work.
      fifo=/run/narfs-holder-$$
      mkfifo "$fifo"
      exec 4> >(exec /usr/bin/python3 -c '${holder}' ${held} > "$fifo")
      exec 5< "$fifo"
      read -r word hash <&5 || echo "ERR holder did not start"
      [ "$word $hash  -" = "mapped \${ref[${held}]}" ] || echo "ERR holder mapped $word $hash"
      round=0
      next=0
      while [ ! -e /run/narfs-reader-stop ]; do
        round=$((round + 1))
        for f in "\${files[@]}"; do
          dd if="$f" iflag=nocache count=0 status=none 2>/dev/null
          h=$(sha256sum < "$f") || { echo "ERR read $f"; continue; }
          [ "$h" = "\${ref[$f]}" ] || echo "ERR hash $f"
          i=$(stat -c %i "$f") || { echo "ERR stat $f"; continue; }
          [ "$i" = "\${ino[$f]}" ] || echo "ERR ino $f $i \${ino[$f]}"
        done
        h=$(sha256sum < ${held}) || echo "ERR read of the mapped file"
        [ "$h" = "\${ref[${held}]}" ] || echo "ERR hash of the mapped file"
        o=$(./${held}) || echo "ERR exec of the mapped file"
        [ "$o" = "${output}" ] || echo "ERR output of the mapped file: $o"
        if [ -n "$cold" ] && [ -e /run/narfs-reader-restarted ]; then
          h=$(sha256sum < "$cold") || echo "ERR read of the cold file"
          [ -n "\${coldref:-}" ] || coldref=$h
          [ "$h" = "$coldref" ] || echo "ERR hash of the cold file"
        fi
        for k in 1 2 3; do
          g="\${later[$next]:-}"; next=$(( (next + 1) % \${#later[@]} ))
          [ -n "$g" ] && { stat "$g" > /dev/null || echo "ERR new stat $g"; }
        done
        echo "round $round"
      done
      h=$(sha256sum <&3) || echo "ERR read of the descriptor opened before"
      [ "$h" = "\${ref[\${files[0]}]}" ] || echo "ERR hash of the descriptor opened before"
      if [ -n "$cold" ]; then
        h=$(sha256sum <&6) || echo "ERR read of the cold descriptor"
        [ "$h" = "\${coldref:-none}" ] || echo "ERR hash of the cold descriptor"
      fi
      exec 4>&-
      read -r word hash <&5 || echo "ERR holder did not finish"
      [ "$word $hash  -" = "unmapping \${ref[${held}]}" ] || echo "ERR holder's mapping $word $hash"
      rm -f "$fifo"
      echo done
    `;
    const child = spawn('nsenter', ['-t', String(leader), '-a', 'bash', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const waiters: Array<() => void> = [];
    const onData = (d: Buffer) => { out += d.toString(); for (const w of waiters.splice(0)) w(); };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    const exited = new Promise<void>((r) => child.once('exit', () => { for (const w of waiters.splice(0)) w(); r(); }));
    const rounds = () => [...out.matchAll(/^round (\d+)$/gm)].length;
    /** Resolves once the reader completed `n` more rounds (event: its output). */
    const moreRounds = async (n: number, what: string) => {
      const target = rounds() + n;
      const end = Date.now() + STEP_MS;
      while (rounds() < target) {
        if (child.exitCode !== null) assert.fail(`the reader exited while waiting for ${what}: ${out}`);
        if (Date.now() > end) assert.fail(`${what}: the reader did not complete ${n} rounds within ${STEP_MS / 1000} s: ${out}`);
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 5000); });
      }
    };
    const stop = async () => {
      await inside(['touch', '/run/narfs-reader-stop']);
      await exited;
      await inside(['rm', '-f', '/run/narfs-reader-stop', '/run/narfs-reader-restarted']);
      return out;
    };
    return { moreRounds, stop, output: () => out };
  }

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    const tools = await Promise.all(['systemd-nspawn', 'nsenter', 'findmnt'].map((t) => execFileP('sh', ['-c', `command -v ${t}`]).then(() => true, () => false)));
    if (tools.includes(false) || process.getuid?.() !== 0) skipOrFail(this, 'systemd-nspawn (package systemd-container), nsenter, findmnt and root');
    fixtures = await loadFixtures();
    const single = fixtures.paths.find((p) => p.role === 'single-file')!;
    file = { path: `${MOUNTPOINT}/${basename(single.storePath)}`, size: 0 };
    dir = await mkdtemp(join(tmpdir(), 'narfs-nspawn-'));
    const root = join(dir, 'root');
    await execFileP('bash', [join(CHECKOUT, 'scripts/install-units.sh'), '--prefix', root, '--narfs', join(CHECKOUT, 'bin/narfs'),
      '--mountpoint', MOUNTPOINT, '--no-reload']);
    const units = join(root, 'etc/systemd/system');
    await writeFile(join(root, 'etc/narfs/narfs.conf'),
      `datalake = ${fixtures.datalakes['xz'].url}\ntrusted-public-keys = ${fixtures.publicKey}\ncache-dir = ${CACHE_DIR}\n`);
    await mkdir(join(units, 'narfs.service.d'));
    await writeFile(join(units, 'narfs.service.d/test.conf'), '[Service]\nWatchdogSec=4s\n');
    await symlink('/dev/null', join(units, 'systemd-networkd-wait-online.service'));
    await mkdir(join(dir, 'preset'));
    await writeFile(join(dir, 'preset/99-narfs-test.preset'), 'disable *\n');
    const nodeModules = await realpath(join(CHECKOUT, 'node_modules'));
    const binds = [`--bind-ro=${CHECKOUT}`, `--bind-ro=${fixtures.dir}`, `--bind=${units}:/etc/systemd/system`,
      `--bind-ro=${join(root, 'etc/narfs')}:/etc/narfs`, `--bind-ro=${join(dir, 'preset')}:/etc/systemd/system-preset`, '--bind=/dev/fuse'];
    if (!nodeModules.startsWith(`${CHECKOUT}/`)) binds.push(`--bind-ro=${nodeModules}`);
    nspawn = spawn('systemd-nspawn', ['-D', '/', '--volatile=yes', '-b', '--register=no', '--keep-unit', '--private-network',
      '--console=pipe', '-M', `narfs-test-${process.pid}`, ...binds], { stdio: ['ignore', 'pipe', 'pipe'] });
    nspawn.stdout!.on('data', (d: Buffer) => (console_ += d.toString()));
    nspawn.stderr!.on('data', (d: Buffer) => (console_ += d.toString()));
    const pid = nspawn.pid!;
    // The container's PID 1 is the nspawn process's child named systemd.
    leader = await eventually('the container\'s systemd', async () => {
      if (nspawn!.exitCode !== null) assert.fail(`systemd-nspawn exited ${nspawn!.exitCode}: ${console_}`);
      const kids = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
      for (const k of kids) if ((await readFile(`/proc/${k}/comm`, 'utf8').catch(() => '')).trim() === 'systemd') return Number(k);
      return undefined;
    });
    // Booted: "running" or "degraded" (a unit of the host's /usr may fail in a container).
    await eventually('the container to boot', async () => {
      const { stdout } = await inside(['systemctl', 'is-system-running']).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
      return ['running', 'degraded'].includes(stdout.trim()) ? true : undefined;
    });
  });

  after(async () => {
    if (nspawn && nspawn.exitCode === null) {
      const exited = new Promise<void>((r) => nspawn!.once('exit', () => r()));
      await inside(['systemctl', 'poweroff'], 30_000).catch(() => {});
      const t = setTimeout(() => nspawn!.kill('SIGKILL'), 60_000);
      await exited;
      clearTimeout(t);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('systemctl start returns only once the mount answers (READY=1 after the mount), with a STATUS line', async () => {
    assert.equal(await fstype(), '', 'nothing is mounted before the start');
    await inside(['systemctl', 'start', 'narfs.service']);
    // No wait here: READY must imply a working mount.
    assert.equal(await fstype(), 'fuse.narfs');
    const { stdout } = await inside(['cat', file.path]);
    assert.ok(stdout.length > 0);
    file.size = stdout.length;
    const s = await show();
    assert.equal(s.ActiveState, 'active');
    assert.match(s.StatusText!, /^serving \/var\/lib\/narfs\/lower\/nix\/store: 1\/1 datalakes up/);
    // The mount's /dev/fuse descriptor and its clones (one per reader thread).
    assert.equal(s.NFileDescriptorStore, '4');
  });

  it('systemctl restart keeps the mount: a reader looping over files sees no error, old nodeids stay valid', async () => {
    const before = await show();
    const id = await mountId();
    // Large: opening it fetches only its first chunk, the rest comes when it is read.
    const cold = `${basename(fixtures.largeFile.storePath)}/${fixtures.largeFile.relPath}`;
    // The held file must be a committed blob when the holder opens it, so that its open is
    // passthrough: a file read while its NAR's commit is under way is read from the NAR's
    // staging file, by pread. Fetch its path and wait for that commit to end.
    const tree = basename(pathByRole(fixtures, 'tree').storePath);
    await inside(['sh', '-c', `cat ${MOUNTPOINT}/${tree}/bin/hello > /dev/null`]);
    await eventually(`the commit of ${tree}`, async () => {
      const { stdout } = await inside(['journalctl', '-u', 'narfs.service', '--no-pager', '-o', 'cat']);
      return stdout.split('\n').some((l) => l.includes('materialised') && l.includes(tree)) ? true : undefined;
    });
    const reader = await startReader((dirs) => ({ held: `${dirs[0]}/bin/hello`, output: 'hello from narfs', cold }));
    await reader.moreRounds(1, 'a round before the restart');
    await assertPassthroughInUse();
    await inside(['systemctl', 'restart', 'narfs.service']);
    const after = await show();
    assert.equal(after.ActiveState, 'active');
    assert.notEqual(after.MainPID, before.MainPID);
    await inside(['touch', '/run/narfs-reader-restarted']);
    await reader.moreRounds(2, 'rounds after the restart');
    await assertIdsAdopted();
    const out = await reader.stop();
    assert.doesNotMatch(out, /ERR/, out);
    assert.match(out, /^done$/m);
    assert.equal(await mountId(), id, 'the mount was never replaced');
    const { stdout } = await inside(['journalctl', '-u', 'narfs.service', '--no-pager', '-o', 'cat', `_PID=${after.MainPID}`]);
    assert.match(stdout, /resumed the mount/);
    assert.equal((await show()).NFileDescriptorStore, '4');
  });

  it('sends watchdog pings', async () => {
    const first = Number((await show()).WatchdogTimestampMonotonic);
    await eventually('a newer WATCHDOG=1', async () => (Number((await show()).WatchdogTimestampMonotonic) > first ? true : undefined), 30_000);
  });

  it('kill -9 of the daemon: systemd restarts it, the mount stays, a reader sees no error', async () => {
    const before = await show();
    const id = await mountId();
    // A file the first process never saw: its backing id is given (and recorded) by the
    // process that is killed.
    const single = basename(pathByRole(fixtures, 'single-exec').storePath);
    const reader = await startReader(() => ({ held: single, output: 'narfs-fixture-single-exec' }));
    await reader.moreRounds(1, 'a round before the kill');
    await assertPassthroughInUse();
    await inside(['kill', '-9', before.MainPID!]);
    const after = await eventually('a restarted narfs', async () => {
      const s = await show();
      return s.ActiveState === 'active' && s.MainPID !== before.MainPID && Number(s.NRestarts) === Number(before.NRestarts) + 1 ? s : undefined;
    });
    assert.notEqual(after.MainPID, '0');
    await reader.moreRounds(2, 'rounds after the kill');
    await assertIdsAdopted();
    const out = await reader.stop();
    assert.doesNotMatch(out, /ERR/, out);
    assert.equal(await mountId(), id, 'the mount was never replaced');
    assert.equal(await fstype(), 'fuse.narfs');
    assert.equal((await inside(['cat', file.path])).stdout.length, file.size);
  });

  it('a stalled daemon (SIGSTOP) stops its pings: the watchdog restarts it', async () => {
    const before = await show();
    await inside(['kill', '-STOP', before.MainPID!]);
    const after = await eventually('a watchdog restart', async () => {
      const s = await show();
      return s.ActiveState === 'active' && s.MainPID !== before.MainPID && Number(s.NRestarts) > Number(before.NRestarts) ? s : undefined;
    });
    const { stdout } = await inside(['journalctl', '-u', 'narfs.service', '--no-pager', '-o', 'cat']);
    assert.match(stdout, /Failed with result 'watchdog'/);
    assert.notEqual(after.MainPID, before.MainPID);
    assert.equal((await inside(['cat', file.path])).stdout.length, file.size);
  });

  it('systemctl stop: the daemon unmounts and exits 0', async () => {
    await inside(['systemctl', 'stop', 'narfs.service']);
    const s = await show();
    assert.equal(s.ActiveState, 'inactive');
    assert.equal(s.Result, 'success');
    assert.equal(s.ExecMainStatus, '0');
    assert.equal(await fstype(), '');
    assert.equal(s.NFileDescriptorStore, '0');
  });
});
