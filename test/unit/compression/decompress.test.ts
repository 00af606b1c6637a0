/**
 * createDecompressor against input compressed by the real C tools: round trips, every
 * failure mode as ERR_DECOMPRESS, bounded memory under backpressure, the process pool,
 * kills and aborts. Every kill and abort happens on an event (output has arrived, a
 * request is queued), every "it is gone" is awaited on the pool slot coming back: no
 * test depends on how fast the machine is.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { access } from 'node:fs/promises';
import type { Duplex } from 'node:stream';

import { isNarfsError } from '../../../src/errors.js';
import { ChildDecompressor, spawnDecompressor } from '../../../src/compression/child-decompressor.js';
import {
  createDecompressor,
  isSupportedCompression,
  SUPPORTED_COMPRESSIONS,
} from '../../../src/compression/decompress.js';
import { DecompressorPool } from '../../../src/compression/decompressor-pool.js';
import {
  BackpressureProbe,
  childPids,
  collect,
  compressWithTool,
  processExists,
  sampleData,
  untilBlockedOrGone,
} from './compression-fixtures.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const METHODS = ['none', 'xz', 'zstd', 'bzip2', 'br', 'gzip'] as const;
const COMPRESSED = METHODS.filter((m) => m !== 'none');
const TOOL_NAMES = ['xz', 'zstd', 'bzip2', 'brotli', 'gzip'];

/** Reads a stream to its end; rejects with its error. */
async function consume(d: Duplex): Promise<number> {
  let n = 0;
  for await (const chunk of d) n += (chunk as Buffer).length;
  return n;
}

/** Resolves once a process-backed decompressor's child is gone: its pool slot comes back then. */
async function untilSlotFree(pool: DecompressorPool): Promise<void> {
  const release = await pool.acquire();
  release();
}

describe('compression/decompress', function () {
  const data = sampleData(3 * 1024 * 1024 + 123);
  const compressed = new Map<string, Buffer>();
  before(() => {
    for (const m of METHODS) compressed.set(m, compressWithTool(m, data));
  });

  it('supports exactly the methods Nix writes', () => {
    assert.deepEqual([...SUPPORTED_COMPRESSIONS].sort(), [...METHODS].sort());
    for (const m of METHODS) assert.equal(isSupportedCompression(m), true);
    for (const m of ['', 'lz4', 'lzip', 'XZ', 'brotli', 'zst']) assert.equal(isSupportedCompression(m), false);
  });

  for (const m of METHODS) {
    it(`round-trips ${m} compressed by the real tool`, async () => {
      const out = await collect(await createDecompressor(m), compressed.get(m)!);
      assert.equal(out.length, data.length);
      assert.ok(out.equals(data));
    });
  }

  it('round-trips empty input', async () => {
    for (const m of METHODS) {
      const out = await collect(await createDecompressor(m), compressWithTool(m, Buffer.alloc(0)));
      assert.equal(out.length, 0, m);
    }
  });

  it('errors zero bytes of input with ERR_DECOMPRESS for every compressed method', async () => {
    for (const m of COMPRESSED) {
      await assert.rejects(collect(await createDecompressor(m), Buffer.alloc(0)), isCode('ERR_DECOMPRESS'), m);
    }
  });

  it('rejects an unknown method with ERR_COMPRESSION_UNSUPPORTED', async () => {
    for (const m of ['lz4', 'lzip', '', 'XZ']) {
      await assert.rejects(createDecompressor(m), isCode('ERR_COMPRESSION_UNSUPPORTED'));
    }
  });

  for (const m of COMPRESSED) {
    it(`errors corrupt ${m} with ERR_DECOMPRESS`, async () => {
      const bad = Buffer.from(compressed.get(m)!);
      const mid = bad.length >> 1;
      for (let i = 0; i < 64; i++) bad[mid + i] = (bad[mid + i]! ^ 0x5a) & 0xff;
      await assert.rejects(collect(await createDecompressor(m), bad), isCode('ERR_DECOMPRESS'));
    });

    it(`errors truncated ${m} with ERR_DECOMPRESS`, async () => {
      const whole = compressed.get(m)!;
      for (const cut of [whole.length >> 1, whole.length - 1]) {
        await assert.rejects(
          collect(await createDecompressor(m), whole.subarray(0, cut)),
          isCode('ERR_DECOMPRESS'),
          `${m} cut at ${cut}/${whole.length}`,
        );
      }
    });

    it(`errors ${m} on input that is not compressed at all`, async () => {
      await assert.rejects(collect(await createDecompressor(m), data.subarray(0, 100_000)), isCode('ERR_DECOMPRESS'));
    });
  }

  it('decodes concatenated zstd frames and rejects trailing garbage', async () => {
    const a = compressWithTool('zstd', data.subarray(0, 1000));
    const b = compressWithTool('zstd', data.subarray(1000, 500_000));
    const out = await collect(await createDecompressor('zstd'), Buffer.concat([a, b]));
    assert.ok(out.equals(data.subarray(0, 500_000)));
    await assert.rejects(
      collect(await createDecompressor('zstd'), Buffer.concat([a, Buffer.from('garbage!')])),
      isCode('ERR_DECOMPRESS'),
    );
  });

  it('runs zstd, gzip and br in-process, outside the process pool', async () => {
    const pool = new DecompressorPool(1);
    const holder = await createDecompressor('xz', { pool });
    for (const m of ['none', 'zstd', 'gzip', 'br'] as const) {
      const out = await collect(await createDecompressor(m, { pool }), compressed.get(m)!);
      assert.ok(out.equals(data), m);
    }
    holder.destroy();
  });

  it('puts the child stderr, trimmed, into the error message', async () => {
    const err = await collect(await createDecompressor('xz'), Buffer.from('definitely not xz')).then(
      () => assert.fail('should reject'),
      (e: unknown) => e,
    );
    assert.ok(isNarfsError(err, 'ERR_DECOMPRESS'));
    assert.match(err.message, /^xz -dc exited with status 1: xz: \(stdin\): File format not recognized$/);
  });

  it('surfaces a child killed from outside as ERR_DECOMPRESS, not a short stream', async () => {
    const d = (await createDecompressor('bzip2')) as ChildDecompressor;
    const pid = d.pid!;
    d.end(compressed.get('bzip2')!);
    // Mid-stream: output has arrived, and nobody reads, so the child cannot finish its
    // 3 MiB (more than the 256 KiB buffer and the 64 KiB pipe) before it is killed.
    await once(d, 'readable');
    assert.ok(d.readableLength > 0 && d.readableLength < data.length);
    process.kill(pid, 'SIGKILL');
    await assert.rejects(consume(d), (e: unknown) => isNarfsError(e, 'ERR_DECOMPRESS') && /killed by SIGKILL/.test(e.message));
  });

  it('keeps memory bounded when the consumer does not read', async () => {
    // 64 MiB of zeros compress to a few KiB: the whole input is given at once, so only
    // backpressure keeps the output from piling up. The consumer reads only when the
    // stream says its buffer is full, and first lets the decompressor run on: a child
    // process until it blocks on its full pipe (or exits), in-process decoders for a
    // macrotask and a thread-pool round trip (where zlib works). Then the buffer must be
    // within the bound and nothing may have been pushed since the stream said "full".
    const BOUND = 1024 * 1024;
    const zeros = Buffer.alloc(64 * 1024 * 1024);
    for (const m of ['zstd', 'gzip', 'br', 'xz'] as const) {
      const small = compressWithTool(m, zeros);
      const d = await createDecompressor(m);
      const probe = new BackpressureProbe(d);
      const pid = d instanceof ChildDecompressor ? d.pid : undefined;
      d.end(small);
      let received = 0;
      let stalls = 0;
      while ((await probe.next()) === 'full') {
        if (pid !== undefined) await untilBlockedOrGone(pid);
        else {
          await new Promise((r) => setImmediate(r));
          await access('/');
        }
        stalls++;
        assert.equal(probe.pushesWhileFull, 0, `${m} pushed more after saying its buffer was full`);
        assert.ok(d.readableLength <= BOUND, `${m} buffered ${d.readableLength} bytes`);
        received += probe.read()?.length ?? 0;
      }
      for (let c = probe.read(); c !== null; c = probe.read()) received += c.length;
      // The work really happened, through the bound, many times over.
      assert.equal(received, zeros.length, m);
      assert.equal(probe.pushedBytes, zeros.length, m);
      assert.ok(probe.peakBuffered > 0 && probe.peakBuffered <= BOUND, `${m} buffered up to ${probe.peakBuffered} bytes`);
      assert.ok(stalls >= zeros.length / BOUND, `${m}: only ${stalls} stalls`);
      assert.equal(probe.pushesWhileFull, 0, m);
    }
  });

  it('kills the child when the stream is destroyed mid-stream', async () => {
    const pool = new DecompressorPool(1);
    for (const m of ['xz', 'bzip2'] as const) {
      const d = (await createDecompressor(m, { pool })) as ChildDecompressor;
      const pid = d.pid!;
      assert.ok(processExists(pid));
      const input = compressed.get(m)!;
      d.write(input.subarray(0, input.length >> 1));
      await once(d, 'readable');
      d.destroy();
      await once(d, 'close');
      // The slot is released on the child's close, i.e. once the process is gone.
      await untilSlotFree(pool);
      assert.equal(pool.active, 0, `${m}: slot not released`);
      assert.equal(processExists(pid), false, `${m}: child ${pid} still alive`);
    }
    assert.deepEqual(childPids(TOOL_NAMES), []);
  });

  it('never runs more children than the pool limit', async () => {
    const pool = new DecompressorPool(2);
    let max = 0;
    const sampler = setInterval(() => {
      max = Math.max(max, childPids(TOOL_NAMES).length);
    }, 2);
    try {
      const jobs = Array.from({ length: 8 }, async (_, i) => {
        const m = (['xz', 'bzip2'] as const)[i % 2]!;
        const out = await collect(await createDecompressor(m, { pool }), compressed.get(m)!);
        assert.ok(out.equals(data));
        max = Math.max(max, childPids(TOOL_NAMES).length);
        assert.ok(pool.active <= 2);
      });
      await Promise.all(jobs);
    } finally {
      clearInterval(sampler);
    }
    assert.equal(max, 2, `saw at most ${max} children at once`);
    assert.equal(pool.active, 0);
    assert.equal(pool.waiting, 0);
  });

  it('rejects an aborted wait for a slot with ERR_ABORTED', async () => {
    const pool = new DecompressorPool(1);
    const holder = await createDecompressor('xz', { pool });
    const controller = new AbortController();
    const waiting = createDecompressor('bzip2', { pool, signal: controller.signal });
    // createDecompressor asks the pool synchronously (before its first await): queued now.
    assert.equal(pool.waiting, 1);
    controller.abort();
    await assert.rejects(waiting, isCode('ERR_ABORTED'));
    assert.equal(pool.waiting, 0);
    assert.deepEqual(childPids(['bzip2']), []);
    // An already aborted signal does not even queue.
    await assert.rejects(createDecompressor('xz', { pool, signal: AbortSignal.abort() }), isCode('ERR_ABORTED'));
    await assert.rejects(createDecompressor('gzip', { signal: AbortSignal.abort() }), isCode('ERR_ABORTED'));
    holder.destroy();
    await once(holder, 'close');
    // The slot goes to the next waiter once the holder's child is gone.
    const next = await createDecompressor('xz', { pool });
    next.destroy();
  });

  it('destroys a running stream when the signal aborts later, killing the child', async () => {
    const pool = new DecompressorPool(1);
    const controller = new AbortController();
    const d = (await createDecompressor('xz', { pool, signal: controller.signal })) as ChildDecompressor;
    const pid = d.pid!;
    d.end(compressed.get('xz')!);
    // Running: output has arrived and, unread, the child cannot finish its 3 MiB.
    await once(d, 'readable');
    assert.ok(d.readableLength > 0 && d.readableLength < data.length);
    controller.abort();
    await assert.rejects(consume(d), isCode('ERR_ABORTED'));
    await untilSlotFree(pool);
    assert.equal(processExists(pid), false);
  });

  it('reports a missing tool as ERR_COMPRESSION_UNSUPPORTED and frees the slot', async () => {
    const pool = new DecompressorPool(1);
    await assert.rejects(spawnDecompressor(['narfs-no-such-decompressor', '-dc'], pool), isCode('ERR_COMPRESSION_UNSUPPORTED'));
    assert.equal(pool.active, 0);
  });
});
