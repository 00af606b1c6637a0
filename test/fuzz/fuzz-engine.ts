/**
 * The fuzz loop and its oracle, parser-agnostic: a FuzzTarget says how to mutate and run
 * one parser; `fuzzTarget` generates inputs from seeds and judges every run.
 *
 * Oracle (a breach is a Violation carrying the seed and index that regenerate the input):
 * - a rejection is a NarfsError whose code is in ERROR_CATALOG and allowed for the target
 *   (ERR_INTERNAL never is): anything else thrown (TypeError, RangeError, a leaking JSON
 *   SyntaxError, a NarfsError of another parser's code) is `uncoded-throw`/`unexpected-code`;
 * - an accepted input passes the target's own consistency checks (OracleViolation);
 * - one input takes at most `timeBudgetMs` (re-run twice before it is reported, so a
 *   loaded machine does not make it flaky: the fastest of three runs counts);
 * - one input grows rss, heapUsed or arrayBuffers by at most `memoryBudgetBytes`
 *   (again confirmed by re-runs);
 * - a run that never returns is caught by the watchdog of fuzz-worker.ts (`hang`).
 *
 * Determinism: input `i` is a function of (seed, target, seeds, i) only (Prng.forInput).
 * Inputs 0..seeds.length-1 are the seeds themselves, unmutated.
 */
import { performance } from 'node:perf_hooks';

import { ERROR_CATALOG, NarfsError, type ErrorCode } from '../../src/errors.js';
import { mutateBytes, MAX_INPUT_BYTES, type MutationContext } from './mutate-bytes.js';
import { Prng } from './prng.js';

export interface FuzzTarget {
  readonly name: string;
  /** Whether a rejection may carry this code. */
  allows(code: ErrorCode): boolean;
  /** Tokens of the format for the format-blind mutators. */
  readonly dictionary: readonly Buffer[];
  /** Format-aware mutation, chosen for about 40% of the mutation steps. */
  mutate?(rng: Prng, input: Buffer, ctx: MutationContext): Buffer;
  /**
   * Parses `input` with the parser under test. Throws what the parser throws; checks an
   * accepted result and throws OracleViolation when it is inconsistent. `rng` is the
   * input's own generator (e.g. for chunk sizes).
   */
  run(input: Buffer, rng: Prng): void;
}

/** Thrown by a target's checks: the parser accepted the input but its result is wrong. */
export class OracleViolation extends Error {
  override name = 'OracleViolation';
}

export type ViolationKind = 'uncoded-throw' | 'unexpected-code' | 'inconsistent' | 'slow' | 'memory' | 'hang';

export interface Violation {
  target: string;
  seed: number;
  index: number;
  kind: ViolationKind;
  message: string;
  inputLength: number;
}

export interface FuzzOptions {
  seed: number;
  iterations: number;
  /** First input index (default 0); with iterations 1 this replays one input. */
  start?: number;
  /** Default 1000 ms. */
  timeBudgetMs?: number;
  /** Default 64 MiB. */
  memoryBudgetBytes?: number;
  /** Stop after this many violations (default 20). */
  maxViolations?: number;
  /** Called before each input is run (the watchdog's heartbeat). */
  onInput?(index: number): void;
}

export interface FuzzReport {
  target: string;
  seed: number;
  inputs: number;
  accepted: number;
  /** Code → count, for rejections that satisfy the oracle. */
  rejected: Record<string, number>;
  /** Indices of the unmutated seeds that were rejected (inputs 0..seeds-1). */
  rejectedSeeds: number[];
  violations: Violation[];
  elapsedMs: number;
  /** Slowest single input (first run) and its index. */
  maxInputMs: number;
  slowestIndex: number;
  /** Largest growth of rss/heapUsed/arrayBuffers over one input. */
  maxMemoryDelta: number;
}

export const DEFAULT_TIME_BUDGET_MS = 1000;
export const DEFAULT_MEMORY_BUDGET_BYTES = 64 << 20;

/** Regenerates input `index`: a seed, then 1..8 mutations (none for the first seeds.length). */
export function generateInput(target: FuzzTarget, seeds: readonly Buffer[], seed: number, index: number): { input: Buffer; rng: Prng } {
  const rng = Prng.forInput(seed, target.name, index);
  if (index < seeds.length) return { input: seeds[index]!, rng };
  const ctx: MutationContext = { pool: seeds, dictionary: target.dictionary };
  let input = rng.pick(seeds);
  for (let n = rng.small(8); n > 0; n--) {
    input = target.mutate !== undefined && rng.chance(0.4) ? target.mutate(rng, input, ctx) : mutateBytes(rng, input, ctx);
    if (input.length > MAX_INPUT_BYTES) input = input.subarray(0, MAX_INPUT_BYTES);
  }
  return { input, rng };
}

type Outcome = { kind: 'accepted' } | { kind: 'rejected'; code: ErrorCode } | { kind: 'violation'; violation: ViolationKind; message: string };

/** What a throw means under the oracle. */
export function judgeThrow(target: FuzzTarget, e: unknown): Outcome {
  if (e instanceof OracleViolation) return { kind: 'violation', violation: 'inconsistent', message: e.message };
  if (e instanceof NarfsError) {
    if (!Object.hasOwn(ERROR_CATALOG, e.code) || e.code === 'ERR_INTERNAL' || !target.allows(e.code)) {
      return { kind: 'violation', violation: 'unexpected-code', message: `${e.code}: ${e.message}` };
    }
    return { kind: 'rejected', code: e.code };
  }
  const what = e instanceof Error ? `${e.constructor.name}: ${e.message}` : `non-Error ${typeof e}: ${String(e)}`;
  return { kind: 'violation', violation: 'uncoded-throw', message: what };
}

interface Measured {
  outcome: Outcome;
  ms: number;
  memoryDelta: number;
}

function measure(target: FuzzTarget, input: Buffer, rng: Prng): Measured {
  const m0 = process.memoryUsage();
  const t0 = performance.now();
  let outcome: Outcome;
  try {
    target.run(input, rng);
    outcome = { kind: 'accepted' };
  } catch (e) {
    outcome = judgeThrow(target, e);
  }
  const ms = performance.now() - t0;
  const m1 = process.memoryUsage();
  const memoryDelta = Math.max(m1.rss - m0.rss, m1.heapUsed - m0.heapUsed, m1.arrayBuffers - m0.arrayBuffers);
  return { outcome, ms, memoryDelta };
}

export function fuzzTarget(target: FuzzTarget, seeds: readonly Buffer[], opts: FuzzOptions): FuzzReport {
  if (seeds.length === 0) throw new Error(`fuzz ${target.name}: no seeds`);
  const timeBudget = opts.timeBudgetMs ?? DEFAULT_TIME_BUDGET_MS;
  const memoryBudget = opts.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const maxViolations = opts.maxViolations ?? 20;
  const start = opts.start ?? 0;
  const report: FuzzReport = {
    target: target.name,
    seed: opts.seed,
    inputs: 0,
    accepted: 0,
    rejected: {},
    rejectedSeeds: [],
    violations: [],
    elapsedMs: 0,
    maxInputMs: 0,
    slowestIndex: -1,
    maxMemoryDelta: 0,
  };
  const t0 = performance.now();
  for (let index = start; index < start + opts.iterations; index++) {
    opts.onInput?.(index);
    const { input, rng } = generateInput(target, seeds, opts.seed, index);
    let m = measure(target, input, rng);
    report.inputs++;
    if (m.ms > report.maxInputMs) {
      report.maxInputMs = m.ms;
      report.slowestIndex = index;
    }
    report.maxMemoryDelta = Math.max(report.maxMemoryDelta, m.memoryDelta);
    // Over a budget: the fastest / smallest of three runs counts.
    for (let retry = 0; retry < 2 && (m.ms > timeBudget || m.memoryDelta > memoryBudget); retry++) {
      const again = measure(target, input, generateInput(target, seeds, opts.seed, index).rng);
      m = { outcome: m.outcome, ms: Math.min(m.ms, again.ms), memoryDelta: Math.min(m.memoryDelta, again.memoryDelta) };
    }
    const violations: Array<[ViolationKind, string]> = [];
    if (m.outcome.kind === 'violation') violations.push([m.outcome.violation, m.outcome.message]);
    if (m.ms > timeBudget) violations.push(['slow', `took ${m.ms.toFixed(0)} ms (budget ${timeBudget} ms)`]);
    if (m.memoryDelta > memoryBudget) {
      violations.push(['memory', `grew memory by ${(m.memoryDelta / 2 ** 20).toFixed(1)} MiB (budget ${(memoryBudget / 2 ** 20).toFixed(0)} MiB)`]);
    }
    for (const [kind, message] of violations) {
      report.violations.push({ target: target.name, seed: opts.seed, index, kind, message, inputLength: input.length });
    }
    if (m.outcome.kind === 'accepted') {
      report.accepted++;
    } else if (m.outcome.kind === 'rejected') {
      report.rejected[m.outcome.code] = (report.rejected[m.outcome.code] ?? 0) + 1;
      if (index < seeds.length) report.rejectedSeeds.push(index);
    }
    if (report.violations.length >= maxViolations) break;
  }
  report.elapsedMs = performance.now() - t0;
  return report;
}

/** One line per violation, with the command that replays it. */
export function formatViolation(v: Violation): string {
  return (
    `${v.target} seed=${v.seed} index=${v.index} [${v.kind}] ${v.message} (input ${v.inputLength} bytes)` +
    `\n    replay: npm run fuzz -- --parser ${v.target} --seed ${v.seed} --start ${v.index} --iterations 1 --dump /tmp/fuzz-input.bin`
  );
}
