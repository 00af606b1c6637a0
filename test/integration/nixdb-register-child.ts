/**
 * Child process for the nixdb crash/reader tests:
 *   node --import tsx nixdb-register-child.ts <lowerRoot> <tag> <count> [base] [batches]
 * registers `batches` (default 1) synthetic closures of `count` paths each, one call per
 * batch, then prints "done <ms>". Killed with SIGKILL by the crash test.
 */
import { registerValidPaths } from '../../src/nixdb/index.js';
import { fakeChain } from './nixdb-fixtures.js';

const [lowerRoot, tag, countArg, base, batchesArg] = process.argv.slice(2);
const count = Number(countArg);
const batches = Number(batchesArg ?? '1');
const start = Date.now();
let prev = base === undefined || base === '' ? undefined : base;
for (let b = 0; b < batches; b++) {
  const infos = fakeChain(`${tag}-${b}`, count, prev);
  await registerValidPaths(lowerRoot!, infos);
  prev = infos[infos.length - 1]!.path;
  process.stdout.write(`batch ${b}\n`);
}
process.stdout.write(`done ${Date.now() - start}\n`);
