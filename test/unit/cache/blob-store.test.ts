/**
 * BlobStore on a real temp directory and a real SQLite file: whole files and chunks in,
 * content addressing and dedupe, the size bound with LRU order and pins (and bytes reserved
 * for a file outside the store, a NAR's staging file), reconciliation
 * after an unclean stop, and scrub finding a flipped bit; a pin of a blob of an earlier
 * process re-hashes it at once (one hash however many ask; the engine's hasher off the JS
 * thread finds a flipped bit too); the open asks for blobs/ to be marked a top directory.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { isNarfsError } from '../../../src/errors.js';
import { BlobStore, type BlobStoreOptions } from '../../../src/cache/blob-store.js';
import { nativeFileHasher, nativeTopDirMarker } from '../../../src/fuse/native-mount.js';
import type { Logger } from '../../../src/log.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const sha = (b: Buffer) => createHash('sha256').update(b).digest();

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

function recordingLogger(): Logger & { lines: Array<{ level: string; msg: string }> } {
  const lines: Array<{ level: string; msg: string }> = [];
  const rec = (level: string) => (msg: string) => { lines.push({ level, msg }); };
  return { lines, debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') };
}

describe('BlobStore', () => {
  let dir: string;
  const opened: BlobStore[] = [];

  async function openStore(options: BlobStoreOptions = {}): Promise<BlobStore> {
    const s = await BlobStore.open(dir, options);
    opened.push(s);
    return s;
  }

  /** A verified whole file, as the NAR unpacker leaves it in tmp/. */
  async function putWhole(store: BlobStore, bytes: Buffer): Promise<Buffer> {
    const t = store.tempPath();
    await writeFile(t, bytes, { flush: true });
    await store.commitFiles([{ sha: sha(bytes), size: bytes.length, tempPath: t }]);
    return sha(bytes);
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'narfs-blobs-'));
  });

  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });

  it('asks the filesystem to spread the subdirectories of blobs/ (ext4: chattr +T), and works where it cannot', async () => {
    const marker = nativeTopDirMarker();
    assert.ok(marker, 'the native engine is built');
    const answers: Array<{ dir: string; errno: number }> = [];
    const log = recordingLogger();
    const store = await openStore({ logger: log, markTopDir: (d) => { const errno = marker(d); answers.push({ dir: d, errno }); return errno; } });
    assert.deepEqual(answers.map((a) => a.dir), [join(dir, 'blobs')]);
    const { errno } = answers[0]!;
    if (errno === 0) {
      const attrs = spawnSync('lsattr', ['-d', join(dir, 'blobs')], { encoding: 'utf8' });
      assert.equal(attrs.status, 0, attrs.stderr);
      assert.match(attrs.stdout.split(/\s+/)[0]!, /T/, `the top-directory attribute is set: ${attrs.stdout}`);
      assert.equal(marker(join(dir, 'blobs')), 0, 'already set: still 0');
    } else {
      // ENOTTY or EOPNOTSUPP: the filesystem has no such attribute.
      assert.ok([25, 95].includes(errno), `errno ${errno}`);
      assert.ok(log.lines.some((l) => l.level === 'debug' && /top-directory/.test(l.msg)));
    }
    assert.equal(marker(join(dir, 'no-such-dir')), 2, 'ENOENT for a missing directory');
    // A refusal is only a hint lost: the store opens and stores the same.
    const refused = recordingLogger();
    await store.close();
    const again = await openStore({ logger: refused, markTopDir: () => 95 });
    const bytes = randomBytes(5000);
    await putWhole(again, bytes);
    assert.deepEqual(await readFile(again.blobPath(sha(bytes))), bytes);
    assert.ok(refused.lines.some((l) => l.level === 'debug' && /top-directory/.test(l.msg)));
  });

  it('commits a whole file under blobs/<aa>/<sha256>, read-only, and reads ranges of it', async () => {
    const store = await openStore();
    const bytes = randomBytes(10_000);
    const h = await putWhole(store, bytes);
    const hex = h.toString('hex');
    const path = join(dir, 'blobs', hex.slice(0, 2), hex);
    assert.equal(store.completePath(h, bytes.length), path);
    assert.equal(store.completePath(h, bytes.length + 1), undefined, 'size is part of the key');
    assert.equal((await stat(path)).mode & 0o777, 0o444);
    assert.deepEqual(await readFile(path), bytes);
    assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'the temp file was renamed');
    assert.deepEqual(await store.readRange(h, bytes.length, 1234, 5000), bytes.subarray(1234, 6234));
    assert.equal(store.isVerified(h), true, 'written by this process');
    assert.equal(store.verifiedPath(h, bytes.length), path);
    assert.equal(store.verifiedPath(h, bytes.length + 1), undefined, 'size is part of the key');
    assert.deepEqual(store.haveChunks(h, bytes.length, 4096, 0, 2), [true, true, true]);
    const st = store.stats();
    assert.equal(st.bytes, 10_000);
    assert.equal(st.blobs, 1);
  });

  it('stores identical contents once and counts the dedupe hit', async () => {
    const store = await openStore();
    const bytes = randomBytes(3000);
    const t1 = store.tempPath();
    const t2 = store.tempPath();
    const t3 = store.tempPath();
    for (const t of [t1, t2, t3]) await writeFile(t, bytes);
    const r = await store.commitFiles([{ sha: sha(bytes), size: 3000, tempPath: t1 }, { sha: sha(bytes), size: 3000, tempPath: t2 }]);
    assert.deepEqual(r, { added: 1, deduped: 1, dedupedBytes: 3000 });
    assert.equal(await store.putFileFromTemp(sha(bytes), 3000, t3), false);
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    const st = store.stats();
    assert.equal(st.blobs, 1);
    assert.equal(st.bytes, 3000);
    assert.equal(st.dedupeHits, 2);
    assert.equal(st.dedupeBytes, 6000);
  });

  it('fills a partial file chunk by chunk, serves its chunks, and makes it a blob when complete', async () => {
    const store = await openStore();
    const cs = 4096;
    const bytes = randomBytes(cs * 2 + 100);
    const h = sha(bytes);
    const chunk = (i: number) => bytes.subarray(i * cs, Math.min(bytes.length, (i + 1) * cs));
    assert.deepEqual(store.haveChunks(h, bytes.length, cs, 0, 2), [false, false, false]);
    assert.equal(await store.putChunk(h, bytes.length, cs, 2, chunk(2)), true);
    assert.deepEqual(store.haveChunks(h, bytes.length, cs, 0, 2), [false, false, true]);
    assert.deepEqual(await store.readRange(h, bytes.length, 2 * cs, 100), chunk(2));
    assert.equal(store.completePath(h, bytes.length), undefined);
    assert.ok(await exists(join(dir, 'partial', h.toString('hex'))));
    assert.equal(store.stats().bytes, 100, 'only the bytes held count');
    await assert.rejects(store.putChunk(h, bytes.length, cs, 1, chunk(1).subarray(1)), isCode('ERR_INVALID_ARGUMENT'));
    await store.putChunk(h, bytes.length, cs, 0, chunk(0));
    assert.equal(await store.putChunk(h, bytes.length, cs, 0, chunk(0)), true, 'a chunk held twice is fine');
    assert.equal(store.stats().bytes, cs + 100);
    await store.putChunk(h, bytes.length, cs, 1, chunk(1));
    assert.ok(store.completePath(h, bytes.length), 'complete');
    assert.deepEqual(await readdir(join(dir, 'partial')), []);
    assert.deepEqual(await readFile(store.completePath(h, bytes.length)!), bytes);
    const st = store.stats();
    assert.deepEqual([st.bytes, st.blobs, st.partials], [bytes.length, 1, 0]);
  });

  it('answers which chunks of a partial file are held through its drop, a new chunk size and its replacement, as after a reopen', async () => {
    let store = await openStore();
    const bytes = randomBytes(3 * 4096 + 10);
    const h = sha(bytes);
    const chunk = (cs: number, i: number) => bytes.subarray(i * cs, Math.min(bytes.length, (i + 1) * cs));
    assert.equal(await store.putChunk(h, bytes.length, 4096, 3, chunk(4096, 3)), true);
    assert.equal(await store.putChunk(h, bytes.length, 4096, 1, chunk(4096, 1)), true);
    assert.deepEqual(store.haveChunks(h, bytes.length, 4096, 0, 3), [false, true, false, true]);
    assert.deepEqual(store.haveChunks(h, bytes.length, 4096, 1, 2), [true, false]);
    assert.deepEqual(store.haveChunks(h, bytes.length, 8192, 0, 1), [false, false], 'another chunk size');
    assert.deepEqual(store.haveChunks(h, bytes.length + 1, 4096, 0, 1), [false, false], 'another size');
    await store.drop(h);
    assert.deepEqual(store.haveChunks(h, bytes.length, 4096, 0, 3), [false, false, false, false], 'dropped');
    assert.equal(await store.putChunk(h, bytes.length, 4096, 0, chunk(4096, 0)), true);
    // Another chunk size replaces the partial file of the first.
    assert.equal(await store.putChunk(h, bytes.length, 8192, 1, chunk(8192, 1)), true);
    assert.deepEqual(store.haveChunks(h, bytes.length, 4096, 0, 0), [false]);
    assert.deepEqual(store.haveChunks(h, bytes.length, 8192, 0, 1), [false, true]);
    // As SQLite answers it for a partial file of an earlier process.
    await store.close();
    store = await openStore();
    assert.deepEqual(store.haveChunks(h, bytes.length, 8192, 0, 1), [false, true], 'after a reopen');
    assert.equal(await store.putChunk(h, bytes.length, 8192, 0, chunk(8192, 0)), true);
    assert.deepEqual(store.haveChunks(h, bytes.length, 8192, 0, 1), [true, true], 'complete');
    // A partial file replaced by the whole file (commitFiles).
    const other = randomBytes(2 * 4096);
    await store.putChunk(sha(other), other.length, 4096, 0, other.subarray(0, 4096));
    await putWhole(store, other);
    assert.deepEqual(store.haveChunks(sha(other), other.length, 4096, 0, 1), [true, true]);
    await store.drop(sha(other));
    assert.deepEqual(store.haveChunks(sha(other), other.length, 4096, 0, 1), [false, false]);
  });

  it('drops chunks that put together do not hash to the name they were filed under', async () => {
    const log = recordingLogger();
    const store = await openStore({ logger: log });
    const bytes = randomBytes(5000);
    const liar = sha(Buffer.from('something else'));
    await store.putChunk(liar, 5000, 4096, 0, bytes.subarray(0, 4096));
    await store.putChunk(liar, 5000, 4096, 1, bytes.subarray(4096));
    assert.equal(store.completePath(liar, 5000), undefined);
    assert.deepEqual(store.haveChunks(liar, 5000, 4096, 0, 1), [false, false]);
    assert.deepEqual(await readdir(join(dir, 'partial')), []);
    assert.equal(store.stats().bytes, 0);
    assert.ok(log.lines.some((l) => l.level === 'error'));
  });

  it('keeps the bound by evicting the least recently used whole files', async () => {
    const store = await openStore({ maxBytes: 3000 });
    const files = [randomBytes(1000), randomBytes(1000), randomBytes(1000), randomBytes(1000)];
    const [a, b, c, d] = files.map(sha) as [Buffer, Buffer, Buffer, Buffer];
    for (const f of files.slice(0, 3)) await putWhole(store, f);
    await store.readRange(a, 1000, 0, 10); // a is now more recent than b and c
    await putWhole(store, files[3]!);
    assert.ok(store.completePath(a, 1000), 'a was used recently');
    assert.equal(store.completePath(b, 1000), undefined, 'b was the least recently used');
    assert.ok(store.completePath(c, 1000));
    assert.ok(store.completePath(d, 1000));
    const st = store.stats();
    assert.equal(st.bytes, 3000);
    assert.equal(st.evictions, 1);
    assert.equal(st.evictedBytes, 1000);
    await store.close();
    // The order survives a restart (touches are written on close).
    const again = await openStore({ maxBytes: 3000 });
    await putWhole(again, randomBytes(1000));
    assert.equal(again.completePath(c, 1000), undefined, 'c is now the oldest');
    assert.ok(again.completePath(a, 1000));
    // Evicted files are unlinked in the background; close() waits for those under way.
    await again.close();
    assert.ok(!(await exists(again.blobPath(c))), 'its file is gone');
  });

  it('reserve counts a file outside the store (a staging file) against the bound until released: room is made for it, blobs added meanwhile share the bound', async () => {
    const store = await openStore({ maxBytes: 3000 });
    const files = [randomBytes(1000), randomBytes(1000), randomBytes(1000)];
    for (const f of files) await putWhole(store, f);
    const release = store.reserve(1500);
    assert.equal(store.stats().bytes, 2500, 'two blobs evicted to make room for the reservation');
    assert.equal(store.stats().evictions, 2);
    assert.equal(store.completePath(sha(files[2]!), 1000) !== undefined, true, 'the most recent stays');
    await putWhole(store, randomBytes(1000));
    assert.equal(store.stats().bytes, 2500, 'a blob added while reserved evicts another: reserved + blobs within the bound');
    release();
    release(); // once only
    assert.equal(store.stats().bytes, 1000);
    assert.throws(() => store.reserve(-1), isCode('ERR_INVALID_ARGUMENT'));
  });

  it('never evicts a pinned file; over the bound (logged once) rather than failing', async () => {
    const log = recordingLogger();
    const store = await openStore({ maxBytes: 2000, logger: log });
    const a = await putWhole(store, randomBytes(1000));
    const b = await putWhole(store, randomBytes(1000));
    const unpinA = store.pin(a);
    const unpinB = store.pin(b);
    const c = await putWhole(store, randomBytes(1000));
    const d = await putWhole(store, randomBytes(1000));
    assert.ok(store.completePath(a, 1000) && store.completePath(b, 1000), 'pinned files stay');
    assert.equal(store.completePath(c, 1000), undefined, 'c made room for d');
    assert.ok(store.completePath(d, 1000));
    const e = store.pin(d);
    await putWhole(store, randomBytes(1000));
    assert.equal(store.stats().overBound, true);
    await putWhole(store, randomBytes(1000));
    assert.equal(log.lines.filter((l) => l.msg.includes('over its size bound')).length, 1, 'logged once');
    unpinA();
    unpinB();
    e();
    await store.evictTo(2000);
    assert.equal(store.stats().bytes <= 2000, true);
    assert.equal(store.stats().overBound, false);
  });

  it('reconciles files and rows after an unclean stop', async () => {
    const first = await openStore();
    const kept = await putWhole(first, randomBytes(2000));
    const lost = await putWhole(first, randomBytes(2000));
    const part = sha(randomBytes(9000));
    await first.putChunk(part, 9000, 4096, 0, randomBytes(4096));
    // No close(): as after kill -9. Then the disk changes behind the store's back.
    await rm(first.blobPath(lost));
    const strayBytes = randomBytes(500);
    const stray = sha(strayBytes);
    await mkdir(join(dir, 'blobs', stray.toString('hex').slice(0, 2)), { recursive: true });
    await writeFile(join(dir, 'blobs', stray.toString('hex').slice(0, 2), stray.toString('hex')), strayBytes);
    await writeFile(join(dir, 'partial', sha(Buffer.from('x')).toString('hex')), 'no row');
    await writeFile(join(dir, 'blobs', 'not-a-blob'), 'junk');
    await writeFile(join(dir, 'tmp', 'half-written'), 'junk');
    const store = await openStore();
    assert.ok(store.completePath(kept, 2000));
    assert.equal(store.completePath(lost, 2000), undefined, 'a row without its file is gone');
    assert.ok(store.completePath(stray, 500), 'a complete blob without a row is adopted');
    assert.equal(store.isVerified(stray), false, 'and re-hashed before it is trusted');
    assert.deepEqual(store.haveChunks(part, 9000, 4096, 0, 1), [true, false], 'a partial with its row stays');
    assert.deepEqual(await readdir(join(dir, 'partial')), [part.toString('hex')], 'a partial file without a row is removed');
    assert.deepEqual(await readdir(join(dir, 'tmp')), []);
    assert.ok(!(await exists(join(dir, 'blobs', 'not-a-blob'))));
    assert.equal(store.stats().bytes, 2000 + 500 + 4096);
  });

  it('"not complete" is answered from memory only while no row can be complete unseen: an earlier process\'s blobs and adopted ones are still found', async () => {
    const first = await openStore();
    const bytes = randomBytes(3000);
    const h = await putWhole(first, bytes);
    await first.close();
    // Reopened cleanly (no reconcile): the row is of an earlier process, unknown to this one.
    const second = await openStore();
    assert.equal(second.completePath(h, 3000), second.blobPath(h));
    assert.equal(second.isVerified(h), false, 'not trusted before it is re-hashed');
    assert.ok(await second.verifyBlob(h));
    assert.equal(second.isVerified(h), true);
    assert.equal(second.completePath(sha(randomBytes(10)), 10), undefined);
    await second.close();
    // A fresh store, then a blob without a row left behind an unclean stop: adopted, and found.
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const fresh = await openStore();
    const strayBytes = randomBytes(700);
    const stray = sha(strayBytes);
    assert.equal(fresh.completePath(stray, 700), undefined);
    // No close(): as after kill -9.
    await mkdir(join(dir, 'blobs', stray.toString('hex').slice(0, 2)), { recursive: true });
    await writeFile(join(dir, 'blobs', stray.toString('hex').slice(0, 2), stray.toString('hex')), strayBytes);
    const third = await openStore();
    assert.equal(third.completePath(stray, 700), third.blobPath(stray), 'an adopted blob is found');
    assert.equal(third.isVerified(stray), false);
  });

  it('a real kill -9 in the middle of writes leaves a store whose rows and files agree', async function () {
    this.timeout(120_000);
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
      import { BlobStore } from ${JSON.stringify(new URL('../../../src/cache/blob-store.ts', import.meta.url).pathname)};
      import { createHash, randomBytes } from 'node:crypto';
      import { writeFile } from 'node:fs/promises';
      const store = await BlobStore.open(${JSON.stringify(dir)}, { maxBytes: 200000 });
      for (let i = 0; ; i++) {
        const b = randomBytes(1000 + (i % 7) * 3000);
        const h = createHash('sha256').update(b).digest();
        if (i % 2) { const t = store.tempPath(); await writeFile(t, b); await store.commitFiles([{ sha: h, size: b.length, tempPath: t }]); }
        else await store.putChunk(h, b.length, 4096, 0, b.subarray(0, Math.min(4096, b.length)));
        if (i === 50) process.stdout.write('busy\\n');
      }
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('busy')) resolve(); });
      child.on('exit', (code) => reject(new Error(`the writer exited (${code}) before it got busy`)));
    });
    child.kill('SIGKILL');
    await new Promise((resolve) => child.on('exit', resolve));
    const store = await openStore({ maxBytes: 200000 });
    const st = store.stats();
    assert.ok(st.blobs > 0 && st.bytes <= 200000 + 4096 * 2, `bytes ${st.bytes}`);
    const result = await store.scrub();
    assert.deepEqual(result.dropped, [], 'every row names a file whose bytes match it');
    assert.equal(result.checked, st.blobs + st.partials);
    // Every file on disk has its row.
    let files = 0;
    for (const sub of await readdir(join(dir, 'blobs'))) files += (await readdir(join(dir, 'blobs', sub))).length;
    files += (await readdir(join(dir, 'partial'))).length;
    assert.equal(files, st.blobs + st.partials);
  });

  it('commitBuffers writes a batch of in-memory files off the JS thread: each a read-only blob with its row, duplicates deduped', async () => {
    const store = await openStore();
    const bufs = Array.from({ length: 300 }, (_, i) => randomBytes(100 + i * 13));
    const batch = [...bufs, bufs[0]!].map((b) => ({ sha: sha(b), bytes: b }));
    const r = await store.commitBuffers(batch);
    assert.equal(r.added, 300);
    assert.equal(r.deduped, 1);
    for (const b of bufs) {
      const h = sha(b);
      assert.equal(store.completePath(h, b.length), store.blobPath(h));
      assert.ok(store.isVerified(h), 'written by this process: trusted');
      assert.deepEqual(await store.readRange(h, b.length, 0, b.length), b);
      assert.equal((await stat(store.blobPath(h))).mode & 0o777, 0o444);
    }
    assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'no temp file is left');
    // Committed again: all deduped, nothing rewritten.
    assert.equal((await store.commitBuffers(batch.slice(0, 10))).deduped, 10);
  });

  it('the blob-write threads run at nice 19 (background work), the main thread keeps its priority', async () => {
    // Field 19 of /proc/<pid>/task/<tid>/stat is the thread's nice value (proc(5)); the
    // command name (field 2) may hold spaces, so fields are counted after its ')'.
    const niceOf = async (tid: string) => Number((await readFile(`/proc/self/task/${tid}/stat`, 'utf8')).split(') ')[1]!.split(' ')[16]);
    const niced = async () => {
      const out = new Set<string>();
      for (const tid of await readdir('/proc/self/task')) if (await niceOf(tid).catch(() => 0) === 19) out.add(tid);
      return out;
    };
    const mainNice = await niceOf(String(process.pid));
    const before = await niced();
    const store = await openStore();
    const bufs = Array.from({ length: 300 }, (_, i) => randomBytes(50 + i));
    assert.equal((await store.commitBuffers(bufs.map((b) => ({ sha: sha(b), bytes: b })))).added, 300);
    const after = await niced();
    const fresh = [...after].filter((t) => !before.has(t));
    assert.equal(fresh.length, 2, `threads newly at nice 19: ${fresh.join(', ')}`);
    assert.equal(await niceOf(String(process.pid)), mainNice);
  });

  it('commitBuffers writes files from views into larger buffers (decoded frames, request bodies) mixed with whole buffers, byte-exact, and never writes into them', async () => {
    const store = await openStore();
    // Two "decoded requests", each holding many files back to back at odd offsets, and whole buffers between them.
    const frames = [Buffer.from(randomBytes(70_000)), Buffer.from(randomBytes(50_000))];
    const views: Buffer[] = [];
    for (const b of frames) for (let at = 3; at + 997 <= b.length; at += 1009) views.push(b.subarray(at, at + 997 - (at % 7)));
    const plain = Array.from({ length: 40 }, (_, i) => randomBytes(50 + i * 31));
    const all = views.flatMap((v, i) => (i < plain.length ? [v, plain[i]!] : [v]));
    const before = all.map((b) => Buffer.from(b));
    const r = await store.commitBuffers(all.map((b) => ({ sha: sha(b), bytes: b })));
    assert.equal(r.added, all.length);
    for (const b of before) {
      const h = sha(b);
      assert.equal(store.completePath(h, b.length), store.blobPath(h));
      assert.deepEqual(await readFile(store.blobPath(h)), b);
    }
    assert.deepEqual(all.map((b) => Buffer.from(b)), before, 'the views stay readable and unchanged (nothing of theirs is transferred)');
  });

  it('commitBuffers copies later batches into the buffers the writer threads gave back: byte-exact, smaller and larger batches, no stale bytes', async () => {
    const store = await openStore();
    assert.equal(store.stats().writeBuffersReused, 0);
    // Batch sizes: large, then smaller (fits a spare), then larger than every spare (a new buffer).
    const batches = [400, 120, 60, 900].map((n, bi) => Array.from({ length: 64 }, (_, i) => randomBytes(n + ((i * 37 + bi) % 101))));
    for (const [bi, batch] of batches.entries()) {
      const r = await store.commitBuffers(batch.map((b) => ({ sha: sha(b), bytes: b })));
      assert.equal(r.added, batch.length, `batch ${bi}`);
      for (const b of batch) assert.deepEqual(await readFile(store.blobPath(sha(b))), b, `batch ${bi}: a blob holds its own bytes, not those of an earlier job`);
    }
    // The second and third batches fit buffers the first and second gave back (each writer thread got one job per batch).
    assert.ok(store.stats().writeBuffersReused >= 2, `reused ${store.stats().writeBuffersReused}`);
    await store.close();
  });

  it('commitBuffers replaces a file already lying at a blob name without a row (an earlier process\'s, not adopted): right bytes, no temp file left', async () => {
    const store = await openStore();
    const bufs = Array.from({ length: 40 }, (_, i) => randomBytes(200 + i));
    for (const b of bufs.slice(0, 20)) {
      const p = store.blobPath(sha(b));
      await mkdir(join(p, '..'), { recursive: true });
      await writeFile(p, Buffer.from('stale bytes of an earlier process'));
    }
    const r = await store.commitBuffers(bufs.map((b) => ({ sha: sha(b), bytes: b })));
    assert.equal(r.added, 40);
    for (const b of bufs) assert.deepEqual(await readFile(store.blobPath(sha(b))), b);
    assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'no temp file is left');
  });

  it('"not held" is remembered, and forgotten the moment the blob comes: commitBuffers, commitFiles, putChunk', async () => {
    const store = await openStore();
    const a = randomBytes(3000);
    const b = randomBytes(5000);
    const c = randomBytes(9000);
    for (const x of [a, b, c]) {
      // Asked twice before it is there (the second answer may come from memory).
      assert.equal(store.completePath(sha(x), x.length), undefined);
      assert.equal(store.completePath(sha(x), x.length), undefined);
      assert.deepEqual(store.haveChunks(sha(x), x.length, 4096, 0, 0), [false]);
    }
    await store.commitBuffers([{ sha: sha(a), bytes: a }]);
    assert.equal(store.completePath(sha(a), a.length), store.blobPath(sha(a)));
    await putWhole(store, b);
    assert.equal(store.completePath(sha(b), b.length), store.blobPath(sha(b)));
    await store.putChunk(sha(c), c.length, 4096, 0, c.subarray(0, 4096));
    assert.deepEqual(store.haveChunks(sha(c), c.length, 4096, 0, 1), [true, false]);
  });

  it('an empty file left at a blob name (a writer killed between create and write) is removed at open, not adopted', async () => {
    await openStore(); // no close(): as after kill -9
    const x = randomBytes(2000);
    const hex = sha(x).toString('hex');
    await mkdir(join(dir, 'blobs', hex.slice(0, 2)), { recursive: true });
    await writeFile(join(dir, 'blobs', hex.slice(0, 2), hex), Buffer.alloc(0), { mode: 0o444 });
    const store = await openStore();
    assert.equal(store.completePath(sha(x), 0), undefined);
    assert.equal(store.stats().blobs, 0);
    await assert.rejects(stat(join(dir, 'blobs', hex.slice(0, 2), hex)), { code: 'ENOENT' });
  });

  it('a kill -9 in the middle of commitBuffers batches: rows and files agree, and no adopted blob is served before it is re-hashed', async function () {
    this.timeout(120_000);
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
      import { BlobStore } from ${JSON.stringify(new URL('../../../src/cache/blob-store.ts', import.meta.url).pathname)};
      import { createHash, randomBytes } from 'node:crypto';
      const store = await BlobStore.open(${JSON.stringify(dir)});
      for (let i = 0; ; i++) {
        const batch = Array.from({ length: 500 }, (_, j) => { const b = randomBytes(200 + ((i + j) % 11) * 700); return { sha: createHash('sha256').update(b).digest(), bytes: b }; });
        const p = store.commitBuffers(batch);
        if (i === 3) process.stdout.write('busy\\n');
        await p;
      }
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('busy')) resolve(); });
      child.on('exit', (code) => reject(new Error(`the writer exited (${code}) before it got busy`)));
    });
    child.kill('SIGKILL');
    await new Promise((resolve) => child.on('exit', resolve));
    // A file renamed into blobs/ whose row never came: torn on purpose, as a power loss could leave it.
    let torn: string | undefined;
    const first = await openStore();
    const st = first.stats();
    let files = 0;
    for (const sub of await readdir(join(dir, 'blobs'))) {
      for (const f of await readdir(join(dir, 'blobs', sub))) {
        files++;
        torn ??= f;
      }
    }
    assert.equal(files, st.blobs, 'every blob on disk has its row (adopted when its row was lost)');
    assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'temp files of the batch in flight are gone');
    await first.close();
    opened.splice(opened.indexOf(first), 1);
    // Next process: the blob is not trusted until re-hashed, and a damaged one is dropped, never served.
    const tornPath = join(dir, 'blobs', torn!.slice(0, 2), torn!);
    await writeFile(tornPath, Buffer.from('torn'), { mode: 0o444 }).catch(async () => {
      const { chmod } = await import('node:fs/promises');
      await chmod(tornPath, 0o644);
      await writeFile(tornPath, Buffer.from('torn'));
    });
    const store = await openStore();
    const h = Buffer.from(torn!, 'hex');
    assert.equal(store.isVerified(h), false);
    assert.equal(await store.verifyBlob(h), false, 'the torn blob fails its re-hash');
    assert.equal(store.completePath(h, 4), undefined, 'and is dropped');
    const result = await store.scrub();
    assert.deepEqual(result.dropped, [], 'every other row names a file whose bytes match it');
  });

  it('checks the size on open: a truncated blob is ERR_CACHE_CORRUPT and dropped', async () => {
    const store = await openStore();
    const h = await putWhole(store, randomBytes(3000));
    await truncate(store.blobPath(h), 100);
    await assert.rejects(store.readRange(h, 3000, 0, 10), isCode('ERR_CACHE_CORRUPT'));
    assert.equal(store.completePath(h, 3000), undefined);
    assert.equal(store.stats().bytes, 0);
  });

  it('re-hashes a blob of an earlier process once before it is trusted', async () => {
    const first = await openStore();
    const good = await putWhole(first, randomBytes(3000));
    const bad = await putWhole(first, randomBytes(3000));
    await first.close();
    await flipBit(first.blobPath(bad), 1500);
    const store = await openStore();
    assert.equal(store.isVerified(good), false);
    assert.equal(store.verifiedPath(good, 3000), undefined, 'complete, not verified yet');
    assert.ok(store.completePath(good, 3000));
    assert.equal(await store.verifyBlob(good), true);
    assert.equal(store.isVerified(good), true);
    assert.equal(store.verifiedPath(good, 3000), store.completePath(good, 3000));
    assert.equal(store.verifiedPath(good, 3001), undefined);
    assert.equal(await store.verifyBlob(bad), false);
    assert.equal(store.completePath(bad, 3000), undefined, 'dropped: the next read fetches it again');
    assert.equal(store.verifiedPath(bad, 3000), undefined);
  });

  it('a pin of a blob of an earlier process re-hashes it at once: ready says so, readers join that one hash', async () => {
    const first = await openStore();
    const good = await putWhole(first, randomBytes(300_000));
    const bad = await putWhole(first, randomBytes(300_000));
    await first.close();
    await flipBit(first.blobPath(bad), 150_000);
    const hashed: string[] = [];
    const store = await openStore({
      hashFile: async (path) => {
        hashed.push(path);
        const b = await readFile(path);
        return { digest: sha(b), size: b.length };
      },
    });
    const pinGood = store.pin(good);
    assert.ok(pinGood.ready, 'a pin of an unverified complete blob starts its check');
    const [ready, again, reader] = await Promise.all([pinGood.ready, store.pin(good).ready, store.verifyBlob(good)]);
    assert.deepEqual([ready, again, reader], [true, true, true]);
    assert.equal(store.isVerified(good), true);
    assert.equal(hashed.filter((p) => p === store.blobPath(good)).length, 1, 'one hash for three askers');
    assert.equal(store.pin(good).ready, undefined, 'verified: nothing to wait for');
    pinGood();
    assert.equal(await store.pin(bad).ready, false, 'a flipped bit is found');
    assert.equal(store.completePath(bad, 300_000), undefined, 'dropped: the next read fetches it again');
  });

  it('the native engine\'s hasher (off the JS thread) verifies blobs and finds a flipped bit', async function () {
    const hashFile = nativeFileHasher();
    if (!hashFile) this.skip();
    const first = await openStore();
    const good = await putWhole(first, randomBytes(3_000_000));
    const bad = await putWhole(first, randomBytes(3_000_000));
    const empty = await putWhole(first, Buffer.alloc(0));
    await first.close();
    await flipBit(first.blobPath(bad), 2_999_999);
    const store = await openStore({ hashFile });
    assert.equal(await store.verifyBlob(good), true);
    assert.equal(await store.verifyBlob(empty), true);
    assert.equal(await store.verifyBlob(bad), false);
    assert.equal(store.completePath(bad, 3_000_000), undefined);
    await rm(store.blobPath(good), { force: true });
    const third = await openStore({ hashFile });
    assert.equal(await third.verifyBlob(good), false, 'a blob gone from disk is not verified');
  });

  it('scrub finds a flipped bit in a blob and in a chunk of a partial file, and drops only those', async () => {
    const store = await openStore();
    const good = await putWhole(store, randomBytes(5000));
    const bad = await putWhole(store, randomBytes(5000));
    const partBytes = randomBytes(9000);
    const part = sha(partBytes);
    await store.putChunk(part, 9000, 4096, 1, partBytes.subarray(4096, 8192));
    const okPartBytes = randomBytes(9000);
    const okPart = sha(okPartBytes);
    await store.putChunk(okPart, 9000, 4096, 0, okPartBytes.subarray(0, 4096));
    await flipBit(store.blobPath(bad), 4999);
    await flipBit(join(dir, 'partial', part.toString('hex')), 4096 + 7);
    const dropped: string[] = [];
    const r = await store.scrub({ onDropped: (h) => { dropped.push(h); } });
    assert.equal(r.checked, 4);
    assert.equal(r.ok, 2);
    assert.deepEqual(r.dropped.map((d) => [d.sha, d.kind, d.code]).sort(), [
      [bad.toString('hex'), 'blob', 'ERR_CACHE_CORRUPT'], [part.toString('hex'), 'partial', 'ERR_CACHE_CORRUPT'],
    ].sort());
    assert.deepEqual(dropped.sort(), [bad.toString('hex'), part.toString('hex')].sort());
    assert.ok(store.completePath(good, 5000));
    assert.equal(store.completePath(bad, 5000), undefined);
    assert.deepEqual(store.haveChunks(okPart, 9000, 4096, 0, 0), [true]);
    assert.deepEqual(store.haveChunks(part, 9000, 4096, 1, 1), [false]);
    assert.equal(store.stats().bytes, 5000 + 4096);
  });

  it('drops the NAR cache of an earlier narfs at open, with one log line', async () => {
    await mkdir(join(dir, 'nar'));
    await writeFile(join(dir, 'nar', 'x.nar'), 'old');
    const log = recordingLogger();
    await openStore({ logger: log });
    assert.ok(!(await exists(join(dir, 'nar'))));
    assert.equal(log.lines.filter((l) => l.msg.includes('earlier narfs')).length, 1);
  });

  it('under a workload twice its size: reads stay byte-exact, the bound holds, pinned files are never evicted', async function () {
    this.timeout(120_000);
    const max = 64 * 1024;
    const cs = 4096;
    const store = await openStore({ maxBytes: max });
    const evicted = new Set<string>();
    store.watchRemoved((h) => evicted.add(h));
    // 32 files of 1..8 KiB = about twice the bound, put whole or by chunks, read at random.
    let seed = 42;
    const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return (seed >>> 8) % n; };
    const files = Array.from({ length: 32 }, (_, i) => randomBytes(1024 * (1 + (i % 8)) + rand(500)));
    const total = files.reduce((n, f) => n + f.length, 0);
    assert.ok(total >= 2 * max, `workload ${total} is twice the bound`);
    const open = new Map<number, () => void>(); // files "open": pinned
    for (let step = 0; step < 600; step++) {
      const i = rand(files.length);
      const f = files[i]!;
      const h = sha(f);
      if (rand(10) === 0 && open.size < 3 && !open.has(i) && store.completePath(h, f.length)) {
        open.set(i, store.pin(h));
        evicted.delete(h.toString('hex'));
      } else if (rand(10) === 0 && open.size > 0) {
        const [k, unpin] = [...open][rand(open.size)]!;
        unpin();
        open.delete(k);
      }
      // A reader pins what it fetches until it has read it (as LazyStore does).
      const reading = store.pin(h);
      if (!store.completePath(h, f.length)) {
        if (rand(2) === 0) {
          await putWhole(store, f);
        } else {
          for (let c = 0; c * cs < f.length; c++) await store.putChunk(h, f.length, cs, c, f.subarray(c * cs, (c + 1) * cs));
        }
      }
      const off = rand(f.length);
      const len = Math.min(f.length - off, 1 + rand(3000));
      assert.deepEqual(await store.readRange(h, f.length, off, len), f.subarray(off, off + len), `file ${i} read byte-exact`);
      reading();
      assert.ok(store.stats().bytes <= max, `bound holds at step ${step}: ${store.stats().bytes}`);
      for (const k of open.keys()) {
        const hk = sha(files[k]!);
        assert.ok(store.completePath(hk, files[k]!.length), `open file ${k} still held`);
        assert.ok(!evicted.has(hk.toString('hex')), `open file ${k} never evicted`);
      }
    }
    assert.ok(store.stats().evictions > 20, `the workload did evict (${store.stats().evictions})`);
    // Disk agrees with the accounting.
    let onDisk = 0;
    for (const sub of await readdir(join(dir, 'blobs'))) {
      for (const n of await readdir(join(dir, 'blobs', sub))) onDisk += (await stat(join(dir, 'blobs', sub, n))).size;
    }
    assert.ok(onDisk <= max, `bytes on disk ${onDisk}`);
  });
});

async function flipBit(path: string, offset: number): Promise<void> {
  const { chmod } = await import('node:fs/promises');
  await chmod(path, 0o644);
  const b = await readFile(path);
  b[offset] = b[offset]! ^ 0x10;
  await writeFile(path, b);
}
