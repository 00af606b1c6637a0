/**
 * ChunkFetcher against a real HTTP server on 127.0.0.1 (HttpDatalakeServer, with Range and
 * faults) over real fixture NARs (scripts/build-fixtures.sh): the large-file store path
 * (one 40 MiB file) and many-files (3000 small files), indexed with IndexBuilder, served
 * uncompressed (`Compression: none`) and as seekable zstd frames (test/support/indexed-nar.ts).
 *
 * Covered: byte-exact chunks from both; a bit flipped by the server is never delivered
 * (ERR_CHUNK_HASH_MISMATCH, logged with its code, one retry), and once the server is fixed
 * a new fetch serves the right bytes; a server that ignores Range; a stalled range hits its
 * deadline; coalescing cuts the request count; read-ahead starts on sequential reads and
 * not on random ones; concurrent readers of a chunk share one request, and a reader that
 * aborts does not abort it for the others; indexes that cannot serve ranges are
 * ERR_INDEX_UNUSABLE. Every wait is on an event (server requests, deliveries); the only
 * deadlines are the components' own.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DatalakeSet } from '../../src/datalake/datalake-set.js';
import { HttpDatalake, type HttpDatalakeOptions } from '../../src/datalake/http-datalake.js';
import { chunkCount, type IndexedFile, type NarIndex } from '../../src/nix/nar-index.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { ChunkFetcher, type ChunkFetcherOptions, type ChunkSource } from '../../src/store/chunk-fetcher.js';
import { isSealed } from '../../src/store/sealed-buffers.js';
import { ChunkVerifyPool } from '../../src/store/chunk-verify-pool.js';
import { failure } from '../support/failure.js';
import { loadFixtures, narInfoPath, pathByRole, FIXTURE_BUILD_TIMEOUT_MS } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { indexNar, writeSeekable, writeSeekableEvery } from '../support/indexed-nar.js';

const CS = 256 * 1024;

interface Lake {
  nar: Buffer;
  idx: NarIndex;
  plain: NarInfo;
  seekable: NarInfo;
  plainUrl: string;
  seekUrl: string;
}

/** What onChunk received, with a way to wait for a chunk. */
function sink() {
  const got = new Map<string, Buffer>();
  const calls: string[] = [];
  const buffers: ArrayBufferLike[] = [];
  const waiters: Array<{ key: string; resolve: () => void }> = [];
  const onChunk = async (file: IndexedFile, k: number, bytes: Buffer): Promise<void> => {
    const key = `${file.narOffset}:${k}`;
    calls.push(key);
    buffers.push(bytes.buffer);
    got.set(key, Buffer.from(bytes));
    for (const w of waiters.filter((x) => x.key === key)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  };
  const delivered = (file: IndexedFile, k: number): Promise<void> =>
    got.has(`${file.narOffset}:${k}`) ? Promise.resolve() : new Promise((resolve) => waiters.push({ key: `${file.narOffset}:${k}`, resolve }));
  return { got, calls, buffers, onChunk, delivered };
}

function chunkOf(nar: Buffer, idx: NarIndex, file: IndexedFile, k: number): Buffer {
  const from = file.narOffset + k * idx.chunkSize;
  return nar.subarray(from, Math.min(file.narOffset + file.size, from + idx.chunkSize));
}

function warnings() {
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  return { lines, logger: { warn: (msg: string, fields: Record<string, unknown> = {}) => void lines.push({ msg, fields }) } };
}

describe('ChunkFetcher (ranged reads of indexed NARs over HTTP)', function () {
  this.timeout(120_000);
  let dir: string;
  let large: Lake;
  let many: Lake;
  /** The large-file NAR indexed with 128 KiB chunks (other flights than `large`). */
  let small: { idx: NarIndex };
  let server: HttpDatalakeServer;
  let set: DatalakeSet;
  let pool: ChunkVerifyPool;
  const fetchers: ChunkFetcher[] = [];
  const sets: DatalakeSet[] = [];

  async function prepare(role: 'large-file' | 'many-files', name: string): Promise<Lake> {
    const fx = await loadFixtures();
    const p = pathByRole(fx, role);
    const plain = parseNarInfo(await fsp.readFile(narInfoPath(fx.datalakes.none.dir, p.storePath), 'utf8'));
    const nar = await fsp.readFile(path.join(fx.datalakes.none.dir, plain.url));
    const idx = indexNar(nar, p.storePath, CS);
    const s = writeSeekable(nar, { ...idx });
    idx.frames = s.frames;
    const plainUrl = `nar/${name}.nar`;
    const seekUrl = `nar/${name}.nar.zst`;
    await fsp.writeFile(path.join(dir, plainUrl), nar);
    await fsp.writeFile(path.join(dir, seekUrl), s.bytes);
    const seekable: NarInfo = { ...plain, url: seekUrl, compression: 'zstd', fileHash: s.frames.fileHash, fileSize: s.frames.fileSize };
    return { nar, idx, plain: { ...plain, url: plainUrl }, seekable, plainUrl, seekUrl };
  }

  /** The 40 MiB file of the large-file path. */
  const big = (): IndexedFile => large.idx.files.find((f) => f.size === 40 << 20)!;

  const src = (lake: Lake, seek = false): ChunkSource => ({
    datalake: set.datalakes[0]!,
    narUrl: seek ? lake.seekUrl : lake.plainUrl,
    compression: seek ? 'zstd' : 'none',
    narInfo: seek ? lake.seekable : lake.plain,
  });

  const fetcher = (o: Partial<ChunkFetcherOptions> = {}): ChunkFetcher => {
    const f = new ChunkFetcher({ datalakes: set, verifyPool: pool, readAheadChunks: 0, readAheadAfter: 2, ...o });
    fetchers.push(f);
    return f;
  };

  async function openSet(options: HttpDatalakeOptions = {}): Promise<DatalakeSet> {
    const s = new DatalakeSet([new HttpDatalake(server.url, options)]);
    await s.open();
    sets.push(s);
    return s;
  }

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-chunks-'));
    await fsp.mkdir(path.join(dir, 'nar'));
    await fsp.writeFile(path.join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\n');
    large = await prepare('large-file', 'large');
    many = await prepare('many-files', 'many');
    small = { idx: indexNar(large.nar, large.idx.storePath, CS / 2) };
    assert.equal(chunkCount(big().size, CS), 160);
    assert.ok(many.idx.files.length > 1000);
    pool = new ChunkVerifyPool();
  });
  beforeEach(async function () {
    server = await HttpDatalakeServer.start({ root: dir });
    set = await openSet();
  });
  afterEach(async function () {
    for (const f of fetchers.splice(0)) f.close();
    for (const s of sets.splice(0)) await s.close();
    await server.close();
  });
  after(async function () {
    await pool?.close();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  for (const seek of [false, true]) {
    const kind = seek ? 'seekable zstd' : 'Compression none';
    it(`${kind}: every chunk of the large file and of small files is byte-exact`, async function () {
      const f = fetcher();
      const s = sink();
      const file = big();
      const ac = new AbortController();
      for (const [a, b] of [[0, 0], [1, 40], [77, 77], [41, 76], [78, 159]] as const) {
        await f.fetch(src(large, seek), large.idx, file, a, b, s.onChunk, ac.signal);
      }
      for (let k = 0; k < 160; k++) assert.deepEqual(s.got.get(`${file.narOffset}:${k}`), chunkOf(large.nar, large.idx, file, k), `chunk ${k}`);
      assert.equal(s.calls.length, 160, 'each chunk delivered once');
      // Decoded frames and bodies verified on a worker are sealed (holders keep views of
      // them); a small body verified inline is still its caller's, never sealed.
      if (seek) assert.ok(s.buffers.every((b) => isSealed(b)), 'decoded frames are sealed');
      else assert.ok(s.buffers.some((b) => isSealed(b)) && s.buffers.some((b) => !isSealed(b)), 'worker bodies sealed, inline ones not');
      for (const file of many.idx.files.filter((_, i) => i % 97 === 0)) {
        await f.fetch(src(many, seek), many.idx, file, 0, 0, s.onChunk, ac.signal);
        assert.deepEqual(s.got.get(`${file.narOffset}:0`), chunkOf(many.nar, many.idx, file, 0));
      }
      assert.equal(f.stats.mismatches, 0);
    });
  }

  it('a flipped bit is never delivered: ERR_CHUNK_HASH_MISMATCH logged with its code, one retry; fixed, a re-fetch serves the right bytes', async function () {
    const log = warnings();
    const f = fetcher({ logger: log.logger });
    const s = sink();
    const file = big();
    const bad = file.narOffset + 3 * CS + 1234;
    server.transform(large.plainUrl, (body) => {
      const b = Buffer.from(body);
      b[bad] = b[bad]! ^ 0x10;
      return b;
    });
    // Chunks 0..7 in one request: 3 is bad, the others are good and delivered.
    const err = await failure(f.fetch(src(large), large.idx, file, 0, 7, s.onChunk, new AbortController().signal), 'ERR_CHUNK_HASH_MISMATCH');
    assert.equal(err.details?.chunk, 3);
    assert.equal(s.got.has(`${file.narOffset}:3`), false, 'the bad chunk never reached onChunk');
    for (const k of [0, 1, 2, 4, 5, 6, 7]) assert.deepEqual(s.got.get(`${file.narOffset}:${k}`), chunkOf(large.nar, large.idx, file, k));
    assert.equal(server.count(large.plainUrl), 2, 'the coalesced request, then one retry of the bad chunk alone');
    assert.equal(server.requests.at(-1)!.headers.range, `bytes=${file.narOffset + 3 * CS}-${file.narOffset + 4 * CS - 1}`);
    assert.deepEqual(log.lines.map((l) => (l.fields.err as { code?: string } | undefined)?.code), ['ERR_CHUNK_HASH_MISMATCH', 'ERR_CHUNK_HASH_MISMATCH']);
    // The server is fixed: the next read of that chunk fetches it afresh and serves it.
    server.clear(large.plainUrl);
    await f.fetch(src(large), large.idx, file, 3, 3, s.onChunk, new AbortController().signal);
    assert.deepEqual(s.got.get(`${file.narOffset}:3`), chunkOf(large.nar, large.idx, file, 3));
  });

  it('a chunk that is bad once and good on its retry is served, the bad bytes never', async function () {
    const log = warnings();
    const f = fetcher({ logger: log.logger });
    const s = sink();
    const file = big();
    let served = 0;
    server.transform(large.plainUrl, (body) => {
      if (served++ > 0) return body;
      const b = Buffer.from(body);
      b[file.narOffset + 9 * CS] = b[file.narOffset + 9 * CS]! ^ 1;
      return b;
    });
    await f.fetch(src(large), large.idx, file, 9, 9, s.onChunk, new AbortController().signal);
    assert.deepEqual(s.got.get(`${file.narOffset}:9`), chunkOf(large.nar, large.idx, file, 9));
    assert.equal(s.calls.length, 1);
    assert.equal(log.lines.length, 1);
    assert.equal(f.stats.mismatches, 1);
  });

  it('seekable zstd: a corrupted frame is never delivered (hash mismatch or ERR_DECOMPRESS), then fixed', async function () {
    const f = fetcher({ logger: warnings().logger });
    const s = sink();
    const file = big();
    const fr = large.idx.frames!;
    const i = fr.narOffsets.indexOf(file.narOffset + 5 * CS);
    assert.ok(i > 0);
    server.transform(large.seekUrl, (body) => {
      const b = Buffer.from(body);
      const at = Math.floor((fr.fileOffsets[i]! + fr.fileOffsets[i + 1]!) / 2);
      b[at] = b[at]! ^ 0x40;
      return b;
    });
    const err = await f.fetch(src(large, true), large.idx, file, 5, 5, s.onChunk, new AbortController().signal).then(() => undefined, (e: unknown) => e);
    assert.ok(err !== undefined, 'the corrupted chunk was delivered');
    assert.match((err as { code: string }).code, /^(ERR_CHUNK_HASH_MISMATCH|ERR_DECOMPRESS)$/);
    assert.equal(s.calls.length, 0);
    server.clear(large.seekUrl);
    await f.fetch(src(large, true), large.idx, file, 5, 5, s.onChunk, new AbortController().signal);
    assert.deepEqual(s.got.get(`${file.narOffset}:5`), chunkOf(large.nar, large.idx, file, 5));
  });

  it('a server that ignores Range (200, whole body) still serves exact chunks', async function () {
    server.ignoreRange('*');
    const f = fetcher();
    const s = sink();
    const file = big();
    for (const seek of [false, true]) {
      await f.fetch(src(large, seek), large.idx, file, 100, 103, s.onChunk, new AbortController().signal);
      for (let k = 100; k <= 103; k++) assert.deepEqual(s.got.get(`${file.narOffset}:${k}`), chunkOf(large.nar, large.idx, file, k));
      s.got.clear();
    }
    assert.equal(server.requests.at(-1)!.headers.range !== undefined, true, 'a Range was asked for');
  });

  it('a stalled range hits the datalake deadline; a reader waits no longer than its own deadline or abort', async function () {
    for (const s of sets.splice(0)) await s.close();
    set = await openSet({ rangeTimeoutMs: 500, attempts: 1 });
    const f = fetcher({ waitTimeoutMs: 60_000 });
    const file = big();
    server.stallHeaders(large.plainUrl);
    await failure(f.fetch(src(large), large.idx, file, 0, 0, sink().onChunk, new AbortController().signal), 'ERR_DATALAKE_TIMEOUT');
    server.clear().stallBody(large.plainUrl, 100);
    await failure(f.fetch(src(large), large.idx, file, 1, 1, sink().onChunk, new AbortController().signal), 'ERR_DATALAKE_TIMEOUT');
    // A held request: the reader's own deadline, then its abort, end its wait.
    server.clear().hold(large.plainUrl);
    for (const s of sets.splice(0)) await s.close();
    set = await openSet({ rangeTimeoutMs: 60_000 });
    const g = fetcher({ waitTimeoutMs: 200 });
    await failure(g.fetch(src(large), large.idx, file, 2, 2, sink().onChunk, new AbortController().signal), 'ERR_DEADLINE');
    const ac = new AbortController();
    const p = g.fetch(src(large), large.idx, file, 3, 3, sink().onChunk, ac.signal);
    await server.waitForRequest(large.plainUrl, 2);
    ac.abort();
    await failure(p, 'ERR_ABORTED');
    server.release(large.plainUrl);
  });

  it('coalescing: 32 adjacent chunks are one request, not 32', async function () {
    const file = big();
    for (const seek of [false, true]) {
      const url = seek ? large.seekUrl : large.plainUrl;
      const one = fetcher({ maxRequestBytes: 8 << 20 });
      const before = server.count(url);
      await one.fetch(src(large, seek), large.idx, file, 0, 31, sink().onChunk, new AbortController().signal);
      assert.equal(server.count(url) - before, 1, `${url}: 8 MiB in one request`);
      const each = fetcher({ maxRequestBytes: CS });
      await each.fetch(src(large, seek), large.idx, file, 32, 63, sink().onChunk, new AbortController().signal);
      assert.equal(server.count(url) - before - 1, 32, `${url}: without coalescing, one request per chunk`);
      // The cap holds: 64 chunks (16 MiB) are two 8 MiB requests.
      const capped = fetcher({ maxRequestBytes: 8 << 20 });
      await capped.fetch(src(large, seek), large.idx, file, 64, 127, sink().onChunk, new AbortController().signal);
      assert.equal(server.count(url) - before - 33, 2);
    }
  });

  it('read-ahead starts on the second sequential read, grows, and stays off for random reads', async function () {
    const f = fetcher({ readAheadInitial: 2, readAheadChunks: 8 });
    const s = sink();
    const file = big();
    const go = (a: number, b: number) => f.fetch(src(large), large.idx, file, a, b, s.onChunk, new AbortController().signal);
    await go(0, 0);
    assert.equal(server.count(large.plainUrl), 1);
    await go(1, 1);
    // Second sequential read: chunks 2 and 3 are read ahead, delivered without being asked for.
    await Promise.all([s.delivered(file, 2), s.delivered(file, 3)]);
    assert.equal(server.count(large.plainUrl), 3, 'chunk 1, then one read-ahead request for 2..3');
    // The reader found 2 and 3 in its cache; its next miss is chunk 4: the window doubles (4).
    await go(4, 4);
    await Promise.all([5, 6, 7, 8].map((k) => s.delivered(file, k)));
    assert.equal(f.stats.readAheadChunks, 6);
    // Random reads: no read-ahead.
    const n = server.count(large.plainUrl);
    await go(120, 120);
    await go(60, 60);
    await go(140, 140);
    assert.equal(server.count(large.plainUrl), n + 3);
    assert.equal(f.stats.readAheadChunks, 6);
    assert.equal(s.got.has(`${file.narOffset}:121`), false);
  });

  it('concurrent readers of a chunk cause one request; a reader that aborts does not abort it for the others', async function () {
    const f = fetcher();
    const s = sink();
    const file = big();
    server.hold(large.plainUrl);
    const aborter = new AbortController();
    const readers = Array.from({ length: 6 }, (_, i) =>
      f.fetch(src(large), large.idx, file, 50, 50, s.onChunk, i === 0 ? aborter.signal : new AbortController().signal));
    await server.waitForRequest(large.plainUrl, 1);
    aborter.abort();
    await failure(readers[0]!, 'ERR_ABORTED');
    server.release(large.plainUrl);
    await Promise.all(readers.slice(1));
    assert.equal(server.count(large.plainUrl), 1);
    assert.deepEqual(s.calls, [`${file.narOffset}:50`], 'delivered once');
    assert.deepEqual(s.got.get(`${file.narOffset}:50`), chunkOf(large.nar, large.idx, file, 50));
    assert.equal(f.stats.joined, 5);
    // The same file in another store path's index shares the flight too (content-addressed).
    server.hold(large.plainUrl);
    const other: NarIndex = { ...large.idx, storePath: large.idx.storePath.replace(/-[^/]*$/, '-other') };
    const both = [f.fetch(src(large), large.idx, file, 51, 51, s.onChunk, new AbortController().signal),
      f.fetch(src(large), other, file, 51, 51, s.onChunk, new AbortController().signal)];
    await server.waitForRequest(large.plainUrl, 2);
    server.release(large.plainUrl);
    await Promise.all(both);
    assert.equal(server.count(large.plainUrl), 2);
  });

  it('by default, read-ahead waits for a run of 4 chunks: a two-chunk window read in pieces pulls in nothing more', async function () {
    const f = fetcher({ readAheadChunks: 16, readAheadAfter: undefined });
    const idx = large.idx;
    const file = big();
    const cs = idx.chunkSize;
    const got = new Map<number, Buffer>();
    const onChunk = async (_f: IndexedFile, k: number, b: Buffer) => void got.set(k, Buffer.from(b));
    const before = f.stats.readAheadChunks;
    const read = (k: number) => f.fetch(src(large), idx, file, k, k, onChunk, new AbortController().signal, { isCached: (c) => got.has(c) });
    // A window of two chunks (1 MiB at the default 512 KiB) starting mid-chunk, read in
    // quarter-chunk pieces: it spans 3 chunks.
    for (let off = Math.floor(1.5 * cs); off < Math.floor(1.5 * cs) + 2 * cs; off += cs / 4) {
      const k = Math.floor(off / cs);
      if (!got.has(k)) await read(k);
    }
    assert.equal(f.stats.readAheadChunks - before, 0, 'no read-ahead for a 1 MiB window');
    // A longer sequential run does start it.
    for (let k = 10; k < 16; k++) if (!got.has(k)) await read(k);
    assert.ok(f.stats.readAheadChunks - before > 0, 'read-ahead after a run of 4 chunks');
    f.close();
  });

  it('a 1 MiB window read as the kernel sends it (many small READs, each a fetch) fetches its chunks once and nothing ahead', async function () {
    // Bench scenario 9: a 1 MiB pread at an unaligned offset reaches the store as 128 KiB
    // READs; each READ that misses asks for its chunks. Chunks held are not fetched again,
    // and the READs of one window are not a stream to read ahead of.
    const f = fetcher({ readAheadChunks: 16, readAheadAfter: undefined });
    const idx = large.idx;
    const file = big();
    const cs = idx.chunkSize;
    const got = new Map<number, Buffer>();
    const onChunk = async (_f: IndexedFile, k: number, b: Buffer) => void got.set(k, Buffer.from(b));
    const r0 = server.requests.length;
    const start = 20 * cs + Math.floor(cs / 3);
    const piece = cs / 4; // 128 KiB READs of a 1 MiB window at the bench's 512 KiB chunks
    for (let off = start; off < start + 2 * cs; off += piece) {
      const a = Math.floor(off / cs);
      const b = Math.floor((off + piece - 1) / cs);
      await f.fetch(src(large), idx, file, a, b, onChunk, new AbortController().signal, { isCached: (c) => got.has(c) });
    }
    const ranges = server.requests.slice(r0).filter((r) => r.relPath === large.plainUrl).map((r) => r.headers.range);
    const bytes = ranges.reduce((n, r) => { const [x, y] = r!.slice(6).split('-').map(Number); return n + y! - x! + 1; }, 0);
    // The window spans chunks 20..22: 3 chunks, each fetched once.
    assert.equal(bytes, 3 * cs, `fetched ${ranges.join(' ')}`);
    assert.equal(f.stats.readAheadChunks, 0);
    for (let k = 20; k <= 22; k++) assert.ok(got.get(k)!.equals(chunkOf(large.nar, idx, file, k)));
    f.close();
  });

  it('at most maxInFlight requests at once; queued wanted requests go before read-ahead, and a reader joining read-ahead promotes it', async function () {
    const f = fetcher({ maxInFlight: 2 });
    const file = big();
    server.hold(large.plainUrl);
    const go = (k: number) => f.fetch(src(large), large.idx, file, k, k, sink().onChunk, new AbortController().signal);
    const five = [10, 30, 50, 70, 90].map(go);
    await server.waitForRequest(large.plainUrl, 2);
    assert.equal(f.requestsInFlight, 2);
    assert.equal(f.queuedRequests, 3);
    assert.equal(server.count(large.plainUrl), 2);
    server.release(large.plainUrl);
    await Promise.all(five);
    assert.equal(server.count(large.plainUrl), 5);

    // One slot. A (256 KiB chunks) and B (the same file indexed with 128 KiB chunks: other flights).
    const g = fetcher({ maxInFlight: 1, readAheadInitial: 2, readAheadChunks: 2 });
    const fileB = small.idx.files.find((x) => x.size === 40 << 20)!;
    const a = (k: number) => g.fetch(src(large), large.idx, file, k, k, sink().onChunk, new AbortController().signal);
    const b = (k: number) => g.fetch(src(large), small.idx, fileB, k, k, sink().onChunk, new AbortController().signal);
    server.hold(large.plainUrl);
    const n = server.count(large.plainUrl);
    const r0 = server.requests.length;
    const all = [a(0)];
    await server.waitForRequest(large.plainUrl, n + 1);
    all.push(a(1)); // wanted A1, read-ahead A2..3
    all.push(b(0), b(1)); // wanted B0, B1, read-ahead B2..3
    all.push(b(2)); // joins read-ahead B2..3, which moves before A's read-ahead; and reads B4 ahead
    assert.equal(g.queuedRequests, 6);
    server.release(large.plainUrl);
    await Promise.all(all);
    await server.waitForRequest(large.plainUrl, n + 7); // B4 is read-ahead: nobody waits for it
    const ranges = server.requests.slice(r0).filter((r) => r.relPath === large.plainUrl).map((r) => r.headers.range);
    const A = (k: number) => file.narOffset + k * CS;
    const B = (k: number) => fileB.narOffset + k * (CS / 2);
    const range = (from: number, to: number) => `bytes=${from}-${to - 1}`;
    assert.deepEqual(ranges.slice(0, 7), [
      range(A(0), A(1)), range(A(1), A(2)), // A0 in flight, then A1 (wanted)
      range(B(0), B(1)), range(B(1), B(2)), // B0, B1 (wanted)
      range(B(2), B(4)), // B's read-ahead 2..3, promoted by the reader that joined it
      range(A(2), A(4)), range(B(4), B(5)), // read-ahead, in the order queued
    ]);
  });

  /** many-files as seekable zstd with frames of `every` NAR bytes shared by many small files. */
  async function sharedFrames(every: number): Promise<{ idx: NarIndex; source: ChunkSource; url: string }> {
    const s = writeSeekableEvery(many.nar, every);
    const url = `nar/many-every-${every}.nar.zst`;
    await fsp.writeFile(path.join(dir, url), s.bytes);
    const idx: NarIndex = { ...many.idx, frames: s.frames };
    const narInfo: NarInfo = { ...many.seekable, url, fileHash: s.frames.fileHash, fileSize: s.frames.fileSize };
    return { idx, url, source: { datalake: set.datalakes[0]!, narUrl: url, compression: 'zstd', narInfo } };
  }

  it('overlapping regions (two misses of one directory) fetch each chunk once, also while the first region\'s requests wait for its bound', async function () {
    const idx = many.idx;
    // 64 small files with gaps between them: many requests, one at a time per region.
    const files = idx.files.filter((x) => x.size > 0 && x.size <= CS).filter((_, i) => i % 2 === 0).slice(0, 64);
    const f = fetcher();
    const s = sink();
    const runs = (fs: IndexedFile[]) => fs.map((file) => ({ file, first: 0, last: 0 }));
    const before = server.count(many.plainUrl);
    server.hold(many.plainUrl);
    const a = f.fetchRegion(src(many), idx, runs(files), s.onChunk, new AbortController().signal, { gapBytes: 0, concurrency: 1 });
    await server.waitForRequest(many.plainUrl, before + 1);
    // The second miss's neighbours: the same files, a few more beyond.
    const more = idx.files.filter((x) => x.size > 0 && x.size <= CS && x.narOffset > files[files.length - 1]!.narOffset).slice(0, 4);
    const b = f.fetchRegion(src(many), idx, runs([...files, ...more]), s.onChunk, new AbortController().signal, { gapBytes: 0, concurrency: 1 });
    server.release(many.plainUrl);
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(ra.failed + rb.failed, 0);
    const ranges = server.requests.slice(0).filter((r) => r.relPath === many.plainUrl).map((r) => r.headers.range!);
    assert.equal(new Set(ranges).size, ranges.length, `a range fetched twice: ${ranges.length} requests, ${new Set(ranges).size} distinct`);
    for (const file of [...files, ...more]) assert.deepEqual(s.got.get(`${file.narOffset}:0`), chunkOf(many.nar, idx, file, 0));
  });

  it('seekable frames shared by many files: a region of files further apart than the gap fetches each frame once', async function () {
    const { idx, source, url } = await sharedFrames(64 * 1024);
    // One file every 24 KiB of NAR: several per 64 KiB frame, each further from the last than the 8 KiB gap.
    const files: IndexedFile[] = [];
    for (const f of idx.files) if (f.size > 0 && (files.length === 0 || f.narOffset - files[files.length - 1]!.narOffset >= 24 * 1024)) files.push(f);
    assert.ok(files.length >= 10);
    const f = fetcher();
    const s = sink();
    const r = await f.fetchRegion(source, idx, files.map((file) => ({ file, first: 0, last: 0 })), s.onChunk, new AbortController().signal, { gapBytes: 8 * 1024 });
    assert.equal(r.failed, 0);
    for (const file of files) assert.deepEqual(s.got.get(`${file.narOffset}:0`), chunkOf(many.nar, idx, file, 0));
    const touched = new Set(files.map((file) => idx.frames!.narOffsets.filter((o) => o <= file.narOffset).length - 1));
    assert.ok(server.count(url) <= touched.size, `${server.count(url)} requests for ${files.length} files in ${touched.size} frames`);
    assert.ok(f.stats.requestBytes <= idx.frames!.fileSize, `${f.stats.requestBytes} bytes fetched of a file of ${idx.frames!.fileSize}`);
  });

  it('seekable frames shared by many files: a read of a file whose frame is being fetched waits for it instead of fetching it again', async function () {
    const { idx, source, url } = await sharedFrames(256 * 1024);
    const inFrame = idx.files.filter((file) => file.size > 0 && file.narOffset + file.size < 200 * 1024);
    const a = inFrame[0]!;
    const b = inFrame[inFrame.length - 1]!;
    const f = fetcher();
    const s = sink();
    const held = (file: IndexedFile, k: number) => s.got.has(`${file.narOffset}:${k}`);
    const first = f.fetch(source, idx, a, 0, 0, s.onChunk, new AbortController().signal, { isHeld: held });
    const second = f.fetch(source, idx, b, 0, 0, s.onChunk, new AbortController().signal, { isHeld: held });
    await Promise.all([first, second]);
    assert.deepEqual(s.got.get(`${b.narOffset}:0`), chunkOf(many.nar, idx, b, 0));
    assert.equal(server.count(url), 1, 'one request for two files of one frame');
    assert.equal(f.stats.joinedFrames, 1);
  });

  it('indexes that cannot serve ranges are ERR_INDEX_UNUSABLE before any request', async function () {
    const f = fetcher();
    const file = big();
    const signal = new AbortController().signal;
    const noFrames: NarIndex = { ...large.idx };
    delete noFrames.frames;
    const otherFile = { ...large.seekable, fileHash: { algo: 'sha256' as const, digest: Buffer.alloc(32, 7) } };
    const cases: ChunkSource[] = [
      { ...src(large), compression: 'xz', narInfo: { ...large.plain, compression: 'xz' } },
      { ...src(large, true), narInfo: otherFile },
      { ...src(large, true), narInfo: { ...large.seekable, fileSize: large.seekable.fileSize! + 1 } },
    ];
    for (const c of cases) await failure(f.fetch(c, large.idx, file, 0, 0, sink().onChunk, signal), 'ERR_INDEX_UNUSABLE');
    await failure(f.fetch(src(large, true), noFrames, file, 0, 0, sink().onChunk, signal), 'ERR_INDEX_UNUSABLE');
    // A tree of whole-file hashes only (made from a whole NAR) has no chunk to check against.
    await failure(f.fetch(src(large), { ...large.idx, wholeOnly: true }, file, 0, 0, sink().onChunk, signal), 'ERR_INDEX_UNUSABLE');
    await failure(f.fetch(src(large), large.idx, file, 0, 160, sink().onChunk, signal), 'ERR_INVALID_ARGUMENT');
    assert.equal(server.count('*'), 1, 'only the nix-cache-info of open()');
  });
});
