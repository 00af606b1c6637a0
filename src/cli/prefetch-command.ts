/**
 * `narfs prefetch [--cache-dir DIR] [--detach] [--trace FILE ...] [<store path>...]`: asks
 * the daemon serving DIR to fetch into its cache, while its mount keeps serving, the
 * files of the read traces (written by `--record-trace`; src/daemon/read-trace.ts) and
 * then the closures of the given store paths (control op `prefetch`,
 * src/daemon/prefetch-operation.ts, prefetch-trace-operation.ts). The traces are read and
 * parsed here, not by the daemon (it may not be able to open them: another user, another
 * mount namespace); their entries go over the socket (src/daemon/trace-wire.ts).
 *
 * Output: on a TTY, one progress line redrawn in place (trace files done/total, then paths
 * and bytes done, rate); else a line per 10%. `--detach` returns once the daemon accepted
 * and leaves it fetching (its log says 'prefetch trace replayed', then 'prefetch done').
 * Exit 0 when every path was fetched and the trace replay did not fail entirely, 1 when
 * some path failed or every file of the trace did (a trace naming some paths the datalakes
 * no longer have is normal: those failures are only counted). An unreadable trace is
 * ERR_USAGE; no daemon serving DIR is ERR_CONTROL (prefetching needs the mount's cache and
 * datalakes).
 */
import { readFile } from 'node:fs/promises';
import { NarfsError } from '../errors.js';
import { parseDuration } from '../config/mount-config.js';
import { defaultCacheDir } from '../config/user-dirs.js';
import { callDaemon, type ControlLog } from './control-client.js';
import type { PrefetchResult } from '../daemon/prefetch-operation.js';
import { mergeTraces, type ReplayResult, type TraceEntry } from '../daemon/read-trace.js';
import { DETACHED_LINE, badTraceLinesLine, nothingToPrefetch } from '../config/prefetch-invocation.js';
import { TRACE_PROGRESS, traceToWire } from '../daemon/trace-wire.js';
import { MAX_CONTROL_REQUEST_BYTES } from '../daemon/control-socket-path.js';

export interface PrefetchArgs {
  cacheDir?: string;
  detach?: boolean;
  timeout?: string;
  roots: string[];
  /** Read trace files (`--trace`, repeatable). */
  traces?: string[];
}

/**
 * The entries of the trace files, in order, each file once (duplicates across files
 * dropped); `bad` counts the lines that do not parse. ERR_USAGE when a file cannot be read.
 */
export async function readTraces(paths: readonly string[]): Promise<{ entries: TraceEntry[]; bad: number }> {
  const texts: string[] = [];
  for (const path of paths) {
    try {
      texts.push(await readFile(path, 'utf8'));
    } catch (err) {
      throw new NarfsError('ERR_USAGE', `--trace ${path}: cannot read it`, { cause: err, hint: 'Give a file written by narfs mount --record-trace (readable by this user).' });
    }
  }
  return mergeTraces(texts);
}

export async function prefetchCommand(a: PrefetchArgs, out: NodeJS.WriteStream = process.stderr): Promise<number> {
  const traces = a.traces ?? [];
  if (a.roots.length === 0 && traces.length === 0) throw nothingToPrefetch();
  const trace = traces.length > 0 ? await readTraces(traces) : undefined;
  if (trace && trace.bad > 0) out.write(badTraceLinesLine(trace.bad));
  const request: Record<string, unknown> = {
    op: 'prefetch', roots: a.roots, ...(trace ? { trace: traceToWire(trace.entries) } : {}), ...(a.detach ? { detach: true } : {}),
  };
  const line = JSON.stringify(request);
  if (Buffer.byteLength(line) >= MAX_CONTROL_REQUEST_BYTES) {
    throw new NarfsError('ERR_USAGE', `the trace is too long to send (${trace?.entries.length ?? 0} files; the daemon reads requests up to ${MAX_CONTROL_REQUEST_BYTES} bytes)`,
      { hint: 'Split the trace into several files and run narfs prefetch --trace once per file.' });
  }
  const cacheDir = a.cacheDir ?? defaultCacheDir();
  const timeoutMs = a.timeout ? parseDuration(a.timeout, '--timeout') : 24 * 3600_000;
  const t0 = performance.now();
  const tty = out.isTTY === true;
  let lastTenth = -1;
  let lastTraceTenth = -1;
  // On a TTY the trace's last progress line stays when the roots' line starts.
  let traceLineOpen = false;
  const onLog = (l: ControlLog) => {
    if (l.msg === TRACE_PROGRESS) {
      const done = Number(l.fields?.done), total = Number(l.fields?.total);
      const text = traceProgressLine(done, total, (performance.now() - t0) / 1000);
      if (tty) {
        out.write(`\r\x1b[K${text}`);
        traceLineOpen = true;
      } else {
        const tenth = total > 0 ? Math.floor((done * 10) / total) : 10;
        if (tenth !== lastTraceTenth) {
          lastTraceTenth = tenth;
          out.write(`narfs: prefetch ${text}\n`);
        }
      }
      return;
    }
    if (traceLineOpen && l.msg === 'progress') {
      out.write('\n');
      traceLineOpen = false;
    }
    // The summary below says it again.
    if (l.msg === 'prefetch trace replayed') return;
    if (l.msg !== 'progress') {
      out.write(`${tty ? '\r\x1b[K' : ''}narfs: ${l.level}: ${l.msg}${l.fields ? ' ' + JSON.stringify(l.fields) : ''}\n`);
      return;
    }
    const f = l.fields ?? {};
    const done = Number(f.done), total = Number(f.total), bytes = Number(f.bytes), totalBytes = Number(f.totalBytes);
    if (tty) {
      out.write(`\r\x1b[K${progressLine(done, total, bytes, totalBytes, (performance.now() - t0) / 1000)}`);
    } else {
      const tenth = total > 0 ? Math.floor((done * 10) / total) : 10;
      if (tenth !== lastTenth) {
        lastTenth = tenth;
        out.write(`narfs: prefetch ${progressLine(done, total, bytes, totalBytes, (performance.now() - t0) / 1000)}\n`);
      }
    }
  };
  const answer = await callDaemon(cacheDir, request, onLog, timeoutMs);
  if (!answer) {
    throw new NarfsError('ERR_CONTROL', `no narfs daemon serves ${cacheDir}`, { hint: 'narfs prefetch fills the cache of a running mount: start narfs mount (or pass the --cache-dir it uses).' });
  }
  if (tty) out.write('\n');
  if (answer.detached === true) {
    out.write(DETACHED_LINE);
    return 0;
  }
  let status = 0;
  const t = answer.trace as ReplayResult | undefined;
  if (t) {
    out.write(`narfs: replayed the trace: ${t.files - t.failed}/${t.files} files of ${t.paths} store paths in ${(t.ms / 1000).toFixed(1)} s${t.failed ? `; ${t.failed} failed` : ''}\n`);
    if (t.files > 0 && t.failed === t.files) status = 1;
  }
  if (a.roots.length > 0) {
    const r = answer as unknown as PrefetchResult;
    out.write(`narfs: prefetched ${r.paths} store paths (${r.files} files, ${mib(r.bytes)}) in ${(r.ms / 1000).toFixed(1)} s${r.failed ? `; ${r.failed} failed` : ''}\n`);
    if (r.failed > 0) status = 1;
  }
  return status;
}

/** `[#######.................] 120/400 trace files  30%  1.2 s`. */
export function traceProgressLine(done: number, total: number, seconds: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const width = 24;
  const filled = Math.round(frac * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} trace files  ${Math.round(frac * 100)}%  ${seconds.toFixed(1)} s`;
}

/** `12/40 paths  310.5/812.0 MiB  38%  42.1 MiB/s`, with a bar. */
export function progressLine(done: number, total: number, bytes: number, totalBytes: number, seconds: number): string {
  const frac = totalBytes > 0 ? Math.min(1, bytes / totalBytes) : total > 0 ? done / total : 1;
  const width = 24;
  const filled = Math.round(frac * width);
  const rate = seconds > 0 ? bytes / seconds : 0;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} paths  ${mib(bytes)}/${mib(totalBytes)}  ${Math.round(frac * 100)}%  ${mib(rate)}/s`;
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}
