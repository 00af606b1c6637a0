/**
 * A real `narfs mount --config FILE` against authenticated HTTPS datalakes (a CA made in the
 * test, a bearer token file, a netrc file, and a URL with user:password in the config file):
 * real Nix hashes a store path read through the mount, and no secret shows up in the
 * daemon's output, in /proc/<pid>/cmdline or /proc/<pid>/environ of narfs or of any
 * process it started, nor in the error printed when the credentials are refused.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NIX_ENV, run } from '../support/mount-harness.js';
import { NARFS_BIN, startNarfsMount, type CliDaemon } from '../support/cli-daemon.js';
import { HttpDatalakeServer } from '../support/http-datalake-server.js';
import { haveOpenssl, makeTestCa, type TestCa } from '../support/test-ca.js';
import { skipOrFail } from '../support/environment.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { formatHash } from '../../src/nix/hash.js';
import { parseStorePath, storePathBase } from '../../src/nix/store-path.js';

/** The pid and every descendant of it (from /proc/<pid>/stat's ppid field). */
async function processTree(root: number): Promise<number[]> {
  const parents = new Map<number, number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const m = /\) \S+ (\d+)/.exec(stat);
    if (m) parents.set(Number(name), Number(m[1]));
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    for (const [pid, ppid] of parents) if (ppid === out[i] && !out.includes(pid)) out.push(pid);
  }
  return out;
}

describe('e2e: authenticated HTTPS datalakes from a --config file, secrets nowhere', function () {
  this.timeout(5 * 60_000);
  let fixtures: Fixtures;
  let ca: TestCa;
  let root: string;
  let mnt: string;
  const servers: HttpDatalakeServer[] = [];
  const daemons: CliDaemon[] = [];
  const token = `tok-${randomBytes(16).toString('hex')}`;
  const netrcPassword = `netrc-${randomBytes(12).toString('hex')}`;
  const urlPassword = `url-${randomBytes(12).toString('hex')}`;
  const secrets = [token, netrcPassword, urlPassword];

  before(async function () {
    if (!(await haveOpenssl())) skipOrFail(this, 'openssl');
    fixtures = await loadFixtures();
    ca = await makeTestCa();
  });
  after(async () => {
    await ca?.cleanup();
  });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-auth-e2e-'));
    mnt = join(root, 'nix', 'store');
    await mkdir(mnt, { recursive: true });
  });
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
    await run('fusermount', ['-uz', mnt]);
    for (const s of servers.splice(0)) await s.close();
    await rm(root, { recursive: true, force: true });
  });

  const lakeDir = () => fixtures.datalakes['zstd'].dir;
  const tls = () => ({ key: ca.key, cert: ca.cert });

  async function writeConfig(lines: string[]): Promise<string> {
    const conf = join(root, 'narfs.conf');
    await writeFile(conf, lines.join('\n') + '\n', { mode: 0o600 });
    return conf;
  }

  function assertNoSecret(text: string, where: string): void {
    for (const s of secrets) assert.ok(!text.includes(s), `a secret in ${where}: ${text.slice(0, 2000)}`);
  }

  it('mounts with a token, a netrc file and URL credentials from the config file; none leaks', async () => {
    const bearer = await HttpDatalakeServer.start({ root: lakeDir(), tls: tls() });
    bearer.requireBearer(token);
    const basic = await HttpDatalakeServer.start({ root: lakeDir(), tls: tls(), auth: { username: 'alice', password: netrcPassword } });
    servers.push(bearer, basic);
    const tokenFile = join(root, 'token');
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    const netrc = join(root, 'netrc');
    await writeFile(netrc, `machine 127.0.0.1 login alice password ${netrcPassword}\n`, { mode: 0o600 });
    const bearerPort = new URL(bearer.url).port;
    // The third datalake has wrong credentials in its URL (they win over netrc): refused,
    // logged, and its password must not appear in that log line either.
    const wrongUrl = basic.url.replace('https://', `https://carol:${urlPassword}@`) + '?priority=90';
    const conf = await writeConfig([
      '# a unit file names this file only',
      `datalake = ${bearer.url}?priority=10`,
      `datalake = ${basic.url}?priority=20`,
      `datalake = ${wrongUrl}`,
      `trusted-public-keys = ${fixtures.publicKey}`,
      `bearer-token-file = 127.0.0.1:${bearerPort}=${tokenFile}`,
      `netrc-file = ${netrc}`,
      `ssl-cert-file = ${ca.caFile}`,
      `cache-dir = ${join(root, 'cache')}`,
    ]);
    const d = await startNarfsMount([mnt, '--config', conf]);
    daemons.push(d);
    const pid = d.child.pid!;

    // It works: a store path read through the mount hashes to its NarHash (real Nix).
    const path = fixtures.paths.find((p) => p.role === 'tree')!;
    const base = storePathBase(parseStorePath(path.storePath));
    const ni = parseNarInfo(await readFile(join(lakeDir(), `${base.slice(0, 32)}.narinfo`), 'utf8'));
    const h = await run('nix', ['hash', 'path', '--type', 'sha256', '--base32', join(mnt, base)], NIX_ENV);
    assert.equal(h.code, 0, h.stderr);
    assert.equal(`sha256:${h.stdout.trim()}`, formatHash(ni.narHash, 'nix32'));
    assert.ok(bearer.requests.some((r) => r.relPath.startsWith('nar/')), 'the NAR came from the token datalake');
    assert.ok(basic.requests.some((r) => r.headers.authorization?.startsWith('Basic ')), 'the netrc datalake was opened with Basic auth');

    // Secrets: in no command line or environment of narfs and its children, nor in its output.
    const pids = await processTree(pid);
    for (const p of pids) {
      const cmdline = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
      assertNoSecret(cmdline.replace(/\0/g, ' '), `/proc/${p}/cmdline`);
      assertNoSecret(await readFile(`/proc/${p}/environ`, 'utf8').catch(() => ''), `/proc/${p}/environ`);
    }
    assert.ok((await readFile(`/proc/${pid}/cmdline`, 'utf8')).includes(conf), 'looked at the right process');
    await d.stop();
    const output = d.stdout.join('') + d.stderr.join('');
    assert.match(output, /ERR_DATALAKE_AUTH/, 'the refused datalake was reported');
    assertNoSecret(output, 'the daemon output');
  });

  it('refused credentials: exit 1 with ERR_DATALAKE_AUTH, and no secret in the error', async () => {
    const bearer = await HttpDatalakeServer.start({ root: lakeDir(), tls: tls() });
    bearer.requireBearer(`other-${token}`);
    servers.push(bearer);
    const tokenFile = join(root, 'token');
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    for (const format of ['text', 'json']) {
      const conf = await writeConfig([
        `datalake = ${bearer.url.replace('https://', `https://bob:${urlPassword}@`)}`,
        `datalake = ${bearer.url}/`,
        'require-sigs = false',
        `bearer-token-file = ${tokenFile}`,
        `ssl-cert-file = ${ca.caFile}`,
        `cache-dir = ${join(root, 'cache')}`,
        `log-format = ${format}`,
      ]);
      const r = await run(process.execPath, [NARFS_BIN, 'mount', mnt, '--config', conf]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /ERR_DATALAKE_AUTH/);
      assertNoSecret(r.stdout + r.stderr, `the ${format} error output`);
    }
  });
});
