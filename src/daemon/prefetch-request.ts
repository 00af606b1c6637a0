/**
 * What `narfs prefetch` asks of a daemon, whichever way it came (control op `prefetch`
 * from the Node CLI, src/daemon/control-server.ts; or the command line from the fast
 * client, src/daemon/cli-operation.ts): the files of the read traces first (what a job
 * read last time), then the closures of the roots. `startDetached` runs it on its own,
 * bounded by the daemon's life rather than the client's, and keeps its progress lines out
 * of the daemon's log ('prefetch done' or 'prefetch failed' says how it ended).
 */
import type { Logger } from '../log.js';
import { runPrefetch } from './prefetch-operation.js';
import type { TraceEntry } from './read-trace.js';
import { TRACE_PROGRESS } from './trace-wire.js';
import type { StoreStack } from './store-stack.js';

export type PrefetchWork = (logger: Logger, signal: AbortSignal) => Promise<Record<string, unknown>>;

export async function prefetchWork(stack: StoreStack, roots: readonly string[], trace: readonly TraceEntry[] | undefined): Promise<PrefetchWork> {
  // The trace's module loads only when a trace comes.
  const traceOp = trace === undefined ? undefined : await import('./prefetch-trace-operation.js');
  return async (logger, signal) => {
    const replayed = trace ? await traceOp!.runTracePrefetch(stack, trace, logger, signal) : undefined;
    const closures = roots.length > 0 ? await runPrefetch(stack, [...roots], logger, signal) : undefined;
    return { ...closures, ...(replayed ? { trace: replayed } : {}) };
  };
}

export function startDetached(stack: StoreStack, logger: Logger, work: PrefetchWork): void {
  const quiet: Logger = { ...logger, info: (msg, fields) => { if (msg !== 'progress' && msg !== TRACE_PROGRESS) logger.info(msg, fields); } };
  void work(quiet, stack.signal)
    .then((r) => logger.info('prefetch done', { ...r }))
    .catch((err) => logger.warn('prefetch failed', { err }));
}
