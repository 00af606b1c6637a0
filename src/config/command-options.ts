/**
 * The option tables of the `narfs` commands, their parsing (node:util parseArgs, strict,
 * `--no-X` for booleans) and the merge with a `--config FILE`: shared by the CLI
 * (src/cli/main.ts) and by the daemon, which runs `narfs register` for the fast client
 * (src/daemon/cli-operation.ts) with exactly the same parsing.
 *
 * Invariant: a malformed command line is ERR_USAGE; paths given relative (the config file)
 * are taken relative to the `cwd` passed in, the directory of the command that typed them.
 */
import { defaultConfigFile, exists } from './user-dirs.js';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { NarfsError } from '../errors.js';
import type { LogFormat } from '../log.js';
import { mergeConfig, readConfigFile, type ConfigSpec } from './config-file.js';

export type OptionSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;

/** Options of http(s) datalakes, shared by mount and register. */
export const ACCESS_OPTIONS: OptionSpec = {
  'netrc-file': { type: 'string' },
  'bearer-token-file': { type: 'string', multiple: true },
  'ssl-cert-file': { type: 'string' },
  proxy: { type: 'string' },
};

export const MOUNT_OPTIONS: OptionSpec = {
  datalake: { type: 'string', multiple: true },
  'trusted-public-keys': { type: 'string', multiple: true },
  'require-sigs': { type: 'boolean' },
  'cache-dir': { type: 'string' },
  'op-timeout': { type: 'string' },
  'negative-ttl': { type: 'string' },
  lower: { type: 'string' },
  'lower-socket': { type: 'string' },
  'allow-other': { type: 'boolean' },
  'decompress-jobs': { type: 'string' },
  'fuse-backend': { type: 'string' },
  'log-format': { type: 'string' },
  'metrics-listen': { type: 'string' },
  'cache-max-size': { type: 'string' },
  passthrough: { type: 'boolean' },
  'fuse-transport': { type: 'string' },
  indexes: { type: 'boolean' },
  'record-trace': { type: 'string' },
  'prefetch-trace': { type: 'string' },
  'lazy-fetch': { type: 'string' },
  slice: { type: 'string' },
  'slice-refresh': { type: 'string' },
  ...ACCESS_OPTIONS,
};

export const REGISTER_OPTIONS: OptionSpec = {
  lower: { type: 'string' },
  'from-file': { type: 'string', multiple: true },
  all: { type: 'boolean' },
  datalake: { type: 'string', multiple: true },
  'trusted-public-keys': { type: 'string', multiple: true },
  'require-sigs': { type: 'boolean' },
  'cache-dir': { type: 'string' },
  timeout: { type: 'string' },
  'log-format': { type: 'string' },
  ...ACCESS_OPTIONS,
};

/**
 * What a --config file may set: the options of mount and register (one file serves both;
 * each command takes the keys it knows), but not `all`, `from-file` or `timeout`, which
 * belong to one invocation.
 */
export const CONFIG_SPEC: ConfigSpec = Object.fromEntries(
  Object.entries({ ...MOUNT_OPTIONS, ...REGISTER_OPTIONS })
    .filter(([k]) => !['all', 'from-file', 'timeout'].includes(k))
    .map(([k, o]) => [k, o.multiple ? 'list' : o.type]),
);

/** `args` parsed against `options` (plus --help); a malformed line is ERR_USAGE. */
export function parseOptions(args: readonly string[], options: OptionSpec): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const r = parseArgs({ args: [...args], options: { ...options, help: { type: 'boolean' } }, allowPositionals: true, strict: true, allowNegative: true });
    return { values: r.values as Record<string, unknown>, positionals: r.positionals };
  } catch (err) {
    throw new NarfsError('ERR_USAGE', (err as Error).message, { cause: err });
  }
}

/**
 * The command-line values over those of --config FILE (when given, read relative to
 * `cwd`), for `spec`'s keys.
 */
export async function withConfigFile(values: Record<string, unknown>, spec: OptionSpec, cwd = process.cwd()): Promise<Record<string, unknown>> {
  // A normal user's $XDG_CONFIG_HOME/narfs/narfs.conf is read when present and no --config is given.
  const implicit = defaultConfigFile();
  const file = (values.config as string | undefined) ?? (implicit !== undefined && (await exists(implicit)) ? implicit : undefined);
  if (file === undefined) return values;
  const fromFile = await readConfigFile(resolve(cwd, file), CONFIG_SPEC);
  const known = Object.fromEntries(Object.entries(fromFile).filter(([k]) => k in spec));
  return mergeConfig(values, known);
}

/**
 * The log format asked for, known before the arguments are parsed (so that a usage error
 * is printed in it too): `--log-format json` or `--log-format=json`.
 */
export function sniffLogFormat(args: readonly string[]): LogFormat {
  let format: LogFormat = 'text';
  args.forEach((a, i) => {
    const v = a === '--log-format' ? args[i + 1] : a.startsWith('--log-format=') ? a.slice('--log-format='.length) : undefined;
    if (v === 'json' || v === 'text') format = v;
  });
  return format;
}
