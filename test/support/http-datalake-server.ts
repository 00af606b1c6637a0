/**
 * HttpDatalakeServer: a real HTTP/1.1 server (node:http) on 127.0.0.1, port 0, serving a
 * directory as a Nix binary cache, with faults that tests switch on and off at run time.
 *
 * Invariants:
 * - a request path never leaves the served directory (decoded, then `.`/`..` refused);
 * - faults are per relPath ("nix-cache-info", "nar/x.nar.xz") or for every path ("*");
 *   a path's own fault wins over "*";
 * - `close()` settles promptly even with stalled requests: it destroys every socket;
 * - the modelled link (added round-trip time per request, bytes/s cap) applies to every
 *   response, so benchmarks can compare backends over the same "network".
 *
 * Knobs (each returns `this`, so they chain):
 *   status(path, code, {retryAfter})   answer with that status (404, 403, 500, 429…)
 *   failTimes(path, n, code = 500, {retryAfter})  fail the next n requests, then serve
 *   stallHeaders(path)                 accept the request and never answer
 *   stallBody(path, afterBytes)        send headers and afterBytes of body, then nothing
 *   truncate(path, nBytes)             announce the full Content-Length, close after nBytes
 *   delay(path, ms)                    wait before answering
 *   hold(path) / release(path)         hold answers until released (clear() releases too)
 *   transform(path, fn)                rewrite the body (corrupt a byte, alter a narinfo)
 *   header(path, name, value)          add a header to 200 answers (Content-Encoding…)
 *   clear(path?)                       remove the faults of one path, or all
 *   link({latencyMs, bytesPerSecond})  modelled network for every request
 *   requireBearer(token, failStatus)   requests without "Authorization: Bearer <token>"
 *                                      get failStatus (401 unless given); undefined = off
 *   ignoreRange(path)                  answer 200 with the whole body to a Range request,
 *                                      as a server without range support does
 *   wholeStatus(path, code)            answer a GET without Range with that status (ranged
 *                                      GETs are served)
 *   onlyWhole(path)                    the path's other faults hit only GETs without Range
 *                                      (a whole NAR stalls or is corrupted, ranges are right)
 * Range: a GET with one `Range: bytes=a-b` (or `a-`, `-n`) gets 206 with Content-Range over
 * the (transformed) body, or 416 when it starts past the end; several ranges get the whole
 * body (200), which RFC 9110 allows. The faults above then apply to the 206 body.
 * TLS: with `tls: {key, cert}` the server speaks https (node:https) and `url` is https://.
 * Observations: count(path), requests (log of path + headers), totalRequests, and
 * waitForRequest(path, n) to act (abort, close, kill) once the server holds a request
 * rather than after a guessed sleep.
 */
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import * as path from 'node:path';

export interface LinkModel {
  /** Added once per request before the answer starts (models a round trip). */
  latencyMs?: number;
  /** Body bytes per second; 0 = unlimited. */
  bytesPerSecond?: number;
  /**
   * Bodies are paced in 20 ms ticks; by default every piece waits a whole tick, so even a
   * 1-byte body costs 20 ms more than the latency. With this set, each piece leaves once
   * the bytes before it have had their transmission time (bytes / bytesPerSecond), so the
   * last (partial) piece costs only its own: the benchmark's link model
   * (bench/serve-datalake.ts), where a small ranged read must cost one round trip.
   */
  proportionalPacing?: boolean;
}

export interface HttpDatalakeServerOptions extends LinkModel {
  /** The directory served as the cache root. */
  root: string;
  /** URL path prefix the cache lives under, e.g. "/cache"; default "" (the server root). */
  basePath?: string;
  /** When set, requests without this Basic auth get 401. */
  auth?: { username: string; password: string };
  /** Serve https:// with this PEM key and certificate chain. */
  tls?: { key: Buffer | string; cert: Buffer | string };
}

export interface Fault {
  status?: number;
  retryAfter?: string;
  failTimes?: { remaining: number; code: number };
  stallHeaders?: boolean;
  stallAfterBytes?: number;
  truncateAfterBytes?: number;
  delayMs?: number;
  /** Answers wait for this; release() / clear() resolve it. */
  hold?: { released: Promise<void>; release: () => void };
  transform?: (body: Buffer, relPath: string) => Buffer;
  headers?: Record<string, string>;
  ignoreRange?: boolean;
  /** Answers a GET without a Range header (a whole body) with this status; ranged GETs are served. */
  wholeStatus?: number;
  /** The other faults apply only to GETs without a Range header; ranged GETs are served as they are. */
  onlyWhole?: boolean;
}

export interface LoggedRequest {
  relPath: string;
  method: string;
  headers: http.IncomingHttpHeaders;
}

const CONTENT_TYPES: Array<[RegExp, string]> = [
  [/^nix-cache-info$/, 'text/x-nix-cache-info'],
  [/\.narinfo$/, 'text/x-nix-narinfo'],
  [/\.ls$/, 'application/json'],
  [/^nar\//, 'application/x-nix-nar'],
];

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class HttpDatalakeServer {
  /** Base URL of the cache, without a trailing slash: `http://127.0.0.1:<port>[/base]`. */
  readonly url: string;
  readonly port: number;
  readonly requests: LoggedRequest[] = [];
  /** Body bytes written to clients so far (all paths; bytes a client cut off early may be counted). */
  bodyBytesSent = 0;
  private readonly faults = new Map<string, Fault>();
  private readonly counts = new Map<string, number>();
  private readonly requestWaiters = new Set<() => void>();
  private readonly sockets = new Set<Socket>();
  /** Buffers that file bodies are read into, reused across responses (send). */
  private readonly pieces = new PiecePool();
  private linkModel: Required<LinkModel>;
  private bearer: { token: string; failStatus: number } | undefined;
  private closed = false;

  private constructor(
    private readonly server: http.Server,
    private readonly options: HttpDatalakeServerOptions,
    private readonly basePath: string,
  ) {
    this.port = (server.address() as AddressInfo).port;
    this.url = `${options.tls ? 'https' : 'http'}://127.0.0.1:${this.port}${basePath}`;
    this.linkModel = { latencyMs: options.latencyMs ?? 0, bytesPerSecond: options.bytesPerSecond ?? 0, proportionalPacing: options.proportionalPacing ?? false };
  }

  static async start(options: HttpDatalakeServerOptions): Promise<HttpDatalakeServer> {
    const basePath = (options.basePath ?? '').replace(/\/+$/, '');
    if (basePath !== '' && !basePath.startsWith('/')) throw new Error('basePath must start with /');
    const server = options.tls ? https.createServer({ key: options.tls.key, cert: options.tls.cert }) : http.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const s = new HttpDatalakeServer(server, options, basePath);
    server.on('connection', (socket: Socket) => {
      s.sockets.add(socket);
      socket.once('close', () => s.sockets.delete(socket));
    });
    server.on('request', (req, res) => {
      s.handle(req, res).catch(() => res.destroy());
    });
    return s;
  }

  /** Total requests seen for `relPath` ("*" = all paths). */
  count(relPath: string): number {
    if (relPath === '*') return this.totalRequests;
    return this.counts.get(norm(relPath)) ?? 0;
  }

  /**
   * Resolves once `n` requests for `relPath` ("*" = any path) have arrived in total,
   * counting those already seen. The request has then been counted and its fault applied
   * up to the first await (a stalled one is held from here on); it settles on the event,
   * so the caller's test timeout is its deadline.
   */
  waitForRequest(relPath: string, n = 1): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.count(relPath) < n) return;
        this.requestWaiters.delete(check);
        resolve();
      };
      this.requestWaiters.add(check);
      check();
    });
  }

  get totalRequests(): number {
    let n = 0;
    for (const v of this.counts.values()) n += v;
    return n;
  }

  status(relPath: string, code: number, options: { retryAfter?: string | number } = {}): this {
    return this.set(relPath, {
      status: code,
      retryAfter: options.retryAfter === undefined ? undefined : String(options.retryAfter),
    });
  }

  failTimes(relPath: string, n: number, code = 500, options: { retryAfter?: string | number } = {}): this {
    return this.set(relPath, {
      failTimes: { remaining: n, code },
      retryAfter: options.retryAfter === undefined ? undefined : String(options.retryAfter),
    });
  }

  stallHeaders(relPath: string): this {
    return this.set(relPath, { stallHeaders: true });
  }

  stallBody(relPath: string, afterBytes: number): this {
    return this.set(relPath, { stallAfterBytes: afterBytes });
  }

  truncate(relPath: string, nBytes: number): this {
    return this.set(relPath, { truncateAfterBytes: nBytes });
  }

  delay(relPath: string, ms: number): this {
    return this.set(relPath, { delayMs: ms });
  }

  /** Holds every answer for `relPath` (after counting the request) until `release(relPath)`. */
  hold(relPath: string): this {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    return this.set(relPath, { hold: { released, release } });
  }

  /** Lets the held requests for `relPath`, and later ones, be answered. */
  release(relPath: string): this {
    const fault = this.faults.get(norm(relPath));
    fault?.hold?.release();
    if (fault) delete fault.hold;
    return this;
  }

  transform(relPath: string, fn: (body: Buffer, relPath: string) => Buffer): this {
    return this.set(relPath, { transform: fn });
  }

  /** Adds a response header to 200 answers (e.g. Content-Encoding with a transform). */
  header(relPath: string, name: string, value: string): this {
    const key = norm(relPath);
    return this.set(relPath, { headers: { ...this.faults.get(key)?.headers, [name]: value } });
  }

  /** Answers Range requests for `relPath` ("*" = all) with 200 and the whole body. */
  ignoreRange(relPath: string): this {
    return this.set(relPath, { ignoreRange: true });
  }

  /** Answers whole-body GETs of `relPath` (no Range header) with `code`; ranged GETs are served. */
  wholeStatus(relPath: string, code: number): this {
    return this.set(relPath, { wholeStatus: code });
  }

  /** From now on the faults of `relPath` apply only to whole-body GETs (no Range header); ranged GETs are served as they are. */
  onlyWhole(relPath: string): this {
    return this.set(relPath, { onlyWhole: true });
  }

  /** Removes the faults of `relPath`, or of every path when none is given. */
  clear(relPath?: string): this {
    for (const [key, fault] of this.faults) if (relPath === undefined || key === norm(relPath)) fault.hold?.release();
    if (relPath === undefined) this.faults.clear();
    else this.faults.delete(norm(relPath));
    return this;
  }

  /** Changes the modelled network for the requests that start from now on. */
  link(model: LinkModel): this {
    this.linkModel = { ...this.linkModel, ...model };
    return this;
  }

  /** Only requests with `Authorization: Bearer <token>` are served; others get failStatus. */
  requireBearer(token: string | undefined, failStatus = 401): this {
    this.bearer = token === undefined ? undefined : { token, failStatus };
    return this;
  }

  /** Stops listening and destroys every socket, stalled ones included. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await done;
  }

  private set(relPath: string, fault: Fault): this {
    const key = norm(relPath);
    this.faults.set(key, { ...this.faults.get(key), ...fault });
    return this;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rawPath = (req.url ?? '/').split('?')[0] ?? '/';
    const relPath = this.relPathOf(rawPath);
    if (relPath === undefined) return this.answer(res, 404);
    this.counts.set(relPath, (this.counts.get(relPath) ?? 0) + 1);
    this.requests.push({ relPath, method: req.method ?? '', headers: req.headers });
    // After this handler's synchronous part (faults without latency are applied by then).
    queueMicrotask(() => {
      for (const check of [...this.requestWaiters]) check();
    });

    if (this.options.auth) {
      const { username, password } = this.options.auth;
      const expected = 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64');
      if (req.headers.authorization !== expected) return this.answer(res, 401);
    }
    if (this.bearer && req.headers.authorization !== `Bearer ${this.bearer.token}`) {
      return this.answer(res, this.bearer.failStatus);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return this.answer(res, 405);

    const link = this.linkModel;
    const set = this.faults.get(relPath) ?? this.faults.get('*') ?? {};
    const fault = set.onlyWhole && req.headers.range !== undefined ? {} : set;
    if (link.latencyMs > 0) await delay(link.latencyMs);
    if (fault.delayMs) await delay(fault.delayMs);
    if (fault.hold) await fault.hold.released;
    if (fault.stallHeaders) return; // never answer; close() destroys the socket
    if (fault.failTimes && fault.failTimes.remaining > 0) {
      fault.failTimes.remaining--;
      return this.answer(res, fault.failTimes.code, fault.retryAfter);
    }
    if (fault.status !== undefined) return this.answer(res, fault.status, fault.retryAfter);
    if (fault.wholeStatus !== undefined && req.headers.range === undefined) return this.answer(res, fault.wholeStatus);

    // Without a transform the body is streamed from the file (FileBody); a transform needs
    // the whole body in memory.
    let body: Buffer | FileBody;
    let size: number;
    let range: [number, number] | 'unsatisfiable' | undefined;
    try {
      const file = path.join(this.options.root, ...relPath.split('/'));
      const st = await fsp.stat(file);
      if (!st.isFile()) return this.answer(res, 404);
      size = st.size;
      range = fault.ignoreRange ? undefined : parseRange(req.headers.range, size);
      if (fault.transform) body = await fsp.readFile(file);
      else {
        // Only the range is read (a ranged read must not cost the server a whole NAR).
        const [first, last] = Array.isArray(range) ? range : [0, size - 1];
        body = { fh: await fsp.open(file, 'r'), offset: first, length: last - first + 1 };
      }
    } catch {
      return this.answer(res, 404);
    }
    if (fault.transform && Buffer.isBuffer(body)) {
      body = fault.transform(body, relPath);
      size = body.length;
      range = fault.ignoreRange ? undefined : parseRange(req.headers.range, size);
    }

    try {
      await this.respond(req, res, relPath, fault, body, size, range);
    } finally {
      if (!Buffer.isBuffer(body)) await body.fh.close().catch(() => {});
    }
  }

  private async respond(
    req: http.IncomingMessage, res: http.ServerResponse, relPath: string, fault: Fault,
    body: Buffer | FileBody, size: number, range: [number, number] | 'unsatisfiable' | undefined,
  ): Promise<void> {
    const type = CONTENT_TYPES.find(([re]) => re.test(relPath))?.[1] ?? 'application/octet-stream';
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'Content-Range': `bytes */${size}`, 'Content-Length': '0' });
      return void res.end();
    }
    if (range) {
      const [first, last] = range;
      // A fault's headers come after Content-Range, so a test can forge a wrong one.
      res.writeHead(206, {
        'Content-Type': type, 'Content-Range': `bytes ${first}-${last}/${size}`,
        ...fault.headers, 'Content-Length': String(last - first + 1),
      });
      if (Buffer.isBuffer(body) && body.length === size) body = body.subarray(first, last + 1);
    } else res.writeHead(200, { 'Content-Type': type, ...fault.headers, 'Content-Length': String(body.length) });
    if (req.method === 'HEAD') return void res.end();

    let limit = body.length;
    let after: 'end' | 'stall' | 'close' = 'end';
    if (fault.stallAfterBytes !== undefined && fault.stallAfterBytes < limit) {
      limit = fault.stallAfterBytes;
      after = 'stall';
    }
    if (fault.truncateAfterBytes !== undefined && fault.truncateAfterBytes < limit) {
      limit = fault.truncateAfterBytes;
      after = 'close';
    }
    await this.send(res, Buffer.isBuffer(body) ? body.subarray(0, limit) : { ...body, length: limit }, this.linkModel.bytesPerSecond);
    if (after === 'end') res.end();
    else if (after === 'close') {
      // Everything written so far reaches the client; then the connection ends mid-body.
      res.socket?.end();
    } else res.flushHeaders(); // stall: headers (and the first bytes) out, then silence
  }

  /**
   * Writes `data` honouring backpressure and the modelled bandwidth. A FileBody is read
   * piece by piece into buffers of a pool shared by every response, each handed back once
   * the socket has taken it, and the next piece is read while the current one waits for
   * its turn on the link: a benchmark's server then costs the machine it shares with the
   * contenders one read and one socket write per byte, not a fresh zeroed allocation of
   * every body (that was ~3.7 CPU-seconds of 2 cores for the 585 MB of bench scenario 11,
   * bench/RESULTS.md), and a body leaves at the link's pace even when its file is read
   * from disk. With proportional pacing, piece i leaves once the bytes before it have had
   * their time on the link since the first piece, so time spent reading counts against
   * the pacing instead of adding to it.
   */
  private async send(res: http.ServerResponse, data: Buffer | FileBody, bytesPerSecond: number): Promise<void> {
    const tickMs = 20;
    const chunk = bytesPerSecond > 0 ? Math.max(1, Math.floor((bytesPerSecond * tickMs) / 1000)) : 64 * 1024;
    const proportional = this.linkModel.proportionalPacing;
    const startedAt = performance.now();
    let sent = 0;
    let next = data.length > 0 ? this.piece(data, 0, chunk) : undefined;
    for (let off = 0; off < data.length; off += chunk) {
      const got = await next!;
      next = off + chunk < data.length ? this.piece(data, off + chunk, chunk) : undefined;
      if (!got || res.destroyed) {
        if (got?.release) got.release();
        // A file that shrank under the server cannot keep the announced length.
        if (!got) res.destroy();
        void next?.then((x) => x?.release?.());
        return;
      }
      const { bytes: piece, release } = got;
      this.bodyBytesSent += piece.length;
      const ok = release ? res.write(piece, release) : res.write(piece);
      if (!ok) {
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off('drain', done);
            res.off('close', done);
            resolve();
          };
          res.on('drain', done);
          res.on('close', done);
        });
      }
      sent += piece.length;
      if (bytesPerSecond > 0) await delay(proportional ? Math.max(0, startedAt + (sent * 1000) / bytesPerSecond - performance.now()) : tickMs);
    }
    if (data.length > 0 && !res.destroyed) await new Promise<void>((resolve) => res.write('', () => resolve()));
  }

  /** The piece of `data` at `off` (up to `chunk` bytes); undefined if its file ended early. */
  private async piece(data: Buffer | FileBody, off: number, chunk: number): Promise<{ bytes: Buffer; release?: () => void } | undefined> {
    const want = Math.min(chunk, data.length - off);
    if (Buffer.isBuffer(data)) return { bytes: data.subarray(off, off + want) };
    const buf = this.pieces.take(chunk);
    const release = () => this.pieces.give(buf);
    let got = 0;
    try {
      while (got < want) {
        const { bytesRead } = await data.fh.read(buf, got, want - got, data.offset + off + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } catch {
      got = 0;
    }
    if (got < want) {
      release();
      return undefined;
    }
    return { bytes: buf.subarray(0, want), release };
  }

  private answer(res: http.ServerResponse, code: number, retryAfter?: string): void {
    const body = `${code} ${http.STATUS_CODES[code] ?? ''}\n`;
    const headers: http.OutgoingHttpHeaders = { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) };
    if (retryAfter !== undefined) headers['Retry-After'] = retryAfter;
    res.writeHead(code, headers);
    res.end(body);
  }

  /** The decoded path below basePath, or undefined if outside it or not a safe path. */
  private relPathOf(rawPath: string): string | undefined {
    if (this.basePath !== '' && !rawPath.startsWith(this.basePath + '/')) return undefined;
    let rest = rawPath.slice(this.basePath.length + 1);
    try {
      rest = rest.split('/').map(decodeURIComponent).join('/');
    } catch {
      return undefined;
    }
    const segs = rest.split('/');
    if (segs.some((s) => s === '' || s === '.' || s === '..' || s.includes('\0') || s.includes('\\'))) return undefined;
    return rest;
  }
}

/** A body still in its file: `length` bytes at `offset` (the handle is closed by handle()). */
interface FileBody {
  fh: fsp.FileHandle;
  offset: number;
  length: number;
}

/**
 * Free buffers for file bodies, by size (a response's piece size; its last, shorter piece
 * uses the front of one): a buffer is taken for one piece and given back once the socket
 * wrote it. At most 64 are kept.
 */
class PiecePool {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;

  take(size: number): Buffer {
    const b = this.free.get(size)?.pop();
    if (b) {
      this.kept--;
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(b: Buffer): void {
    if (this.kept >= 64) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.kept++;
  }
}

/**
 * One byte range of a Range header over a body of `size` bytes: [first, last], or
 * 'unsatisfiable', or undefined (no header, not bytes, several ranges: serve it whole).
 */
function parseRange(header: string | undefined, size: number): [number, number] | 'unsatisfiable' | undefined {
  const m = header === undefined ? null : /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    return [Math.max(0, size - n), size - 1];
  }
  const first = Number(m[1]);
  const last = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (first >= size) return 'unsatisfiable';
  if (last < first) return undefined;
  return [first, last];
}

function norm(relPath: string): string {
  return relPath.replace(/^\/+/, '');
}
