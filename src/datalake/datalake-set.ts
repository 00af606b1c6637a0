/**
 * DatalakeSet: several datalakes asked in order, like Nix trying its substituters.
 *
 * Invariants:
 * - order = `Priority` of each nix-cache-info (after `?priority=` on the URL), lower
 *   first; ties keep the order the datalakes were given in (the command line);
 * - `getBytes`/`getStream` fall through to the next datalake on absence AND on failure.
 *   `undefined` (absent) is returned only when every datalake answered "absent"; when none
 *   had the file and at least one failed, the call throws ERR_DATALAKE_UNAVAILABLE whose
 *   cause is the last failure (all of them in `details.failures`): a failure must never be
 *   cached as absence. The caller's abort (ERR_ABORTED) and a bad relPath
 *   (ERR_INVALID_ARGUMENT) end the walk at once;
 * - `open()` decides at start:
 *   · a configuration error is fatal — another StoreDir (ERR_CACHE_INFO naming the
 *     datalake), no nix-cache-info over HTTP (ERR_NOT_BINARY_CACHE), an unexpected HTTP
 *     status such as 401 (ERR_DATALAKE_HTTP) — because it will not heal by waiting;
 *   · an unreachable datalake (ERR_DATALAKE_UNAVAILABLE/TIMEOUT/TRUNCATED) is kept but
 *     marked down and logged; it sorts as priority 50 (Nix's default) until it answers.
 *     A request that reaches a down datalake first re-opens it (single flight, at most
 *     once per `reopenAfterMs`); until that succeeds the datalake counts as failed, so
 *     absence is not concluded while it is down;
 *   · if no datalake opens, `open()` throws ERR_DATALAKE_UNAVAILABLE with every cause.
 */
import type { Readable } from 'node:stream';
import { NarfsError, isNarfsError } from '../errors.js';
import { raceSignal } from '../deadline.js';
import { DEFAULT_PRIORITY, type CacheInfo, type Datalake, type GetOptions } from './datalake.js';
import { openDatalake, type OpenDatalakeOptions } from './open-datalake.js';

/** The part of src/log.ts's Logger this module uses. */
export interface DatalakeSetLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

export interface DatalakeSetOptions {
  /** Where "datalake down/up" and fall-through events go. Default: dropped. */
  logger?: DatalakeSetLogger;
  /** Least time between two re-open attempts of a down datalake. Default 30000 ms. */
  reopenAfterMs?: number;
}

/** What a lookup found, and which datalake it came from (fetch its NAR there). */
export interface Found<T> {
  datalake: Datalake;
  value: T;
}

export interface DatalakeStatus {
  displayUrl: string;
  up: boolean;
  /** From nix-cache-info; undefined while the datalake has never opened. */
  cacheInfo: CacheInfo | undefined;
  /** The error that put it down. */
  error: NarfsError | undefined;
}

interface Entry {
  readonly datalake: Datalake;
  readonly index: number;
  cacheInfo: CacheInfo | undefined;
  down: boolean;
  error: NarfsError | undefined;
  nextReopenAt: number;
  reopening: Promise<void> | undefined;
}

const FATAL_AT_OPEN = new Set(['ERR_CACHE_INFO', 'ERR_NOT_BINARY_CACHE', 'ERR_DATALAKE_HTTP', 'ERR_DATALAKE_URL', 'ERR_INVALID_ARGUMENT']);

const silent: DatalakeSetLogger = { info() {}, warn() {} };

export class DatalakeSet {
  private entries: Entry[];
  private readonly logger: DatalakeSetLogger;
  private readonly reopenAfterMs: number;
  private opened = false;

  /** `datalakes` in command-line order; nothing is opened yet. */
  constructor(datalakes: readonly Datalake[], options: DatalakeSetOptions = {}) {
    if (datalakes.length === 0) throw new NarfsError('ERR_INVALID_ARGUMENT', 'a DatalakeSet needs at least one datalake');
    this.entries = datalakes.map((datalake, index) => ({
      datalake,
      index,
      cacheInfo: undefined,
      down: true,
      error: undefined,
      nextReopenAt: 0,
      reopening: undefined,
    }));
    this.logger = options.logger ?? silent;
    this.reopenAfterMs = options.reopenAfterMs ?? 30_000;
  }

  /** Builds the backends for `urls` (see openDatalake); nothing is opened yet. */
  static fromUrls(urls: readonly string[], options: DatalakeSetOptions & OpenDatalakeOptions = {}): DatalakeSet {
    return new DatalakeSet(
      urls.map((u) => openDatalake(u, options)),
      options,
    );
  }

  /** The datalakes in the order they are asked. */
  get datalakes(): Datalake[] {
    return this.entries.map((e) => e.datalake);
  }

  status(): DatalakeStatus[] {
    return this.entries.map((e) => ({
      displayUrl: e.datalake.displayUrl,
      up: !e.down,
      cacheInfo: e.cacheInfo,
      error: e.error,
    }));
  }

  /** Opens every datalake concurrently; see the header for what is fatal. */
  async open(options: GetOptions = {}): Promise<void> {
    const results = await Promise.allSettled(this.entries.map((e) => e.datalake.open(options)));
    const fatal: NarfsError[] = [];
    results.forEach((r, i) => {
      const e = this.entries[i]!;
      if (r.status === 'fulfilled') {
        e.cacheInfo = r.value;
        e.down = false;
        e.error = undefined;
        return;
      }
      const err = asNarfsError(r.reason, e.datalake);
      if (err.code === 'ERR_ABORTED' || FATAL_AT_OPEN.has(err.code)) fatal.push(err);
      else this.markDown(e, err, 'datalake unreachable at start; kept, will retry');
    });
    const first = fatal[0];
    if (first) throw first;
    this.sort();
    if (this.entries.every((e) => e.down)) {
      const causes = this.entries.map((e) => e.error!);
      throw new NarfsError('ERR_DATALAKE_UNAVAILABLE', `none of the ${causes.length} datalake(s) could be opened`, {
        cause: causes.length === 1 ? causes[0] : new AggregateError(causes, 'every datalake failed to open'),
        details: { failures: causes.map((c, i) => ({ datalake: this.entries[i]!.datalake.displayUrl, code: c.code, message: c.message })) },
      });
    }
    this.opened = true;
  }

  getBytes(relPath: string, options: GetOptions = {}): Promise<Found<Buffer> | undefined> {
    return this.walk(relPath, options, (d) => d.getBytes(relPath, options));
  }

  getStream(relPath: string, options: GetOptions = {}): Promise<Found<Readable> | undefined> {
    return this.walk(relPath, options, (d) => d.getStream(relPath, options));
  }

  /** From one datalake of the set only (the NAR from where its narinfo came). */
  getBytesFrom(datalake: Datalake, relPath: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    return this.member(datalake).getBytes(relPath, options);
  }

  /** Streaming twin of getBytesFrom. */
  getStreamFrom(datalake: Datalake, relPath: string, options: GetOptions = {}): Promise<Readable | undefined> {
    return this.member(datalake).getStream(relPath, options);
  }

  /** Closes every datalake; never throws. */
  async close(): Promise<void> {
    await Promise.allSettled(this.entries.map((e) => e.datalake.close()));
  }

  // --- internals

  private async walk<T>(
    relPath: string,
    options: GetOptions,
    get: (d: Datalake) => Promise<T | undefined>,
  ): Promise<Found<T> | undefined> {
    if (!this.opened) throw new NarfsError('ERR_INTERNAL', 'DatalakeSet used before open()');
    const failures: Array<{ datalake: Datalake; error: NarfsError }> = [];
    for (const e of [...this.entries]) {
      if (options.signal?.aborted) {
        throw new NarfsError('ERR_ABORTED', `lookup of ${relPath} was aborted`, { cause: options.signal.reason });
      }
      try {
        if (e.down) await this.reopen(e, options);
        const value = await get(e.datalake);
        if (value !== undefined) return { datalake: e.datalake, value };
      } catch (err) {
        const error = asNarfsError(err, e.datalake);
        if (error.code === 'ERR_INVALID_ARGUMENT') throw error;
        if (error.code === 'ERR_ABORTED') throw error;
        failures.push({ datalake: e.datalake, error });
        this.logger.warn('datalake failed; trying the next one', { datalake: e.datalake.displayUrl, path: relPath, err: error });
      }
    }
    const last = failures[failures.length - 1];
    if (!last) return undefined;
    throw new NarfsError(
      'ERR_DATALAKE_UNAVAILABLE',
      `${relPath}: not found in the datalakes that answered, and ${failures.length} of ${this.entries.length} failed`,
      {
        cause: last.error,
        details: {
          relPath,
          failures: failures.map((f) => ({ datalake: f.datalake.displayUrl, code: f.error.code, message: f.error.message })),
        },
      },
    );
  }

  /**
   * Re-opens a down datalake (single flight, rate-limited); throws while it stays down.
   * The re-open itself is bounded by the datalake's own deadlines, not by one caller's
   * signal (others may wait on it too); each caller stops waiting when its signal aborts.
   */
  private async reopen(e: Entry, options: GetOptions): Promise<void> {
    if (!e.reopening) {
      if (Date.now() < e.nextReopenAt) {
        throw new NarfsError('ERR_DATALAKE_UNAVAILABLE', `datalake ${e.datalake.displayUrl} is down`, { cause: e.error });
      }
      e.reopening = e.datalake
        .open()
        .then((info) => {
          e.cacheInfo = info;
          e.down = false;
          e.error = undefined;
          this.logger.info('datalake is up again', { datalake: e.datalake.displayUrl, priority: info.priority });
          this.sort();
        })
        .catch((err: unknown) => {
          const error = asNarfsError(err, e.datalake);
          this.markDown(e, error, 'datalake still down');
          throw error;
        })
        .finally(() => {
          e.reopening = undefined;
        });
    }
    await raceSignal(e.reopening, options.signal);
  }

  private markDown(e: Entry, error: NarfsError, msg: string): void {
    e.down = true;
    e.error = error;
    e.nextReopenAt = Date.now() + this.reopenAfterMs;
    this.logger.warn(msg, { datalake: e.datalake.displayUrl, err: error });
  }

  private sort(): void {
    const prio = (e: Entry) => e.cacheInfo?.priority ?? DEFAULT_PRIORITY;
    this.entries = [...this.entries].sort((a, b) => prio(a) - prio(b) || a.index - b.index);
  }

  private member(datalake: Datalake): Datalake {
    if (!this.entries.some((e) => e.datalake === datalake)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `${datalake.displayUrl} is not a datalake of this set`);
    }
    return datalake;
  }
}

/** `promise`, or ERR_ABORTED as soon as `signal` aborts (the promise goes on). */

function asNarfsError(e: unknown, d: Datalake): NarfsError {
  if (isNarfsError(e)) return e;
  return new NarfsError('ERR_DATALAKE_UNAVAILABLE', `datalake ${d.displayUrl} failed`, { cause: e });
}
