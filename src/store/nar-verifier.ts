/**
 * NarVerifier: a pass-through Transform that counts, hashes (SHA-256) and strictly parses
 * an uncompressed NAR (nar-parser.ts, telling an optional NarHandler), as Nix checks a substituted NAR ("hash mismatch
 * importing path", store-api.cc). Runs on a verify worker (nar-verify-worker.ts).
 *
 * Invariants: it fails the stream as soon as more than NarSize bytes arrive
 * (ERR_NAR_SIZE_MISMATCH) or the grammar breaks (ERR_NAR_*); chunks pass through
 * unchanged and uncopied; `checkSize`, `digest` and `listing` are for after the end.
 */
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { NarfsError, toNarfsError } from '../errors.js';
import { NarParser, type NarHandler } from '../nix/nar-parser.js';
import type { NarNode } from '../nix/nar-listing.js';

export class NarVerifier extends Transform {
  readonly #expected: number;
  readonly #hash = createHash('sha256');
  readonly #parser: NarParser;
  #size = 0;

  /** `handler` is told of every file as the parser meets it (the NAR unpacker). */
  constructor(expectedSize: number, handler?: NarHandler) {
    super();
    this.#expected = expectedSize;
    this.#parser = new NarParser(handler);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#size += chunk.length;
    if (this.#size > this.#expected) {
      cb(new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR is longer than NarSize ${this.#expected}`));
      return;
    }
    try {
      this.#hash.update(chunk);
      this.#parser.write(chunk);
    } catch (err) {
      cb(toNarfsError(err));
      return;
    }
    cb(null, chunk);
  }

  checkSize(): void {
    if (this.#size !== this.#expected) {
      throw new NarfsError('ERR_NAR_SIZE_MISMATCH', `the NAR is ${this.#size} bytes, NarSize is ${this.#expected}`);
    }
  }

  /** The listing; throws if the NAR's grammar is incomplete. */
  listing(): NarNode {
    return this.#parser.end();
  }

  digest(): Buffer {
    return this.#hash.digest();
  }
}
