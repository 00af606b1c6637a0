/**
 * Fake parsers, each breaking one rule of the fuzz oracle on the inputs that `trips`
 * selects, so test/unit/nix/fuzz.test.ts can show that every kind of breach is reported
 * (with the index of the input that caused it) and the fuzzer cannot silently pass.
 * Inputs that do not trip are rejected with ERR_NAR_TAG (an allowed code) or accepted.
 */
import { NarfsError, type ErrorCode } from '../../src/errors.js';
import { OracleViolation, type FuzzTarget } from './fuzz-engine.js';

/** The inputs on which a fake misbehaves. */
export const trips = (input: Buffer): boolean => input.length % 5 === 0;

/** Kept alive so the allocation shows in memoryUsage after the call. */
const hoard: Buffer[] = [];

function fake(name: string, misbehave: (input: Buffer) => void): FuzzTarget {
  return {
    name,
    allows: (code: ErrorCode) => code === 'ERR_NAR_TAG',
    dictionary: [Buffer.from('x')],
    run(input) {
      if (trips(input)) misbehave(input);
      if (input.length % 2 === 0) throw new NarfsError('ERR_NAR_TAG', 'fake rejection');
    },
  };
}

export const FUZZ_TARGETS: Record<string, FuzzTarget> = {
  honest: fake('honest', () => {}),
  'type-error': fake('type-error', (input) => {
    (input as unknown as { nope: () => void }).nope();
  }),
  'json-leak': fake('json-leak', (input) => {
    JSON.parse(`{${input.toString('latin1')}`);
  }),
  'internal-code': fake('internal-code', () => {
    throw new NarfsError('ERR_INTERNAL', 'fake bug');
  }),
  'foreign-code': fake('foreign-code', () => {
    throw new NarfsError('ERR_LISTING_PARSE', 'a code this parser must not raise');
  }),
  inconsistent: fake('inconsistent', () => {
    throw new OracleViolation('fake inconsistent result');
  }),
  slow: fake('slow', () => {
    const until = performance.now() + 300;
    while (performance.now() < until) {
      // busy: a synchronous parser stuck in a slow loop
    }
  }),
  'untrusted-alloc': fake('untrusted-alloc', () => {
    // Like Buffer.alloc(lengthFieldOfTheInput) before the bytes arrived.
    hoard.push(Buffer.alloc(32 << 20, 1));
  }),
  hang: fake('hang', () => {
    for (;;) {
      // never returns
    }
  }),
};
