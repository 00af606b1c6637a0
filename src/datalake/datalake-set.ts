/**
 * DatalakeSet: several datalakes asked in order, like Nix trying its substituters, with
 * one health record per datalake. Every request to a datalake of the set goes through it
 * (the priority walk `find`/`getBytes`/`getStream`, and the pinned `getBytesFrom`/
 * `getStreamFrom`/`getRangeFrom` for files that must come from one datalake: a NAR, its
 * byte ranges and its `.ls` from the datalake whose narinfo was used), so all of them keep and obey the same health.
 *
 * Invariants:
 * - order = `Priority` of each nix-cache-info (after `?priority=` on the URL), lower
 *   first; ties keep the order the datalakes were given in (the command line). A datalake
 *   that never opened sorts as priority 50 (Nix's default); one that went down keeps the
 *   priority it had;
 * - health: a datalake is marked down by a failure that means it is unreachable or
 *   erroring — ERR_DATALAKE_UNAVAILABLE (connection refused/reset, 5xx or 429 once the
 *   backend's retries are spent), ERR_DATALAKE_TIMEOUT, ERR_DATALAKE_TRUNCATED — whether
 *   the set saw it or a caller reported it (`reportFailure`: a NAR body that died or
 *   stalled mid-stream). Absence (404/403 → `undefined`), a rejected answer (a bad
 *   narinfo), ERR_DATALAKE_HTTP (401, 400: configuration, not health), a bad relPath and
 *   the caller's abort never mark it down;
 * - Nix does a cruder version of this (http-binary-cache-store.cc, maybeDisable and
 *   checkEnabled: with fallback on, a cache that failed is disabled for a fixed 60 s);
 *   narfs probes instead, so a datalake is used again as soon as it answers;
 * - a down datalake is re-probed in the background (its nix-cache-info, `open()`), single
 *   flight, each probe bounded by `probeTimeoutMs`, after capped exponential backoff with
 *   ±25 % jitter (`probeBaseMs` · 2^n, at most `probeMaxMs`, never under 50 ms). Timers are
 *   unref'd and cleared by `close()`; a probe in flight is aborted by it. A probe that
 *   succeeds marks the datalake up (logged with how long it was down) and re-sorts;
 * - while a datalake is down, the walk skips it at once: a lookup that another datalake
 *   answers never waits for it. Only when no datalake that is up had the file does the
 *   walk give the down ones one bounded chance: it starts their probes at once (joining
 *   one in flight) and waits at most `probeWaitMs` (less when one comes up or all fail),
 *   then asks those that came up. A pinned request to a down datalake does the same for that datalake. So when
 *   every datalake is down, a lookup fails within about `probeWaitMs` (plus a refused
 *   connect), never a whole deadline, and a datalake that comes back is used by the very
 *   next request that needs it;
 * - `getBytes`/`getStream`/`find` fall through to the next datalake on absence, failure,
 *   down, and (for `find`) rejection. `undefined` (absent) is returned only when every
 *   datalake answered "absent"; when none had an acceptable file and any datalake failed
 *   or was down, the call throws ERR_DATALAKE_UNAVAILABLE whose cause is the last failure
 *   (all of them in `details.failures`): a failure must never be cached as absence. When
 *   the only failures are rejections, the last rejection is thrown as it is (its code
 *   says what was wrong with the answer). The caller's abort (ERR_ABORTED) and a bad
 *   relPath (ERR_INVALID_ARGUMENT) end the walk at once;
 * - the fail-fast error for a down datalake is ERR_DATALAKE_UNAVAILABLE with
 *   `details.down === true` (see `isDatalakeDown`): the datalake was just given its chance,
 *   so retrying at once is pointless;
 * - `open()` decides at start, waiting at most `probeTimeoutMs` for each datalake:
 *   · a configuration error is fatal — another StoreDir (ERR_CACHE_INFO naming the
 *     datalake), no nix-cache-info over HTTP (ERR_NOT_BINARY_CACHE), an unexpected HTTP
 *     status (ERR_DATALAKE_HTTP) — because it will not heal by waiting; none of these
 *     marks a datalake down later;
 *   · refused credentials (ERR_DATALAKE_AUTH) are fatal when no datalake opened; with
 *     others up, that datalake is kept down and probed, and a probe re-reads its credential
 *     files, so a token provisioned after the start is used without a restart;
 *   · an unreachable datalake is kept, marked down, logged, and probed in the background;
 *   · if no datalake opens, `open()` throws ERR_DATALAKE_UNAVAILABLE with every cause,
 *     unless `allowAllDown` is set (narfs mount: the caches serve what they hold).
 */
import type { Readable } from 'node:stream';
import { NarfsError, isNarfsError, type ErrorCode } from '../errors.js';
import { withDeadline } from '../deadline.js';
import { DEFAULT_PRIORITY, fanOutController, type CacheInfo, type Datalake, type GetOptions } from './datalake.js';
import { openDatalake, type OpenDatalakeOptions } from './open-datalake.js';

/** The part of src/log.ts's Logger this module uses. */
export interface DatalakeSetLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

export interface DatalakeSetOptions {
  /** Where "datalake down/up" and fall-through events go. Default: dropped. */
  logger?: DatalakeSetLogger;
  /** First background re-probe of a down datalake after about this long; doubles per failed probe. Default 1000 ms. */
  probeBaseMs?: number;
  /** Longest pause between two background probes of a down datalake. Default 60000 ms. */
  probeMaxMs?: number;
  /** Deadline of one probe, and of each datalake's open at start. Default 5000 ms. */
  probeTimeoutMs?: number;
  /** How long a request that only a down datalake can answer waits for its probe. Default 1000 ms. */
  probeWaitMs?: number;
  /** Told of every request to a datalake: its display URL, seconds to the answer, success (metrics). */
  onRequest?: (datalake: string, seconds: number, ok: boolean) => void;
  /** @deprecated read as `probeBaseMs` (kept for callers written before background probing). */
  reopenAfterMs?: number;
}

export interface OpenOptions extends GetOptions {
  /** Start even when no datalake answers (they are probed in the background). Default false. */
  allowAllDown?: boolean;
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
  /** The error that put it down (or the last failed probe's). */
  error: NarfsError | undefined;
  /** When it went down (ms since the epoch); undefined while up. */
  downSince: number | undefined;
  /** Failed probes since it went down. */
  failedProbes: number;
}

interface Entry {
  readonly datalake: Datalake;
  readonly index: number;
  cacheInfo: CacheInfo | undefined;
  down: boolean;
  error: NarfsError | undefined;
  downSince: number;
  failedProbes: number;
  timer: NodeJS.Timeout | undefined;
  probing: Promise<boolean> | undefined;
}

interface Failure {
  datalake: Datalake;
  error: NarfsError;
  /** failed: the datalake erred; down: skipped as down; rejected: it answered, the answer was refused. */
  kind: 'failed' | 'down' | 'rejected';
}

/** Configuration errors: they will not heal by waiting, so they stop the start. */
const FATAL_AT_OPEN: ReadonlySet<string> = new Set([
  'ERR_CACHE_INFO', 'ERR_NOT_BINARY_CACHE', 'ERR_DATALAKE_HTTP', 'ERR_DATALAKE_URL', 'ERR_INVALID_ARGUMENT',
]);

/**
 * Refused credentials (or a credential file others may read) at start: the start fails when no datalake opened (fix the keys; do
 * not start offline behind a wrong token), but with others up the refusing one is kept down
 * and re-probed, so a token file provisioned or rotated after the start is picked up (each
 * probe re-reads the credential files) instead of one bad key taking the whole mount down.
 */
const AUTH_AT_OPEN: ReadonlySet<string> = new Set(['ERR_DATALAKE_AUTH', 'ERR_SECRET_PERMISSIONS']);

/** Failures that mean "unreachable or erroring": they mark a datalake down. */
const DOWN_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['ERR_DATALAKE_UNAVAILABLE', 'ERR_DATALAKE_TIMEOUT', 'ERR_DATALAKE_TRUNCATED']);

/** Shortest pause between two background probes, whatever the options say. */
const MIN_PROBE_DELAY_MS = 50;

const silent: DatalakeSetLogger = { info() {}, warn() {} };

/** Whether `err` is the set's fail-fast answer for a datalake known to be down. */
export function isDatalakeDown(err: unknown): boolean {
  return isNarfsError(err, 'ERR_DATALAKE_UNAVAILABLE') && err.details?.down === true;
}

export class DatalakeSet {
  private entries: Entry[];
  private readonly logger: DatalakeSetLogger;
  private readonly probeBaseMs: number;
  private readonly probeMaxMs: number;
  private readonly probeTimeoutMs: number;
  private readonly probeWaitMs: number;
  private readonly onRequest: DatalakeSetOptions['onRequest'];
  /** Aborted by close(): probes in flight stop. */
  private readonly closer = fanOutController();
  private opened = false;
  private closed = false;

  /** `datalakes` in command-line order; nothing is opened yet. */
  constructor(datalakes: readonly Datalake[], options: DatalakeSetOptions = {}) {
    if (datalakes.length === 0) throw new NarfsError('ERR_INVALID_ARGUMENT', 'a DatalakeSet needs at least one datalake');
    this.entries = datalakes.map((datalake, index) => ({
      datalake,
      index,
      cacheInfo: undefined,
      down: true,
      error: undefined,
      downSince: Date.now(),
      failedProbes: 0,
      timer: undefined,
      probing: undefined,
    }));
    this.logger = options.logger ?? silent;
    this.probeBaseMs = Math.max(MIN_PROBE_DELAY_MS, options.probeBaseMs ?? options.reopenAfterMs ?? 1000);
    this.probeMaxMs = Math.max(this.probeBaseMs, options.probeMaxMs ?? 60_000);
    this.probeTimeoutMs = options.probeTimeoutMs ?? 5000;
    this.probeWaitMs = options.probeWaitMs ?? 1000;
    this.onRequest = options.onRequest;
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
      downSince: e.down ? e.downSince : undefined,
      failedProbes: e.failedProbes,
    }));
  }

  /** Opens every datalake concurrently; see the header for what is fatal. */
  async open(options: OpenOptions = {}): Promise<void> {
    const results = await Promise.allSettled(this.entries.map((e) => this.openOne(e, options.signal)));
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
    });
    const first = fatal[0];
    if (first) throw first;
    const anyOpened = results.some((r) => r.status === 'fulfilled');
    const refused = results.flatMap((r, i) => (r.status === 'rejected' ? [asNarfsError(r.reason, this.entries[i]!.datalake)] : []))
      .filter((err) => AUTH_AT_OPEN.has(err.code));
    if (!anyOpened && refused[0]) throw refused[0];
    results.forEach((r, i) => {
      const e = this.entries[i]!;
      if (r.status !== 'rejected') return;
      const err = asNarfsError(r.reason, e.datalake);
      const what = AUTH_AT_OPEN.has(err.code)
        ? 'datalake refused the credentials at start; kept down, re-probed (a fixed token file is picked up)'
        : 'datalake unreachable at start; kept, will retry';
      this.markDown(e, err, what, true);
    });
    this.sort();
    if (this.entries.every((e) => e.down) && !options.allowAllDown) {
      this.stopProbes();
      const causes = this.entries.map((e) => e.error!);
      throw new NarfsError('ERR_DATALAKE_UNAVAILABLE', `none of the ${causes.length} datalake(s) could be opened`, {
        cause: causes.length === 1 ? causes[0] : new AggregateError(causes, 'every datalake failed to open'),
        details: { failures: causes.map((c, i) => ({ datalake: this.entries[i]!.datalake.displayUrl, code: c.code, message: c.message })) },
      });
    }
    this.opened = true;
  }

  /** Whether any datalake is up now. */
  anyUp(): boolean {
    return this.entries.some((e) => !e.down);
  }

  getBytes(relPath: string, options: GetOptions = {}): Promise<Found<Buffer> | undefined> {
    return this.walk(relPath, options, (d) => d.getBytes(relPath, options), (bytes) => bytes);
  }

  getStream(relPath: string, options: GetOptions = {}): Promise<Found<Readable> | undefined> {
    return this.walk(relPath, options, (d) => d.getStream(relPath, options), (stream) => stream);
  }

  /**
   * The first datalake's file (in order) that `accept` takes. `accept` throws to refuse a
   * file (a bad narinfo): the walk goes on to the next datalake; the refusal does not
   * count against the datalake's health.
   */
  find<T>(
    relPath: string,
    accept: (bytes: Buffer, datalake: Datalake) => T | Promise<T>,
    options: GetOptions = {},
  ): Promise<Found<T> | undefined> {
    return this.walk(relPath, options, (d) => d.getBytes(relPath, options), accept);
  }

  /** From one datalake of the set only (the NAR from where its narinfo came). */
  getBytesFrom(datalake: Datalake, relPath: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    return this.pinned(this.member(datalake), options, (d) => d.getBytes(relPath, options));
  }

  /** Streaming twin of getBytesFrom. */
  getStreamFrom(datalake: Datalake, relPath: string, options: GetOptions = {}): Promise<Readable | undefined> {
    return this.pinned(this.member(datalake), options, (d) => d.getStream(relPath, options));
  }

  /**
   * Ranged twin of getBytesFrom (Datalake.getRange): the same health accounting. A backend
   * without ranged reads is ERR_RANGE_UNSUPPORTED at once (no request, no health change).
   */
  getRangeFrom(datalake: Datalake, relPath: string, offset: number, length: number, options: GetOptions = {}): Promise<Buffer | undefined> {
    const e = this.member(datalake);
    if (typeof datalake.getRange !== 'function') {
      return Promise.reject(new NarfsError('ERR_RANGE_UNSUPPORTED', `datalake ${datalake.displayUrl} cannot read byte ranges`, {
        details: { datalake: datalake.displayUrl, relPath },
      }));
    }
    return this.pinned(e, options, (d) => d.getRange!(relPath, offset, length, options));
  }

  /**
   * A failure seen outside the set (a NAR stream that died or stalled mid-body): marks
   * `datalake` down if the failure means it is unreachable or erroring (see the header).
   */
  reportFailure(datalake: Datalake, err: unknown): void {
    const e = this.entries.find((x) => x.datalake === datalake);
    if (e) this.noteFailure(e, asNarfsError(err, datalake), undefined);
  }

  /** Stops probing and closes every datalake; never throws. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopProbes();
    this.closer.abort(new NarfsError('ERR_ABORTED', 'the datalakes are closing'));
    await Promise.allSettled(this.entries.map((e) => e.datalake.close()));
  }

  // --- internals

  private async walk<R, T>(
    relPath: string,
    options: GetOptions,
    get: (d: Datalake) => Promise<R | undefined>,
    accept: (value: R, datalake: Datalake) => T | Promise<T>,
  ): Promise<Found<T> | undefined> {
    if (!this.opened) throw new NarfsError('ERR_INTERNAL', 'DatalakeSet used before open()');
    const failures: Failure[] = [];
    const ask = async (e: Entry): Promise<Found<T> | undefined> => {
      this.checkAborted(relPath, options);
      let value: R | undefined;
      try {
        value = await this.call(e, options, get);
      } catch (err) {
        const error = asNarfsError(err, e.datalake);
        if (error.code === 'ERR_INVALID_ARGUMENT' || error.code === 'ERR_ABORTED') throw error;
        failures.push({ datalake: e.datalake, error, kind: isDatalakeDown(error) ? 'down' : 'failed' });
        if (!isDatalakeDown(error)) {
          this.logger.warn('datalake failed; trying the next one', { datalake: e.datalake.displayUrl, path: relPath, err: error });
        }
        return undefined;
      }
      if (value === undefined) return undefined;
      try {
        return { datalake: e.datalake, value: await accept(value, e.datalake) };
      } catch (err) {
        const error = asNarfsError(err, e.datalake);
        if (error.code === 'ERR_ABORTED') throw error;
        failures.push({ datalake: e.datalake, error, kind: 'rejected' });
        return undefined;
      }
    };
    const skipped: Entry[] = [];
    for (const e of [...this.entries]) {
      if (e.down) {
        skipped.push(e);
        continue;
      }
      const found = await ask(e);
      if (found) return found;
    }
    if (skipped.length > 0) {
      // No datalake that is up had it: the down ones get one bounded chance.
      await this.probeAndWait(skipped, options.signal);
      for (const e of this.entries.filter((x) => skipped.includes(x))) {
        const found = await ask(e);
        if (found) return found;
      }
    }
    const last = failures[failures.length - 1];
    if (!last) return undefined;
    if (failures.every((f) => f.kind === 'rejected')) throw last.error;
    const everyDown = failures.length === this.entries.length && failures.every((f) => f.kind === 'down');
    throw new NarfsError(
      'ERR_DATALAKE_UNAVAILABLE',
      everyDown
        ? `${relPath}: every datalake is down (${this.entries.length}); only what the cache holds is served`
        : `${relPath}: not found in the datalakes that answered, and ${failures.filter((f) => f.kind !== 'rejected').length} of ${this.entries.length} failed or are down`,
      {
        cause: last.error,
        details: {
          relPath,
          failures: failures.map((f) => ({ datalake: f.datalake.displayUrl, code: f.error.code, kind: f.kind, message: f.error.message })),
        },
        ...(everyDown ? { hint: 'The datalakes are probed in the background; a path is served again as soon as one answers.' } : {}),
      },
    );
  }

  /** One request to a datalake that must answer it (no fall-through). */
  private async pinned<T>(e: Entry, options: GetOptions, get: (d: Datalake) => Promise<T>): Promise<T> {
    if (e.down) await this.probeAndWait([e], options.signal);
    return this.call(e, options, get);
  }

  /** One request, with the health accounting: fails fast while `e` is down. */
  private async call<T>(e: Entry, options: GetOptions, get: (d: Datalake) => Promise<T>): Promise<T> {
    if (e.down) throw downError(e);
    const t0 = performance.now();
    try {
      const r = await get(e.datalake);
      this.onRequest?.(e.datalake.displayUrl, (performance.now() - t0) / 1000, true);
      return r;
    } catch (err) {
      this.onRequest?.(e.datalake.displayUrl, (performance.now() - t0) / 1000, false);
      const error = asNarfsError(err, e.datalake);
      this.noteFailure(e, error, options.signal);
      throw error;
    }
  }

  private noteFailure(e: Entry, error: NarfsError, signal: AbortSignal | undefined): void {
    if (this.closed || signal?.aborted || !DOWN_CODES.has(error.code) || isDatalakeDown(error)) return;
    this.markDown(e, error, 'datalake failed; marked down, skipped until a probe answers');
  }

  /** Marks `e` down (logged once per outage) and arms its probe; `atStart`: it never was up. */
  private markDown(e: Entry, error: NarfsError, msg: string, atStart = false): void {
    e.error = error;
    if (e.down && !atStart) return;
    e.down = true;
    e.downSince = Date.now();
    e.failedProbes = 0;
    this.logger.warn(msg, { datalake: e.datalake.displayUrl, err: error });
    this.schedule(e);
  }

  /** Arms the background probe of a down datalake (capped exponential backoff, jitter). */
  private schedule(e: Entry): void {
    if (this.closed || !e.down || e.timer || e.probing) return;
    const backoff = Math.min(this.probeMaxMs, this.probeBaseMs * 2 ** Math.min(e.failedProbes, 30));
    const delay = Math.max(MIN_PROBE_DELAY_MS, Math.round(backoff * (0.75 + Math.random() * 0.5)));
    e.timer = setTimeout(() => {
      e.timer = undefined;
      void this.probe(e);
    }, delay);
    e.timer.unref();
  }

  /** Probes a down datalake (single flight); resolves true when it is up again. Never rejects. */
  private probe(e: Entry): Promise<boolean> {
    if (!e.down) return Promise.resolve(true);
    if (e.probing) return e.probing;
    if (this.closed) return Promise.resolve(false);
    if (e.timer) {
      clearTimeout(e.timer);
      e.timer = undefined;
    }
    e.probing = this.openOne(e, undefined)
      .then((info) => {
        if (this.closed) return false;
        e.cacheInfo = info;
        e.down = false;
        e.error = undefined;
        this.logger.info('datalake is up again', {
          datalake: e.datalake.displayUrl, priority: info.priority, downMs: Date.now() - e.downSince, failedProbes: e.failedProbes,
        });
        e.failedProbes = 0;
        this.sort();
        return true;
      }, (err: unknown) => {
        if (this.closed) return false;
        e.error = asNarfsError(err, e.datalake);
        e.failedProbes++;
        // Logged at 1, 2, 4, 8… failed probes: the log says it is still down without flooding.
        if ((e.failedProbes & (e.failedProbes - 1)) === 0) {
          this.logger.warn('datalake still down', { datalake: e.datalake.displayUrl, failedProbes: e.failedProbes, err: e.error });
        }
        return false;
      })
      .finally(() => {
        e.probing = undefined;
        this.schedule(e);
      });
    return e.probing;
  }

  /**
   * Starts (or joins) the probes of `entries` and waits until one of them has brought its
   * datalake up, or all have failed, or `probeWaitMs` has passed, or the caller's signal
   * aborts (ERR_ABORTED).
   */
  private async probeAndWait(entries: Entry[], signal: AbortSignal | undefined): Promise<void> {
    const probes = entries.filter((e) => e.down).map((e) => this.probe(e));
    if (probes.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      await Promise.race([
        Promise.all(probes),
        new Promise<void>((resolve) => {
          for (const p of probes) void p.then((up) => up && resolve());
        }),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, this.probeWaitMs);
          timer.unref();
        }),
        new Promise<never>((_, reject) => {
          if (!signal) return;
          onAbort = () => reject(new NarfsError('ERR_ABORTED', 'waiting for a datalake probe was aborted', { cause: signal.reason }));
          if (signal.aborted) onAbort();
          else signal.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (signal && onAbort) signal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * `open()` of one datalake within `probeTimeoutMs`: ERR_DATALAKE_TIMEOUT when it does
   * not answer in time, ERR_ABORTED when the caller's signal or close() ends it.
   */
  private openOne(e: Entry, signal: AbortSignal | undefined): Promise<CacheInfo> {
    const outer = signal ? AbortSignal.any([signal, this.closer.signal]) : this.closer.signal;
    return withDeadline(this.probeTimeoutMs, (s) => e.datalake.open({ signal: s }), {
      code: 'ERR_DATALAKE_TIMEOUT',
      what: `opening datalake ${e.datalake.displayUrl}`,
      signal: outer,
    });
  }

  private stopProbes(): void {
    for (const e of this.entries) {
      if (e.timer) clearTimeout(e.timer);
      e.timer = undefined;
    }
  }

  private checkAborted(relPath: string, options: GetOptions): void {
    if (options.signal?.aborted) {
      throw new NarfsError('ERR_ABORTED', `lookup of ${relPath} was aborted`, { cause: options.signal.reason });
    }
  }

  private sort(): void {
    const prio = (e: Entry) => e.cacheInfo?.priority ?? DEFAULT_PRIORITY;
    this.entries = [...this.entries].sort((a, b) => prio(a) - prio(b) || a.index - b.index);
  }

  private member(datalake: Datalake): Entry {
    const e = this.entries.find((x) => x.datalake === datalake);
    if (!e) throw new NarfsError('ERR_INVALID_ARGUMENT', `${datalake.displayUrl} is not a datalake of this set`);
    return e;
  }
}

function downError(e: Entry): NarfsError {
  return new NarfsError('ERR_DATALAKE_UNAVAILABLE', `datalake ${e.datalake.displayUrl} is down (since ${new Date(e.downSince).toISOString()})`, {
    cause: e.error,
    details: { datalake: e.datalake.displayUrl, down: true },
  });
}

function asNarfsError(e: unknown, d: Datalake): NarfsError {
  if (isNarfsError(e)) return e;
  return new NarfsError('ERR_DATALAKE_UNAVAILABLE', `datalake ${d.displayUrl} failed`, { cause: e });
}
