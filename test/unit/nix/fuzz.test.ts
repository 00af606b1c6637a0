/**
 * The fuzzer of test/fuzz/ in CI: a few thousand mutations of real Nix files (fixture
 * datalakes) per parser with a fixed seed — the same inputs on every run — judged by the
 * oracle of test/fuzz/fuzz-engine.ts; and the oracle itself, shown to report every kind of
 * breach (test/fuzz/oracle-fakes.ts) so this test cannot pass by not looking.
 * `npm run fuzz` runs the same engine with 10^5 inputs per parser.
 */
import assert from 'node:assert/strict';

import { formatViolation, fuzzTarget, generateInput, OracleViolation, type FuzzReport, type ViolationKind } from '../../fuzz/fuzz-engine.js';
import { loadFuzzSeeds, type FuzzSeeds } from '../../fuzz/fuzz-seeds.js';
import { drvShapeProblem } from '../../fuzz/drv-reference.js';
import { checkAcceptedNar, FUZZ_TARGET_NAMES, FUZZ_TARGETS } from '../../fuzz/fuzz-targets.js';
import { runFuzzInWorker } from '../../fuzz/fuzz-worker.js';
import { FUZZ_TARGETS as FAKES, trips } from '../../fuzz/oracle-fakes.js';
import { FIXTURE_BUILD_TIMEOUT_MS, loadFixtures } from '../../support/fixtures.js';
import { parseNar } from '../../../src/nix/nar-parser.js';
import { writeNar } from '../../../src/nix/nar-writer.js';

const SEED = 0x6e617266; // "narf"
const INPUTS_PER_PARSER = 2500;
/** Distinct rejection codes the NAR inputs must reach (the mutations go deep into the grammar). */
const MIN_NAR_CODES = 8;

const TARGETS_MODULE = new URL('../../fuzz/fuzz-targets.ts', import.meta.url).href;
const FAKES_MODULE = new URL('../../fuzz/oracle-fakes.ts', import.meta.url).href;

describe('nix/fuzz: mutated real Nix files through the parsers (fixed seed)', function () {
  this.timeout(120_000);
  let seeds: FuzzSeeds;

  before(async function () {
    this.timeout(FIXTURE_BUILD_TIMEOUT_MS);
    seeds = loadFuzzSeeds((await loadFixtures()).dir);
  });

  for (const name of FUZZ_TARGET_NAMES) {
    it(`${name}: ${INPUTS_PER_PARSER} inputs, every rejection coded, accepted results consistent`, async () => {
      const report = await runFuzzInWorker(
        { targetsModule: TARGETS_MODULE, target: name, seeds: seeds[name], options: { seed: SEED, iterations: INPUTS_PER_PARSER } },
        { hangMs: 30_000 },
      );
      assert.deepEqual(report.violations.map(formatViolation), []);
      assert.equal(report.inputs, INPUTS_PER_PARSER);
      // The unmutated real files (inputs 0..seeds-1) are all accepted ...
      assert.deepEqual(report.rejectedSeeds, []);
      // ... and the mutations produce both accepted and rejected inputs.
      assert.ok(report.accepted > seeds[name].length, `only ${report.accepted} accepted`);
      const rejected = Object.values(report.rejected).reduce((a, b) => a + b, 0);
      assert.equal(report.accepted + rejected, report.inputs);
      assert.ok(rejected > INPUTS_PER_PARSER / 4, `only ${rejected} rejected`);
      if (name === 'nar') {
        assert.ok(Object.keys(report.rejected).length >= MIN_NAR_CODES, `NAR codes reached: ${Object.keys(report.rejected).join(' ')}`);
      }
    });
  }

  it('the reference .drv grammar of the oracle accepts the real .drv files and rejects what Nix rejects', () => {
    for (const drv of seeds.drv) assert.equal(drvShapeProblem(drv.toString('utf8')), undefined);
    const real = seeds.drv[0]!.toString('utf8');
    assert.match(drvShapeProblem(real.replace('],[', '],[[[[]]],'))!, /^expected \(/);
    assert.match(drvShapeProblem('Derive([("out","/nix/store/x","","")],[],["src"],"s","b",[],[])')!, /^bad path 'src'/);
    assert.match(drvShapeProblem('Derive([("out","x","","")],[],[],"s","b",[],[])')!, /^bad path 'x'/);
    assert.match(drvShapeProblem('DrvWithVersion("v2",[],[],[],"s","b",[],[])')!, /^unknown version/);
  });

  it('generates the same inputs for the same seed and index, whatever ran before', () => {
    for (const name of FUZZ_TARGET_NAMES) {
      const target = FUZZ_TARGETS[name];
      const a = generateInput(target, seeds[name], SEED, 777).input;
      generateInput(target, seeds[name], SEED, 3);
      assert.ok(generateInput(target, seeds[name], SEED, 777).input.equals(a), name);
      assert.ok(!generateInput(target, seeds[name], SEED + 1, 777).input.equals(a) || a.length === 0, name);
    }
  });
});

describe('nix/fuzz: the oracle reports every kind of breach', function () {
  this.timeout(60_000);
  const fakeSeeds = [Buffer.from('abcdefgh'), Buffer.from('0123456789abcdef'), Buffer.from('xyz')];

  /** The first index whose input makes the fakes misbehave (inputs 0..2 are the seeds). */
  function firstTrip(name: string, seed: number): number {
    for (let i = 0; ; i++) if (trips(generateInput(FAKES[name]!, fakeSeeds, seed, i).input)) return i;
  }

  async function run(name: string, options: { timeBudgetMs?: number; memoryBudgetBytes?: number } = {}, hangMs = 30_000): Promise<FuzzReport> {
    return runFuzzInWorker(
      { targetsModule: FAKES_MODULE, target: name, seeds: fakeSeeds, options: { seed: 42, iterations: 200, maxViolations: 1, ...options } },
      { hangMs },
    );
  }

  function assertReported(report: FuzzReport, name: string, kind: ViolationKind, message: RegExp): void {
    assert.equal(report.violations.length, 1, JSON.stringify(report.violations));
    const v = report.violations[0]!;
    assert.equal(v.kind, kind);
    assert.match(v.message, message);
    assert.equal(v.seed, 42);
    // The index printed regenerates the input that misbehaved.
    assert.equal(v.index, firstTrip(name, 42));
    assert.match(formatViolation(v), new RegExp(`--seed 42 --start ${v.index} --iterations 1`));
  }

  it('passes a parser that only throws allowed codes (the fakes misbehave on some inputs only)', async () => {
    const report = await run('honest');
    assert.deepEqual(report.violations, []);
    assert.equal(report.inputs, 200);
    assert.ok(report.accepted > 0 && (report.rejected['ERR_NAR_TAG'] ?? 0) > 0);
    assert.ok(firstTrip('honest', 42) < 200);
  });

  it('reports an uncoded TypeError with its seed and index', async () => {
    assertReported(await run('type-error'), 'type-error', 'uncoded-throw', /^TypeError: /);
  });

  it('reports a JSON SyntaxError that leaks out', async () => {
    assertReported(await run('json-leak'), 'json-leak', 'uncoded-throw', /^SyntaxError: /);
  });

  it('reports ERR_INTERNAL and codes of another parser', async () => {
    assertReported(await run('internal-code'), 'internal-code', 'unexpected-code', /^ERR_INTERNAL: /);
    assertReported(await run('foreign-code'), 'foreign-code', 'unexpected-code', /^ERR_LISTING_PARSE: /);
  });

  it('reports an inconsistent accepted result', async () => {
    assertReported(await run('inconsistent'), 'inconsistent', 'inconsistent', /fake inconsistent/);
  });

  it('reports an input over the time budget', async () => {
    assertReported(await run('slow', { timeBudgetMs: 100 }), 'slow', 'slow', /budget 100 ms/);
  });

  it('reports an allocation over the memory budget', async () => {
    assertReported(await run('untrusted-alloc', { memoryBudgetBytes: 16 << 20 }), 'untrusted-alloc', 'memory', /grew memory by 3\d\.\d MiB/);
  });

  it('reports an input that never returns, through the watchdog', async () => {
    assertReported(await run('hang', {}, 3000), 'hang', 'hang', /no return within 3000 ms/);
  });

  it('checks accepted NARs: offsets, canonical bytes, handler file count', () => {
    const nar = writeNar({ type: 'directory', entries: { a: { type: 'regular', contents: 'hello' }, b: { type: 'symlink', target: 'a' } } });
    const root = parseNar(nar);
    checkAcceptedNar(nar, root, 1);
    assert.throws(() => checkAcceptedNar(nar, root, 0), OracleViolation);
    const shifted = parseNar(nar);
    if (shifted.type !== 'directory') assert.fail('not a directory');
    const file = shifted.entries.get('a');
    if (file?.type !== 'regular') assert.fail('not a file');
    file.narOffset += 8;
    assert.throws(() => checkAcceptedNar(nar, shifted, 1), OracleViolation);
    file.narOffset = nar.length - 2;
    assert.throws(() => checkAcceptedNar(nar, shifted, 1), OracleViolation);
  });

  it('runs in-thread with the same verdicts (the engine does not depend on the worker)', () => {
    const report = fuzzTarget(FAKES['type-error']!, fakeSeeds, { seed: 42, iterations: 200, maxViolations: 1 });
    assert.equal(report.violations[0]?.index, firstTrip('type-error', 42));
  });
});
