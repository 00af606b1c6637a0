/**
 * The client side of the daemon's control socket (see src/daemon/control-server.ts).
 *
 * Invariants: `undefined` means "no daemon serves this cache directory" (no socket, or a
 * stale one), so the caller may work alone; any other failure is an error. The whole
 * exchange is bounded by `timeoutMs`. The daemon's error arrives as it was raised: code,
 * message, hint and details (a code this build does not know becomes ERR_CONTROL). A line
 * that is not a JSON message of the protocol, or one longer than 1 MiB, ends the call
 * with ERR_CONTROL.
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import { NarfsError } from '../errors.js';
import { CONTROL_SOCKET } from '../daemon/control-socket-path.js';
import { fromWireError } from '../nixdb/wire-error.js';

export interface ControlLog { level: string; msg: string; fields?: Record<string, unknown> }

const MAX_LINE = 1 << 20;

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
    const malformed = (what: string, line: string) => finish(() => reject(new NarfsError('ERR_CONTROL',
      `the daemon on ${path} sent ${what}: ${JSON.stringify(line.slice(0, 120))}${line.length > 120 ? '…' : ''}`,
      { hint: 'The daemon and this command may be different narfs versions; restart the daemon.' })));
    const timer = setTimeout(() => finish(() => reject(new NarfsError('ERR_DEADLINE', `the daemon did not finish within ${timeoutMs} ms`))), timeoutMs);
    socket.once('connect', () => socket.write(JSON.stringify(request) + '\n'));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') finish(() => resolve(undefined));
      else finish(() => reject(new NarfsError('ERR_CONTROL', `control socket ${path}: ${err.message}`, { cause: err })));
    });
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0 && !settled; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg: unknown;
        try {
          msg = JSON.parse(line);
        } catch {
          return malformed('a line that is not JSON', line);
        }
        if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return malformed('a line that is not a JSON object', line);
        const m = msg as Record<string, unknown>;
        if (m.type === 'log') {
          if (typeof m.level !== 'string' || typeof m.msg !== 'string') return malformed('a malformed log line', line);
          const fields = m.fields !== null && typeof m.fields === 'object' && !Array.isArray(m.fields) ? m.fields as Record<string, unknown> : undefined;
          onLog({ level: m.level, msg: m.msg, ...(fields ? { fields } : {}) });
        } else if (m.type === 'result') {
          finish(() => resolve(m));
        } else if (m.type === 'error') {
          finish(() => reject(fromWireError(m, 'ERR_CONTROL')));
        } else {
          return malformed('a message of unknown type', line);
        }
      }
      if (buf.length > MAX_LINE) malformed('a line longer than 1 MiB', buf);
    });
    socket.on('close', () => finish(() => reject(new NarfsError('ERR_CONTROL', 'the daemon closed the control socket without an answer'))));
  });
}
