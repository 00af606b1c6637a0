/**
 * The worker-protocol wire format against bytes real Nix 2.26 produced: sessions between
 * Nix clients and nix-daemon recorded by scripts/capture-worker-protocol.ts (never written
 * by hand). narfs' readers must consume them exactly; its writers must produce the very
 * same bytes for the same values (handshake, requests, ValidPathInfo, errors).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  PROTOCOL_VERSION, STDERR_LAST, WireIncomplete, WireReader, WireWriter, WorkerOp, readClientHello,
  readPathInfo, writeHandshakeInfo, writePathInfo, writeServerHello, writeStderrError, negotiateVersion,
} from '../../../src/nix/worker-protocol.js';
import { readRequest } from '../../../src/nix/worker-protocol-requests.js';
import { writeClientHello, writeClientPostHandshake, writeRequest, type ClientRequest } from '../../../src/nix/worker-protocol-client.js';
import { toWirePathInfo } from '../../../src/daemon/lower-daemon-ops.js';
import { parseNarInfo } from '../../../src/nix/narinfo.js';
import { parseStorePath } from '../../../src/nix/store-path.js';
import type { PathInfo } from '../../../src/store/path-info-service.js';
import { loadFixtures, type Fixtures } from '../../support/fixtures.js';
import { skipOrFail } from '../../support/environment.js';
import { decodeSession, isIncomplete, loadCapture, type Capture } from '../../support/worker-protocol-capture.js';

describe('worker protocol: wire format against real Nix 2.26 sessions', function () {
  this.timeout(20 * 60_000);
  let capture: Capture;
  let fixtures: Fixtures;

  before(async function () {
    fixtures = await loadFixtures();
    try {
      capture = await loadCapture();
    } catch (err) {
      skipOrFail(this, `the Nix 2.26 capture (${(err as Error).message.split('\n')[0]})`);
    }
  });

  const protocolSessions = () => capture.sessions.filter((s) => s.label !== 'garbage');

  it('was recorded with Nix 2.26, and covers the lower-store operations', () => {
    assert.match(capture.nixVersion, /2\.26/);
    const ops = new Set(protocolSessions().flatMap((s) => decodeSession(s.client, s.server).exchanges.map((e) => e.request.name)));
    for (const op of ['SetOptions', 'IsValidPath', 'QueryPathInfo', 'QueryValidPaths', 'QueryPathFromHashPart', 'QueryReferrers', 'QueryValidDerivers', 'QueryMissing']) {
      assert.ok(ops.has(op), `no ${op} in the capture: ${[...ops].join(', ')}`);
    }
  });

  it('reads every captured session exactly, both directions', () => {
    for (const s of protocolSessions()) {
      const d = decodeSession(s.client, s.server);
      assert.equal(d.clientVersion, PROTOCOL_VERSION, s.file);
      assert.ok(d.exchanges.length > 0, s.file);
      if (s.label === 'raw-errors') {
        // Nix's daemon sends the error of an unknown op twice, then closes.
        const last = d.exchanges.at(-1)!;
        assert.equal(last.request.kind, 'opaque');
        assert.deepEqual(d.serverRest, last.answerBytes);
      } else {
        assert.equal(d.serverRest.length, 0, `${s.file}: ${d.serverRest.length} bytes left`);
      }
    }
  });

  it('writes the server handshake byte for byte as nix-daemon 2.26', () => {
    for (const s of protocolSessions()) {
      const d = decodeSession(s.client, s.server);
      const w = writeServerHello(new WireWriter());
      w.strings([]);
      writeHandshakeInfo(w, negotiateVersion(d.clientVersion), d.info.daemonVersion!, d.info.trust);
      assert.deepEqual(w.toBuffer(), d.serverHandshake, s.file);
      assert.equal(d.info.daemonVersion, capture.nixVersion.replace(/^nix \(Nix\) /, ''));
    }
  });

  it('writes the client handshake and the lower-store requests byte for byte as Nix 2.26', () => {
    let checked = 0;
    for (const s of capture.sessions.filter((x) => x.label !== 'garbage' && x.label !== 'raw-errors')) {
      const d = decodeSession(s.client, s.server);
      const w = writeClientHello(new WireWriter());
      w.strings([]);
      writeClientPostHandshake(w, d.version);
      assert.deepEqual(w.toBuffer(), d.clientHandshake, s.file);
      for (const e of d.exchanges) {
        const r = e.request;
        let req: ClientRequest | undefined;
        if (r.kind === 'path') req = { op: r.op, path: r.path };
        else if (r.kind === 'string') req = { op: r.op as typeof WorkerOp.QueryPathFromHashPart, value: r.value };
        else if (r.kind === 'paths' && r.op === WorkerOp.QueryValidPaths) req = { op: WorkerOp.QueryValidPaths, paths: r.paths, substitute: r.substitute };
        if (!req) continue;
        assert.deepEqual(writeRequest(new WireWriter(), req, d.version).toBuffer(), e.requestBytes, `${s.file} ${r.name}`);
        checked++;
      }
    }
    assert.ok(checked > 20, `only ${checked} requests compared`);
  });

  it('encodes a fixture narinfo as QueryPathInfo exactly as nix-daemon does for the same path', async () => {
    const lake = fixtures.datalakes['zstd']!;
    let checked = 0;
    const seen = new Set<string>();
    for (const s of protocolSessions()) {
      const d = decodeSession(s.client, s.server);
      for (const e of d.exchanges) {
        if (e.request.kind !== 'path' || e.request.op !== WorkerOp.QueryPathInfo) continue;
        const got = e.result?.kind === 'path-info' ? e.result.value : undefined;
        const expected = new WireWriter().u64(STDERR_LAST).bool(got !== undefined);
        if (got) {
          const sp = parseStorePath(e.request.path);
          const narInfo = parseNarInfo(await readFile(join(lake.dir, `${sp.hashPart}.narinfo`), 'utf8'));
          // nix copy set the registration time; everything else comes from the narinfo.
          writePathInfo(expected, toWirePathInfo({ narInfo } as PathInfo, got.registrationTime), d.version);
          seen.add(e.request.path);
          if (narInfo.deriver) seen.add('deriver');
          if (narInfo.references.length > 1) seen.add('references');
        }
        assert.deepEqual(expected.toBuffer(), e.answerBytes, `${s.file} ${e.request.path}`);
        checked++;
      }
    }
    assert.ok(checked > 20 && seen.has('deriver') && seen.has('references') && seen.has(capture.topDrv), `checked ${checked}: ${[...seen].join(' ')}`);
  });

  it('writes errors as nix-daemon 2.26 does, and reads them back', () => {
    const s = capture.sessions.find((x) => x.label === 'raw-errors')!;
    const d = decodeSession(s.client, s.server);
    const errors = d.exchanges.filter((e) => e.outcome.kind === 'error');
    assert.equal(errors.length, 2); // QueryReferences of a missing path, the unknown op
    for (const e of errors) {
      assert.ok(e.outcome.kind === 'error');
      assert.deepEqual(writeStderrError(new WireWriter(), e.outcome.message, d.version).toBuffer(), e.answerBytes);
    }
    assert.match(errors[0]!.outcome.kind === 'error' ? errors[0]!.outcome.message : '', /is not valid/);
    // The connection survived the first error: IsValidPath was answered in between.
    assert.equal(d.exchanges[1]!.request.name, 'IsValidPath');
    assert.deepEqual(d.exchanges[1]!.result, { kind: 'bool', value: false });
  });

  it('waits on every prefix of a real session, and never misreads one', () => {
    const s = capture.sessions.find((x) => x.label === 'path-info')!;
    const d = decodeSession(s.client, s.server);
    const body = s.client.subarray(d.clientHandshake.length);
    for (let cut = 0; cut < body.length; cut++) {
      const r = new WireReader(body.subarray(0, cut));
      let complete = 0;
      for (;;) {
        if (isIncomplete(() => readRequest(r, d.version))) break;
        complete++;
      }
      assert.ok(complete <= d.exchanges.length);
    }
    for (let cut = 0; cut < s.server.length; cut += 7) {
      assert.ok(isIncomplete(() => decodeSession(s.client, s.server.subarray(0, cut))) || cut === 0);
    }
  });

  it('refuses garbage with ERR_WORKER_PROTOCOL, before reading a huge length', () => {
    const garbage = capture.sessions.find((x) => x.label === 'garbage')!;
    assert.throws(() => readClientHello(new WireReader(garbage.client)), { code: 'ERR_WORKER_PROTOCOL' });
    assert.equal(garbage.server.length, 0, 'nix-daemon closes without a word');
    const huge = new WireWriter().u64(WorkerOp.IsValidPath).u64(1n << 60n).toBuffer();
    assert.throws(() => readRequest(new WireReader(huge), PROTOCOL_VERSION), { code: 'ERR_WORKER_PROTOCOL' });
    const badPad = Buffer.concat([new WireWriter().u64(WorkerOp.IsValidPath).u64(1).toBuffer(), Buffer.from('a\x00\x00\x00\x00\x00\x00\x01', 'latin1')]);
    assert.throws(() => readRequest(new WireReader(badPad), PROTOCOL_VERSION), { code: 'ERR_WORKER_PROTOCOL' });
    assert.throws(() => new WireReader(Buffer.alloc(3)).u64Big(), WireIncomplete);
  });

  it('drops the fields of ValidPathInfo an old client does not know (minor < 16)', () => {
    const info = { narHashBase16: 'ab'.repeat(32), references: ['/nix/store/b', '/nix/store/a'], registrationTime: 5, narSize: 9, ultimate: false, sigs: ['k:s'], ca: 'x' };
    const old = writePathInfo(new WireWriter(), info, (1 << 8) | 15).toBuffer();
    const back = readPathInfo(new WireReader(old), (1 << 8) | 15);
    assert.deepEqual(back, { narHashBase16: info.narHashBase16, references: ['/nix/store/a', '/nix/store/b'], registrationTime: 5, narSize: 9, ultimate: false, sigs: [] });
    const cur = writePathInfo(new WireWriter(), info, PROTOCOL_VERSION).toBuffer();
    assert.equal(cur.length, old.length + 8 + 8 + 8 + 8 + 8 + 8);
  });
});
