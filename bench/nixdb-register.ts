/**
 * Cost of the generation-per-registration write protocol of src/nixdb (docs/lower-store.md):
 *   npx tsx bench/nixdb-register.ts [rows=50000]
 * Prints: one big batch into an empty store, the database size, then single-path and
 * 100-path registrations into the big store (each copies the whole file), the copy alone,
 * and an already-valid registration (no copy).
 */
import { copyFileSync, constants, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLowerStore, lowerStoreLayout, registerValidPaths } from '../src/nixdb/index.js';
import { fakeChain } from '../test/integration/nixdb-fixtures.js';

const rows = Number(process.argv[2] ?? 50_000);
const root = mkdtempSync(join(tmpdir(), 'narfs-bench-nixdb-'));
const ms = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
try {
  await createLowerStore(root);
  const l = lowerStoreLayout(root);
  const big = fakeChain('bench', rows);
  let t = process.hrtime.bigint();
  await registerValidPaths(root, big);
  console.log(`${rows} paths in one batch: ${ms(t).toFixed(0)} ms; db.sqlite = ${(statSync(l.dbPath).size / 1e6).toFixed(1)} MB`);

  const one: number[] = [];
  let prev = big[rows - 1]!.path;
  for (let i = 0; i < 20; i++) {
    const [info] = fakeChain(`one-${i}`, 1, prev);
    t = process.hrtime.bigint();
    await registerValidPaths(root, [info!]);
    one.push(ms(t));
    prev = info!.path;
  }
  console.log(`1 path into the ${rows}-row store: median ${median(one).toFixed(1)} ms (min ${Math.min(...one).toFixed(1)}, max ${Math.max(...one).toFixed(1)})`);

  const hundred: number[] = [];
  for (let i = 0; i < 10; i++) {
    const batch = fakeChain(`hundred-${i}`, 100, prev);
    t = process.hrtime.bigint();
    await registerValidPaths(root, batch);
    hundred.push(ms(t));
    prev = batch[99]!.path;
  }
  console.log(`100 paths into the store: median ${median(hundred).toFixed(1)} ms`);

  const copies: number[] = [];
  for (let i = 0; i < 10; i++) {
    t = process.hrtime.bigint();
    copyFileSync(l.dbPath, `${l.dbPath}.bench-copy`, constants.COPYFILE_FICLONE);
    copies.push(ms(t));
    rmSync(`${l.dbPath}.bench-copy`);
  }
  console.log(`copy of db.sqlite alone: median ${median(copies).toFixed(1)} ms`);

  const again: number[] = [];
  for (let i = 0; i < 20; i++) {
    t = process.hrtime.bigint();
    await registerValidPaths(root, big.slice(0, 1));
    again.push(ms(t));
  }
  console.log(`1 already-valid path (no new generation): median ${median(again).toFixed(1)} ms`);
  t = process.hrtime.bigint();
  await registerValidPaths(root, big);
  console.log(`all ${rows} again (already valid): ${ms(t).toFixed(0)} ms`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
