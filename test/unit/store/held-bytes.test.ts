/**
 * HeldBytes (src/store/held-bytes.ts): a view of a sealed buffer counts the whole buffer,
 * once however many of its views are held, until the last goes; anything else counts its
 * own length.
 */
import assert from 'node:assert/strict';
import { HeldBytes } from '../../../src/store/held-bytes.js';
import { seal } from '../../../src/store/sealed-buffers.js';

describe('HeldBytes (the memory kept views hold)', function () {
  it('counts a sealed body once, whole, while any view of it is held; copies by their length', function () {
    const body = Buffer.allocUnsafeSlow(8 << 20);
    seal(body.buffer);
    const small = body.subarray(100, 200);
    const other = body.subarray(5000, 5100);
    const copy = Buffer.from(body.subarray(0, 300));
    const h = new HeldBytes();
    h.add(small);
    assert.equal(h.total, 8 << 20, 'a 100-byte view holds the whole 8 MiB body');
    h.add(other);
    h.add(copy);
    assert.equal(h.total, (8 << 20) + 300, 'the body is counted once; a copy counts itself');
    h.remove(small);
    assert.equal(h.total, (8 << 20) + 300, 'still held by its other view');
    h.remove(other);
    assert.equal(h.total, 300);
    h.remove(copy);
    assert.equal(h.total, 0);
    h.remove(small);
    assert.equal(h.total, 0, 'removing a view not held changes nothing');
  });
});
