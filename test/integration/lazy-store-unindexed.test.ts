/**
 * First use of an unindexed store path (xz or zstd NAR, no signed index, no `.ls`) through the
 * store stack a mount uses, from a file:// datalake written by real Nix (`nix-store --add`
 * of a tree of 3,000 small distinct files, `nix copy --to file://…?compression=xz` and `zstd`).
 *
 * Covered (issue 10, "first use on an unindexed xz datalake"):
 * - a read is answered once the NarHash matched, before the per-file commits into the
 *   BlobStore are done (observed by the blob count at the time the read returned, not by
 *   the clock), every byte right (small files, a file above the copy threshold, an empty
 *   file, two files of the same contents), and the commits do complete afterwards, leaving
 *   nothing in tmp/;
 * - while the commit runs, the staging file counts in the cache's bound (stats().bytes
 *   covers staging file + blobs, and only the blobs once it is gone), the native engine is
 *   handed a complete blob or the file's place in the staging file, both holding the
 *   file's bytes, and told when the staging file is gone (watchDropped); reads of every
 *   file racing the commit's end all get right bytes;
 * - a close ends the commit after its batch under way, not after all of them: what was
 *   committed stays and the verified staging file is kept in pending/ (PendingNars); a
 *   cache reopened afterwards (with a staging directory a crash would have left in tmp/,
 *   which the open removes) reads every file right from the kept NAR, fetching nothing,
 *   and commits the rest; a kept NAR with one flipped byte is refused (NarHash checked
 *   again, logged with its code) and the NAR is fetched from the datalake instead, every
 *   byte right; a close given time for it (commitFinishMs) lets the commit under way
 *   finish: the reopened cache serves every file without a fetch;
 * - a NAR whose NarHash does not match (the narinfo names another hash), and a truncated
 *   one, serve nothing and leave nothing in the cache: no blob, no staging file, no bytes
 *   counted;
 * - the commit is background work: while another path's NAR is being fetched (held
 *   mid-body by a real HTTP server) it waits before its first batch and commits nothing,
 *   and once that NAR is in, it commits every file; while reads keep coming (one every
 *   10 ms against a pause of 5 s) it waits too, the reads get right bytes from the staging
 *   file, and once they stop it commits every file; so it does while a lookup is under way
 *   (holdForeground) and while a FUSE engine's count of requests served keeps moving
 *   (watchActivity), and commits once both stop.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once, setMaxListeners } from 'node:events';
import { closeSync, fstatSync, openSync, promises as fsp, readSync, writeSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { openStoreStack, type StoreStack, type StoreStackConfig } from '../../src/daemon/store-stack.js';
import { isNarfsError } from '../../src/errors.js';
import type { NarNode, NarRegular } from '../../src/nix/nar-listing.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { NIX_ENV } from '../support/nix-binary-cache.js';
import { FaultNarServer } from '../support/fault-nar-server.js';

const run = promisify(execFile);
const FILES = 3000;
const content = (i: number): string => `narfs unindexed file ${i}\n${'x'.repeat(i % 97)}\n`;
/** Larger than the Materialiser's COMMIT_COPY_BYTES (copied out of the staging file, not batched). */
const BIG = Buffer.alloc(9 * 1024 * 1024 + 13, 'narfs big file\n');
/** The bytes each extra file (besides the FILES numbered ones) holds: a big one, an empty one, a duplicate. */
const EXTRA: Record<string, Buffer> = { 'big.bin': BIG, 'empty': Buffer.alloc(0), 'same-as-f0007': Buffer.from(content(7)) };
const expected = (n: string): Buffer => EXTRA[n] ?? Buffer.from(content(Number(n.slice(1))));

describe('LazyStore: first use of an unindexed path (xz, zstd)', function () {
  this.timeout(300_000);
  let tmp: string;
  let lake: string;
  let zstdLake: string;
  let name: string;
  let addedPath: string;

  before(async () => {
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-unidx-'));
    const tree = path.join(tmp, 'src', 'narfs-unindexed-many');
    await fsp.mkdir(tree, { recursive: true });
    for (let i = 0; i < FILES; i++) await fsp.writeFile(path.join(tree, `f${String(i).padStart(4, '0')}`), content(i));
    for (const [n, b] of Object.entries(EXTRA)) await fsp.writeFile(path.join(tree, n), b);
    const { stdout } = await run('nix-store', ['--add', tree], { env: NIX_ENV });
    const storePath = stdout.trim();
    name = path.basename(storePath);
    addedPath = storePath;
    lake = path.join(tmp, 'lake');
    await run('nix', ['copy', '--to', `file://${lake}?compression=xz`, storePath], { env: NIX_ENV });
    zstdLake = path.join(tmp, 'lake-zstd');
    await run('nix', ['copy', '--to', `file://${zstdLake}?compression=zstd`, storePath], { env: NIX_ENV });
  });
  after(async () => {
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  });

  async function open(dir: string, reuse?: string, more: Partial<StoreStackConfig> = {}): Promise<{ stack: StoreStack; logs: LogLine[]; cacheDir: string }> {
    const cacheDir = reuse ?? await fsp.mkdtemp(path.join(tmp, 'cache-'));
    const logs: LogLine[] = [];
    const stack = await openStoreStack({
      datalakes: [`file://${dir}`], trustedPublicKeys: [], requireSigs: false, cacheDir, negativeTtlMs: 1000, ...more,
    }, captureLogger(logs));
    return { stack, logs, cacheDir };
  }

  /** After a failed fetch: no blob, no counted byte (the staging file's reservation released), no job directory. */
  async function assertNothingLeft(stack: StoreStack): Promise<void> {
    await stack.materialiser.flush();
    assert.equal(stack.blobs.stats().blobs, 0);
    assert.equal(stack.blobs.stats().bytes, 0, 'the staging file no longer counts');
    assert.deepEqual(await fsp.readdir(stack.blobs.tmpDir), []);
  }

  function filesOf(node: NarNode): Array<[string, NarRegular]> {
    assert.equal(node.type, 'directory');
    return [...node.entries].map(([n, f]) => {
      assert.equal(f.type, 'regular', n);
      return [n, f as NarRegular];
    });
  }

  for (const compression of ['xz', 'zstd'] as const) it(`${compression}: answers a read once the NarHash matched, before the files are committed; every byte right`, async () => {
    const { stack, logs } = await open(compression === 'xz' ? lake : zstdLake);
    const dropped: string[] = [];
    stack.store.watchDropped((_n, p) => dropped.push(p));
    try {
      const signal = AbortSignal.timeout(120_000);
      const root = await stack.store.resolve(name, signal);
      assert.ok(root);
      const files = filesOf(root);
      assert.equal(files.length, FILES + Object.keys(EXTRA).length);
      const [first, node] = files.find(([n]) => n === 'f1234')!;
      const bytes = await stack.store.read(name, node.narOffset, node.size, signal);
      const blobsAtRead = stack.blobs.stats().blobs;
      assert.ok(bytes.equals(expected(first)));
      assert.ok(blobsAtRead < FILES, `the read waited for all ${FILES} commits (${blobsAtRead} blobs held when it returned)`);
      // The staging file counts in the bound while it exists: staging file + blobs.
      const contentBytes = files.reduce((n, [, f]) => n + f.size, 0);
      const bytesAtRead = stack.blobs.stats().bytes;
      assert.ok(bytesAtRead >= contentBytes, `the cache counts ${bytesAtRead} bytes while a staging file of ${contentBytes} exists`);
      // The native engine is given a complete blob or, while the commit goes on, the file's
      // place in the staging file (read here synchronously, as the engine opens it at once:
      // nothing of the commit can run in between); both hold the file's bytes.
      const staged = new Set<string>();
      for (const [n, f] of files) {
        const loc = stack.store.contentFile(name, f.narOffset);
        if (!loc) continue;
        const fd = openSync(loc.path, 'r');
        try {
          assert.equal(fstatSync(fd).size, loc.size, n);
          const got = Buffer.alloc(f.size);
          assert.equal(readSync(fd, got, 0, f.size, loc.offset), f.size, n);
          assert.ok(got.equals(expected(n)), n);
        } finally {
          closeSync(fd);
        }
        if (path.dirname(path.dirname(loc.path)) !== path.join(stack.blobs.dir, 'blobs')) staged.add(loc.path);
      }
      assert.equal(staged.size, 1, 'files not committed yet are located in the one staging file');
      // The big file, read in part while its commit may still be under way.
      const big = files.find(([n]) => n === 'big.bin')![1];
      assert.ok((await stack.store.read(name, big.narOffset + 1000, 5000, signal)).equals(BIG.subarray(1000, 6000)));
      // Reads of every file racing the commit (staging file before, blob after): all right.
      setMaxListeners(files.length + 10, signal); // every read of the race listens to it
      const racing = await Promise.all(files.map(([, f]) => (f.size === 0 ? Buffer.alloc(0) : stack.store.read(name, f.narOffset, f.size, signal))));
      racing.forEach((got, i) => assert.ok(got.equals(expected(files[i]![0])), files[i]![0]));
      // The commits go on and complete; every file reads right, from wherever it is now.
      await stack.materialiser.committed(name);
      assert.deepEqual(dropped.filter((p) => staged.has(p)), [...staged], 'the engine is told when the staging file is gone');
      assert.equal(stack.blobs.stats().blobs, FILES + 1, 'every distinct non-empty file is a blob');
      assert.equal(stack.blobs.stats().bytes, contentBytes - expected('same-as-f0007').length, 'once the staging file is gone, only the blobs count');
      for (const [n, f] of files) {
        const got = f.size === 0 ? Buffer.alloc(0) : await stack.store.read(name, f.narOffset, f.size, signal);
        assert.ok(got.equals(expected(n)), n);
      }
      assert.deepEqual(await fsp.readdir(stack.blobs.tmpDir), []);
      assert.equal(stack.materialiser.fetches, 1);
      assert.deepEqual(logs.filter((l) => l.level === 'error'), []);
    } finally {
      await stack.close();
    }
  });

  /** A cache whose first use of the path was ended by a close while its commit was under way. */
  async function closedMidCommit(): Promise<{ cacheDir: string; files: Array<[string, NarRegular]>; onDisk: number; kept: string }> {
    const first = await open(lake);
    const signal = AbortSignal.timeout(120_000);
    let files: Array<[string, NarRegular]>;
    try {
      const root = await first.stack.store.resolve(name, signal);
      assert.ok(root);
      files = filesOf(root);
      const node = files.find(([n]) => n === 'f1234')![1];
      assert.ok((await first.stack.store.read(name, node.narOffset, node.size, signal)).equals(expected('f1234')));
    } finally {
      // At once: the commit of the path's files is under way.
      await first.stack.close();
    }
    const stopped = first.logs.find((l) => l.msg.startsWith('commit of a verified NAR stopped'));
    assert.ok(stopped, 'the commit was stopped, not waited for');
    assert.ok((stopped.fields['committedFiles'] as number) < files.length, `${String(stopped.fields['committedFiles'])} of ${files.length} files committed`);
    assert.equal(first.logs.some((l) => l.msg === 'materialised'), false, 'the tree of a path not wholly committed is not written');
    const onDisk = (await fsp.readdir(path.join(first.cacheDir, 'blobs'), { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).length;
    assert.ok(onDisk < FILES + 1, `all ${onDisk} blobs were committed before the stop returned`);
    assert.deepEqual(await fsp.readdir(path.join(first.cacheDir, 'tmp')), [], 'the staging file left tmp/');
    assert.ok(first.logs.some((l) => l.msg === 'kept a verified NAR for the next start'));
    const kept = await fsp.readdir(path.join(first.cacheDir, 'pending'));
    assert.equal(kept.length, 1);
    assert.match(kept[0]!, new RegExp(`^${name.slice(0, 32)}\\.[0-9a-f]{64}\\.\\d+\\.nar$`));
    assert.deepEqual(first.logs.filter((l) => l.level === 'error'), []);
    return { cacheDir: first.cacheDir, files, onDisk, kept: path.join(first.cacheDir, 'pending', kept[0]!) };
  }

  it('a close ends the commit after the batch under way and keeps the verified NAR; a reopened cache reads it back, fetching nothing, every file right', async () => {
    const { cacheDir, files, onDisk, kept } = await closedMidCommit();
    const keptSize = (await fsp.stat(kept)).size;
    // What a crash during a commit leaves in tmp/ goes when the cache opens again.
    const crashed = path.join(cacheDir, 'tmp', `${name}.1.0123456789ab`);
    await fsp.mkdir(crashed);
    await fsp.writeFile(path.join(crashed, 'nar'), Buffer.alloc(4096, 1));
    const second = await open(lake, cacheDir);
    const signal = AbortSignal.timeout(120_000);
    try {
      assert.deepEqual(await fsp.readdir(second.stack.blobs.tmpDir), []);
      assert.equal(second.stack.blobs.stats().blobs, onDisk, 'what was committed before the stop is held');
      assert.equal(second.stack.pending.size, 1);
      assert.ok(second.stack.blobs.stats().bytes >= keptSize, 'the kept NAR counts in the bound');
      for (const [n, f] of files) {
        const got = f.size === 0 ? Buffer.alloc(0) : await second.stack.store.read(name, f.narOffset, f.size, signal);
        assert.ok(got.equals(expected(n)), n);
      }
      await second.stack.materialiser.committed(name);
      assert.equal(second.stack.blobs.stats().blobs, FILES + 1);
      assert.equal(second.stack.materialiser.fetches, 0, 'nothing fetched from the datalake');
      assert.equal(second.stack.materialiser.resumed, 1, 'the kept NAR was read back');
      // Counted once throughout: once the job directory is gone only the blobs count (the duplicate is stored once).
      const unique = files.filter(([n]) => n !== 'same-as-f0007').reduce((sum, [, f]) => sum + f.size, 0);
      assert.equal(second.stack.blobs.stats().bytes, unique, 'no reservation left behind');
      assert.deepEqual(await fsp.readdir(path.join(cacheDir, 'pending')), [], 'the kept NAR is gone once read');
      assert.equal(second.stack.pending.size, 0);
      assert.deepEqual(second.logs.filter((l) => l.level === 'error' || l.level === 'warn'), []);
    } finally {
      await second.stack.close();
    }
  });

  it('a kept NAR with a flipped byte is refused (NarHash checked again) and fetched from the datalake instead, every file right', async () => {
    const { cacheDir, files, kept } = await closedMidCommit();
    const fd = openSync(kept, 'r+');
    try {
      const at = Math.floor(fstatSync(fd).size / 2);
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, at);
      b[0] = b[0]! ^ 0x10;
      writeSync(fd, b, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    const second = await open(lake, cacheDir);
    const signal = AbortSignal.timeout(120_000);
    try {
      for (const [n, f] of files) {
        const got = f.size === 0 ? Buffer.alloc(0) : await second.stack.store.read(name, f.narOffset, f.size, signal);
        assert.ok(got.equals(expected(n)), n);
      }
      await second.stack.materialiser.committed(name);
      assert.equal(second.stack.blobs.stats().blobs, FILES + 1);
      assert.equal(second.stack.materialiser.resumed, 0);
      assert.equal(second.stack.materialiser.fetches, 1, 'fetched from the datalake once');
      const refused = second.logs.find((l) => l.msg.startsWith('a NAR kept at the last stop did not verify'));
      assert.ok(refused, 'the refusal is logged');
      assert.equal((refused.fields['err'] as { code?: string }).code, 'ERR_NAR_HASH_MISMATCH');
      assert.deepEqual(await fsp.readdir(path.join(cacheDir, 'pending')), []);
      assert.deepEqual(second.logs.filter((l) => l.level === 'error'), []);
    } finally {
      await second.stack.close();
    }
  });

  it('a commit waits while another NAR is being fetched, and commits every file once it is in', async () => {
    // A second, small path in a datalake of its own with the first, served over HTTP.
    const other = path.join(tmp, 'src', 'narfs-unindexed-other');
    await fsp.mkdir(other, { recursive: true });
    await fsp.writeFile(path.join(other, 'data'), Buffer.alloc(200_000, 'narfs other path\n'));
    const otherPath = (await run('nix-store', ['--add', other], { env: NIX_ENV })).stdout.trim();
    const both = path.join(tmp, 'lake-both');
    await run('nix', ['copy', '--to', `file://${both}?compression=xz`, addedPath, otherPath], { env: NIX_ENV });
    const otherName = path.basename(otherPath);
    const otherNar = /^URL: (.*)$/m.exec(await fsp.readFile(path.join(both, `${otherName.slice(0, 32)}.narinfo`), 'utf8'))![1]!;
    const server = await FaultNarServer.start(both);
    const cacheDir = await fsp.mkdtemp(path.join(tmp, 'cache-'));
    // A cap far above this test's waits: the commit may go on only because the fetch ended.
    const stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: [], requireSigs: false, cacheDir, negativeTtlMs: 1000, commitYieldMaxMs: 600_000,
    }, captureLogger([]));
    try {
      const signal = AbortSignal.timeout(120_000);
      server.failPath(otherNar, 'hold-after', 64);
      const sent = once(server, 'sent');
      const otherRoot = stack.store.resolve(otherName, signal);
      await sent;
      const root = await stack.store.resolve(name, signal);
      assert.ok(root);
      const [first, node] = filesOf(root).find(([n]) => n === 'f0042')!;
      assert.ok((await stack.store.read(name, node.narOffset, node.size, signal)).equals(expected(first)));
      // The commit reaches its first batch and waits there: nothing committed meanwhile.
      while (stack.materialiser.yielding === 0) {
        signal.throwIfAborted();
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(stack.blobs.stats().blobs, 0, 'no file committed while the other NAR is fetched');
      server.release();
      assert.ok(await otherRoot);
      await stack.materialiser.flush();
      assert.equal(stack.materialiser.yielding, 0);
      // Every distinct content of both paths (the duplicate of f0007 and the empty file are one blob each at most).
      assert.ok(stack.blobs.stats().blobs >= FILES, `${stack.blobs.stats().blobs} blobs`);
      assert.deepEqual(await fsp.readdir(stack.blobs.tmpDir), []);
    } finally {
      await stack.close();
      await server.close();
    }
  });

  it('a commit waits while reads keep coming, and commits every file once they pause', async () => {
    const cacheDir = await fsp.mkdtemp(path.join(tmp, 'cache-'));
    // Reads every 10 ms against a pause of 5 s: the commit may go on only because they stopped.
    const stack = await openStoreStack({
      datalakes: [`file://${lake}`], trustedPublicKeys: [], requireSigs: false, cacheDir, negativeTtlMs: 1000,
      commitYieldMaxMs: 600_000, commitQuietMs: 5000,
    }, captureLogger([]));
    const reads: Array<Promise<boolean>> = [];
    let reader: NodeJS.Timeout | undefined;
    try {
      const signal = AbortSignal.timeout(120_000);
      const root = await stack.store.resolve(name, signal);
      assert.ok(root);
      const files = filesOf(root).filter(([, node]) => node.size > 0);
      let i = 0;
      // Each read comes before the one before it is answered; the first ones wait for the NAR.
      const readOne = () => {
        const [n, node] = files[i++ % files.length]!;
        reads.push(stack.store.read(name, node.narOffset, node.size, signal).then((b) => b.equals(expected(n))));
      };
      readOne();
      reader = setInterval(readOne, 10);
      while (stack.materialiser.yielding === 0) {
        signal.throwIfAborted();
        await new Promise((r) => setTimeout(r, 10));
      }
      // Some reads answered while the commit waits, and nothing committed meanwhile.
      while (reads.length < 20) await new Promise((r) => setTimeout(r, 10));
      assert.ok((await Promise.all(reads.slice(0, 20))).every(Boolean), 'right bytes from the staging file');
      assert.equal(stack.blobs.stats().blobs, 0, 'no file committed while reads keep coming');
      clearInterval(reader);
      reader = undefined;
      await stack.materialiser.flush();
      assert.equal(stack.materialiser.yielding, 0);
      assert.ok((await Promise.all(reads)).every(Boolean));
      assert.ok(stack.blobs.stats().blobs >= FILES, `${stack.blobs.stats().blobs} blobs`);
    } finally {
      clearInterval(reader);
      await Promise.allSettled(reads);
      await stack.close();
    }
  });

  it('a commit waits while a lookup is under way and while the engine serves requests, and commits every file once both stop', async () => {
    const cacheDir = await fsp.mkdtemp(path.join(tmp, 'cache-'));
    // A pause of 300 ms; the waits below are 1.5 s: the commit may go on only because the foreground stopped.
    const stack = await openStoreStack({
      datalakes: [`file://${lake}`], trustedPublicKeys: [], requireSigs: false, cacheDir, negativeTtlMs: 1000,
      commitYieldMaxMs: 600_000, commitQuietMs: 300,
    }, captureLogger([]));
    let served = 0;
    let engine: NodeJS.Timeout | undefined;
    try {
      const signal = AbortSignal.timeout(120_000);
      const root = await stack.store.resolve(name, signal);
      assert.ok(root);
      // A lookup of another path, held open (LazyStore.resolve holds the foreground while it waits).
      const lookup = stack.materialiser.holdForeground();
      const [n, node] = filesOf(root).find(([, f]) => f.size > 0)!;
      assert.ok((await stack.store.read(name, node.narOffset, node.size, signal)).equals(expected(n)));
      while (stack.materialiser.yielding === 0) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(stack.blobs.stats().blobs, 0, 'nothing committed while the lookup is under way');
      // The lookup ends; an engine keeps serving requests in C (a count that keeps moving).
      stack.materialiser.watchActivity(() => served);
      engine = setInterval(() => { served++; }, 10);
      lookup();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(stack.blobs.stats().blobs, 0, 'nothing committed while the engine serves requests');
      assert.equal(stack.materialiser.yielding, 1);
      clearInterval(engine);
      engine = undefined;
      await stack.materialiser.flush();
      assert.ok(stack.blobs.stats().blobs >= FILES, `${stack.blobs.stats().blobs} blobs`);
    } finally {
      clearInterval(engine);
      await stack.close();
    }
  });

  it('a close lets the commit under way finish (within commitFinishMs): a reopened cache serves every file without a fetch', async () => {
    // Reads every 10 ms against a pause of 5 s: the commit has not begun when the close comes.
    const first = await open(lake, undefined, { commitQuietMs: 5000, commitYieldMaxMs: 600_000, commitFinishMs: 60_000 });
    let files: Array<[string, NarRegular]> = [];
    let reader: NodeJS.Timeout | undefined;
    try {
      const signal = AbortSignal.timeout(120_000);
      const root = await first.stack.store.resolve(name, signal);
      assert.ok(root);
      files = filesOf(root).filter(([, f]) => f.size > 0);
      reader = setInterval(() => first.stack.materialiser.noteRead(), 10);
      const [n, node] = files[0]!;
      assert.ok((await first.stack.store.read(name, node.narOffset, node.size, signal)).equals(expected(n)));
      while (first.stack.materialiser.yielding === 0) await new Promise((r) => setTimeout(r, 10));
      assert.equal(first.stack.blobs.stats().blobs, 0, 'nothing committed before the close');
    } finally {
      clearInterval(reader);
      await first.stack.close();
    }
    assert.ok(first.logs.some((l) => l.msg === 'materialised'), 'the commit finished, tree and all');
    assert.equal(first.logs.some((l) => l.msg.startsWith('commit of a verified NAR stopped')), false);
    const again = await open(lake, first.cacheDir);
    try {
      const signal = AbortSignal.timeout(120_000);
      for (const [n, f] of files) assert.ok((await again.stack.store.read(name, f.narOffset, f.size, signal)).equals(expected(n)), n);
      assert.equal(again.stack.materialiser.fetches, 0, 'nothing fetched again');
    } finally {
      await again.stack.close();
    }
  });

  it('serves nothing of a truncated NAR, and leaves no staging file nor counted bytes', async () => {
    const cut = path.join(tmp, 'cut-lake');
    await fsp.cp(lake, cut, { recursive: true });
    const narFile = (await fsp.readdir(path.join(cut, 'nar'))).find((f) => f.endsWith('.nar.xz'))!;
    const full = await fsp.readFile(path.join(cut, 'nar', narFile));
    // Cut past the middle: the staging file already holds files when the stream ends early.
    await fsp.writeFile(path.join(cut, 'nar', narFile), full.subarray(0, Math.floor(full.length * 0.7)));
    const { stack } = await open(cut);
    try {
      const signal = AbortSignal.timeout(120_000);
      await assert.rejects(stack.store.resolve(name, signal), (err: unknown) => isNarfsError(err));
      await assertNothingLeft(stack);
    } finally {
      await stack.close();
    }
  });

  it('serves nothing of a NAR whose NarHash does not match, and caches nothing', async () => {
    const bad = path.join(tmp, 'bad-lake');
    await fsp.cp(lake, bad, { recursive: true });
    const niFile = path.join(bad, `${name.slice(0, 32)}.narinfo`);
    const text = await fsp.readFile(niFile, 'utf8');
    // Another valid nix32 SHA-256: the last character of the hash changed.
    const wrong = text.replace(/^NarHash: sha256:(.*)(.)$/m, (_m, head: string, last: string) => `NarHash: sha256:${head}${last === '0' ? '1' : '0'}`);
    assert.notEqual(wrong, text);
    await fsp.writeFile(niFile, wrong);
    const { stack } = await open(bad);
    try {
      const signal = AbortSignal.timeout(120_000);
      await assert.rejects(stack.store.resolve(name, signal), (err: unknown) => isNarfsError(err, 'ERR_NAR_HASH_MISMATCH'));
      await assert.rejects(stack.store.read(name, 0, 1, signal), (err: unknown) => isNarfsError(err));
      await assertNothingLeft(stack);
    } finally {
      await stack.close();
    }
  });
});
