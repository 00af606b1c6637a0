/**
 * The daemon's control socket over a real unix socket: the server answers a malformed
 * request with an ERR_CONTROL line; the client ends a call on a malformed line from the
 * daemon with ERR_CONTROL (instead of throwing inside an event handler); an error keeps
 * code, message, hint and details across worker and socket, exactly as the standalone
 * command raises it; the socket file is 0600 from the moment it has its name, without
 * ever touching the process umask; stale sockets are replaced, live ones refused.
 */
import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { watch } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { isNarfsError, NarfsError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { callDaemon } from '../../src/cli/control-client.js';
import { CONTROL_SOCKET, isLive, startControlServer, type ControlServer } from '../../src/daemon/control-server.js';
import { runRegister } from '../../src/daemon/register-operation.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, type Fixtures } from '../support/fixtures.js';

/** Sends `text` raw and returns every line the server sent until it closed. */
function rawExchange(path: string, text: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(text));
    s.on('data', (d: string) => { buf += d; });
    s.on('error', reject);
    s.on('close', () => resolve(buf.split('\n').filter(Boolean)));
  });
}

/** A fake daemon that answers every connection with `lines` as they are, then closes. */
async function fakeDaemon(dir: string, lines: string): Promise<Server> {
  const server = createServer((s) => {
    s.once('data', () => s.end(lines));
    s.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(join(dir, CONTROL_SOCKET), () => resolve());
  });
  return server;
}

const closeServer = (s: Server) => new Promise<void>((resolve) => s.close(() => resolve()));

function errorOf(p: Promise<unknown>): Promise<NarfsError> {
  return p.then(() => assert.fail('expected an error'), (e: unknown) => {
    assert.ok(e instanceof NarfsError, String(e));
    return e;
  });
}

const summary = (e: NarfsError) => ({ code: e.code, message: e.message, hint: e.hint, details: e.details });

describe('integration: the control socket', function () {
  this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
  let fixtures: Fixtures;
  let root: string;
  let cacheDir: string;
  let stack: StoreStack | undefined;
  let control: ControlServer | undefined;

  before(async () => {
    fixtures = await loadFixtures();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-control-'));
    cacheDir = join(root, 'cache');
    await mkdir(cacheDir, { mode: 0o700 });
  });
  afterEach(async () => {
    await control?.close();
    control = undefined;
    await stack?.close();
    stack = undefined;
    await rm(root, { recursive: true, force: true });
  });

  const openStack = async () => {
    stack = await openStoreStack({
      datalakes: [fixtures.datalakes['xz']!.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir, negativeTtlMs: 60_000,
    }, silentLogger);
    return stack;
  };

  it('answers a malformed request line with an ERR_CONTROL error line, and goes on serving', async () => {
    control = await startControlServer(cacheDir, { stack: await openStack(), defaultLower: undefined, logger: silentLogger });
    for (const [request, why] of [['this is not json\n', /not JSON/], ['[1,2]\n', /not a JSON object/], ['{"op":"dance"}\n', /unknown operation "dance"/]] as const) {
      const lines = await rawExchange(control.path, request);
      assert.equal(lines.length, 1, `one answer line to ${request}`);
      const answer = JSON.parse(lines[0]!) as { type: string; code: string; message: string; hint: string };
      assert.equal(answer.type, 'error');
      assert.equal(answer.code, 'ERR_CONTROL');
      assert.match(answer.message, why);
      assert.ok(answer.hint.length > 0);
    }
    // The daemon still answers, through the real client.
    const err = await errorOf(callDaemon(cacheDir, { op: 'register', lower: join(root, 'lower'), roots: ['not-a-path'] }, () => {}, 60_000));
    assert.equal(err.code, 'ERR_INVALID_ARGUMENT');
  });

  it('the client ends the call with ERR_CONTROL on a malformed line from the daemon', async () => {
    const cases: Array<[string, RegExp]> = [
      ['{"type":"log","level":"info","msg":"ok"}\nthis is not json\n', /not JSON: "this is not json"/],
      ['42\n', /not a JSON object/],
      ['{"type":"mystery"}\n', /unknown type/],
      ['{"type":"log","level":7}\n', /malformed log line/],
      [`${'x'.repeat((1 << 20) + 10)}`, /longer than 1 MiB/],
    ];
    for (const [lines, why] of cases) {
      const server = await fakeDaemon(cacheDir, lines);
      try {
        const logs: string[] = [];
        const err = await errorOf(callDaemon(cacheDir, { op: 'register' }, (l) => logs.push(l.msg), 60_000));
        assert.equal(err.code, 'ERR_CONTROL', err.message);
        assert.match(err.message, why);
        if (lines.startsWith('{"type":"log","level":"info"')) assert.deepEqual(logs, ['ok']);
      } finally {
        await closeServer(server);
      }
    }
  });

  it('the client maps an unknown error code to ERR_CONTROL and keeps a known one whole', async () => {
    let server = await fakeDaemon(cacheDir, '{"type":"error","code":"ERR_FROM_THE_FUTURE","message":"something new","hint":"h"}\n');
    try {
      const err = await errorOf(callDaemon(cacheDir, { op: 'register' }, () => {}, 60_000));
      assert.equal(err.code, 'ERR_CONTROL');
      assert.match(err.message, /ERR_FROM_THE_FUTURE.*something new/);
    } finally {
      await closeServer(server);
    }
    server = await fakeDaemon(cacheDir, `${JSON.stringify({ type: 'error', code: 'ERR_DB_LOCKED', message: 'm', hint: 'the hint', details: { path: '/x', n: 3 } })}\n`);
    try {
      const err = await errorOf(callDaemon(cacheDir, { op: 'register' }, () => {}, 60_000));
      assert.deepEqual(summary(err), { code: 'ERR_DB_LOCKED', message: 'm', hint: 'the hint', details: { path: '/x', n: 3 } });
    } finally {
      await closeServer(server);
    }
  });

  it('narfs register through the daemon fails exactly as it fails alone: code, message, hint, details', async () => {
    const s = await openStack();
    control = await startControlServer(cacheDir, { stack: s, defaultLower: undefined, logger: silentLogger });
    const root0 = fixtures.paths.find((p) => p.role === 'single-file')!.storePath;
    // A lower store of a schema narfs does not know: ERR_DB_SCHEMA with details, raised
    // on the registration worker.
    const lower = join(root, 'lower');
    await mkdir(join(lower, 'nix/var/nix/db'), { recursive: true });
    await writeFile(join(lower, 'nix/var/nix/db/schema'), '7');
    // A root that is no store path: ERR_INVALID_ARGUMENT with its own hint.
    for (const roots of [[root0], ['no-store-path']]) {
      const request = { op: 'register', lower, roots, all: false };
      const alone = await errorOf(runRegister(s, request, silentLogger));
      const viaDaemon = await errorOf(callDaemon(cacheDir, request, () => {}, 120_000));
      assert.deepEqual(summary(viaDaemon), summary(alone));
    }
    const alone = await errorOf(runRegister(s, { lower, roots: [root0] }, silentLogger));
    assert.equal(alone.code, 'ERR_DB_SCHEMA');
    assert.deepEqual(alone.details, { dbPath: join(lower, 'nix/var/nix/db/db.sqlite') });
  });

  it('the socket is 0600 whenever it has its name, and the umask is never touched', async () => {
    const s = await openStack();
    const umaskBefore = process.umask();
    const realUmask = process.umask;
    const umaskSets: unknown[] = [];
    const umask = realUmask as (mask?: string | number) => number;
    process.umask = function umaskSpy(mask?: string | number): number {
      if (mask !== undefined) umaskSets.push(mask);
      return umask.call(process, mask);
    } as typeof process.umask;
    // Another thread of this process creates files all the while: each must get the
    // normal mode (0666 less the process umask).
    const scratch = join(root, 'scratch');
    await mkdir(scratch);
    const stopFlag = new SharedArrayBuffer(4);
    const creator = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { writeFileSync, statSync } = require('node:fs');
      const flag = new Int32Array(workerData.stop);
      let n = 0; const bad = [];
      while (Atomics.load(flag, 0) === 0) {
        const p = workerData.dir + '/f' + n++;
        writeFileSync(p, '');
        const mode = statSync(p).mode & 0o777;
        if (mode !== workerData.expected) bad.push([p, mode.toString(8)]);
        if (n === 1) parentPort.postMessage('started');
      }
      parentPort.postMessage({ n, bad });
    `, { eval: true, workerData: { dir: scratch, expected: 0o666 & ~umaskBefore, stop: stopFlag } });
    const report = new Promise<{ n: number; bad: unknown[] }>((resolve) => creator.on('message', (m) => { if (typeof m === 'object') resolve(m as { n: number; bad: unknown[] }); }));
    const seenModes: string[] = [];
    const watcher = watch(cacheDir, (_e, file) => {
      if (file !== CONTROL_SOCKET) return;
      lstat(join(cacheDir, CONTROL_SOCKET)).then((st) => seenModes.push(`${st.isSocket()}:${(st.mode & 0o777).toString(8)}`), () => {});
    });
    try {
      await new Promise<void>((resolve) => creator.once('message', () => resolve()));
      control = await startControlServer(cacheDir, { stack: s, defaultLower: undefined, logger: silentLogger });
    } finally {
      process.umask = realUmask;
      Atomics.store(new Int32Array(stopFlag), 0, 1);
    }
    Atomics.store(new Int32Array(stopFlag), 0, 1);
    const created = await report;
    watcher.close();
    assert.ok(created.n > 1, 'the other thread created files meanwhile');
    assert.deepEqual(created.bad, [], 'files created meanwhile got another mode');
    assert.deepEqual(umaskSets, [], 'process.umask was changed');
    assert.equal(process.umask(), umaskBefore);
    const st = await lstat(control.path);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    assert.ok(seenModes.every((m) => m === 'true:600'), seenModes.join(' '));
    assert.deepEqual((await readdir(cacheDir)).filter((n) => n.startsWith('.control-')), [], 'the private directory is gone');
    assert.equal(await isLive(control.path), true);
    await control.close();
    control = undefined;
    await assert.rejects(lstat(join(cacheDir, CONTROL_SOCKET)), { code: 'ENOENT' });
  });

  it('replaces a stale socket file, refuses a live daemon', async () => {
    const s = await openStack();
    // A stale socket: bound elsewhere, renamed into place, its listener gone.
    const elsewhere = join(root, 'old.sock');
    const old = createServer();
    await new Promise<void>((resolve) => old.listen(elsewhere, () => resolve()));
    await rename(elsewhere, join(cacheDir, CONTROL_SOCKET));
    await closeServer(old);
    assert.ok((await lstat(join(cacheDir, CONTROL_SOCKET))).isSocket());
    assert.equal(await isLive(join(cacheDir, CONTROL_SOCKET)), false);
    control = await startControlServer(cacheDir, { stack: s, defaultLower: undefined, logger: silentLogger });
    assert.equal(await isLive(control.path), true);
    const second = await startControlServer(cacheDir, { stack: s, defaultLower: undefined, logger: silentLogger })
      .then(() => assert.fail('a second daemon started'), (e: unknown) => e);
    assert.ok(isNarfsError(second, 'ERR_CACHE_LOCKED'), String(second));
  });
});
