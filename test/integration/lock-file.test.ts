/**
 * lockFiles through the kept `narfs-flock` helper (native/client/flock-helper.c), checked
 * with util-linux flock(1) from outside: the locks are real flocks, taken in order and
 * held until release; a busy lock names itself and leaves none of the set held; a helper
 * is reused after a release; and a lock never outlives its owner, even one killed by
 * SIGKILL while holding it, or a worker thread terminated while holding it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isNarfsError } from '../../src/errors.js';
import { lockFiles } from '../../src/nixdb/lock-file.js';
import { startWorker } from '../../src/nixdb/run-in-worker.js';

const HELPER = fileURLToPath(new URL('../../build/Release/narfs-flock', import.meta.url));

/** Is `file` free right now (flock -n from another process)? */
const free = (file: string) => spawnSync('flock', ['-x', '-n', file, 'true']).status === 0;

/** Holds an flock on `file` from a child until killed; resolves once it is held. */
function holdFlock(file: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const c = spawn('sh', ['-c', 'exec 9>>"$1"; flock -x 9; echo held; exec sleep 600', 'holder', file], { stdio: ['ignore', 'pipe', 'ignore'] });
    c.stdout!.setEncoding('utf8').once('data', () => resolve(c));
    c.once('exit', (code) => reject(new Error(`holder exited ${code}`)));
  });
}

/** The pids of running narfs-flock helpers whose parent is `ppid`. */
function helpersOf(ppid: number): number[] {
  const r = spawnSync('pgrep', ['-P', String(ppid), '-f', 'narfs-flock'], { encoding: 'utf8' });
  return r.stdout.split('\n').filter(Boolean).map(Number);
}

describe('integration: lockFiles through the narfs-flock helper', function () {
  this.timeout(120_000);
  let dir: string;
  const children: ChildProcess[] = [];
  before(() => {
    assert.ok(existsSync(HELPER), `${HELPER} is built by npm run build (binding.gyp)`);
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'narfs-lock-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('holds real flocks in order until release, and reuses its helper for the next call', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const held = await lockFiles([{ path: a }, { path: b }], { timeoutMs: 30_000 });
    assert.equal(free(a), false);
    assert.equal(free(b), false);
    const helpers = helpersOf(process.pid);
    assert.equal(helpers.length, 1, 'one helper holds the set');
    await held.release();
    assert.equal(free(a), true);
    assert.equal(free(b), true);
    const again = await lockFiles([{ path: b }], { timeoutMs: 30_000 });
    assert.deepEqual(helpersOf(process.pid), helpers, 'the same helper serves the next call');
    assert.equal(free(b), false);
    await again.release();
    await again.release(); // idempotent
    assert.equal(free(b), true);
  });

  it('a busy lock is ERR_DB_LOCKED naming it, and none of the set stays held', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const holder = await holdFlock(b);
    children.push(holder);
    const started = Date.now();
    await assert.rejects(lockFiles([{ path: a, what: 'the first' }, { path: b, what: 'the second' }], { timeoutMs: 300 }), (e: unknown) => {
      assert.ok(isNarfsError(e, 'ERR_DB_LOCKED'), String(e));
      assert.match((e as Error).message, /the second/);
      return true;
    });
    assert.ok(Date.now() - started >= 300, 'it waited its deadline');
    assert.equal(free(a), true, 'the first lock was dropped');
  });

  it('a lock never outlives the worker thread that took it, terminated while holding it', async () => {
    const a = join(dir, 'a');
    const worker = startWorker(new URL('../support/lock-holder-worker.js', import.meta.url), { file: a }, undefined);
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    assert.equal(free(a), false);
    await worker.terminate();
    // The helper sees EOF when the worker's pipe closes: flock -w waits for that event.
    assert.equal(spawnSync('flock', ['-x', '-w', '60', a, 'true']).status, 0, 'the lock was dropped');
  });

  it('a lock never outlives its owner, even one killed by SIGKILL', async () => {
    const a = join(dir, 'a');
    const code = `const { lockFiles } = await import(${JSON.stringify(new URL('../../src/nixdb/lock-file.ts', import.meta.url).href)});
await lockFiles([{ path: process.argv[1] }], { timeoutMs: 30000 });
process.stdout.write('held\\n');
setInterval(() => {}, 1000);`;
    const owner = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code, a], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(owner);
    await new Promise<void>((resolve, reject) => {
      owner.stdout!.setEncoding('utf8').once('data', () => resolve());
      owner.once('exit', (c) => reject(new Error(`owner exited ${c}`)));
    });
    assert.equal(free(a), false);
    const helpers = helpersOf(owner.pid!);
    assert.equal(helpers.length, 1);
    const exited = new Promise<void>((resolve) => owner.once('exit', () => resolve()));
    owner.kill('SIGKILL');
    await exited;
    // The helper sees EOF and exits: flock -w waits for that event (bounded for a loaded machine).
    assert.equal(spawnSync('flock', ['-x', '-w', '60', a, 'true']).status, 0, 'the lock was dropped');
  });
});
