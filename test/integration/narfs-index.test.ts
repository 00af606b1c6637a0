/**
 * `narfs index` against copies of the fixture datalakes (real NARs written by real Nix):
 * every index verifies with the fixture key and is bound to its narinfo, every chunk hash
 * matches the NAR, a second run writes nothing, a NAR that does not match its NarHash is
 * never indexed, and `--seekable` re-encodes into independent frames that real Nix still
 * substitutes from (`nix copy --from`, then `nix-store --verify --check-contents`).
 *
 * The CLI runs as a child process (src/cli/main.ts through tsx), as a user runs it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createDecompressor } from '../../src/compression/decompress.js';
import { formatHash } from '../../src/nix/hash.js';
import { chunkCount, chunkMatches, NAR_INDEX_SUFFIX, parseNarIndex, verifyNarIndex, type NarIndex } from '../../src/nix/nar-index.js';
import { listingsEqual, parseListingJson } from '../../src/nix/nar-listing.js';
import { parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { encodeNix32 } from '../../src/nix/nix32.js';
import { parsePublicKey } from '../../src/nix/signature.js';
import { storePathFull } from '../../src/nix/store-path.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, nixEnv, type Fixtures } from '../support/fixtures.js';
import { runTool } from '../support/run-tool.js';
import { skipOrFail } from '../support/environment.js';
import { S3Engine } from '../support/s3-engine.js';

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
/** The CLI under tsx on a loaded 2-core machine: generous, bounded. */
const CLI_TIMEOUT_MS = 5 * 60_000;

interface CliRun {
  code: number | null;
  stderr: string;
}

function runIndex(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const script = `import(${JSON.stringify(MAIN)}).then((m) => m.main(process.argv.slice(1))).then((c) => process.exit(c))`;
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', script, 'index', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

async function decompress(file: string, compression: string): Promise<Buffer> {
  const d = await createDecompressor(compression);
  d.end(readFileSync(file));
  const parts: Buffer[] = [];
  for await (const c of d) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

function narinfos(dir: string): Array<{ hashPart: string; text: string; ni: NarInfo }> {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.narinfo'))
    .sort()
    .map((f) => {
      const text = readFileSync(path.join(dir, f), 'utf8');
      return { hashPart: f.slice(0, 32), text, ni: parseNarInfo(text) };
    });
}

/** Every file under dir with its mtime and size. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const st = statSync(p);
        out.set(path.relative(dir, p), `${st.mtimeMs} ${st.size} ${st.ino}`);
      }
    }
  };
  walk(dir);
  return out;
}

/** Checks an index against its narinfo, key, NAR bytes and (when present) .ls listing. */
function checkIndex(dir: string, hashPart: string, ni: NarInfo, nar: Buffer, fx: Fixtures): NarIndex {
  const idx = parseNarIndex(readFileSync(path.join(dir, `${hashPart}${NAR_INDEX_SUFFIX}`)));
  verifyNarIndex(idx, ni, [parsePublicKey(fx.publicKey)], true);
  assert.equal(idx.storePath, storePathFull(ni.storePath));
  assert.equal(nar.length, ni.narSize);
  let chunks = 0;
  for (const f of idx.files) {
    const contents = nar.subarray(f.narOffset, f.narOffset + f.size);
    assert.deepEqual(f.sha256, createHash('sha256').update(contents).digest(), `${idx.storePath} file at ${f.narOffset}`);
    for (let k = 0; k < chunkCount(f.size, idx.chunkSize); k++) {
      assert.ok(chunkMatches(idx, f, k, contents.subarray(k * idx.chunkSize, (k + 1) * idx.chunkSize)), `${idx.storePath} chunk ${k} at ${f.narOffset}`);
      chunks++;
    }
  }
  assert.ok(chunks >= idx.files.length);
  return idx;
}

describe('narfs index (publisher) on fixture datalakes', function () {
  this.timeout(0); // every wait below has its own deadline (CLI_TIMEOUT_MS, runTool)
  let fx: Fixtures;
  let tmp: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    fx = await loadFixtures();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'narfs-index-test-'));
  });
  after(() => {
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
  });

  it('indexes every path of a zstd datalake: each index is signed, bound to its narinfo, and every chunk hash matches the NAR', async () => {
    const dir = path.join(tmp, 'plain-zstd');
    cpSync(fx.datalakes.zstd.dir, dir, { recursive: true });
    const before = narinfos(dir);
    const run = await runIndex(['--secret-key-file', fx.secretKeyFile, `file://${dir}`]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, new RegExp(`${before.length} indexed \\(0 re-encoded`));
    for (const { hashPart, ni } of before) {
      const nar = await decompress(path.join(dir, ni.url), ni.compression);
      const idx = checkIndex(dir, hashPart, ni, nar, fx);
      assert.equal(idx.frames, undefined);
      assert.equal(idx.chunkSize, 512 * 1024);
      const ls = path.join(dir, `${hashPart}.ls`);
      assert.ok(listingsEqual(idx.root, parseListingJson(readFileSync(ls))), `${hashPart}: tree differs from the .ls Nix wrote`);
    }
    // Narinfos untouched without --seekable.
    assert.deepEqual(narinfos(dir).map((n) => n.text), before.map((n) => n.text));
    // The large file has many chunks.
    const large = before.find((n) => storePathFull(n.ni.storePath) === fx.largeFile.storePath)!;
    const largeIdx = parseNarIndex(readFileSync(path.join(dir, `${large.hashPart}${NAR_INDEX_SUFFIX}`)));
    assert.ok(largeIdx.files.some((f) => chunkCount(f.size, largeIdx.chunkSize) > 50));

    // Idempotent: a second run skips everything and writes nothing.
    const snap = snapshot(dir);
    const again = await runIndex(['--secret-key-file', fx.secretKeyFile, `file://${dir}`]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, new RegExp(`0 indexed .* ${before.length} already current, 0 failed`));
    assert.deepEqual(snapshot(dir), snap);

    // Another chunk size, named store paths: those are re-indexed, the rest stays.
    const one = before[0]!;
    const rechunk = await runIndex(['--secret-key-file', fx.secretKeyFile, '--chunk-size', '1M', `file://${dir}`, storePathFull(one.ni.storePath)]);
    assert.equal(rechunk.code, 0, rechunk.stderr);
    assert.equal(parseNarIndex(readFileSync(path.join(dir, `${one.hashPart}${NAR_INDEX_SUFFIX}`))).chunkSize, 1 << 20);
  });

  it('refuses a secret key file that others may read (ERR_SECRET_PERMISSIONS, chmod hint) and writes nothing', async () => {
    const dir = path.join(tmp, 'open-key');
    cpSync(fx.datalakes.none.dir, dir, { recursive: true });
    const key = path.join(tmp, 'open-key.sec');
    writeFileSync(key, readFileSync(fx.secretKeyFile), { mode: 0o644 });
    chmodSync(key, 0o644);
    const run = await runIndex(['--secret-key-file', key, `file://${dir}`]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /ERR_SECRET_PERMISSIONS/);
    assert.match(run.stderr, /chmod 600/);
    assert.ok(!run.stderr.includes(readFileSync(fx.secretKeyFile, 'utf8').split(':')[1]!.trim()), 'the key is not printed');
    assert.equal(readdirSync(dir).filter((f) => f.endsWith(NAR_INDEX_SUFFIX)).length, 0);
  });

  it('never indexes a NAR that does not match its NarHash, and still indexes the others (exit 1)', async () => {
    const dir = path.join(tmp, 'corrupt-none');
    cpSync(fx.datalakes.none.dir, dir, { recursive: true });
    const all = narinfos(dir);
    const victim = all.find((n) => storePathFull(n.ni.storePath) === fx.largeFile.storePath)!;
    const narFile = path.join(dir, victim.ni.url);
    const bytes = readFileSync(narFile);
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0x20; // inside the large file's contents: the NAR still parses
    writeFileSync(narFile, bytes);
    const run = await runIndex(['--secret-key-file', fx.secretKeyFile, `file://${dir}`]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /ERR_NAR_HASH_MISMATCH/);
    assert.match(run.stderr, new RegExp(`${all.length - 1} indexed .* 1 failed`));
    assert.throws(() => statSync(path.join(dir, `${victim.hashPart}${NAR_INDEX_SUFFIX}`)), /ENOENT/);
    assert.equal(readdirSync(dir).filter((f) => f.endsWith(NAR_INDEX_SUFFIX)).length, all.length - 1);
  });

  for (const source of ['xz', 'zstd'] as const) {
    it(`--seekable re-encodes a ${source} datalake within 1.1x of plain zstd, frames map the chunks, and real Nix substitutes every path from it`, async () => {
      const dir = path.join(tmp, `seekable-${source}`);
      cpSync(fx.datalakes[source].dir, dir, { recursive: true });
      const before = narinfos(dir);
      const run = await runIndex(['--secret-key-file', fx.secretKeyFile, '--seekable', `file://${dir}`]);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stderr, new RegExp(`${before.length} indexed \\(${before.length} re-encoded`));

      const plainZstd = narinfos(fx.datalakes.zstd.dir);
      const plainSize = plainZstd.reduce((a, n) => a + n.ni.fileSize!, 0);
      let seekableSize = 0;
      const { Decompressor } = createRequire(import.meta.url)('zstd-napi') as { Decompressor: new () => { decompress(b: Uint8Array): Buffer } };
      const dctx = new Decompressor();
      for (const b of before) {
        const after = parseNarInfo(readFileSync(path.join(dir, `${b.hashPart}.narinfo`), 'utf8'));
        // Only the four file fields changed; the Sig lines are the same.
        assert.deepEqual({ ...after, url: '', compression: '', fileHash: undefined, fileSize: 0 }, { ...b.ni, url: '', compression: '', fileHash: undefined, fileSize: 0 });
        assert.equal(after.compression, 'zstd');
        const file = readFileSync(path.join(dir, after.url));
        assert.equal(file.length, after.fileSize);
        assert.deepEqual(createHash('sha256').update(file).digest(), after.fileHash!.digest);
        assert.equal(after.url, `nar/${encodeNix32(after.fileHash!.digest)}.nar.zst`);
        seekableSize += file.length;

        const nar = await decompress(path.join(dir, after.url), 'zstd');
        const idx = checkIndex(dir, b.hashPart, after, nar, fx);
        const fr = idx.frames!;
        assert.ok(fr !== undefined && fr.fileHash.digest.equals(after.fileHash!.digest) && fr.fileSize === after.fileSize);
        // Each frame decompresses alone to its NAR bytes.
        for (let i = 0; i < fr.narOffsets.length; i++) {
          const endNar = fr.narOffsets[i + 1] ?? idx.narSize;
          const endFile = fr.fileOffsets[i + 1] ?? fr.fileSize;
          const out = dctx.decompress(file.subarray(fr.fileOffsets[i]!, endFile));
          assert.ok(out.equals(nar.subarray(fr.narOffsets[i]!, endNar)), `${idx.storePath} frame ${i}`);
        }
        // Every chunk lies inside one frame.
        const frameOf = (narOffset: number): number => {
          let i = 0;
          while (i + 1 < fr.narOffsets.length && fr.narOffsets[i + 1]! <= narOffset) i++;
          return i;
        };
        for (const f of idx.files) {
          for (let k = 0; k < chunkCount(f.size, idx.chunkSize); k++) {
            const start = f.narOffset + k * idx.chunkSize;
            const last = Math.min(start + idx.chunkSize, f.narOffset + f.size) - 1;
            assert.equal(frameOf(start), frameOf(last), `${idx.storePath}: chunk ${k} of the file at ${f.narOffset} spans frames`);
          }
        }
      }
      const ratio = seekableSize / plainSize;
      process.stderr.write(`      seekable ${seekableSize} B vs plain zstd ${plainSize} B: ${ratio.toFixed(3)}x\n`);
      assert.ok(ratio <= 1.1, `seekable/plain = ${ratio}`);

      // Idempotent with --seekable too: nothing re-encoded, nothing written.
      const snap = snapshot(dir);
      const again = await runIndex(['--secret-key-file', fx.secretKeyFile, '--seekable', `file://${dir}`]);
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual(snapshot(dir), snap);

      // Real Nix substitutes every path from the rewritten cache into a fresh store.
      const store = path.join(tmp, `store-${source}`);
      const cacheHome = mkdtempSync(path.join(tmp, 'xdg-'));
      const env = nixEnv(cacheHome);
      env['NIX_CONFIG'] = `${env['NIX_CONFIG']}\ntrusted-public-keys = ${fx.publicKey}\nrequire-sigs = true`;
      const paths = before.map((b) => storePathFull(b.ni.storePath));
      // A .drv installable means its outputs to `nix copy`; --derivation copies the .drv itself.
      const drvs = paths.filter((p) => p.endsWith('.drv'));
      await runTool('nix', ['copy', '--from', `file://${dir}`, '--to', store, ...paths.filter((p) => !p.endsWith('.drv'))], { env });
      await runTool('nix', ['copy', '--derivation', '--from', `file://${dir}`, '--to', store, ...drvs], { env });
      const listed = (await runTool('nix', ['path-info', '--store', store, '--all'], { env })).trim().split('\n').sort();
      assert.deepEqual(listed, [...paths].sort());
      await runTool('nix-store', ['--store', store, '--verify', '--check-contents'], { env });
      // The store really holds the contents: NarHash of each path as Nix computes it.
      const infos = JSON.parse(await runTool('nix', ['path-info', '--store', store, '--json', '--all'], { env })) as Array<{ path: string; narHash: string }>;
      for (const b of before) {
        const info = infos.find((i) => i.path === storePathFull(b.ni.storePath));
        assert.equal(info?.narHash, formatHash(b.ni.narHash, 'sri'), storePathFull(b.ni.storePath));
      }
    });
  }
});

describe('narfs index (publisher) on an s3:// datalake (the real S3 engine)', function () {
  this.timeout(0); // the engine and the CLI have deadlines of their own
  let fx: Fixtures;
  let engine: S3Engine | undefined;
  let tmp: string;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    if (!(await S3Engine.available())) skipOrFail(this, 'the S3 engine (python3-swift, s3cmd)');
    fx = await loadFixtures();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'narfs-index-s3-'));
    engine = await S3Engine.start();
    await engine.populate('cache', fx.datalakes.xz.dir, 'lake');
  });
  after(async () => {
    await engine?.stop();
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
  });

  it('lists the bucket, indexes and re-encodes every path with signed PUTs, and a second run writes nothing', async () => {
    const e = engine!;
    const env = { ...process.env, ...e.env(), AWS_SHARED_CREDENTIALS_FILE: path.join(tmp, 'none'), AWS_CONFIG_FILE: path.join(tmp, 'none') };
    const url = e.url('cache', 'lake');
    const paths = narinfos(fx.datalakes.xz.dir);
    const run = await runIndex(['--secret-key-file', fx.secretKeyFile, '--seekable', url], env);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, new RegExp(`${paths.length} indexed \\(${paths.length} re-encoded`));
    const again = await runIndex(['--secret-key-file', fx.secretKeyFile, '--seekable', url], env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, new RegExp(`0 indexed .* ${paths.length} already current, 0 failed`));

    // What a client gets from the bucket: verified indexes, frames matching the rewritten narinfos.
    const got = path.join(tmp, 'got');
    mkdirSync(got);
    await e.s3cmd(['get', '--recursive', 's3://cache/lake/', `${got}/`]);
    for (const { hashPart } of paths) {
      const ni = parseNarInfo(readFileSync(path.join(got, `${hashPart}.narinfo`), 'utf8'));
      assert.equal(ni.compression, 'zstd');
      const nar = await decompress(path.join(got, ni.url), 'zstd');
      const idx = checkIndex(got, hashPart, ni, nar, fx);
      assert.ok(idx.frames !== undefined && idx.frames.fileHash.digest.equals(ni.fileHash!.digest));
    }
  });
});
