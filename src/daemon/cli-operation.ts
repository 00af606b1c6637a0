/**
 * runCliRequest: the daemon runs a `narfs register` or `narfs prefetch --detach` command
 * line for the fast client (native/client/fast-client.c), so that it costs no Node start
 * (issue 13: a 36-path closure must not take longer than `nix-store --load-db` of the same
 * rows, ~20 ms, and `node -e 0` alone takes 40-50 ms; issue 10: a job's
 * `narfs prefetch --trace … --detach` races the job's own first reads, which miss until
 * the daemon has the trace: the Node CLI reached the daemon ~170 ms after its start).
 *
 * Request (one JSON line on the control socket, src/daemon/control-server.ts):
 *   {"op":"cli","argv":["register",…],"cwd":"/abs/dir"}
 *   {"op":"cli","argv":["prefetch",…],"cwd":"/abs/dir","files":[["<--trace as given>","<its text>"],…]}
 * Answer: frames, each `TAG SP LENGTH LF` followed by LENGTH bytes of payload:
 *   o  bytes for the client's stdout
 *   e  bytes for the client's stderr
 *   d  `MS TEXT`: the longest the client should wait from now, in ms (decimal), and what
 *      it prints on stderr when it gives up after that (plus its slack); before the work
 *   x  the exit status (decimal); the last frame
 *   f  a reason (text); the last frame: the client runs the Node CLI instead (`--help`,
 *      another command, a command line whose --cache-dir is not this daemon's, a
 *      malformed request)
 * The client decides nothing: the command line is parsed here, with the Node CLI's own
 * parser (src/config/register-invocation.ts), and everything it prints — the log lines in
 * the --log-format asked for, the result line, an error with its code and hint, the exit
 * status — is what `node bin/narfs register …` would print when it goes through this
 * daemon's control socket. Relative paths are resolved against the client's `cwd`; files
 * (--from-file, --config) are read by this process, which only the daemon's own user can
 * reach (the socket is 0600).
 *
 * Invariant: never throws; every request ends with an `x` or an `f` frame unless the
 * client went away (which aborts the registration, as on the JSON path). The registration
 * is bounded by the command's --timeout (default 10 min), after which it is aborted and
 * reported as ERR_DEADLINE, as the Node client reports it.
 */
import { realpath } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import type { Socket } from 'node:net';
import { NarfsError, toNarfsError } from '../errors.js';
import { createLogger, formatErrorReport, type Logger } from '../log.js';
import { sniffLogFormat } from '../config/command-options.js';
import { parseRegisterInvocation, registeredLine } from '../config/register-invocation.js';
import { fromWireError, toWireError } from '../nixdb/wire-error.js';
import { runRegister } from './register-operation.js';
import { DETACHED_LINE, badTraceLinesLine, nothingToPrefetch, parsePrefetchInvocation } from '../config/prefetch-invocation.js';
import { parseDuration } from '../config/mount-config.js';
import { defaultCacheDir } from '../config/user-dirs.js';
import { mergeTraces } from './read-trace.js';
import { prefetchWork, startDetached } from './prefetch-request.js';
import type { StoreStack } from './store-stack.js';

export interface CliRequestContext {
  stack: StoreStack;
  /** The cache directory this daemon serves (its control socket lives there). */
  cacheDir: string;
  /** The daemon's own log. */
  logger: Logger;
  /** Aborts when the client goes away. */
  signal: AbortSignal;
}

type Tag = 'o' | 'e' | 'd' | 'x' | 'f';

export async function runCliRequest(socket: Socket, request: Record<string, unknown>, ctx: CliRequestContext): Promise<void> {
  const frame = (tag: Tag, payload: string) => {
    if (socket.destroyed || !socket.writable) return;
    socket.write(`${tag} ${Buffer.byteLength(payload)}\n${payload}`);
  };
  const { argv, cwd } = request;
  if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string') || typeof cwd !== 'string' || !isAbsolute(cwd)) {
    frame('f', 'malformed cli request');
    return;
  }
  const [command, ...args] = argv as string[];
  if (command !== 'register' && command !== 'prefetch') {
    frame('f', `the daemon runs only "register" and "prefetch --detach", not ${JSON.stringify(command)}`);
    return;
  }
  const format = sniffLogFormat(args);
  const fail = (e: unknown) => {
    // The error as the Node client would print it after the hop over the control socket.
    const err = fromWireError(toWireError(e), 'ERR_CONTROL');
    frame('e', formatErrorReport(err, format));
    frame('x', err.code === 'ERR_USAGE' ? '2' : '1');
  };
  if (command === 'prefetch') {
    await runPrefetchCli(args, request.files, cwd, frame, fail, ctx);
    return;
  }
  let inv;
  try {
    inv = await parseRegisterInvocation(args, cwd);
  } catch (e) {
    fail(e);
    return;
  }
  if (inv.help) {
    frame('f', '--help');
    return;
  }
  if (!(await sameDirectory(inv.cacheDirAbsolute, ctx.cacheDir))) {
    frame('f', `--cache-dir ${inv.cacheDir} is not this daemon's`);
    return;
  }
  const deadlineError = new NarfsError('ERR_DEADLINE', `the daemon did not finish within ${inv.timeoutMs} ms`);
  frame('d', `${inv.timeoutMs} ${formatErrorReport(deadlineError, format)}`);
  const toClient = createLogger({ format: inv.logFormat, write: (line) => frame('e', line) });
  const log: Logger = {
    debug: (msg, fields) => ctx.logger.debug(msg, fields),
    info: (msg, fields) => { ctx.logger.info(msg, fields); toClient.info(msg, fields); },
    warn: (msg, fields) => { ctx.logger.warn(msg, fields); toClient.warn(msg, fields); },
    error: (msg, fields) => { ctx.logger.error(msg, fields); toClient.error(msg, fields); },
  };
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(deadlineError), inv.timeoutMs);
  try {
    const signal = AbortSignal.any([ctx.signal, deadline.signal]);
    const result = await Promise.race([
      runRegister(ctx.stack, inv.request, log, signal),
      new Promise<never>((_, reject) => deadline.signal.addEventListener('abort', () => reject(deadline.signal.reason), { once: true })),
    ]);
    frame('o', registeredLine({ ...result }, inv.request.lower));
    frame('x', '0');
  } catch (e) {
    fail(deadline.signal.aborted ? deadline.signal.reason : toNarfsError(e));
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `narfs prefetch --detach [--trace FILE ...] [<store path> ...]`: the work starts in this
 * daemon as the control op `prefetch` would start it (prefetch-request.ts), and the client
 * prints what the Node CLI prints then. The client sends the traces' texts in `files`
 * (`[[path as given, text], ...]`): it read them with its own rights and in its own mount
 * namespace, as the Node CLI does (trace-wire.ts). Anything else (no --detach: the progress
 * display is the Node CLI's; a trace the client did not send; --help; another cache
 * directory) goes back to the Node CLI with an `f` frame.
 */
async function runPrefetchCli(args: string[], files: unknown, cwd: string, frame: (tag: Tag, payload: string) => void, fail: (e: unknown) => void, ctx: CliRequestContext): Promise<void> {
  let inv;
  try {
    inv = parsePrefetchInvocation(args);
  } catch (e) {
    fail(e);
    return;
  }
  if (inv.help || !inv.detach) {
    frame('f', inv.help ? '--help' : 'prefetch without --detach shows progress: the Node CLI does');
    return;
  }
  const cacheDir = inv.cacheDir ?? defaultCacheDir();
  if (!(await sameDirectory(resolve(cwd, cacheDir), ctx.cacheDir))) {
    frame('f', `--cache-dir ${cacheDir} is not this daemon's`);
    return;
  }
  const sent = new Map<string, string>();
  if (Array.isArray(files)) {
    for (const f of files as unknown[]) {
      if (Array.isArray(f) && f.length === 2 && typeof f[0] === 'string' && typeof f[1] === 'string') sent.set(f[0], f[1]);
    }
  }
  const texts: string[] = [];
  for (const t of inv.traces) {
    const text = sent.get(t);
    if (text === undefined) {
      frame('f', `the trace ${t} was not sent`);
      return;
    }
    texts.push(text);
  }
  // In the Node CLI's order (prefetch-command.ts), so that the same lines come out.
  try {
    if (inv.roots.length === 0 && texts.length === 0) throw nothingToPrefetch();
    const trace = texts.length > 0 ? mergeTraces(texts) : undefined;
    if (trace && trace.bad > 0) frame('e', badTraceLinesLine(trace.bad));
    if (inv.timeout !== undefined) parseDuration(inv.timeout, '--timeout');
    startDetached(ctx.stack, ctx.logger, await prefetchWork(ctx.stack, inv.roots, trace?.entries));
    frame('e', DETACHED_LINE);
    frame('x', '0');
  } catch (e) {
    fail(e);
  }
}

/** Do `a` and `b` name the same existing directory? */
async function sameDirectory(a: string, b: string): Promise<boolean> {
  try {
    const [ra, rb] = await Promise.all([realpath(a), realpath(b)]);
    return ra === rb;
  } catch {
    return false;
  }
}
