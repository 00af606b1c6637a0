/**
 * The daemon's control socket: `<cache-dir>/control.sock`, so that commands such as
 * `narfs register` use the running daemon (LevelDB allows one process per cache) instead
 * of opening the cache themselves.
 *
 * Protocol: the client sends one JSON line `{"op":"register", …}`, `{"op":"verify-cache"}`,
 * `{"op":"gc","maxBytes":N?}`, `{"op":"prefetch","roots":[…]?,"trace":[…]?,"detach":bool?}` (trace: see
 * trace-wire.ts) or `{"op":"status"}`; the server answers
 * with JSON lines `{"type":"log",…}` while it works and ends with one
 * `{"type":"result",…}` or `{"type":"error","code","message","hint","details"}` (a
 * WireError, src/nixdb/wire-error.ts), then closes. `{"op":"cli",…}` (the fast
 * `narfs register` client) is answered in frames instead, see cli-operation.ts. A request that is not one JSON object
 * on one line (at most 1 MiB, within 10 s) is answered with an ERR_CONTROL error line.
 *
 * Invariants: the socket file is mode 0600 from the moment it has its name — it is bound
 * inside a fresh 0700 directory (mkdtemp) in the cache dir, chmod'ed, then renamed into
 * place, so no other user can ever reach it, and the process umask is never touched (it
 * is process-wide: files created meanwhile by anything else would get it). A socket file
 * of a dead daemon (no answer) is replaced by the rename; a live one is refused.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { NarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import { jsonSafe, toWireError } from '../nixdb/wire-error.js';
import type { StoreStack } from './store-stack.js';
import { runRegister } from './register-operation.js';
import { runVerifyCache } from './verify-cache-operation.js';
import { prefetchWork, startDetached } from './prefetch-request.js';
import { runGc } from './gc-operation.js';
import { runCliRequest } from './cli-operation.js';

import { CONTROL_SOCKET, MAX_CONTROL_REQUEST_BYTES } from './control-socket-path.js';
import { isLive, listenPrivately } from './private-socket.js';

export { CONTROL_SOCKET, isLive };

/** Longest request line the server reads. */

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

export interface ControlServerOptions {
  stack: StoreStack;
  defaultLower: string | undefined;
  logger: Logger;
  /** The daemon's status (op `status`, src/daemon/status-operation.ts). */
  status?: () => Promise<object>;
  /** How long a client may take to send its request line (default 10 s). */
  requestTimeoutMs?: number;
}

export async function startControlServer(cacheDir: string, options: ControlServerOptions): Promise<ControlServer> {
  const path = join(cacheDir, CONTROL_SOCKET);
  if (await isLive(path)) throw new NarfsError('ERR_CACHE_LOCKED', `another daemon answers on ${path}`);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    handle(socket, cacheDir, options).catch((err) => {
      options.logger.warn('control request failed', { err });
      socket.destroy();
    });
  });
  const closeServer = await listenPrivately(server, path, 'ERR_CONTROL', '.control-');
  return {
    path,
    async close() {
      for (const s of sockets) s.destroy();
      await closeServer();
    },
  };
}

async function handle(socket: Socket, cacheDir: string, options: ControlServerOptions): Promise<void> {
  const send = (obj: Record<string, unknown>) => {
    if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(obj) + '\n');
  };
  const aborted = new AbortController();
  socket.on('close', () => aborted.abort(new NarfsError('ERR_ABORTED', 'the client went away')));
  try {
    const request = parseRequest(await readLine(socket, options.requestTimeoutMs ?? 10_000));
    const log: Logger = {
      debug: (msg, fields) => options.logger.debug(msg, fields),
      info: (msg, fields) => { options.logger.info(msg, fields); send({ type: 'log', level: 'info', msg, fields: plain(fields) }); },
      warn: (msg, fields) => { options.logger.warn(msg, fields); send({ type: 'log', level: 'warn', msg, fields: plain(fields) }); },
      error: (msg, fields) => { options.logger.error(msg, fields); send({ type: 'log', level: 'error', msg, fields: plain(fields) }); },
    };
    if (request.op === 'cli') {
      await runCliRequest(socket, request, { stack: options.stack, cacheDir, logger: options.logger, signal: aborted.signal });
      return;
    }
    if (request.op === 'status' && options.status) {
      send({ type: 'result', ...(await options.status()) });
      return;
    }
    if (request.op === 'verify-cache') {
      const result = await runVerifyCache(options.stack.blobs, options.stack.trees, log, aborted.signal);
      send({ type: 'result', ...result });
      return;
    }
    if (request.op === 'gc') {
      const max = request.maxBytes;
      if (max !== undefined && (typeof max !== 'number' || !Number.isSafeInteger(max) || max < 0)) {
        throw new NarfsError('ERR_CONTROL', 'gc: maxBytes must be a non-negative integer');
      }
      send({ type: 'result', ...(await runGc(options.stack.blobs, max, log, options.stack.pending)) });
      return;
    }
    if (request.op === 'prefetch') {
      const roots = Array.isArray(request.roots) ? request.roots.map(String) : [];
      // A trace's entries (narfs prefetch --trace): its module loads only when one comes.
      const trace = request.trace === undefined ? undefined : (await import('./trace-wire.js')).traceFromWire(request.trace);
      if (roots.length === 0 && !trace) throw new NarfsError('ERR_USAGE', 'nothing to prefetch: give store paths or a trace');
      const work = await prefetchWork(options.stack, roots, trace);
      if (request.detach === true) {
        startDetached(options.stack, options.logger, work);
        send({ type: 'result', detached: true });
        return;
      }
      send({ type: 'result', ...(await work(log, aborted.signal)) });
      return;
    }
    if (request.op !== 'register') throw new NarfsError('ERR_CONTROL', `unknown operation ${JSON.stringify(request.op)}`);
    const lower = typeof request.lower === 'string' ? request.lower : options.defaultLower;
    if (!lower) throw new NarfsError('ERR_USAGE', 'no --lower given, and the daemon has none');
    const roots = Array.isArray(request.roots) ? request.roots.map(String) : [];
    const result = await runRegister(options.stack, { lower, roots, all: request.all === true }, log, aborted.signal);
    send({ type: 'result', ...result });
  } catch (e) {
    send({ type: 'error', ...toWireError(e) });
  } finally {
    socket.end();
  }
}

/** The request line as an object; anything else is ERR_CONTROL. */
function parseRequest(line: string): Record<string, unknown> {
  let request: unknown;
  try {
    request = JSON.parse(line);
  } catch (err) {
    throw new NarfsError('ERR_CONTROL', `malformed request line (not JSON): ${JSON.stringify(line.slice(0, 80))}`, { cause: err });
  }
  if (request === null || typeof request !== 'object' || Array.isArray(request)) {
    throw new NarfsError('ERR_CONTROL', 'malformed request line (not a JSON object)');
  }
  return request as Record<string, unknown>;
}

/** Log fields as plain JSON (Errors become their code and message). */
function plain(fields: Record<string, unknown> | undefined): Record<string, unknown> {
  return (jsonSafe(fields ?? {}) ?? {}) as Record<string, unknown>;
}

/** The first line the client sends (without its "\n"), within `timeoutMs`. */
function readLine(socket: Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const settle = (fn: () => void) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', gone);
      socket.off('close', gone);
      fn();
    };
    const timer = setTimeout(() => settle(() => reject(new NarfsError('ERR_DEADLINE', `no request line on the control socket within ${timeoutMs} ms`))), timeoutMs);
    const onData = (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0 && nl <= MAX_CONTROL_REQUEST_BYTES) settle(() => resolve(buf.slice(0, nl)));
      else if (Buffer.byteLength(buf) > MAX_CONTROL_REQUEST_BYTES) settle(() => reject(new NarfsError('ERR_CONTROL', `request line longer than ${MAX_CONTROL_REQUEST_BYTES} bytes`)));
    };
    const gone = () => settle(() => reject(new NarfsError('ERR_CONTROL', 'the client closed before sending a whole request line')));
    socket.setEncoding('utf8');
    socket.on('data', onData);
    socket.on('end', gone);
    socket.on('close', gone);
  });
}

