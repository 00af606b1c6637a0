/**
 * BlackholeServer: a TCP listener on 127.0.0.1, port 0, that accepts every connection and
 * never sends a byte — the hard case of a dead datalake (a hung host behind a live port,
 * a proxy that never forwards): connects succeed, only deadlines end the wait.
 *
 * Invariants: it reads and discards what arrives (so the peer's writes never block);
 * `close()` destroys every socket and settles promptly; `connections` counts accepts.
 */
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';

export class BlackholeServer {
  readonly url: string;
  readonly port: number;
  connections = 0;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();

  private constructor(server: net.Server) {
    this.#server = server;
    this.port = (server.address() as AddressInfo).port;
    this.url = `http://127.0.0.1:${this.port}`;
    server.on('connection', (s) => {
      this.connections++;
      this.#sockets.add(s);
      s.on('data', () => {});
      s.on('error', () => {});
      s.once('close', () => this.#sockets.delete(s));
    });
  }

  static async start(): Promise<BlackholeServer> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return new BlackholeServer(server);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}

/** A loopback URL where nothing listens (a port taken from the kernel, then released). */
export async function refusedUrl(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}
