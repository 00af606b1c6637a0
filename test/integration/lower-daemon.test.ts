/**
 * narfs' lower-store socket over a real Unix socket, answering from the zstd fixture
 * datalake: the recorded Nix 2.26 sessions replayed against it get the answers nix-daemon
 * gave for the same store (except what a datalake cannot know: referrers); real Nix 2.8
 * on the host (protocol 1.34) uses it as a store; a path pushed to the datalake after the
 * start is valid at once; garbage, hang-ups half-way, unknown and unserved operations,
 * and a client that stalls mid-request never stop it from serving the others.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, lstat, mkdtemp, rm, writeFile, rename, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { parseStorePath } from '../../src/nix/store-path.js';
import { hashEquals, parseHash } from '../../src/nix/hash.js';
import { WireWriter, WorkerOp } from '../../src/nix/worker-protocol.js';
import { writeClientHello, writeClientPostHandshake } from '../../src/nix/worker-protocol-client.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { startLowerDaemon, type LowerDaemon } from '../../src/daemon/lower-daemon.js';
import { loadFixtures, nixEnv, type Fixtures } from '../support/fixtures.js';
import { skipOrFail } from '../support/environment.js';
import { decodeSession, loadCapture, type Capture } from '../support/worker-protocol-capture.js';
import { WorkerSocket, sendAndCollect, SOCKET_WAIT_MS } from '../support/worker-protocol-socket.js';

function runNix(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(args[0]!, args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: nixEnv() });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Waits until `cond()` holds, checking on a short period, within the socket deadline. */
async function eventually(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + SOCKET_WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${SOCKET_WAIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('lower daemon: the worker protocol over a real socket', function () {
  this.timeout(20 * 60_000);
  let fixtures: Fixtures;
  let work: string;
  let lakeDir: string;
  let stack: StoreStack;
  let daemon: LowerDaemon;
  let sock: string;
  const REGISTRATION_TIME = 1_700_000_000;
  /** Held back from the datalake copy until a test pushes it. */
  let late: string;

  before(async function () {
    fixtures = await loadFixtures();
    work = await mkdtemp(join(tmpdir(), 'narfs-lowerd-'));
    lakeDir = join(work, 'lake');
    await cp(fixtures.datalakes['zstd']!.dir, lakeDir, { recursive: true });
    // Outside top's closure: no other test asks for it before it is pushed.
    late = fixtures.paths.find((p) => p.role === 'source')!.storePath;
    await rename(join(lakeDir, `${parseStorePath(late).hashPart}.narinfo`), join(work, 'late.narinfo'));
    stack = await openStoreStack({
      datalakes: [`file://${lakeDir}`], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey), requireSigs: true,
      cacheDir: join(work, 'cache'), negativeTtlMs: 30_000,
    }, silentLogger);
    sock = join(work, 'lower.sock');
    daemon = await startLowerDaemon(sock, {
      infos: stack.infos,
      readFile: (info, signal) => stack.store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, signal),
      registrationTime: REGISTRATION_TIME, logger: silentLogger, requestTimeoutMs: 2_000,
    });
  });
  after(async () => {
    await daemon?.close();
    await stack?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('makes its socket 0600 and refuses a second daemon on it', async () => {
    assert.equal((await lstat(sock)).mode & 0o777, 0o600);
    await assert.rejects(startLowerDaemon(sock, { infos: stack.infos, readFile: async () => Buffer.alloc(0), registrationTime: 0, logger: silentLogger }),
      { code: 'ERR_LOWER_SOCKET' });
    const file = join(work, 'not-a-socket');
    await writeFile(file, 'x');
    await assert.rejects(startLowerDaemon(file, { infos: stack.infos, readFile: async () => Buffer.alloc(0), registrationTime: 0, logger: silentLogger }),
      { code: 'ERR_LOWER_SOCKET' });
  });

  describe('replaying what Nix 2.26 sent to nix-daemon', () => {
    let capture: Capture;
    before(async function () {
      try {
        capture = await loadCapture();
      } catch (err) {
        skipOrFail(this, `the Nix 2.26 capture (${(err as Error).message.split('\n')[0]})`);
      }
    });

    it('answers every recorded request as nix-daemon did (referrers aside: a datalake has none)', async () => {
      let compared = 0;
      for (const s of capture.sessions.filter((x) => x.label !== 'garbage')) {
        const theirs = decodeSession(s.client, s.server);
        const ours = decodeSession(s.client, await sendAndCollect(sock, s.client));
        assert.equal(ours.version, theirs.version);
        assert.equal(ours.info.daemonVersion, 'narfs-0.1.0');
        assert.equal(ours.exchanges.length, theirs.exchanges.length, s.file);
        ours.exchanges.forEach((o, i) => {
          const t = theirs.exchanges[i]!;
          const what = `${s.file} #${i} ${o.request.name} ${JSON.stringify(o.request).slice(0, 160)}`;
          assert.equal(o.outcome.kind, t.outcome.kind, `${what}: ${JSON.stringify(o.outcome)}`);
          if (o.request.op === WorkerOp.QueryReferrers) {
            assert.deepEqual(o.result, { kind: 'strings', value: [] }, what);
            return;
          }
          if (o.result?.kind === 'path-info' && o.result.value && t.result?.kind === 'path-info' && t.result.value) {
            assert.equal(o.result.value.registrationTime, REGISTRATION_TIME);
            assert.deepEqual({ ...o.result.value, registrationTime: 0 }, { ...t.result.value, registrationTime: 0 }, what);
          } else {
            assert.deepEqual(o.result, t.result, what);
          }
          compared++;
        });
        if (s.label === 'raw-errors') assert.equal(ours.serverRest.length, 0, 'one error for an unknown op, then close');
      }
      assert.ok(compared > 50, `only ${compared} answers compared`);
    });
  });

  it('serves real Nix 2.8 (protocol 1.34) as a store: path-info, validity, references', async function () {
    const version = await runNix(['nix', '--version']).catch(() => undefined);
    if (!version || version.code !== 0) skipOrFail(this, 'nix on the host');
    const store = `unix://${sock}`;
    const top = fixtures.top;
    const info = await runNix(['nix', 'path-info', '--store', store, '--json', top]);
    assert.equal(info.code, 0, info.stderr);
    const parsed = JSON.parse(info.stdout) as Array<{ path: string; narHash: string; references: string[]; deriver: string; signatures: string[] }>;
    const expected = fixtures.paths.find((p) => p.storePath === top)!;
    assert.equal(parsed[0]!.path, top);
    assert.ok(hashEquals(parseHash(parsed[0]!.narHash), parseHash(expected.narHash)), `${parsed[0]!.narHash} vs ${expected.narHash}`);
    assert.deepEqual([...parsed[0]!.references].sort(), [...expected.references].sort());
    assert.equal(parsed[0]!.deriver, expected.deriver);
    assert.equal(parsed[0]!.signatures.length, 1);
    const closure = await runNix(['nix', 'path-info', '--store', store, '-r', top]);
    assert.equal(closure.code, 0, closure.stderr);
    assert.ok(closure.stdout.trim().split('\n').length > 5);
    const missing = '/nix/store/00000000000000000000000000000000-narfs-missing';
    const check = await runNix(['nix-store', '--store', store, '--check-validity', '--print-invalid', top, missing]);
    assert.equal(check.code, 0, check.stderr);
    assert.equal(check.stdout.trim(), missing);
    const refs = await runNix(['nix-store', '--store', store, '-q', '--references', missing]);
    assert.notEqual(refs.code, 0);
    assert.match(refs.stderr, /is not valid/);
  });

  it('serves a path pushed to the datalake after it started, at once, without registration', async () => {
    const c = await WorkerSocket.connect(sock);
    await c.handshake();
    await rename(join(work, 'late.narinfo'), join(lakeDir, `${parseStorePath(late).hashPart}.narinfo`));
    assert.deepEqual((await c.request({ op: WorkerOp.IsValidPath, path: late })).result, { kind: 'bool', value: true });
    const info = await c.request({ op: WorkerOp.QueryPathInfo, path: late });
    assert.ok(info.result?.kind === 'path-info' && info.result.value);
    assert.equal(info.result.value.narSize, fixtures.paths.find((p) => p.storePath === late)!.narSize);
    const byHash = await c.request({ op: WorkerOp.QueryPathFromHashPart, value: parseStorePath(late).hashPart });
    assert.deepEqual(byHash.result, { kind: 'string', value: late });
    c.close();
  });

  it('keeps serving through garbage, hang-ups, unknown and unserved operations, and stalls', async () => {
    const good = await WorkerSocket.connect(sock);
    await good.handshake();
    const stillServes = async () => {
      const r = await good.request({ op: WorkerOp.IsValidPath, path: fixtures.top });
      assert.deepEqual(r.result, { kind: 'bool', value: true });
    };

    // Bytes that are not the protocol: closed without a word (as nix-daemon does).
    const garbage = await sendAndCollect(sock, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal(garbage.length, 0);
    await stillServes();

    // A huge string length right after a good handshake: an error, then closed.
    const h = await WorkerSocket.connect(sock);
    await h.handshake();
    h.socket.write(new WireWriter().u64(WorkerOp.IsValidPath).u64(1n << 62n).toBuffer());
    const huge = await h.read((r) => r.u64(), 'an error');
    assert.equal(huge, 0x63787470); // STDERR_ERROR
    await h.waitClosed();
    await stillServes();

    // A hang-up half-way through a request, and one in the middle of the handshake.
    for (const bytes of [
      Buffer.concat([writeClientHello(new WireWriter()).toBuffer(), Buffer.from([1, 2, 3])]),
      (() => {
        const w = writeClientHello(new WireWriter());
        w.strings([]);
        writeClientPostHandshake(w, 0x126);
        return Buffer.concat([w.u64(WorkerOp.QueryPathInfo).toBuffer(), Buffer.from([40, 0, 0])]);
      })(),
    ]) {
      const before = daemon.connections();
      const c = await WorkerSocket.connect(sock);
      c.socket.write(bytes);
      await eventually(() => daemon.connections() === before + 1, 'the connection');
      c.close();
      await eventually(() => daemon.connections() === before, 'the server dropping the half-way connection');
      await stillServes();
    }

    // An operation narfs does not serve but can delimit: an error, the connection lives on.
    const u = await WorkerSocket.connect(sock);
    await u.handshake();
    const temp = await u.request({ op: WorkerOp.AddTempRoot, path: fixtures.top });
    assert.equal(temp.outcome.kind, 'error');
    assert.match(temp.outcome.kind === 'error' ? temp.outcome.message : '', /AddTempRoot is not supported/);
    assert.deepEqual((await u.request({ op: WorkerOp.IsValidPath, path: fixtures.top })).result, { kind: 'bool', value: true });
    // A malformed store path: an error, the connection lives on.
    const bad = await u.request({ op: WorkerOp.IsValidPath, path: '/etc/passwd' });
    assert.equal(bad.outcome.kind, 'error');
    assert.deepEqual((await u.request({ op: WorkerOp.QueryValidPaths, paths: [fixtures.top, '/nix/store/00000000000000000000000000000000-x'] })).result,
      { kind: 'strings', value: [fixtures.top] });
    // An unknown operation: an error, then closed (its arguments cannot be skipped).
    u.socket.write(new WireWriter().u64(99).toBuffer());
    const unknown = await u.read((r) => r.u64(), 'an error');
    assert.equal(unknown, 0x63787470);
    await u.waitClosed();
    await stillServes();

    // A request that stalls half-way: closed after the request deadline (2 s here).
    const s = await WorkerSocket.connect(sock);
    await s.handshake();
    s.socket.write(new WireWriter().u64(WorkerOp.IsValidPath).u64(50).toBuffer());
    await s.waitClosed();
    await stillServes();

    // Answers the overlay relies on: empty referrers and realisations, derivers from the .drv.
    assert.deepEqual((await good.request({ op: WorkerOp.QueryReferrers, path: fixtures.top })).result, { kind: 'strings', value: [] });
    assert.deepEqual((await good.request({ op: WorkerOp.QueryRealisation, value: 'sha256:0000000000000000000000000000000000000000000000000000000000000000!out' })).result,
      { kind: 'strings', value: [] });
    assert.deepEqual((await good.request({ op: WorkerOp.QueryValidDerivers, path: fixtures.top })).result,
      { kind: 'strings', value: [fixtures.topDrv] });
    good.close();
    await eventually(() => daemon.connections() === 0, 'all connections gone');
  });

  it('treats a path whose narinfo fails the signature policy as not valid', async () => {
    const other = await openStoreStack({
      datalakes: [fixtures.datalakes['other-key']!.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey), requireSigs: true,
      cacheDir: join(work, 'cache-other'), negativeTtlMs: 30_000,
    }, silentLogger);
    const path = join(work, 'other.sock');
    const d = await startLowerDaemon(path, {
      infos: other.infos, readFile: async () => Buffer.alloc(0), registrationTime: 0, logger: silentLogger,
    });
    try {
      const c = await WorkerSocket.connect(path);
      await c.handshake();
      assert.deepEqual((await c.request({ op: WorkerOp.IsValidPath, path: fixtures.top })).result, { kind: 'bool', value: false });
      assert.deepEqual((await c.request({ op: WorkerOp.QueryPathInfo, path: fixtures.top })).result, { kind: 'path-info', value: undefined });
      assert.deepEqual((await c.request({ op: WorkerOp.QueryValidPaths, paths: [fixtures.top] })).result, { kind: 'strings', value: [] });
      assert.deepEqual((await c.request({ op: WorkerOp.QueryPathFromHashPart, value: parseStorePath(fixtures.top).hashPart })).result,
        { kind: 'string', value: '' });
      c.close();
    } finally {
      await d.close();
      await other.close();
    }
  });

  it('removes its socket file on close, and replaces a stale one on start', async () => {
    const path = join(work, 'stale.sock');
    const first = await startLowerDaemon(path, { infos: stack.infos, readFile: async () => Buffer.alloc(0), registrationTime: 0, logger: silentLogger });
    // Simulate a crash: the file stays, nobody listens.
    const keep = join(work, 'kept.sock');
    await rename(path, keep);
    await first.close();
    await rename(keep, path);
    await chmod(path, 0o600);
    const second = await startLowerDaemon(path, { infos: stack.infos, readFile: async () => Buffer.alloc(0), registrationTime: 0, logger: silentLogger });
    const c = await WorkerSocket.connect(path);
    await c.handshake();
    c.close();
    await second.close();
    await assert.rejects(lstat(path), { code: 'ENOENT' });
  });
});
