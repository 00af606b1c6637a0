/**
 * ChunkFetcher over what the publisher really writes: a copy of the fixture zstd and none
 * datalakes (large-file and many-files paths) indexed by indexStorePath (`narfs index
 * --seekable`, src/index), served by a real HTTP server on 127.0.0.1. The reader side is
 * the one a mount has: narinfo and `.narfs-index` fetched over HTTP, the index verified
 * against the fixture key and bound to the narinfo, then every chunk of every file read
 * by range (seekable frames for zstd, plain ranges for none) and compared with the NAR.
 *
 * Also the round-trip count of issue 10's "time to the first byte of a file inside a
 * store path not yet fetched" with a 20 ms latency per request (HttpDatalakeServer's
 * link model): narinfo + index + one ranged read = 3 requests.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DatalakeSet } from '../../src/datalake/datalake-set.js';
import { FileDatalake } from '../../src/datalake/file-datalake.js';
import { FileDatalakeWriter } from '../../src/datalake/file-datalake-writer.js';
import { HttpDatalake } from '../../src/datalake/http-datalake.js';
import { indexStorePath } from '../../src/index/index-store-path.js';
import { chunkCount, parseNarIndex, verifyNarIndex, NAR_INDEX_SUFFIX, type IndexedFile, type NarIndex } from '../../src/nix/nar-index.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { parsePublicKey, parseSecretKey } from '../../src/nix/signature.js';
import { ChunkFetcher } from '../../src/store/chunk-fetcher.js';
import { ChunkVerifyPool } from '../../src/store/chunk-verify-pool.js';
import { hashPart, loadFixtures, narInfoPath, pathByRole, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';

describe('ChunkFetcher over indexes published by narfs index --seekable', function () {
  this.timeout(300_000);
  let fx: Fixtures;
  let tmp: string;
  let pool: ChunkVerifyPool;
  const roles = ['large-file', 'many-files'] as const;

  const publishing = new Map<string, Promise<string>>();
  /** A copy of `lake` with just `roles`' narinfos and NARs, indexed by the publisher (once). */
  function published(lake: 'zstd' | 'none'): Promise<string> {
    if (!publishing.has(lake)) publishing.set(lake, publish(lake));
    return publishing.get(lake)!;
  }

  async function publish(lake: 'zstd' | 'none'): Promise<string> {
    const dir = path.join(tmp, lake);
    await fsp.mkdir(path.join(dir, 'nar'), { recursive: true });
    const from = fx.datalakes[lake].dir;
    await fsp.copyFile(path.join(from, 'nix-cache-info'), path.join(dir, 'nix-cache-info'));
    for (const role of roles) {
      const p = pathByRole(fx, role);
      const niFile = narInfoPath(from, p.storePath);
      const ni = parseNarInfo(await fsp.readFile(niFile, 'utf8'));
      await fsp.copyFile(niFile, path.join(dir, path.basename(niFile)));
      await fsp.copyFile(path.join(from, ni.url), path.join(dir, ni.url));
    }
    const reader = new FileDatalake(`file://${dir}`);
    const writer = new FileDatalakeWriter(`file://${dir}`);
    const secretKey = parseSecretKey((await fsp.readFile(fx.secretKeyFile, 'utf8')).trim());
    try {
      await reader.open();
      for (const role of roles) {
        const r = await indexStorePath(hashPart(pathByRole(fx, role).storePath), {
          reader, writer, secretKey, chunkSize: 256 * 1024, seekable: true, zstdLevel: 3,
        });
        assert.equal(r.status, 'indexed');
        assert.equal(r.reencoded, lake === 'zstd');
      }
    } finally {
      await reader.close();
      await writer.close();
    }
    return dir;
  }

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-published-'));
    pool = new ChunkVerifyPool();
  });
  after(async function () {
    await pool?.close();
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  });

  for (const lake of ['zstd', 'none'] as const) {
    it(`${lake}: every chunk of every file, read by range over HTTP, is the NAR's`, async function () {
      const dir = await published(lake);
      const server = await HttpDatalakeServer.start({ root: dir });
      const set = new DatalakeSet([new HttpDatalake(server.url)]);
      const fetcher = new ChunkFetcher({ datalakes: set, verifyPool: pool, readAheadChunks: 0 });
      try {
        await set.open();
        const d = set.datalakes[0]!;
        const key = parsePublicKey(fx.publicKey);
        for (const role of roles) {
          const p = pathByRole(fx, role);
          const ni = parseNarInfo((await set.getBytesFrom(d, `${hashPart(p.storePath)}.narinfo`))!.toString('utf8'));
          const idx = parseNarIndex((await set.getBytesFrom(d, `${hashPart(p.storePath)}${NAR_INDEX_SUFFIX}`))!);
          verifyNarIndex(idx, ni, [key], true);
          assert.equal(ni.compression, lake, 'the narinfo points at the seekable NAR (or stays none)');
          assert.equal(idx.frames !== undefined, lake === 'zstd');
          const noneNi = parseNarInfo(await fsp.readFile(narInfoPath(fx.datalakes.none.dir, p.storePath), 'utf8'));
          const nar = await fsp.readFile(path.join(fx.datalakes.none.dir, noneNi.url));
          const got = new Map<string, Buffer>();
          const onChunk = async (f: IndexedFile, k: number, b: Buffer) => void got.set(`${f.narOffset}:${k}`, Buffer.from(b));
          const src = { datalake: d, narUrl: ni.url, compression: ni.compression, narInfo: ni };
          await Promise.all(idx.files.map((f) =>
            fetcher.fetch(src, idx, f, 0, chunkCount(f.size, idx.chunkSize) - 1, onChunk, new AbortController().signal)));
          for (const f of idx.files) {
            for (let k = 0; k < chunkCount(f.size, idx.chunkSize); k++) {
              const from = f.narOffset + k * idx.chunkSize;
              assert.deepEqual(got.get(`${f.narOffset}:${k}`), nar.subarray(from, Math.min(from + idx.chunkSize, f.narOffset + f.size)));
            }
          }
        }
        assert.equal(fetcher.stats.mismatches, 0);
      } finally {
        fetcher.close();
        await set.close();
        await server.close();
      }
    });
  }

  it('zstd: the small files that share a frame come along with the one read, verified (one request for the frame, not one per file)', async function () {
    const dir = await published('zstd');
    const server = await HttpDatalakeServer.start({ root: dir });
    const set = new DatalakeSet([new HttpDatalake(server.url)]);
    const fetcher = new ChunkFetcher({ datalakes: set, verifyPool: pool, readAheadChunks: 0 });
    try {
      await set.open();
      const d = set.datalakes[0]!;
      const p = pathByRole(fx, 'many-files');
      const ni = parseNarInfo((await set.getBytesFrom(d, `${hashPart(p.storePath)}.narinfo`))!.toString('utf8'));
      const idx = parseNarIndex((await set.getBytesFrom(d, `${hashPart(p.storePath)}${NAR_INDEX_SUFFIX}`))!);
      const noneNi = parseNarInfo(await fsp.readFile(narInfoPath(fx.datalakes.none.dir, p.storePath), 'utf8'));
      const nar = await fsp.readFile(path.join(fx.datalakes.none.dir, noneNi.url));
      const got = new Map<number, Buffer>();
      const onChunk = async (f: IndexedFile, k: number, b: Buffer) => {
        assert.equal(k, 0);
        got.set(f.narOffset, Buffer.from(b));
      };
      const src = { datalake: d, narUrl: ni.url, compression: ni.compression, narInfo: ni };
      const small = idx.files.filter((f) => f.size < idx.chunkSize);
      assert.ok(small.length > 10, 'many small files');
      const before = fetcher.stats.requests;
      await fetcher.fetch(src, idx, small[0]!, 0, 0, onChunk, new AbortController().signal);
      // Deliveries of the others are not awaited by the reader: wait for them (bounded).
      for (let i = 0; i < 200 && fetcher.stats.framedAlong > got.size - 1; i++) await new Promise((r) => setImmediate(r));
      assert.equal(fetcher.stats.requests - before, 1);
      assert.ok(fetcher.stats.framedAlong > 0 && got.size > 1, `came along: ${fetcher.stats.framedAlong}`);
      for (const [off, b] of got) {
        const f = idx.files.find((x) => x.narOffset === off)!;
        assert.deepEqual(b, nar.subarray(off, off + f.size), `the file at ${off} is the NAR's`);
      }
      // Reading one that came along costs no request when the caller holds it.
      const second = small.find((f) => got.has(f.narOffset) && f !== small[0]);
      assert.ok(second);
    } finally {
      fetcher.close();
      await set.close();
      await server.close();
    }
  });

  it('zstd: every whole file of a frame of more than 256 files comes along with the last one, verified (no count cap)', async function () {
    const dir = await published('zstd');
    const server = await HttpDatalakeServer.start({ root: dir });
    const set = new DatalakeSet([new HttpDatalake(server.url)]);
    const fetcher = new ChunkFetcher({ datalakes: set, verifyPool: pool, readAheadChunks: 0 });
    try {
      await set.open();
      const d = set.datalakes[0]!;
      const p = pathByRole(fx, 'many-files');
      const ni = parseNarInfo((await set.getBytesFrom(d, `${hashPart(p.storePath)}.narinfo`))!.toString('utf8'));
      const idx = parseNarIndex((await set.getBytesFrom(d, `${hashPart(p.storePath)}${NAR_INDEX_SUFFIX}`))!);
      const fr = idx.frames!;
      // The frame holding the most whole files.
      const inFrame = (i: number): IndexedFile[] => {
        const a = fr.narOffsets[i]!;
        const b = i + 1 < fr.narOffsets.length ? fr.narOffsets[i + 1]! : idx.narSize;
        return idx.files.filter((f) => f.narOffset >= a && f.narOffset + f.size <= b);
      };
      let best: IndexedFile[] = [];
      for (let i = 0; i < fr.narOffsets.length; i++) {
        const fs = inFrame(i);
        if (fs.length > best.length) best = fs;
      }
      assert.ok(best.length > 256, `a frame of ${best.length} files`);
      const got = new Set<number>();
      const onChunk = async (f: IndexedFile) => void got.add(f.narOffset);
      const src = { datalake: d, narUrl: ni.url, compression: ni.compression, narInfo: ni };
      await fetcher.fetch(src, idx, best.at(-1)!, 0, 0, onChunk, new AbortController().signal);
      for (let i = 0; i < 1000 && got.size < best.length; i++) await new Promise((r) => setImmediate(r));
      assert.equal(fetcher.stats.requests, 1);
      assert.equal(best.filter((f) => !got.has(f.narOffset)).length, 0, 'files of the frame that did not come along');
    } finally {
      fetcher.close();
      await set.close();
      await server.close();
    }
  });

  it('first byte of a file in the middle of a large NAR: 3 requests (narinfo, index, one range) at 20 ms each', async function () {
    const dir = await published('zstd');
    const server = await HttpDatalakeServer.start({ root: dir });
    const set = new DatalakeSet([new HttpDatalake(server.url)]);
    const fetcher = new ChunkFetcher({ datalakes: set, verifyPool: pool });
    try {
      await set.open();
      const d = set.datalakes[0]!;
      // Warm: the TCP connections of each pool exist (as on a mount that has been up a while).
      const p = pathByRole(fx, 'large-file');
      await set.getBytesFrom(d, 'nix-cache-info');
      server.link({ latencyMs: 20 });
      const key = parsePublicKey(fx.publicKey);
      // As a mount does it: narinfo, then index, then the chunk; and with narinfo and index
      // asked for together (both names follow from the hash part): one round trip less.
      for (const parallel of [false, true]) {
        const before = server.totalRequests;
        const t0 = performance.now();
        const niRel = `${hashPart(p.storePath)}.narinfo`;
        const idxRel = `${hashPart(p.storePath)}${NAR_INDEX_SUFFIX}`;
        let niBytes: Buffer | undefined;
        let idxBytes: Buffer | undefined;
        if (parallel) [niBytes, idxBytes] = await Promise.all([set.getBytesFrom(d, niRel), set.getBytesFrom(d, idxRel)]);
        else {
          niBytes = await set.getBytesFrom(d, niRel);
          idxBytes = await set.getBytesFrom(d, idxRel);
        }
        const t1 = performance.now();
        const ni = parseNarInfo(niBytes!.toString('utf8'));
        const idx: NarIndex = parseNarIndex(idxBytes!);
        verifyNarIndex(idx, ni, [key], true);
        const t2 = performance.now();
        const file = idx.files.find((f) => f.size === 40 << 20)!;
        const k = Math.floor(chunkCount(file.size, idx.chunkSize) / 2) + (parallel ? 10 : 0); // the middle of the 40 MiB file (not adjacent: no read-ahead)
        let first: Buffer | undefined;
        await fetcher.fetch({ datalake: d, narUrl: ni.url, compression: ni.compression, narInfo: ni }, idx, file, k, k,
          async (_f, _k, b) => void (first ??= Buffer.from(b)), new AbortController().signal);
        const t3 = performance.now();
        const requests = server.totalRequests - before;
        process.stderr.write(
          `      [measure] first byte of chunk ${k} of a 40 MiB file (NAR ${(ni.narSize / 2 ** 20).toFixed(1)} MiB, seekable zstd, ` +
            `narinfo+index ${parallel ? 'together' : 'one after the other'}): ${requests} requests, ${(t3 - t0).toFixed(1)} ms ` +
            `(metadata ${(t1 - t0).toFixed(1)}, parse+verify index ${(t2 - t1).toFixed(1)}, ranged chunk ${(t3 - t2).toFixed(1)}) at 20 ms per request\n`,
        );
        assert.equal(requests, 3, 'narinfo, index, one ranged read');
        assert.ok(first && first.length === idx.chunkSize);
      }
    } finally {
      fetcher.close();
      await set.close();
      await server.close();
    }
  });
});
