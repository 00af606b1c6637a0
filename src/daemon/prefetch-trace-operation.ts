/**
 * runTracePrefetch: `narfs prefetch --trace FILE` on a running daemon — the files of a read
 * trace (entries the client parsed and sent, trace-wire.ts) fetched into the daemon's cache
 * while its mount keeps serving, by the same replay as `--prefetch-trace` at mount start
 * (replayEntries: grouped per store path, LazyStore.prefetchFiles). Progress goes to the
 * caller as `trace progress` log lines: files done/total.
 *
 * Invariants: never throws for a path that cannot be had (its files count as failed);
 * stops when `signal` aborts (the client going away, or the daemon closing for a detached
 * replay), the cache keeps what was fetched.
 */
import type { Logger } from '../log.js';
import { replayEntries, type ReplayResult, type TraceEntry } from './read-trace.js';
import type { StoreStack } from './store-stack.js';
import { TRACE_PROGRESS } from './trace-wire.js';

export function runTracePrefetch(stack: StoreStack, entries: readonly TraceEntry[], logger: Logger, signal: AbortSignal): Promise<ReplayResult> {
  return replayEntries(entries, stack.store, logger, signal, {
    source: 'narfs prefetch --trace',
    progress: (done, total) => logger.info(TRACE_PROGRESS, { done, total }),
  });
}
