/**
 * Seeded PRNG of the fuzzer: sfc32 (Chris Doty-Humphrey's Small Fast Counting generator,
 * 128-bit state) seeded through splitmix32.
 *
 * Invariant: the generator of input `index` of parser `target` depends only on
 * (seed, target, index) — `Prng.forInput` — so any single input can be regenerated from
 * the seed and index a failure report prints, without replaying the inputs before it.
 */

export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      // splitmix32
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      return (z ^ (z >>> 15)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.u32();
  }

  /** The generator of one input: a function of (seed, target, index) only. */
  static forInput(seed: number, target: string, index: number): Prng {
    let h = 0x811c9dc5; // FNV-1a of the target name
    for (let i = 0; i < target.length; i++) h = Math.imul(h ^ target.charCodeAt(i), 0x01000193);
    const mixed = new Prng((seed ^ h) >>> 0);
    // Fold the index in through a second generator so nearby indices are unrelated.
    return new Prng((mixed.u32() ^ Math.imul(index >>> 0, 0x9e3779b1) ^ Math.floor(index / 0x100000000)) >>> 0);
  }

  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, n) for 0 < n ≤ 2^32. */
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }

  /** Uniform in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('Prng.pick of an empty list');
    return items[this.int(items.length)]!;
  }

  /** Small numbers much more often than large ones: 1 + floor of a log-uniform in [0, max). */
  small(max: number): number {
    return Math.min(max, Math.floor(Math.exp(this.u32() / 0x100000000 * Math.log(max + 1))));
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}
