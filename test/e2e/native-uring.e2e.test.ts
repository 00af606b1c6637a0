/**
 * FUSE over io_uring (`--fuse-transport uring`, native/src/uring_transport.h) on a real
 * mount of the real fixture datalakes (scripts/build-fixtures.sh), through the daemon
 * (startMount, the same config path as the CLI):
 * - with the fuse module parameter enable_uring set to Y, the engine registers one queue
 *   per possible CPU, requests are fetched from ring entries (uringRequests grows), every
 *   fixture store path hashes to its narinfo's NarHash (`nix hash path`) and equals the
 *   local store's copy (`diff -r`), a `find` walk matches, and the mount comes down within
 *   a deadline with the connection closed;
 * - with enable_uring N, the mount fails with ERR_FUSE_URING_UNAVAILABLE (hint: the
 *   parameter) and leaves nothing mounted.
 * The parameter's previous value is restored in after(). Root only (mount(2), the module
 * parameter); a kernel without the parameter skips locally and fails with CI=true.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run, withMount } from '../support/mount-harness.js';
import { skipOrFail } from '../support/environment.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';
import { isNarfsError } from '../../src/errors.js';
import { URING_PARAM } from '../../src/fuse/native-mount.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';

const LAKE = 'zstd';

async function possibleCpus(): Promise<number> {
  const text = (await readFile('/sys/devices/system/cpu/possible', 'utf8')).trim();
  let max = 0;
  for (const part of text.split(',')) max = Math.max(max, ...part.split('-').map(Number));
  return max + 1;
}

async function mountedAt(path: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info.split('\n').some((l) => l.split(' ')[4] === path);
}

/** `find` of a tree as lines (path, size of non-directories, mode, type, target). */
async function walk(dir: string): Promise<string[]> {
  const r = await run('find', [dir, '-printf', '%P|%s|%m|%y|%l\n']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim().split('\n').map((l) => l.replace(/^([^|]*)\|\d+\|(\d+)\|d\|/, '$1|-|$2|d|')).sort();
}

describe('e2e: native engine over FUSE io_uring (--fuse-transport uring)', function () {
  this.timeout(15 * 60_000);
  let fixtures: Fixtures;
  let previous: string | undefined;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    if (fuseBackendOf({} as never) !== 'native') this.skip();
    if (process.getuid?.() !== 0) skipOrFail(this, 'root (mount(2) and the fuse module parameter enable_uring)');
    if (!existsSync(URING_PARAM)) skipOrFail(this, `FUSE over io_uring (${URING_PARAM}: Linux 6.14+ with CONFIG_FUSE_IO_URING)`);
    previous = (await readFile(URING_PARAM, 'utf8')).trim();
    fixtures = await loadFixtures();
  });

  after(async () => {
    if (previous !== undefined) await writeFile(URING_PARAM, previous);
  });

  it('serves every fixture store path through io_uring queues: NarHash, diff -r, walk; unmounts within a deadline', async () => {
    await writeFile(URING_PARAM, 'Y');
    const lake = fixtures.datalakes[LAKE];
    assert.ok(lake, `no ${LAKE} datalake in the fixtures`);
    const problems: string[] = [];
    let mnt = '';
    await withMount({ datalakes: [`file://${lake.dir}`], trustedPublicKeys: fixtures.publicKey, extra: { fuseTransport: 'uring' } }, async (m) => {
      mnt = m.mnt;
      const at = m.running.engine.stats()!;
      assert.equal(at.uringActive, true, `io_uring set up: ${JSON.stringify(at)}`);
      assert.equal(at.uringQueues, await possibleCpus(), 'one queue per possible CPU');
      for (const p of fixtures.paths) {
        const base = storePathBase(parseStorePath(p.storePath));
        const ni = parseNarInfo(await readFile(join(lake.dir, `${base.slice(0, 32)}.narinfo`), 'utf8'));
        const mounted = join(m.mnt, base);
        const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', mounted], NIX_ENV);
        if (h.code !== 0) problems.push(`nix hash path ${base} failed: ${h.stderr.trim()}`);
        else if (`sha256:${h.stdout.trim()}` !== formatHash(ni.narHash, 'nix32')) problems.push(`NarHash of ${base} differs`);
        const d = await run('diff', ['-r', '--no-dereference', mounted, p.storePath]);
        if (d.code !== 0) problems.push(`diff -r ${base}: ${d.stdout}${d.stderr}`.trim());
        const [got, want] = await Promise.all([walk(mounted), walk(p.storePath)]);
        if (JSON.stringify(got) !== JSON.stringify(want)) problems.push(`find ${base} differs`);
      }
      const st = m.running.engine.stats()!;
      // LOOKUPs, listings and opens (the first reads too) all came through ring entries.
      assert.ok(st.uringRequests >= fixtures.paths.length * 3, `requests through io_uring: ${JSON.stringify(st)}`);
      assert.equal(st.uringActive, true);
      for (const l of m.logs.filter((x) => x.level === 'error')) problems.push(`error line: ${l.msg} ${JSON.stringify(l.fields)}`);
      // Unmount from inside: the connection must close (every queue thread stops) in time.
      const t0 = Date.now();
      await m.running.close();
      assert.ok(Date.now() - t0 < 30_000, `close took ${Date.now() - t0} ms`);
      assert.equal(m.logs.some((l) => /still open after unmount/.test(l.msg)), false, 'the connection closed');
      assert.equal(await mountedAt(m.mnt), false);
    });
    assert.deepEqual(problems, [], `${problems.length} problem(s)`);
    assert.equal(await mountedAt(mnt), false);
  });

  it('fails the mount with ERR_FUSE_URING_UNAVAILABLE when the kernel does not offer io_uring', async () => {
    await writeFile(URING_PARAM, 'N');
    const lake = fixtures.datalakes[LAKE]!;
    let ran = false;
    const err = await withMount({ datalakes: [`file://${lake.dir}`], trustedPublicKeys: fixtures.publicKey, extra: { fuseTransport: 'uring' } },
      async () => { ran = true; }).then(() => undefined, (e: unknown) => e);
    assert.equal(ran, false, 'the mount did not come up');
    assert.ok(isNarfsError(err) && err.code === 'ERR_FUSE_URING_UNAVAILABLE', `error: ${String(err)}`);
    assert.match(err.hint ?? '', /enable_uring/);
    const path = /uring on (\S+):/.exec(err.message)?.[1];
    assert.ok(path, err.message);
    assert.equal(await mountedAt(path), false, 'nothing left mounted');
  });
});
