/**
 * buildNixBinaryCache: a small binary cache written by REAL Nix into a temp dir, for the
 * datalake tests (never hand-written: see architecture.md, "Tests").
 *
 * Invariant: the contents are deterministic (same store paths every run, so /nix/store
 * does not grow), and the cache holds at least one NAR large enough (> 256 KiB, xz of
 * incompressible bytes) to arrive in many chunks, so truncation and stalls land mid-body.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const NIX_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  NIX_CONFIG: ['experimental-features = nix-command', 'build-users-group =', 'sandbox = false'].join('\n'),
};

export interface NixBinaryCache {
  /** The cache directory (nix-cache-info, *.narinfo, *.ls, nar/). */
  dir: string;
  /** Store paths in the cache, e.g. /nix/store/<hash>-narfs-datalake-tree. */
  storePaths: string[];
  /** hashPart → the narinfo's URL (nar/<filehash>.nar.xz). */
  narUrls: Map<string, string>;
  /** Removes the temp dir (not the store paths). */
  cleanup(): Promise<void>;
}

/** True when the nix tools this module needs are on PATH. */
export async function haveNix(): Promise<boolean> {
  try {
    await run('nix-store', ['--version'], { env: NIX_ENV });
    return true;
  } catch {
    return false;
  }
}

/** Deterministic incompressible bytes (xorshift32). */
function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export async function buildNixBinaryCache(): Promise<NixBinaryCache> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-datalake-'));
  const src = path.join(tmp, 'src');
  const tree = path.join(src, 'narfs-datalake-tree');
  await fsp.mkdir(path.join(tree, 'sub'), { recursive: true });
  await fsp.writeFile(path.join(tree, 'hello.txt'), 'hello\n');
  await fsp.writeFile(path.join(tree, 'empty'), '');
  await fsp.writeFile(path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  await fsp.writeFile(path.join(tree, 'big.bin'), noise(300 * 1024, 0x6e617266));
  await fsp.symlink('hello.txt', path.join(tree, 'link'));
  const single = path.join(src, 'narfs-datalake-file.txt');
  await fsp.writeFile(single, 'a single-file store path\n');

  const storePaths: string[] = [];
  for (const p of [tree, single]) {
    const { stdout } = await run('nix-store', ['--add', p], { env: NIX_ENV });
    storePaths.push(stdout.trim());
  }
  const dir = path.join(tmp, 'cache');
  await run('nix', ['copy', '--to', `file://${dir}?compression=xz&write-nar-listing=true`, ...storePaths], {
    env: NIX_ENV,
  });

  const narUrls = new Map<string, string>();
  for (const sp of storePaths) {
    const hashPart = path.basename(sp).slice(0, 32);
    const text = await fsp.readFile(path.join(dir, `${hashPart}.narinfo`), 'utf8');
    const url = /^URL: (.*)$/m.exec(text)?.[1];
    if (!url) throw new Error(`no URL in ${hashPart}.narinfo`);
    narUrls.set(hashPart, url);
  }
  return { dir, storePaths, narUrls, cleanup: () => fsp.rm(tmp, { recursive: true, force: true }) };
}
