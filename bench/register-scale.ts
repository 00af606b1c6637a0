/**
 * Scenario 7 of `npm run bench` (issue 13, "Registration that scales"): `narfs register`
 * against `nix-store --load-db` of the same rows, measured in the same run.
 *
 *   npm run bench -- --only 7 [--reps N]            (inside the whole benchmark)
 *   node --import tsx bench/register-scale.ts [--reps 5] [--sizes 100000,1000000]
 *        [--cli-sizes 100000] [--big-reps 1] [--no-xfs] [--out FILE.json]
 *
 * Figures (all into lower stores that are plain directories; Nix's is `local?root=…`):
 * - the 36-path fixture closure (scripts/build-fixtures.sh) into a fresh store: the CLI
 *   end to end without a daemon (`narfs register --all` from the file:// zstd datalake:
 *   process start, narinfos, signatures, the write); the CLI through a running daemon
 *   (`narfs mount … --lower`, started before the clock) — `bin/narfs register` run as a
 *   program (the C client, native/client/fast-client.c) and `node bin/narfs register`
 *   (the Node CLI) — with the daemon's first registration (caches cold) in a row of its
 *   own; the library call (createLowerStore + registerValidPaths, in-process), the
 *   daemon's path (registerOffThread, a worker, in a fresh process: worker start included);
 *   and `node -e 0`, the floor of any Node CLI;
 * - N synthetic paths (bench/synthetic-store.ts) in one batch into a fresh store: the
 *   library, and the CLI from a signed file:// datalake of N narinfos;
 * - one more 33-path closure into the store of N paths: library, off-thread, CLI; and the
 *   copy + fsync of that database alone (the bound without reflinks, in MB/s);
 * - the same "add one closure" on a loop-mounted XFS with reflink=1 (when mkfs.xfs exists),
 *   where the copy is a reflink.
 * The reference contender is always `nix-store --load-db` (Nix on the host, default
 * settings: WAL, synchronous=normal) of the same rows, into a fresh store or into the
 * store it built of N paths. `--load-db` keeps no signatures and reads `.drv` files from
 * the store dir, so those are copied in before the clock starts.
 *
 * Invariant: a benchmark, not a test — it fails only when a contender fails or leaves a
 * wrong row count; every directory and mount it makes is removed in a finally.
 */
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { closeSync, copyFileSync, constants, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { formatPublicKey, type SecretKey } from '../src/nix/signature.js';
import { createLowerStore, lowerStoreLayout, registerValidPaths, type ValidPathInfo } from '../src/nixdb/index.js';
import { pathInfos, toValidPathInfo } from '../test/integration/nixdb-fixtures.js';
import { dumpDb, syntheticInfos, writeSyntheticDatalake } from './synthetic-store.js';
import { startNarfs } from './bench-processes.js';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const NARFS_BIN = join(REPO, 'bin/narfs');
const NIX_ENV = { ...process.env, NIX_CONFIG: 'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n' };

export interface RowSink {
  (scenario: string, contender: string, unit?: 'ms' | 'MiB', reference?: boolean): { values: number[]; notes: string[] };
}

export interface RegisterScaleOptions {
  reps: number;
  /** Repetitions of the runs on N paths (default 1: a 10^6 load-db takes minutes). */
  bigReps: number;
  sizes: number[];
  cliSizes: number[];
  xfs: boolean;
  /** Scratch space on the disk under test. */
  workDir: string;
  log: (s: string) => void;
}

const ms = (t0: number) => performance.now() - t0;
const nice = (n: number) => (n >= 1e6 && n % 1e6 === 0 ? `10^${Math.log10(n)}` : n >= 1e5 && Math.log10(n) % 1 === 0 ? `10^${Math.log10(n)}` : String(n));

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { env: NIX_ENV, encoding: 'utf8', maxBuffer: 1 << 30, ...(input === undefined ? {} : { input }) });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

function loadDb(root: string, dumpFile: string): number {
  const t0 = performance.now();
  const r = spawnSync('sh', ['-c', 'exec nix-store --store "local?root=$1" --load-db < "$2"', 'load-db', root, dumpFile], { env: NIX_ENV, encoding: 'utf8' });
  const t = ms(t0);
  if (r.status !== 0) throw new Error(`nix-store --load-db failed (${r.status ?? r.signal}): ${r.stderr}`);
  return t;
}

function narfsCli(args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(NARFS_BIN, ['register', ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const t = ms(t0);
  if (r.status !== 0) throw new Error(`narfs register ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return t;
}

/**
 * registerOffThread as the daemon runs it: from the built dist/ in a plain `node` (this
 * file runs under tsx, whose loader a worker started from here would load too). Only the
 * call is timed, inside that process.
 */
function offThread(root: string, infos: readonly ValidPathInfo[], scratch: string): number {
  const file = join(scratch, 'off-thread.json');
  writeFileSync(file, JSON.stringify(infos));
  const code = `const { registerOffThread } = await import(${JSON.stringify(join(REPO, 'dist/src/nixdb/index.js'))});
const infos = JSON.parse((await import('node:fs')).readFileSync(process.argv[2], 'utf8'));
const t0 = performance.now(); await registerOffThread(process.argv[3], infos); process.stdout.write(String(performance.now() - t0));`;
  const script = join(scratch, 'off-thread.mjs');
  writeFileSync(script, code);
  const r = spawnSync(process.execPath, [script, file, root], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  if (r.status !== 0) throw new Error(`registerOffThread failed: ${r.stderr}`);
  return Number(r.stdout);
}

/** Rows in a database (the sqlite3 CLI, immutable like a read-only Nix; Nix's own DB is WAL, so opened normally). */
function count(db: string, immutable = true): number {
  const url = immutable ? `file:${db}?immutable=1` : db;
  return Number(spawnSync('sqlite3', ['-batch', url, 'select count(*) from ValidPaths'], { encoding: 'utf8' }).stdout.trim());
}

function nixDb(root: string): string {
  return join(root, 'nix/var/nix/db/db.sqlite');
}

function benchKey(): { sk: SecretKey; pub: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d!, 'base64url');
  const pk = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const sk: SecretKey = { name: 'narfs-bench-1', seed, publicKey: pk };
  return { sk, pub: formatPublicKey({ name: sk.name, key: pk }) };
}

interface Fixture { dir: string; publicKey: string; datalake: string; infos: ValidPathInfo[]; drvs: string[] }

function fixture(log: (s: string) => void): Fixture {
  log('register-scale: building (or reusing) the fixture datalakes');
  const b = spawnSync('bash', [join(REPO, 'scripts/build-fixtures.sh')], { stdio: ['ignore', 'pipe', 'inherit'] });
  if (b.status !== 0) throw new Error('scripts/build-fixtures.sh failed');
  const dir = b.stdout.toString().trim().split('\n').at(-1)!;
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { publicKey: string; datalakes: Record<string, { url: string }>; paths: Array<{ storePath: string }> };
  const paths = m.paths.map((p) => p.storePath);
  const drvs = paths.filter((p) => p.endsWith('.drv'));
  const infos = [...pathInfos(paths.filter((p) => !p.endsWith('.drv'))), ...pathInfos(['--derivation', ...drvs])].map(toValidPathInfo);
  if (infos.length !== paths.length) throw new Error(`nix path-info gave ${infos.length} of ${paths.length} fixture paths`);
  return { dir, publicKey: m.publicKey, datalake: m.datalakes.zstd!.url, infos, drvs };
}

/** A fresh `local?root=` dir with the given .drv files in its store (load-db reads them). */
function nixRoot(base: string, drvs: string[]): string {
  const root = mkdtempSync(join(base, 'nix-'));
  mkdirSync(join(root, 'nix/store'), { recursive: true });
  for (const d of drvs) copyFileSync(d, join(root, 'nix/store', d.slice('/nix/store/'.length)));
  return root;
}

/** `fn` for each contender, alternating the order per repetition. */
async function alternate(reps: number, contenders: Array<[string, () => Promise<number> | number]>, push: (name: string, v: number) => void): Promise<void> {
  for (let rep = 0; rep < reps; rep++) {
    const k = rep % contenders.length;
    for (const [name, fn] of [...contenders.slice(k), ...contenders.slice(0, k)]) push(name, await fn());
  }
}

const FAST = 'narfs register (CLI through a running daemon: C client)';
const NODE_VIA_DAEMON = 'node bin/narfs register (Node CLI through the same daemon)';
const NODE_START = 'node -e 0 (for scale: the start of any Node CLI)';
const LIB = 'narfs registerValidPaths (library, in-process)';
const OFF = 'narfs registerOffThread (library, worker thread, from dist/)';
const CLI = 'narfs register (CLI, end to end)';
const NIX = 'nix-store --load-db';

export async function registerScale(o: RegisterScaleOptions, row: RowSink): Promise<void> {
  const fx = fixture(o.log);
  const scratch = mkdtempSync(join(o.workDir, 'narfs-bench-register-'));
  try {
    // ---- the 33-path fixture closure, fresh store -----------------------------------
    const name = `7a register the ${fx.infos.length}-path fixture closure into a fresh store`;
    const dump = join(scratch, 'fixture.dump');
    writeFileSync(dump, sh('nix-store', ['--dump-db', ...fx.infos.map((i) => i.path)]));
    // The daemon a deployment runs: a mount with a lower store, started before the clock.
    const dd = mkdtempSync(join(scratch, 'daemon-'));
    mkdirSync(join(dd, 'lower/nix/store'), { recursive: true });
    const daemonCache = join(dd, 'cache');
    const daemon = await startNarfs({
      mnt: join(dd, 'lower/nix/store'), datalake: fx.datalake, publicKey: fx.publicKey, cacheDir: daemonCache,
      logFile: join(dd, 'narfs.log'), extraArgs: ['--lower', join(dd, 'lower')],
    });
    const viaDaemon = (node: boolean) => () => {
      const d = mkdtempSync(join(scratch, node ? 'node-daemon-' : 'fast-'));
      const args = ['--lower', d, '--cache-dir', daemonCache, '--all'];
      const t0 = performance.now();
      const r = node
        ? spawnSync(process.execPath, [NARFS_BIN, 'register', ...args], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } })
        : spawnSync(NARFS_BIN, ['register', ...args], { encoding: 'utf8' });
      const t = ms(t0);
      if (r.status !== 0) throw new Error(`narfs register ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
      if (count(lowerStoreLayout(d).dbPath) !== fx.infos.length) throw new Error('through the daemon: wrong row count');
      rmSync(d, { recursive: true, force: true });
      return t;
    };
    try {
      row(name, 'narfs register through the daemon, its first registration (narinfo and .drv caches cold)', 'ms').values.push(viaDaemon(false)());
      await alternate(o.reps, [
        [FAST, viaDaemon(false)],
        [NODE_VIA_DAEMON, viaDaemon(true)],
        [NODE_START, () => {
          const t0 = performance.now();
          const r = spawnSync(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_OPTIONS: '' } });
          if (r.status !== 0) throw new Error('node -e 0 failed');
          return ms(t0);
        }],
        [NIX, () => {
          const root = nixRoot(scratch, fx.drvs);
          const t = loadDb(root, dump);
          rmSync(root, { recursive: true, force: true });
          return t;
        }],
      ], (c, v) => row(name, c, 'ms', c === NIX).values.push(v));
    } finally {
      await daemon.stop();
      rmSync(dd, { recursive: true, force: true });
    }
    await alternate(o.reps, [
      [CLI, () => {
        const d = mkdtempSync(join(scratch, 'cli-'));
        const t = narfsCli(['--lower', join(d, 'lower'), '--cache-dir', join(d, 'cache'), '--datalake', fx.datalake, '--trusted-public-keys', fx.publicKey, '--all']);
        if (count(lowerStoreLayout(join(d, 'lower')).dbPath) !== fx.infos.length) throw new Error('CLI: wrong row count');
        rmSync(d, { recursive: true, force: true });
        return t;
      }],
      [LIB, async () => {
        const d = mkdtempSync(join(scratch, 'lib-'));
        const t0 = performance.now();
        await createLowerStore(d);
        await registerValidPaths(d, fx.infos);
        const t = ms(t0);
        rmSync(d, { recursive: true, force: true });
        return t;
      }],
      [OFF, async () => {
        const d = mkdtempSync(join(scratch, 'off-'));
        const t = offThread(d, fx.infos, scratch);
        if (count(lowerStoreLayout(d).dbPath) !== fx.infos.length) throw new Error('off-thread: wrong row count');
        rmSync(d, { recursive: true, force: true });
        return t;
      }],
      [NIX, () => {
        const root = nixRoot(scratch, fx.drvs);
        const t = loadDb(root, dump);
        rmSync(root, { recursive: true, force: true });
        return t;
      }],
    ], (c, v) => row(name, c, 'ms', c === NIX).values.push(v));
    o.log(`${name}: done`);

    // ---- N synthetic paths --------------------------------------------------------------
    const key = benchKey();
    for (const n of o.sizes) await bigStore(o, row, scratch, n, key, fx, o.cliSizes.includes(n));

    // ---- add one closure on XFS with reflinks ---------------------------------------------
    if (o.xfs) {
      const n = Math.max(...o.sizes);
      const xfs = mountXfs(scratch, o.log);
      if (xfs) {
        try {
          await bigStore(o, row, xfs.dir, n, key, fx, false, 'XFS reflink=1 (loop)');
        } finally {
          xfs.umount();
        }
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function bigStore(
  o: RegisterScaleOptions, row: RowSink, scratch: string, n: number, key: { sk: SecretKey; pub: string }, fx: Fixture,
  withCli: boolean, fsName?: string,
): Promise<void> {
  const on = fsName ? `, on ${fsName}` : '';
  const tag = `b${n}`;
  o.log(`register-scale: ${nice(n)} synthetic paths${on}: generating`);
  const infos = syntheticInfos(tag, n, withCli ? { sign: key.sk } : {});
  const dump = join(scratch, `${tag}.dump`);
  writeFileSync(dump, dumpDb(infos));
  let datalake = '';
  if (withCli) {
    datalake = join(scratch, `${tag}-datalake`);
    writeSyntheticDatalake(datalake, infos);
  }
  // The stores that stay for "add one closure": the last repetition's.
  let libRoot = '';
  let nixStore = '';
  const batch = `7b register ${nice(n)} synthetic paths in one batch into a fresh store${on}`;
  const contenders: Array<[string, () => Promise<number> | number]> = [
    [LIB, async () => {
      if (libRoot) rmSync(libRoot, { recursive: true, force: true });
      libRoot = mkdtempSync(join(scratch, 'lib-'));
      const t0 = performance.now();
      await createLowerStore(libRoot);
      await registerValidPaths(libRoot, infos);
      return ms(t0);
    }],
    [NIX, () => {
      if (nixStore) rmSync(nixStore, { recursive: true, force: true });
      nixStore = nixRoot(scratch, []);
      return loadDb(nixStore, dump);
    }],
  ];
  if (withCli) {
    contenders.push([CLI, () => {
      const d = mkdtempSync(join(scratch, 'cli-'));
      try {
        return narfsCli(['--lower', join(d, 'lower'), '--cache-dir', join(d, 'cache'), '--datalake', `file://${datalake}`, '--trusted-public-keys', key.pub, '--all']);
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    }]);
  }
  await alternate(o.bigReps, contenders, (c, v) => {
    row(batch, c, 'ms', c === NIX).values.push(v);
    o.log(`${batch}: ${c}: ${v.toFixed(0)} ms`);
  });
  const l = lowerStoreLayout(libRoot);
  const size = statSync(l.dbPath).size;
  row(batch, LIB).notes.push(`db.sqlite ${(size / 2 ** 20).toFixed(0)} MiB`);
  row(batch, NIX).notes.push(`db.sqlite ${(statSync(nixDb(nixStore)).size / 2 ** 20).toFixed(0)} MiB (+ WAL)`);
  if (count(l.dbPath) !== n || count(nixDb(nixStore), false) !== n) throw new Error(`${batch}: wrong row count`);
  rmSync(dump, { force: true });

  // ---- one 33-path closure into the big store -------------------------------------------
  const add = `7c add one 33-path closure to a store of ${nice(n)} paths${on}`;
  let k = 0;
  const closure = () => syntheticInfos(`${tag}-add-${k++}`, 33);
  const addContenders: Array<[string, () => Promise<number> | number]> = [
    [LIB, async () => {
      const c = closure();
      const t0 = performance.now();
      await registerValidPaths(libRoot, c);
      return ms(t0);
    }],
    [OFF, () => offThread(libRoot, closure(), scratch)],
    [NIX, () => {
      const f = join(scratch, 'add.dump');
      writeFileSync(f, dumpDb(closure()));
      return loadDb(nixStore, f);
    }],
  ];
  if (!fsName) {
    addContenders.push([CLI, () => {
      const c = syntheticInfos(`${tag}-add-${k++}`, 33, { sign: key.sk });
      const d = mkdtempSync(join(scratch, 'cli-'));
      writeSyntheticDatalake(join(d, 'datalake'), c);
      try {
        return narfsCli(['--lower', libRoot, '--cache-dir', join(d, 'cache'), '--datalake', `file://${join(d, 'datalake')}`, '--trusted-public-keys', key.pub, c[0]!.path]);
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    }]);
  }
  await alternate(o.reps, addContenders, (c, v) => row(add, c, 'ms', c === NIX).values.push(v));
  o.log(`${add}: done`);

  // ---- the copy alone: what a generation costs where there is no reflink ------------------
  const copy = `7d copy + fsync of the ${(size / 2 ** 20).toFixed(0)} MiB db.sqlite of ${nice(n)} paths${on}`;
  for (let rep = 0; rep < o.reps; rep++) {
    const dst = `${l.dbPath}.bench-copy`;
    const t0 = performance.now();
    copyFileSync(l.dbPath, dst, constants.COPYFILE_FICLONE);
    const fd = openSync(dst, 'r+');
    fsyncSync(fd);
    closeSync(fd);
    const t = ms(t0);
    rmSync(dst);
    const r = row(copy, 'copyFile (FICLONE if possible) + fsync');
    r.values.push(t);
    r.notes.push(`${((size / 2 ** 20) / (t / 1000)).toFixed(0)} MiB/s`);
  }
  rmSync(libRoot, { recursive: true, force: true });
  rmSync(nixStore, { recursive: true, force: true });
  if (datalake) rmSync(datalake, { recursive: true, force: true });
}

/** A loop-mounted XFS with reflinks under `scratch`, or undefined when mkfs.xfs is missing. */
function mountXfs(scratch: string, log: (s: string) => void): { dir: string; umount(): void } | undefined {
  if (spawnSync('sh', ['-c', 'command -v mkfs.xfs']).status !== 0) {
    log('register-scale: mkfs.xfs not found (xfsprogs): skipping the XFS figures');
    return undefined;
  }
  const img = join(scratch, 'xfs.img');
  const dir = join(scratch, 'xfs');
  mkdirSync(dir);
  writeFileSync(img, '');
  spawnSync('truncate', ['-s', '8G', img]);
  sh('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  sh('mount', ['-o', 'loop', img, dir]);
  return {
    dir,
    umount: () => {
      spawnSync('umount', [dir]);
      rmSync(img, { force: true });
    },
  };
}

// ---- standalone -----------------------------------------------------------------------
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string', default: '5' },
      'big-reps': { type: 'string', default: '1' },
      sizes: { type: 'string', default: '100000,1000000' },
      // The CLI reads, verifies and caches every narinfo: ~10 min for 10^6 on 2 cores.
      'cli-sizes': { type: 'string' },
      'no-xfs': { type: 'boolean', default: false },
      // Raw numbers of every row as JSON.
      out: { type: 'string' },
    },
  });
  const sizes = values.sizes!.split(',').filter(Boolean).map(Number);
  const rows: Array<{ scenario: string; contender: string; reference: boolean; values: number[]; notes: string[] }> = [];
  const sink: RowSink = (scenario, contender, _unit = 'ms', reference = false) => {
    let r = rows.find((x) => x.scenario === scenario && x.contender === contender);
    if (!r) { r = { scenario, contender, reference, values: [], notes: [] }; rows.push(r); }
    return r;
  };
  const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const k = s.length >> 1; return s.length % 2 ? s[k]! : (s[k - 1]! + s[k]!) / 2; };
  await registerScale({
    reps: Number(values.reps), bigReps: Number(values['big-reps']), sizes,
    cliSizes: (values['cli-sizes'] ?? '100000').split(',').filter(Boolean).map(Number),
    xfs: !values['no-xfs'], workDir: '/var/tmp', log: (s) => process.stderr.write(`${s}\n`),
  }, sink);
  if (values.out) writeFileSync(values.out, JSON.stringify({ date: new Date().toISOString(), argv: process.argv.slice(2), rows }, null, 1) + '\n');
  for (const r of rows) {
    const ref = rows.find((x) => x.scenario === r.scenario && x.reference);
    const ratio = ref && !r.reference ? ` ${(median(r.values) / median(ref.values)).toFixed(2)}x` : r.reference ? ' (ref)' : '';
    process.stdout.write(`${r.scenario} | ${r.contender} | median ${median(r.values).toFixed(1)} ms (n=${r.values.length}, min ${Math.min(...r.values).toFixed(1)})${ratio}${r.notes.length ? ` | ${[...new Set(r.notes)].join('; ')}` : ''}\n`);
  }
}
