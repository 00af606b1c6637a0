/**
 * The fast `narfs register` (bin/narfs run as a program → native/client/fast-client.c
 * → the daemon's control socket, op "cli", src/daemon/cli-operation.ts) against the Node
 * CLI through the same daemon: the same registration, the same stdout, the same error
 * reports and exit statuses; relative paths are the caller's; and every way the fast path
 * can fail ends in the Node CLI, which then does the job (no daemon, an older daemon that
 * does not know op "cli", a connection closed early, --help), except a daemon that passes
 * its own deadline: then the client prints the daemon's deadline text and exits 1.
 *
 * `narfs prefetch … --detach` takes the same way (the client reads the --trace files and
 * sends their text): the same lines and exit statuses as the Node CLI, relative paths the
 * caller's, and what the daemon leaves to the Node CLI (no --detach, a trace the client
 * cannot read) ends there.
 *
 * "Without node" is checked by running the fast path with a PATH that has no node: the
 * client can then only succeed by not starting one. Every case runs twice: with the
 * client npm run build made, and with its source built under AddressSanitizer and UBSan
 * (it parses the daemon's frames and escapes the trace files it reads).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { silentLogger } from '../../src/log.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { readValidPaths } from '../../src/nixdb/index.js';
import { CONTROL_SOCKET, startControlServer, type ControlServer } from '../../src/daemon/control-server.js';
import { openStoreStack, type StoreStack } from '../../src/daemon/store-stack.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures, type Fixtures } from '../support/fixtures.js';
import { NARFS_BIN } from '../support/cli-daemon.js';

const FAST_CLIENT = fileURLToPath(new URL('../../build/Release/narfs-client', import.meta.url));
/** A PATH without node (and without anything else). */
const NO_NODE = { PATH: '/var/empty' };

interface Outcome { code: number; stdout: string; stderr: string }

/** Runs `cmd args` in `cwd` with `env` over this process's environment. */
function exec(cmd: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, timeout: 300_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** bin/narfs run as a program (sh, then the C client) and as `node bin/narfs`. */
/**
 * The client under test: bin/narfs run as a program (which execs build/Release/narfs-client
 * SCRIPT …), or, for the sanitizer run, a build of the same source with AddressSanitizer
 * and UBSan run the way bin/narfs runs it.
 */
let sanitized: string | undefined;
const SANITIZER_ENV = { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1', UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1' };
const client = (command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv }) => sanitized
  ? exec(sanitized, [NARFS_BIN, command, ...args], { ...options, env: { ...options.env, ...SANITIZER_ENV } })
  : exec(NARFS_BIN, [command, ...args], options);
const fast = (args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) => client('register', args, options);
const viaNode = (args: string[], options: { cwd?: string } = {}) => exec(process.execPath, [NARFS_BIN, 'register', ...args], options);
const fastPrefetch = (args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) => client('prefetch', args, options);
const nodePrefetch = (args: string[], options: { cwd?: string } = {}) => exec(process.execPath, [NARFS_BIN, 'prefetch', ...args], options);

/** A fake daemon on `<dir>/control.sock`: `answer(op, socket)` per request; records the ops. */
async function fakeDaemon(dir: string, answer: (op: string, s: Socket) => void): Promise<{ server: Server; ops: string[] }> {
  const ops: string[] = [];
  const clients = new Set<Socket>();
  const server = createServer((s) => {
    clients.add(s);
    s.on('close', () => clients.delete(s));
    let buf = '';
    s.setEncoding('utf8');
    s.on('error', () => {});
    s.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const op = String((JSON.parse(buf.slice(0, nl)) as { op?: unknown }).op);
      ops.push(op);
      answer(op, s);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(join(dir, CONTROL_SOCKET), () => resolve());
  });
  Object.assign(server, { clients });
  return { server, ops };
}

const closeServer = (s: Server) => new Promise<void>((resolve) => {
  s.close(() => resolve());
  for (const c of (s as Server & { clients?: Set<Socket> }).clients ?? []) c.destroy();
});

/** Log lines carry timings: compare them without the numbers. */
const noTimes = (s: string) => s.replace(/ms=\d+/g, 'ms=N');

/** The client's source built with AddressSanitizer and UBSan (any finding aborts it). */
async function buildSanitized(): Promise<string> {
  const out = fileURLToPath(new URL('../../build/sanitize/narfs-client', import.meta.url));
  await mkdir(dirname(out), { recursive: true });
  const src = fileURLToPath(new URL('../../native/client/fast-client.c', import.meta.url));
  const r = await exec('gcc', ['-std=c11', '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer',
    '-Wall', '-Wextra', '-Werror', src, '-o', out]);
  assert.equal(r.code, 0, `gcc with sanitizers: ${r.stderr}`);
  return out;
}

function fastClientSuite(withSanitizers: boolean) {
  return function (this: Mocha.Suite) {
  this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
  let fixtures: Fixtures;
  let root: string;
  let cacheDir: string;
  let stack: StoreStack | undefined;
  let control: ControlServer | undefined;
  const servers: Server[] = [];

  before(async () => {
    assert.ok(existsSync(FAST_CLIENT), `${FAST_CLIENT} is built by npm run build (binding.gyp)`);
    fixtures = await loadFixtures();
    if (withSanitizers) sanitized = await buildSanitized();
  });
  after(() => { sanitized = undefined; });
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'narfs-fast-register-'));
    cacheDir = join(root, 'cache');
    await mkdir(cacheDir, { mode: 0o700 });
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await closeServer(s);
    await control?.close();
    control = undefined;
    await stack?.close();
    stack = undefined;
    await rm(root, { recursive: true, force: true });
  });

  /** A daemon's store stack and control socket, in this process (no mount needed). */
  const startDaemon = async () => {
    stack = await openStoreStack({
      datalakes: [fixtures.datalakes['zstd']!.url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
      requireSigs: true, cacheDir, negativeTtlMs: 60_000,
    }, silentLogger);
    control = await startControlServer(cacheDir, { stack, defaultLower: undefined, logger: silentLogger });
  };

  it('registers through the daemon without starting node, printing what the Node CLI prints', async () => {
    await startDaemon();
    const a = await fast(['--lower', join(root, 'a'), '--cache-dir', cacheDir, '--all'], { env: NO_NODE });
    assert.equal(a.code, 0, a.stderr);
    const b = await viaNode(['--lower', join(root, 'b'), '--cache-dir', cacheDir, '--all']);
    assert.equal(b.code, 0, b.stderr);
    assert.equal(a.stdout.replace(join(root, 'a'), 'LOWER'), b.stdout.replace(join(root, 'b'), 'LOWER'));
    assert.match(a.stdout, new RegExp(`^narfs: registered ${fixtures.paths.length} paths in ${join(root, 'a')} \\(${fixtures.paths.length} new, 0 already valid\\)\n$`));
    assert.equal(noTimes(a.stderr).replace(join(root, 'a'), 'LOWER'), noTimes(b.stderr).replace(join(root, 'b'), 'LOWER'));
    assert.deepEqual(readValidPaths(join(root, 'a')).sort(), readValidPaths(join(root, 'b')).sort());
    // Idempotent, as on the Node path.
    const again = await fast(['--lower', join(root, 'a'), '--cache-dir', cacheDir, fixtures.top], { env: NO_NODE });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /\(0 new, \d+ already valid\)/);
  });

  it('errors: the same report and exit status as the Node CLI, in text and JSON', async () => {
    await startDaemon();
    const lower = join(root, 'lower');
    const cases: string[][] = [
      ['--lower', lower, '--cache-dir', cacheDir, '--timeout', 'soon'],
      ['--lower', lower, '--cache-dir', cacheDir, '--no-such-option'],
      ['--cache-dir', cacheDir, fixtures.top],
      ['--lower', lower, '--cache-dir', cacheDir, 'not-a-store-path'],
      ['--lower', lower, '--cache-dir', cacheDir, '--log-format', 'json', `${'0'.repeat(32)}-not-in-the-datalake`],
      ['--lower', lower, '--cache-dir', cacheDir, '--from-file', join(root, 'absent.txt')],
    ];
    for (const args of cases) {
      const a = await fast(args, { env: NO_NODE });
      const b = await viaNode(args);
      assert.notEqual(b.code, 0, `${args.join(' ')}: the Node CLI fails`);
      assert.deepEqual(a, b, args.join(' '));
    }
    // The --timeout bound: no registration finishes within 1 ms (a worker round trip at
    // least). Which log lines come before it depends on speed; the report does not.
    const args = ['--lower', join(root, 'timeout'), '--cache-dir', cacheDir, '--timeout', '1ms', '--all'];
    const a = await fast(args, { env: NO_NODE });
    const b = await viaNode(args);
    const report = 'narfs: error ERR_DEADLINE: the daemon did not finish within 1 ms\n  hint: ';
    for (const r of [a, b]) {
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, '');
      assert.ok(r.stderr.includes(report), r.stderr);
    }
    assert.equal(a.stderr.slice(a.stderr.indexOf(report)), b.stderr.slice(b.stderr.indexOf(report)));
  });

  it('prefetch --trace --detach through the daemon without starting node: the lines and statuses of the Node CLI', async () => {
    await startDaemon();
    const base = fixtures.top.slice('/nix/store/'.length);
    const trace = join(root, 'job.trace');
    await writeFile(trace, `# narfs read trace 1\n${base}\t0\nnot a trace line\n`);
    const args = ['--trace', trace, '--detach', '--cache-dir', cacheDir];
    const a = await fastPrefetch(args, { env: NO_NODE });
    const b = await nodePrefetch(args);
    assert.equal(a.code, 0, a.stderr);
    assert.deepEqual(a, b);
    assert.match(a.stderr, /^narfs: warn: 1 lines of the trace are not .*\nnarfs: prefetch goes on in the daemon/);
    // Bytes the client escapes (NUL, control characters, bytes >= 0x80) and a trace of
    // ~600 KiB: the same lines as the Node CLI, which reads the file as UTF-8.
    const odd = join(root, 'odd.trace');
    const lines = Array.from({ length: 12_000 }, (_, i) => `${base}\t${i * 512}`).join('\n');
    await writeFile(odd, Buffer.concat([Buffer.from(`${lines}\n`), Buffer.from([0x61, 0x00, 0x62, 0x0a, 0xff, 0xfe, 0x09, 0x31, 0x0a, 0x01, 0x22, 0x5c, 0x0a])]));
    const oa = await fastPrefetch(['--trace', odd, '--detach', '--cache-dir', cacheDir], { env: NO_NODE });
    const ob = await nodePrefetch(['--trace', odd, '--detach', '--cache-dir', cacheDir]);
    assert.equal(oa.code, 0, oa.stderr);
    assert.deepEqual(oa, ob);
    assert.match(oa.stderr, /^narfs: warn: 3 lines of the trace are not /);
    // A trace too large for one request line: left to the Node CLI (which says why).
    const huge = join(root, 'huge.trace');
    await writeFile(huge, `${Array.from({ length: 40_000 }, (_, i) => `${base}\t${i}`).join('\n')}\n`);
    const h = await fastPrefetch(['--trace', huge, '--detach', '--cache-dir', cacheDir], { env: NO_NODE });
    assert.equal(h.code, 1, h.stderr);
    assert.match(h.stderr, /cannot run node/);
    // Relative --trace and --cache-dir are the caller's; --trace=FILE too.
    const rel = await fastPrefetch(['--trace=job.trace', '--detach', '--cache-dir', 'cache'], { cwd: root, env: NO_NODE });
    assert.equal(rel.code, 0, rel.stderr);
    // Usage errors: the Node CLI's report and status.
    await writeFile(join(root, 'clean.trace'), `${base}\t0\n`);
    for (const bad of [['--detach', '--cache-dir', cacheDir], ['--detach', '--timeout', 'soon', '--trace', join(root, 'clean.trace'), '--cache-dir', cacheDir], ['--detach', '--no-such-option', '--cache-dir', cacheDir]]) {
      const fa = await fastPrefetch(bad, { env: NO_NODE });
      const fb = await nodePrefetch(bad);
      assert.equal(fb.code, 2, `${bad.join(' ')}: ${fb.stderr}`);
      assert.deepEqual(fa, fb, bad.join(' '));
    }
    // Left to the Node CLI: without --detach (its progress display), a trace the client cannot read.
    for (const left of [['--trace', trace, '--cache-dir', cacheDir], ['--trace', join(root, 'absent.trace'), '--detach', '--cache-dir', cacheDir]]) {
      const r = await fastPrefetch(left, { env: NO_NODE });
      assert.equal(r.code, 1, left.join(' '));
      assert.match(r.stderr, /cannot run node/, `${left.join(' ')}: the daemon did not run it`);
    }
  });

  it('relative --lower, --from-file and --cache-dir are the caller\'s', async () => {
    await startDaemon();
    await writeFile(join(root, 'roots.txt'), `# the top path\n${fixtures.top}\n`);
    const r = await fast(['--lower', 'rel-lower', '--cache-dir', 'cache', '--from-file', 'roots.txt'], { cwd: root, env: NO_NODE });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`paths in ${join(root, 'rel-lower')} `));
    assert.ok(readValidPaths(join(root, 'rel-lower')).includes(fixtures.top));
  });

  it('--help, and a command line that means another cache directory, go to the Node CLI', async () => {
    await startDaemon();
    const help = await fast(['--help', '--cache-dir', cacheDir]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^narfs — /);
    // <other>/control.sock is a link to this daemon's socket: the client reaches this daemon,
    // but the command line means <other>, so the daemon hands over to the Node CLI (which
    // then reaches it through the link on the JSON path).
    const other = join(root, 'other-cache');
    await mkdir(other);
    await symlink(join(cacheDir, CONTROL_SOCKET), join(other, CONTROL_SOCKET));
    const args = ['--lower', join(root, 'l'), '--cache-dir', other, fixtures.top];
    const withoutNode = await fast(args, { env: NO_NODE });
    assert.equal(withoutNode.code, 1);
    assert.match(withoutNode.stderr, /cannot run node/, 'the daemon did not run it');
    assert.equal(readValidPaths(join(root, 'l')).length, 0);
    const r = await fast(args);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readValidPaths(join(root, 'l')).includes(fixtures.top));
    // After `--` nothing is an option, for the client as for the daemon.
    const r2 = await fast(['--lower', join(root, 'l2'), `--cache-dir=${cacheDir}`, '--', '--cache-dir', other], { env: NO_NODE });
    assert.equal(r2.code, 1, r2.stderr);
    assert.match(r2.stderr, /ERR_INVALID_ARGUMENT: "--cache-dir" is not a store path/);
  });

  it('no daemon: the Node CLI registers alone', async () => {
    const r = await fast(['--lower', join(root, 'lower'), '--cache-dir', cacheDir, '--datalake', fixtures.datalakes['zstd']!.url,
      '--trusted-public-keys', fixtures.publicKey, fixtures.top]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(readValidPaths(join(root, 'lower')).includes(fixtures.top));
    const none = await fast(['--lower', join(root, 'lower'), '--cache-dir', cacheDir, fixtures.top], { env: NO_NODE });
    assert.equal(none.code, 1);
    assert.match(none.stderr, /cannot run node/, 'without a daemon the fast client can only hand over to node');
  });

  it('an older daemon (no op "cli") and a connection closed early hand over to the Node CLI', async () => {
    const old = await fakeDaemon(cacheDir, (op, s) => {
      if (op === 'cli') s.end('{"type":"error","code":"ERR_CONTROL","message":"unknown operation \\"cli\\"","hint":"h"}\n');
      else s.end('{"type":"result","closure":3,"added":3,"alreadyValid":0}\n');
    });
    servers.push(old.server);
    const lower = join(root, 'lower');
    const r = await fast(['--lower', lower, '--cache-dir', cacheDir, fixtures.top]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `narfs: registered 3 paths in ${lower} (3 new, 0 already valid)\n`);
    assert.deepEqual(old.ops, ['cli', 'register']);
    await closeServer(servers.pop()!);

    const early = await fakeDaemon(cacheDir, (op, s) => {
      if (op === 'cli') s.end('d 600000 the daemon did not finish\ne 12\nnarfs info: \n');
      else s.end('{"type":"result","closure":1,"added":0,"alreadyValid":1}\n');
    });
    servers.push(early.server);
    const r2 = await fast(['--lower', lower, '--cache-dir', cacheDir, fixtures.top]);
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(r2.stdout, `narfs: registered 1 paths in ${lower} (0 new, 1 already valid)\n`);
    assert.deepEqual(early.ops, ['cli', 'register']);
  });

  it('a daemon that passes its own deadline: the client prints its text and exits 1', async () => {
    const text = 'narfs: error ERR_DEADLINE: the daemon did not finish within 0 ms\n  hint: h\n';
    const hung = await fakeDaemon(cacheDir, (op, s) => {
      if (op === 'cli') s.write(`d ${Buffer.byteLength(`0 ${text}`)}\n0 ${text}`);
    });
    servers.push(hung.server);
    const started = Date.now();
    const r = await fast(['--lower', join(root, 'lower'), '--cache-dir', cacheDir, fixtures.top], { env: NO_NODE });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr, text);
    assert.ok(Date.now() - started >= 10_000, 'the client waits the deadline plus its 10 s of slack');
    assert.deepEqual(hung.ops, ['cli']);
  });

  it('the frames are checked: a malformed one hands over to the Node CLI', async () => {
    const bad = await fakeDaemon(cacheDir, (op, s) => {
      if (op === 'cli') s.end('o 99999999999\n');
      else s.end('{"type":"result","closure":2,"added":2,"alreadyValid":0}\n');
    });
    servers.push(bad.server);
    const r = await fast(['--lower', join(root, 'lower'), '--cache-dir', cacheDir, fixtures.top]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /registered 2 paths/);
    assert.deepEqual(bad.ops, ['cli', 'register']);
  });
  };
}

describe('integration: the fast narfs client (register, prefetch)', fastClientSuite(false));
describe('integration: the fast narfs client under AddressSanitizer and UBSan', fastClientSuite(true));
