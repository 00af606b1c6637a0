/**
 * `narfs prefetch [--cache-dir DIR] [--detach] <store path>...`: asks the daemon serving
 * DIR to fetch the closures of the given store paths into its cache (control op
 * `prefetch`, src/daemon/prefetch-operation.ts) while its mount keeps serving.
 *
 * Output: on a TTY, one progress line redrawn in place (paths and bytes done, rate); else
 * a line per 10% of the paths. `--detach` returns at once and leaves the daemon fetching
 * (its log says when it is done). Exit 0 when every path was fetched, 1 when some failed,
 * and an ERR_CONTROL error when no daemon serves DIR (prefetching needs the mount's cache
 * and datalakes).
 */
import { NarfsError } from '../errors.js';
import { parseDuration } from '../config/mount-config.js';
import { defaultCacheDir } from '../config/user-dirs.js';
import { callDaemon, type ControlLog } from './control-client.js';
import type { PrefetchResult } from '../daemon/prefetch-operation.js';

export interface PrefetchArgs {
  cacheDir?: string;
  detach?: boolean;
  timeout?: string;
  roots: string[];
}

export async function prefetchCommand(a: PrefetchArgs, out: NodeJS.WriteStream = process.stderr): Promise<number> {
  if (a.roots.length === 0) throw new NarfsError('ERR_USAGE', 'narfs prefetch needs store paths');
  const cacheDir = a.cacheDir ?? defaultCacheDir();
  const timeoutMs = a.timeout ? parseDuration(a.timeout, '--timeout') : 24 * 3600_000;
  const t0 = performance.now();
  const tty = out.isTTY === true;
  let lastTenth = -1;
  const onLog = (l: ControlLog) => {
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
  const answer = await callDaemon(cacheDir, { op: 'prefetch', roots: a.roots, ...(a.detach ? { detach: true } : {}) }, onLog, timeoutMs);
  if (!answer) {
    throw new NarfsError('ERR_CONTROL', `no narfs daemon serves ${cacheDir}`, { hint: 'narfs prefetch fills the cache of a running mount: start narfs mount (or pass the --cache-dir it uses).' });
  }
  if (tty) out.write('\n');
  if (answer.detached === true) {
    out.write('narfs: prefetch goes on in the daemon; its log says when it is done\n');
    return 0;
  }
  const r = answer as unknown as PrefetchResult;
  out.write(`narfs: prefetched ${r.paths} store paths (${r.files} files, ${mib(r.bytes)}) in ${(r.ms / 1000).toFixed(1)} s${r.failed ? `; ${r.failed} failed` : ''}\n`);
  return r.failed > 0 ? 1 : 0;
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
