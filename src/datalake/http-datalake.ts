/**
 * HttpDatalake: a Nix binary cache over http:// or https://, through three undici Agents
 * (keep-alive pools) per datalake: one for small files (`getBytes`: nix-cache-info,
 * narinfo, .ls; `metadataConnections` sockets per origin), one for NAR bodies
 * (`getStream`; `connections` sockets per origin) and one for ranged reads (`getRange`:
 * the chunks of per-file reads; `rangeConnections` sockets per origin). Deadlines, retries, the mapping of
 * transport failures and body handling are HttpTransfer's (http-transfer.ts), shared with
 * S3Datalake; this module addresses, authorises and reads the statuses of plain HTTP.
 *
 * Invariants:
 * - a small file never waits for a socket behind a NAR: a NAR stream holds its socket for
 *   as long as its body flows or sits paused by backpressure, so a burst of NAR fetches
 *   would otherwise starve narinfo lookups into their deadline. The two budgets are
 *   separate pools, so separate connections (test/integration/http-datalake-pools.test.ts);
 * - a ranged read (a chunk a reader is blocked on right now) waits neither behind NAR
 *   bodies nor behind narinfo lookups, and does not delay them: its own pool. Its bodies
 *   are bounded (the caller's length, a few MiB) and read at once, so its sockets turn
 *   over quickly; sharing the metadata pool would let a burst of 8 MiB ranges hold every
 *   socket a narinfo lookup needs, sharing the bulk pool would queue a chunk behind NAR
 *   streams paused by backpressure;
 * - getRange(relPath, offset, length) sends `Range: bytes=offset-(offset+length-1)` and
 *   returns exactly the bytes [offset, offset+length) clipped at the file's end: a 206 must
 *   carry the Content-Range asked for (else ERR_DATALAKE_HTTP), a server that ignores Range
 *   and answers 200 with the whole body still works (the bytes before `offset` are read and
 *   dropped, the body is cut at offset+length and its socket dropped), 416 or an offset
 *   past the end of a 200 body is ERR_INVALID_ARGUMENT. Retries, deadlines (plus an
 *   overall `rangeTimeoutMs` per call), auth and proxies are those of getBytes
 *   (HttpTransfer.readRange; test/integration/http-datalake-range.test.ts);
 * - nothing waits unbounded: connect, headers and body-idle deadlines on every request,
 *   plus an overall deadline on `getBytes`; the caller's AbortSignal and `close()` end
 *   every wait at once with ERR_ABORTED;
 * - only idempotent GETs are sent, and retried (bounded attempts, exponential backoff with
 *   jitter) on connection errors, timeouts, 5xx and 429 (Retry-After honoured unless it
 *   lies beyond the deadline, in which case we fail now), and, for `getBytes`, on a body
 *   that dies early. `getStream` retries only until headers arrive: once the caller holds
 *   the body, a failure is the caller's to handle (it restarts the whole NAR fetch);
 * - the stream `getStream` returns is a GuardedReadable: a failure (reset, timeout, abort,
 *   close()) before the caller has attached its pipeline is held, never emitted unheard,
 *   and surfaces when the caller consumes it; the socket is released at once
 *   (test/integration/datalake-unconsumed-stream.test.ts);
 * - 404 and 403 are absence (`undefined`), as in Nix's HttpBinaryCacheStore; any other
 *   non-200 status is ERR_DATALAKE_HTTP (not retried) or, for 5xx/429 once retries are
 *   spent, ERR_DATALAKE_UNAVAILABLE;
 * - a body shorter than its Content-Length always ends in ERR_DATALAKE_TRUNCATED: undici
 *   reports the early close as UND_ERR_SOCKET "other side closed" (checked against a real
 *   server in test/integration/http-datalake-faults.test.ts), and we also count bytes;
 * - credentials (user:pass@ in the URL, a netrc file, a bearer token file: HttpAuth picks
 *   one) become an Authorization header sent to the datalake's own origin only (undici's
 *   redirect interceptor drops it on a redirect to another origin; checked in
 *   test/integration/http-datalake-auth.test.ts), and appear nowhere else: not in
 *   `displayUrl`, messages, error details or causes (undici only ever sees the bare origin).
 *   The query string is dropped too (it may carry tokens); Nix's store parameters
 *   `priority=` and `want-mass-query=` in it are honoured by `open()`;
 * - 401 is ERR_DATALAKE_AUTH, never absence: the credentials are missing or refused, and
 *   treating it as "no such path" would hide every path behind a negative cache entry.
 *   Before giving up, the credential files are read again once (a rotated token is picked
 *   up without a restart). 403 stays absence for narinfos and NARs, as Nix has it (S3
 *   answers 403 for a missing key without list rights), with one exception: a 403 on
 *   nix-cache-info at `open()` while credentials are configured is ERR_DATALAKE_AUTH. A
 *   binary cache always has nix-cache-info, so a 403 there means the credentials do not
 *   open it (an expired or wrong token is answered 403 by many servers and object
 *   stores); reporting "not a binary cache" would send the user looking in the wrong place;
 * - TLS: a CA bundle (`sslCertFile`, Nix's `ssl-cert-file`) replaces Node's default roots,
 *   as CURLOPT_CAINFO does for Nix; an untrusted, expired or misnamed certificate is
 *   ERR_DATALAKE_TLS at once (never retried: it will not heal by itself);
 * - proxies: `proxy` or the environment (proxyFor: http_proxy, https_proxy, all_proxy,
 *   no_proxy), decided once per datalake for its origin. http:// goes to the proxy in
 *   forward-proxy form (absolute URI), so that a site cache such as Squid can keep the NARs;
 *   https:// goes through a CONNECT tunnel, end to end encrypted. Either way the
 *   Authorization header reaches the datalake only, never as proxy credentials;
 * - files (CA bundle, netrc, token) are read on first use and at each `open()`, never in
 *   the constructor: openDatalake does no I/O;
 * - a Content-Encoding (S3 objects uploaded with narinfo-compression) is undone for
 *   `getBytes` (gzip, deflate, br); `getStream` refuses any, since NARs are compressed as
 *   files, never by the transport. We send no Accept-Encoding;
 * - undici's headers/body timers have a resolution of about one second: a deadline of
 *   d ms may fire up to ~1 s late. The overall `getBytes` deadline is exact.
 */
import type { Readable } from 'node:stream';
import { readFile } from 'node:fs/promises';
import { Agent, Pool as UndiciPool, ProxyAgent, interceptors, type Dispatcher } from './undici-client.js';
import { withDeadline } from '../deadline.js';
import { NarfsError, toNarfsError } from '../errors.js';
import {
  applyStoreParams,
  checkRelPath,
  checkStoreDir,
  readCacheInfo,
  type CacheInfo,
  type Datalake,
  type GetOptions,
} from './datalake.js';
import { HttpAuth, type BearerTokenFile } from './http-auth.js';
import {
  AttemptError,
  HTTP_TUNING_DEFAULTS,
  HttpTransfer,
  discard,
  dropUndefined,
  type HttpTuningOptions,
  type SpecialFailure,
} from './http-transfer.js';
import { proxyFor, type ProxyEnv } from './proxy-for.js';

/** Who may read, through what: credentials, TLS roots and proxy. None is required. */
export interface HttpAccessOptions {
  /** A netrc file (Nix's `netrc-file`); its entry for the datalake's host is sent as Basic auth. */
  netrcFile?: string;
  /** Bearer token files (`[HOST=]FILE`, see HttpAuth for which one a datalake uses). */
  bearerTokenFiles?: readonly BearerTokenFile[];
  /** A PEM CA bundle that replaces the default roots for https:// (Nix's `ssl-cert-file`). */
  sslCertFile?: string;
  /** Proxy for every request (http://host:port), unless no_proxy exempts the host. */
  proxy?: string;
  /** Where http_proxy, https_proxy, all_proxy and no_proxy are read. Default process.env. */
  proxyEnv?: ProxyEnv;
}

/** The ranged-read budget (getRange), HttpDatalake's own. */
export interface HttpRangeOptions {
  /** Sockets per origin for ranged reads (`getRange`). Default 16. */
  rangeConnections?: number;
  /** Overall deadline of one `getRange` call, retries included. Default 60000 ms (as S3Datalake's). */
  rangeTimeoutMs?: number;
}

export interface HttpDatalakeOptions extends HttpTuningOptions, HttpAccessOptions, HttpRangeOptions {}

export type { HttpTuningOptions };
export const HTTP_DATALAKE_DEFAULTS: Readonly<Required<HttpTuningOptions & HttpRangeOptions>> = Object.freeze({
  ...HTTP_TUNING_DEFAULTS,
  rangeConnections: 16,
  rangeTimeoutMs: 60_000,
});

/** One Agent (or ProxyAgent) and the dispatcher (redirects composed in) that requests go through. */
interface Pool {
  agent: Dispatcher;
  dispatcher: Dispatcher;
}

/** The three pools, built once the CA bundle has been read. */
interface Pools {
  metadata: Pool;
  bulk: Pool;
  ranged: Pool;
}

export class HttpDatalake implements Datalake {
  readonly displayUrl: string;
  private readonly origin: string;
  /** URL path of the cache root, ending in "/". */
  private readonly basePath: string;
  private readonly params: URLSearchParams;
  private readonly headers: Record<string, string>;
  private readonly opts: Required<HttpTuningOptions & HttpRangeOptions>;
  private readonly sslCertFile: string | undefined;
  private readonly auth: HttpAuth;
  /** The proxy requests go through, or undefined for direct connections. */
  private readonly proxy: URL | undefined;
  private readonly https: boolean;
  /** Set up on first use (reads the CA bundle and credentials); reset when that fails. */
  private setup: Promise<Pools> | undefined;
  /** Small files (`metadata`, never shared with NAR bodies), NAR bodies (`bulk`) and ranges (`ranged`). */
  private pools: Pools | undefined;
  /** Deadlines, retries, error mapping and body handling shared with S3Datalake. */
  private readonly t: HttpTransfer;

  constructor(url: string | URL, options: HttpDatalakeOptions = {}) {
    let u: URL;
    try {
      u = new URL(String(url));
    } catch {
      // Never echo the URL: it may hold credentials.
      throw new NarfsError('ERR_DATALAKE_URL', 'the datalake URL is not a valid URL');
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new NarfsError('ERR_DATALAKE_URL', `HttpDatalake needs http:// or https://, not ${u.protocol}//`);
    }
    const { netrcFile, bearerTokenFiles, sslCertFile, proxy, proxyEnv, ...tuning } = options;
    this.opts = { ...HTTP_DATALAKE_DEFAULTS, ...dropUndefined(tuning) };
    if (!(this.opts.attempts >= 1)) throw new NarfsError('ERR_INVALID_ARGUMENT', 'attempts must be at least 1');
    this.origin = u.origin;
    this.basePath = u.pathname.endsWith('/') ? u.pathname : u.pathname + '/';
    this.params = u.searchParams;
    this.displayUrl = u.origin + this.basePath.replace(/\/$/, '');
    this.headers = { 'user-agent': this.opts.userAgent };
    this.auth = new HttpAuth(u, { ...(netrcFile === undefined ? {} : { netrcFile }), ...(bearerTokenFiles === undefined ? {} : { bearerTokenFiles }) });
    this.sslCertFile = sslCertFile;
    this.https = u.protocol === 'https:';
    this.proxy = proxyFor(u, proxy, proxyEnv);
    if (!(this.opts.connections >= 1) || !(this.opts.metadataConnections >= 1) || !(this.opts.rangeConnections >= 1)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', 'connections, metadataConnections and rangeConnections must be at least 1');
    }
    this.t = new HttpTransfer(this.displayUrl, this.opts, (relPath) => `${this.displayUrl}/${relPath}`, this.proxyFailure);
  }

  /** A proxy that wants credentials (undici reports its 407 in the error). */
  private readonly proxyFailure: SpecialFailure = (e, make) => {
    if (!/\(407\)/.test(e instanceof Error ? e.message : '')) return undefined;
    const error = make('ERR_DATALAKE_AUTH', `the proxy ${this.proxy?.origin ?? ''} wants credentials (HTTP 407)`);
    return {
      error: new NarfsError('ERR_DATALAKE_AUTH', error.message, {
        cause: e,
        details: error.details,
        hint: 'The proxy refused the request: put its user:password in the proxy URL (http://user:pass@host:port), in the --config file or the environment, never on the command line.',
      }),
      retryable: false,
    };
  };

  /** The proxy's origin (never its credentials), or undefined when connecting directly. */
  get displayProxy(): string | undefined {
    return this.proxy?.origin;
  }

  async open(options: GetOptions = {}): Promise<CacheInfo> {
    // Every open() after the first re-reads the credential files (DatalakeSet reopens a
    // datalake that went down: a fixed token file is picked up then).
    const again = this.setup !== undefined;
    await this.ready();
    if (again) await this.auth.load();
    const bytes = await this.fetchBytes('nix-cache-info', options, true);
    if (bytes === undefined) {
      throw new NarfsError('ERR_NOT_BINARY_CACHE', `${this.displayUrl} has no nix-cache-info`, {
        details: { datalake: this.displayUrl },
      });
    }
    const info = readCacheInfo(bytes.toString('utf8'), this.displayUrl);
    return checkStoreDir(applyStoreParams(info, this.params, this.displayUrl), this.displayUrl);
  }

  getBytes(relPath: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    return this.fetchBytes(relPath, options, false);
  }

  /** getBytes; `forbiddenIsAuth`: a 403 is ERR_DATALAKE_AUTH when credentials are configured. */
  private async fetchBytes(relPath: string, options: GetOptions, forbiddenIsAuth: boolean): Promise<Buffer | undefined> {
    const path = this.requestPath(relPath);
    const signal = this.t.liveSignal(relPath, options.signal);
    const deadlineAt = Date.now() + this.opts.smallFileTimeoutMs;
    return withDeadline(
      this.opts.smallFileTimeoutMs,
      async (attemptSignal) => {
        const { metadata } = await this.ready();
        return this.t.withRetries(relPath, attemptSignal, deadlineAt, async () => {
          const res = await this.send(metadata, path, relPath, attemptSignal, forbiddenIsAuth);
          if (res === undefined) return undefined;
          return this.t.decode(await this.t.readAll(res, relPath, attemptSignal), res.headers['content-encoding'], relPath);
        });
      },
      { code: 'ERR_DATALAKE_TIMEOUT', what: `GET ${this.t.describe(relPath)}`, signal },
    ).catch((e: unknown) => {
      throw this.t.finalError(e, relPath, signal);
    });
  }

  async getStream(relPath: string, options: GetOptions = {}): Promise<Readable | undefined> {
    const path = this.requestPath(relPath);
    const signal = this.t.liveSignal(relPath, options.signal);
    try {
      const { bulk } = await this.ready();
      const res = await this.t.withRetries(relPath, signal, undefined, () => this.send(bulk, path, relPath, signal, false));
      if (res === undefined) return undefined;
      // NARs are compressed as files (narinfo Compression:), never by the transport.
      this.t.refuseEncoded(res, relPath);
      return this.t.guardBody(res, relPath, signal);
    } catch (e) {
      throw this.t.finalError(e, relPath, signal);
    }
  }

  /**
   * Bytes [offset, offset+length) of a file, clipped at its end, by one ranged GET on the
   * ranged pool (retried as a whole, within `rangeTimeoutMs`); undefined when absent.
   */
  async getRange(relPath: string, offset: number, length: number, options: GetOptions = {}): Promise<Buffer | undefined> {
    const path = this.requestPath(relPath);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `range of ${relPath}: offset and length must be non-negative integers`);
    }
    const signal = this.t.liveSignal(relPath, options.signal);
    if (length === 0) return Buffer.alloc(0);
    const range = { offset, length };
    const deadlineAt = Date.now() + this.opts.rangeTimeoutMs;
    return withDeadline(
      this.opts.rangeTimeoutMs,
      async (attemptSignal) => {
        const { ranged } = await this.ready();
        return this.t.withRetries(relPath, attemptSignal, deadlineAt, async () => {
          const res = await this.send(ranged, path, relPath, attemptSignal, false, range);
          if (res === undefined) return undefined;
          return this.t.readRange(res, relPath, attemptSignal, offset, length);
        });
      },
      { code: 'ERR_DATALAKE_TIMEOUT', what: `GET ${this.t.describe(relPath)} (bytes ${offset}-${offset + length - 1})`, signal },
    ).catch((e: unknown) => {
      throw this.t.finalError(e, relPath, signal);
    });
  }

  /** A plain HTTP cache cannot list its narinfos. */
  async listNarInfoHashes(): Promise<undefined> {
    return undefined;
  }

  /**
   * Aborts in-flight calls (they fail with ERR_ABORTED), then closes both Agents gracefully,
   * side by side; an Agent that takes longer than `closeTimeoutMs` has its sockets destroyed.
   */
  async close(): Promise<void> {
    this.t.abortAll();
    await this.setup?.catch(() => {});
    const pools = this.pools;
    if (pools) await Promise.all([pools.metadata, pools.bulk, pools.ranged].map(({ agent }) => this.t.closeAgent(agent)));
  }

  // --- internals

  /** The pools, built on first use after reading the CA bundle and the credentials. */
  private ready(): Promise<Pools> {
    this.setup ??= this.setUp().catch((e: unknown) => {
      this.setup = undefined; // a later call (a reopen) tries again
      throw e;
    });
    return this.setup;
  }

  private async setUp(): Promise<Pools> {
    let ca: Buffer | undefined;
    if (this.sslCertFile !== undefined) {
      const file = this.sslCertFile;
      ca = await readFile(file).catch((err: unknown) => {
        throw new NarfsError('ERR_DATALAKE_FILE', `cannot read the CA bundle ${file}`, { cause: err, details: { file } });
      });
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
        throw new NarfsError('ERR_DATALAKE_FILE', `the CA bundle ${file} holds no PEM certificate`, { details: { file } });
      }
    }
    await this.auth.load();
    if (this.t.closer.signal.aborted) throw this.t.aborted('nix-cache-info', this.t.closer.signal);
    this.pools = {
      metadata: this.pool(this.opts.metadataConnections, ca),
      bulk: this.pool(this.opts.connections, ca),
      ranged: this.pool(this.opts.rangeConnections, ca),
    };
    return this.pools;
  }

  /**
   * An Agent of `connections` sockets per origin (a ProxyAgent when a proxy applies), with
   * redirects composed in.
   */
  private pool(connections: number, ca: Buffer | undefined): Pool {
    const common = {
      connections,
      headersTimeout: this.opts.headersTimeoutMs,
      bodyTimeout: this.opts.bodyTimeoutMs,
      keepAliveTimeout: this.opts.keepAliveTimeoutMs,
      keepAliveMaxTimeout: Math.max(this.opts.keepAliveTimeoutMs, 600_000),
    };
    const tls = { timeout: this.opts.connectTimeoutMs, ...(ca === undefined ? {} : { ca }) };
    const agent: Dispatcher = this.proxy
      ? new ProxyAgent({
          ...common,
          uri: this.proxy.href,
          // Forward-proxy form for http:// (a site cache can keep the NARs); CONNECT for https://.
          proxyTunnel: this.https,
          requestTls: tls,
          proxyTls: { timeout: this.opts.connectTimeoutMs },
          // Bounded sockets per origin (and to the proxy), like the direct Agent.
          factory: (origin: string | URL, opts: object) => new UndiciPool(origin, { ...common, ...opts }),
        })
      : new Agent({ ...common, connect: tls });
    const dispatcher =
      this.opts.maxRedirections > 0
        ? agent.compose(interceptors.redirect({ maxRedirections: this.opts.maxRedirections }))
        : agent;
    return { agent, dispatcher };
  }

  private requestPath(relPath: string): string {
    const segs = checkRelPath(relPath);
    // Percent-encode each segment, but keep the sub-delimiters a path segment may hold
    // literally (":" and "!" of realisations/<id>!out.doi, "+" and "=" of store names).
    return this.basePath + segs.map((s) => encodeURIComponent(s).replace(/%(3A|40|2B|3D|2C|3B|24|26)/g, (m) => decodeURIComponent(m))).join('/');
  }

  /**
   * One request up to its headers. Resolves the response for 200 (and, with `range`, 206),
   * undefined for 404/403; a 416 to a range is ERR_INVALID_ARGUMENT; throws AttemptError
   * for everything else. A 401 (or, with `forbiddenIsAuth` and
   * credentials configured, a 403) is tried once more if re-reading the credential files
   * changed them, then is ERR_DATALAKE_AUTH.
   */
  private async send(
    pool: Pool,
    path: string,
    relPath: string,
    signal: AbortSignal,
    forbiddenIsAuth: boolean,
    range?: { offset: number; length: number },
  ): Promise<Dispatcher.ResponseData | undefined> {
    for (let refreshed = false; ; refreshed = true) {
      const res = await this.request(pool, path, relPath, signal, range);
      const status = res.statusCode;
      if (status === 200 || (range && status === 206)) return res;
      discard(res);
      if (range && status === 416) throw this.t.rangeNotSatisfiable(relPath, range.offset, range.length);
      const authFailure = status === 401 || (status === 403 && forbiddenIsAuth && this.auth.configured);
      if (!authFailure) return this.nonAuthStatus(res, relPath);
      if (!refreshed) {
        const changed = await this.auth.refresh().catch((e: unknown) => {
          throw new AttemptError({ error: toNarfsError(e), retryable: false });
        });
        if (changed) continue;
      }
      throw new AttemptError({ error: this.authError(relPath, status), retryable: false });
    }
  }

  private async request(
    pool: Pool,
    path: string,
    relPath: string,
    signal: AbortSignal,
    range?: { offset: number; length: number },
  ): Promise<Dispatcher.ResponseData> {
    const authorization = this.auth.header();
    // A fresh object per request: undici's ProxyAgent adds Host to the one it is given.
    const headers: Record<string, string> = { ...this.headers };
    if (authorization !== undefined) headers.authorization = authorization;
    if (range) headers.range = `bytes=${range.offset}-${range.offset + range.length - 1}`;
    try {
      return await pool.dispatcher.request({
        origin: this.origin,
        path,
        method: 'GET',
        headers,
        signal,
        headersTimeout: this.opts.headersTimeoutMs,
        bodyTimeout: this.opts.bodyTimeoutMs,
      });
    } catch (e) {
      throw new AttemptError(this.t.classify(e, relPath, signal, 'headers'));
    }
  }

  private authError(relPath: string, status: number): NarfsError {
    const configured = this.auth.configured;
    return new NarfsError(
      'ERR_DATALAKE_AUTH',
      `GET ${this.t.describe(relPath)}: HTTP ${status} (${configured ? 'the credentials were refused' : 'credentials are needed'})`,
      { details: { datalake: this.displayUrl, relPath, status, credentials: configured ? 'configured' : 'none' } },
    );
  }

  /** The outcome of a status that is neither 200 nor an auth failure. */
  private nonAuthStatus(res: Dispatcher.ResponseData, relPath: string): undefined {
    const status = res.statusCode;
    if (status === 404 || status === 403) return undefined;
    const where = `GET ${this.t.describe(relPath)}`;
    if (status >= 500 || status === 429) throw this.t.unavailable(res, relPath, `HTTP ${status}`, { datalake: this.displayUrl, relPath, status });
    const error = new NarfsError('ERR_DATALAKE_HTTP', `${where}: unexpected HTTP ${status}`, {
      details: { datalake: this.displayUrl, relPath, status },
    });
    throw new AttemptError({ error, retryable: false });
  }

}
