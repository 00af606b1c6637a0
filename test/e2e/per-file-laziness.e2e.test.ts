/**
 * End to end, per-file laziness on a real mount: fixture datalakes (built by real Nix)
 * copied and indexed by `narfs index` (none as it is, zstd re-encoded `--seekable`), then:
 *
 * - every store path reads byte-exact (`nix hash path` = NarHash), the large file by
 *   ranged, verified chunk reads, never its whole NAR;
 * - a 1 MiB read in the middle of a 40 MiB file over HTTP fetches at most 1.5x what it
 *   read, in one ranged request after the narinfo and the index;
 * - a walked path whose whole GET stalls part way is read in C (native engine) from its
 *   staging file while the NAR still streams: no location refused, READs not sent to JS;
 * - a NAR byte flipped under an index is never served (EIO, ERR_CHUNK_HASH_MISMATCH
 *   logged) while other chunks still read, and reads right once the byte is restored;
 * - an index signed by an untrusted key is ignored with a warning: the path is read whole;
 * - with a cache bound, a workload twice its size reads byte-exact, the bound holds, and a
 *   file held open is never evicted;
 * - `--record-trace` then `--prefetch-trace` fetches the traced files before any read,
 *   and `narfs prefetch` fetches a closure through the control socket;
 * - `narfs prefetch --trace FILE` (the real CLI, a separate process) replays a trace on a
 *   running daemon with an empty cache: afterwards the traced files read byte-exact with no
 *   datalake request; with `--detach` it returns at once and the daemon's log says when the
 *   files are in; an unreadable trace is a usage error (exit 2), a trace whose every file
 *   fails exits 1.
 *
 * Reads go through child processes (dd, sha256sum, nix): the daemon runs in this process,
 * and a read from its own event loop would wait on itself.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, type Fixtures } from '../support/fixtures.js';
import { EVENT_TIMEOUT_MS, NIX_ENV, run, withMount, type TestMount } from '../support/mount-harness.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { indexCommand } from '../../src/index/index-command.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseNarIndex, findFile, NAR_INDEX_SUFFIX } from '../../src/nix/nar-index.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { stringBytes, type NarNode } from '../../src/nix/nar-listing.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';
import { prefetchCommand } from '../../src/cli/prefetch-command.js';
import { NARFS_BIN, spawnNarfs, startNarfsMount } from '../support/cli-daemon.js';

const MiB = 1 << 20;
/** FUSE_READ (linux/fuse.h). */
const FUSE_READ = 15;

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

async function mountedSha(path: string): Promise<string> {
  const r = await run('sha256sum', [path]);
  assert.equal(r.code, 0, `sha256sum ${path}: ${r.stderr}`);
  // sha256sum marks a name with a backslash or newline by a leading backslash.
  return r.stdout.split(' ')[0]!.replace(/^\\/, '');
}

/** `count` MiB at MiB `skip` of `path`, read by dd in a child process. */
async function ddSha(path: string, skip: number, count: number): Promise<{ code: number; sha: string; stderr: string }> {
  const r = await run('bash', ['-c', `set -o pipefail; dd if="$1" bs=1M skip=${skip} count=${count} iflag=direct status=none | sha256sum`, 'dd', path]);
  return { code: r.code, sha: r.stdout.split(' ')[0] ?? '', stderr: r.stderr };
}

function localSlice(path: string, skip: number, count: number): string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(count * MiB);
    const n = readSync(fd, buf, 0, buf.length, skip * MiB);
    return createHash('sha256').update(buf.subarray(0, n)).digest('hex');
  } finally {
    closeSync(fd);
  }
}

/** Every regular file under a local store path (relative paths). */
function filesUnder(root: string, rel = ''): string[] {
  const out: string[] = [];
  const st = statSync(join(root, rel), { throwIfNoEntry: false });
  if (!st) return out;
  if (st.isFile()) return [rel];
  if (!st.isDirectory()) return out;
  for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...filesUnder(root, r));
    else if (e.isFile()) out.push(r);
  }
  return out;
}

async function blobBytes(cacheDir: string): Promise<number> {
  let total = 0;
  for (const d of ['blobs', 'partial']) {
    const walk = (p: string): void => {
      let entries;
      try {
        entries = readdirSync(p, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (e.isDirectory()) walk(join(p, e.name));
        else {
          // What the store counts: a complete file's size, a sparse partial file's chunks on disk.
          const st = statSync(join(p, e.name));
          total += d === 'blobs' ? st.size : st.blocks * 512;
        }
      }
    };
    walk(join(cacheDir, d));
  }
  return total;
}

/** Bytes the cache holds once at most `bound` (re-checked as files go), or after 30 s. */
async function untilWithin(cacheDir: string, bound: number): Promise<number> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const held = await blobBytes(cacheDir);
    if (held <= bound || Date.now() > deadline) return held;
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function index(dir: string, keyFile: string, seekable: boolean): Promise<void> {
  const code = await indexCommand(['--secret-key-file', keyFile, ...(seekable ? ['--seekable'] : []), `file://${dir}`]);
  assert.equal(code, 0, `narfs index ${dir} exited ${code}`);
}

describe('e2e: per-file laziness (signed indexes, ranged reads, bounded content-addressed cache)', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let root: string;
  let lakes: { none: string; zstd: string; xz: string; xzPlain: string; otherKey: string };
  let large: { base: string; rel: string; local: string; size: number };

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fixtures = await loadFixtures();
    root = mkdtempSync(join(tmpdir(), 'narfs-perfile-'));
    lakes = { none: join(root, 'none'), zstd: join(root, 'zstd'), xz: join(root, 'xz'), xzPlain: join(root, 'xz-plain'), otherKey: join(root, 'other-key') };
    cpSync(fixtures.datalakes.none.dir, lakes.none, { recursive: true });
    cpSync(fixtures.datalakes.zstd.dir, lakes.zstd, { recursive: true });
    cpSync(fixtures.datalakes.xz.dir, lakes.xz, { recursive: true });
    cpSync(fixtures.datalakes.xz.dir, lakes.xzPlain, { recursive: true });
    cpSync(fixtures.datalakes.none.dir, lakes.otherKey, { recursive: true });
    await index(lakes.none, fixtures.secretKeyFile, false);
    await index(lakes.zstd, fixtures.secretKeyFile, true);
    await index(lakes.xz, fixtures.secretKeyFile, true);
    await index(lakes.xzPlain, fixtures.secretKeyFile, false);
    await index(lakes.otherKey, fixtures.otherSecretKeyFile, false);
    const base = storePathBase(parseStorePath(fixtures.largeFile.storePath));
    large = { base, rel: fixtures.largeFile.relPath, local: join(fixtures.largeFile.storePath, fixtures.largeFile.relPath), size: fixtures.largeFile.size };
  });

  after(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const mountOf = (dir: string) => ({ datalakes: [`file://${dir}`], trustedPublicKeys: fixtures.publicKey });

  const KINDS = [
    { kind: 'none', what: 'none, indexed', ranged: true },
    { kind: 'zstd', what: 'zstd re-encoded --seekable', ranged: true },
    { kind: 'xz', what: 'xz re-encoded --seekable', ranged: true },
    { kind: 'xzPlain', what: 'xz indexed but not re-encoded (read whole, tree from the index)', ranged: false },
  ] as const;
  for (const { kind, what, ranged } of KINDS) {
    it(`serves every path byte-exact from a datalake: ${what}`, async function () {
      const dir = lakes[kind];
      const problems: string[] = [];
      await withMount(mountOf(dir), async (m) => {
        // The large file first, alone: by range when the NAR allows it, never its whole NAR then.
        assert.equal((await ddSha(join(m.mnt, large.base, large.rel), 20, 1)).sha, localSlice(large.local, 20, 1));
        if (ranged) {
          assert.ok(m.running.store.counters.rangedReads > 0, 'a ranged read happened');
          assert.equal(m.running.materialiser.fetches, 0, 'no whole NAR was fetched for the large file');
        } else {
          assert.equal(m.running.store.counters.rangedReads, 0);
          assert.ok(m.running.materialiser.fetches > 0, 'the NAR was fetched whole');
        }
        for (const p of fixtures.paths) {
          const b = storePathBase(parseStorePath(p.storePath));
          const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(m.mnt, b)], NIX_ENV);
          if (h.code !== 0) problems.push(`nix hash path ${b}: ${h.stderr.trim()}`);
          else if (`sha256:${h.stdout.trim()}` !== p.narHash) problems.push(`${b}: sha256:${h.stdout.trim()} != ${p.narHash}`);
        }
        for (const l of m.logs.filter((x) => x.level === 'error' || (x.level === 'warn' && /index/.test(x.msg)))) problems.push(`${l.level}: ${l.msg} ${JSON.stringify(l.fields)}`);
      });
      assert.deepEqual(problems, []);
    });
  }

  it('under a low descriptor limit, reads of more files than it allows stay byte-exact (C holds at most half of it)', async function () {
    const mnt = mkdtempSync(join(tmpdir(), 'narfs-nofile-'));
    const cache = mkdtempSync(join(tmpdir(), 'narfs-nofile-cache-'));
    const limit = 512;
    const d = await startNarfsMount([mnt, '--datalake', `file://${lakes.none}`, '--trusted-public-keys', fixtures.publicKey, '--cache-dir', cache],
      undefined, { wrap: (argv) => ['prlimit', [`--nofile=${limit}:${limit}`, '--', ...argv]] });
    try {
      const many = fixtures.paths.find((p) => filesUnder(p.storePath).length > 2 * limit);
      assert.ok(many, `a fixture path with more than ${2 * limit} files`);
      const b = storePathBase(parseStorePath(many.storePath));
      const sums = (dir: string) => run('bash', ['-c', 'cd "$(dirname "$1")" && find "$(basename "$1")" -type f -print0 | sort -z | xargs -0 -r sha256sum', 'sums', dir]);
      const [got, want] = [await sums(join(mnt, b)), await sums(many.storePath)];
      assert.equal(got.code, 0, got.stderr);
      assert.equal(got.stdout, want.stdout);
      // Again, now that every file is cached: the engine serves what it may, JS the rest.
      const again = await sums(join(mnt, b));
      assert.equal(again.stdout, want.stdout);
      // At the cap C lets go of files no longer open (sha256sum closed them) and keeps
      // serving: nothing was refused, so no warning (it was logged, and every later file
      // read through JS, while JS counted its pushes against the cap on its own).
      assert.doesNotMatch(d.stderr.join(''), /as many (open )?cached files as the descriptor limit allows/);
    } finally {
      await d.stop();
      await run('fusermount', ['-uz', mnt]);
      rmSync(mnt, { recursive: true, force: true });
      rmSync(cache, { recursive: true, force: true });
    }
  });

  it('a 1 MiB read inside a 40 MiB file over HTTP fetches <= 1.5x what it read, after the narinfo and the index', async function () {
    const server = await HttpDatalakeServer.start({ root: lakes.none, latencyMs: 20 });
    try {
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        const before = { n: server.totalRequests, bytes: server.bodyBytesSent, log: server.requests.length };
        const r = await ddSha(join(m.mnt, large.base, large.rel), 17, 1);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.sha, localSlice(large.local, 17, 1));
        const asked = server.requests.slice(before.log).map((q) => q.relPath);
        const narRequests = asked.filter((p) => p.startsWith('nar/'));
        const hashPart = large.base.slice(0, 32);
        assert.ok(asked.includes(`${hashPart}.narinfo`) && asked.includes(`${hashPart}${NAR_INDEX_SUFFIX}`), `asked: ${asked.join(', ')}`);
        assert.ok(narRequests.length >= 1 && narRequests.length <= 2, `NAR requests: ${narRequests.length} (${asked.join(', ')})`);
        const smallFiles = asked.filter((p) => !p.startsWith('nar/'))
          .reduce((n, p) => n + (statSync(join(lakes.none, p), { throwIfNoEntry: false })?.size ?? 0), 0);
        const narBytes = server.bodyBytesSent - before.bytes - smallFiles;
        assert.ok(narBytes <= 1.5 * MiB, `fetched ${narBytes} NAR bytes for a 1 MiB read`);
      });
    } finally {
      await server.close();
    }
  });

  it('a walked path is read in C from its NAR as it streams: the engine opens files of a staging file still being written (its whole GET stalls part way)', async function () {
    if (fuseBackendOf({} as never) !== 'native') this.skip();
    const many = fixtures.paths.find((p) => filesUnder(p.storePath).length >= 1000);
    assert.ok(many, 'a fixture path with 1000 files or more');
    const base = storePathBase(parseStorePath(many.storePath));
    const hashPart = base.slice(0, 32);
    const ni = parseNarInfo(readFileSync(join(lakes.none, `${hashPart}.narinfo`), 'utf8'));
    const idx = parseNarIndex(readFileSync(join(lakes.none, `${hashPart}${NAR_INDEX_SUFFIX}`)));
    // Its regular files (size > 0) in NAR order, with their paths.
    const files: Array<{ rel: string; narOffset: number; size: number; sha: string }> = [];
    const shaAt = new Map(idx.files.map((f) => [f.narOffset, f.sha256.toString('hex')]));
    const visit = (node: NarNode, rel: string): void => {
      if (node.type === 'directory') for (const [name, child] of node.entries) visit(child, rel ? `${rel}/${stringBytes(name).toString('utf8')}` : stringBytes(name).toString('utf8'));
      else if (node.type === 'regular' && node.size > 0) files.push({ rel, narOffset: node.narOffset, size: node.size, sha: shaAt.get(node.narOffset)! });
    };
    visit(idx.root, '');
    // The whole GET (none: the NAR itself) sends 60 % of the NAR, then nothing until the
    // server closes; ranged GETs are served.
    const sent = Math.floor(ni.narSize * 0.6);
    const server = await HttpDatalakeServer.start({ root: lakes.none });
    server.stallBody(ni.url, sent).onlyWhole(ni.url);
    try {
      // Every file is read by range until the walk is seen (no neighbours, no subtrees, no
      // small path fetched whole at once).
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, extra: { lazyFetch: { wholeNarMaxBytes: 0, neighbourBytes: 0, subtreeBytes: 0 } } }, async (m) => {
        const dir = join(m.mnt, base);
        let k = 0;
        for (; k < files.length && m.running.store.counters.walkWholeNars === 0; k++) {
          assert.equal(await mountedSha(join(dir, files[k]!.rel)), files[k]!.sha, files[k]!.rel);
        }
        assert.equal(m.running.store.counters.walkWholeNars, 1, 'the walk switched the path to its whole NAR');
        // The files after the switch that the stalled GET holds, once the verify worker
        // has told them (each checked against the signed index).
        const rest = files.slice(k).filter((f) => f.narOffset + f.size <= sent - 1024);
        assert.ok(rest.length >= 200, `${rest.length} files past the switch lie within the bytes sent`);
        const last = rest[rest.length - 1]!;
        for (const until = Date.now() + EVENT_TIMEOUT_MS; !m.running.store.contentFile(base, last.narOffset);) {
          if (Date.now() > until) throw new Error(`the streaming NAR never reached ${last.rel}`);
          await new Promise((r) => setTimeout(r, 20));
        }
        const list = join(root, 'streamed-files');
        writeFileSync(list, rest.map((f) => join(dir, f.rel)).join('\n') + '\n');
        const before = m.running.engine.stats()!;
        const r = await run('sh', ['-c', 'xargs -d "\\n" sha256sum < "$1"', 'sh', list]);
        const after = m.running.engine.stats()!;
        assert.equal(r.code, 0, r.stderr);
        const got = r.stdout.trim().split('\n').map((l) => l.split(' ')[0]);
        assert.deepEqual(got, rest.map((f) => f.sha), 'every file read right');
        const toJs = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
        // Before: C refused every staging file shorter than its NAR (the size it was told),
        // so each of these OPENs fell back to JS, and every READ with it.
        assert.equal(after.locationFallbacks - before.locationFallbacks, 0, 'C refused no location');
        assert.ok(after.locationOpens - before.locationOpens >= rest.length / 2, `C opened ${after.locationOpens - before.locationOpens} of ${rest.length} files from their locations`);
        assert.ok(toJs(FUSE_READ) <= rest.length / 10, `${toJs(FUSE_READ)} READs of ${rest.length} files reached JS`);
        assert.ok(m.running.materialiser.inFlight(base) !== undefined, 'the whole NAR is still in flight: the files came from its staging file as it was written');
      });
    } finally {
      await server.close();
    }
  });

  it('a second resolve while the index is in flight waits for it: an open hint never fetches the whole NAR of an indexed path', async function () {
    const server = await HttpDatalakeServer.start({ root: lakes.none });
    const hashPart = large.base.slice(0, 32);
    try {
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        const store = m.running.store;
        server.hold(`${hashPart}${NAR_INDEX_SUFFIX}`);
        const sig = AbortSignal.timeout(60_000);
        const first = store.resolve(large.base, sig);
        await server.waitForRequest(`${hashPart}${NAR_INDEX_SUFFIX}`, 1);
        const second = store.resolve(large.base, sig);
        // The second must not settle on the unsigned .ls while the index is held.
        const early = await Promise.race([second.then(() => 'settled'), new Promise((r) => setTimeout(() => r('waiting'), 1000))]);
        server.release(`${hashPart}${NAR_INDEX_SUFFIX}`);
        await Promise.all([first, second]);
        assert.equal(early, 'waiting', 'the second resolve waited for the index in flight');
        const idx = parseNarIndex(readFileSync(join(lakes.none, `${hashPart}${NAR_INDEX_SUFFIX}`)));
        const file = idx.files.find((f) => f.size === large.size)!;
        const before = server.requests.length;
        store.prefetch(large.base, file.narOffset);
        assert.equal((await ddSha(join(m.mnt, large.base, large.rel), 8, 1)).sha, localSlice(large.local, 8, 1));
        assert.equal(m.running.materialiser.fetches, 0, 'no whole NAR fetched');
        const narBytes = server.requests.slice(before).filter((q) => q.relPath.startsWith('nar/')).length;
        assert.ok(narBytes <= 4, `ranged requests only: ${narBytes}`);
      });
    } finally {
      await server.close();
    }
  });

  it('never serves a chunk whose bytes do not match the index; other chunks read; a fixed NAR reads right', async function () {
    const dir = join(root, 'flip');
    cpSync(lakes.none, dir, { recursive: true });
    const ni = parseNarInfo(readFileSync(join(dir, `${large.base.slice(0, 32)}.narinfo`), 'utf8'));
    const idx = parseNarIndex(readFileSync(join(dir, `${large.base.slice(0, 32)}${NAR_INDEX_SUFFIX}`)));
    const file = idx.files.find((f) => f.size === large.size)!;
    assert.ok(file && findFile(idx, file.narOffset) === file);
    const narPath = join(dir, ni.url);
    const at = file.narOffset + 5 * MiB + 1234; // inside MiB 5 of the file
    const fd = openSync(narPath, 'r+');
    const orig = Buffer.alloc(1);
    readSync(fd, orig, 0, 1, at);
    writeSync(fd, Buffer.from([orig[0]! ^ 0x40]), 0, 1, at);
    closeSync(fd);
    await withMount(mountOf(dir), async (m) => {
      const p = join(m.mnt, large.base, large.rel);
      const bad = await ddSha(p, 5, 1);
      assert.notEqual(bad.code, 0, 'the damaged chunk was served');
      assert.match(bad.stderr, /Input\/output error/);
      await m.waitForLog((l) => JSON.stringify(l.fields).includes('ERR_CHUNK_HASH_MISMATCH'), 'ERR_CHUNK_HASH_MISMATCH logged');
      assert.equal((await ddSha(p, 30, 1)).sha, localSlice(large.local, 30, 1), 'another chunk still reads');
      const fd2 = openSync(narPath, 'r+');
      writeSync(fd2, orig, 0, 1, at);
      closeSync(fd2);
      const good = await ddSha(p, 5, 1);
      assert.equal(good.code, 0, good.stderr);
      assert.equal(good.sha, localSlice(large.local, 5, 1));
    });
  });

  it('ignores an index signed by an untrusted key (warning) and reads the path whole', async function () {
    await withMount(mountOf(lakes.otherKey), async (m) => {
      assert.equal((await ddSha(join(m.mnt, large.base, large.rel), 3, 1)).sha, localSlice(large.local, 3, 1));
      await m.waitForLog((l) => l.msg === 'published index ignored; the path is read whole' && JSON.stringify(l.fields).includes('ERR_INDEX_SIGNATURE'), 'the untrusted index is ignored with its code');
      assert.equal(m.running.store.counters.rangedReads, 0);
      assert.ok(m.running.materialiser.fetches > 0, 'the NAR was fetched whole');
    });
  });

  it('keeps a cache bound under a workload twice its size, byte-exact, never evicting a file held open', async function () {
    const bound = 12 * MiB;
    // The file to hold open: its name must round-trip through JS strings.
    const plain = fixtures.paths.filter((p) => !p.storePath.includes('byte-names'));
    const held = plain.map((p) => ({ p, files: filesUnder(p.storePath) }))
      .flatMap(({ p, files }) => files.map((f) => ({ p, f, size: statSync(join(p.storePath, f)).size })))
      .sort((a, b) => b.size - a.size).find((x) => x.size < 4 * MiB)!;
    assert.ok(held && held.size > 0, 'a fixture file under 4 MiB to hold open');
    await withMount({ ...mountOf(lakes.none), extra: { cacheMaxBytes: bound } }, async (m) => {
      const heldPath = join(m.mnt, storePathBase(parseStorePath(held.p.storePath)), held.f);
      const want = sha256File(join(held.p.storePath, held.f));
      // A child that opens the file, reads it, waits, then reads it again through the same descriptor.
      const child = spawn(process.execPath, ['-e', `
        const fs = require('fs'), c = require('crypto');
        const fd = fs.openSync(process.argv[1], 'r');
        const read = () => { const st = fs.fstatSync(fd); const b = Buffer.alloc(st.size); fs.readSync(fd, b, 0, st.size, 0); return c.createHash('sha256').update(b).digest('hex'); };
        process.stdout.write(read() + '\\n');
        process.stdin.once('data', () => { process.stdout.write(read() + '\\n'); fs.closeSync(fd); process.exit(0); });`, heldPath], { stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', () => { if (out.includes('\n')) resolve(); });
        child.on('exit', (c) => reject(new Error(`holder exited ${c}`)));
      });
      assert.equal(out.trim(), want);
      const heldBlob = join(m.cacheDir, 'blobs', want.slice(0, 2), want);
      // The workload: every file of every path, twice (each pass is over twice the bound).
      let readBytes = 0;
      const problems: string[] = [];
      const sums = (dir: string) => run('bash', ['-c', 'cd "$(dirname "$1")" && find "$(basename "$1")" -type f -print0 | sort -z | xargs -0 -r sha256sum', 'sums', dir]);
      for (let pass = 0; pass < 2; pass++) {
        for (const p of fixtures.paths) {
          const b = storePathBase(parseStorePath(p.storePath));
          const [got, want] = [await sums(join(m.mnt, b)), await sums(p.storePath)];
          if (got.code !== 0 || got.stdout !== want.stdout) problems.push(`${b}: ${got.stderr.trim() || 'contents differ'}`);
          readBytes += p.narSize;
          // The kernel sends RELEASE after the reader exits: the bound may wait for it.
          const held = await untilWithin(m.cacheDir, bound);
          if (held > bound) problems.push(`cache holds ${held} bytes > bound ${bound}`);
        }
      }
      assert.ok(readBytes >= 2 * bound, `workload ${readBytes} bytes`);
      assert.deepEqual(problems, []);
      assert.ok(m.running.stack.blobs.stats().evictions > 0, 'something was evicted');
      assert.ok(statSync(heldBlob, { throwIfNoEntry: false }), 'the file held open is still in the cache');
      child.stdin.write('\n');
      await new Promise<void>((resolve) => child.on('exit', () => resolve()));
      assert.equal(out.trim().split('\n')[1], want, 'the held descriptor still reads the right bytes');
    });
  });

  it('records the files a workload read and prefetches them on the next mount; narfs prefetch fetches a closure', async function () {
    const trace = join(root, 'trace.txt');
    const server = await HttpDatalakeServer.start({ root: lakes.none });
    try {
      const targets = [{ skip: 2 }, { skip: 25 }];
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, extra: { recordTrace: trace } }, async (m) => {
        for (const t of targets) assert.equal((await ddSha(join(m.mnt, large.base, large.rel), t.skip, 1)).sha, localSlice(large.local, t.skip, 1));
      });
      const lines = readFileSync(trace, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
      assert.deepEqual(lines.map((l) => l.split('\t')[0]), [large.base], `trace: ${lines.join(' | ')}`);
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, extra: { prefetchTrace: trace } }, async (m) => {
        await m.waitForLog((l) => l.msg === 'prefetch trace replayed', 'the trace replayed');
        const n = server.requests.length;
        assert.equal((await mountedSha(join(m.mnt, large.base, large.rel))), sha256File(large.local));
        const narAfter = server.requests.slice(n).filter((q) => q.relPath.startsWith('nar/'));
        assert.equal(narAfter.length, 0, 'the traced file was local before it was read');
      });
      // narfs prefetch through the control socket: the top's closure, then reads cost no NAR request.
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m: TestMount) => {
        const sink = Object.assign(Object.create(process.stderr) as NodeJS.WriteStream, { isTTY: false, write: () => true });
        const code = await prefetchCommand({ cacheDir: m.cacheDir, roots: [fixtures.top] }, sink);
        assert.equal(code, 0);
        const n = server.requests.length;
        const closure = new Set<string>([fixtures.top]);
        for (let grew = true; grew;) {
          grew = false;
          for (const p of fixtures.paths) {
            if (!closure.has(p.storePath)) continue;
            for (const r of p.references) if (!closure.has(r)) { closure.add(r); grew = true; }
          }
        }
        for (const p of fixtures.paths.filter((x) => closure.has(x.storePath))) {
          const b = storePathBase(parseStorePath(p.storePath));
          const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(m.mnt, b)], NIX_ENV);
          assert.equal(`sha256:${h.stdout.trim()}`, p.narHash, `${b}: ${h.stderr}`);
        }
        const nar = server.requests.slice(n).filter((q) => q.relPath.startsWith('nar/'));
        assert.deepEqual(nar.map((q) => q.relPath), [], 'no NAR request after the prefetch');
      });
    } finally {
      await server.close();
    }
    writeFileSync(trace, '');
  });

  it('narfs prefetch --trace replays a recorded trace on a running daemon: then the traced files read with no request; --detach, also through the C client; usage errors', async function () {
    const trace = join(root, 'trace-running.txt');
    const server = await HttpDatalakeServer.start({ root: lakes.none });
    // The workload: two MiB of the large file and a few small files of other paths.
    const small: Array<{ base: string; rel: string; local: string }> = [];
    for (const p of fixtures.paths) {
      const b = storePathBase(parseStorePath(p.storePath));
      if (b === large.base || p.storePath.endsWith('.drv')) continue;
      for (const rel of filesUnder(p.storePath).slice(0, 2)) if (small.length < 4) small.push({ base: b, rel, local: join(p.storePath, rel) });
    }
    assert.ok(small.length >= 2, `small files of the fixtures: ${small.map((f) => f.rel).join(' ')}`);
    const readAll = async (mnt: string) => {
      for (const skip of [2, 25]) assert.equal((await ddSha(join(mnt, large.base, large.rel), skip, 1)).sha, localSlice(large.local, skip, 1), `${large.rel} MiB ${skip}`);
      for (const f of small) assert.equal(await mountedSha(join(mnt, f.base, f.rel)), sha256File(f.local), `${f.base}/${f.rel}`);
    };
    /** The daemon logs the replay of every file of `trace`, none failed; then the traced files read with no request. */
    const replayServes = async (m: TestMount, what: string) => {
      const files = new Set(readFileSync(trace, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'))).size;
      const replayed = await m.waitForLog((l) => l.msg === 'prefetch trace replayed' && l.fields.path === 'narfs prefetch --trace' && l.fields.files === files, `the replay of ${what}`);
      assert.equal(replayed.fields.failed, 0, JSON.stringify(replayed.fields));
      const n = server.requests.length;
      await readAll(m.mnt);
      assert.deepEqual(server.requests.slice(n).map((q) => q.relPath), [], `no datalake request after ${what}`);
    };
    const cli = async (args: string[]) => {
      const c = spawnNarfs(['prefetch', ...args]);
      const code = await c.exit;
      return { code, stderr: c.stderr.join('') };
    };
    try {
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey, extra: { recordTrace: trace } }, async (m) => readAll(m.mnt));
      const traced = new Set(readFileSync(trace, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split('\t')[0]));
      assert.deepEqual([...traced].sort(), [...new Set([large.base, ...small.map((f) => f.base)])].sort(), 'the trace names the paths read');

      // Without --detach: the command returns when the files are in.
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        const r = await cli(['--trace', trace, '--cache-dir', m.cacheDir]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /replayed the trace: (\d+)\/\1 files/, r.stderr);
        const n = server.requests.length;
        await readAll(m.mnt);
        assert.deepEqual(server.requests.slice(n).map((q) => q.relPath), [], 'no datalake request after narfs prefetch --trace');
      });

      // --detach: returns once the daemon accepted; its log says when the files are in.
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        const missing = await cli(['--trace', join(root, 'no-such-trace.txt'), '--cache-dir', m.cacheDir]);
        assert.equal(missing.code, 2, missing.stderr);
        assert.match(missing.stderr, /ERR_USAGE.*--trace .*no-such-trace\.txt: cannot read it/, missing.stderr);
        assert.match(missing.stderr, /hint: .*--record-trace/, missing.stderr);
        assert.ok(!m.logs.some((l) => l.msg === 'prefetch trace replayed'), 'nothing was sent for an unreadable trace');

        const gone = join(root, 'gone-trace.txt');
        writeFileSync(gone, `# narfs read trace 1\n${'0'.repeat(32)}-not-in-any-datalake\t128\n`);
        const allFailed = await cli(['--trace', gone, '--cache-dir', m.cacheDir]);
        assert.equal(allFailed.code, 1, `a trace whose every file failed: ${allFailed.stderr}`);
        assert.match(allFailed.stderr, /replayed the trace: 0\/1 files .*1 failed/, allFailed.stderr);

        const r = await cli(['--trace', trace, '--detach', '--cache-dir', m.cacheDir]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /goes on in the daemon/, r.stderr);
        // The replay of `gone` logged the same message before: this one is the trace's.
        await replayServes(m, 'narfs prefetch --trace --detach');
      });

      // bin/narfs run as a program: the C client hands the trace to the daemon, no node
      // (a PATH without it); the replay then serves the traced files as above.
      await withMount({ datalakes: [server.url], trustedPublicKeys: fixtures.publicKey }, async (m) => {
        const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const c = spawn(NARFS_BIN, ['prefetch', '--trace', trace, '--detach', '--cache-dir', m.cacheDir], { env: { PATH: '/var/empty' }, stdio: ['ignore', 'ignore', 'pipe'] });
          let stderr = '';
          c.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
          c.on('close', (code) => resolve({ code, stderr }));
        });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, 'narfs: prefetch goes on in the daemon; its log says when it is done\n');
        await replayServes(m, 'the fast narfs prefetch --trace --detach');
      });
    } finally {
      await server.close();
    }
  });
});
