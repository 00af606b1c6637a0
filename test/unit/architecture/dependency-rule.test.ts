/**
 * Keeps the layering of architecture.md honest: `src/nix` imports nothing of ours and no
 * I/O module; `src/fs` imports only `nix` types, errors and deadlines; only `src/fuse`
 * touches the FUSE binding; only `src/datalake` touches undici; SQLite only in `src/nixdb`
 * (the lower store) and `src/cache/blob-store.ts` (the cache's own metadata).
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../../../src/', import.meta.url));

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

async function importsOf(file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8');
  return [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]!)
    .concat([...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]!))
    .concat([...text.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]!));
}

describe('architecture: the dependency rule', () => {
  let files: Array<{ rel: string; imports: string[] }>;
  before(async () => {
    files = await Promise.all((await sources(SRC)).map(async (f) => ({ rel: relative(SRC, f), imports: await importsOf(f) })));
    assert.ok(files.filter((f) => f.rel.startsWith('nix/')).length >= 8, 'the scan sees src/nix');
    assert.ok(files.some((f) => f.imports.includes('fuse-native')), 'the scan sees the binding import');
  });

  it('src/nix is pure: no I/O modules, nothing of ours outside src/nix but errors', () => {
    const io = /^(node:)?(fs|fs\/promises|net|http|https|child_process|dgram|worker_threads)$|^(undici|level|classic-level|fuse-native|better-sqlite3)$/;
    for (const f of files.filter((x) => x.rel.startsWith('nix/'))) {
      for (const i of f.imports) {
        assert.ok(!io.test(i), `${f.rel} imports ${i}`);
        if (i.startsWith('.')) assert.ok(i.startsWith('./') || i === '../errors.js', `${f.rel} imports ${i}`);
      }
    }
  });

  it('src/fs knows neither FUSE nor HTTP nor the store layer', () => {
    for (const f of files.filter((x) => x.rel.startsWith('fs/'))) {
      for (const i of f.imports) {
        if (!i.startsWith('.')) assert.ok(i.startsWith('node:'), `${f.rel} imports ${i}`);
        else assert.ok(/^\.\/|^\.\.\/(nix\/|errors\.js|deadline\.js)/.test(i), `${f.rel} imports ${i}`);
      }
    }
  });

  it('only src/fuse touches the FUSE binding, only src/datalake undici, only src/nixdb and the blob store SQLite', () => {
    const owners: Array<[RegExp, string[]]> = [
      [/^fuse-native$/, ['fuse/']], [/^undici$/, ['datalake/']], [/^better-sqlite3$/, ['nixdb/', 'cache/blob-store.ts']],
    ];
    for (const f of files) {
      for (const i of f.imports) {
        for (const [re, dirs] of owners) if (re.test(i)) assert.ok(dirs.some((d) => f.rel.startsWith(d)), `${f.rel} imports ${i}`);
      }
    }
  });
});
