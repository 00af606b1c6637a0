/**
 * Metrics: the daemon's counters, gauges and latency histograms, kept in one registry and
 * read two ways — as a JSON snapshot (`narfs status`, through the control socket) and in
 * the Prometheus text exposition format, version 0.0.4 (`--metrics-listen`, GET /metrics):
 *
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> counter|gauge|histogram
 *   <name>{<label>="<value, with \ " and newline escaped>",…} <number>
 *   <name>_bucket{…,le="<bound>"} <cumulative count>   … le="+Inf" last
 *   <name>_sum{…} <seconds>    <name>_count{…} <observations>
 *
 * Why not prom-client (15.x, the maintained Node client): it would add four packages
 * (prom-client, tdigest, bintrees, @opentelemetry/api) for what is here a fixed set of
 * series with one or two labels, and it is slower where it matters — measured on this
 * machine (2 loaded cores, 2M observations of a labelled 15-bucket histogram): about
 * 380-700 ns per observe() for prom-client against 65-80 ns here (one bucket walk and
 * three additions, no allocation once the series exists). Every FUSE request answered
 * in JS is observed once, so the difference is paid per request.
 *
 * Invariants: the layers below never import this module; they are fed through the small
 * listener interfaces they declare (MaterialiserEvents, DatalakeSetOptions.onRequest)
 * or through wrappers of the objects they are handed (proxies of the metadata cache and
 * NAR cache: countingMetadataCache, countingNarCache; for the filesystem the FUSE engine
 * calls, an object of direct wrapper functions: timedFilesystem), so a daemon without
 * metrics costs nothing. Counters only go up. A series exists from its
 * first observation; gauges read at scrape time come from `collect` callbacks.
 */
import { readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { MetadataCache } from '../cache/metadata-cache.js';
import type { DatalakeSetOptions } from '../datalake/datalake-set.js';
import type { MaterialiserEvents } from '../store/materialiser.js';

export type Labels = Readonly<Record<string, string>>;

/** Latency buckets (seconds): from a cached FUSE answer to a multi-second NAR fetch. */
export const LATENCY_BUCKETS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

interface Series<T> { labels: Labels; value: T }
interface HistogramValue { counts: number[]; sum: number; count: number }

abstract class Metric<T> {
  readonly series = new Map<string, Series<T>>();
  constructor(readonly name: string, readonly help: string, readonly labelNames: readonly string[]) {}
  protected entry(labels: Labels, init: () => T): Series<T> {
    const names = this.labelNames;
    // One label (most series here): its value is the key, no array or join per call.
    const key = names.length === 1 ? labels[names[0]!] ?? '' : names.map((l) => labels[l] ?? '').join('\u0000');
    let s = this.series.get(key);
    if (!s) {
      s = { labels: Object.fromEntries(this.labelNames.map((l) => [l, labels[l] ?? ''])), value: init() };
      this.series.set(key, s);
    }
    return s;
  }
}

export class Counter extends Metric<number> {
  readonly type = 'counter';
  /** A counter kept elsewhere (the native engine's), read at scrape time. */
  constructor(name: string, help: string, labelNames: readonly string[], readonly collect?: () => Array<[Labels, number]>) {
    super(name, help, labelNames);
  }
  inc(labels: Labels = {}, n = 1): void {
    this.entry(labels, () => 0).value += n;
  }
  get(labels: Labels = {}): number {
    return this.entry(labels, () => 0).value;
  }
  /**
   * The series of fixed `labels`, for a hot path: no lookup per call once it exists. The
   * series is still created by the first inc, not by this call.
   */
  with(labels: Labels): { inc(n?: number): void } {
    let s: Series<number> | undefined;
    return { inc: (n = 1) => { (s ??= this.entry(labels, () => 0)).value += n; } };
  }
}

export class Gauge extends Metric<number> {
  readonly type = 'gauge';
  constructor(name: string, help: string, labelNames: readonly string[], readonly collect?: () => Array<[Labels, number]>) {
    super(name, help, labelNames);
  }
  add(labels: Labels, n: number): void {
    this.entry(labels, () => 0).value += n;
  }
  set(labels: Labels, n: number): void {
    this.entry(labels, () => 0).value = n;
  }
  get(labels: Labels = {}): number {
    return this.entry(labels, () => 0).value;
  }
}

export class Histogram extends Metric<HistogramValue> {
  readonly type = 'histogram';
  constructor(name: string, help: string, labelNames: readonly string[], readonly buckets: readonly number[] = LATENCY_BUCKETS) {
    super(name, help, labelNames);
  }
  observe(labels: Labels, seconds: number): void {
    this.#add(this.entry(labels, this.#init).value, seconds);
  }
  get(labels: Labels = {}): HistogramValue {
    return this.entry(labels, this.#init).value;
  }
  /**
   * The series of fixed `labels`, for a hot path: no lookup per call once it exists. The
   * series is still created by the first observe, not by this call.
   */
  with(labels: Labels): { observe(seconds: number): void } {
    let s: Series<HistogramValue> | undefined;
    return { observe: (seconds) => this.#add((s ??= this.entry(labels, this.#init)).value, seconds) };
  }
  readonly #init = (): HistogramValue => ({ counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 });
  #add(v: HistogramValue, seconds: number): void {
    const b = this.buckets;
    for (let i = 0; i < b.length; i++) if (seconds <= b[i]!) { v.counts[i]!++; break; }
    v.sum += seconds;
    v.count++;
  }
}

type AnyMetric = Counter | Gauge | Histogram;

export class MetricsRegistry {
  readonly #metrics: AnyMetric[] = [];

  counter(name: string, help: string, labelNames: readonly string[] = [], collect?: () => Array<[Labels, number]>): Counter {
    return this.#add(new Counter(name, help, labelNames, collect));
  }
  gauge(name: string, help: string, labelNames: readonly string[] = [], collect?: () => Array<[Labels, number]>): Gauge {
    return this.#add(new Gauge(name, help, labelNames, collect));
  }
  histogram(name: string, help: string, labelNames: readonly string[] = [], buckets?: readonly number[]): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  #add<M extends AnyMetric>(m: M): M {
    if (this.#metrics.some((x) => x.name === m.name)) throw new Error(`metric ${m.name} registered twice`);
    this.#metrics.push(m);
    return m;
  }

  /** The Prometheus text exposition (format 0.0.4) of every series. */
  expose(): string {
    const out: string[] = [];
    for (const m of this.#metrics) {
      out.push(`# HELP ${m.name} ${m.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${m.name} ${m.type}`);
      if (m instanceof Histogram) {
        for (const s of m.series.values()) {
          let cum = 0;
          m.buckets.forEach((le, i) => {
            cum += s.value.counts[i]!;
            out.push(`${m.name}_bucket${labelText(s.labels, ['le', formatNumber(le)])} ${cum}`);
          });
          out.push(`${m.name}_bucket${labelText(s.labels, ['le', '+Inf'])} ${s.value.count}`);
          out.push(`${m.name}_sum${labelText(s.labels)} ${formatNumber(s.value.sum)}`);
          out.push(`${m.name}_count${labelText(s.labels)} ${s.value.count}`);
        }
        continue;
      }
      const rows: Array<[Labels, number]> = m.collect
        ? m.collect()
        : [...m.series.values()].map((s) => [s.labels, s.value]);
      for (const [labels, v] of rows) out.push(`${m.name}${labelText(labels)} ${formatNumber(v)}`);
    }
    return out.join('\n') + '\n';
  }
}

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels);
  if (extra) pairs.push(extra);
  if (pairs.length === 0) return '';
  return `{${pairs.map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}

function formatNumber(n: number): string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return '+Inf';
  if (n === -Infinity) return '-Inf';
  return String(n);
}

/** One request to one datalake (DatalakeSetOptions.onRequest). */
export type DatalakeRequestListener = NonNullable<DatalakeSetOptions['onRequest']>;

/** The fixed set of narfs series, and the listeners that feed them. */
export class NarfsMetrics {
  readonly registry = new MetricsRegistry();
  readonly narinfoLookups = this.registry.counter('narfs_narinfo_cache_lookups_total',
    'narinfo lookups by result: hit = answered by the metadata cache (positive or negative), miss = asked the datalakes', ['result']);
  readonly narCacheLookups = this.registry.counter('narfs_nar_cache_lookups_total',
    'lookups of a store path in the NAR cache, by result: hit (verified NAR there), absent, damaged (dropped, fetched again)', ['result']);
  readonly narFetches = this.registry.counter('narfs_nar_fetches_total', 'NAR fetches (attempts) ended, by datalake and outcome', ['datalake', 'outcome']);
  readonly keptReads = this.registry.counter('narfs_nar_kept_reads_total',
    'NARs an earlier stop kept (cache pending/) read back instead of fetched (ok) or refused by their NarHash and fetched (refused)', ['outcome']);
  readonly keptReadBytes = this.registry.counter('narfs_nar_kept_read_bytes_total', 'uncompressed bytes of the kept NARs read back (NarSize)');
  readonly narBytes = this.registry.counter('narfs_nar_fetched_bytes_total', 'uncompressed bytes of NARs fetched and verified (NarSize)', ['datalake']);
  readonly downloadBytes = this.registry.counter('narfs_nar_downloaded_bytes_total',
    'compressed bytes of NARs fetched and verified (FileSize of their narinfo, when it has one)', ['datalake']);
  readonly inFlight = this.registry.gauge('narfs_nar_fetches_in_flight', 'NAR fetches running now');
  readonly fetchSeconds = this.registry.histogram('narfs_nar_fetch_duration_seconds', 'NAR fetch time (download, decompression, verification)', ['datalake']);
  readonly datalakeSeconds = this.registry.histogram('narfs_datalake_request_duration_seconds',
    'time to the answer of one request to a datalake (narinfo, listing, NAR stream opened)', ['datalake', 'outcome']);
  readonly fuseSeconds = this.registry.histogram('narfs_fuse_op_duration_seconds', 'FUSE requests answered in JS, by operation', ['op']);
  readonly fuseErrors = this.registry.counter('narfs_fuse_op_errors_total', 'FUSE requests answered in JS with an error, by operation', ['op']);
  /** File handles the timed filesystem gave out and that were not released yet. */
  readonly openHandles = new Set<number>();

  constructor(gauges: MetricsGauges = {}) {
    const r = this.registry;
    const one = (f: (() => number | undefined) | undefined) => () => {
      const v = f?.();
      return v === undefined ? [] : [[{}, v] as [Labels, number]];
    };
    r.gauge('narfs_datalake_up', '1 when the datalake answers, 0 while it is down and probed', ['datalake'],
      () => (gauges.datalakes?.() ?? []).map((d) => [{ datalake: d.displayUrl }, d.up ? 1 : 0]));
    r.gauge('narfs_open_files', 'files open through the mount with a handle in JS (files the native engine opens itself are not counted)', [],
      () => [[{}, this.openHandles.size]]);
    r.gauge('narfs_process_open_fds', 'descriptors the daemon process holds', [], one(processOpenFds));
    r.gauge('narfs_inodes', 'inodes in the filesystem\'s table', [], one(gauges.inodes));
    r.gauge('narfs_cache_size_bytes', 'disk space used by the cache directory (NARs and metadata)', [], one(gauges.cacheSizeBytes));
    r.counter('narfs_fuse_requests_total', 'FUSE requests by where they were answered: c (native engine) or js', ['where'], () => {
      const s = gauges.engine?.();
      return s ? [[{ where: 'c' }, s.inC], [{ where: 'js' }, s.toJs]] : [];
    });
    r.counter('narfs_fuse_reads_in_c_total', 'READ requests served by the native engine from complete cached NARs', [],
      one(() => gauges.engine?.()?.readsInC));
    r.counter('narfs_fuse_read_bytes_in_c_total', 'bytes the native engine served from cached NARs', [],
      one(() => gauges.engine?.()?.bytesInC));
    r.counter('narfs_fuse_passthrough_opens_total', 'opens the native engine answered with FUSE passthrough (their reads never reach narfs)', [],
      one(() => gauges.engine?.()?.passthroughOpens));
    r.gauge('narfs_fuse_backing_files', 'cache files registered with the kernel for FUSE passthrough', [],
      one(() => gauges.engine?.()?.backingLive));
  }

  /** FUSE requests answered in JS so far (settled ones: each is observed when it settles). */
  requestsAnsweredInJs(): number {
    let n = 0;
    for (const s of this.fuseSeconds.series.values()) n += s.value.count;
    return n;
  }

  /** Feeds the materialiser. */
  materialiserEvents(): MaterialiserEvents {
    return {
      fetchStarted: () => this.inFlight.add({}, 1),
      fetchEnded: (datalake, ok, seconds, narSize, fileSize) => {
        this.inFlight.add({}, -1);
        this.narFetches.inc({ datalake, outcome: ok ? 'ok' : 'error' });
        if (!ok) return;
        this.fetchSeconds.observe({ datalake }, seconds);
        if (narSize !== undefined) this.narBytes.inc({ datalake }, narSize);
        if (fileSize !== undefined) this.downloadBytes.inc({ datalake }, fileSize);
      },
      keptRead: (ok, narSize) => {
        this.keptReads.inc({ outcome: ok ? 'ok' : 'refused' });
        if (ok) this.keptReadBytes.inc({}, narSize);
      },
    };
  }

  /** Feeds the datalake set. */
  datalakeRequests(): DatalakeRequestListener {
    return (datalake, seconds, ok) => this.datalakeSeconds.observe({ datalake, outcome: ok ? 'ok' : 'error' }, seconds);
  }

  /** The metadata cache, counting narinfo hits and misses; everything else passes through. */
  countingMetadataCache(meta: MetadataCache): MetadataCache {
    const lookups = this.narinfoLookups;
    return new Proxy(meta, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (prop === 'getNarInfo') {
          return async (hashPart: string) => {
            const r = await target.getNarInfo(hashPart);
            lookups.inc({ result: r === undefined ? 'miss' : 'hit' });
            return r;
          };
        }
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** The NAR cache, counting lookups by result; everything else passes through. */
  countingNarCache<T extends { lookup(...a: never[]): Promise<{ state: string }> }>(nars: T): T {
    const lookups = this.narCacheLookups;
    return new Proxy(nars, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (prop === 'lookup') {
          return async (...args: Parameters<T['lookup']>) => {
            const r = await target.lookup(...args);
            lookups.inc({ result: r.state === 'ok' ? 'hit' : r.state });
            return r;
          };
        }
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /**
   * A filesystem whose FUSE-facing methods are timed per operation (by method name: the
   * engine calls one method per request it hands to JS); a promise is timed to its
   * settlement. The result is a plain object, not a Proxy (a trap per property access cost
   * the JS thread on every request, scenario 11): every method of `fs`'s classes is an own
   * property of it — the timed ones wrapped, the others bound to `fs` — and every accessor
   * or public field reads and writes through to `fs`, so methods always run on the real
   * object (its private fields work). Its prototype is `fs`'s, for instanceof; the
   * properties are taken when it is made (a method added to `fs` later is not seen).
   */
  timedFilesystem<T extends object>(fs: T, ops: Readonly<Record<string, string>>): T {
    const out = Object.create(Object.getPrototypeOf(fs) as object) as Record<PropertyKey, unknown>;
    const seen = new Set<PropertyKey>();
    for (let o: object | null = fs; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
      for (const key of Reflect.ownKeys(o)) {
        if (key === 'constructor' || seen.has(key)) continue;
        seen.add(key);
        const d = Reflect.getOwnPropertyDescriptor(o, key)!;
        if (typeof d.value === 'function') {
          const fn = d.value as (...a: unknown[]) => unknown;
          const op = typeof key === 'string' && Object.hasOwn(ops, key) ? ops[key] : undefined;
          Object.defineProperty(out, key, { value: op === undefined ? fn.bind(fs) : this.#timed(fs, fn, op), writable: true, configurable: true });
        } else {
          Object.defineProperty(out, key, {
            get: () => Reflect.get(fs, key),
            set: (v: unknown) => { Reflect.set(fs, key, v); },
            enumerable: d.enumerable ?? false, configurable: true,
          });
        }
      }
    }
    return out as T;
  }

  /** `fn` called on `fs`, observed under FUSE operation `op` (and its errors counted). */
  #timed(fs: object, fn: (...a: unknown[]) => unknown, op: string): (...a: unknown[]) => unknown {
    const seconds = this.fuseSeconds.with({ op });
    const errors = this.fuseErrors.with({ op });
    const handles = this.openHandles;
    return (...args: unknown[]) => {
      const t0 = performance.now();
      let r: unknown;
      try {
        r = fn.apply(fs, args);
      } catch (err) {
        seconds.observe((performance.now() - t0) / 1e3);
        errors.inc();
        throw err;
      }
      if (r instanceof Promise) {
        r.then(() => seconds.observe((performance.now() - t0) / 1e3), () => {
          seconds.observe((performance.now() - t0) / 1e3);
          errors.inc();
        });
      } else {
        seconds.observe((performance.now() - t0) / 1e3);
      }
      if (op === 'open' && typeof r === 'number') handles.add(r);
      if (op === 'release') handles.delete(args[0] as number);
      return r;
    };
  }
}

/** Values read when a snapshot or a scrape is taken. */
export interface MetricsGauges {
  datalakes?: () => Array<{ displayUrl: string; up: boolean }>;
  inodes?: () => number | undefined;
  cacheSizeBytes?: () => number | undefined;
  engine?: () => { inC: number; toJs: number; readsInC: number; bytesInC: number; passthroughOpens?: number; backingLive?: number } | undefined;
}

/** Entries of /proc/self/fd (undefined where there is no /proc). */
export function processOpenFds(): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

/** StoreFilesystem method → FUSE operation, for the methods the engines call per request. */
export const FUSE_OPS: Readonly<Record<string, string>> = {
  lookup: 'lookup', readdir: 'readdir', readlink: 'readlink', open: 'open', read: 'read', release: 'release',
  statfs: 'statfs', forget: 'forget',
};
