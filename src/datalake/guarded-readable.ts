/**
 * GuardedReadable: the stream a datalake's `getStream` hands out. It forwards a source
 * Readable (an HTTP body, a file) chunk by chunk with backpressure, turns every way the
 * source can die into one error of the datalake's choosing, and can be failed from outside
 * (abort, close()).
 *
 * Invariants:
 * - an error never lands on a stream nobody listens to. Callers often await something else
 *   (a temp file, a decompressor) before they attach their pipeline; an 'error' emitted in
 *   between would be unhandled and kill the process. So while no consumer is attached (no
 *   'error', 'data', 'readable' or 'end' listener, never set flowing), a failure is held:
 *   the source is released at once (socket, file descriptor), and the stream errors with the
 *   held error as soon as a consumer attaches (pipeline, for await, pipe, on('data')), on
 *   the next tick, so all of the consumer's listeners are in place. It never ends silently;
 * - the first failure wins; later ones (an error, then the close that follows it) are dropped;
 * - destroying the stream destroys the source at once, even a stalled one;
 * - the source always has an 'error' listener, so it cannot crash the process either.
 */
import { Readable } from 'node:stream';

export interface GuardHooks {
  /** Sees every chunk before it is forwarded (byte counting). */
  onChunk?(chunk: Buffer): void;
  /** At the source's end: an error to fail with instead of ending (short body), or undefined. */
  atEnd?(): Error | undefined;
  /** Maps an error of the source to the stream's error. */
  mapError(e: unknown): Error;
  /** The error for a source that closed without ending or erroring. */
  closedEarly(): Error;
}

/** Listeners by which a consumer takes hold of a Readable. */
const CONSUMER_EVENTS: ReadonlySet<string | symbol> = new Set(['error', 'data', 'readable', 'end']);

export class GuardedReadable extends Readable {
  readonly #source: Readable;
  #ended = false;
  #held: Error | undefined;

  constructor(source: Readable, hooks: GuardHooks, options: { highWaterMark?: number } = {}) {
    super(options.highWaterMark === undefined ? {} : { highWaterMark: options.highWaterMark });
    this.#source = source;
    source.on('data', (chunk: Buffer) => {
      hooks.onChunk?.(chunk);
      if (!this.push(chunk)) source.pause();
    });
    source.once('end', () => {
      this.#ended = true;
      const err = hooks.atEnd?.();
      if (err) this.fail(err);
      else this.push(null);
    });
    source.on('error', (e: unknown) => this.fail(hooks.mapError(e)));
    source.once('close', () => {
      if (!this.#ended) this.fail(hooks.closedEarly());
    });
  }

  /**
   * Ends the stream with `err`: now if a consumer is attached, else when one attaches.
   * The source is released now either way. No-op once destroyed or failed.
   */
  fail(err: Error): void {
    if (this.destroyed || this.#held) return;
    if (this.#consumed()) {
      this.destroy(err);
      return;
    }
    this.#held = err;
    this.#release();
    const onNewListener = (event: string | symbol) => {
      if (!CONSUMER_EVENTS.has(event)) return;
      this.off('newListener', onNewListener);
      // 'newListener' fires before the listener is added, and a consumer adds several.
      process.nextTick(() => this.destroy(err));
    };
    this.on('newListener', onNewListener);
  }

  override _read(): void {
    if (this.#held) {
      // Readable may call _read on its own (read-ahead); only a consumer gets the error.
      if (this.#consumed()) this.destroy(this.#held);
      return;
    }
    this.#source.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#release();
    callback(err);
  }

  #consumed(): boolean {
    if (this.readableFlowing !== null) return true;
    for (const ev of CONSUMER_EVENTS) if (this.listenerCount(ev) > 0) return true;
    return false;
  }

  #release(): void {
    if (!this.#source.destroyed) this.#source.destroy();
  }
}
