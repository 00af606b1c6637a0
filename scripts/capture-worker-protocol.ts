/**
 * Records real worker-protocol sessions between Nix 2.26 clients and a real Nix 2.26
 * `nix-daemon` (both in the trixie chroot), for the golden tests of src/nix/worker-protocol*.ts
 * and the replay test of the narfs lower daemon. Never hand-written bytes.
 *
 *   node --import tsx scripts/capture-worker-protocol.ts     # last stdout line: the capture dir
 *
 * How: a store `local?root=<W>/root` gets the fixture closure of `top` and `top`'s .drv
 * (nix copy from the zstd fixture datalake); a recording proxy on `<W>/proxy.sock` starts
 * one `nix-daemon --stdio --store <W>/root` per connection and keeps both byte streams;
 * in the chroot, Nix clients talk to `unix://<W>/proxy.sock`: `nix path-info`, `nix-store
 * --check-validity`, `-q --referrers`, `-q --valid-derivers`, `nix store
 * path-from-hash-part`, and the whole local-overlay e2e (test/e2e/overlay-inner.sh) with
 * `lower-store=unix://<W>/proxy.sock`, which shows what the overlay asks of its lower store.
 *
 * Output: `${NARFS_CAPTURE_DIR:-/var/cache/narfs/worker-protocol}/<key>/` with one
 * `<nn>-<label>.json` per connection ({label, client, server}: hex of each direction) and
 * `manifest.json` (nix version, fixture key, the session list). <key> = sha256 of this
 * script, the inner scripts, the chroot dir and the fixture key; a dir exists only when
 * complete (built in a temp dir, renamed into place).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { PROTOCOL_VERSION, WireWriter, WorkerOp } from '../src/nix/worker-protocol.js';
import { writeClientHello, writeClientPostHandshake } from '../src/nix/worker-protocol-client.js';

const REPO = fileURLToPath(new URL('../', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const INNER = join(REPO, 'scripts/capture-worker-protocol-inner.sh');
const OVERLAY_INNER = join(REPO, 'test/e2e/overlay-inner.sh');

function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function lastLine(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout.trim().split('\n').pop()!;
}

/**
 * Sends `bytes` through the proxy and waits for the daemon to close. The write side stays
 * open: nix-daemon takes a hang-up of its client as an interrupt (MonitorFdHup).
 */
async function rawSession(w: string, label: string, bytes: Buffer): Promise<void> {
  await writeFile(join(w, 'label'), label);
  await new Promise<void>((resolve, reject) => {
    const s = connect({ path: join(w, 'proxy.sock'), allowHalfOpen: true });
    s.on('error', reject);
    s.on('connect', () => s.write(bytes));
    s.on('data', () => {});
    s.on('end', () => s.end());
    s.on('close', () => resolve());
  });
}

interface Session {
  label: string;
  client: Buffer[];
  server: Buffer[];
}

async function main(): Promise<void> {
  const fixturesDir = await lastLine('bash', [join(REPO, 'scripts/build-fixtures.sh')]);
  const manifest = JSON.parse(await readFile(join(fixturesDir, 'manifest.json'), 'utf8')) as {
    key: string; top: string; topDrv: string; publicKey: string; largeFile: { storePath: string }; datalakes: Record<string, { dir: string; url: string }>;
  };
  const chroot = await lastLine('bash', [join(REPO, 'scripts/build-trixie-chroot.sh')]);
  const hash = createHash('sha256');
  for (const f of [SELF, INNER, OVERLAY_INNER, join(REPO, 'src/nix/worker-protocol-client.ts')]) hash.update(await readFile(f));
  hash.update(chroot).update(manifest.key);
  const key = hash.digest('hex').slice(0, 24);
  const base = process.env.NARFS_CAPTURE_DIR ?? '/var/cache/narfs/worker-protocol';
  const final = join(base, key);
  if (existsSync(join(final, 'manifest.json'))) {
    process.stdout.write(final + '\n');
    return;
  }
  await mkdir(base, { recursive: true });
  await mkdir('/var/tmp', { recursive: true });
  // Under /var/tmp: the chroot has its own /tmp; bind-mounted at the same path inside.
  const w = await mkdtemp('/var/tmp/narfs-capture-');
  const sessions: Session[] = [];
  const children = new Set<ReturnType<typeof spawn>>();
  const server = createServer((client: Socket) => {
    void readFile(join(w, 'label'), 'utf8').catch(() => 'unlabelled').then((label) => {
      const session: Session = { label: label.trim(), client: [], server: [] };
      sessions.push(session);
      const daemon = spawn('bash', [join(REPO, 'scripts/chroot-run.sh'), '-w', w, chroot, '/usr/bin/env',
        'NIX_CONFIG=build-users-group =\nsandbox = false', 'nix-daemon', '--stdio', '--store', `${w}/root`],
      { stdio: ['pipe', 'pipe', 'inherit'] });
      children.add(daemon);
      client.on('data', (d: Buffer) => { session.client.push(Buffer.from(d)); daemon.stdin!.write(d); });
      client.on('end', () => daemon.stdin!.end());
      client.on('error', () => daemon.kill());
      client.on('close', () => daemon.stdin!.end());
      daemon.stdout!.on('data', (d: Buffer) => { session.server.push(Buffer.from(d)); client.write(d); });
      daemon.stdout!.on('end', () => client.end());
      daemon.on('close', () => { children.delete(daemon); client.destroy(); });
      client.resume();
    });
    client.pause();
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(join(w, 'proxy.sock'), () => resolve());
    });
    await copyFile(INNER, join(w, 'inner.sh'));
    await copyFile(OVERLAY_INNER, join(w, 'overlay-inner.sh'));
    const lake = manifest.datalakes['zstd']!;
    const r = await run('bash', [join(REPO, 'scripts/chroot-run.sh'), '-w', w, '-w', lake.dir, chroot, '/usr/bin/env',
      `W=${w}`, `TOP=${manifest.top}`, `TOPDRV=${manifest.topDrv}`, `LAKE=${lake.url}`, `KEY=${manifest.publicKey}`,
      `LARGE=${manifest.largeFile.storePath}`, '/bin/bash', join(w, 'inner.sh')]);
    if (r.code !== 0) throw new Error(`capture session failed:\n${r.stdout}\n${r.stderr}`);
    process.stderr.write(r.stdout);
    // What no Nix client sends: an unknown operation after a good handshake, and bytes
    // that are not the protocol at all. Written with narfs' client writer; the daemon's
    // answer is what is kept.
    const hello = new WireWriter();
    writeClientHello(hello);
    hello.strings([]);
    writeClientPostHandshake(hello, PROTOCOL_VERSION);
    const missing = '/nix/store/00000000000000000000000000000000-narfs-missing';
    await rawSession(w, 'raw-errors', Buffer.concat([hello.toBuffer(), new WireWriter()
      .u64(WorkerOp.QueryReferences).string(missing) // an error the connection survives
      .u64(WorkerOp.IsValidPath).string(missing)
      .u64(99) // an unknown operation: an error, then the daemon closes
      .toBuffer()]));
    await rawSession(w, 'garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    const tmp = await mkdtemp(join(base, `.tmp-${key}-`));
    let n = 0;
    const list: Array<{ file: string; label: string; clientBytes: number; serverBytes: number }> = [];
    for (const s of sessions) {
      const file = `${String(n++).padStart(2, '0')}-${s.label}.json`;
      const client = Buffer.concat(s.client);
      const srv = Buffer.concat(s.server);
      await writeFile(join(tmp, file), JSON.stringify({ label: s.label, client: client.toString('hex'), server: srv.toString('hex') }) + '\n');
      list.push({ file, label: s.label, clientBytes: client.length, serverBytes: srv.length });
    }
    const nixVersion = (r.stdout.match(/^NIXVERSION (.*)$/m) ?? [])[1] ?? 'unknown';
    await writeFile(join(tmp, 'manifest.json'), JSON.stringify({
      key, nixVersion, fixtureKey: manifest.key, top: manifest.top, topDrv: manifest.topDrv, sessions: list,
      facts: r.stdout.split('\n').filter(Boolean),
    }, null, 1) + '\n');
    await rename(tmp, final);
    process.stdout.write(final + '\n');
  } finally {
    // Each daemon ends when its client closes; wait for them (killing only stragglers)
    // before the store they use is removed.
    await Promise.all([...children].map((c) => new Promise<void>((resolve) => {
      if (c.exitCode !== null || c.signalCode !== null) return resolve();
      const t = setTimeout(() => c.kill(), 30_000);
      c.on('close', () => { clearTimeout(t); resolve(); });
    })));
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(w, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`capture-worker-protocol: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
