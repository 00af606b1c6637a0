// Fixture datalakes built by real Nix (scripts/build-fixtures.sh), typed.
//
// loadFixtures() runs the script once per process and returns its manifest. The
// script caches its output outside the clone, keyed by its own content and the Nix
// version, so a warm call costs well under a second; a cold one builds for a few
// minutes: give the `before` hook that calls it a long timeout (FIXTURE_BUILD_TIMEOUT_MS).
//
// Everything under `Fixtures.dir` is shared by every test run on the machine: treat it
// as read-only; copy a datalake to a temp dir before corrupting it.
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** How long a cold fixture build may take (two cores, brotli at quality 11). */
export const FIXTURE_BUILD_TIMEOUT_MS = 15 * 60_000;

/** Compression methods Nix 2.8 writes (`?compression=`). */
export type FixtureCompression = 'none' | 'xz' | 'zstd' | 'bzip2' | 'br' | 'gzip';

/**
 * Datalake names: `<compression>` has `.ls` listings, `<compression>-nols` has none;
 * `other-key` is signed by the untrusted second key, `unsigned` by none (both xz).
 */
export const FIXTURE_DATALAKES = [
  'none', 'none-nols', 'xz', 'xz-nols', 'zstd', 'zstd-nols', 'bzip2', 'bzip2-nols',
  'br', 'br-nols', 'gzip', 'gzip-nols', 'other-key', 'unsigned',
] as const;
export type FixtureDatalakeName = (typeof FIXTURE_DATALAKES)[number];

export interface FixtureDatalake {
  /** Absolute directory of the binary cache. */
  dir: string;
  /** `file://<dir>`, usable as a Nix store URL. */
  url: string;
  compression: FixtureCompression;
  /** Whether `<hashPart>.ls` NAR listings were written (`write-nar-listing`). */
  listing: boolean;
  /** Name of the key that signed every narinfo, or null when unsigned. */
  signedBy: string | null;
  /** `compression-level` given to Nix, when not its default. */
  compressionLevel?: number;
  /** This datalake is `<copyOf>` without its `.ls` files (same bytes otherwise). */
  copyOf?: string;
}

/**
 * Outputs have the attribute name of scripts/fixtures/default.nix as role
 * (`<attr>-<output>` for outputs other than `out`); the derivation closure adds
 * `drv` (the .drv files) and `source` (builder scripts, a builtins.toFile text).
 */
export type FixtureRole =
  | 'single-file' // $out is one regular file
  | 'single-exec' // $out is one executable file
  | 'single-symlink' // $out is one symlink into single-file
  | 'traps' // names: bytewise sort traps, spaces, unicode (NFC/NFD), 255 bytes
  | 'byte-names' // names and a symlink target that are not UTF-8
  | 'tree' // executables, all kinds of symlinks, empty files/dirs, 30 levels, padding
  | 'self-ref' // references itself
  | 'many-files' // 3000 small files (one directory of 1000)
  | 'large-file' // 40 MiB file at largeFile.relPath
  | 'multi-output' // `out` of a two-output derivation (references multi-output-doc)
  | 'multi-output-doc' // `doc` of the same derivation
  | 'top' // references every other output
  | 'drv'
  | 'source';

export interface FixturePath {
  /** Full store path, `/nix/store/<hash>-<name>`. */
  storePath: string;
  role: FixtureRole;
  /** As in a narinfo: `sha256:<nix32>`. */
  narHash: string;
  narSize: number;
  /** Full store paths, sorted; includes the path itself for a self-reference. */
  references: string[];
  /** Full path of the .drv (outputs only). */
  deriver?: string;
  /** Content address (sources and .drv files), e.g. `text:sha256:…`, `fixed:r:sha256:…`. */
  ca?: string;
}

export interface Fixtures {
  version: 1;
  /** Content key: sha256 of the build script, scripts/fixtures/* and `nix --version`. */
  key: string;
  nixVersion: string;
  storeDir: '/nix/store';
  /** The fixture directory, `<NARFS_FIXTURES_DIR>/<key>`. */
  dir: string;
  /** `narfs-fixture-1:<base64>`: signs every datalake except other-key and unsigned. */
  publicKey: string;
  /** `narfs-fixture-other-1:<base64>`: signs other-key; never trust it in tests. */
  otherPublicKey: string;
  secretKeyFile: string;
  otherSecretKeyFile: string;
  datalakes: Record<FixtureDatalakeName, FixtureDatalake>;
  /** Every store path in every datalake: output closure of top + closure of top's .drv. */
  paths: FixturePath[];
  /** Full path of the top output. */
  top: string;
  /** Full path of the top output's derivation. */
  topDrv: string;
  largeFile: { storePath: string; relPath: string; size: number };
}

const SCRIPT = fileURLToPath(new URL('../../scripts/build-fixtures.sh', import.meta.url));

let pending: Promise<Fixtures> | undefined;

/** Builds (or finds) the fixtures once per process and returns the manifest. */
export function loadFixtures(): Promise<Fixtures> {
  pending ??= buildFixtures().catch((err: unknown) => {
    pending = undefined; // let a later caller retry
    throw err;
  });
  return pending;
}

async function buildFixtures(): Promise<Fixtures> {
  const dir = await runScript();
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Fixtures;
  if (manifest.version !== 1) {
    throw new Error(`fixtures: unsupported manifest version ${String(manifest.version)} in ${dir}`);
  }
  return manifest;
}

function runScript(): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [SCRIPT], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const last = out.trimEnd().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('/')) resolve(last);
      else reject(new Error(`fixtures: ${SCRIPT} failed (exit ${String(code ?? signal)})`));
    });
  });
}

/** The 32-character hash part of a store path (or of its basename). */
export function hashPart(storePath: string): string {
  const base = storePath.slice(storePath.lastIndexOf('/') + 1);
  return base.slice(0, 32);
}

/** `<datalakeDir>/<hashPart>.narinfo`. */
export function narInfoPath(datalakeDir: string, hashPartOrPath: string): string {
  return join(datalakeDir, `${hashPart(hashPartOrPath)}.narinfo`);
}

/** `<datalakeDir>/<hashPart>.ls` (present only when the datalake has listings). */
export function listingPath(datalakeDir: string, hashPartOrPath: string): string {
  return join(datalakeDir, `${hashPart(hashPartOrPath)}.ls`);
}

/** The one path with this role (throws for `drv`/`source`, of which there are many). */
export function pathByRole(fixtures: Fixtures, role: FixtureRole): FixturePath {
  const found = fixtures.paths.filter((p) => p.role === role);
  if (found.length !== 1) throw new Error(`fixtures: ${found.length} paths with role ${role}`);
  return found[0]!;
}

/**
 * Environment for running real Nix against the fixtures, as the build script does
 * (root without nixbld and sandbox, no substituters). Give `cacheHome` a fresh temp
 * dir to keep Nix's narinfo disk cache (~/.cache/nix) out of the test.
 */
export function nixEnv(cacheHome?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NIX_CONFIG: [
      process.env['NIX_CONFIG'] ?? '',
      'build-users-group =',
      'sandbox = false',
      'experimental-features = nix-command',
      'substituters =',
      'narinfo-cache-negative-ttl = 0',
    ].join('\n'),
  };
  if (cacheHome !== undefined) env['XDG_CACHE_HOME'] = cacheHome;
  return env;
}
