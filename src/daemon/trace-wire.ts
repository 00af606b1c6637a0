/**
 * A read trace's entries on the control socket (`narfs prefetch --trace FILE`, op
 * `prefetch` field `trace`): the client reads and parses the trace file itself (the
 * daemon may not be able to open it: another user, another mount namespace) and sends
 *   "trace": [["<store path basename>", [narOffset, ...]], ...]
 * one pair per store path, paths in the order of their first entry (groupTrace), so a
 * basename is sent once and a file costs its offset's digits (the request line is bounded
 * by MAX_CONTROL_REQUEST_BYTES, 1 MiB: about 100 000 files).
 *
 * Invariant: traceFromWire accepts only what traceToWire writes for valid entries —
 * store path basenames (isStorePathBase) and non-negative safe integer offsets — and
 * raises ERR_CONTROL for anything else, so no name from the socket reaches the store
 * unchecked; decoding the encoding of entries gives the same entries (duplicates dropped,
 * regrouped per path).
 */
import { NarfsError } from '../errors.js';
import { isStorePathBase } from '../nix/store-path.js';
import { groupTrace, type TraceEntry } from './read-trace.js';

export type WireTrace = Array<[string, number[]]>;

/** The log message of a replay's progress lines (fields `done`, `total`: files), sent to the client. */
export const TRACE_PROGRESS = 'trace progress';

export function traceToWire(entries: readonly TraceEntry[]): WireTrace {
  return groupTrace(entries).map((g) => [g.name, g.narOffsets]);
}

export function traceFromWire(value: unknown): TraceEntry[] {
  const bad = (what: string) => new NarfsError('ERR_CONTROL', `prefetch: malformed trace (${what})`, { hint: 'The daemon and this command may be different narfs versions; restart the daemon.' });
  if (!Array.isArray(value)) throw bad('not an array');
  const entries: TraceEntry[] = [];
  const seen = new Set<string>();
  for (const item of value as unknown[]) {
    if (!Array.isArray(item) || item.length !== 2 || typeof item[0] !== 'string' || !Array.isArray(item[1])) throw bad('an item is not [name, [narOffset, ...]]');
    const name = item[0];
    if (!isStorePathBase(name)) throw bad(`${JSON.stringify(name.slice(0, 80))} is not a store path basename`);
    for (const off of item[1] as unknown[]) {
      if (typeof off !== 'number' || !Number.isSafeInteger(off) || off < 0) throw bad(`narOffset ${JSON.stringify(off)} of ${name}`);
      const key = `${name}\t${off}`;
      if (seen.has(key)) continue;
      seen.add(key);
      entries.push({ name, narOffset: off });
    }
  }
  return entries;
}
