/**
 * Round trips of LazyStore on indexed store paths over a real HTTP datalake (127.0.0.1,
 * HttpDatalakeServer counting requests): a copy of the fixture none and zstd datalakes'
 * many-files path (3000 small files, one directory of 1000), indexed by the publisher
 * (indexStorePath, `narfs index --seekable`), read through the store stack a mount uses.
 *
 * Covered (issue 10, "first use is one round trip per file"):
 * - reading N small files of one directory costs O(1) ranged requests, not N (neighbourhood
 *   fetch), none and seekable zstd, every byte right;
 * - a full read of the path costs far fewer ranged requests than it has files (neighbours,
 *   then escalation to a bulk fetch);
 * - a walk of a path whose NAR file is within walk-whole-bytes fetches the whole NAR once
 *   instead (none and seekable zstd), keeps the signed tree, and goes back to ranges when
 *   the whole NAR cannot be had;
 * - a byte flipped inside a neighbour is never cached or served (the neighbour's own read
 *   fails with ERR_CHUNK_HASH_MISMATCH), while the file asked for reads right;
 * - a trace replay fetches a path's traced files in a few coalesced requests, not one each;
 * - misses that jump into three subdirectories of one directory bring its subtree's small
 *   files at once: a fourth subdirectory is read without a request (subtree rule).
 * Waits are on events or on the fetcher going idle, bounded by a deadline.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { NarfsError, isNarfsError } from '../../src/errors.js';
import { FileDatalake } from '../../src/datalake/file-datalake.js';
import { FileDatalakeWriter } from '../../src/datalake/file-datalake-writer.js';
import { indexStorePath } from '../../src/index/index-store-path.js';
import { findFile, parseNarIndex, NAR_INDEX_SUFFIX, type IndexedFile, type NarIndex } from '../../src/nix/nar-index.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { parseSecretKey, parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import type { LazyFetchSettings } from '../../src/config/mount-config.js';
import { replayTrace, TRACE_HEADER } from '../../src/daemon/read-trace.js';
import { directoriesOf, frameSpan } from '../../src/store/neighbourhood.js';
import { hashPart, loadFixtures, narInfoPath, pathByRole, FIXTURE_BUILD_TIMEOUT_MS, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { failure } from '../support/failure.js';

describe('LazyStore: round trips of indexed paths (neighbourhood, escalation, trace replay)', function () {
  this.timeout(300_000);
  let fx: Fixtures;
  let tmp: string;
  const published = new Map<string, Promise<string>>();

  async function publish(lake: 'zstd' | 'none'): Promise<string> {
    const dir = path.join(tmp, lake);
    await fsp.mkdir(path.join(dir, 'nar'), { recursive: true });
    const from = fx.datalakes[lake].dir;
    await fsp.copyFile(path.join(from, 'nix-cache-info'), path.join(dir, 'nix-cache-info'));
    const p = pathByRole(fx, 'many-files');
    const niFile = narInfoPath(from, p.storePath);
    const ni = parseNarInfo(await fsp.readFile(niFile, 'utf8'));
    await fsp.copyFile(niFile, path.join(dir, path.basename(niFile)));
    await fsp.copyFile(path.join(from, ni.url), path.join(dir, ni.url));
    const reader = new FileDatalake(`file://${dir}`);
    const writer = new FileDatalakeWriter(`file://${dir}`);
    const secretKey = parseSecretKey((await fsp.readFile(fx.secretKeyFile, 'utf8')).trim());
    try {
      await reader.open();
      const r = await indexStorePath(hashPart(p.storePath), { reader, writer, secretKey, chunkSize: 256 * 1024, seekable: true, zstdLevel: 3 });
      assert.equal(r.status, 'indexed');
    } finally {
      await reader.close();
      await writer.close();
    }
    return dir;
  }
  const lakeDir = (lake: 'zstd' | 'none'): Promise<string> => {
    if (!published.has(lake)) published.set(lake, publish(lake));
    return published.get(lake)!;
  };

  interface Env {
    server: HttpDatalakeServer;
    stack: StoreStack;
    logs: LogLine[];
    name: string;
    idx: NarIndex;
    ni: NarInfo;
    nar: Buffer;
    narRequests: () => number;
    close: () => Promise<void>;
  }

  async function open(lake: 'zstd' | 'none', lazyFetch?: LazyFetchSettings): Promise<Env> {
    const dir = await lakeDir(lake);
    const p = pathByRole(fx, 'many-files');
    const name = path.basename(p.storePath);
    const ni = parseNarInfo(await fsp.readFile(narInfoPath(dir, p.storePath), 'utf8'));
    const idx = parseNarIndex(await fsp.readFile(path.join(dir, `${hashPart(p.storePath)}${NAR_INDEX_SUFFIX}`)));
    const noneNi = parseNarInfo(await fsp.readFile(narInfoPath(fx.datalakes.none.dir, p.storePath), 'utf8'));
    const nar = await fsp.readFile(path.join(fx.datalakes.none.dir, noneNi.url));
    const server = await HttpDatalakeServer.start({ root: dir });
    const cacheDir = await fsp.mkdtemp(path.join(tmp, 'cache-'));
    const logs: LogLine[] = [];
    const stack = await openStoreStack({
      datalakes: [server.url], trustedPublicKeys: parseTrustedPublicKeys(fx.publicKey), requireSigs: true, cacheDir, negativeTtlMs: 1000,
      ...(lazyFetch ? { lazyFetch } : {}),
    }, captureLogger(logs));
    return {
      server, stack, logs, name, idx, ni, nar,
      narRequests: () => server.count(ni.url),
      close: async () => {
        await stack.close();
        await server.close();
        await fsp.rm(cacheDir, { recursive: true, force: true });
      },
    };
  }

  /** The files of the largest directory of the path, in NAR order. */
  function bigDirectory(idx: NarIndex): IndexedFile[] {
    const dirs = directoriesOf(idx);
    const count = new Map<number, number>();
    for (const d of dirs) count.set(d, (count.get(d) ?? 0) + 1);
    const top = [...count].sort((a, b) => b[1] - a[1])[0]![0];
    return idx.files.filter((_, i) => dirs[i] === top);
  }

  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  async function readAll(e: Env, f: IndexedFile): Promise<Buffer> {
    return e.stack.store.read(e.name, f.narOffset, f.size, AbortSignal.timeout(60_000));
  }

  /** Writes a read trace of `traced` (files of e's path) to `tmp/file`; returns its path. */
  async function writeTrace(e: Env, file: string, traced: readonly IndexedFile[]): Promise<string> {
    const trace = path.join(tmp, file);
    await fsp.writeFile(trace, `${TRACE_HEADER}\n${traced.map((f) => `${e.name}\t${f.narOffset}\n`).join('')}`);
    return trace;
  }

  /** Resolves once the chunk fetcher has nothing in flight or queued (background fetches settled). */
  async function idle(e: Env): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (e.stack.chunks.requestsInFlight > 0 || e.stack.chunks.queuedRequests > 0) {
      if (Date.now() > deadline) throw new Error('the chunk fetcher did not go idle');
      await new Promise((r) => setTimeout(r, 5));
    }
    // Deliveries (verification, cache writes) run after the request ends.
    await new Promise((r) => setTimeout(r, 50));
  }

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-region-'));
  });
  after(async function () {
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  });

  for (const lake of ['none', 'zstd'] as const) {
    it(`${lake}: reading 40 small files of one directory (every 5th) one after another costs O(1) ranged requests, not 40`, async function () {
      const e = await open(lake);
      try {
        await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
        const files = bigDirectory(e.idx);
        assert.ok(files.length >= 500, `a directory of ${files.length} files`);
        // Every 5th file from the 300th: in seekable frames of many small files, past the
        // first 256 files of a frame (what frames used to bring along).
        const some = files.filter((_, i) => i >= 300 && i % 5 === 0).slice(0, 40);
        for (const f of some) {
          const got = await readAll(e, f);
          assert.equal(sha(got), f.sha256.toString('hex'));
        }
        assert.ok(e.narRequests() <= 4, `${e.narRequests()} ranged requests for ${some.length} files`);
      } finally {
        await e.close();
      }
    });
  }

  it('zstd: files that only came along in a decoded frame are served from memory without a request, and written to the cache only once read or wanted', async function () {
    const e = await open('zstd', { neighbourBytes: 0, escalateShare: 0, escalateStreak: 0, wholeNarMaxBytes: 0 });
    try {
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      const files = bigDirectory(e.idx);
      const x = files[300]!;
      const span = frameSpan(e.idx, x.narOffset, x.narOffset + x.size);
      assert.ok(span, 'the file lies in seekable frames');
      const mates = files.filter((f) => f !== x && f.size > 0 && f.narOffset >= span.start && f.narOffset + f.size <= span.end);
      assert.ok(mates.length >= 10, `${mates.length} files share its frames`);
      assert.equal(sha(await readAll(e, x)), x.sha256.toString('hex'));
      await idle(e);
      await e.stack.store.flushStaged();
      const requests = e.narRequests();
      assert.ok(e.stack.blobs.completePath(x.sha256, x.size) !== undefined, 'the file read is committed');
      // Before: every frame-mate was written as a blob (a file creation each), read or not.
      const written = mates.filter((f) => e.stack.blobs.completePath(f.sha256, f.size) !== undefined);
      assert.equal(written.length, 0, `${written.length} of ${mates.length} unread frame-mates written to the cache`);
      const read = mates.slice(0, 5);
      for (const f of read) assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
      assert.equal(e.narRequests(), requests, 'frame-mates read without a request');
      await e.stack.store.flushStaged();
      for (const f of read) assert.ok(e.stack.blobs.completePath(f.sha256, f.size) !== undefined, 'a frame-mate read is committed');
      // A bulk fetch (narfs prefetch) wants every file: those held along are committed, not fetched again.
      await e.stack.store.prefetchPath(e.name, AbortSignal.timeout(120_000));
      for (const f of mates) assert.ok(e.stack.blobs.completePath(f.sha256, f.size) !== undefined, 'prefetch commits what came along');
    } finally {
      await e.close();
    }
  });

  it('none: a reader walking the path in NAR order escalates to a bulk fetch after a streak of misses, long before a quarter of its bytes', async function () {
    // Neighbours off, so that every file is a miss of its own: the walk is what escalates.
    // walk-whole-bytes off: the rest comes by range (the whole-NAR switch is tested below).
    const e = await open('none', { neighbourBytes: 0, escalateStreak: 8, walkWholeBytes: 0 });
    try {
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      // Files in NAR order (as a copy reads them) from the start of a directory through
      // two more: the shortest such run, well under a quarter of the path's bytes.
      const dirs = directoriesOf(e.idx);
      const nonEmpty = e.idx.files.map((f, i) => ({ f, d: dirs[i]! })).filter((x) => x.f.size > 0);
      let walked: IndexedFile[] = nonEmpty.map((x) => x.f);
      for (let a = 0; a < nonEmpty.length; a++) {
        const seen = new Set<number>();
        let b = a;
        while (b < nonEmpty.length && (seen.size < 3 || b - a < 12)) seen.add(nonEmpty[b++]!.d);
        if (seen.size >= 3 && b - a < walked.length) walked = nonEmpty.slice(a, b).map((x) => x.f);
      }
      assert.ok(walked.length <= e.idx.files.length / 10, `a walk over 3 directories of ${walked.length} files`);
      for (const f of walked) assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
      assert.equal(e.stack.store.counters.escalations, 1, 'escalated on the walk');
      await e.stack.store.prefetchPath(e.name, AbortSignal.timeout(60_000));
      const n = e.narRequests();
      assert.ok(n <= walked.length + 8, `${n} ranged requests: the rest came in bulk`);
    } finally {
      await e.close();
    }
  });

  for (const lake of ['none', 'zstd'] as const) {
    it(`${lake}: a reader copying the path in NAR order, neighbours on and held files served without the store (as the native engine does), escalates to a bulk fetch within 8 files of its third directory`, async function () {
      // Ranged even when small (the zstd NAR of this path would otherwise be fetched whole),
      // and the walk's rest by range too (walk-whole-bytes off).
      const e = await open(lake, { wholeNarMaxBytes: 0, walkWholeBytes: 0 });
      try {
        await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
        // Where the walk enters its third directory (a walk must cross 3, or 8 MiB of files).
        const dirs = directoriesOf(e.idx);
        const seen = new Set<number>();
        let third = -1;
        e.idx.files.forEach((f, i) => {
          if (f.size === 0 || third >= 0) return;
          seen.add(dirs[i]!);
          if (seen.size === 3) third = i;
        });
        assert.ok(third > 0 && third < e.idx.files.length / 4, `third directory at file ${third}`);
        let at: number | undefined;
        for (const [i, f] of e.idx.files.entries()) {
          if (f.size === 0) continue;
          // A committed file is served by the engine from the cache file: the store never sees that read.
          const local = e.stack.store.contentFile(e.name, f.narOffset);
          const got = local ? (await fsp.readFile(local.path)).subarray(local.offset, local.offset + f.size) : await readAll(e, f);
          assert.equal(sha(got), f.sha256.toString('hex'));
          if (at === undefined && e.stack.store.counters.escalations > 0) at = i;
        }
        // Before: only misses counted, and a file served without the store broke their
        // streak: the path escalated on a quarter of its bytes (none: 700 files in) or never
        // (zstd: its frames bring whole directories, so few misses).
        assert.ok(at !== undefined && at <= third + 8, `escalated at file ${at ?? '(never)'}, the third directory starts at ${third}`);
        assert.equal(e.stack.store.counters.escalations, 1);
        await idle(e);
        const n = e.narRequests();
        assert.ok(n <= 40, `${n} ranged requests for ${e.idx.files.length} files`);
      } finally {
        await e.close();
      }
    });
  }

  /**
   * Reads every file of e's path in NAR order as a copy does: a file the cache holds is
   * read from its local file (the engine serves those in C), and through the store when
   * that file is gone before it is opened (a failed NAR's staging file: the engine's open
   * falls back to JS so) or does not pass the engine's check of it (native/src/session.h
   * backingCovers).
   */
  async function walk(e: Env): Promise<void> {
    for (const f of e.idx.files) {
      if (f.size === 0) continue;
      const local = e.stack.store.contentFile(e.name, f.narOffset);
      const got = (local && await readLocal(local.path, local.offset, f.size, local.size)) ?? await readAll(e, f);
      assert.equal(sha(got), f.sha256.toString('hex'));
    }
  }
  /**
   * `size` bytes at `offset` of local file `path`, declared `total` bytes long, as the
   * engine's open checks it (backingCovers: a regular file no longer than `total` that
   * holds the range); undefined when it is gone or fails that check (JS serves it then).
   */
  async function readLocal(path: string, offset: number, size: number, total: number): Promise<Buffer | undefined> {
    let fh: FileHandle;
    try {
      fh = await fsp.open(path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > total || offset + size > st.size) return undefined;
      const buf = Buffer.alloc(size);
      const { bytesRead } = await fh.read(buf, 0, size, offset);
      assert.equal(bytesRead, size, `${path} holds ${size} bytes at ${offset}`);
      return buf;
    } finally {
      await fh.close();
    }
  }
  /** The NAR bytes of the seekable frames that lie wholly within the first `fileBytes` bytes of the NAR file. */
  function framesWithin(idx: NarIndex, fileBytes: number): number {
    const fr = idx.frames!;
    let reach = 0;
    for (let i = 0; i < fr.fileOffsets.length; i++) {
      const end = i + 1 < fr.fileOffsets.length ? fr.fileOffsets[i + 1]! : fr.fileSize;
      if (end > fileBytes) break;
      reach = i + 1 < fr.narOffsets.length ? fr.narOffsets[i + 1]! : idx.narSize;
    }
    return reach;
  }
  const wholeGets = (e: Env): number => e.server.requests.filter((r) => r.relPath === e.ni.url && r.headers.range === undefined).length;
  /** Resolves once the Materialiser has no NAR in flight or in commit. */
  async function committed(e: Env): Promise<void> {
    for (const until = Date.now() + 60_000; e.stack.materialiser.busy;) {
      if (Date.now() > until) throw new Error('the materialiser did not finish');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  for (const lake of ['none', 'zstd'] as const) {
    it(`${lake}: a walk of a path whose NAR file is within walk-whole-bytes fetches the whole NAR once instead of the rest by range; every byte right, and the signed tree stays stored`, async function () {
      const e = await open(lake, { wholeNarMaxBytes: 0 });
      try {
        await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
        await walk(e);
        assert.equal(e.stack.store.counters.escalations, 1);
        assert.equal(e.stack.store.counters.walkWholeNars, 1, 'the walk switched the path to its whole NAR');
        assert.equal(wholeGets(e), 1, 'one GET of the whole NAR');
        const ranged = e.narRequests() - wholeGets(e);
        assert.ok(ranged <= 40, `${ranged} ranged requests (before the walk was seen) for ${e.idx.files.length} files`);
        await committed(e);
        for (const f of e.idx.files) {
          if (f.size > 0) assert.ok(e.stack.blobs.completePath(f.sha256, f.size) !== undefined, `file at ${f.narOffset} is in the cache`);
        }
        // The Materialiser's own tree has no chunk hashes: the signed one must stay, so a
        // file evicted later comes back by range.
        const stored = await e.stack.trees.lookup(e.ni);
        assert.equal(stored.state === 'ok' ? stored.tree.source : stored.state, 'signed');
      } finally {
        await e.close();
      }
    });
  }

  it('none: a walk of a path whose NAR file is larger than walk-whole-bytes fetches the rest by range, no whole NAR', async function () {
    const e = await open('none', { wholeNarMaxBytes: 0, walkWholeBytes: 64 * 1024 });
    try {
      assert.ok(e.ni.narSize > 64 * 1024);
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      await walk(e);
      assert.equal(e.stack.store.counters.escalations, 1);
      assert.equal(e.stack.store.counters.walkWholeNars, 0);
      await idle(e);
      assert.equal(wholeGets(e), 0);
    } finally {
      await e.close();
    }
  });

  it('none: when the whole NAR of a walked path cannot be had, the path goes back to ranges and the rest comes in bulk: every byte right, a warning logged', async function () {
    // Neighbours and subtrees off: without the bulk fetch, every file would cost a request.
    const e = await open('none', { wholeNarMaxBytes: 0, neighbourBytes: 0, subtreeBytes: 0 });
    try {
      // Ranged GETs are served, a GET of the whole NAR is answered 404.
      e.server.wholeStatus(e.ni.url, 404);
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      await walk(e);
      assert.equal(e.stack.store.counters.walkWholeNars, 1);
      assert.ok(wholeGets(e) >= 1, 'the whole NAR was asked for');
      assert.equal(e.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('the whole NAR of a walked store path could not be had')).length, 1, 'one warning says why');
      // The rest came in bulk ranged requests, not one request per file.
      const ranged = e.narRequests() - wholeGets(e);
      assert.ok(ranged <= e.idx.files.length / 10, `${ranged} ranged requests for ${e.idx.files.length} files`);
    } finally {
      await e.close();
    }
  });

  for (const lake of ['none', 'zstd'] as const) {
    it(`${lake}: the files of a walked path are served as its whole NAR streams, each checked against the signed index, not after the NAR's end (its GET stalls part way)`, async function () {
      const e = await open(lake, { wholeNarMaxBytes: 0, neighbourBytes: 0, subtreeBytes: 0 });
      try {
        const fileSize = (await fsp.stat(path.join(await lakeDir(lake), e.ni.url))).size;
        // The whole GET sends part of its body, then nothing until the stack closes; ranged
        // GETs are served. None: 60 % of the NAR. Seekable: every frame but the last (a
        // ranged read brings a whole frame, so the files after the switch that the stream
        // serves lie in the frames after the reader's first).
        const last = lake === 'zstd' ? e.idx.frames!.fileOffsets.length - 1 : 0;
        assert.ok(lake === 'none' || last >= 2, 'the seekable NAR has three frames or more');
        const sent = lake === 'none' ? Math.floor(fileSize * 0.6) : e.idx.frames!.fileOffsets[last]! + 1;
        e.server.stallBody(e.ni.url, sent).onlyWhole(e.ni.url);
        await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
        // The part of the NAR the stalled body holds.
        const reach = lake === 'none' ? sent : framesWithin(e.idx, sent);
        let switched: number | undefined;
        let after = 0;
        for (const f of e.idx.files) {
          if (f.size === 0) continue;
          if (switched !== undefined && f.narOffset + f.size > reach) break;
          assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
          if (switched !== undefined) after++;
          else if (e.stack.store.counters.walkWholeNars === 1) switched = f.narOffset;
        }
        assert.ok(switched !== undefined, 'the walk switched the path to its whole NAR');
        assert.ok(after >= 100, `${after} files read after the switch, within the bytes the stalled GET sent (switched at ${switched}, reach ${reach})`);
        assert.ok(e.stack.store.counters.streamedReads >= after / 2, `${e.stack.store.counters.streamedReads} reads served from the streaming NAR`);
        assert.equal(wholeGets(e), 1);
        assert.ok(e.stack.materialiser.inFlight(e.name) !== undefined, 'the whole NAR never ended: the reads did not wait for it');
      } finally {
        await e.close();
      }
    });
  }

  it('none: once a reader of a walked path gave up at its deadline waiting for the stalled NAR, the next reader is served by range at once', async function () {
    const e = await open('none', { wholeNarMaxBytes: 0, neighbourBytes: 0, subtreeBytes: 0 });
    try {
      const fileSize = (await fsp.stat(path.join(await lakeDir('none'), e.ni.url))).size;
      const sent = Math.floor(fileSize * 0.6);
      e.server.stallBody(e.ni.url, sent).onlyWhole(e.ni.url);
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      for (const f of e.idx.files) {
        if (f.size === 0) continue;
        assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
        if (e.stack.store.counters.walkWholeNars === 1) break;
      }
      assert.equal(e.stack.store.counters.walkWholeNars, 1, 'the walk switched the path to its whole NAR');
      const [far, next] = e.idx.files.filter((f) => f.size > 0 && f.narOffset > sent);
      assert.ok(far && next, 'two files lie past the bytes the stalled GET sent');
      const waits = async () => {
        for (const until = Date.now() + 60_000; e.stack.materialiser.streamWaiters(e.name) === 0;) {
          if (Date.now() > until) throw new Error('the reader never waited for the streaming NAR');
          await new Promise((r) => setTimeout(r, 5));
        }
      };
      // A reader interrupted while it waits (not its deadline: the path stays on its whole
      // NAR) leaves no waiter behind on the fetch, which may go on for long.
      const ac0 = new AbortController();
      const interrupted = e.stack.store.read(e.name, far.narOffset, far.size, ac0.signal);
      await waits();
      ac0.abort();
      await assert.rejects(interrupted, (err: unknown) => isNarfsError(err, 'ERR_ABORTED'));
      assert.equal(e.stack.materialiser.streamWaiters(e.name), 0, 'the interrupted reader left no waiter');
      // The next reader waits for its file in the stalled NAR, then its deadline ends it.
      const ac = new AbortController();
      const waiting = e.stack.store.read(e.name, far.narOffset, far.size, ac.signal);
      await waits();
      ac.abort(new NarfsError('ERR_DEADLINE', 'the test reader\'s deadline'));
      await assert.rejects(waiting, (err: unknown) => isNarfsError(err, 'ERR_DEADLINE'));
      assert.equal(e.stack.materialiser.streamWaiters(e.name), 0, 'the reader that gave up left no waiter');
      // Before: each later reader waited out its own deadline for the same stalled NAR.
      assert.equal(sha(await readAll(e, next)), next.sha256.toString('hex'));
      assert.equal(e.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('the whole NAR of a walked store path could not be had')).length, 1);
      assert.ok(e.stack.materialiser.inFlight(e.name) !== undefined, 'the stalled NAR is still in flight: the read did not wait for it');
    } finally {
      await e.close();
    }
  });

  it('none: a file whose bytes in the streaming NAR of a walked path are wrong is never served from it; it is read right by range once the NAR fails its NarHash', async function () {
    const e = await open('none', { wholeNarMaxBytes: 0, neighbourBytes: 0, subtreeBytes: 0 });
    try {
      const bad = e.idx.files[Math.floor(e.idx.files.length * 0.7)]!;
      // The whole NAR has one byte of that file flipped; ranged GETs are right.
      e.server.transform(e.ni.url, (b) => {
        const out = Buffer.from(b);
        out[bad.narOffset] = out[bad.narOffset]! ^ 0x01;
        return out;
      }).onlyWhole(e.ni.url);
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      await walk(e);
      assert.equal(e.stack.store.counters.walkWholeNars, 1);
      assert.ok(e.stack.store.counters.streamedReads > 0, 'files before and after the bad one were served as the NAR streamed');
      assert.ok(e.logs.some((l) => l.level === 'error' && JSON.stringify(l).includes('ERR_NAR_HASH_MISMATCH')), 'the NAR failed its NarHash');
      assert.equal(e.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('the whole NAR of a walked store path could not be had')).length, 1);
      // The reader waiting for the bad file heard the walk's fetch fail; it did not fetch
      // the whole NAR again itself.
      assert.equal(wholeGets(e), 1);
      // Nothing of the bad NAR reached the cache: the bad file's blob is the right bytes.
      await idle(e);
      const held = e.stack.blobs.completePath(bad.sha256, bad.size);
      if (held !== undefined) assert.equal(sha(await fsp.readFile(held)), bad.sha256.toString('hex'));
    } finally {
      await e.close();
    }
  });

  it('none: neither a program picking files (every other one) nor one reading a whole directory in order escalates on a streak', async function () {
    const e = await open('none', { neighbourBytes: 0, escalateStreak: 8 });
    try {
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      const picked = e.idx.files.filter((f) => f.size > 0).filter((_, i) => i % 2 === 0).slice(0, 20);
      for (const f of picked) assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
      assert.equal(e.stack.store.counters.escalations, 0);
      // One directory's files in order (a program loading every module of it): not a walk of the path.
      const oneDir = bigDirectory(e.idx).filter((f) => f.size > 0).slice(100, 130);
      for (const f of oneDir) assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
      assert.equal(e.stack.store.counters.escalations, 0);
    } finally {
      await e.close();
    }
  });

  it('none: a full read of the path costs far fewer ranged requests than it has files, every byte right', async function () {
    const e = await open('none', { walkWholeBytes: 0 });
    try {
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      for (const f of e.idx.files) {
        const got = await readAll(e, f);
        assert.equal(sha(got), f.sha256.toString('hex'));
      }
      const n = e.narRequests();
      assert.ok(n <= e.idx.files.length / 20, `${n} ranged requests for ${e.idx.files.length} files`);
      assert.equal(e.stack.store.counters.escalations, 1, 'the path escalated to a bulk fetch once');
    } finally {
      await e.close();
    }
  });

  it('none: a byte flipped inside a neighbour is never cached or served; the file asked for reads right', async function () {
    const e = await open('none');
    try {
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      const files = bigDirectory(e.idx);
      const asked = files[300]!;
      const bad = files[301]!;
      const at = bad.narOffset + Math.floor(bad.size / 2);
      // The whole NAR file is transformed, then the range cut from it (Compression none:
      // file offset = NAR offset).
      e.server.transform(e.ni.url, (body) => {
        const b = Buffer.from(body);
        b[at] = b[at]! ^ 0x40;
        return b;
      });
      const got = await readAll(e, asked);
      assert.equal(sha(got), asked.sha256.toString('hex'));
      await idle(e);
      assert.ok(e.stack.chunks.stats.mismatches >= 1, 'the neighbour was fetched and failed verification');
      assert.equal(e.stack.blobs.completePath(bad.sha256, bad.size), undefined, 'the bad neighbour was not cached');
      // Deliveries (verification, cache writes) end after the requests: wait for the good one.
      const good = files[299]!;
      for (const until = Date.now() + 30_000; e.stack.blobs.completePath(good.sha256, good.size) === undefined && Date.now() < until;) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(e.stack.blobs.completePath(good.sha256, good.size) !== undefined, 'a good neighbour was cached');
      // Its own read fetches it again, gets the flipped byte again, and fails.
      await failure(readAll(e, bad), 'ERR_CHUNK_HASH_MISMATCH');
      assert.ok(e.logs.some((l) => (l.fields.err as { code?: string } | undefined)?.code === 'ERR_CHUNK_HASH_MISMATCH'));
    } finally {
      await e.close();
    }
  });

  it('none: a trace replay and a reader resolving the same path at once ask for its narinfo and index before any range, the index once, and no .ls', async function () {
    const e = await open('none');
    try {
      const traced = bigDirectory(e.idx).filter((_, i) => i % 7 === 0).slice(0, 50);
      const trace = await writeTrace(e, 'trace-meta', traced);
      const replay = replayTrace(trace, e.stack.store, captureLogger([]), AbortSignal.timeout(120_000));
      const f = traced[3]!;
      const [r, got] = await Promise.all([replay, readAll(e, f)]);
      assert.deepEqual({ files: r.files, failed: r.failed }, { files: traced.length, failed: 0 });
      assert.equal(sha(got), f.sha256.toString('hex'));
      const hp = e.ni.storePath.hashPart;
      // Before: the index twice (both resolves asked early) and the .ls (up to MiBs) beside it.
      assert.equal(e.server.count(`${hp}${NAR_INDEX_SUFFIX}`), 1, 'index requests');
      assert.equal(e.server.count(`${hp}.ls`), 0, '.ls requests of an indexed path');
      const order = e.server.requests.map((q) => q.relPath);
      const firstRange = order.indexOf(e.ni.url);
      assert.ok(firstRange > 0, 'ranged requests were made');
      const lastMeta = Math.max(order.lastIndexOf(`${hp}${NAR_INDEX_SUFFIX}`), order.lastIndexOf(`${hp}.narinfo`));
      assert.ok(lastMeta >= 0 && lastMeta < firstRange, `narinfo and index before the first range: ${order.join(' ')}`);
    } finally {
      await e.close();
    }
  });

  it('none: reads of traced files while the replay fetches them join its requests and send none of their own', async function () {
    const traceOf = async (e: Env): Promise<{ trace: string; traced: IndexedFile[] }> => {
      const traced = bigDirectory(e.idx).filter((_, i) => i % 7 === 0).slice(0, 60);
      return { trace: await writeTrace(e, 'trace-join', traced), traced };
    };
    // The replay alone, on a fresh cache: how many ranged requests it takes.
    let alone: number;
    const a = await open('none');
    try {
      const { trace } = await traceOf(a);
      await a.stack.store.resolve(a.name, AbortSignal.timeout(60_000));
      await replayTrace(trace, a.stack.store, captureLogger([]), AbortSignal.timeout(120_000));
      await idle(a);
      alone = a.narRequests();
    } finally {
      await a.close();
    }
    const e = await open('none');
    try {
      const { trace, traced } = await traceOf(e);
      await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
      e.server.hold(e.ni.url);
      const replay = replayTrace(trace, e.stack.store, captureLogger([]), AbortSignal.timeout(120_000));
      await e.server.waitForRequest(e.ni.url, 1);
      // Its requests are held at the server: every traced file is on its way. Read some.
      const reads = traced.slice(10, 16).map((f) => readAll(e, f).then((b) => assert.equal(sha(b), f.sha256.toString('hex'))));
      for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
      e.server.release(e.ni.url);
      await Promise.all([replay, ...reads]);
      await idle(e);
      // Before: each read was a miss of its own and fetched its untraced siblings (neighbours).
      assert.equal(e.narRequests(), alone, `ranged requests with the reads: ${e.narRequests()}, the replay alone: ${alone}`);
      assert.equal(e.stack.store.counters.neighbourFetches, 0, 'neighbourhood fetches');
    } finally {
      await e.close();
    }
  });

  it('none: a trace replay fetches 300 traced files of a path in a few coalesced requests, not one each', async function () {
    const e = await open('none');
    try {
      const traced = e.idx.files.filter((_, i) => i % 7 === 0).slice(0, 300);
      const trace = await writeTrace(e, 'trace', traced);
      const logs: LogLine[] = [];
      const r = await replayTrace(trace, e.stack.store, captureLogger(logs), AbortSignal.timeout(120_000));
      assert.deepEqual({ files: r.files, failed: r.failed }, { files: traced.length, failed: 0 });
      for (const f of traced) assert.ok(e.stack.blobs.completePath(f.sha256, f.size) !== undefined, 'traced file cached');
      assert.ok(e.narRequests() <= 10, `${e.narRequests()} ranged requests for ${traced.length} traced files`);
    } finally {
      await e.close();
    }
  });
  /** The indexed file at `rel` (e.g. `d05/f50`) of the many-files path. */
  function fileAt(idx: NarIndex, rel: string): IndexedFile {
    let n = idx.root;
    for (const part of rel.split('/')) n = (n.type === 'directory' ? n.entries.get(part) : undefined) ?? assert.fail(`no ${rel}`);
    assert.equal(n.type, 'regular');
    return findFile(idx, n.type === 'regular' ? n.narOffset : -1) ?? assert.fail(`${rel} is not indexed`);
  }

  for (const subtreeBytes of [undefined, 0]) {
    it(`none: misses jumping into three subdirectories ${subtreeBytes === 0 ? 'with the subtree rule off cost a request per new directory' : 'bring the small files of their parent\'s subtree: a fourth is read without a request'}`, async function () {
      // Siblings and escalation off: only the subtree rule can bring files along.
      const e = await open('none', { neighbourBytes: 0, escalateShare: 0, escalateStreak: 0, wholeNarMaxBytes: 0, ...(subtreeBytes === undefined ? {} : { subtreeBytes }) });
      try {
        await e.stack.store.resolve(e.name, AbortSignal.timeout(60_000));
        for (const rel of ['d05/f50', 'd12/f10', 'd03/f70']) {
          const f = fileAt(e.idx, rel);
          assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
        }
        await idle(e);
        const before = e.narRequests();
        const later = ['d17/f00', 'd17/f99', 'flat/f0500', 'd00/f01'].map((rel) => fileAt(e.idx, rel));
        for (const f of later) assert.equal(sha(await readAll(e, f)), f.sha256.toString('hex'));
        if (subtreeBytes === 0) {
          assert.equal(e.stack.store.counters.subtreeFetches, 0);
          assert.ok(e.narRequests() >= before + later.length, `${e.narRequests() - before} requests for ${later.length} files in other directories`);
        } else {
          assert.equal(e.stack.store.counters.subtreeFetches, 1, 'one subtree fetch');
          assert.equal(e.narRequests(), before, 'the files of other subdirectories came with the subtree');
        }
      } finally {
        await e.close();
      }
    });
  }
});
