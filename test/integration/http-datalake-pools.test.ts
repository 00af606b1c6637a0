/**
 * HttpDatalake keeps two connection budgets per origin: small files (`getBytes`: narinfo,
 * .ls, nix-cache-info) never queue behind NAR streams (`getStream`), whose sockets stay
 * busy for as long as their bodies flow or sit paused by backpressure.
 *
 * The server here is a small node:http server on 127.0.0.1 (port 0) written for this file:
 * it holds NAR responses open (headers and 1 KiB, then silence) or sends one far larger
 * than any socket buffer so that a consumer that never reads keeps it open, and it records
 * which connection carried each request. Nothing here depends on timing: every wait is on
 * an event, and the only deadline is the datalake's own small-file deadline.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { HttpDatalake, type HttpDatalakeOptions } from '../../src/datalake/http-datalake.js';
import { isNarfsError } from '../../src/errors.js';

const NARINFO = 'a'.repeat(32) + '.narinfo';
const NARINFO_BODY = Buffer.from(`StorePath: /nix/store/${'a'.repeat(32)}-x\nURL: nar/0.nar\nCompression: none\n`);
/** Larger than every socket and stream buffer between the server and a paused consumer. */
const HUGE = Buffer.alloc(64 << 20, 0x4e);

type NarMode = 'server stalls' | 'consumer never reads';

interface Seen {
  path: string;
  /** Which accepted connection carried the request (1, 2, …). */
  conn: number;
  res: http.ServerResponse;
}

class PoolServer {
  readonly seen: Seen[] = [];
  readonly sockets = new Set<Socket>();
  narMode: NarMode = 'server stalls';
  private conns = 0;
  private readonly connIds = new WeakMap<Socket, number>();
  private readonly narWaiters: Array<{ n: number; resolve: () => void }> = [];

  private constructor(readonly server: http.Server) {}

  static async start(): Promise<PoolServer> {
    const server = http.createServer();
    // Idle keep-alive sockets stay open until the client closes them.
    server.keepAliveTimeout = 0;
    const s = new PoolServer(server);
    server.on('connection', (socket: Socket) => {
      s.connIds.set(socket, ++s.conns);
      s.sockets.add(socket);
      socket.once('close', () => s.sockets.delete(socket));
    });
    server.on('request', (req, res) => s.handle(req, res));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return s;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  nars(): Seen[] {
    return this.seen.filter((r) => r.path.startsWith('/nar/'));
  }

  /** Resolves once `n` NAR requests have reached the server. */
  narRequests(n: number): Promise<void> {
    if (this.nars().length >= n) return Promise.resolve();
    return new Promise((resolve) => this.narWaiters.push({ n, resolve }));
  }

  /** Resolves once every connection the server accepted has closed. */
  async allClosed(): Promise<void> {
    await Promise.all([...this.sockets].map((s) => (s.destroyed ? undefined : once(s, 'close'))));
  }

  async close(): Promise<void> {
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await done;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = req.url ?? '/';
    this.seen.push({ path, conn: this.connIds.get(req.socket) ?? 0, res });
    if (path === '/' + NARINFO) {
      res.writeHead(200, { 'Content-Length': String(NARINFO_BODY.length) });
      res.end(NARINFO_BODY);
    } else if (path.startsWith('/nar/')) {
      if (this.narMode === 'server stalls') {
        res.writeHead(200, { 'Content-Length': String(1 << 20) });
        res.write(HUGE.subarray(0, 1024)); // then silence: the response stays open
      } else {
        res.writeHead(200, { 'Content-Length': String(HUGE.length) });
        res.end(HUGE); // flows only as fast as the client reads, i.e. never
      }
      for (const w of [...this.narWaiters]) {
        if (this.nars().length >= w.n) {
          this.narWaiters.splice(this.narWaiters.indexOf(w), 1);
          w.resolve();
        }
      }
    } else {
      res.writeHead(404, { 'Content-Length': '0' });
      res.end();
    }
  }
}

describe('HttpDatalake connection budgets', function () {
  const BULK = 2;
  const OPTS: HttpDatalakeOptions = {
    connections: BULK,
    metadataConnections: 2,
    // Long enough never to fire here: the NAR sockets stay held for the whole test.
    headersTimeoutMs: 60_000,
    bodyTimeoutMs: 60_000,
    // The deadline a narinfo lookup must beat; without separate budgets it waits it out.
    smallFileTimeoutMs: 10_000,
    attempts: 1,
    closeTimeoutMs: 500,
  };
  let server: PoolServer;
  let lake: HttpDatalake | undefined;

  beforeEach(async function () {
    server = await PoolServer.start();
  });
  afterEach(async function () {
    await lake?.close();
    lake = undefined;
    await server.close();
  });

  for (const mode of ['server stalls', 'consumer never reads'] as NarMode[]) {
    it(`a narinfo is answered while every bulk socket is held (${mode})`, async function () {
      server.narMode = mode;
      const d = (lake = new HttpDatalake(server.url, OPTS));
      // More NAR streams than bulk sockets: BULK get a socket, the rest queue.
      const pending = Array.from({ length: BULK + 2 }, (_, i) => d.getStream(`nar/${i}.nar`));
      const outcomes = pending.map((p) =>
        p.then(
          (s: Readable | undefined) => {
            // Held, never read; an error (close() at the end) is only recorded.
            s?.on('error', () => {});
            return s;
          },
          (e: unknown) => e,
        ),
      );
      await server.narRequests(BULK);
      const narConns = new Set(server.nars().map((r) => r.conn));
      assert.equal(narConns.size, BULK, 'each held NAR has its own bulk socket');

      const t0 = Date.now();
      let got: Buffer | undefined;
      try {
        got = await d.getBytes(NARINFO);
      } catch (e) {
        assert.fail(`the narinfo waited behind the NAR streams for ${Date.now() - t0} ms: ${inspect(e)}`);
      }
      assert.deepEqual(got, NARINFO_BODY);

      // It was answered while the bulk sockets were still held, on a connection of its own.
      assert.equal(server.nars().length, BULK, 'the queued NAR requests are still queued');
      for (const r of server.nars()) {
        assert.ok(!r.res.writableFinished, 'a NAR response is still being sent');
        assert.ok(r.res.socket && !r.res.socket.destroyed, 'a NAR socket is still open');
      }
      const meta = server.seen.find((r) => r.path === '/' + NARINFO)!;
      assert.ok(!narConns.has(meta.conn), `the narinfo shared connection ${meta.conn} with a NAR stream`);

      // close() ends the held and the queued streams alike.
      await d.close();
      for (const o of await Promise.all(outcomes)) {
        if (o instanceof Error) assert.ok(isNarfsError(o, 'ERR_ABORTED'), inspect(o));
      }
    });
  }

  it('close() closes the sockets of both budgets', async function () {
    const d = (lake = new HttpDatalake(server.url, OPTS));
    const s = await d.getStream('nar/0.nar');
    assert.ok(s);
    s.on('error', () => {});
    assert.deepEqual(await d.getBytes(NARINFO), NARINFO_BODY);
    // The narinfo socket is idle and kept alive; the NAR socket is busy. Both belong to us.
    assert.equal(server.sockets.size, 2);
    await d.close();
    // Without close() the idle socket would stay for the 30 s keep-alive (the server never
    // times it out), far beyond mocha's timeout for this test.
    this.timeout(10_000);
    await server.allClosed();
  });
});
