/**
 * HeldBytes: the memory that kept byte views hold, for a bound on it (lazy-store.ts: the
 * stage, chunk writes under way, files kept along).
 *
 * Invariant: a view of a sealed buffer (sealed-buffers.ts: decoded frames, or a ranged body
 * verified on a worker) keeps that whole buffer alive, so it counts the buffer's whole
 * length, once however many of its views are held; any other view is a copy of its own and
 * counts its length. `remove` takes exactly a view that `add` took. So a 100-byte file kept
 * as a view into an 8 MiB body counts 8 MiB until the last view of that body goes.
 */
import { isSealed } from './sealed-buffers.js';

export class HeldBytes {
  #total = 0;
  readonly #views = new Map<ArrayBufferLike, number>();

  /** Bytes held now. */
  get total(): number {
    return this.#total;
  }

  add(bytes: Uint8Array): void {
    const buf = bytes.buffer;
    if (!isSealed(buf)) {
      this.#total += bytes.length;
      return;
    }
    const n = this.#views.get(buf) ?? 0;
    if (n === 0) this.#total += buf.byteLength;
    this.#views.set(buf, n + 1);
  }

  remove(bytes: Uint8Array): void {
    const buf = bytes.buffer;
    if (!isSealed(buf)) {
      this.#total -= bytes.length;
      return;
    }
    const n = this.#views.get(buf);
    if (n === undefined) return;
    if (n > 1) {
      this.#views.set(buf, n - 1);
      return;
    }
    this.#views.delete(buf);
    this.#total -= buf.byteLength;
  }
}
