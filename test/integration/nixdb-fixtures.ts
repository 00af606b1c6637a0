/**
 * Shared fixtures for the nixdb integration tests: a real closure built by Debian's Nix 2.8
 * in the machine's /nix/store at test time (the truth), ValidPathInfos made from its
 * `nix path-info --json`, synthetic infos for volume tests, and small file/sqlite helpers.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDerivationOutputs } from '../../src/nix/derivation.js';
import type { ValidPathInfo } from '../../src/nixdb/index.js';

export const NIX_CONFIG = [
  'experimental-features = nix-command',
  'build-users-group =',
  'sandbox = false',
  'substituters =',
  'fsync-metadata = false',
].join('\n');

export function nix(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    env: { ...process.env, NIX_CONFIG },
    input,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

export function lines(s: string): string[] {
  return s.split('\n').filter((l) => l !== '');
}

/** `nix path-info --json` of Nix 2.8 (an array of these). */
export interface PathInfoJson {
  path: string;
  narHash: string;
  narSize: number;
  references: string[];
  deriver?: string;
  signatures?: string[];
  ca?: string;
}

export function pathInfos(args: string[], store?: string): PathInfoJson[] {
  const storeArgs = store === undefined ? [] : ['--store', store];
  const raw = JSON.parse(nix('nix', ['path-info', ...storeArgs, '--json', ...args])) as PathInfoJson[] | Record<string, Omit<PathInfoJson, 'path'>>;
  // 2.8 prints an array; 2.19+ an object keyed by path (nix-formats.md §7.11).
  return Array.isArray(raw) ? raw : Object.entries(raw).map(([path, v]) => ({ path, ...v }));
}

/** `sha256-<base64>` (SRI) → `sha256:<hex>` (what ValidPaths.hash holds). */
export function sriToBase16(sri: string): string {
  const m = /^sha256-([A-Za-z0-9+/=]+)$/.exec(sri);
  if (!m) throw new Error(`not an SRI sha256: ${sri}`);
  return `sha256:${Buffer.from(m[1]!, 'base64').toString('hex')}`;
}

export function toValidPathInfo(j: PathInfoJson): ValidPathInfo {
  const info: ValidPathInfo = {
    path: j.path,
    narHash: sriToBase16(j.narHash),
    narSize: j.narSize,
    references: j.references,
    sigs: j.signatures ?? [],
  };
  if (j.deriver) info.deriver = j.deriver;
  if (j.ca) info.ca = j.ca;
  if (j.path.endsWith('.drv')) {
    info.drvOutputs = parseDerivationOutputs(readFileSync(j.path, 'utf8')).flatMap((o) =>
      o.path === undefined ? [] : [{ id: o.id, path: o.path }],
    );
  }
  return info;
}

export interface RealClosure {
  /** Added with nix-store --add (fixed:r: CA). */
  src: string;
  /** builtins.toFile (text: CA). */
  dep: string;
  drv: string;
  /** Output with a self-reference and references to dep and src. */
  out: string;
  /** Second output, referring to out. */
  dev: string;
  /** Every path above, their closures included, as Nix 2.8 reports them. */
  truth: PathInfoJson[];
  infos: ValidPathInfo[];
}

let memo: RealClosure | undefined;

/** Builds (once per process) the real closure in the machine's /nix/store and signs it. */
export function realClosure(): RealClosure {
  if (memo) return memo;
  const dir = mkdtempSync(join(tmpdir(), 'narfs-nixdb-fx-'));
  mkdirSync(join(dir, 'tree/sub'), { recursive: true });
  writeFileSync(join(dir, 'tree/a'), 'hello narfs\n');
  writeFileSync(join(dir, 'tree/sub/b'), 'nested\n');
  symlinkSync('a', join(dir, 'tree/link'));
  const src = nix('nix-store', ['--add', join(dir, 'tree')]).trim();
  writeFileSync(
    join(dir, 'pkg.nix'),
    `derivation {
      name = "narfs-nixdb-it"; system = builtins.currentSystem; builder = "/bin/sh";
      outputs = [ "out" "dev" ];
      dep = builtins.toFile "narfs-nixdb-it-dep" "dep contents\\n";
      src = builtins.storePath "${src}";
      args = [ "-c" "/bin/mkdir $out $dev; echo $out > $out/self; echo $dep > $out/dep; echo $src > $out/src; echo $out > $dev/out-ref" ];
    }`,
  );
  const drv = nix('nix-instantiate', [join(dir, 'pkg.nix')]).trim();
  const [dev, out] = lines(nix('nix-build', ['--no-out-link', join(dir, 'pkg.nix'), '-A', 'dev', '-A', 'out']));
  // Signatures, so `sigs` is exercised (re-signing adds nothing: Nix keeps a set).
  const key = join(dir, 'key.sec');
  nix('nix-store', ['--generate-binary-cache-key', 'narfs-it-1', key, join(dir, 'key.pub')]);
  nix('nix', ['store', 'sign', '--key-file', key, '-r', out!, dev!]);
  const outputsTruth = pathInfos(['-r', out!, dev!]);
  const drvTruth = pathInfos(['-r', '--derivation', drv]);
  const byPath = new Map<string, PathInfoJson>();
  for (const j of [...outputsTruth, ...drvTruth]) byPath.set(j.path, j);
  const truth = [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : 1));
  const dep = truth.find((j) => j.path.endsWith('-narfs-nixdb-it-dep'))!.path;
  memo = { src, dep, drv, out: out!, dev: dev!, truth, infos: truth.map(toValidPathInfo) };
  return memo;
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** A syntactically valid store path derived from a seed (no such file exists). */
export function fakeStorePath(seed: string, name = 'fake'): string {
  const h = createHash('sha256').update(seed).digest();
  let part = '';
  for (let i = 0; i < 32; i++) part += NIX32[h[i]! % 32];
  return `/nix/store/${part}-${name}`;
}

/**
 * `count` synthetic infos forming one closure: path i refers to itself and to path i-1
 * (path 0 to `base` when given, which must already be valid).
 */
export function fakeChain(tag: string, count: number, base?: string): ValidPathInfo[] {
  const infos: ValidPathInfo[] = [];
  let prev = base;
  for (let i = 0; i < count; i++) {
    const path = fakeStorePath(`${tag}/${i}`, `${tag}-${i}`);
    infos.push({
      path,
      narHash: `sha256:${createHash('sha256').update(path).digest('hex')}`,
      narSize: 1000 + i,
      references: prev === undefined ? [path] : [path, prev],
      sigs: [`narfs-it-1:${createHash('sha512').update(`sig ${path}`).digest('base64')}`],
    });
    prev = path;
  }
  return infos;
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Name → sha256 of every file in a directory (to prove "untouched"). */
export function snapshotDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) out[name] = sha256File(join(dir, name));
  return out;
}

/** A query through the sqlite3 CLI with `immutable=1` — how a read-only Nix opens the DB. */
export function immutableQuery(dbPath: string, sql: string): string {
  return execFileSync('sqlite3', ['-batch', `file:${dbPath}?immutable=1`, sql], { encoding: 'utf8' }).trim();
}

export function newLowerRoot(tag: string): string {
  return mkdtempSync(join(tmpdir(), `narfs-lower-${tag}-`));
}
