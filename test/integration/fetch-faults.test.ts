/**
 * A fault at every stage of a NAR fetch — connect, headers, before the pipeline, mid-body,
 * decompressor death, write error — must fail only the read that needed those bytes:
 * never an unhandled 'error' (which ends the daemon: every reader then gets ENOTCONN),
 * never a wrong byte, nothing left in the cache. After each fault the same store serves
 * another path, and the failed path too once the fault is gone.
 *
 * Regression: the daemon died when a datalake reset the connection while the fetch waited
 * for a decompressor slot (the stream had no listener yet); the fetch also held its socket
 * while waiting for that slot.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadFixtures, pathByRole, type Fixtures } from '../support/fixtures.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { FaultNarServer } from '../support/fault-nar-server.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { defaultDecompressorPool } from '../../src/compression/decompress.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import type { NarNode } from '../../src/nix/nar-listing.js';
import { isNarfsError } from '../../src/errors.js';

const execFileP = promisify(execFile);

interface Target { name: string; node: NarNode & { type: 'regular' }; sha256: string }

describe('integration: a fault at every stage of a NAR fetch', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let server: FaultNarServer;
  let root: string;
  let stack: StoreStack;
  let logs: LogLine[];
  const crashes: unknown[] = [];
  const onCrash = (e: unknown) => crashes.push(e);

  before(async () => {
    fixtures = await loadFixtures();
    server = await FaultNarServer.start(fixtures.datalakes['xz'].dir);
    process.on('uncaughtException', onCrash);
    process.on('unhandledRejection', onCrash);
  });
  after(async () => {
    process.off('uncaughtException', onCrash);
    process.off('unhandledRejection', onCrash);
    await server?.close();
  });

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-fetch-faults-'));
    logs = [];
    crashes.length = 0;
    stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir: join(root, 'cache'), negativeTtlMs: 1000,
    }, captureLogger(logs));
  });
  afterEach(async () => {
    await server.clear();
    defaultDecompressorPool.setLimit(4);
    await stack?.close();
    await execFileP('umount', ['-l', join(root, 'cache')]).catch(() => {});
    await rm(root, { recursive: true, force: true });
  });

  const signal = () => AbortSignal.timeout(120_000);

  /** A regular file of a store path, with the sha256 of its bytes in the real /nix/store. */
  async function target(role: 'large-file' | 'single-file' | 'single-exec'): Promise<Target> {
    const p = pathByRole(fixtures, role);
    const name = p.storePath.slice('/nix/store/'.length);
    let node = (await stack.store.resolve(name, signal()))!;
    let disk = p.storePath;
    if (role === 'large-file') {
      for (const part of fixtures.largeFile.relPath.split('/').filter(Boolean)) {
        assert.equal(node.type, 'directory');
        node = (node as { entries: Map<string, NarNode> }).entries.get(part)!;
      }
      disk = join(p.storePath, fixtures.largeFile.relPath);
    }
    assert.equal(node.type, 'regular');
    return { name, node: node as Target['node'], sha256: createHash('sha256').update(await readFile(disk)).digest('hex') };
  }

  async function readWhole(t: Target): Promise<string> {
    const bytes = await stack.store.read(t.name, t.node.narOffset, t.node.size, signal());
    return createHash('sha256').update(bytes).digest('hex');
  }

  /** The read fails with a coded error, the process lives, nothing partial is cached. */
  async function expectFailure(t: Target, codes: string[]): Promise<void> {
    await assert.rejects(readWhole(t), (e: unknown) => {
      assert.ok(isNarfsError(e), `uncoded: ${String(e)}`);
      assert.ok(codes.includes(e.code), `got ${e.code}: ${e.message}`);
      return true;
    });
    assert.deepEqual(crashes, [], 'no uncaught exception or unhandled rejection');
    assert.deepEqual(await readdir(join(root, 'cache', 'tmp')), [], 'no temp file left');
    await assertNothingCached(t);
  }

  /** No tree for the path, no blob of its file, no partial file. */
  async function assertNothingCached(t: Target): Promise<void> {
    const trees = await readdir(join(root, 'cache', 'trees'));
    assert.ok(!trees.includes(t.name), `no tree cached for ${t.name}: ${trees.join()}`);
    const blob = join(root, 'cache', 'blobs', t.sha256.slice(0, 2), t.sha256);
    assert.equal(await readFile(blob).then(() => 'there', () => 'absent'), 'absent', 'its file is not cached');
    assert.deepEqual(await readdir(join(root, 'cache', 'partial')), []);
  }

  /** Another path is served right, and so is the failed one once the fault is gone. */
  async function stillServing(failed: Target): Promise<void> {
    await server.clear();
    const other = await target('single-exec');
    assert.equal(await readWhole(other), other.sha256);
    assert.equal(await readWhole(failed), failed.sha256);
    assert.deepEqual(crashes, []);
  }

  it('connect: the datalake refuses connections', async () => {
    const t = await target('large-file');
    const other = await target('single-exec'); // resolved while the server still listens
    await server.fail('refuse');
    await expectFailure(t, ['ERR_DATALAKE_UNAVAILABLE']);
    await server.clear();
    assert.equal(await readWhole(other), other.sha256);
    await stillServing(t);
  });

  it('headers: the connection is reset before any header', async () => {
    const t = await target('large-file');
    await server.fail('reset-headers');
    await expectFailure(t, ['ERR_DATALAKE_UNAVAILABLE', 'ERR_DATALAKE_TRUNCATED']);
    await stillServing(t);
  });

  it('before the pipeline: a reset while the fetch waits for the only decompressor slot', async () => {
    const t = await target('large-file');
    defaultDecompressorPool.setLimit(1);
    const holdSlot = await defaultDecompressorPool.acquire();
    await server.fail('reset-after', 1024);
    const reading = readWhole(t).then(() => 'read', (e: unknown) => e);
    // While the slot is taken, the fetch must not hold a socket or a request open.
    await new Promise((r) => setImmediate(r));
    const waited = await Promise.race([once(server, 'request').then(() => 'requested'), new Promise((r) => setTimeout(() => r('idle'), 1500))]);
    assert.equal(waited, 'idle', 'no NAR request while the fetch waits for its decompressor');
    holdSlot();
    const outcome = await reading;
    assert.ok(isNarfsError(outcome) && ['ERR_DATALAKE_TRUNCATED', 'ERR_DATALAKE_UNAVAILABLE'].includes(outcome.code), String(outcome));
    assert.deepEqual(crashes, []);
    defaultDecompressorPool.setLimit(4);
    await stillServing(t);
  });

  it('mid-body: the connection is reset after part of the NAR', async () => {
    const t = await target('large-file');
    await server.fail('reset-after', 256 * 1024);
    await expectFailure(t, ['ERR_DATALAKE_TRUNCATED', 'ERR_DATALAKE_UNAVAILABLE']);
    assert.ok((server.narRequests.size) > 0);
    await stillServing(t);
  });

  it('decompressor death: the xz process is killed mid-stream', async () => {
    const t = await target('large-file');
    await server.fail('hold-after', 64 * 1024);
    const reading = readWhole(t).then(() => 'read', (e: unknown) => e);
    await once(server, 'sent');
    const pid = await waitForChild('xz');
    process.kill(pid, 'SIGKILL');
    const outcome = await reading;
    assert.ok(isNarfsError(outcome) && outcome.code === 'ERR_DECOMPRESS', String(outcome));
    assert.deepEqual(crashes, []);
    assert.deepEqual(await readdir(join(root, 'cache', 'tmp')), []);
    await stillServing(t);
  });

  it('write error: the cache disk fills up during the fetch (ERR_CACHE_FULL, not ERR_DECOMPRESS)', async () => {
    // Reopen the stack on a small tmpfs that holds the metadata but not the 40 MiB NAR.
    await stack.close();
    const cache = join(root, 'cache');
    await mkdir(cache, { recursive: true });
    await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', cache]);
    stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir: cache, negativeTtlMs: 1000,
    }, captureLogger(logs));
    const t = await target('large-file');
    await expectFailure(t, ['ERR_CACHE_FULL']);
    const fetchLogs = logs.filter((l) => l.msg.startsWith('NAR fetch failed'));
    assert.ok(fetchLogs.length > 0);
    for (const l of fetchLogs) assert.equal((l.fields.err as { code: string }).code, 'ERR_CACHE_FULL', 'logged as a full disk');
    assert.equal(fetchLogs.length, 1, 'a full disk is not retried as if the datalake were at fault');
    const other = await target('single-exec');
    assert.equal(await readWhole(other), other.sha256, 'a small path still fits and is served');
    assert.deepEqual(crashes, []);
  });

  it('a full disk never turns a verified narinfo into an error: it is served and the failure logged', async () => {
    await stack.close();
    const cache = join(root, 'cache');
    await mkdir(cache, { recursive: true });
    await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', cache]);
    stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir: cache, negativeTtlMs: 1000,
    }, captureLogger(logs));
    // Fill the disk to the last byte.
    await writeFile(join(cache, 'filler'), Buffer.alloc(8 << 20)).catch((e: NodeJS.ErrnoException) => assert.equal(e.code, 'ENOSPC'));
    const t = await target('single-file');
    assert.equal(t.node.type, 'regular', 'the lookup was answered');
    const full = logs.filter((l) => (l.fields.err as { code?: string } | undefined)?.code === 'ERR_CACHE_FULL');
    assert.ok(full.length > 0, `a cache write failure is logged as ERR_CACHE_FULL: ${JSON.stringify(logs.map((l) => l.msg))}`);
    // Its NAR cannot be stored: EIO-class, nothing partial; then space comes back.
    await expectFailure(t, ['ERR_CACHE_FULL']);
    await rm(join(cache, 'filler'));
    assert.equal(await readWhole(t), t.sha256);
    assert.deepEqual(crashes, []);
  });
});

/** The pid of a child process of this process named `comm`, waiting until it exists. */
async function waitForChild(comm: string): Promise<number> {
  for (let i = 0; i < 600; i++) {
    for (const tid of await readdir(`/proc/${process.pid}/task`)) {
      const kids = (await readFile(`/proc/${process.pid}/task/${tid}/children`, 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean);
      for (const k of kids) {
        const c = (await readFile(`/proc/${k}/comm`, 'utf8').catch(() => '')).trim();
        if (c === comm) return Number(k);
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${comm} child appeared`);
}
