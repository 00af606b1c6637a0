/**
 * startMetricsServer: the Prometheus scrape endpoint of `narfs mount --metrics-listen
 * HOST:PORT` (off by default). `GET /metrics` answers the registry in the text exposition
 * format 0.0.4 (src/daemon/metrics.ts); any other path is 404, any other method 405.
 *
 * Invariants: it listens only where it is told (the CLI accepts loopback and explicit
 * addresses, never a default of all interfaces); a scrape reads counters and never
 * waits on the store; `close()` drops keep-alive connections so shutdown is not held up.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { NarfsError } from '../errors.js';
import type { MetricsRegistry } from './metrics.js';

export interface MetricsServer {
  /** host:port actually bound (the port is chosen by the kernel when 0 was asked). */
  readonly address: string;
  close(): Promise<void>;
}

/** "127.0.0.1:9477", "[::1]:9477", "localhost:0" → host and port. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new NarfsError('ERR_USAGE', `--metrics-listen is HOST:PORT (e.g. 127.0.0.1:9477), not ${JSON.stringify(s)}`);
  }
  return { host: (m[1] ?? m[2])!, port };
}

export async function startMetricsServer(listen: string, registry: MetricsRegistry): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const body = registry.expose();
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new NarfsError('ERR_USAGE', `cannot listen on ${listen} for metrics: ${err.message}`, { cause: err, hint: 'Choose a free port, or an address of this machine (127.0.0.1:PORT).' })));
    server.listen(port, host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
