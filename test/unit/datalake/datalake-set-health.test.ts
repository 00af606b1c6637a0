/**
 * DatalakeSet health against real servers on 127.0.0.1: a refused port, a blackhole (accepts,
 * never answers), 500s, and recovery. What "down" means (unreachable or erroring, never
 * absence or a refused answer), that a down datalake is skipped at once, re-probed with
 * capped backoff in the background (no busy loop, nothing left after close), fails fast when
 * it is the only one, and is used again as soon as it answers.
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { DatalakeSet, isDatalakeDown, type DatalakeSetOptions } from '../../../src/datalake/datalake-set.js';
import { HttpDatalake, type HttpDatalakeOptions } from '../../../src/datalake/http-datalake.js';
import type { Datalake } from '../../../src/datalake/datalake.js';
import { NarfsError } from '../../../src/errors.js';
import { loadFixtures } from '../../support/fixtures.js';
import { HttpDatalakeServer } from '../../support/http-datalake-server.js';
import { FaultNarServer } from '../../support/fault-nar-server.js';
import { BlackholeServer, refusedUrl } from '../../support/blackhole-server.js';
import { failure } from '../../support/failure.js';

/** Short HTTP deadlines: a blackholed request fails in about a second. */
const HTTP: HttpDatalakeOptions = {
  connectTimeoutMs: 1000, headersTimeoutMs: 1000, bodyTimeoutMs: 1000, smallFileTimeoutMs: 1500,
  attempts: 2, retryBaseMs: 20, closeTimeoutMs: 500,
};

interface Logged { level: string; msg: string; fields: Record<string, unknown> }

/** A logger that records, and lets a test wait for a message (an event, not a sleep). */
function recorder() {
  const lines: Logged[] = [];
  const waiters: Array<{ msg: string; resolve: () => void }> = [];
  const push = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => {
    lines.push({ level, msg, fields });
    for (const w of waiters.filter((x) => msg.startsWith(x.msg))) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  };
  return {
    lines,
    logger: { info: push('info'), warn: push('warn') },
    next: (msg: string) => new Promise<void>((resolve) => waiters.push({ msg, resolve })),
  };
}

describe('DatalakeSet health', function () {
  this.timeout(120_000);
  let lakeDir: string;
  let narinfos: string[];
  const cleanups: Array<() => Promise<void>> = [];
  const later = <T extends { close(): Promise<void> }>(x: T): T => (cleanups.push(() => x.close()), x);
  const set = (urls: string[], options: DatalakeSetOptions = {}) => later(DatalakeSet.fromUrls(urls, { ...HTTP, ...options }));

  before(async function () {
    this.timeout(20 * 60_000);
    const fixtures = await loadFixtures();
    lakeDir = fixtures.datalakes['xz'].dir;
    narinfos = (await readdir(lakeDir)).filter((f) => f.endsWith('.narinfo')).sort();
    assert.ok(narinfos.length >= 6);
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('a refused port is down at start, skipped at once, and used again as soon as it listens', async () => {
    const flaky = later(await FaultNarServer.start(lakeDir));
    await flaky.fail('refuse');
    const good = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const log = recorder();
    // probeBaseMs is long: recovery below must come from the request, not from a timer.
    const s = set([flaky.url, good.url], { logger: log.logger, probeBaseMs: 60_000 });
    await s.open();
    assert.deepEqual(s.status().map((x) => [x.displayUrl, x.up]), [[flaky.url, false], [good.url, true]]);
    assert.ok(log.lines.some((l) => l.level === 'warn' && l.msg.startsWith('datalake unreachable at start')));
    for (const n of narinfos.slice(0, 3)) {
      const t0 = Date.now();
      const found = await s.getBytes(n);
      assert.equal(found?.datalake.displayUrl, good.url);
      assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    }
    // Absent on the good one while the first is down: not absence, and no negative answer.
    const missing = `${'0'.repeat(32)}.narinfo`;
    const err = await failure(s.getBytes(missing), 'ERR_DATALAKE_UNAVAILABLE');
    assert.deepEqual((err.details?.failures as Array<{ kind: string }>).map((f) => f.kind), ['down']);
    // It comes back: the next request that only it could answer probes it and uses it.
    await flaky.clear();
    assert.equal(await s.getBytes(missing), undefined, 'absent everywhere once both answer');
    assert.deepEqual(s.status().map((x) => x.up), [true, true]);
    assert.ok(log.lines.some((l) => l.level === 'info' && l.msg === 'datalake is up again'));
    const found = await s.getBytes(narinfos[0]!);
    assert.equal(found?.datalake.displayUrl, flaky.url, 'first in order again');
  });

  it('a blackhole that goes silent is marked down by its first failure and skipped afterwards', async () => {
    const hole = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const good = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const s = set([hole.url, good.url], { probeBaseMs: 60_000 });
    await s.open();
    assert.deepEqual(s.status().map((x) => x.up), [true, true]);
    hole.stallHeaders('*');
    const t0 = Date.now();
    const first = await s.getBytes(narinfos[0]!);
    const firstMs = Date.now() - t0;
    assert.equal(first?.datalake.displayUrl, good.url);
    assert.ok(firstMs >= 900, `the first lookup waited for the blackhole's deadline (${firstMs} ms)`);
    assert.deepEqual(s.status().map((x) => x.up), [false, true]);
    for (const n of narinfos.slice(1, 5)) {
      const t = Date.now();
      const found = await s.getBytes(n);
      assert.equal(found?.datalake.displayUrl, good.url);
      assert.ok(Date.now() - t < 500, `${n}: took ${Date.now() - t} ms`);
      assert.equal(hole.count(n), 0, `${n} was never asked of the blackhole`);
    }
  });

  it('a blackhole at start does not hold open() beyond probeTimeoutMs; alone, it fails fast', async () => {
    const hole = later(await BlackholeServer.start());
    const s = set([hole.url], { probeTimeoutMs: 800, probeWaitMs: 300, probeBaseMs: 60_000 });
    const t0 = Date.now();
    await s.open({ allowAllDown: true });
    assert.ok(Date.now() - t0 < 800 + 1500, `open took ${Date.now() - t0} ms`);
    assert.equal(s.status()[0]!.error?.code, 'ERR_DATALAKE_TIMEOUT');
    const loop0 = Date.now();
    const connectedAtOpen = hole.connections;
    for (let i = 0; i < 3; i++) {
      const t = Date.now();
      const err = await failure(s.getBytes(narinfos[i]!), 'ERR_DATALAKE_UNAVAILABLE');
      assert.ok(Date.now() - t < 300 + 1000, `took ${Date.now() - t} ms`);
      assert.match(err.message, /every datalake is down/);
      assert.ok(isDatalakeDown(err.cause), 'the cause is the fail-fast answer for a down datalake');
      const pinned = await failure(s.getBytesFrom(s.datalakes[0]!, narinfos[i]!), 'ERR_DATALAKE_UNAVAILABLE');
      assert.ok(isDatalakeDown(pinned));
    }
    // One probe at a time (each holds one connection for probeTimeoutMs): the six requests
    // joined the probe in flight instead of each starting its own.
    const probes = hole.connections - connectedAtOpen;
    assert.ok(probes <= 1 + Math.ceil((Date.now() - loop0) / 800), `${probes} probes in ${Date.now() - loop0} ms`);
    assert.ok(probes < 6, `${probes} probes for 6 requests`);
  });

  it('500s after retries mark a datalake down; 404, a refused answer and a 401 do not', async () => {
    const a = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const b = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const s = set([a.url, b.url], { probeBaseMs: 60_000 });
    await s.open();
    a.status(narinfos[0]!, 404);
    assert.equal((await s.getBytes(narinfos[0]!))?.datalake.displayUrl, b.url);
    const refused = await s.find(narinfos[1]!, (bytes, d) => {
      if (d.displayUrl === a.url) throw new NarfsError('ERR_NARINFO_SIGNATURE', 'refused for the test');
      return bytes.length;
    });
    assert.equal(refused?.datalake.displayUrl, b.url);
    a.status(narinfos[2]!, 401);
    assert.equal((await s.getBytes(narinfos[2]!))?.datalake.displayUrl, b.url);
    assert.deepEqual(s.status().map((x) => x.up), [true, true], 'absence, a refusal and a 401 leave it up');
    // Refused everywhere: the refusal itself is thrown, not a datalake failure.
    await failure(s.find(narinfos[3]!, () => { throw new NarfsError('ERR_NARINFO_SIGNATURE', 'no'); }), 'ERR_NARINFO_SIGNATURE');
    a.status('*', 500);
    assert.equal((await s.getBytes(narinfos[4]!))?.datalake.displayUrl, b.url);
    assert.equal(a.count(narinfos[4]!), HTTP.attempts, 'the backend retried before the set gave up on it');
    assert.deepEqual(s.status().map((x) => x.up), [false, true]);
    assert.equal(s.status()[0]!.error?.code, 'ERR_DATALAKE_UNAVAILABLE');
  });

  it('getRangeFrom keeps the same health: 500s mark it down, a pinned range probes it back; 416 and absence do not', async () => {
    const a = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const s = set([a.url], { probeBaseMs: 60_000 });
    await s.open();
    const d = s.datalakes[0]!;
    const nar = (await readdir(`${lakeDir}/nar`)).sort()[0]!;
    const whole = await readFile(`${lakeDir}/nar/${nar}`);
    assert.deepEqual(await s.getRangeFrom(d, `nar/${nar}`, 3, 17), whole.subarray(3, 20));
    assert.equal(await s.getRangeFrom(d, 'nar/none.nar.xz', 0, 10), undefined);
    await failure(s.getRangeFrom(d, `nar/${nar}`, whole.length, 1), 'ERR_INVALID_ARGUMENT');
    assert.equal(s.status()[0]!.up, true, 'absence and a bad offset leave it up');
    a.status(`nar/${nar}`, 500);
    await failure(s.getRangeFrom(d, `nar/${nar}`, 0, 10), 'ERR_DATALAKE_UNAVAILABLE');
    assert.equal(s.status()[0]!.up, false);
    a.clear();
    const before = a.count('nix-cache-info');
    assert.deepEqual(await s.getRangeFrom(d, `nar/${nar}`, 0, 10), whole.subarray(0, 10));
    assert.equal(a.count('nix-cache-info'), before + 1, 'one probe brought it back');
    assert.equal(s.status()[0]!.up, true);
    // A backend without ranged reads: ERR_RANGE_UNSUPPORTED, no request, no health change.
    const plain: Datalake = { displayUrl: 'plain://x', open: d.open.bind(d), getBytes: d.getBytes.bind(d), getStream: d.getStream.bind(d), close: async () => {} };
    const p = later(new DatalakeSet([plain]));
    await p.open();
    const n = a.totalRequests;
    await failure(p.getRangeFrom(plain, `nar/${nar}`, 0, 10), 'ERR_RANGE_UNSUPPORTED');
    assert.equal(a.totalRequests, n);
    assert.equal(p.status()[0]!.up, true);
  });

  it('a failure reported from outside (a NAR stream that died) marks it down; a pinned request probes it back', async () => {
    const a = later(await HttpDatalakeServer.start({ root: lakeDir }));
    const s = set([a.url], { probeBaseMs: 60_000 });
    await s.open();
    const d = s.datalakes[0]!;
    s.reportFailure(d, new NarfsError('ERR_NAR_HASH_MISMATCH', 'the data, not the datalake'));
    assert.equal(s.status()[0]!.up, true);
    s.reportFailure(d, new NarfsError('ERR_DATALAKE_TRUNCATED', 'the body stopped'));
    assert.equal(s.status()[0]!.up, false);
    const before = a.count('nix-cache-info');
    const bytes = await s.getBytesFrom(d, narinfos[0]!);
    assert.ok(bytes && bytes.length > 0);
    assert.equal(a.count('nix-cache-info'), before + 1, 'one probe brought it back');
    assert.equal(s.status()[0]!.up, true);
  });

  it('background probes back off exponentially (no busy loop), mark it up when it answers, and stop at close()', async () => {
    const a = later(await HttpDatalakeServer.start({ root: lakeDir }));
    a.status('nix-cache-info', 503);
    const log = recorder();
    // The real HTTP datalake, with the time of each open() (= each probe) noted.
    const real = later(new HttpDatalake(a.url, { ...HTTP, attempts: 1 }));
    const opens: number[] = [];
    let sixth!: () => void;
    const sixOpens = new Promise<void>((resolve) => (sixth = resolve));
    const observed: Datalake = {
      displayUrl: real.displayUrl,
      open: (o) => {
        opens.push(Date.now());
        if (opens.length === 6) sixth();
        return real.open(o);
      },
      getBytes: (r, o) => real.getBytes(r, o),
      getStream: (r, o) => real.getStream(r, o),
      close: () => real.close(),
    };
    const s = new DatalakeSet([observed], { logger: log.logger, probeBaseMs: 100, probeMaxMs: 400 });
    await s.open({ allowAllDown: true });
    await sixOpens;
    const gaps = opens.slice(1).map((t, i) => t - opens[i]!);
    // Delays 100·2^n ±25 % after each failed probe, capped at 400 ±25 %: the first probe
    // comes after ≥ 75 ms, then ≥ 150, then ≥ 300 each: never a tight loop.
    assert.ok(gaps[0]! >= 75, `gaps ${gaps.join(', ')}`);
    assert.ok(gaps[1]! >= 150, `gaps ${gaps.join(', ')}`);
    assert.ok(gaps.slice(2).every((g) => g >= 300), `gaps ${gaps.join(', ')}`);
    assert.ok(log.lines.filter((l) => l.msg === 'datalake still down').length <= 3, 'failed probes are logged at 1, 2, 4… only');
    const up = log.next('datalake is up again');
    a.clear('nix-cache-info');
    await up;
    assert.equal(s.status()[0]!.up, true);
    // Down again, then closed: no probe after close().
    a.status('*', 503);
    await failure(s.getBytes(narinfos[0]!), 'ERR_DATALAKE_UNAVAILABLE');
    assert.equal(s.status()[0]!.up, false);
    await s.close();
    const after = opens.length;
    // Waiting for an absence: more than three capped backoff periods, nothing may happen.
    await new Promise((r) => setTimeout(r, 1600));
    assert.equal(opens.length, after, 'no probe after close()');
  });
});
