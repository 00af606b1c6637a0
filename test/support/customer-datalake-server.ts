/**
 * CustomerDatalakeServer: a hosted build service's datalake in miniature, on 127.0.0.1
 * port 0: one binary cache directory served under a prefix per customer
 * (`/<customer>/<hash>.narinfo`, `/<customer>/nar/…`), each prefix requiring its own
 * `Authorization: Bearer <token>` (else 401), and each customer's slice list at
 * `/<customer>/roots.txt` with an ETag and a Last-Modified, answering a matching
 * If-None-Match (or an If-Modified-Since not older than the list) with 304.
 *
 * Every request is logged with its status, so tests can say "no request for this path".
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as path from 'node:path';

export interface ServedRequest {
  customer: string;
  relPath: string;
  status: number;
  ifNoneMatch?: string;
}

interface Customer {
  token: string;
  roots: string;
  etag: string;
  lastModified: Date;
}

export class CustomerDatalakeServer {
  readonly requests: ServedRequest[] = [];
  readonly #customers = new Map<string, Customer>();
  readonly #sockets = new Set<Socket>();
  #server!: http.Server;
  readonly #root: string;
  port = 0;

  private constructor(root: string) {
    this.#root = root;
  }

  static async start(root: string, port = 0): Promise<CustomerDatalakeServer> {
    const s = new CustomerDatalakeServer(root);
    await s.listen(port);
    return s;
  }

  /** Listens (again, after close) on `port` (0 = any). */
  async listen(port = this.port): Promise<void> {
    this.#server = http.createServer((req, res) => void this.#serve(req, res));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.#server.listen(port, '127.0.0.1', resolve));
    this.port = (this.#server.address() as AddressInfo).port;
  }

  url(customer: string): string {
    return `http://127.0.0.1:${this.port}/${customer}`;
  }

  /** Adds a customer, or replaces its slice list (a new ETag and Last-Modified). */
  setCustomer(name: string, token: string, roots: string[]): void {
    const text = roots.join('\n') + '\n';
    const prev = this.#customers.get(name);
    if (prev && prev.roots === text) return;
    // Last-Modified has one-second resolution: a change within the same second must still be newer.
    const now = new Date(Math.max(Date.now(), (prev?.lastModified.getTime() ?? 0) + 1000));
    this.#customers.set(name, { token, roots: text, etag: `"${createHash('sha256').update(text).digest('hex').slice(0, 16)}"`, lastModified: now });
  }

  /** Requests for a relPath containing `needle` (a hash part), any customer. */
  requestsFor(needle: string): ServedRequest[] {
    return this.requests.filter((r) => r.relPath.includes(needle));
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  async #serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const [, customer = '', ...rest] = decodeURIComponent(url.pathname).split('/');
    const relPath = rest.join('/');
    const log = (status: number) => {
      const inm = req.headers['if-none-match'];
      this.requests.push({ customer, relPath, status, ...(typeof inm === 'string' ? { ifNoneMatch: inm } : {}) });
    };
    const c = this.#customers.get(customer);
    if (!c) {
      log(404);
      res.writeHead(404).end();
      return;
    }
    if (req.headers.authorization !== `Bearer ${c.token}`) {
      log(401);
      res.writeHead(401, { 'www-authenticate': 'Bearer' }).end();
      return;
    }
    if (relPath === 'roots.txt') {
      const inm = req.headers['if-none-match'];
      const ims = req.headers['if-modified-since'];
      const fresh = inm !== undefined ? inm === c.etag : ims !== undefined && Date.parse(ims) >= Math.floor(c.lastModified.getTime() / 1000) * 1000;
      const headers = { etag: c.etag, 'last-modified': c.lastModified.toUTCString() };
      if (fresh) {
        log(304);
        res.writeHead(304, headers).end();
        return;
      }
      log(200);
      res.writeHead(200, { ...headers, 'content-type': 'text/plain', 'content-length': Buffer.byteLength(c.roots) }).end(c.roots);
      return;
    }
    const file = path.join(this.#root, relPath);
    if (relPath === '' || rest.some((s) => s === '..' || s === '.') || !file.startsWith(this.#root + path.sep)) {
      log(400);
      res.writeHead(400).end();
      return;
    }
    const body = await fsp.readFile(file).catch(() => undefined);
    if (!body) {
      log(404);
      res.writeHead(404).end();
      return;
    }
    log(200);
    res.writeHead(200, { 'content-length': body.length }).end(body);
  }
}
