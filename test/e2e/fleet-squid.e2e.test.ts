/**
 * A fleet behind a site cache: a real Squid (Debian's) with the settings README.md
 * recommends, in front of an HTTP datalake; two `narfs mount`s with separate cache dirs and
 * `--proxy` pointing at Squid read the same closure (real Nix: `nix hash path` of every
 * fixture path equals its NarHash). The first mount's NARs come from the datalake through
 * Squid (their requests carry Squid's Via header); the second mount's NAR bytes come from
 * Squid alone: the datalake counts no NAR request during the second read.
 *
 * Also: an https:// datalake with a bearer token goes through the same Squid in a CONNECT
 * tunnel (end to end TLS with the test's CA): it works, and Squid never sees the token.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run } from '../support/mount-harness.js';
import { startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { haveSquid, startSquid, type Squid } from '../support/squid.js';
import { haveOpenssl, makeTestCa } from '../support/test-ca.js';
import { skipOrFail } from '../support/environment.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

describe('e2e: a fleet of mounts shares one site cache (Squid)', function () {
  this.timeout(20 * 60_000);
  let fixtures: Fixtures;
  let squid: Squid | undefined;
  let server: HttpDatalakeServer | undefined;
  let root: string;
  const daemons: CliDaemon[] = [];
  const mountpoints: string[] = [];

  before(async function () {
    if (!haveSquid()) skipOrFail(this, 'squid (Debian package squid)');
    fixtures = await loadFixtures();
    squid = await startSquid();
  });
  after(async () => {
    await squid?.stop();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-fleet-'));
  });
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
    for (const m of mountpoints.splice(0)) await run('fusermount', ['-uz', m]);
    await server?.close();
    server = undefined;
    await rm(root, { recursive: true, force: true });
  });

  /** Squid writes a log line when a transaction ends (a tunnel: when it closes): wait for it. */
  async function squidLogMatching(pred: (log: string) => boolean): Promise<string> {
    const end = Date.now() + 60_000;
    for (;;) {
      const log = await squid!.accessLog();
      if (pred(log) || Date.now() > end) return log;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function mount(name: string, args: string[]): Promise<string> {
    const mnt = join(root, name, 'nix', 'store');
    await mkdir(mnt, { recursive: true });
    mountpoints.push(mnt);
    const d = await startNarfsMount([mnt, ...args, '--cache-dir', join(root, name, 'cache')]);
    daemons.push(d);
    return mnt;
  }

  it('the second mount reads every NAR from Squid, none from the datalake', async () => {
    const lake = fixtures.datalakes['zstd'];
    server = await HttpDatalakeServer.start({ root: lake.dir });
    const narUrls = new Map<string, string>(); // base → nar/… relPath
    const narHashes = new Map<string, string>();
    for (const p of fixtures.paths) {
      const base = storePathBase(parseStorePath(p.storePath));
      const ni = parseNarInfo(await readFile(join(lake.dir, `${base.slice(0, 32)}.narinfo`), 'utf8'));
      narUrls.set(base, ni.url);
      narHashes.set(base, formatHash(ni.narHash, 'nix32'));
    }
    const common = ['--datalake', server.url, '--trusted-public-keys', fixtures.publicKey, '--proxy', squid!.url];
    const a = await mount('a', common);
    const b = await mount('b', common);
    // Two store paths with the same NAR bytes share one NAR file.
    const distinctNars = [...new Set(narUrls.values())];
    const narRequests = () => distinctNars.reduce((n, u) => n + server!.count(u), 0);

    const readAll = async (mnt: string, who: string) => {
      for (const [base, want] of narHashes) {
        const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(mnt, base)], NIX_ENV);
        assert.equal(h.code, 0, `${who}: nix hash path ${base}: ${h.stderr}`);
        assert.equal(`sha256:${h.stdout.trim()}`, want, `${who}: NarHash of ${base}`);
      }
    };

    await readAll(a, 'first mount');
    const afterFirst = narRequests();
    // A path of symlinks and empty files needs no NAR when a .ls listing describes it.
    const fetched = distinctNars.filter((u) => server!.count(u) > 0);
    assert.ok(fetched.length >= distinctNars.length - 2, `the first mount fetched ${fetched.length} of ${distinctNars.length} NARs`);
    const narLog = server.requests.filter((r) => r.relPath.startsWith('nar/'));
    assert.ok(narLog.every((r) => /squid/i.test(String(r.headers.via))), 'every NAR request came through Squid (Via)');

    await readAll(b, 'second mount');
    assert.equal(narRequests(), afterFirst, 'the second mount caused no NAR request at the datalake');
    const narHits = (log: string) => log.split('\n').filter((l) => /\/nar\//.test(l) && /HIT/.test(l)).length;
    const log = await squidLogMatching((l) => narHits(l) >= fetched.length);
    assert.ok(narHits(log) >= fetched.length, `Squid served ${narHits(log)} NAR hits for ${fetched.length} NARs:\n${log}`);
  });

  it('https:// with a bearer token goes through Squid as a CONNECT tunnel; Squid never sees the token', async function () {
    if (!(await haveOpenssl())) skipOrFail(this, 'openssl');
    const ca = await makeTestCa();
    try {
      const token = `tok-${randomBytes(16).toString('hex')}`;
      server = await HttpDatalakeServer.start({ root: fixtures.datalakes['zstd'].dir, tls: { key: ca.key, cert: ca.cert } });
      server.requireBearer(token);
      const tokenFile = join(root, 'token');
      await writeFile(tokenFile, token, { mode: 0o600 });
      const conf = join(root, 'narfs.conf');
      await writeFile(conf, [
        `datalake = ${server.url}`,
        `trusted-public-keys = ${fixtures.publicKey}`,
        `bearer-token-file = ${tokenFile}`,
        `ssl-cert-file = ${ca.caFile}`,
        `proxy = ${squid!.url}`,
      ].join('\n'));
      const mnt = await mount('tls', ['--config', conf]);
      const p = fixtures.paths.find((x) => x.role === 'tree')!;
      const base = storePathBase(parseStorePath(p.storePath));
      const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(mnt, base)], NIX_ENV);
      assert.equal(h.code, 0, h.stderr);
      assert.equal(`sha256:${h.stdout.trim()}`, p.narHash);
      const port = new URL(server.url).port;
      for (const d of daemons.splice(0)) assert.equal(await d.stop(), 0); // closes the tunnels
      const log = await squidLogMatching((l) => l.includes(`CONNECT 127.0.0.1:${port}`));
      assert.match(log, new RegExp(`CONNECT 127\\.0\\.0\\.1:${port}`), 'the tunnel went through Squid');
      assert.ok(!log.includes(token));
      assert.ok(!(await readFile(join(squid!.dir, 'cache.log'), 'utf8')).includes(token));
    } finally {
      await ca.cleanup();
    }
  });
});
