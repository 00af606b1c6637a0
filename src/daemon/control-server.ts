/**
 * The daemon's control socket: `<cache-dir>/control.sock`, so that commands such as
 * `narfs register` use the running daemon (LevelDB allows one process per cache) instead
 * of opening the cache themselves.
 *
 * Protocol: the client sends one JSON line `{"op":"register", …}` or `{"op":"verify-cache"}`; the server answers
 * with JSON lines `{"type":"log",…}` while it works and ends with one
 * `{"type":"result",…}` or `{"type":"error","code","message","hint"}`, then closes.
 * Invariant: the socket is mode 0600 in a directory only the daemon's user may enter, so
 * no other user can reach it; a stale socket file of a dead daemon is replaced.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { StoreStack } from './store-stack.js';
import { runRegister } from './register-operation.js';
import { runVerifyCache } from './verify-cache-operation.js';

export const CONTROL_SOCKET = 'control.sock';

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

export interface ControlServerOptions {
  stack: StoreStack;
  defaultLower: string | undefined;
  logger: Logger;
}

export async function startControlServer(cacheDir: string, options: ControlServerOptions): Promise<ControlServer> {
  const path = join(cacheDir, CONTROL_SOCKET);
  if (await isLive(path)) throw new NarfsError('ERR_CACHE_LOCKED', `another daemon answers on ${path}`);
  await rm(path, { force: true });
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    handle(socket, options).catch(() => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new NarfsError('ERR_CONTROL', `cannot listen on ${path}`, { cause: err })));
    // Created with no access for others from the first moment, then made exactly 0600.
    const old = process.umask(0o177);
    server.listen(path, () => {
      process.umask(old);
      resolve();
    });
  });
  await chmod(path, 0o600);
  return {
    path,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(path, { force: true });
    },
  };
}

async function handle(socket: Socket, options: ControlServerOptions): Promise<void> {
  const send = (obj: Record<string, unknown>) => {
    if (!socket.destroyed) socket.write(JSON.stringify(obj) + '\n');
  };
  const line = await readLine(socket, 10_000);
  const request = JSON.parse(line) as { op?: string; lower?: string; roots?: unknown; all?: boolean };
  const log: Logger = {
    debug: (msg, fields) => options.logger.debug(msg, fields),
    info: (msg, fields) => { options.logger.info(msg, fields); send({ type: 'log', level: 'info', msg, fields: plain(fields) }); },
    warn: (msg, fields) => { options.logger.warn(msg, fields); send({ type: 'log', level: 'warn', msg, fields: plain(fields) }); },
    error: (msg, fields) => { options.logger.error(msg, fields); send({ type: 'log', level: 'error', msg, fields: plain(fields) }); },
  };
  const aborted = new AbortController();
  socket.on('close', () => aborted.abort(new NarfsError('ERR_ABORTED', 'the client went away')));
  try {
    if (request.op === 'verify-cache') {
      const result = await runVerifyCache(options.stack.nars, options.stack.store, log, aborted.signal);
      send({ type: 'result', ...result });
      return;
    }
    if (request.op !== 'register') throw new NarfsError('ERR_CONTROL', `unknown operation ${String(request.op)}`);
    const lower = request.lower ?? options.defaultLower;
    if (!lower) throw new NarfsError('ERR_USAGE', 'no --lower given, and the daemon has none');
    const roots = Array.isArray(request.roots) ? request.roots.map(String) : [];
    const result = await runRegister(options.stack, { lower, roots, all: request.all === true }, log, aborted.signal);
    send({ type: 'result', ...result });
  } catch (e) {
    const err = toNarfsError(e);
    send({ type: 'error', code: err.code, message: err.message, hint: err.hint });
  } finally {
    socket.end();
  }
}

function plain(fields: Record<string, unknown> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields ?? {})) {
    out[k] = v instanceof Error ? { code: (v as { code?: string }).code, message: v.message } : v;
  }
  return out;
}

function readLine(socket: Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new NarfsError('ERR_DEADLINE', 'no request on the control socket')), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(buf.slice(0, nl));
      } else if (buf.length > 1 << 20) {
        clearTimeout(timer);
        reject(new NarfsError('ERR_CONTROL', 'request too large'));
      }
    });
    const gone = () => { clearTimeout(timer); reject(new NarfsError('ERR_CONTROL', 'the client closed before sending a request')); };
    socket.on('end', gone);
    socket.on('close', gone);
  });
}

/** Whether a daemon answers on `path` (a socket file without a listener is stale). */
export function isLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => { s.destroy(); resolve(false); }, 2000);
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(timer); resolve(false); });
  });
}
