/**
 * The native FUSE engine (native/ + src/fuse/native-mount.ts) under a real mount, for what
 * only it does: the kernel's FORGETs shrink the inode table, reads of complete cached files
 * are answered in C, and INTERRUPT frees a reader blocked on a slow datalake (the daemon
 * stays healthy). Skipped when NARFS_FUSE_BACKEND selects fuse-native.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { probe, withMount } from '../support/mount-harness.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';

const execFileP = promisify(execFile);

async function eventually(check: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail('condition not reached in time');
}

/** Drops the kernel's dentry/inode caches (2) or page cache (1), from a child process. */
async function dropCaches(what: 1 | 2 | 3): Promise<void> {
  await execFileP('sh', ['-c', `sync; echo ${what} > /proc/sys/vm/drop_caches`], { timeout: 120_000 });
}

/** Spawns `cmd`, waits until `ready()`, sends SIGINT; resolves with ms from SIGINT to exit. */
async function interruptAfter(cmd: string, args: string[], ready: () => boolean): Promise<{ ms: number; code: number | null; signal: string | null }> {
  const child = spawn(cmd, args, { stdio: 'ignore' });
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  try {
    await eventually(ready);
    const t0 = Date.now();
    child.kill('SIGINT');
    const how = await exited;
    return { ms: Date.now() - t0, ...how };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

describe('e2e: the native FUSE engine', function () {
  this.timeout(10 * 60_000);
  let fixtures: Fixtures;

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native') this.skip();
    fixtures = await loadFixtures();
  });

  it('after a walk, the kernel forgets (drop_caches) and the inode table shrinks back', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const idle = m.running.fs.inodeCount;
      const bases = fixtures.paths.map((p) => storePathBase(parseStorePath(p.storePath)));
      const dirs = bases.map((b) => join(m.mnt, b));
      const { stdout } = await execFileP('find', [...dirs, '-printf', '%s %m %y\n'], { maxBuffer: 64 << 20, timeout: 300_000 });
      const entries = stdout.trim().split('\n').length;
      const walked = m.running.fs.inodeCount;
      assert.ok(walked - idle >= entries * 0.9, `the walk holds inodes: idle ${idle}, after ${walked}, ${entries} entries`);
      const stats = m.running.engine.stats();
      assert.ok(stats, 'native engine stats');
      await dropCaches(2);
      // FORGETs arrive asynchronously after the kernel evicts its inodes.
      await eventually(() => m.running.fs.inodeCount <= idle + Math.ceil((walked - idle) * 0.05));
      assert.ok(m.running.engine.stats()!.nodes <= stats.nodes, 'the C node table shrank too');
      // And everything is still there, with fresh inodes.
      const again = await execFileP('find', [...dirs, '-printf', '%s %m %y\n'], { maxBuffer: 64 << 20, timeout: 300_000 });
      assert.equal(again.stdout, stdout);
    });
  });

  it('reads of a file whose verified NAR is cached are answered in C, byte-exact', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const sp = parseStorePath(fixtures.largeFile.storePath);
      const file = join(m.mnt, storePathBase(sp), fixtures.largeFile.relPath);
      const first = await probe('read', file);
      assert.equal(first.ok, true, JSON.stringify(first));
      assert.equal(first.bytes, fixtures.largeFile.size);
      // Its blob: committed in the background once the reads pause (until then the engine
      // reads the NAR's staging file).
      await m.running.materialiser.flush();
      await dropCaches(1);
      const before = m.running.engine.stats()!;
      const second = await probe('read', file);
      assert.equal(second.sha256, first.sha256);
      const after = m.running.engine.stats()!;
      // As root the kernel reads the cached file itself (passthrough): no READ reaches the
      // engine. Otherwise C answers the READs by pread. Either way, none reaches JS.
      if (after.passthroughEnabled) {
        assert.ok(after.passthroughOpens > before.passthroughOpens, `passthrough opens: ${before.passthroughOpens} → ${after.passthroughOpens}`);
      } else {
        assert.ok(after.readsInC > before.readsInC, `reads in C: ${before.readsInC} → ${after.readsInC}`);
        assert.ok(after.bytesInC - before.bytesInC >= fixtures.largeFile.size, `bytes in C: ${after.bytesInC - before.bytesInC}`);
      }
      const READ = 15; // FUSE_READ
      assert.equal(after.toJsByOpcode[READ], before.toJsByOpcode[READ], 'no READ reached JS');
    });
  });

  it('closing a file sends no FLUSH: every open says there is nothing to flush', async () => {
    const lake = fixtures.datalakes['none']!;
    await withMount({ datalakes: [lake.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
      const sp = parseStorePath(fixtures.largeFile.storePath);
      const file = join(m.mnt, storePathBase(sp), fixtures.largeFile.relPath);
      const OPEN = 14; // FUSE_OPEN
      const FLUSH = 25; // FUSE_FLUSH
      const seen = (st: { toJsByOpcode: Record<number, number>; inCByOpcode: Record<number, number> }, op: number) =>
        (st.toJsByOpcode[op] ?? 0) + (st.inCByOpcode[op] ?? 0);
      const before = m.running.engine.stats()!;
      // The first open is JS's (the file is fetched); once its blob is committed, C's.
      const first = await probe('read', file);
      assert.equal(first.ok, true, JSON.stringify(first));
      await m.running.materialiser.flush();
      for (let i = 0; i < 5; i++) {
        await dropCaches(3); // each probe opens the file anew, through a fresh inode
        assert.equal((await probe('read', file)).sha256, first.sha256);
      }
      const after = m.running.engine.stats()!;
      assert.ok(seen(after, OPEN) - seen(before, OPEN) >= 6, `opens: ${JSON.stringify({ before: before.inCByOpcode, after: after.inCByOpcode })}`);
      assert.equal(seen(after, FLUSH) - seen(before, FLUSH), 0, 'no FLUSH reached the engine');
    });
  });

  describe('INTERRUPT', () => {
    let server: HttpDatalakeServer;
    before(async () => {
      server = await HttpDatalakeServer.start({ root: fixtures.datalakes['none']!.dir });
    });
    after(async () => server?.close());
    afterEach(() => server.clear());

    // A deadline far longer than the test waits: only INTERRUPT can free the reader early.
    const OP_TIMEOUT_MS = 60_000;
    const FREED_WITHIN_MS = 15_000;

    it('a lookup blocked on a stalled narinfo ends on SIGINT; the daemon stays healthy', async () => {
      const sp = parseStorePath(fixtures.largeFile.storePath);
      const other = fixtures.paths.map((p) => parseStorePath(p.storePath)).find((p) => p.hashPart !== sp.hashPart)!;
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, opTimeoutMs: OP_TIMEOUT_MS }, async (m) => {
        server.stallHeaders(`${sp.hashPart}.narinfo`);
        const r = await interruptAfter('stat', [join(m.mnt, storePathBase(sp))], () => server.count(`${sp.hashPart}.narinfo`) > 0);
        assert.ok(r.ms < FREED_WITHIN_MS, `stat ended ${r.ms} ms after SIGINT (deadline ${OP_TIMEOUT_MS} ms)`);
        const ok = await probe('stat', join(m.mnt, storePathBase(other)));
        assert.equal(ok.ok, true, JSON.stringify(ok));
        assert.equal((await probe('readdir', m.mnt)).ok, true);
      });
    });

    it('a reader blocked on a stalled NAR ends on SIGINT; the daemon stays healthy', async () => {
      const sp = parseStorePath(fixtures.largeFile.storePath);
      const ni = parseNarInfo(await readFile(join(fixtures.datalakes['none']!.dir, `${sp.hashPart}.narinfo`), 'utf8'));
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, opTimeoutMs: OP_TIMEOUT_MS }, async (m) => {
        const file = join(m.mnt, storePathBase(sp), fixtures.largeFile.relPath);
        assert.equal((await probe('stat', file)).ok, true);
        server.stallBody(ni.url, 1000);
        const r = await interruptAfter('cat', [file], () => server.count(ni.url) > 0);
        assert.ok(r.ms < FREED_WITHIN_MS, `cat ended ${r.ms} ms after SIGINT (deadline ${OP_TIMEOUT_MS} ms)`);
        const other = fixtures.paths.map((p) => parseStorePath(p.storePath)).find((p) => p.hashPart !== sp.hashPart)!;
        assert.equal((await probe('stat', join(m.mnt, storePathBase(other)))).ok, true);
        assert.equal((await probe('readdir', m.mnt)).ok, true);
      });
    });
  });
});
