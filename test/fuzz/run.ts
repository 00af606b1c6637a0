/**
 * `npm run fuzz`: mutation fuzzing of the NAR, narinfo, .ls and .drv parsers, seeded with
 * the real files of the fixture datalakes (test/fuzz/fuzz-seeds.ts), judged by the oracle
 * of test/fuzz/fuzz-engine.ts. Each parser runs on its own worker thread under the hang
 * watchdog of fuzz-worker.ts, one after the other (so memory growth is the parser's own).
 *
 * Usage: node --import tsx test/fuzz/run.ts (npm run fuzz --) [--iterations N (100000)]
 *        [--seed S (1)] [--parser nar|narinfo|ls|drv (all; repeatable)] [--start I]
 *        [--time-budget-ms 1000] [--memory-budget-mib 64] [--hang-ms 30000]
 *        [--fixtures DIR (default: bash scripts/build-fixtures.sh)] [--dump FILE]
 * `--dump FILE` writes input --start of the (single) parser to FILE, to look at a failure.
 * Prints per-parser counts (inputs, accepted, rejected by code, time) and every violation
 * with the command that replays it; exits 1 on any violation.
 *
 * Last full run (seed 1, 10^5 inputs per parser, 8 min on a loaded 2-core machine; no
 * violation): nar 12,806 accepted / 87,194 rejected under 12 codes, slowest input 210 ms,
 * memory growth ≤ 17 MiB; narinfo 16,621 / 83,379; ls 8,835 / 91,165; drv 18,311 /
 * 81,689 (after the fix of inputDrvs/inputSrcs shapes, which this fuzzer found).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TIME_BUDGET_MS, formatViolation, generateInput, type FuzzReport } from './fuzz-engine.js';
import { loadFuzzSeeds } from './fuzz-seeds.js';
import { FUZZ_TARGET_NAMES, FUZZ_TARGETS, type FuzzTargetName } from './fuzz-targets.js';
import { runFuzzInWorker } from './fuzz-worker.js';

const { values } = parseArgs({
  options: {
    iterations: { type: 'string', default: '100000' },
    seed: { type: 'string', default: '1' },
    parser: { type: 'string', multiple: true },
    start: { type: 'string', default: '0' },
    'time-budget-ms': { type: 'string', default: String(DEFAULT_TIME_BUDGET_MS) },
    'memory-budget-mib': { type: 'string', default: String(DEFAULT_MEMORY_BUDGET_BYTES / 2 ** 20) },
    'hang-ms': { type: 'string', default: '30000' },
    fixtures: { type: 'string' },
    dump: { type: 'string' },
  },
  strict: true,
});

function int(name: string, s: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`fuzz: --${name} must be a non-negative integer, not '${s}'`);
    process.exit(2);
  }
  return n;
}

const iterations = int('iterations', values.iterations);
const seed = int('seed', values.seed) >>> 0;
const start = int('start', values.start);
const parsers = (values.parser ?? [...FUZZ_TARGET_NAMES]).flatMap((p) => p.split(','));
for (const p of parsers) {
  if (!(FUZZ_TARGET_NAMES as readonly string[]).includes(p)) {
    console.error(`fuzz: unknown --parser '${p}' (nar, narinfo, ls, drv)`);
    process.exit(2);
  }
}

const fixtures =
  values.fixtures ??
  execFileSync('bash', [fileURLToPath(new URL('../../scripts/build-fixtures.sh', import.meta.url))], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    .trimEnd()
    .split('\n')
    .pop()!;
const seeds = loadFuzzSeeds(fixtures);

if (values.dump !== undefined) {
  if (parsers.length !== 1) {
    console.error('fuzz: --dump needs exactly one --parser');
    process.exit(2);
  }
  const name = parsers[0] as FuzzTargetName;
  const { input } = generateInput(FUZZ_TARGETS[name], seeds[name], seed, start);
  writeFileSync(values.dump, input);
  console.log(`fuzz: wrote ${name} input seed=${seed} index=${start} (${input.length} bytes) to ${values.dump}`);
}

console.log(`fuzz: seed ${seed}, ${iterations} inputs per parser from index ${start}, fixtures ${fixtures}`);
const reports: FuzzReport[] = [];
for (const name of parsers as FuzzTargetName[]) {
  const report = await runFuzzInWorker(
    {
      targetsModule: new URL('./fuzz-targets.ts', import.meta.url).href,
      target: name,
      seeds: seeds[name],
      options: {
        seed,
        iterations,
        start,
        timeBudgetMs: int('time-budget-ms', values['time-budget-ms']),
        memoryBudgetBytes: int('memory-budget-mib', values['memory-budget-mib']) * 2 ** 20,
      },
    },
    { hangMs: int('hang-ms', values['hang-ms']) },
  );
  reports.push(report);
  const rejected = Object.entries(report.rejected)
    .sort(([, a], [, b]) => b - a)
    .map(([code, n]) => `${code} ${n}`)
    .join(', ');
  console.log(
    `${name.padEnd(7)} ${String(report.inputs).padStart(7)} inputs (${seeds[name].length} seeds) in ${(report.elapsedMs / 1000).toFixed(1)} s: ` +
      `accepted ${report.accepted}, rejected ${Object.values(report.rejected).reduce((a, b) => a + b, 0)}` +
      ` (${rejected || 'none'}); slowest input ${report.maxInputMs.toFixed(1)} ms (index ${report.slowestIndex}), largest memory growth ${(report.maxMemoryDelta / 2 ** 20).toFixed(1)} MiB`,
  );
  if (report.rejectedSeeds.length > 0) console.log(`        unmutated seeds rejected: ${report.rejectedSeeds.join(', ')}`);
  for (const v of report.violations) console.log(`  VIOLATION ${formatViolation(v)}`);
}
const violations = reports.reduce((n, r) => n + r.violations.length, 0);
console.log(violations === 0 ? 'fuzz: no oracle violation' : `fuzz: ${violations} oracle violation(s)`);
process.exit(violations === 0 ? 0 : 1);
