/**
 * The client side of the daemon's control socket (see src/daemon/control-server.ts).
 *
 * Invariant: `undefined` means "no daemon serves this cache directory" (no socket, or a
 * stale one), so the caller may work alone; any other failure is an error. The whole
 * exchange is bounded by `timeoutMs`.
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import { NarfsError } from '../errors.js';
import { CONTROL_SOCKET } from '../daemon/control-server.js';

export interface ControlLog { level: string; msg: string; fields?: Record<string, unknown> }

export async function callDaemon(
  cacheDir: string, request: Record<string, unknown>, onLog: (l: ControlLog) => void, timeoutMs: number,
): Promise<Record<string, unknown> | undefined> {
  const path = join(cacheDir, CONTROL_SOCKET);
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let buf = '';
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new NarfsError('ERR_DEADLINE', `the daemon did not finish within ${timeoutMs} ms`))), timeoutMs);
    socket.once('connect', () => socket.write(JSON.stringify(request) + '\n'));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') finish(() => resolve(undefined));
      else finish(() => reject(new NarfsError('ERR_CONTROL', `control socket ${path}: ${err.message}`, { cause: err })));
    });
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if (msg.type === 'log') onLog(msg as unknown as ControlLog);
        else if (msg.type === 'result') finish(() => resolve(msg));
        else if (msg.type === 'error') {
          const code = String(msg.code) as ConstructorParameters<typeof NarfsError>[0];
          finish(() => reject(new NarfsError(code, String(msg.message), { hint: String(msg.hint) })));
        }
      }
    });
    socket.on('close', () => finish(() => reject(new NarfsError('ERR_CONTROL', 'the daemon closed the control socket without an answer'))));
  });
}
