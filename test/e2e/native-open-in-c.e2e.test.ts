/**
 * OPEN answered in C after the kernel forgot the inode (native engine, real mount, real
 * cache): once a file's blob is complete and verified in this process, the LOOKUP that
 * finds it again after `drop_caches` hands C the blob's location
 * (native/src/session_passthrough.cc openLocation), and its OPEN never reaches JS (engine
 * counters) and is passthrough as root. Such an open file keeps its blob through
 * eviction (the cache's guard asks C: evictContent), reads stay byte-exact, and the blob
 * can go once it is closed. Under a tiny descriptor limit (prlimit), C holds at most half
 * of it: at the cap it lets go of the content of files no longer open and keeps opening in
 * C, and every byte stays right.
 *
 * `drop_caches` is global (as in the bench); each test waits for the kernel's FORGET of the
 * file to reach JS (its inode number is gone) before opening it again, so that the open
 * counted is one of a node C knew nothing of.
 * Skipped when NARFS_FUSE_BACKEND selects fuse-native, or when not root.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
import { EVENT_TIMEOUT_MS, probe, withMount, type TestMount } from '../support/mount-harness.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';
import type { NativeStats } from '../../src/fuse/native-mount.js';
import type { NarfsStatus } from '../../src/daemon/status-operation.js';

const execFileP = promisify(execFile);
const LOOKUP = 1;
const OPEN = 14;
const READ = 15;

const dropCaches = () => execFileP('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
/** Drops the page cache only: the kernel keeps its inodes and dentries. */
const dropPageCache = () => execFileP('sh', ['-c', 'sync; echo 1 > /proc/sys/vm/drop_caches']);

/** Resolves once `done()` is true; polls every 50 ms and fails after EVENT_TIMEOUT_MS with `what`. */
async function until(done: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const end = Date.now() + EVENT_TIMEOUT_MS;
  while (!(await done())) {
    if (Date.now() > end) throw new Error(`not within ${EVENT_TIMEOUT_MS / 1000} s: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Drops the kernel's caches until JS has processed the FORGET of inode `ino`. */
async function forgotten(m: TestMount, ino: number): Promise<void> {
  const known = () => {
    try {
      m.running.fs.getattr(ino);
      return true;
    } catch {
      return false;
    }
  };
  await until(async () => {
    if (!known()) return true;
    await dropCaches();
    return !known();
  }, `the kernel forgets inode ${ino}`);
}

describe('e2e: native engine, OPEN answered in C from a location given with the entry', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;
  let root: string;

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native' || process.getuid?.() !== 0) this.skip();
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-open-in-c-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const largeRel = () => join(storePathBase(parseStorePath(fixtures.largeFile.storePath)), fixtures.largeFile.relPath);

  /**
   * Runs `body` on a `narfs mount` of the many-files path under a descriptor limit of
   * `limit` (prlimit), with the mounted path's dir, `narfs status`, and a reader hashing
   * the files named in a list as one stream (`xargs cat`). Stopped and unmounted afterwards,
   * also when the daemon died (out of descriptors) and left its mount behind.
   */
  const withLimitedMount = async (limit: number, body: (m: {
    dir: string; cacheDir: string; daemon: CliDaemon;
    status: () => Promise<NarfsStatus>; readAll: (list: string) => Promise<string>;
    /**
     * The first walk: lists the path's regular files (`find` tests `filter`) in a fixed
     * order, reads them all (a cold cache: every file is fetched) and checks there are
     * more than the descriptor limit.
     */
    firstWalk: (filter?: string) => Promise<{ list: string; firstRun: string; files: number }>;
  }) => Promise<void>): Promise<void> => {
    const lake = fixtures.datalakes['none']!;
    const many = pathByRole(fixtures, 'many-files');
    const mnt = join(root, 'nix', 'store');
    await mkdir(mnt, { recursive: true });
    const cacheDir = join(root, 'cache');
    const daemon = await startNarfsMount([mnt, '--datalake', lake.url, '--trusted-public-keys', fixtures.publicKey,
      '--cache-dir', cacheDir, '--log-format', 'json'], undefined, {
      wrap: (argv) => ['prlimit', [`--nofile=${limit}:${limit}`, '--', ...argv]],
    });
    try {
      const dir = join(mnt, basename(many.storePath));
      const readAll = async (list: string) => (await execFileP('sh', ['-c',
        'cd "$1" && xargs cat < "$2" | sha256sum', 'sh', dir, list], { timeout: 300_000 })).stdout;
      await body({
        dir, cacheDir, daemon,
        status: async () => {
          const { stdout } = await execFileP(process.execPath, [NARFS_BIN, 'status', '--cache-dir', cacheDir, '--json'], { timeout: 120_000 });
          return JSON.parse(stdout) as NarfsStatus;
        },
        readAll,
        firstWalk: async (filter = '') => {
          const list = join(root, 'files');
          await execFileP('sh', ['-c', `cd "$1" && find . -type f ${filter} | LC_ALL=C sort > "$2"`, 'sh', dir, list], { timeout: 300_000 });
          const firstRun = await readAll(list);
          const files = Number((await execFileP('sh', ['-c', 'wc -l < "$1"', 'sh', list])).stdout.trim());
          assert.ok(files > limit, `more files (${files}) than the descriptor limit`);
          return { list, firstRun, files };
        },
      });
    } finally {
      await daemon.stop();
      await forceUnmount(mnt, { abort: true }).catch(() => {});
    }
  };

  it('after a walk and drop_caches, re-opening a verified file sends no OPEN to JS and is passthrough', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const file = join(m.mnt, largeRel());
      const first = await probe('read', file); // fetched and written by this process: verified
      assert.equal(first.ok, true, JSON.stringify(first));
      await m.running.materialiser.flush(); // the blob is committed in the background
      const st = await probe('stat', file);
      await forgotten(m, st.ino!);
      const before = m.running.engine.stats()!;
      const again = await probe('read', file);
      const after = m.running.engine.stats()!;
      assert.equal(again.sha256, first.sha256);
      const d = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
      assert.ok(d(LOOKUP) >= 1, 'the kernel looked the file up again (it had forgotten it)');
      assert.equal(d(OPEN), 0, 'no OPEN reached JS');
      assert.equal(d(READ), 0, 'no READ reached JS');
      assert.equal(after.locationOpens - before.locationOpens, 1, 'C opened the location itself');
      if (after.passthroughEnabled) assert.equal(after.passthroughOpens, before.passthroughOpens + 1, 'a passthrough open');
      else assert.ok(after.bytesInC - before.bytesInC >= fixtures.largeFile.size);
    });
  });

  it('eviction (gc to 0 bytes) while such a file is open keeps it, reads stay byte-exact; it goes after close', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const file = join(m.mnt, largeRel());
      const first = await probe('read', file);
      assert.equal(first.ok, true, JSON.stringify(first));
      await m.running.materialiser.flush(); // the blob is committed in the background
      const blob = join(m.cacheDir, 'blobs', first.sha256!.slice(0, 2), first.sha256!);
      await stat(blob);
      await forgotten(m, (await probe('stat', file)).ino!);
      const before = m.running.engine.stats()!;
      // Opened from the libuv pool (this process serves the mount, so never synchronously).
      const fh = await open(file, 'r');
      let closed = false;
      try {
        const opened = m.running.engine.stats()!;
        assert.equal((opened.toJsByOpcode[OPEN] ?? 0) - (before.toJsByOpcode[OPEN] ?? 0), 0, 'the open was answered in C');
        assert.equal(opened.locationOpens - before.locationOpens, 1);
        const gc = await m.running.stack.blobs.evictTo(0);
        assert.ok(gc.evicted >= 0);
        await stat(blob); // still there
        const hash = createHash('sha256');
        const buf = Buffer.alloc(1 << 20);
        for (let pos = 0; ; ) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) break;
          hash.update(buf.subarray(0, bytesRead));
          pos += bytesRead;
        }
        assert.equal(hash.digest('hex'), first.sha256, 'byte-exact while the cache was trimmed to 0');
        await fh.close();
        closed = true;
        // RELEASE reaches the engine after close returns (the kernel sends it in the background).
        await until(async () => {
          await m.running.stack.blobs.evictTo(0);
          return stat(blob).then(() => false, () => true);
        }, 'the blob is evicted once the file is closed');
      } finally {
        if (!closed) await fh.close();
      }
      const after = await probe('read', file);
      assert.equal(after.sha256, first.sha256, 'fetched again, read right');
    });
  });

  it('a walk listed (READDIRPLUS) before its files were fetched opens them in C once they are local: the OPEN that reaches JS gives C the locations of the rest of its page', async () => {
    const lake = fixtures.datalakes['none']!;
    const many = pathByRole(fixtures, 'many-files');
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const dir = join(m.mnt, basename(many.storePath));
      const list = join(root, 'files');
      // Listed first: the kernel holds every file's inode, none of them local yet.
      await execFileP('sh', ['-c', 'find "$1" -type f -size +0 > "$2"', 'sh', dir, list], { timeout: 300_000 });
      const files = Number((await execFileP('sh', ['-c', 'wc -l < "$1"', 'sh', list])).stdout.trim());
      assert.ok(files >= 200, `${files} files`);
      // Then fetched whole without opening a file (as a bulk fetch brings a walk's files).
      await m.running.stack.store.prefetchPath(basename(many.storePath), AbortSignal.timeout(300_000));
      const before = m.running.engine.stats()!;
      // Opened by path in listing order, as `find | xargs cat` does: no LOOKUP (the
      // dentries are cached), so only the OPEN could tell C where the bytes are.
      const got = (await execFileP('sh', ['-c', 'xargs cat < "$1" | wc -c', 'sh', list], { timeout: 300_000 })).stdout.trim();
      const after = m.running.engine.stats()!;
      assert.ok(Number(got) > 0);
      const toJs = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
      // Before: every one of these OPENs reached JS (a READDIRPLUS entry carried no
      // location, and no LOOKUP came to carry one). Now: about one per listing page.
      assert.ok(toJs(OPEN) <= files / 4, `${toJs(OPEN)} OPENs of ${files} files reached JS (C opened ${after.locationOpens - before.locationOpens} from locations)`);
      assert.equal(toJs(READ), 0, 'no READ reached JS');
    });
  });

  it('under a tiny descriptor limit (prlimit), files completed while the kernel holds their inodes keep being served in C past the cap (JS pushes them again once C let go of idle ones)', async function () {
    const limit = 256;
    await withLimitedMount(limit, async ({ status, readAll, firstWalk }) => {
      const engine = async (): Promise<NativeStats> => (await status()).fuse.engine!;
      // The first walk fetches every file (cold cache): each is pushed to C once complete,
      // while the kernel keeps its inode (the dentries stay).
      const { list, firstRun, files } = await firstWalk('-size +0');
      // Page cache only: the inodes stay, so each OPEN is of a node C or JS already knows.
      await dropPageCache();
      const before = await engine();
      const secondRun = await readAll(list);
      const after = await engine();
      assert.equal(secondRun, firstRun, 'the same bytes');
      const toJs = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
      // Before: JS counted its pushes against the cap and never learnt of C's reclaims, so
      // every file past the first limit/2 (and every one C let go of) was read through JS.
      assert.ok(toJs(READ) <= 0.1 * files, `${toJs(READ)} READs of ${files} files reached JS (OPENs: ${toJs(OPEN)})`);
      assert.ok(after.heldFiles <= limit / 2, `C holds ${after.heldFiles} files (cap ${limit / 2})`);
    });
  });

  it('under a tiny descriptor limit (prlimit), a working set of blobs larger than the cap is reopened in C on every pass, not through JS', async function () {
    const limit = 256;
    await withLimitedMount(limit, async ({ dir, daemon: d, status, readAll, firstWalk }) => {
      const engine = async (): Promise<NativeStats> => (await status()).fuse.engine!;
      const { list, firstRun, files } = await firstWalk();
      // Split into one blob per file once the mount is idle: from then on each file is its own
      // descriptor, so C can hold only limit/2 of them. The kernel keeps every inode.
      await d.waitForOutput('stderr', new RegExp(`materialised.*${basename(dir)}`), 'the commit of the walked path');
      await dropPageCache();
      assert.equal(await readAll(list), firstRun, 'the same bytes');
      await dropPageCache();
      const before = await engine();
      const thirdRun = await readAll(list);
      const after = await engine();
      assert.equal(thirdRun, firstRun, 'the same bytes');
      const toJs = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
      // Before: at the cap C let go of idle files and forgot where they lay, so on every pass
      // each file past the cap went through a JS OPEN (and a push). Now C keeps the place
      // of what it lets go of and reopens it itself.
      assert.ok(after.contentReclaimed > before.contentReclaimed, 'idle content was let go at the cap');
      assert.ok(toJs(OPEN) <= 0.1 * files, `${toJs(OPEN)} OPENs of ${files} files reached JS (C reopened ${after.locationOpens - before.locationOpens})`);
      assert.equal(toJs(READ), 0, 'no READ reached JS');
      assert.ok(after.heldFiles <= limit / 2, `C holds ${after.heldFiles} files (cap ${limit / 2})`);
    });
  });

  it('under a tiny descriptor limit (prlimit) C holds at most half of it, lets go of idle files at the cap and keeps opening in C; every byte right', async function () {
    const limit = 256;
    await withLimitedMount(limit, async ({ dir, cacheDir, daemon: d, status, readAll, firstWalk }) => {
      const engine = async (): Promise<{ e: NativeStats; inodes: number }> => {
        const st = await status();
        return { e: st.fuse.engine!, inodes: st.fuse.inodes };
      };
      // Every regular file, in a fixed order, hashed as one stream (a child process), opened
      // by path as the bench's readers do: LOOKUPs, no directory listing on the second run.
      const { list, firstRun, files } = await firstWalk();
      // The files are split into blobs once the mount is idle: the second run opens blobs.
      await d.waitForOutput('stderr', new RegExp(`materialised.*${basename(dir)}`), 'the commit of the walked path');
      // Until the kernel has forgotten (nearly) every inode of the path.
      await until(async () => {
        await dropCaches();
        return (await engine()).inodes < 10;
      }, 'the kernel forgets the inodes of the walk');
      const before = (await engine()).e;
      const secondRun = await readAll(list);
      const { e: after } = await engine();
      assert.equal(secondRun, firstRun, 'the same bytes');
      // At the cap C lets go of the content of files no longer open (cat closed them), so
      // it keeps opening in C instead of sending every open past the cap to JS.
      const inC = after.locationOpens - before.locationOpens;
      assert.ok(after.contentReclaimed - before.contentReclaimed > 0, 'idle content was let go at the cap');
      assert.ok(inC >= 0.9 * files, `C opened ${inC} of ${files} files itself (fallbacks to JS: ${after.locationFallbacks - before.locationFallbacks})`);
      assert.ok(after.heldFiles <= limit / 2, `C holds ${after.heldFiles} files (cap ${limit / 2})`);
      // The daemon's own descriptors of cache blobs agree.
      const pid = d.child.pid!;
      let blobs = 0;
      for (const fd of await readdir(`/proc/${pid}/fd`)) {
        const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
        if (target.startsWith(join(cacheDir, 'blobs'))) blobs++;
      }
      assert.ok(blobs <= limit / 2, `${blobs} blob descriptors open in the daemon`);
    });
  });
});
