/**
 * parseRegisterInvocation: the arguments of `narfs register` (after the command word) →
 * what to register, where, within which deadline; and registeredLine, the line it prints.
 * One function for the Node CLI (src/cli/main.ts) and for the daemon answering the fast
 * client (src/daemon/cli-operation.ts), so both read a command line the same way.
 *
 * Invariant: relative paths (--lower, --from-file, --config) are resolved against `cwd`,
 * the working directory of the command that was typed; `lower` comes back absolute. A
 * --from-file that cannot be read is ERR_USAGE, as a malformed line is.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { NarfsError } from '../errors.js';
import type { LogFormat } from '../log.js';
import { parseOptions, REGISTER_OPTIONS, withConfigFile } from './command-options.js';
import { DEFAULT_CACHE_DIR, parseDuration } from './mount-config.js';
import { defaultCacheDir } from './user-dirs.js';

/** The default bound of a whole registration. */
export const DEFAULT_REGISTER_TIMEOUT_MS = 10 * 60_000;

export interface RegisterInvocation {
  /** --help was given: print the usage, do nothing else. */
  help: boolean;
  /** The control-socket request (src/daemon/control-server.ts op `register`). */
  request: { op: 'register'; lower: string; roots: string[]; all: boolean };
  /** --cache-dir as given (default /var/cache/narfs), and resolved against `cwd`. */
  cacheDir: string;
  cacheDirAbsolute: string;
  timeoutMs: number;
  logFormat: LogFormat;
  /** Every option value (the command line over --config), for the standalone path. */
  values: Record<string, unknown>;
}

export async function parseRegisterInvocation(args: readonly string[], cwd = process.cwd()): Promise<RegisterInvocation> {
  const parsed = parseOptions(args, { ...REGISTER_OPTIONS, config: { type: 'string' } });
  if (parsed.values.help) {
    return {
      help: true, request: { op: 'register', lower: '', roots: [], all: false }, cacheDir: DEFAULT_CACHE_DIR,
      cacheDirAbsolute: DEFAULT_CACHE_DIR, timeoutMs: DEFAULT_REGISTER_TIMEOUT_MS, logFormat: 'text', values: parsed.values,
    };
  }
  const values = await withConfigFile(parsed.values, REGISTER_OPTIONS, cwd);
  const lower = values.lower as string | undefined;
  if (!lower) throw new NarfsError('ERR_USAGE', 'narfs register needs --lower DIR');
  const roots = [...parsed.positionals];
  for (const f of (values['from-file'] as string[] | undefined) ?? []) {
    const text = await readFile(resolve(cwd, f), 'utf8').catch((err) => {
      throw new NarfsError('ERR_USAGE', `cannot read ${f}: ${(err as Error).message}`);
    });
    roots.push(...text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean));
  }
  const cacheDir = (values['cache-dir'] as string | undefined) ?? defaultCacheDir();
  return {
    help: false,
    request: { op: 'register', lower: resolve(cwd, lower), roots, all: values.all === true },
    cacheDir,
    cacheDirAbsolute: resolve(cwd, cacheDir),
    timeoutMs: values.timeout ? parseDuration(values.timeout as string, '--timeout') : DEFAULT_REGISTER_TIMEOUT_MS,
    logFormat: values['log-format'] === 'json' ? 'json' : 'text',
    values,
  };
}

/** What `narfs register` prints on success. */
export function registeredLine(result: Record<string, unknown>, lower: string): string {
  return `narfs: registered ${String(result.closure)} paths in ${lower} (${String(result.added)} new, ${String(result.alreadyValid)} already valid)\n`;
}
