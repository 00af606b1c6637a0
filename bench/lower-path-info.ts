/**
 * Scenario 8 of `npm run bench` (issue 13): what Nix pays to ask the lower store about a
 * path, through narfs's worker-protocol socket (`--lower-socket`, answered from verified
 * narinfos) against through the lower database narfs registers — `nix path-info --json -r`
 * of the fixture closure's top path, real Nix (the host's 2.8) as the client, both measured
 * in the same run, alternating.
 *
 *   npm run bench -- --only 8 [--reps N]
 *   node --import tsx bench/lower-path-info.ts [--reps 10]
 *
 * Both stores answer the same closure (checked: same paths, same NarHash). The socket
 * side runs a store stack with a warm metadata cache (the first, cold query is excluded, as
 * the database side has its rows before the clock starts).
 *
 * Invariant: a benchmark, not a test — it fails only when the two answers differ; it
 * removes every directory and closes every socket it made, in a finally.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { loadFixtures } from '../test/support/fixtures.js';
import { openStoreStack } from '../src/daemon/store-stack.js';
import { startLowerDaemon } from '../src/daemon/lower-daemon.js';
import { registerClosure } from '../src/store/register-closure.js';
import { parseTrustedPublicKeys } from '../src/nix/signature.js';
import { parseStorePath } from '../src/nix/store-path.js';
import { silentLogger } from '../src/log.js';

export interface LowerPathInfoOptions { reps: number; log: (s: string) => void }

type Row = { values: number[]; notes: string[] };

const NIX_ENV = { ...process.env, NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsandbox = false\nsubstituters =\n' };

/** One `nix path-info` run; asynchronous, since the socket side is served by this very process. */
function pathInfo(store: string, top: string): Promise<{ ms: number; paths: Array<{ path: string; narHash: string }> }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile('nix', ['path-info', '--store', store, '--json', '-r', top], { env: NIX_ENV, timeout: 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const ms = performance.now() - t0;
      if (err) return reject(new Error(`nix path-info --store ${store} failed: ${String(stderr)}`));
      const parsed = JSON.parse(String(stdout)) as Array<{ path: string; narHash: string }>;
      resolve({ ms, paths: parsed.map((p) => ({ path: p.path, narHash: p.narHash })).sort((a, b) => (a.path < b.path ? -1 : 1)) });
    });
  });
}

export async function lowerPathInfo(opts: LowerPathInfoOptions, row: (scenario: string, contender: string, unit?: 'ms', reference?: boolean) => Row): Promise<void> {
  const fixtures = await loadFixtures();
  const dir = mkdtempSync(join(tmpdir(), 'narfs-bench-lowerd-'));
  const stack = await openStoreStack({
    datalakes: [fixtures.datalakes['zstd'].url], trustedPublicKeys: parseTrustedPublicKeys(fixtures.publicKey),
    requireSigs: true, cacheDir: join(dir, 'cache'), negativeTtlMs: 30_000,
  }, silentLogger);
  const socket = join(dir, 'lower.sock');
  const lowerd = await startLowerDaemon(socket, {
    infos: stack.infos,
    readFile: (info, signal) => stack.store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, signal),
    registrationTime: Math.floor(Date.now() / 1000),
    logger: silentLogger,
  });
  try {
    const lower = join(dir, 'lower');
    await registerClosure(lower, [parseStorePath(fixtures.top)], {
      infos: stack.infos,
      readFile: (info, s) => stack.store.readFile(`${info.narInfo.storePath.hashPart}-${info.narInfo.storePath.name}`, s ?? AbortSignal.timeout(120_000)),
      addKnown: () => {},
      logger: silentLogger,
    }, { signal: AbortSignal.timeout(300_000) });
    // Nix opens a local store read-write: give it a copy, so the registered one stays as narfs wrote it.
    const dbStore = join(dir, 'db-store');
    cpSync(lower, dbStore, { recursive: true });
    const viaSocket = `unix://${socket}`;
    const a = await pathInfo(viaSocket, fixtures.top);
    const b = await pathInfo(dbStore, fixtures.top);
    if (JSON.stringify(a.paths) !== JSON.stringify(b.paths)) throw new Error('the socket and the database describe the closure differently');
    opts.log(`8 lower path-info: ${a.paths.length} paths, same answer from both`);
    const name = `8 lower store: nix path-info -r of ${a.paths.length} paths`;
    const db = row(name, 'lower database (narfs register)', 'ms', true);
    const sock = row(name, 'narfs --lower-socket', 'ms');
    for (let i = 0; i < opts.reps; i++) {
      db.values.push((await pathInfo(dbStore, fixtures.top)).ms);
      sock.values.push((await pathInfo(viaSocket, fixtures.top)).ms);
    }
    sock.notes.push('worker protocol 1.34 (host Nix 2.8); narinfos from the warm metadata cache');
  } finally {
    await lowerd.close();
    await stack.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { reps: { type: 'string', default: '10' } } });
  const rows = new Map<string, Row>();
  await lowerPathInfo({ reps: Number(values.reps), log: (s) => process.stderr.write(s + '\n') }, (scenario, contender) => {
    const key = `${scenario} / ${contender}`;
    if (!rows.has(key)) rows.set(key, { values: [], notes: [] });
    return rows.get(key)!;
  });
  for (const [k, r] of rows) {
    const sorted = [...r.values].sort((x, y) => x - y);
    process.stdout.write(`${k}: median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms (${sorted.map((v) => v.toFixed(0)).join(', ')})\n`);
  }
}
