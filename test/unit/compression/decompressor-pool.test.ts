import assert from 'node:assert/strict';

import { isNarfsError } from '../../../src/errors.js';
import { DecompressorPool, defaultDecompressionConcurrency } from '../../../src/compression/decompressor-pool.js';
import { defaultDecompressorPool, setDecompressionConcurrency } from '../../../src/compression/decompress.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('compression/DecompressorPool', () => {
  it('defaults to twice the cores', () => {
    assert.equal(new DecompressorPool().limit, defaultDecompressionConcurrency());
    assert.ok(defaultDecompressionConcurrency() >= 2);
  });

  it('grants up to the limit, then queues in FIFO order', async () => {
    const pool = new DecompressorPool(2);
    const a = await pool.acquire();
    const b = await pool.acquire();
    const order: string[] = [];
    const c = pool.acquire().then((r) => (order.push('c'), r));
    const d = pool.acquire().then((r) => (order.push('d'), r));
    await tick();
    assert.equal(pool.active, 2);
    assert.equal(pool.waiting, 2);
    a();
    a(); // idempotent
    const rc = await c;
    await tick();
    assert.deepEqual(order, ['c']);
    assert.equal(pool.active, 2);
    b();
    const rd = await d;
    assert.deepEqual(order, ['c', 'd']);
    rc();
    rd();
    assert.equal(pool.active, 0);
  });

  it('honours the abort signal while waiting', async () => {
    const pool = new DecompressorPool(1);
    const held = await pool.acquire();
    const controller = new AbortController();
    const waiting = pool.acquire(controller.signal);
    const after = pool.acquire();
    controller.abort(new Error('caller gone'));
    await assert.rejects(waiting, isCode('ERR_ABORTED'));
    assert.equal(pool.waiting, 1);
    held();
    const r = await after;
    assert.equal(pool.active, 1);
    r();
    await assert.rejects(pool.acquire(AbortSignal.abort()), isCode('ERR_ABORTED'));
    assert.equal(pool.active, 0);
  });

  it('applies a new limit to waiters at once, never revoking slots', async () => {
    const pool = new DecompressorPool(1);
    const a = await pool.acquire();
    const b = pool.acquire();
    pool.setLimit(2);
    const rb = await b;
    pool.setLimit(1);
    assert.equal(pool.active, 2);
    const c = pool.acquire();
    a();
    await tick();
    assert.equal(pool.waiting, 1, 'still over the new limit');
    rb();
    (await c)();
    assert.equal(pool.active, 0);
  });

  it('rejects a limit that is not a positive integer', () => {
    for (const n of [0, -1, 1.5, Number.NaN]) {
      assert.throws(() => new DecompressorPool(n), isCode('ERR_INVALID_ARGUMENT'));
    }
    const before = defaultDecompressorPool.limit;
    assert.throws(() => setDecompressionConcurrency(0), isCode('ERR_INVALID_ARGUMENT'));
    setDecompressionConcurrency(3);
    assert.equal(defaultDecompressorPool.limit, 3);
    setDecompressionConcurrency(before);
  });
});
