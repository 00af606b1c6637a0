/**
 * ConditionalGet: GET of one small http(s) document (a slice list) with the datalakes'
 * access settings, answering "unchanged" to a conditional request: the validators of the
 * copy in hand go out as If-None-Match / If-Modified-Since, and a 304 is `'not-modified'`
 * (RFC 9110 §13.1). Authorization comes from HttpAuth for the document's origin (bearer
 * token file, netrc, user:pass in the URL), TLS roots from the CA bundle, the proxy from
 * proxyFor; deadlines, retries and failure mapping from HttpTransfer.
 *
 * Statuses: 200 → the body; 304 → 'not-modified' (only when validators were sent);
 * 401, or 403 with credentials configured → ERR_DATALAKE_AUTH after one re-read of the
 * credential files; 5xx/429 → retried, then ERR_DATALAKE_UNAVAILABLE; anything else
 * (404 …) → ERR_SLICE_FETCH. Messages carry `display` (origin + path) only, never
 * credentials or the query.
 */
import { readFile } from 'node:fs/promises';
import { Agent, ProxyAgent, interceptors, type Dispatcher } from './undici-client.js';
import { withDeadline } from '../deadline.js';
import { NarfsError, toNarfsError } from '../errors.js';
import { HttpAuth } from './http-auth.js';
import type { HttpAccessOptions } from './http-datalake.js';
import { AttemptError, HTTP_TUNING_DEFAULTS, HttpTransfer, discard, headerText } from './http-transfer.js';
import { proxyFor } from './proxy-for.js';

export interface Validators {
  etag?: string;
  lastModified?: string;
}

export type ConditionalGetResult = 'not-modified' | ({ text: string } & Validators);

export class ConditionalGet {
  readonly display: string;
  readonly #url: URL;
  readonly #auth: HttpAuth;
  readonly #access: HttpAccessOptions;
  readonly #t: HttpTransfer;
  #agent: Dispatcher | undefined;

  constructor(url: URL, access: HttpAccessOptions = {}) {
    this.#url = url;
    this.#access = access;
    this.display = url.origin + url.pathname;
    const { netrcFile, bearerTokenFiles } = access;
    this.#auth = new HttpAuth(url, { ...(netrcFile ? { netrcFile } : {}), ...(bearerTokenFiles ? { bearerTokenFiles } : {}) });
    this.#t = new HttpTransfer(this.display, HTTP_TUNING_DEFAULTS, () => this.display);
  }

  get(validators: Validators | undefined, signal?: AbortSignal): Promise<ConditionalGetResult> {
    return this.#fetchUrl(validators, signal);
  }

  async close(): Promise<void> {
    this.#t.abortAll();
    if (this.#agent) await this.#t.closeAgent(this.#agent);
  }

  async #dispatcher(): Promise<Dispatcher> {
    if (this.#agent) return this.#agent;
    const o = HTTP_TUNING_DEFAULTS;
    let ca: Buffer | undefined;
    if (this.#access.sslCertFile) {
      ca = await readFile(this.#access.sslCertFile).catch((err: unknown) => {
        throw new NarfsError('ERR_DATALAKE_FILE', `cannot read the CA bundle ${this.#access.sslCertFile}`, { cause: err });
      });
    }
    const tls = { timeout: o.connectTimeoutMs, ...(ca ? { ca } : {}) };
    const proxy = proxyFor(this.#url, this.#access.proxy, this.#access.proxyEnv);
    const common = { connections: 2, headersTimeout: o.headersTimeoutMs, bodyTimeout: o.bodyTimeoutMs, keepAliveTimeout: o.keepAliveTimeoutMs };
    this.#agent = proxy
      ? new ProxyAgent({ ...common, uri: proxy.href, proxyTunnel: this.#url.protocol === 'https:', requestTls: tls })
      : new Agent({ ...common, connect: tls });
    return this.#agent;
  }

  async #fetchUrl(cur: Validators | undefined, outer?: AbortSignal): Promise<ConditionalGetResult> {
    const t = this.#t;
    const auth = this.#auth;
    const url = this.#url;
    const rel = 'document';
    const signal = t.liveSignal(rel, outer);
    const deadlineAt = Date.now() + HTTP_TUNING_DEFAULTS.smallFileTimeoutMs;
    try {
      return await withDeadline(HTTP_TUNING_DEFAULTS.smallFileTimeoutMs, async (attemptSignal) => {
        await auth.load();
        const agent = (await this.#dispatcher()).compose(interceptors.redirect({ maxRedirections: 3 }));
        return t.withRetries(rel, attemptSignal, deadlineAt, async () => {
          for (let refreshed = false; ; refreshed = true) {
            const headers: Record<string, string> = { 'user-agent': HTTP_TUNING_DEFAULTS.userAgent };
            const authorization = auth.header();
            if (authorization) headers.authorization = authorization;
            if (cur?.etag) headers['if-none-match'] = cur.etag;
            if (cur?.lastModified) headers['if-modified-since'] = cur.lastModified;
            let res: Dispatcher.ResponseData;
            try {
              res = await agent.request({ origin: url.origin, path: url.pathname + url.search, method: 'GET', headers, signal: attemptSignal });
            } catch (e) {
              throw new AttemptError(t.classify(e, rel, attemptSignal, 'headers'));
            }
            const status = res.statusCode;
            if (status === 304 && cur) {
              discard(res);
              return 'not-modified' as const;
            }
            if (status === 200) {
              const body = await t.readAll(res, rel, attemptSignal);
              const etag = headerText(res.headers.etag);
              const lastModified = headerText(res.headers['last-modified']);
              return { text: body.toString('utf8'), ...(etag ? { etag } : {}), ...(lastModified ? { lastModified } : {}) };
            }
            discard(res);
            if (status === 401 || (status === 403 && auth.configured)) {
              if (!refreshed && (await auth.refresh())) continue;
              throw new AttemptError({
                error: new NarfsError('ERR_DATALAKE_AUTH', `GET ${this.display}: HTTP ${status} (${auth.configured ? 'the credentials were refused' : 'credentials are needed'})`, {
                  details: { url: this.display, status },
                  hint: 'It is fetched with the datalake credentials for its host: check --bearer-token-file or --netrc-file.',
                }),
                retryable: false,
              });
            }
            if (status >= 500 || status === 429) throw t.unavailable(res, rel, `HTTP ${status}`, { url: this.display, status });
            throw new AttemptError({
              error: new NarfsError('ERR_SLICE_FETCH', `GET ${this.display}: HTTP ${status}`, { details: { url: this.display, status } }),
              retryable: false,
            });
          }
        });
      }, { code: 'ERR_DATALAKE_TIMEOUT', what: `GET ${this.display}`, signal });
    } catch (e) {
      throw toNarfsError(t.finalError(e, rel, signal));
    }
  }
}
