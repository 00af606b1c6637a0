/**
 * Format-blind mutations of a byte string: bit flips, byte sets, insertions, deletions,
 * truncations, range duplication, splices with another seed, dictionary tokens and
 * rewritten decimal numbers.
 *
 * Invariant: inputs are never modified (every mutation returns a new Buffer); a result is
 * at most MAX_INPUT_BYTES long.
 */
import type { Prng } from './prng.js';

export const MAX_INPUT_BYTES = 4 << 20;

export interface MutationContext {
  /** The seeds of the same parser (splice partners). */
  pool: readonly Buffer[];
  /** Tokens of the format (keywords, punctuation), inserted or overwritten whole. */
  dictionary: readonly Buffer[];
}

const INTERESTING_BYTES = [0x00, 0x01, 0x07, 0x08, 0x0a, 0x0d, 0x20, 0x22, 0x28, 0x29, 0x2c, 0x2f, 0x3a, 0x5b, 0x5c, 0x5d, 0x7b, 0x7d, 0x7f, 0x80, 0xbf, 0xc0, 0xed, 0xf4, 0xfe, 0xff];

/** Decimal strings that stress number parsing: limits of 2^53, 2^63, 2^64, signs, exponents. */
export const INTERESTING_DECIMALS = [
  '0', '1', '-1', '+1', '00', '007', '255', '4095', '4096', '2147483647', '2147483648', '4294967295', '4294967296',
  '1099511627776', '9007199254740991', '9007199254740992', '9007199254740993', '9223372036854775807',
  '9223372036854775808', '18446744073709551615', '18446744073709551616', '1e3', '1E400', '1.5', '-0', '0x10',
  ' 1', '1 ', '', '١٢', '99999999999999999999999999999999999999999999999999', '1'.padEnd(400, '0'),
];

const mutators: Array<(rng: Prng, b: Buffer, ctx: MutationContext) => Buffer> = [
  // flip 1..8 bits
  (rng, b) => {
    if (b.length === 0) return b;
    const out = Buffer.from(b);
    for (let n = rng.small(8); n > 0; n--) out[rng.int(out.length)]! ^= 1 << rng.int(8);
    return out;
  },
  // set a byte to an interesting or random value
  (rng, b) => {
    if (b.length === 0) return b;
    const out = Buffer.from(b);
    out[rng.int(out.length)] = rng.chance(0.5) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
    return out;
  },
  // insert random bytes
  (rng, b) => insert(b, rng.int(b.length + 1), rng.chance(0.5) ? rng.bytes(rng.small(16)) : Buffer.from([rng.pick(INTERESTING_BYTES)])),
  // delete a range
  (rng, b) => {
    if (b.length === 0) return b;
    const at = rng.int(b.length);
    const n = Math.min(b.length - at, rng.chance(0.9) ? rng.small(16) : rng.small(b.length));
    return Buffer.concat([b.subarray(0, at), b.subarray(at + n)]);
  },
  // truncate
  (rng, b) => b.subarray(0, rng.int(b.length + 1)),
  // duplicate a range in place (repeats a token or a whole subtree)
  (rng, b) => {
    if (b.length === 0) return b;
    const at = rng.int(b.length);
    const n = Math.min(b.length - at, rng.small(b.length));
    const piece = b.subarray(at, at + n);
    const times = rng.chance(0.9) ? 1 : rng.small(64);
    return insert(b, at, Buffer.concat(Array.from({ length: times }, () => piece)));
  },
  // splice: a prefix of this input and a suffix of another seed, or a piece of it inserted
  (rng, b, ctx) => {
    const other = rng.pick(ctx.pool);
    if (rng.chance(0.5)) return Buffer.concat([b.subarray(0, rng.int(b.length + 1)), other.subarray(rng.int(other.length + 1))]);
    const at = rng.int(other.length + 1);
    return insert(b, rng.int(b.length + 1), other.subarray(at, at + rng.small(256)));
  },
  // a dictionary token inserted or written over existing bytes
  (rng, b, ctx) => {
    if (ctx.dictionary.length === 0) return b;
    const tok = rng.pick(ctx.dictionary);
    const at = rng.int(b.length + 1);
    if (rng.chance(0.5)) return insert(b, at, tok);
    return Buffer.concat([b.subarray(0, at), tok, b.subarray(Math.min(b.length, at + tok.length))]);
  },
  // a run of decimal digits replaced by an interesting number
  (rng, b) => {
    const runs: Array<[number, number]> = [];
    for (let i = 0; i < b.length; ) {
      if (b[i]! >= 0x30 && b[i]! <= 0x39) {
        let j = i;
        while (j < b.length && b[j]! >= 0x30 && b[j]! <= 0x39) j++;
        runs.push([i, j]);
        i = j;
      } else i++;
    }
    if (runs.length === 0) return b;
    const [s, e] = rng.pick(runs);
    return Buffer.concat([b.subarray(0, s), Buffer.from(rng.pick(INTERESTING_DECIMALS), 'utf8'), b.subarray(e)]);
  },
];

/** One format-blind mutation. */
export function mutateBytes(rng: Prng, input: Buffer, ctx: MutationContext): Buffer {
  const out = rng.pick(mutators)(rng, input, ctx);
  return out.length > MAX_INPUT_BYTES ? out.subarray(0, MAX_INPUT_BYTES) : out;
}

export function insert(b: Buffer, at: number, piece: Uint8Array): Buffer {
  return Buffer.concat([b.subarray(0, at), piece, b.subarray(at)]);
}
