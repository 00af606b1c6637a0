/**
 * Failover timing: with two dead datalakes asked before a good one, an uncached lookup
 * (PathInfoService: narinfo fetched, parsed, signature checked, cached) takes under 1 s
 * more than with the good one alone, measured in the same test on the same machine.
 *
 * "Dead" is both kinds: a port where nothing listens (refused at once) and a server that
 * accepts and never answers (a blackhole: only deadlines end the wait). The blackhole is
 * the hard case: once its first request has failed it must be marked down and skipped,
 * not waited for again by every lookup. The HTTP deadlines here are a few seconds, so a
 * lookup that waits for the blackhole is several seconds slower than the baseline.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatalakeSet } from '../../src/datalake/datalake-set.js';
import type { HttpDatalakeOptions } from '../../src/datalake/http-datalake.js';
import { LevelMetadataCache } from '../../src/cache/level-metadata-cache.js';
import { PathInfoService } from '../../src/store/path-info-service.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { BlackholeServer, refusedUrl } from '../support/blackhole-server.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';

/** Deadlines long enough that waiting for a blackhole is plainly visible (≥ 3 s a lookup). */
const HTTP: HttpDatalakeOptions = {
  connectTimeoutMs: 3000, headersTimeoutMs: 3000, bodyTimeoutMs: 3000, smallFileTimeoutMs: 4000, attempts: 2, retryBaseMs: 50,
};
const MARGIN_MS = 1000;

describe('integration: failover timing, two dead datalakes and one good one', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let hashParts: string[];
  const cleanups: Array<() => Promise<unknown>> = [];

  before(async function () {
    this.timeout(20 * 60_000);
    fixtures = await loadFixtures();
    hashParts = (await readdir(fixtures.datalakes['xz'].dir)).filter((f) => f.endsWith('.narinfo')).map((f) => f.slice(0, 32)).sort();
    assert.ok(hashParts.length >= 7);
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  /** A PathInfoService over `urls` with an empty metadata cache of its own. */
  async function service(urls: string[], logs: LogLine[]): Promise<{ infos: PathInfoService; set: DatalakeSet }> {
    const dir = await mkdtemp(join(tmpdir(), 'narfs-failover-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const logger = captureLogger(logs);
    const set = DatalakeSet.fromUrls(urls, { ...HTTP, logger });
    cleanups.push(() => set.close());
    await set.open();
    const meta = await LevelMetadataCache.open(join(dir, 'meta'));
    cleanups.push(() => meta.close());
    const infos = new PathInfoService(set, meta,
      { requireSigs: true, trustedKeys: parseTrustedPublicKeys(fixtures.publicKey) },
      { negativeTtlMs: 30_000, logger });
    return { infos, set };
  }

  /** Milliseconds of each uncached lookup, one after the other; each must find its narinfo. */
  async function timeLookups(infos: PathInfoService, parts: string[]): Promise<number[]> {
    const ms: number[] = [];
    for (const p of parts) {
      const t0 = performance.now();
      const info = await infos.getByHashPart(p);
      ms.push(performance.now() - t0);
      assert.ok(info, `${p} resolved`);
    }
    return ms;
  }

  async function compare(deadUrls: string[], good: HttpDatalakeServer, parts: string[]): Promise<{ base: number[]; dead: number[] }> {
    const base = await timeLookups((await service([good.url], [])).infos, parts);
    const logs: LogLine[] = [];
    const { infos, set } = await service([...deadUrls, good.url], logs);
    assert.deepEqual(set.datalakes.map((d) => d.displayUrl), [...deadUrls, good.url], 'the dead ones are asked first');
    const warmup = hashParts[hashParts.length - 1]!; // pays the first failure of a lake that died after start
    assert.ok(await infos.getByHashPart(warmup));
    const dead = await timeLookups(infos, parts);
    const worstBase = Math.max(...base);
    for (const [i, ms] of dead.entries()) {
      assert.ok(ms < worstBase + MARGIN_MS,
        `lookup ${i} took ${ms.toFixed(0)} ms with dead datalakes, the good one alone at most ${worstBase.toFixed(0)} ms (all: ${dead.map((x) => x.toFixed(0)).join(', ')})`);
    }
    return { base, dead };
  }

  it('a refused port and a blackhole, both dead from the start', async () => {
    const good = await HttpDatalakeServer.start({ root: fixtures.datalakes['xz'].dir });
    cleanups.push(() => good.close());
    const hole = await BlackholeServer.start();
    cleanups.push(() => hole.close());
    await compare([await refusedUrl(), hole.url], good, hashParts.slice(0, 5));
  });

  it('a refused port and a blackhole that went silent after start: marked down by its first failure, then skipped', async () => {
    const good = await HttpDatalakeServer.start({ root: fixtures.datalakes['xz'].dir });
    cleanups.push(() => good.close());
    const silent = await HttpDatalakeServer.start({ root: fixtures.datalakes['xz'].dir });
    cleanups.push(() => silent.close());
    const refused = await refusedUrl();
    const parts = hashParts.slice(0, 5);
    // Opened while it still answered; silent from the first lookup on.
    const base = await timeLookups((await service([good.url], [])).infos, parts);
    const logs: LogLine[] = [];
    const { infos, set } = await service([refused, silent.url, good.url], logs);
    assert.deepEqual(set.status().map((s) => s.up), [false, true, true]);
    silent.stallHeaders('*');
    const warmup = hashParts[hashParts.length - 1]!;
    assert.ok(await infos.getByHashPart(warmup), 'the first lookup waits out the silent one, then the good one answers');
    assert.deepEqual(set.status().map((s) => s.up), [false, false, true], 'marked down by its first failure');
    const dead = await timeLookups(infos, parts);
    const worstBase = Math.max(...base);
    for (const [i, ms] of dead.entries()) {
      assert.ok(ms < worstBase + MARGIN_MS, `lookup ${i}: ${ms.toFixed(0)} ms vs at most ${worstBase.toFixed(0)} ms alone`);
    }
    for (const p of parts) assert.equal(silent.count(`${p}.narinfo`), 0, `${p} was not asked of the silent datalake`);
  });
});
