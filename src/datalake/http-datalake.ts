/**
 * HttpDatalake: a Nix binary cache over http:// or https://, through two undici Agents
 * (keep-alive pools) per datalake: one for small files (`getBytes`: nix-cache-info,
 * narinfo, .ls; `metadataConnections` sockets per origin) and one for NAR bodies
 * (`getStream`; `connections` sockets per origin).
 *
 * Invariants:
 * - a small file never waits for a socket behind a NAR: a NAR stream holds its socket for
 *   as long as its body flows or sits paused by backpressure, so a burst of NAR fetches
 *   would otherwise starve narinfo lookups into their deadline. The two budgets are
 *   separate pools, so separate connections (test/integration/http-datalake-pools.test.ts);
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
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { readFile } from 'node:fs/promises';
import { Agent, Pool as UndiciPool, ProxyAgent, interceptors, type Dispatcher } from 'undici';
import { sleep, withDeadline } from '../deadline.js';
import { NarfsError, type ErrorCode } from '../errors.js';
import {
  applyStoreParams,
  checkRelPath,
  checkStoreDir,
  fanOutController,
  readCacheInfo,
  type CacheInfo,
  type Datalake,
  type GetOptions,
} from './datalake.js';
import { GuardedReadable } from './guarded-readable.js';
import { HttpAuth, type BearerTokenFile } from './http-auth.js';
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

export interface HttpDatalakeOptions extends HttpTuningOptions, HttpAccessOptions {}

export interface HttpTuningOptions {
  /** Sockets per origin for NAR bodies (`getStream`). Default 16. */
  connections?: number;
  /** Sockets per origin for small files (`getBytes`: narinfo, .ls, nix-cache-info). Default 16. */
  metadataConnections?: number;
  /** TCP (+TLS) connect deadline per attempt. Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Deadline from request sent to response headers received, per attempt. Default 10000 ms. */
  headersTimeoutMs?: number;
  /** Longest silence allowed between two body chunks. Default 10000 ms. */
  bodyTimeoutMs?: number;
  /** Overall deadline of one `getBytes` call, retries included. Default 20000 ms. */
  smallFileTimeoutMs?: number;
  /** Attempts per request (1 = no retry). Default 3. */
  attempts?: number;
  /** First backoff delay; doubles per attempt, with ±50 % jitter. Default 100 ms. */
  retryBaseMs?: number;
  /** Longest Retry-After honoured by `getStream` (getBytes: its remaining deadline). Default 10000 ms. */
  maxRetryAfterMs?: number;
  /** Idle keep-alive sockets are closed after this long. Default 30000 ms (servers' hints may lower it). */
  keepAliveTimeoutMs?: number;
  /** Redirects followed (CDNs, mirrors). Default 3; authorization is dropped across origins. */
  maxRedirections?: number;
  /** How long `close()` waits for a graceful close before destroying sockets. Default 2000 ms. */
  closeTimeoutMs?: number;
  /** Sent as User-Agent. Default "narfs". */
  userAgent?: string;
}

export const HTTP_DATALAKE_DEFAULTS: Readonly<Required<HttpTuningOptions>> = Object.freeze({
  connections: 16,
  metadataConnections: 16,
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  smallFileTimeoutMs: 20_000,
  attempts: 3,
  retryBaseMs: 100,
  maxRetryAfterMs: 10_000,
  keepAliveTimeoutMs: 30_000,
  maxRedirections: 3,
  closeTimeoutMs: 2_000,
  userAgent: 'narfs',
});

/** Connection-level error codes of node:net/dns and undici that mean "try again". */
const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);
const BODY_DIED_CODES = new Set(['UND_ERR_SOCKET', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'ECONNRESET', 'EPIPE']);
/** OpenSSL/Node verification failures: the certificate will not become trusted by retrying. */
const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'CERT_REVOKED', 'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID', 'HOSTNAME_MISMATCH',
]);

/** One Agent (or ProxyAgent) and the dispatcher (redirects composed in) that requests go through. */
interface Pool {
  agent: Dispatcher;
  dispatcher: Dispatcher;
}

/** The two pools, built once the CA bundle has been read. */
interface Pools {
  metadata: Pool;
  bulk: Pool;
}

/** Carries the per-attempt facts the retry loop needs. */
interface Failure {
  error: NarfsError;
  retryable: boolean;
  retryAfterMs?: number;
}

class AttemptError extends Error {
  constructor(readonly failure: Failure) {
    super(failure.error.message);
  }
}

export class HttpDatalake implements Datalake {
  readonly displayUrl: string;
  private readonly origin: string;
  /** URL path of the cache root, ending in "/". */
  private readonly basePath: string;
  private readonly params: URLSearchParams;
  private readonly headers: Record<string, string>;
  private readonly opts: Required<HttpTuningOptions>;
  private readonly sslCertFile: string | undefined;
  private readonly auth: HttpAuth;
  /** The proxy requests go through, or undefined for direct connections. */
  private readonly proxy: URL | undefined;
  private readonly https: boolean;
  /** Set up on first use (reads the CA bundle and credentials); reset when that fails. */
  private setup: Promise<Pools> | undefined;
  /** Small files (`metadata`, never shared with NAR bodies) and NAR bodies (`bulk`). */
  private pools: Pools | undefined;
  /** Aborted by close(); every call listens to it, so it may have many listeners. */
  private readonly closer = fanOutController();

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
    if (!(this.opts.connections >= 1) || !(this.opts.metadataConnections >= 1)) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', 'connections and metadataConnections must be at least 1');
    }
  }

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
    const signal = this.liveSignal(relPath, options.signal);
    const deadlineAt = Date.now() + this.opts.smallFileTimeoutMs;
    return withDeadline(
      this.opts.smallFileTimeoutMs,
      async (attemptSignal) => {
        const { metadata } = await this.ready();
        return this.withRetries(relPath, attemptSignal, deadlineAt, async () => {
          const res = await this.send(metadata, path, relPath, attemptSignal, forbiddenIsAuth);
          if (res === undefined) return undefined;
          return this.readAll(res, relPath, attemptSignal);
        });
      },
      { code: 'ERR_DATALAKE_TIMEOUT', what: `GET ${this.describe(relPath)}`, signal },
    ).catch((e: unknown) => {
      throw this.finalError(e, relPath, signal);
    });
  }

  async getStream(relPath: string, options: GetOptions = {}): Promise<Readable | undefined> {
    const path = this.requestPath(relPath);
    const signal = this.liveSignal(relPath, options.signal);
    try {
      const { bulk } = await this.ready();
      const res = await this.withRetries(relPath, signal, undefined, () => this.send(bulk, path, relPath, signal, false));
      if (res === undefined) return undefined;
      const enc = String(res.headers['content-encoding'] ?? '').trim().toLowerCase();
      if (enc !== '' && enc !== 'identity') {
        // NARs are compressed as files (narinfo Compression:), never by the transport.
        discard(res);
        throw this.unsupportedEncoding(enc, relPath);
      }
      return this.guardBody(res, relPath, signal);
    } catch (e) {
      throw this.finalError(e, relPath, signal);
    }
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
    if (!this.closer.signal.aborted) {
      this.closer.abort(new NarfsError('ERR_ABORTED', `datalake ${this.displayUrl} was closed`));
    }
    await this.setup?.catch(() => {});
    const pools = this.pools;
    if (pools) await Promise.all([pools.metadata, pools.bulk].map(({ agent }) => this.closeAgent(agent)));
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
    if (this.closer.signal.aborted) throw this.aborted('nix-cache-info', this.closer.signal);
    this.pools = { metadata: this.pool(this.opts.metadataConnections, ca), bulk: this.pool(this.opts.connections, ca) };
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

  private async closeAgent(agent: Dispatcher): Promise<void> {
    if ((agent as { destroyed?: boolean }).destroyed === true) return;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.opts.closeTimeoutMs);
    });
    try {
      const how = await Promise.race([agent.close().then(() => 'closed' as const), timedOut]);
      if (how === 'timeout') await agent.destroy().catch(() => {});
    } catch {
      await agent.destroy().catch(() => {});
    } finally {
      clearTimeout(timer);
    }
  }

  private requestPath(relPath: string): string {
    const segs = checkRelPath(relPath);
    // Percent-encode each segment, but keep the sub-delimiters a path segment may hold
    // literally (":" and "!" of realisations/<id>!out.doi, "+" and "=" of store names).
    return this.basePath + segs.map((s) => encodeURIComponent(s).replace(/%(3A|40|2B|3D|2C|3B|24|26)/g, (m) => decodeURIComponent(m))).join('/');
  }

  private describe(relPath: string): string {
    return `${this.displayUrl}/${relPath}`;
  }

  /** The caller's signal joined with close(); throws at once if either already fired. */
  private liveSignal(relPath: string, outer: AbortSignal | undefined): AbortSignal {
    const signal = outer ? AbortSignal.any([outer, this.closer.signal]) : this.closer.signal;
    if (signal.aborted) throw this.aborted(relPath, signal);
    return signal;
  }

  private aborted(relPath: string, signal: AbortSignal): NarfsError {
    const closed = this.closer.signal.aborted;
    return new NarfsError('ERR_ABORTED', `GET ${this.describe(relPath)} was ${closed ? 'cancelled by close()' : 'aborted'}`, {
      cause: signal.reason,
    });
  }

  /**
   * One request up to its headers. Resolves the response for 200, undefined for 404/403;
   * throws AttemptError for everything else. A 401 (or, with `forbiddenIsAuth` and
   * credentials configured, a 403) is tried once more if re-reading the credential files
   * changed them, then is ERR_DATALAKE_AUTH.
   */
  private async send(
    pool: Pool,
    path: string,
    relPath: string,
    signal: AbortSignal,
    forbiddenIsAuth: boolean,
  ): Promise<Dispatcher.ResponseData | undefined> {
    for (let refreshed = false; ; refreshed = true) {
      const res = await this.request(pool, path, relPath, signal);
      const status = res.statusCode;
      if (status === 200) return res;
      discard(res);
      const authFailure = status === 401 || (status === 403 && forbiddenIsAuth && this.auth.configured);
      if (!authFailure) return this.nonAuthStatus(res, relPath);
      if (!refreshed) {
        const changed = await this.auth.refresh().catch((e: unknown) => {
          throw new AttemptError({ error: toNarfs(e), retryable: false });
        });
        if (changed) continue;
      }
      throw new AttemptError({ error: this.authError(relPath, status), retryable: false });
    }
  }

  private async request(pool: Pool, path: string, relPath: string, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
    const authorization = this.auth.header();
    try {
      return await pool.dispatcher.request({
        origin: this.origin,
        path,
        method: 'GET',
        // A fresh object per request: undici's ProxyAgent adds Host to the one it is given.
        headers: authorization === undefined ? { ...this.headers } : { ...this.headers, authorization },
        signal,
        headersTimeout: this.opts.headersTimeoutMs,
        bodyTimeout: this.opts.bodyTimeoutMs,
      });
    } catch (e) {
      throw new AttemptError(this.classify(e, relPath, signal, 'headers'));
    }
  }

  private authError(relPath: string, status: number): NarfsError {
    const configured = this.auth.configured;
    return new NarfsError(
      'ERR_DATALAKE_AUTH',
      `GET ${this.describe(relPath)}: HTTP ${status} (${configured ? 'the credentials were refused' : 'credentials are needed'})`,
      { details: { datalake: this.displayUrl, relPath, status, credentials: configured ? 'configured' : 'none' } },
    );
  }

  /** The outcome of a status that is neither 200 nor an auth failure. */
  private nonAuthStatus(res: Dispatcher.ResponseData, relPath: string): undefined {
    const status = res.statusCode;
    if (status === 404 || status === 403) return undefined;
    const where = `GET ${this.describe(relPath)}`;
    if (status >= 500 || status === 429) {
      const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
      const error = new NarfsError('ERR_DATALAKE_UNAVAILABLE', `${where}: HTTP ${status}`, {
        cause: new NarfsError('ERR_DATALAKE_HTTP', `HTTP ${status}`, { details: { status } }),
        details: { datalake: this.displayUrl, relPath, status },
      });
      throw new AttemptError({ error, retryable: true, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) });
    }
    const error = new NarfsError('ERR_DATALAKE_HTTP', `${where}: unexpected HTTP ${status}`, {
      details: { datalake: this.displayUrl, relPath, status },
    });
    throw new AttemptError({ error, retryable: false });
  }

  /** Reads a whole 200 body, checking it against Content-Length. */
  private async readAll(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal): Promise<Buffer> {
    const expected = contentLength(res.headers);
    const chunks: Buffer[] = [];
    let received = 0;
    try {
      for await (const chunk of res.body) {
        chunks.push(chunk as Buffer);
        received += (chunk as Buffer).length;
      }
    } catch (e) {
      throw new AttemptError(this.classify(e, relPath, signal, 'body', { received, expected }));
    }
    if (expected !== undefined && received < expected) {
      throw new AttemptError({ error: this.truncated(relPath, received, expected), retryable: true });
    }
    return this.decode(Buffer.concat(chunks, received), res.headers['content-encoding'], relPath);
  }

  /**
   * Undoes a Content-Encoding, as Nix's file transfer does: an S3 bucket written with
   * `narinfo-compression`/`ls-compression` serves narinfo and .ls files encoded. gzip,
   * deflate and br are decoded (off the main thread); anything else is ERR_DATALAKE_HTTP.
   */
  private async decode(body: Buffer, encoding: string | string[] | undefined, relPath: string): Promise<Buffer> {
    const enc = (Array.isArray(encoding) ? encoding.join(',') : (encoding ?? '')).trim().toLowerCase();
    if (enc === '' || enc === 'identity') return body;
    const decoder = { gzip: gunzipAsync, 'x-gzip': gunzipAsync, deflate: inflateAsync, br: brotliAsync }[enc];
    if (!decoder) throw new AttemptError({ error: this.unsupportedEncoding(enc, relPath), retryable: false });
    try {
      return await decoder(body);
    } catch (e) {
      throw new AttemptError({
        error: new NarfsError('ERR_DATALAKE_HTTP', `GET ${this.describe(relPath)}: body does not decode as ${enc}`, {
          cause: e,
          details: { datalake: this.displayUrl, relPath, contentEncoding: enc },
        }),
        retryable: false,
      });
    }
  }

  private unsupportedEncoding(enc: string, relPath: string): NarfsError {
    return new NarfsError('ERR_DATALAKE_HTTP', `GET ${this.describe(relPath)}: unsupported Content-Encoding '${enc}'`, {
      details: { datalake: this.displayUrl, relPath, contentEncoding: enc },
      hint: 'narfs decodes gzip, deflate and br bodies; store NARs compressed as files (Compression: in the narinfo) instead.',
    });
  }

  /**
   * Wraps a 200 body so that every way it can die surfaces as a NarfsError on the stream:
   * ERR_DATALAKE_TRUNCATED (closed early), ERR_DATALAKE_TIMEOUT (idle), ERR_ABORTED; held
   * until the caller consumes the stream if it dies before that (GuardedReadable). A
   * hand-written wrapper rather than Readable.from(async generator): destroying it must
   * release the socket at once, even while the body is stalled.
   */
  private guardBody(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal): Readable {
    const expected = contentLength(res.headers);
    let received = 0;
    return new GuardedReadable(res.body, {
      onChunk: (chunk) => void (received += chunk.length),
      atEnd: () =>
        expected !== undefined && received < expected ? this.truncated(relPath, received, expected) : undefined,
      mapError: (e) => this.classify(e, relPath, signal, 'body', { received, expected }).error,
      closedEarly: () => this.truncated(relPath, received, expected),
    });
  }

  private truncated(relPath: string, received: number, expected: number | undefined): NarfsError {
    return new NarfsError(
      'ERR_DATALAKE_TRUNCATED',
      `GET ${this.describe(relPath)}: body ended after ${received} of ${expected ?? 'unknown'} bytes`,
      { details: { datalake: this.displayUrl, relPath, received, expected } },
    );
  }

  /** Maps anything undici or node:net throws to a Failure with a NarfsError. */
  private classify(
    e: unknown,
    relPath: string,
    signal: AbortSignal,
    phase: 'headers' | 'body',
    progress?: { received: number; expected: number | undefined },
  ): Failure {
    if (e instanceof AttemptError) return e.failure;
    if (signal.aborted) {
      const reason: unknown = signal.reason;
      // withDeadline aborts the attempt with its own ERR_DATALAKE_TIMEOUT: keep that code.
      if (reason instanceof NarfsError && reason.code === 'ERR_DATALAKE_TIMEOUT') return { error: reason, retryable: false };
      return { error: this.aborted(relPath, signal), retryable: false };
    }
    const code = errorCode(e);
    const where = `GET ${this.describe(relPath)}`;
    const details = { datalake: this.displayUrl, relPath, phase, cause: code };
    const make = (c: ErrorCode, what: string) =>
      new NarfsError(c, `${where}: ${what}`, { cause: e, details: { ...details, ...progress } });
    const tlsCode = [code, causeCode(e)].find((c) => c !== undefined && TLS_CODES.has(c));
    if (tlsCode !== undefined) {
      return { error: make('ERR_DATALAKE_TLS', `TLS: ${tlsCode} (the server certificate is not trusted)`), retryable: false };
    }
    if (/\(407\)/.test(e instanceof Error ? e.message : '')) {
      const error = make('ERR_DATALAKE_AUTH', `the proxy ${this.proxy?.origin ?? ''} wants credentials (HTTP 407)`);
      return {
        error: new NarfsError('ERR_DATALAKE_AUTH', error.message, {
          cause: e,
          details: error.details,
          hint: 'The proxy refused the request: put its user:password in the proxy URL (http://user:pass@host:port), in the --config file or the environment, never on the command line.',
        }),
        retryable: false,
      };
    }
    if (code !== undefined && TIMEOUT_CODES.has(code)) {
      const which =
        code === 'UND_ERR_CONNECT_TIMEOUT'
          ? `no connection within ${this.opts.connectTimeoutMs} ms`
          : code === 'UND_ERR_HEADERS_TIMEOUT'
            ? `no response headers within ${this.opts.headersTimeoutMs} ms`
            : code === 'UND_ERR_BODY_TIMEOUT'
              ? `body stalled for ${this.opts.bodyTimeoutMs} ms`
              : 'timed out';
      return { error: make('ERR_DATALAKE_TIMEOUT', which), retryable: true };
    }
    if (phase === 'body' && code !== undefined && BODY_DIED_CODES.has(code)) {
      const got = progress ? ` after ${progress.received} of ${progress.expected ?? 'unknown'} bytes` : '';
      return { error: make('ERR_DATALAKE_TRUNCATED', `connection closed mid-body${got}`), retryable: true };
    }
    if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') {
      return { error: this.aborted(relPath, this.closer.signal), retryable: false };
    }
    if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
      return { error: make('ERR_INTERNAL', 'request rejected by the HTTP client'), retryable: false };
    }
    const msg = e instanceof Error ? e.message : String(e);
    return { error: make('ERR_DATALAKE_UNAVAILABLE', `${code ?? 'failed'}: ${msg}`), retryable: true };
  }

  /**
   * Runs `attempt` up to `attempts` times while failures are retryable, sleeping an
   * exponential, jittered backoff (or Retry-After) between tries; never sleeps past
   * `deadlineAt`. Throws the last failure's NarfsError.
   */
  private async withRetries<T>(
    relPath: string,
    signal: AbortSignal,
    deadlineAt: number | undefined,
    attempt: () => Promise<T>,
  ): Promise<T> {
    for (let i = 1; ; i++) {
      let failure: Failure;
      try {
        return await attempt();
      } catch (e) {
        failure = this.classify(e, relPath, signal, 'headers');
      }
      const err = failure.error;
      if (!failure.retryable || i >= this.opts.attempts) {
        if (i > 1 && err.details) err.details.attempts = i;
        throw err;
      }
      const backoff = this.opts.retryBaseMs * 2 ** (i - 1) * (0.5 + Math.random());
      let wait = backoff;
      if (failure.retryAfterMs !== undefined) {
        const cap = deadlineAt === undefined ? this.opts.maxRetryAfterMs : deadlineAt - Date.now();
        if (failure.retryAfterMs > cap) throw err; // the server asks for more time than we have
        wait = Math.max(backoff, failure.retryAfterMs);
      }
      if (deadlineAt !== undefined && Date.now() + wait >= deadlineAt) throw err;
      await sleep(wait, signal).catch(() => {
        throw this.aborted(relPath, signal);
      });
    }
  }

  /** The error a public method throws: always a NarfsError, never carrying a secret. */
  private finalError(e: unknown, relPath: string, signal: AbortSignal): NarfsError {
    if (e instanceof AttemptError) return e.failure.error;
    if (e instanceof NarfsError) {
      if (e.code === 'ERR_ABORTED' || signal.aborted) return e.code === 'ERR_ABORTED' ? e : this.aborted(relPath, signal);
      return e;
    }
    return this.classify(e, relPath, signal, 'headers').error;
  }
}

// --- small helpers

const gunzipAsync = promisify(zlib.gunzip);
const inflateAsync = promisify(zlib.inflate);
const brotliAsync = promisify(zlib.brotliDecompress);

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function causeCode(e: unknown): string | undefined {
  const c = ((e as { cause?: unknown } | null)?.cause as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

function toNarfs(e: unknown): NarfsError {
  return e instanceof NarfsError ? e : new NarfsError('ERR_INTERNAL', e instanceof Error ? e.message : String(e), { cause: e });
}

function errorCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  if (typeof c === 'string') return c;
  const inner = (e as { cause?: unknown } | null)?.cause;
  const ic = (inner as { code?: unknown } | null)?.code;
  return typeof ic === 'string' ? ic : undefined;
}

function contentLength(headers: Record<string, string | string[] | undefined>): number | undefined {
  const v = headers['content-length'];
  if (typeof v !== 'string' || !/^\d+$/.test(v)) return undefined;
  return Number(v);
}

/** Retry-After as delta-seconds or an HTTP date, in ms from now. */
function parseRetryAfter(v: string | string[] | undefined): number | undefined {
  if (typeof v !== 'string') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** Drops an unwanted (error) body without waiting for it. */
function discard(res: Dispatcher.ResponseData): void {
  res.body.dump({ limit: 64 * 1024 }).catch(() => {});
}
