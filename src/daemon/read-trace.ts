/**
 * Read traces: the files a workload read on one mount (`--record-trace FILE`), replayed as
 * prefetches on a later mount (`--prefetch-trace FILE`), so the next first use finds them
 * local.
 *
 * Format (text, one file per line, in the order of first read):
 *   # narfs read trace 1
 *   <store path basename>\t<narOffset>
 * `narOffset` names the file inside its store path (the offset of its contents in the
 * NAR, as in `.ls` and the index): a store path is immutable, so it names the same file
 * on every mount. Lines that do not parse are skipped with one warning; a basename that is
 * not a store path basename never reaches the store.
 *
 * Replay: the trace's files are grouped per store path, and each path's files are fetched
 * together (`prefetchFiles`: coalesced ranged requests, many files per request, when the
 * path is indexed; its whole NAR otherwise), up to DEFAULT_REPLAY_PATHS paths at once, in
 * the order of their first line; a file read before the replay reaches it joins the fetch
 * in flight (its read sends no request of its own).
 *
 * The same replay serves a running daemon: `narfs prefetch --trace FILE` reads and parses
 * the trace itself and sends its entries over the control socket (trace-wire.ts), and the
 * daemon replays them with replayEntries.
 *
 * Invariants: recording never fails or slows a read (lines are queued on a write stream;
 * an I/O error is logged once and recording stops); a replay is bounded in concurrency,
 * stops when the mount closes, and its failures are logged, never raised.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { NarfsError, toNarfsError } from '../errors.js';
import { eachLimited } from '../each-limited.js';
import type { Logger } from '../log.js';
import { isStorePathBase } from '../nix/store-path.js';

export const TRACE_HEADER = '# narfs read trace 1';

/**
 * Store paths of a trace replayed at once. All of a trace's paths (a workload's closure:
 * a handful to a few dozen) start together, so their narinfos and indexes go out in one
 * round trip and each path's ranged requests follow its own index at once; the chunk
 * fetcher's request slots bound the ranged requests, not this.
 */
export const DEFAULT_REPLAY_PATHS = 64;

export interface TraceEntry {
  name: string;
  narOffset: number;
}

/**
 * The entries of several trace files' texts, in order, each file once (duplicates across
 * texts dropped); `bad` counts the lines that do not parse.
 */
export function mergeTraces(texts: readonly string[]): { entries: TraceEntry[]; bad: number } {
  const entries: TraceEntry[] = [];
  const seen = new Set<string>();
  let bad = 0;
  for (const text of texts) {
    const parsed = parseTrace(text);
    bad += parsed.bad;
    for (const e of parsed.entries) {
      const key = `${e.name}\t${e.narOffset}`;
      if (seen.has(key)) continue;
      seen.add(key);
      entries.push(e);
    }
  }
  return { entries, bad };
}

/** Parses a trace file's text; bad lines are counted, not fatal. */
export function parseTrace(text: string): { entries: TraceEntry[]; bad: number } {
  const entries: TraceEntry[] = [];
  const seen = new Set<string>();
  let bad = 0;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+)\t(\d{1,15})$/.exec(line);
    if (!m || !isStorePathBase(m[1]!)) {
      bad++;
      continue;
    }
    const key = `${m[1]}\t${m[2]}`;
    if (seen.has(key)) continue;
    seen.add(key);
    entries.push({ name: m[1]!, narOffset: Number(m[2]) });
  }
  return { entries, bad };
}

export class TraceRecorder {
  readonly #out: WriteStream;
  readonly #logger: Logger;
  #failed = false;
  lines = 0;

  constructor(path: string, logger: Logger) {
    this.#logger = logger;
    this.#out = createWriteStream(path, { flags: 'w', mode: 0o644 });
    this.#out.on('error', (err) => {
      if (this.#failed) return;
      this.#failed = true;
      this.#logger.warn('cannot write the read trace; recording stopped', { path, err: toNarfsError(err, 'ERR_CACHE_IO') });
    });
    this.#out.write(`${TRACE_HEADER}\n`);
  }

  record(name: string, narOffset: number): void {
    if (this.#failed) return;
    this.lines++;
    this.#out.write(`${name}\t${narOffset}\n`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#out.end(() => resolve()));
  }
}

export interface TracePrefetcher {
  /** Fetches the files at `narOffsets` of store path `name`; `failed` counts those that could not be had. */
  prefetchFiles(name: string, narOffsets: readonly number[], signal: AbortSignal): Promise<{ files: number; failed: number }>;
}

/** The trace's entries per store path, paths in the order of their first entry. */
export function groupTrace(entries: readonly TraceEntry[]): Array<{ name: string; narOffsets: number[] }> {
  const byName = new Map<string, number[]>();
  for (const e of entries) {
    let list = byName.get(e.name);
    if (!list) {
      list = [];
      byName.set(e.name, list);
    }
    list.push(e.narOffset);
  }
  return [...byName].map(([name, narOffsets]) => ({ name, narOffsets }));
}

/** What a replay did: files and store paths asked for, files that could not be had, time. */
export interface ReplayResult {
  files: number;
  paths: number;
  failed: number;
  ms: number;
}

export interface ReplayOptions {
  /** Where the entries came from, for the log line (a file name, "narfs prefetch --trace"). */
  source: string;
  /** Store paths at once (default DEFAULT_REPLAY_PATHS). */
  concurrency?: number;
  /** Called after each store path's files, with the files done so far and in all. */
  progress?: (done: number, total: number) => void;
}

/**
 * Prefetches the files `entries` name (at most `concurrency` store paths at once, each
 * path's files together) until done or `signal` aborts, then logs 'prefetch trace
 * replayed'. Never throws: a path that fails counts its files as failed. `files` is what
 * was asked for (what had started when `signal` aborted).
 */
export async function replayEntries(entries: readonly TraceEntry[], store: TracePrefetcher, logger: Logger, signal: AbortSignal, options: ReplayOptions): Promise<ReplayResult> {
  const t0 = performance.now();
  let failed = 0;
  let started = 0;
  let done = 0;
  const groups = groupTrace(entries);
  options.progress?.(0, entries.length);
  await eachLimited(groups, options.concurrency ?? DEFAULT_REPLAY_PATHS, async (g) => {
    started += g.narOffsets.length;
    try {
      const r = await store.prefetchFiles(g.name, g.narOffsets, signal);
      failed += r.failed;
      if (r.failed > 0) logger.debug('trace prefetch of some files of a store path failed', { path: g.name, failed: r.failed });
    } catch (err) {
      if (signal.aborted) return;
      failed += g.narOffsets.length;
      logger.debug('trace prefetch of a store path failed', { path: g.name, files: g.narOffsets.length, err: toNarfsError(err) });
    }
    done += g.narOffsets.length;
    options.progress?.(done, entries.length);
  }, () => signal.aborted);
  const ms = Math.round(performance.now() - t0);
  logger.info('prefetch trace replayed', { path: options.source, files: entries.length, paths: groups.length, failed, ms });
  return { files: signal.aborted ? started : entries.length, paths: groups.length, failed, ms };
}

/**
 * Prefetches every file of the trace at `path` (`--prefetch-trace`; replayEntries). Never
 * throws: a missing trace file is one warning.
 */
export async function replayTrace(path: string, store: TracePrefetcher, logger: Logger, signal: AbortSignal, concurrency = DEFAULT_REPLAY_PATHS): Promise<ReplayResult> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    logger.warn('cannot read the prefetch trace; nothing prefetched', { path, err: toNarfsError(err, 'ERR_USAGE') });
    return { files: 0, paths: 0, failed: 0, ms: 0 };
  }
  const { entries, bad } = parseTrace(text);
  if (bad > 0) logger.warn('prefetch trace has lines that are not "<store path>\\t<narOffset>"; skipped', { path, bad });
  return replayEntries(entries, store, logger, signal, { source: path, concurrency });
}

/** ERR_USAGE unless `path` is a readable trace (checked at start, so a typo fails early). */
export async function checkTraceReadable(path: string): Promise<void> {
  try {
    await readFile(path, 'utf8');
  } catch (err) {
    throw new NarfsError('ERR_USAGE', `--prefetch-trace ${path}: cannot read it`, { cause: err, hint: 'Give a file written by --record-trace on an earlier mount.' });
  }
}
