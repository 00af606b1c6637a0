/**
 * The `narfs` command line: argv → command, exit codes, and errors printed with their
 * stable code and hint.
 *
 * Modules that only one command needs (the daemon, the store stack, the datalake clients)
 * are imported inside that command, so `narfs register` through a running daemon and the
 * other short commands start without loading them (start-up time counts: issue 13).
 *
 * Exit codes: 0 success (also after a clean unmount on SIGINT/SIGTERM, and after a start
 * that such a signal stopped: what was mounted is unmounted, the caches closed, and after
 * the mount was unmounted from outside), 1 failure (also when the mount's FUSE connection
 * was aborted), 2 usage error.
 */
import { NarfsError, toNarfsError } from '../errors.js';
import { resolve as resolvePath } from 'node:path';
import { createLogger, formatErrorReport, type LogFormat, type Logger } from '../log.js';
import { buildDatalakeAccess, buildMountConfig, type MountConfig, DEFAULT_CACHE_DIR, DEFAULT_NEGATIVE_TTL_MS, defaultCacheMaxBytes, parseDuration, parseSize } from '../config/mount-config.js';
import { MOUNT_OPTIONS, parseOptions, sniffLogFormat, withConfigFile } from '../config/command-options.js';
import { parseRegisterInvocation, registeredLine } from '../config/register-invocation.js';
import type { GcResult } from '../daemon/gc-operation.js';
import { defaultCacheDir, ensurePrivateDir } from '../config/user-dirs.js';
import { parseTrustedPublicKeys } from '../nix/signature.js';
import { callDaemon } from './control-client.js';
import type { VerifyCacheResult } from '../daemon/verify-cache-operation.js';
import type { NarfsStatus } from '../daemon/status-operation.js';
import type { RunningMount } from '../daemon/mount-daemon.js';

export { sniffLogFormat };

const HELP = `narfs — a lazily materialised /nix/store over FUSE

Usage:
  narfs mount <mountpoint> --datalake URL [--datalake URL ...] [options]
  narfs mount <mountpoint> --config FILE [options]
  narfs register --lower DIR [<store path> ...] [--from-file FILE] [--all] [options]
  narfs verify-cache [--cache-dir DIR] [--log-format text|json]
  narfs gc [--cache-dir DIR] [--max-size SIZE]
  narfs prefetch [--cache-dir DIR] [--detach] [--trace FILE ...] [<store path> ...]
  narfs status [--cache-dir DIR] [--json]
  narfs index --secret-key-file KEY [--seekable] [--chunk-size N] DATALAKE_URL [store path ...]
  narfs --help

narfs mount options:
  --datalake URL              a Nix binary cache: file:///dir, http(s)://host/path
                              (repeatable; asked in Priority order, falling through)
  --trusted-public-keys KEYS  whitespace-separated name:base64 keys (repeatable)
  --no-require-sigs           accept paths without a valid trusted signature
  --cache-dir DIR             verified files and metadata (default /var/cache/narfs as root,
                              else $XDG_CACHE_HOME/narfs, mode 0700)
  --slice FILE|URL            show only the closures of the store paths listed there (one
                              per line, # comments); a URL is fetched with the datalake
                              credentials of its host and kept in the cache for offline use
  --slice-refresh DURATION    how often the slice list is fetched again (default 300s;
                              conditional: ETag / If-Modified-Since)
  --cache-max-size SIZE       bound on the file contents cached (500M, 2G…; default 10%
                              of the cache filesystem, at least 1G unless it is smaller);
                              least recently used files are evicted, never open ones
  --op-timeout DURATION       bound of a FUSE request waiting on a datalake (default 30s)
  --negative-ttl DURATION     how long a missing path is remembered (default 30s)
  --lower DIR                 root of the lower store whose database lists registered paths
  --lower-socket PATH         also serve the datalakes as a Nix lower store on this Unix
                              socket (local-overlay://?lower-store=unix://PATH&...)
  --allow-other / --no-allow-other   let other users in (default: on when root)
  --decompress-jobs N         xz/bzip2 decompressor processes at once (default 2 x cores)
  --fuse-backend native|fuse-native  FUSE engine (default native; fuse-native is the libfuse 2 fallback)
  --fuse-transport dev|uring  how the native engine talks to the kernel: /dev/fuse (default)
                              or FUSE over io_uring (6.14+, needs the fuse module parameter
                              enable_uring=Y; not kept across restarts)
  --no-passthrough            never use FUSE passthrough for cached files (native engine;
                              default: used as root where the kernel offers it)
  --log-format text|json      log line format on stderr (default text)
  --metrics-listen HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics
                              (off by default; e.g. 127.0.0.1:9477)
  --no-indexes                ignore published per-file indexes (<hash>.narfs-index):
                              fetch every store path's whole NAR on its first read
  --record-trace FILE         write the files this mount reads, in order, to FILE
  --prefetch-trace FILE       at start, fetch in the background the files FILE lists
                              (a trace written by --record-trace on an earlier mount)
  --lazy-fetch KEY=V[,KEY=V]  tune ranged fetches of indexed paths: neighbour-bytes (1M:
                              small siblings fetched along with a miss; 0 = off),
                              neighbour-file-bytes (128K), subtree-bytes (8M: the small
                              files of a directory whose subdirectories are being read,
                              fetched at once if they fit; 0 = off), escalate-share (0.25: fetch the
                              rest of a path in bulk once this share was read; 0 = off),
                              escalate-streak (8: ... or after this many misses walking it
                              in order; 0 = off), walk-whole-bytes (256M: a walked path
                              whose NAR file is at most this size is fetched whole, not
                              by range; 0 = off), bulk-request-bytes (8M), bulk-concurrency
                              (64 requests queued per path), stage-bytes (64M: fetched small
                              files held in memory until written to the cache),
                              warm-references (4: narinfos and indexes of a resolved path's
                              references fetched this many at once; 0 = off),
                              neighbour-after-misses (1: neighbours from a directory's Nth miss)

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
                              URLs with credentials out of the command line. A normal
                              user's $XDG_CONFIG_HOME/narfs/narfs.conf is read by default

narfs register options (registers the whole closure of each root as valid paths in the
lower store's database, in one transaction; through the running daemon of --cache-dir
when there is one, else alone with the same --datalake/--trusted-public-keys options):
  --lower DIR                 root of the lower store (its db is DIR/nix/var/nix/db)
  --from-file FILE            roots, one per line (# comments allowed)
  --all                       every store path of the listable (file://) datalakes
  --timeout DURATION          bound of the whole registration (default 10m)

narfs verify-cache re-hashes every cached file against its SHA-256 (its name), every chunk
of a partly fetched file against its recorded hash and every tree against its checksum,
and drops the damaged ones (they are fetched again on the next read).
Through the running daemon of --cache-dir when there is one, else alone. Exit 0 when all
were intact, 1 when some were dropped.

narfs gc trims the cache to --max-size (default: the mount's default bound) by evicting
the least recently used files; through the running daemon of --cache-dir when there is
one (never evicting what it has open), else alone.

narfs prefetch fetches the closures of the given store paths into the cache of the
daemon serving --cache-dir, while its mount keeps serving: files of indexed paths by
range, other paths whole. --trace FILE (repeatable) first fetches the files a read trace
lists (written by --record-trace on an earlier mount: "prefetch what this job read last
time"); this command reads FILE and sends its entries, so the daemon need not be able to
open it. A progress bar on a TTY; --detach returns once the daemon accepted and leaves it
to the daemon (its log says 'prefetch trace replayed'). Exit 0 when every path was
fetched and not every file of the traces failed, 1 otherwise.

narfs status asks the daemon serving --cache-dir (default /var/cache/narfs) for its
datalakes and their health, cache size, hit rates, bytes fetched, fetches in flight, open
files, inodes and the lower store's generation; --json prints the daemon's answer as it
is. Exit 0 when every datalake is up, 3 when some is down, 1 when no daemon answers.

The mount stays in the foreground, prints one line when ready, logs one line per
materialised store path, and unmounts on SIGINT/SIGTERM (a second signal forces it). A
signal while it is still starting stops the start cleanly (exit 0, nothing left mounted).
Unmounted from outside (umount, fusermount -u), the daemon stops too (exit 0); when its
FUSE connection is aborted, it detaches the dead mount and exits 1.
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
      case 'gc':
        return await gcCommand(rest);
      case 'index':
        return await (await import('../index/index-command.js')).indexCommand(rest);
      case 'prefetch': {
        const { parsePrefetchInvocation } = await import('../config/prefetch-invocation.js');
        const inv = parsePrefetchInvocation(rest);
        if (inv.help) { process.stdout.write(HELP); return 0; }
        const { prefetchCommand } = await import('./prefetch-command.js');
        return await prefetchCommand(inv);
      }
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
  process.stderr.write(formatErrorReport(err, format));
}

/** --ssl-cert-file, else Nix's environment defaults (NIX_SSL_CERT_FILE, SSL_CERT_FILE). */
function sslCertFile(values: Record<string, unknown>): string | undefined {
  const given = values['ssl-cert-file'] as string | undefined;
  return given ?? (process.env.NIX_SSL_CERT_FILE || undefined) ?? (process.env.SSL_CERT_FILE || undefined);
}

async function mountCommand(args: string[]): Promise<number> {
  const parsed = parseOptions(args, { ...MOUNT_OPTIONS, config: { type: 'string' } });
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
    cacheDir: (values['cache-dir'] as string | undefined) ?? defaultCacheDir(),
    opTimeout: values['op-timeout'] as string | undefined,
    negativeTtl: values['negative-ttl'] as string | undefined,
    lower: values.lower as string | undefined,
    lowerSocket: values['lower-socket'] as string | undefined,
    allowOther: values['allow-other'] as boolean | undefined,
    decompressJobs: values['decompress-jobs'] as string | undefined,
    fuseBackend: values['fuse-backend'] as string | undefined,
    passthrough: values.passthrough as boolean | undefined,
    fuseTransport: values['fuse-transport'] as string | undefined,
    logFormat: values['log-format'] as string | undefined,
    netrcFile: values['netrc-file'] as string | undefined,
    bearerTokenFile: values['bearer-token-file'] as string[] | undefined,
    sslCertFile: sslCertFile(values),
    proxy: values.proxy as string | undefined,
    metricsListen: values['metrics-listen'] as string | undefined,
    cacheMaxSize: values['cache-max-size'] as string | undefined,
    noIndexes: values.indexes === false,
    recordTrace: values['record-trace'] as string | undefined,
    prefetchTrace: values['prefetch-trace'] as string | undefined,
    lazyFetch: values['lazy-fetch'] as string | undefined,
    slice: values.slice as string | undefined,
    sliceRefresh: values['slice-refresh'] as string | undefined,
  });
  // The cache is bounded for everyone: --cache-max-size, else a share of the cache's
  // filesystem (store-stack.ts, defaultCacheMaxBytes), which suits a laptop's disk too.
  if (values['cache-dir'] === undefined && process.getuid?.() !== 0) await ensurePrivateDir(config.cacheDir);
  const logger = createLogger({ format: config.logFormat });
  return runMount(config, logger);
}

/**
 * Runs the mount until SIGINT/SIGTERM. The handlers are installed before anything starts:
 * a first signal during start-up aborts it (startMount unmounts what it mounted and closes
 * the caches, then rejects with ERR_ABORTED: exit 0); once mounted, it unmounts (or hands
 * the mount over under a systemd restart). A second signal forces the unmount and exits 1.
 */
async function runMount(config: MountConfig, logger: Logger): Promise<number> {
  const mountpoint = resolvePath(config.mountpoint);
  const starting = new AbortController();
  let mount: RunningMount | undefined;
  let signals = 0;
  let stopped: ((code: number) => void) | undefined;
  const done = new Promise<number>((resolve) => { stopped = resolve; });
  /** Ends the run with `code` once `shutdown` is done (1 if it failed). */
  const finish = (shutdown: Promise<void>, code: number) => shutdown.then(() => stopped!(code), (err) => {
    logger.error('clean shutdown failed', { err });
    stopped!(1);
  });
  const stop = (m: RunningMount, sig: NodeJS.Signals) => {
    // Under systemd, a restart keeps the mount (restart-state.ts); anything else unmounts.
    void finish(m.shouldHandOver().then((handOver) => {
      logger.info(handOver ? 'restarting: leaving the mount to the next process' : 'unmounting', { signal: sig });
      return handOver ? m.handover() : m.close();
    }), 0);
  };
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      if (mount) return stop(mount, sig);
      logger.info('stopping during start-up', { signal: sig });
      starting.abort(new NarfsError('ERR_ABORTED', `narfs mount was stopped by ${sig} while starting`));
    } else {
      logger.warn('second signal: forcing the unmount', { signal: sig });
      import('../fuse/fuse-native-mount.js')
        .then(({ forceUnmount }) => forceUnmount(mountpoint, { abort: true }))
        .finally(() => process.exit(1));
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const { startMount } = await import('../daemon/mount-daemon.js');
    mount = await startMount(config, logger, starting.signal);
  } catch (e) {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    const err = toNarfsError(e);
    // The stop that was asked for: what had started was taken down by startMount.
    if (starting.signal.aborted && err.code === 'ERR_ABORTED') return 0;
    throw err;
  }
  // A signal is handled between tasks, so one that came during the start was seen by it;
  // should one still have slipped past its last check, the mount stops at once.
  if (starting.signal.aborted) stop(mount, 'SIGTERM');
  else process.stdout.write(`narfs: mounted ${mount.mountpoint} (datalakes: ${config.datalakes.length}, cache: ${config.cacheDir})\n`);
  // The kernel ended the mount without us (unmounted by someone else, or its connection
  // aborted): nothing is left to serve, so stop as libfuse daemons do, releasing the
  // cache for the next mount. A plain unmount exits 0; an aborted connection (its dead
  // mount detached) exits 1, so a service manager restarts the mount.
  const running = mount;
  void running.ended.then(({ errno, stale }) => {
    if (signals > 0) return;
    signals++;
    const failed = stale || errno !== 0;
    const how = stale ? 'its FUSE connection was aborted (the dead mount was detached)' : 'it was unmounted from outside';
    (failed ? logger.error : logger.warn)(`${running.mountpoint}: ${how}; stopping`, { mountpoint: running.mountpoint, errno });
    void finish(running.close(), failed ? 1 : 0);
  });
  return done;
}

async function registerCommand(args: string[]): Promise<number> {
  const inv = await parseRegisterInvocation(args);
  if (inv.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const { request, cacheDir, timeoutMs, values } = inv;
  const logger = createLogger({ format: inv.logFormat });
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
  process.stdout.write(registeredLine(result, request.lower));
  return 0;
}

async function verifyCacheCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions(args, {
    'cache-dir': { type: 'string' },
    'log-format': { type: 'string' },
    timeout: { type: 'string' },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new NarfsError('ERR_USAGE', 'narfs verify-cache takes no positional arguments');
  const cacheDir = (values['cache-dir'] as string | undefined) ?? defaultCacheDir();
  const timeoutMs = values.timeout ? parseDuration(values.timeout as string, '--timeout') : 24 * 3600_000;
  const logger = createLogger({ format: sniffLogFormat(args) });
  const viaDaemon = await callDaemon(cacheDir, { op: 'verify-cache' }, (l) => {
    const fn = l.level === 'error' ? logger.error : l.level === 'warn' ? logger.warn : logger.info;
    fn(l.msg, l.fields);
  }, timeoutMs);
  const result = viaDaemon
    ? (viaDaemon as unknown as VerifyCacheResult)
    : await (async () => {
      const { withOfflineCache } = await import('../daemon/offline-cache.js');
      const { runVerifyCache } = await import('../daemon/verify-cache-operation.js');
      return withOfflineCache(cacheDir, logger, ({ blobs, trees }) => runVerifyCache(blobs, trees, logger, AbortSignal.timeout(timeoutMs)));
    })();
  const mib = (result.bytes / (1 << 20)).toFixed(1);
  process.stdout.write(`narfs: verified ${result.checked} cached files and trees (${mib} MiB): ${result.ok} intact, ${result.dropped.length} damaged and dropped\n`);
  return result.dropped.length === 0 ? 0 : 1;
}

async function gcCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions(args, {
    'cache-dir': { type: 'string' },
    'max-size': { type: 'string' },
    'log-format': { type: 'string' },
    timeout: { type: 'string' },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new NarfsError('ERR_USAGE', 'narfs gc takes no positional arguments');
  const cacheDir = (values['cache-dir'] as string | undefined) ?? defaultCacheDir();
  const maxBytes = values['max-size'] === undefined ? undefined : parseSize(values['max-size'] as string, '--max-size');
  const timeoutMs = values.timeout ? parseDuration(values.timeout as string, '--timeout') : 3600_000;
  const logger = createLogger({ format: sniffLogFormat(args) });
  const viaDaemon = await callDaemon(cacheDir, { op: 'gc', ...(maxBytes === undefined ? {} : { maxBytes }) }, (l) => {
    const fn = l.level === 'error' ? logger.error : l.level === 'warn' ? logger.warn : logger.info;
    fn(l.msg, l.fields);
  }, timeoutMs);
  const result = viaDaemon
    ? (viaDaemon as unknown as GcResult)
    : await (async () => {
      const { withOfflineCache } = await import('../daemon/offline-cache.js');
      const { runGc } = await import('../daemon/gc-operation.js');
      const { statfs } = await import('node:fs/promises');
      const bound = maxBytes ?? await statfs(cacheDir).then((st) => defaultCacheMaxBytes(st.blocks * st.bsize));
      return withOfflineCache(cacheDir, logger, ({ blobs, pending }) => runGc(blobs, bound, logger, pending));
    })();
  const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  process.stdout.write(`narfs: gc freed ${mib(result.freed)} (${result.evicted} files); the cache holds ${mib(result.after)} of ${mib(result.maxBytes)}\n`);
  return 0;
}

async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOptions(args, { 'cache-dir': { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' } });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length > 0) throw new NarfsError('ERR_USAGE', 'narfs status takes no positional arguments');
  const cacheDir = (values['cache-dir'] as string | undefined) ?? defaultCacheDir();
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
    `cache: ${st.cache.dir}, ${mib(st.cache.sizeBytes)} on disk` + (st.cache.files
      ? `; files ${mib(st.cache.files.bytes)} of ${mib(st.cache.files.maxBytes)} (${st.cache.files.blobs} whole, ${st.cache.files.partials} partial), ` +
        `${st.cache.files.evictions} evicted, ${st.cache.files.dedupeHits} shared (${mib(st.cache.files.dedupeBytes)} saved)` : ''),
    ...(st.ranged ? [`ranged reads: ${st.ranged.requests} requests (${mib(st.ranged.requestBytes)}), ${st.ranged.chunksDelivered} chunks verified, ` +
      `${st.ranged.mismatches} rejected; reads in JS: ${st.ranged.rangedReads} by range, ${st.ranged.wholeNarReads} from whole NARs`] : []),
    `narinfo cache: ${st.narinfoCache.hits} hits, ${st.narinfoCache.misses} misses (hit rate ${pct(st.narinfoCache.hitRate)})`,
    `NAR cache: ${st.narCache.hits} hits, ${st.narCache.fetches} fetches, ${st.narCache.fetchErrors} failed (hit rate ${pct(st.narCache.hitRate)}); `
      + `${st.narCache.keptReads} read back from NARs kept at the last stop (${st.narCache.keptRefused} refused), ${st.narCache.kept?.nars ?? 0} kept now`,
    `fetched: ${mib(st.narCache.bytesFetched)} of NARs (${mib(st.narCache.bytesDownloaded)} downloaded), ${st.narCache.inFlight} in flight`,
    `fuse: ${st.fuse.openFiles} open files, ${st.fuse.inodes} inodes, ${st.fuse.processOpenFds ?? '?'} process fds` +
      (st.fuse.engine ? `; requests ${st.fuse.engine.inC} in C, ${st.fuse.engine.toJs} in JS; ${st.fuse.engine.readsInC} reads in C (${mib(st.fuse.engine.bytesInC)})` +
        `; passthrough ${st.fuse.engine.passthroughEnabled ? `on: ${st.fuse.engine.passthroughOpens} opens, ${st.fuse.engine.backingLive} backing files` : 'off'}` +
        `; transport ${st.fuse.engine.uringActive ? `io_uring: ${st.fuse.engine.uringQueues} queues, ${st.fuse.engine.uringRequests} requests` : '/dev/fuse'}` : ''),
  ];
  if (st.lower) lines.push(`lower store: ${st.lower.root}, db generation ${st.lower.generation ? `inode ${st.lower.generation.ino}, written ${st.lower.generation.mtime}` : 'none yet'}`);
  if (st.lowerSocket) lines.push(`lower-store socket: ${st.lowerSocket}`);
  return lines.join('\n') + '\n';
}
