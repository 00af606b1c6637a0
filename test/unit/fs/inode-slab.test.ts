/**
 * InodeSlab against a Map model: random allocs and frees (numbers sequential, sparse and
 * near 2^53), every field checked after every step, including across growth and the
 * compaction that moves slots; a freed number is unknown whatever reused its slot.
 */
import assert from 'node:assert/strict';

import { InodeSlab } from '../../../src/fs/inode-slab.js';

interface Rec { root: number; idx: number; nlookup: number; handles: number; pinned: boolean }

/** xorshift32: a fixed sequence, so a failure replays. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

function check(slab: InodeSlab, model: Map<number, Rec>, gone: number[]): void {
  assert.equal(slab.size, model.size);
  for (const [ino, r] of model) {
    const s = slab.slotOf(ino);
    assert.ok(s > 0, `inode ${ino} lost`);
    assert.equal(slab.ino(s), ino);
    assert.deepEqual(
      { root: slab.root(s), idx: slab.idx(s), nlookup: slab.nlookup(s), handles: slab.handles(s), pinned: slab.pinned(s) },
      r,
      `fields of inode ${ino}`,
    );
  }
  for (const ino of gone) assert.equal(slab.slotOf(ino), -1, `freed inode ${ino} must be unknown`);
}

describe('InodeSlab', () => {
  for (const [what, numbers] of [
    ['sequential numbers', (i: number) => i + 2],
    ['sparse numbers up to 2^53', (i: number) => (i % 3 === 0 ? 2 ** 53 - 1 - i : i * 4096 + 7)],
  ] as const) {
    it(`keeps every inode and forgets freed ones (${what})`, () => {
      const rnd = prng(12345);
      const slab = new InodeSlab();
      const model = new Map<number, Rec>();
      const gone: number[] = [];
      let next = 0;
      for (let step = 0; step < 30_000; step++) {
        // Grow to ~5000 live, then shrink to almost nothing, then grow again: compaction runs.
        const phase = Math.floor(step / 10_000) % 2;
        const pAlloc = phase === 0 ? 0.7 : 0.25;
        if (model.size === 0 || rnd() < pAlloc) {
          const ino = numbers(next++);
          const r: Rec = { root: Math.floor(rnd() * 50), idx: Math.floor(rnd() * 1e6), nlookup: 0, handles: 0, pinned: rnd() < 0.05 };
          const s = slab.alloc(ino, r.root, r.idx, r.pinned);
          if (rnd() < 0.5) { r.nlookup = Math.floor(rnd() * 2 ** 40); slab.setNlookup(s, r.nlookup); }
          if (rnd() < 0.3) { r.handles = Math.floor(rnd() * 9); slab.setHandles(s, r.handles); }
          model.set(ino, r);
        } else {
          const keys = [...model.keys()];
          const ino = keys[Math.floor(rnd() * keys.length)]!;
          assert.equal(slab.free(ino), true);
          assert.equal(slab.free(ino), false, 'a second free finds nothing');
          model.delete(ino);
          gone.push(ino);
        }
        if (step % 997 === 0) check(slab, model, gone.slice(-2000));
      }
      check(slab, model, gone);
    });
  }

  it('a number freed and its slot reused by another inode is unknown, not the other inode', () => {
    const slab = new InodeSlab();
    const a = slab.alloc(10, 1, 5, false);
    slab.free(10);
    const b = slab.alloc(11, 1, 6, false);
    assert.equal(b, a, 'the slot is reused');
    assert.equal(slab.slotOf(10), -1);
    assert.equal(slab.idx(slab.slotOf(11)), 6);
    assert.throws(() => slab.alloc(11, 1, 7, false), /already/);
  });

  it('gives its arrays back when most inodes go (capacity follows the live count)', () => {
    const slab = new InodeSlab();
    const idle = slab.bytes;
    for (let i = 1; i <= 100_000; i++) slab.alloc(i + 1, 0, i, false);
    assert.ok(slab.bytes > 50 * idle, `grew to ${slab.bytes} bytes`);
    for (let i = 1; i <= 100_000; i++) if (i % 1000 !== 0) slab.free(i + 1);
    assert.equal(slab.size, 100);
    assert.equal(slab.bytes, idle, 'back to the smallest table');
    for (let i = 1000; i <= 100_000; i += 1000) assert.equal(slab.idx(slab.slotOf(i + 1)), i);
  });
});
