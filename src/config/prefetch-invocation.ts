/**
 * The command line of `narfs prefetch`, parsed the same way by the Node CLI
 * (src/cli/main.ts) and by a daemon running it for the fast client
 * (src/daemon/cli-operation.ts): `[--cache-dir DIR] [--detach] [--timeout D]
 * [--trace FILE ...] [--log-format F] [<store path> ...]`. ERR_USAGE for an unknown option.
 */
import { NarfsError } from '../errors.js';
import { parseOptions } from './command-options.js';

export interface PrefetchInvocation {
  help: boolean;
  roots: string[];
  detach: boolean;
  /** `--trace` files as given (relative to the caller's working directory). */
  traces: string[];
  cacheDir?: string;
  timeout?: string;
}

/** A command line with neither store paths nor traces. */
export function nothingToPrefetch(): NarfsError {
  return new NarfsError('ERR_USAGE', 'narfs prefetch needs store paths or --trace FILE');
}

/** What `narfs prefetch --detach` prints (stderr) once the daemon took the work. */
export const DETACHED_LINE = 'narfs: prefetch goes on in the daemon; its log says when it is done\n';

/** The warning (stderr) for trace lines that do not parse. */
export function badTraceLinesLine(bad: number): string {
  return `narfs: warn: ${bad} lines of the trace are not "<store path>\\t<narOffset>"; skipped\n`;
}

export function parsePrefetchInvocation(args: readonly string[]): PrefetchInvocation {
  const { values, positionals } = parseOptions(args, {
    'cache-dir': { type: 'string' }, detach: { type: 'boolean' }, timeout: { type: 'string' }, trace: { type: 'string', multiple: true }, 'log-format': { type: 'string' },
  });
  return {
    help: values.help === true,
    roots: positionals,
    detach: values.detach === true,
    traces: (values.trace as string[] | undefined) ?? [],
    ...(values['cache-dir'] ? { cacheDir: values['cache-dir'] as string } : {}),
    ...(values.timeout ? { timeout: values.timeout as string } : {}),
  };
}
