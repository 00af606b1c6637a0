/**
 * runChunkJob / decodeFrames (src/store/chunk-job.ts): frames decode each to exactly their
 * declared NAR size or fail with ERR_DECOMPRESS (never a partial or oversized result), and a
 * slice is good only when it hashes to its digest. Also the same job through the worker
 * pool (ChunkVerifyPool, forced off the main thread) gives the same answers.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { isNarfsError } from '../../../src/errors.js';
import { decodeFrames, runChunkJob, type ChunkJob } from '../../../src/store/chunk-job.js';
import { ChunkVerifyPool } from '../../../src/store/chunk-verify-pool.js';

const zstd = createRequire(import.meta.url)('zstd-napi') as { compress(d: Uint8Array): Buffer };
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();

describe('chunk jobs (decode seekable frames, hash chunks)', function () {
  const a = Buffer.concat([Buffer.alloc(70_000, 1), randomBytes(30_000)]);
  const b = randomBytes(50_000);
  const fa = zstd.compress(a);
  const fb = zstd.compress(b);
  const input = Buffer.concat([fa, fb]);
  const job = (over: Partial<ChunkJob> = {}): ChunkJob => ({
    input: Buffer.from(input),
    frames: { fileSizes: [fa.length, fb.length], narSizes: [a.length, b.length] },
    slices: [0, 100_000, 100_000, 150_000, 10, 20],
    hashes: Buffer.concat([sha(a), sha(b), sha(a.subarray(10, 20))]),
    ...over,
  });
  const decompressError = (e: unknown) => isNarfsError(e, 'ERR_DECOMPRESS');

  it('decodes every frame and checks every slice', function () {
    const r = runChunkJob(job());
    assert.deepEqual(Buffer.from(r.out), Buffer.concat([a, b]));
    // A plain buffer of exactly the NAR bytes (transferable; not a SharedArrayBuffer, whose fresh pages cost).
    assert.ok(r.out.buffer instanceof ArrayBuffer && r.out.byteOffset === 0 && r.out.buffer.byteLength === a.length + b.length);
    assert.equal(r.owned, true, 'a decode is a buffer of its own');
    // Inline, a job without frames hands back its input, which its caller still holds.
    const input = Buffer.concat([a, b]);
    const plain = runChunkJob({ input, slices: [0, 100_000], hashes: sha(a) });
    assert.ok(plain.out === input && plain.owned === false);
    assert.deepEqual(r.ok, [true, true, true]);
    const bad = job({ hashes: Buffer.concat([sha(a), sha(a), sha(a.subarray(10, 21))]) });
    assert.deepEqual(runChunkJob(bad).ok, [true, false, false]);
    assert.deepEqual(runChunkJob(job({ slices: [0, 100_000, 100_000, 150_001, 5, 4] })).ok, [true, false, false], 'out-of-bounds slices are never good');
  });

  it('a frame that decodes to more or fewer bytes than declared, or does not decode, is ERR_DECOMPRESS', function () {
    assert.throws(() => decodeFrames(input, { fileSizes: [fa.length, fb.length], narSizes: [a.length - 1, b.length] }), decompressError);
    assert.throws(() => decodeFrames(input, { fileSizes: [fa.length, fb.length], narSizes: [a.length + 1, b.length] }), decompressError);
    assert.throws(() => decodeFrames(input, { fileSizes: [fa.length - 1, fb.length + 1], narSizes: [a.length, b.length] }), decompressError);
    assert.throws(() => decodeFrames(input.subarray(1), { fileSizes: [fa.length, fb.length - 1], narSizes: [a.length, b.length] }), decompressError);
    assert.throws(() => decodeFrames(input, { fileSizes: [fa.length], narSizes: [a.length] }), decompressError, 'input longer than its frames');
    const flipped = Buffer.from(input);
    flipped[4] = flipped[4]! ^ 0xff; // the frame header
    assert.throws(() => decodeFrames(flipped, { fileSizes: [fa.length, fb.length], narSizes: [a.length, b.length] }), decompressError);
    // The decoder is usable again after a failure.
    assert.deepEqual(Buffer.from(decodeFrames(input, { fileSizes: [fa.length, fb.length], narSizes: [a.length, b.length] })), Buffer.concat([a, b]));
  });

  it('a lazy pool starts no worker until a job needs one, runs that job inline while they boot, and stops them when idle', async function () {
    this.timeout(60_000);
    const pool = new ChunkVerifyPool({ inlineBytes: 0, size: 1, lazy: true, idleMs: 200 });
    try {
      pool.warm();
      assert.equal(pool.workers, 0, 'warm() of a lazy pool starts nothing');
      const r = await pool.run(job());
      assert.deepEqual(r.ok, [true, true, true]);
      assert.equal(pool.workers, 1, 'the first job started the worker');
      // Once it is up, jobs go to it, and the worker stops after idleMs without one.
      const end = Date.now() + 30_000;
      let viaWorker = false;
      while (Date.now() < end && !viaWorker) {
        const own = Buffer.from(Buffer.concat([a, b]));
        await pool.run({ input: own, slices: [0, 100_000], hashes: sha(a) });
        viaWorker = own.length === 0; // transferred: it went to the worker
        if (!viaWorker) await new Promise((res) => setTimeout(res, 20));
      }
      assert.ok(viaWorker, 'jobs reach the worker once it is online');
      while (Date.now() < end && pool.workers > 0) await new Promise((res) => setTimeout(res, 50));
      assert.equal(pool.workers, 0, 'an idle worker is stopped');
      assert.deepEqual((await pool.run(job())).ok, [true, true, true], 'and started again on demand');
    } finally {
      await pool.close();
    }
  });

  it('the worker pool gives the same answers, and its errors keep their code', async function () {
    this.timeout(60_000);
    const pool = new ChunkVerifyPool({ inlineBytes: 0, size: 1 });
    try {
      const r = await pool.run(job());
      assert.deepEqual(Buffer.from(r.out), Buffer.concat([a, b]));
      assert.deepEqual(r.ok, [true, true, true]);
      const none = Buffer.concat([a, b]);
      const own = Buffer.from(none);
      const r2 = await pool.run({ input: own, slices: [0, 100_000], hashes: sha(b) });
      assert.deepEqual(r2.ok, [false]);
      assert.equal(own.length, 0, 'an input that owns its ArrayBuffer is transferred (run() may detach it)');
      assert.deepEqual(Buffer.from(r2.out), none);
      assert.equal(r2.owned, true, 'the body back from the worker is held by nobody else');
      await assert.rejects(pool.run(job({ frames: { fileSizes: [fa.length, fb.length], narSizes: [a.length + 1, b.length] } })), decompressError);
      // A view into a shared buffer is copied, never detached.
      const shared = Buffer.from(none);
      const view = shared.subarray(100, 100_100);
      await pool.run({ input: view, slices: [0, 100_000], hashes: sha(view) });
      assert.equal(shared.length, none.length);
      assert.equal(view.length, 100_000);
    } finally {
      await pool.close();
    }
  });
});
