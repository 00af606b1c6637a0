/**
 * FaultNarServer: a real HTTP/1.1 server on 127.0.0.1 serving a binary cache directory,
 * whose NAR answers can be broken at one chosen stage of a fetch, and which reports what
 * it did as events, so tests wait on what happened rather than on the clock.
 *
 * Stages (set with `fail(stage)` for every `nar/…` request until `clear()`, or with
 * `failPath(relPath, stage)` for one NAR, which wins over `fail`):
 *   refuse        the listener is closed and every open socket destroyed: new requests
 *                 get ECONNREFUSED (the connect stage); `clear()` listens again on the
 *                 same port
 *   reset-headers the socket is destroyed as soon as the request arrives (no headers)
 *   reset-after   headers and `afterBytes` of the body, then a TCP reset
 *   hold-after    headers and `afterBytes` of the body, then nothing until `release()`,
 *                 which sends the rest
 * Events: 'request' (relPath), 'sent' (relPath, bytes: body bytes written before the
 * fault), 'reset' (relPath: the reset has been done).
 */
import { EventEmitter, once } from 'node:events';
import { readFile } from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join, normalize } from 'node:path';

export type FaultStage = 'refuse' | 'reset-headers' | 'reset-after' | 'hold-after';

export class FaultNarServer extends EventEmitter {
  readonly url: string;
  readonly port: number;
  readonly #server: http.Server;
  readonly #root: string;
  readonly #sockets: Set<Socket>;
  readonly #held: Array<() => void> = [];
  #stage: FaultStage | undefined;
  #afterBytes = 0;
  readonly #perPath = new Map<string, { stage: FaultStage; afterBytes: number }>();
  #listening = true;
  /** NAR requests seen, per relPath. */
  readonly narRequests = new Map<string, number>();

  private constructor(server: http.Server, root: string, port: number, sockets: Set<Socket>) {
    super();
    this.#sockets = sockets;
    this.#server = server;
    this.#root = root;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
  }

  static async start(root: string): Promise<FaultNarServer> {
    let self: FaultNarServer | undefined;
    const server = http.createServer((req, res) => void self!.#handle(req, res));
    const sockets = new Set<Socket>();
    server.on('connection', (s: Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    self = new FaultNarServer(server, root, (server.address() as AddressInfo).port, sockets);
    return self;
  }

  /** Breaks every NAR request at `stage` (see the header) until `clear()`. */
  async fail(stage: FaultStage, afterBytes = 0): Promise<void> {
    this.#stage = stage;
    this.#afterBytes = afterBytes;
    if (stage === 'refuse' && this.#listening) {
      this.#listening = false;
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      for (const s of this.#sockets) s.destroy();
      await closed;
    }
  }

  /** Breaks the requests of one NAR (not 'refuse', which is for the whole server). */
  failPath(relPath: string, stage: Exclude<FaultStage, 'refuse'>, afterBytes = 0): void {
    this.#perPath.set(relPath, { stage, afterBytes });
  }

  /** Sends the rest of every held body. */
  release(): void {
    for (const go of this.#held.splice(0)) go();
  }

  async clear(): Promise<void> {
    this.#stage = undefined;
    this.#perPath.clear();
    this.release();
    if (!this.#listening) {
      this.#server.listen(this.port, '127.0.0.1');
      await once(this.#server, 'listening');
      this.#listening = true;
    }
  }

  async close(): Promise<void> {
    this.release();
    for (const s of this.#sockets) s.destroy();
    if (this.#listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#listening = false;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rel = decodeURIComponent((req.url ?? '/').split('?')[0]!).replace(/^\/+/, '');
    const file = normalize(join(this.#root, rel));
    if (!file.startsWith(this.#root + '/')) {
      res.writeHead(404).end();
      return;
    }
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      res.writeHead(404).end();
      return;
    }
    const isNar = rel.startsWith('nar/');
    if (isNar) this.narRequests.set(rel, (this.narRequests.get(rel) ?? 0) + 1);
    this.emit('request', rel);
    const own = this.#perPath.get(rel);
    const stage = isNar ? (own?.stage ?? this.#stage) : undefined;
    const afterBytes = own?.afterBytes ?? this.#afterBytes;
    if (stage === 'reset-headers') {
      req.socket.resetAndDestroy();
      this.emit('reset', rel);
      return;
    }
    res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
    if (stage !== 'reset-after' && stage !== 'hold-after') {
      res.end(body);
      return;
    }
    const head = body.subarray(0, Math.min(afterBytes, body.length));
    res.flushHeaders();
    await new Promise<void>((resolve) => res.write(head, () => resolve()));
    this.emit('sent', rel, head.length);
    if (stage === 'reset-after') {
      req.socket.resetAndDestroy();
      this.emit('reset', rel);
      return;
    }
    this.#held.push(() => res.end(body.subarray(head.length)));
  }
}
