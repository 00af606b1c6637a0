/**
 * The benchmark's indexed datalakes (issue 10), made from the bench build dir and cached
 * beside it, keyed by content:
 *
 * - `indexed-<key>/none` and `indexed-<key>/zstd-seekable`: copies of the bench datalakes
 *   `none` and `zstd` (NARs hard-linked: the file datalake writer replaces files by rename,
 *   never in place), indexed by `narfs index` (the first as it is, the second with
 *   `--seekable`: its NARs re-encoded as chunk-aligned zstd frames and its narinfos
 *   rewritten), signed with the bench key. <key> = SHA-256 over the sources of the indexer
 *   (src/index, src/nix) and the closure's store paths.
 * - `big-<key>/{none,zstd-seekable}`: a ~1 GiB store path made by real Nix (`nix-store
 *   --add` of 64 generated 16 MiB files, AES-256-CTR keystream of a fixed key and the
 *   file's name, so the same key makes the same bytes), published by `nix copy` and
 *   indexed the same way. The store path is kept alive by a gcroot in that dir; <key>
 *   covers the generator's parameters, `nix --version` and the indexer's sources.
 *
 * Each is built in a `.tmp-*` dir and renamed into place, so a reader never sees half of
 * one; a reuse checks that the store paths are still valid.
 */
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NAR_INDEX_SUFFIX, parseNarIndex } from '../src/nix/nar-index.js';

const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
const NIX_ENV = {
  ...process.env,
  NIX_CONFIG: 'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\nwarn-dirty = false\n' +
    // Loopback servers reuse ports: Nix's narinfo cache (keyed by URL) must not answer for another datalake.
    'narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\n',
};

export interface IndexedDatalakes {
  none: string;
  seekable: string;
  /** Seconds `narfs index` took for each (0 when reused). */
  indexSeconds: { none: number; seekable: number };
  /** NAR file bytes of the closure in each (the seekable one after re-encoding; plain: Nix's zstd). */
  narBytes: { none: number; seekable: number; plainZstd: number };
  /** Regular-file bytes of the closure, and of its distinct contents (by SHA-256), from the signed indexes. */
  dedupe: { files: number; bytes: number; uniqueFiles: number; uniqueBytes: number };
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ').slice(0, 300)} failed (${r.status ?? r.signal}): ${r.stderr?.toString().slice(-3000)}`);
  return r.stdout.toString();
}

function sourcesKey(extra: string[]): string {
  const h = createHash('sha256');
  for (const d of ['src/index', 'src/nix']) {
    for (const f of readdirSync(join(REPO, d)).sort()) {
      h.update(`${d}/${f}\0`).update(readFileSync(join(REPO, d, f)));
    }
  }
  for (const e of extra) h.update(`${e}\0`);
  return h.digest('hex').slice(0, 16);
}

function narIndex(dir: string, secretKey: string, seekable: boolean, paths: string[]): number {
  const t0 = Date.now();
  run(process.execPath, [join(REPO, 'bin/narfs'), 'index', '--secret-key-file', secretKey, ...(seekable ? ['--seekable'] : []), `file://${dir}`, ...paths]);
  return (Date.now() - t0) / 1000;
}

/** Sum of the NAR files the narinfos of `paths` point at. */
function narBytesOf(dir: string, paths: string[]): number {
  let n = 0;
  for (const p of paths) {
    const hash = p.replace(/^\/nix\/store\//, '').slice(0, 32);
    const ni = readFileSync(join(dir, `${hash}.narinfo`), 'utf8');
    const url = /^URL: (.+)$/m.exec(ni)?.[1];
    if (!url) throw new Error(`no URL in ${hash}.narinfo`);
    n += statSync(join(dir, url)).size;
  }
  return n;
}

function dedupeOf(dir: string, paths: string[]): IndexedDatalakes['dedupe'] {
  const seen = new Map<string, number>();
  let files = 0, bytes = 0;
  for (const p of paths) {
    const hash = p.replace(/^\/nix\/store\//, '').slice(0, 32);
    const idx = parseNarIndex(readFileSync(join(dir, `${hash}${NAR_INDEX_SUFFIX}`)));
    for (const f of idx.files) {
      files++;
      bytes += f.size;
      seen.set(f.sha256.toString('hex'), f.size);
    }
  }
  let uniqueBytes = 0;
  for (const v of seen.values()) uniqueBytes += v;
  return { files, bytes, uniqueFiles: seen.size, uniqueBytes };
}

const valid = (paths: string[]) => spawnSync('nix-store', ['--check-validity', ...paths], { env: NIX_ENV, stdio: 'ignore' }).status === 0;

/** The indexed copies of the bench datalakes `none` and `zstd` (built once, then reused). */
export function prepareIndexed(m: { dir: string; closure: string[]; datalakes: Record<'none' | 'zstd', { dir: string }> }, log: (s: string) => void): IndexedDatalakes {
  const key = sourcesKey(m.closure);
  const out = join(m.dir, `indexed-${key}`);
  const secretKey = join(m.dir, 'keys/narfs-bench-1.sec');
  const info = join(out, 'info.json');
  if (!existsSync(info)) {
    const tmp = join(m.dir, `.tmp-indexed-${key}-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp);
    try {
      run('cp', ['-al', m.datalakes.none.dir, join(tmp, 'none')]);
      run('cp', ['-al', m.datalakes.zstd.dir, join(tmp, 'zstd-seekable')]);
      log('narfs index (none) of the bench closure');
      const sNone = narIndex(join(tmp, 'none'), secretKey, false, m.closure);
      log(`... ${sNone.toFixed(0)} s; narfs index --seekable (zstd)`);
      const sSeek = narIndex(join(tmp, 'zstd-seekable'), secretKey, true, m.closure);
      log(`... ${sSeek.toFixed(0)} s`);
      const d = {
        indexSeconds: { none: sNone, seekable: sSeek },
        narBytes: {
          none: narBytesOf(join(tmp, 'none'), m.closure), seekable: narBytesOf(join(tmp, 'zstd-seekable'), m.closure),
          plainZstd: narBytesOf(m.datalakes.zstd.dir, m.closure),
        },
        dedupe: dedupeOf(join(tmp, 'none'), m.closure),
      };
      const fd = openSync(join(tmp, 'info.json'), 'w');
      writeSync(fd, JSON.stringify(d, null, 2) + '\n');
      closeSync(fd);
      renameSync(tmp, out);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }
  const d = JSON.parse(readFileSync(info, 'utf8')) as Omit<IndexedDatalakes, 'none' | 'seekable'>;
  return { none: join(out, 'none'), seekable: join(out, 'zstd-seekable'), ...d };
}

export interface BigPath {
  storePath: string;
  /** Store-path-relative name of the file read (in the middle of the NAR), and its size. */
  file: string;
  fileSize: number;
  narSize: number;
  none: string;
  seekable: string;
}

const BIG_FILES = 64;
const BIG_FILE_BYTES = 16 << 20;

/** Writes file `name` of the big path: AES-256-CTR keystream (key and IV from the name). */
function writeGenerated(path: string, name: string, size: number): void {
  const k = createHash('sha256').update(`narfs-bench-big/${name}`).digest();
  const c = createCipheriv('aes-256-ctr', k, k.subarray(0, 16));
  const zero = Buffer.alloc(1 << 20);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < size; off += zero.length) writeSync(fd, c.update(zero.subarray(0, Math.min(zero.length, size - off))));
  } finally {
    closeSync(fd);
  }
}

/** The ~1 GiB store path, added by real Nix and published to two indexed datalakes. */
export function prepareBigPath(m: { dir: string; publicKey: string }, log: (s: string) => void): BigPath {
  const nixVersion = run('nix', ['--version']).trim();
  const key = sourcesKey([`big ${BIG_FILES} x ${BIG_FILE_BYTES} aes-256-ctr v1`, nixVersion]);
  const out = join(m.dir, `big-${key}`);
  const info = join(out, 'info.json');
  if (existsSync(info)) {
    const b = JSON.parse(readFileSync(info, 'utf8')) as Omit<BigPath, 'none' | 'seekable'>;
    if (valid([b.storePath])) return { ...b, none: join(out, 'none'), seekable: join(out, 'zstd-seekable') };
    rmSync(out, { recursive: true, force: true });
  }
  const tmp = join(m.dir, `.tmp-big-${key}-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, 'src/narfs-bench-big'), { recursive: true });
  try {
    log(`generating ${BIG_FILES} x ${BIG_FILE_BYTES >> 20} MiB for the 1 GiB store path`);
    const names = Array.from({ length: BIG_FILES }, (_, i) => `part-${String(i).padStart(3, '0')}`);
    for (const n of names) writeGenerated(join(tmp, 'src/narfs-bench-big', n), n, BIG_FILE_BYTES);
    const storePath = run('nix-store', ['--add', join(tmp, 'src/narfs-bench-big')], NIX_ENV).trim();
    rmSync(join(tmp, 'src'), { recursive: true, force: true });
    mkdirSync(join(tmp, 'gcroots'));
    run('nix-store', ['--realise', '--add-root', join(tmp, 'gcroots/big'), '--indirect', storePath], NIX_ENV);
    const secretKey = join(m.dir, 'keys/narfs-bench-1.sec');
    for (const [dir, c] of [['none', 'none'], ['zstd-seekable', 'zstd']] as const) {
      log(`nix copy of ${storePath} to ${dir}`);
      run('nix', ['copy', '--to', `file://${join(tmp, dir)}?compression=${c}&write-nar-listing=1&parallel-compression=true&secret-key=${secretKey}`, storePath], NIX_ENV);
      log(`narfs index ${c === 'zstd' ? '--seekable ' : ''}of it`);
      narIndex(join(tmp, dir), secretKey, c === 'zstd', [storePath]);
    }
    const narSize = Number(/^NarSize: (\d+)$/m.exec(readFileSync(join(tmp, 'none', `${storePath.slice(11, 43)}.narinfo`), 'utf8'))?.[1]);
    const b = { storePath, file: `${storePath.slice(11)}/${names[BIG_FILES / 2]}`, fileSize: BIG_FILE_BYTES, narSize };
    const fd = openSync(join(tmp, 'info.json'), 'w');
    writeSync(fd, JSON.stringify(b, null, 2) + '\n');
    closeSync(fd);
    // The gcroot names the tmp dir: re-point it at the final place after the rename.
    renameSync(tmp, out);
    rmSync(join(out, 'gcroots/big'), { force: true });
    run('nix-store', ['--realise', '--add-root', join(out, 'gcroots/big'), '--indirect', storePath], NIX_ENV);
    return { ...b, none: join(out, 'none'), seekable: join(out, 'zstd-seekable') };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
