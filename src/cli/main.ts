/**
 * The `narfs` command line: argv → command, exit codes, and errors printed with their
 * stable code and hint.
 *
 * Exit codes: 0 success (also after a clean unmount on SIGINT/SIGTERM), 1 failure,
 * 2 usage error.
 */
import { parseArgs } from 'node:util';
import { NarfsError, toNarfsError } from '../errors.js';
import { createLogger, type LogFormat } from '../log.js';
import { buildMountConfig } from '../config/mount-config.js';
import { startMount } from '../daemon/mount-daemon.js';
import { forceUnmount } from '../fuse/fuse-native-mount.js';

const HELP = `narfs — a lazily materialised /nix/store over FUSE

Usage:
  narfs mount <mountpoint> --datalake URL [--datalake URL ...] [options]
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
  --allow-other / --no-allow-other   let other users in (default: on when root)
  --log-format text|json      log line format on stderr (default text)

The mount stays in the foreground, prints one line when ready, logs one line per
materialised store path, and unmounts on SIGINT/SIGTERM (a second signal forces it).
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP);
    return command ? 0 : 2;
  }
  const format: LogFormat = rest.includes('json') && rest.includes('--log-format') ? 'json' : 'text';
  try {
    switch (command) {
      case 'mount':
        return await mountCommand(rest);
      default:
        throw new NarfsError('ERR_USAGE', `unknown command "${command}"`);
    }
  } catch (e) {
    const err = toNarfsError(e);
    printError(err, format);
    return err.code === 'ERR_USAGE' ? 2 : 1;
  }
}

function printError(err: NarfsError, format: LogFormat): void {
  if (format === 'json') {
    process.stderr.write(JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint }) + '\n');
  } else {
    process.stderr.write(`narfs: error ${err.code}: ${err.message}\n  hint: ${err.hint}\n`);
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

async function mountCommand(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    datalake: { type: 'string', multiple: true },
    'trusted-public-keys': { type: 'string', multiple: true },
    'require-sigs': { type: 'boolean' },
    'cache-dir': { type: 'string' },
    'op-timeout': { type: 'string' },
    'negative-ttl': { type: 'string' },
    lower: { type: 'string' },
    'allow-other': { type: 'boolean' },
    'log-format': { type: 'string' },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new NarfsError('ERR_USAGE', 'narfs mount takes exactly one mountpoint');
  const config = buildMountConfig({
    mountpoint: positionals[0]!,
    datalake: values.datalake as string[] | undefined,
    trustedPublicKeys: values['trusted-public-keys'] as string[] | undefined,
    noRequireSigs: values['require-sigs'] === false,
    cacheDir: values['cache-dir'] as string | undefined,
    opTimeout: values['op-timeout'] as string | undefined,
    negativeTtl: values['negative-ttl'] as string | undefined,
    lower: values.lower as string | undefined,
    allowOther: values['allow-other'] as boolean | undefined,
    logFormat: values['log-format'] as string | undefined,
  });
  const logger = createLogger({ format: config.logFormat });
  const mount = await startMount(config, logger);
  process.stdout.write(`narfs: mounted ${mount.mountpoint} (datalakes: ${config.datalakes.length}, cache: ${config.cacheDir})\n`);
  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals === 1) {
        logger.info('unmounting', { signal: sig });
        mount.close().then(() => resolve(0), (err) => {
          logger.error('clean shutdown failed', { err });
          resolve(1);
        });
      } else {
        logger.warn('second signal: forcing the unmount', { signal: sig });
        forceUnmount(mount.mountpoint).finally(() => process.exit(1));
      }
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
