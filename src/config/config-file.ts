/**
 * parseConfigFile / readConfigFile: the file `narfs mount --config FILE` (and `register`)
 * reads, so that a unit file names one file and carries no secret in its command line.
 *
 * Format (nix.conf's, src/libutil/config.cc, without includes):
 *
 *   # /etc/narfs/narfs.conf
 *   datalake = https://cache.example.org/main
 *   datalake = https://cache.nixos.org          # repeatable keys add up
 *   trusted-public-keys = cache.example.org-1:AbC...= cache.nixos.org-1:6NC...=
 *   bearer-token-file = cache.example.org=/run/credentials/narfs.service/token
 *   netrc-file = /etc/nix/netrc
 *   ssl-cert-file = /etc/ssl/certs/site-ca.pem
 *   proxy = http://squid.site.lan:3128
 *   require-sigs = true
 *
 * - one `key = value` per line; `#` starts a comment anywhere (as in nix.conf); blank
 *   lines are ignored; the value is the rest of the line, trimmed (no quoting);
 * - keys are the long options of the command line without `--`; booleans take true or
 *   false (`require-sigs = false` is --no-require-sigs);
 * - list keys may repeat and add up; `datalake` and `trusted-public-keys` values are also
 *   split on whitespace, as nix.conf lists are; any other key may appear once;
 * - unknown keys are errors (a typo must not silently drop a setting).
 *
 * Invariant: errors name the file, the line and the key, never a value (a datalake URL
 * may carry user:password).
 */
import { readFile } from 'node:fs/promises';
import { NarfsError } from '../errors.js';

export type ConfigKind = 'string' | 'boolean' | 'list';
/** Key → kind, for every key the file may hold. */
export type ConfigSpec = Readonly<Record<string, ConfigKind>>;
export type ConfigValues = Record<string, string | boolean | string[]>;

/** List keys whose values are whitespace-separated lists, as in nix.conf. */
const SPLIT_LISTS = new Set(['datalake', 'trusted-public-keys']);

export function parseConfigFile(text: string, spec: ConfigSpec, whence: string): ConfigValues {
  const out: ConfigValues = {};
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.replace(/#.*/, '').trim();
    if (line === '') continue;
    const where = `${whence}, line ${n + 1}`;
    const eq = line.indexOf('=');
    if (eq < 0) throw new NarfsError('ERR_CONFIG', `${where}: not a "key = value" line`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    const kind = spec[key];
    if (kind === undefined) {
      throw new NarfsError('ERR_CONFIG', `${where}: unknown setting '${safeKey(key)}'`, {
        hint: `Settings are the long options without "--": ${Object.keys(spec).sort().join(', ')}.`,
      });
    }
    if (kind === 'list') {
      const items = SPLIT_LISTS.has(key) ? value.split(/\s+/).filter(Boolean) : value === '' ? [] : [value];
      out[key] = [...((out[key] as string[] | undefined) ?? []), ...items];
      continue;
    }
    if (key in out) throw new NarfsError('ERR_CONFIG', `${where}: '${key}' is set twice`);
    if (kind === 'boolean') {
      if (value !== 'true' && value !== 'false') throw new NarfsError('ERR_CONFIG', `${where}: '${key}' is true or false`);
      out[key] = value === 'true';
    } else {
      if (value === '') throw new NarfsError('ERR_CONFIG', `${where}: '${key}' has no value`);
      out[key] = value;
    }
  }
  return out;
}

export async function readConfigFile(file: string, spec: ConfigSpec): Promise<ConfigValues> {
  const text = await readFile(file, 'utf8').catch((err: unknown) => {
    throw new NarfsError('ERR_CONFIG', `cannot read the config file ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, {
      cause: err,
      hint: 'Give --config the path of a readable file.',
    });
  });
  return parseConfigFile(text, spec, file);
}

/**
 * Command-line values over file values, key by key: a key given on the command line
 * replaces the file's (lists too: `--datalake X` means only X).
 */
export function mergeConfig(cli: Record<string, unknown>, file: ConfigValues): Record<string, unknown> {
  const out: Record<string, unknown> = { ...file };
  for (const [k, v] of Object.entries(cli)) if (v !== undefined) out[k] = v;
  return out;
}

/** The key as typed when it looks like an option name; else nothing of it (it may be a URL). */
function safeKey(key: string): string {
  return /^[A-Za-z][A-Za-z0-9-]{0,40}$/.test(key) ? key : '(not an option name)';
}
