/**
 * The `narfs` command line: argv → command, exit codes, and errors printed with their
 * stable code and hint.
 *
 * Modules that only one command needs (the daemon, the store stack, the datalake clients)
 * are imported inside that command, so `narfs register` through a running daemon and the
 * other short commands start without loading them (start-up time counts: issue 13).
 *
 * Exit codes: 0 success (also after a clean unmount on SIGINT/SIGTERM), 1 failure,
 * 2 usage error.
 */
import { parseArgs } from 'node:util';
import { NarfsError, toNarfsError } from '../errors.js';
import { createLogger, type LogFormat } from '../log.js';
import { buildDatalakeAccess, buildMountConfig } from '../config/mount-config.js';
import { mergeConfig, readConfigFile, type ConfigSpec } from '../config/config-file.js';
import { DEFAULT_CACHE_DIR, DEFAULT_NEGATIVE_TTL_MS, parseDuration } from '../config/mount-config.js';
import { parseTrustedPublicKeys } from '../nix/signature.js';
import { callDaemon } from './control-client.js';
import type { VerifyNarCacheResult } from '../cache/verify-nar-cache.js';
import { readFile } from 'node:fs/promises';
import type { NarfsStatus } from '../daemon/status-operation.js';

const HELP = `narfs — a lazily materialised /nix/store over FUSE

Usage:
  narfs mount <mountpoint> --datalake URL [--datalake URL ...] [options]
  narfs mount <mountpoint> --config FILE [options]
  narfs register --lower DIR [<store path> ...] [--from-file FILE] [--all] [options]
  narfs verify-cache [--cache-dir DIR] [--log-format text|json]
  narfs status [--cache-dir DIR] [--json]
  narfs --help

narfs mount options:
  --datalake URL              a Nix binary cache: file:///dir, http(s)://host/path
                              (repeatable; asked in Priority order, falling through)
  --trusted-public-keys KEYS  whitespace-separated name:base64 keys (repeatable)
  --no-require-sigs           accept paths without a valid trusted signature
  --cache-dir DIR             verified NARs and metadata (default /var/cache/narfs)
  --op-timeout DURATION       bound of a FUSE request waiting on a datalake (default 30s)
  --negative-ttl DURATION     how long a missing path is remembered (default 30s)
  --lower DIR                 root of the lower store whose database lists registered paths
  --lower-socket PATH         also serve the datalakes as a Nix lower store on this Unix
                              socket (local-overlay://?lower-store=unix://PATH&...)
  --allow-other / --no-allow-other   let other users in (default: on when root)
  --decompress-jobs N         xz/bzip2 decompressor processes at once (default 2 x cores)
  --fuse-backend native|fuse-native  FUSE engine (default native; fuse-native is the libfuse 2 fallback)
  --log-format text|json      log line format on stderr (default text)
  --metrics-listen HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics
                              (off by default; e.g. 127.0.0.1:9477)

http(s) datalakes (mount and register):
  --netrc-file FILE           credentials per host, in Nix's netrc-file format
                              (machine HOST login USER password PASS)
  --bearer-token-file [HOST=]FILE   send "Authorization: Bearer <contents of FILE>"
                              to HOST (name or name:port), or without HOST to every
                              http(s) datalake; re-read when the datalake answers 401
  --ssl-cert-file FILE        PEM CA bundle that replaces the default roots (Nix's
                              ssl-cert-file; default $NIX_SSL_CERT_FILE, $SSL_CERT_FILE)
  --proxy URL                 HTTP proxy (http://host:port); default http_proxy,
                              https_proxy, all_proxy; no_proxy is honoured either way
  --config FILE               settings as "key = value" lines (keys are the long options
                              above without "--"; # comments; repeatable keys add up);
                              command-line options replace the file's. Keeps secrets and
                              URLs with credentials out of the command line

narfs register options (registers the whole closure of each root as valid paths in the
lower store's database, in one transaction; through the running daemon of --cache-dir
when there is one, else alone with the same --datalake/--trusted-public-keys options):
  --lower DIR                 root of the lower store (its db is DIR/nix/var/nix/db)
  --from-file FILE            roots, one per line (# comments allowed)
  --all                       every store path of the listable (file://) datalakes
  --timeout DURATION          bound of the whole registration (default 10m)

narfs verify-cache re-hashes every cached NAR against the NarHash it was verified against
when it was stored, and drops the damaged ones (they are fetched again on the next read).
Through the running daemon of --cache-dir when there is one, else alone. Exit 0 when all
were intact, 1 when some were dropped.

narfs status asks the daemon serving --cache-dir (default /var/cache/narfs) for its
datalakes and their health, cache size, hit rates, bytes fetched, fetches in flight, open
files, inodes and the lower store's generation; --json prints the daemon's answer as it
is. Exit 0 when every datalake is up, 3 when some is down, 1 when no daemon answers.

The mount stays in the foreground, prints one line when ready, logs one line per
materialised store path, and unmounts on SIGINT/SIGTERM (a second signal forces it).
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP);
    return command ? 0 : 2;
  }
  const format = sniffLogFormat(rest);
  try {
    switch (command) {
      case 'mount':
        return await mountCommand(rest);
      case 'register':
        return await registerCommand(rest);
      case 'verify-cache':
        return await verifyCacheCommand(rest);
      case 'status':
        return await statusCommand(rest);
      default:
        throw new NarfsError('ERR_USAGE', `unknown command "${command}"`);
    }
  } catch (e) {
    const err = toNarfsError(e);
    printError(err, format);
    return err.code === 'ERR_USAGE' ? 2 : 1;
  }
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

function printError(err: NarfsError, format: LogFormat): void {
  const details = err.details && Object.keys(err.details).length > 0 ? err.details : undefined;
  if (format === 'json') {
    process.stderr.write(JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint, ...(details ? { details } : {}) }) + '\n');
  } else {
    process.stderr.write(`narfs: error ${err.code}: ${err.message}\n  hint: ${err.hint}\n${details ? `  details: ${JSON.stringify(details)}\n` : ''}`);
  }
}

type OptionSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;

function parse(args: string[], options: OptionSpec): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { ...options, help: { type: 'boolean' } }, allowPositionals: true, strict: true, allowNegative: true });
    return { values: r.values as Record<string, unknown>, positionals: r.positionals };
  } catch (err) {
    throw new NarfsError('ERR_USAGE', (err as Error).message, { cause: err });
  }
}

/** Options of http(s) datalakes, shared by mount and register. */
const ACCESS_OPTIONS: OptionSpec = {
  'netrc-file': { type: 'string' },
  'bearer-token-file': { type: 'string', multiple: true },
  'ssl-cert-file': { type: 'string' },
  proxy: { type: 'string' },
};

const MOUNT_OPTIONS: OptionSpec = {
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
  ...ACCESS_OPTIONS,
};

const REGISTER_OPTIONS: OptionSpec = {
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
const CONFIG_SPEC: ConfigSpec = Object.fromEntries(
  Object.entries({ ...MOUNT_OPTIONS, ...REGISTER_OPTIONS })
    .filter(([k]) => !['all', 'from-file', 'timeout'].includes(k))
    .map(([k, o]) => [k, o.multiple ? 'list' : o.type]),
);

/** The command-line values over those of --config FILE (when given), for `spec`'s keys. */
async function withConfigFile(values: Record<string, unknown>, spec: OptionSpec): Promise<Record<string, unknown>> {
  const file = values.config as string | undefined;
  if (file === undefined) return values;
  const fromFile = await readConfigFile(file, CONFIG_SPEC);
  const known = Object.fromEntries(Object.entries(fromFile).filter(([k]) => k in spec));
  return mergeConfig(values, known);
}

/** --ssl-cert-file, else Nix's environment defaults (NIX_SSL_CERT_FILE, SSL_CERT_FILE). */
function sslCertFile(values: Record<string, unknown>): string | undefined {
  const given = values['ssl-cert-file'] as string | undefined;
  return given ?? (process.env.NIX_SSL_CERT_FILE || undefined) ?? (process.env.SSL_CERT_FILE || undefined);
}

async function mountCommand(args: string[]): Promise<number> {
  const parsed = parse(args, { ...MOUNT_OPTIONS, config: { type: 'string' } });
  const positionals = parsed.positionals;
  if (parsed.values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new NarfsError('ERR_USAGE', 'narfs mount takes exactly one mountpoint');
  const values = await withConfigFile(parsed.values, MOUNT_OPTIONS);
  const config = buildMountConfig({
    mountpoint: positionals[0]!,
    datalake: values.datalake as string[] | undefined,
    trustedPublicKeys: values['trusted-public-keys'] as string[] | undefined,
    noRequireSigs: values['require-sigs'] === false,
    cacheDir: values['cache-dir'] as string | undefined,
    opTimeout: values['op-timeout'] as string | undefined,
    negativeTtl: values['negative-ttl'] as string | undefined,
    lower: values.lower as string | undefined,
    lowerSocket: values['lower-socket'] as string | undefined,
    allowOther: values['allow-other'] as boolean | undefined,
    decompressJobs: values['decompress-jobs'] as string | undefined,
    fuseBackend: values['fuse-backend'] as string | undefined,
    logFormat: values['log-format'] as string | undefined,
    netrcFile: values['netrc-file'] as string | undefined,
    bearerTokenFile: values['bearer-token-file'] as string[] | undefined,
    sslCertFile: sslCertFile(values),
    proxy: values.proxy as string | undefined,
    metricsListen: values['metrics-listen'] as string | undefined,
  });
  const logger = createLogger({ format: config.logFormat });
  const { startMount } = await import('../daemon/mount-daemon.js');
  const { forceUnmount } = await import('../fuse/fuse-native-mount.js');
  const mount = await startMount(config, logger);
  process.stdout.write(`narfs: mounted ${mount.mountpoint} (datalakes: ${config.datalakes.length}, cache: ${config.cacheDir})\n`);
  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals === 1) {
        // Under systemd, a restart keeps the mount (restart-state.ts); anything else unmounts.
        mount.shouldHandOver().then((handOver) => {
          logger.info(handOver ? 'restarting: leaving the mount to the next process' : 'unmounting', { signal: sig });
          return handOver ? mount.handover() : mount.close();
        }).then(() => resolve(0), (err) => {
          logger.error('clean shutdown failed', { err });
          resolve(1);
        });
      } else {
        logger.warn('second signal: forcing the unmount', { signal: sig });
        forceUnmount(mount.mountpoint, { abort: true }).finally(() => process.exit(1));
      }
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

async function registerCommand(args: string[]): Promise<number> {
  const parsed = parse(args, { ...REGISTER_OPTIONS, config: { type: 'string' } });
  const positionals = parsed.positionals;
  if (parsed.values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const values = await withConfigFile(parsed.values, REGISTER_OPTIONS);
  const lower = values.lower as string | undefined;
  if (!lower) throw new NarfsError('ERR_USAGE', 'narfs register needs --lower DIR');
  const roots = [...positionals];
  for (const f of (values['from-file'] as string[] | undefined) ?? []) {
    const text = await readFile(f, 'utf8').catch((err) => {
      throw new NarfsError('ERR_USAGE', `cannot read ${f}: ${(err as Error).message}`);
    });
    roots.push(...text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean));
  }
  const all = values.all === true;
  const cacheDir = (values['cache-dir'] as string | undefined) ?? DEFAULT_CACHE_DIR;
  const timeoutMs = values.timeout ? parseDuration(values.timeout as string, '--timeout') : 10 * 60_000;
  const logger = createLogger({ format: values['log-format'] === 'json' ? 'json' : 'text' });
  const { resolve } = await import('node:path');
  const request = { op: 'register', lower: resolve(lower), roots, all };
  const viaDaemon = await callDaemon(cacheDir, request, (l) => {
    const fn = l.level === 'error' ? logger.error : l.level === 'warn' ? logger.warn : logger.info;
    fn(l.msg, l.fields);
  }, timeoutMs);
  let result: Record<string, unknown>;
  if (viaDaemon) {
    result = viaDaemon;
  } else {
    const datalakes = (values.datalake as string[] | undefined) ?? [];
    if (datalakes.length === 0) {
      throw new NarfsError('ERR_USAGE', `no daemon serves ${cacheDir}, and no --datalake was given`,
        { hint: 'Start narfs mount with this --cache-dir, or pass --datalake and --trusted-public-keys.' });
    }
    const keys = ((values['trusted-public-keys'] as string[] | undefined) ?? []).flatMap((k) => parseTrustedPublicKeys(k));
    const datalakeAccess = buildDatalakeAccess({
      netrcFile: values['netrc-file'] as string | undefined,
      bearerTokenFile: values['bearer-token-file'] as string[] | undefined,
      sslCertFile: sslCertFile(values),
      proxy: values.proxy as string | undefined,
    });
    const { openStoreStack } = await import('../daemon/store-stack.js');
    const { runRegister } = await import('../daemon/register-operation.js');
    const stack = await openStoreStack({
      datalakes, trustedPublicKeys: keys, requireSigs: values['require-sigs'] !== false, cacheDir, negativeTtlMs: DEFAULT_NEGATIVE_TTL_MS,
      ...(datalakeAccess ? { datalakeAccess } : {}),
    }, logger);
    const deadline = AbortSignal.timeout(timeoutMs);
    try {
      result = { ...(await runRegister(stack, request, logger, deadline)) };
    } finally {
      await stack.close();
    }
  }
  process.stdout.write(`narfs: registered ${String(result.closure)} paths in ${resolve(lower)} (${String(result.added)} new, ${String(result.alreadyValid)} already valid)\n`);
  return 0;
}

async function verifyCacheCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    'cache-dir': { type: 'string' },
    'log-format': { type: 'string' },
    timeout: { type: 'string' },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new NarfsError('ERR_USAGE', 'narfs verify-cache takes no positional arguments');
  const cacheDir = (values['cache-dir'] as string | undefined) ?? DEFAULT_CACHE_DIR;
  const timeoutMs = values.timeout ? parseDuration(values.timeout as string, '--timeout') : 24 * 3600_000;
  const logger = createLogger({ format: sniffLogFormat(args) });
  const viaDaemon = await callDaemon(cacheDir, { op: 'verify-cache' }, (l) => {
    const fn = l.level === 'error' ? logger.error : l.level === 'warn' ? logger.warn : logger.info;
    fn(l.msg, l.fields);
  }, timeoutMs);
  const result = viaDaemon
    ? (viaDaemon as unknown as VerifyNarCacheResult)
    : await (async () => {
      const { NarCache } = await import('../cache/nar-cache.js');
      const { runVerifyCache } = await import('../daemon/verify-cache-operation.js');
      return runVerifyCache(new NarCache(cacheDir), undefined, logger, AbortSignal.timeout(timeoutMs));
    })();
  const mib = (result.bytes / (1 << 20)).toFixed(1);
  process.stdout.write(`narfs: verified ${result.checked} cached NARs (${mib} MiB): ${result.ok} intact, ${result.dropped.length} damaged and dropped\n`);
  return result.dropped.length === 0 ? 0 : 1;
}

async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { 'cache-dir': { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' } });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new NarfsError('ERR_USAGE', 'narfs status takes no positional arguments');
  const cacheDir = (values['cache-dir'] as string | undefined) ?? DEFAULT_CACHE_DIR;
  const timeoutMs = values.timeout ? parseDuration(values.timeout as string, '--timeout') : 60_000;
  const answer = await callDaemon(cacheDir, { op: 'status' }, () => {}, timeoutMs);
  if (!answer) {
    throw new NarfsError('ERR_CONTROL', `no narfs daemon serves ${cacheDir}`, { hint: 'Start narfs mount (or narfs.service), or pass the --cache-dir it uses.' });
  }
  const { type: _type, ...status } = answer;
  const st = status as unknown as NarfsStatus;
  process.stdout.write(values.json ? JSON.stringify(st) + '\n' : formatStatus(st));
  return st.datalakes.every((d) => d.up) ? 0 : 3;
}

/** `narfs status` for people: one fact per line. */
export function formatStatus(st: NarfsStatus): string {
  const pct = (r: number | undefined) => (r === undefined ? 'n/a' : `${(r * 100).toFixed(1)}%`);
  const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  const lines = [
    `narfs ${st.mountpoint} (pid ${st.pid}, ${st.backend} engine, up ${st.uptimeSeconds}s)`,
    'datalakes:',
    ...st.datalakes.map((d) => `  ${d.up ? 'up  ' : 'DOWN'} ${d.url}${d.priority === undefined ? '' : ` (priority ${d.priority})`}` +
      (d.up ? '' : ` since ${d.downSince ?? '?'}, ${d.failedProbes} failed probes${d.error ? `: ${d.error.code} ${d.error.message}` : ''}`)),
    `cache: ${st.cache.dir}, ${mib(st.cache.sizeBytes)} on disk`,
    `narinfo cache: ${st.narinfoCache.hits} hits, ${st.narinfoCache.misses} misses (hit rate ${pct(st.narinfoCache.hitRate)})`,
    `NAR cache: ${st.narCache.hits} hits, ${st.narCache.fetches} fetches, ${st.narCache.fetchErrors} failed (hit rate ${pct(st.narCache.hitRate)})`,
    `fetched: ${mib(st.narCache.bytesFetched)} of NARs (${mib(st.narCache.bytesDownloaded)} downloaded), ${st.narCache.inFlight} in flight`,
    `fuse: ${st.fuse.openFiles} open files, ${st.fuse.inodes} inodes, ${st.fuse.processOpenFds ?? '?'} process fds` +
      (st.fuse.engine ? `; requests ${st.fuse.engine.inC} in C, ${st.fuse.engine.toJs} in JS; ${st.fuse.engine.readsInC} reads in C (${mib(st.fuse.engine.bytesInC)})` : ''),
  ];
  if (st.lower) lines.push(`lower store: ${st.lower.root}, db generation ${st.lower.generation ? `inode ${st.lower.generation.ino}, written ${st.lower.generation.mtime}` : 'none yet'}`);
  if (st.lowerSocket) lines.push(`lower-store socket: ${st.lowerSocket}`);
  return lines.join('\n') + '\n';
}
