/**
 * HttpTransfer: what every HTTP-speaking datalake (HttpDatalake, S3Datalake) does the same
 * way once a request is built — deadlines and signals, the retry loop, the mapping of
 * undici and node:net failures to coded errors, reading a small body against its
 * Content-Length, undoing a Content-Encoding, and guarding a NAR body. The backends keep
 * only what differs: how a request is addressed and authorised, and what an answer means.
 *
 * Invariants (each backend's header restates them for its own protocol):
 * - retries: only what `classify` marks retryable (connection errors, timeouts, a body that
 *   dies early, 5xx/429 reported by the backend), at most `attempts` tries, exponential
 *   backoff with ±50 % jitter from `retryBaseMs`, or Retry-After when the server asks and it
 *   fits the deadline (else fail now); never sleeping past `deadlineAt`;
 * - every failure leaves as a NarfsError: ERR_DATALAKE_TIMEOUT (connect, headers, body
 *   idle), ERR_DATALAKE_TRUNCATED (the body closed early, also when counted short),
 *   ERR_DATALAKE_TLS (a certificate that will not become trusted by retrying, never
 *   retried), ERR_ABORTED (the caller's signal or close()), ERR_DATALAKE_UNAVAILABLE for
 *   the rest; a deadline of withDeadline keeps its own ERR_DATALAKE_TIMEOUT;
 * - no message or detail carries more than the backend's `displayUrl` and the relPath.
 */
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import type { Dispatcher } from './undici-client.js';
import { sleep } from '../deadline.js';
import { NarfsError, type ErrorCode } from '../errors.js';
import { fanOutController } from './datalake.js';
import { GuardedReadable } from './guarded-readable.js';

/** Timeouts, retries and pools shared by the HTTP-speaking backends. */
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

export const HTTP_TUNING_DEFAULTS: Readonly<Required<HttpTuningOptions>> = Object.freeze({
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

/** Carries the per-attempt facts the retry loop needs. */
export interface Failure {
  error: NarfsError;
  retryable: boolean;
  retryAfterMs?: number;
}

/** Thrown inside an attempt; the retry loop reads its Failure. */
export class AttemptError extends Error {
  constructor(readonly failure: Failure) {
    super(failure.error.message);
  }
}

export type Phase = 'headers' | 'body';
export interface Progress { received: number; expected: number | undefined }

/**
 * A backend's own reading of a transport failure (e.g. a proxy's 407), asked before the
 * shared rules; `make` builds a NarfsError with the usual message and details.
 */
export type SpecialFailure = (e: unknown, make: (code: ErrorCode, what: string) => NarfsError) => Failure | undefined;

export class HttpTransfer {
  /** Aborted by close(); every call listens to it, so it may have many listeners. */
  readonly closer = fanOutController();

  constructor(
    readonly displayUrl: string,
    readonly opts: Readonly<Required<HttpTuningOptions>>,
    /** How a relPath is named in messages (never with secrets). */
    readonly describe: (relPath: string) => string,
    private readonly special?: SpecialFailure,
  ) {}

  /** The caller's signal joined with close(); throws at once if either already fired. */
  liveSignal(relPath: string, outer: AbortSignal | undefined): AbortSignal {
    const signal = outer ? AbortSignal.any([outer, this.closer.signal]) : this.closer.signal;
    if (signal.aborted) throw this.aborted(relPath, signal);
    return signal;
  }

  aborted(relPath: string, signal: AbortSignal): NarfsError {
    const closed = this.closer.signal.aborted;
    return new NarfsError('ERR_ABORTED', `GET ${this.describe(relPath)} was ${closed ? 'cancelled by close()' : 'aborted'}`, {
      cause: signal.reason,
    });
  }

  /** Aborts every call in flight (ERR_ABORTED); the backend then closes its Agents. */
  abortAll(): void {
    if (!this.closer.signal.aborted) {
      this.closer.abort(new NarfsError('ERR_ABORTED', `datalake ${this.displayUrl} was closed`));
    }
  }

  truncated(relPath: string, received: number, expected: number | undefined): NarfsError {
    return new NarfsError('ERR_DATALAKE_TRUNCATED', `GET ${this.describe(relPath)}: body ended after ${received} of ${expected ?? 'unknown'} bytes`, {
      details: { datalake: this.displayUrl, relPath, received, expected },
    });
  }

  /** Maps anything undici or node:net throws to a Failure with a NarfsError. */
  classify(e: unknown, relPath: string, signal: AbortSignal, phase: Phase, progress?: Progress): Failure {
    if (e instanceof AttemptError) return e.failure;
    if (signal.aborted) {
      const reason: unknown = signal.reason;
      // withDeadline aborts the attempt with its own ERR_DATALAKE_TIMEOUT: keep that code.
      if (reason instanceof NarfsError && reason.code === 'ERR_DATALAKE_TIMEOUT') return { error: reason, retryable: false };
      return { error: this.aborted(relPath, signal), retryable: false };
    }
    if (e instanceof NarfsError) return { error: e, retryable: false };
    const code = errorCode(e);
    const where = `GET ${this.describe(relPath)}`;
    const details = { datalake: this.displayUrl, relPath, phase, cause: code };
    const make = (c: ErrorCode, what: string) => new NarfsError(c, `${where}: ${what}`, { cause: e, details: { ...details, ...progress } });
    const tlsCode = [code, causeCode(e)].find((c) => c !== undefined && TLS_CODES.has(c));
    if (tlsCode !== undefined) {
      return { error: make('ERR_DATALAKE_TLS', `TLS: ${tlsCode} (the server certificate is not trusted)`), retryable: false };
    }
    const special = this.special?.(e, make);
    if (special) return special;
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

  /** A 5xx/429 answer (or a backend's equivalent): retryable, with the server's Retry-After. */
  unavailable(res: Dispatcher.ResponseData, relPath: string, said: string, details: Record<string, unknown>): AttemptError {
    const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
    const error = new NarfsError('ERR_DATALAKE_UNAVAILABLE', `GET ${this.describe(relPath)}: ${said}`, {
      cause: new NarfsError('ERR_DATALAKE_HTTP', `HTTP ${res.statusCode}`, { details: { status: res.statusCode } }),
      details,
    });
    return new AttemptError({ error, retryable: true, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) });
  }

  /**
   * Runs `attempt` up to `attempts` times while failures are retryable, sleeping an
   * exponential, jittered backoff (or Retry-After) between tries; never sleeps past
   * `deadlineAt`. Throws the last failure's NarfsError.
   */
  async withRetries<T>(relPath: string, signal: AbortSignal, deadlineAt: number | undefined, attempt: () => Promise<T>): Promise<T> {
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
  finalError(e: unknown, relPath: string, signal: AbortSignal): NarfsError {
    if (e instanceof AttemptError) return e.failure.error;
    if (e instanceof NarfsError) {
      if (e.code === 'ERR_ABORTED' || signal.aborted) return e.code === 'ERR_ABORTED' ? e : this.aborted(relPath, signal);
      return e;
    }
    return this.classify(e, relPath, signal, 'headers').error;
  }

  /** Reads a whole body, checking it against Content-Length (not decoded). */
  async readAll(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal): Promise<Buffer> {
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
    return Buffer.concat(chunks, received);
  }

  /**
   * Undoes a Content-Encoding, as Nix's file transfer does: an S3 bucket written with
   * `narinfo-compression`/`ls-compression` serves narinfo and .ls files encoded. gzip,
   * deflate and br are decoded (off the main thread); anything else is ERR_DATALAKE_HTTP.
   */
  async decode(body: Buffer, encoding: string | string[] | undefined, relPath: string): Promise<Buffer> {
    const enc = headerText(encoding).toLowerCase();
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

  unsupportedEncoding(enc: string, relPath: string): NarfsError {
    return new NarfsError('ERR_DATALAKE_HTTP', `GET ${this.describe(relPath)}: unsupported Content-Encoding '${enc}'`, {
      details: { datalake: this.displayUrl, relPath, contentEncoding: enc },
      hint: 'narfs decodes gzip, deflate and br small files; store NARs compressed as files (Compression: in the narinfo) instead.',
    });
  }

  /** A NAR body must come as it is stored: any Content-Encoding is refused (the body is dropped). */
  refuseEncoded(res: Dispatcher.ResponseData, relPath: string): void {
    const enc = headerText(res.headers['content-encoding']).toLowerCase();
    if (enc !== '' && enc !== 'identity') {
      discard(res);
      throw this.unsupportedEncoding(enc, relPath);
    }
  }

  /**
   * Wraps a 200 body so that every way it can die surfaces as a NarfsError on the stream:
   * ERR_DATALAKE_TRUNCATED (closed early), ERR_DATALAKE_TIMEOUT (idle), ERR_ABORTED; held
   * until the caller consumes the stream if it dies before that (GuardedReadable), while
   * the socket is released at once.
   */
  guardBody(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal): Readable {
    const expected = contentLength(res.headers);
    let received = 0;
    return new GuardedReadable(res.body, {
      onChunk: (chunk) => void (received += chunk.length),
      atEnd: () => (expected !== undefined && received < expected ? this.truncated(relPath, received, expected) : undefined),
      mapError: (e) => this.classify(e, relPath, signal, 'body', { received, expected }).error,
      closedEarly: () => this.truncated(relPath, received, expected),
    });
  }

  /**
   * The body of an answer to `Range: bytes=offset-(offset+length-1)`, as exactly the bytes
   * [offset, offset+length) clipped at the file's end (RFC 9110 §14):
   * - 206: Content-Range must be `bytes offset-last/total` with last < offset+length, and
   *   end at offset+length-1 unless the file ends there (last = total-1); anything else (no
   *   header, another start, a multipart answer) is ERR_DATALAKE_HTTP, never sliced
   *   blindly; a body of another length than Content-Range says is ERR_DATALAKE_TRUNCATED;
   * - 200 (a server that ignores Range): the whole body arrives; bytes before `offset` are
   *   read and dropped, the wanted ones kept, and the body is destroyed (its socket
   *   dropped) as soon as offset+length is reached. A body that ends at or before
   *   `offset` means the offset is past the end: ERR_INVALID_ARGUMENT;
   * - any Content-Encoding is refused: ranges address the file as stored.
   * Failures are AttemptErrors (retryable where the transport's are).
   */
  async readRange(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal, offset: number, length: number): Promise<Buffer> {
    const enc = headerText(res.headers['content-encoding']).toLowerCase();
    if (enc !== '' && enc !== 'identity') {
      discard(res);
      throw new AttemptError({ error: this.unsupportedEncoding(enc, relPath), retryable: false });
    }
    if (res.statusCode === 200) return this.sliceWhole(res, relPath, signal, offset, length);
    const said = headerText(res.headers['content-range']);
    const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(said);
    const first = cr ? Number(cr[1]) : NaN;
    const last = cr ? Number(cr[2]) : NaN;
    const total = cr && cr[3] !== '*' ? Number(cr[3]) : undefined;
    const wantLast = offset + length - 1;
    const ok =
      cr !== null && first === offset && last >= first && last <= wantLast &&
      (total === undefined ? last === wantLast : last < total && (last === wantLast || last === total - 1));
    if (!ok) {
      discard(res);
      throw new AttemptError({
        error: new NarfsError('ERR_DATALAKE_HTTP', `GET ${this.describe(relPath)}: 206 with a Content-Range that is not the one asked for (bytes ${offset}-${wantLast})`, {
          details: { datalake: this.displayUrl, relPath, offset, length, contentRange: said },
        }),
        retryable: false,
      });
    }
    const body = await this.readAll(res, relPath, signal);
    const want = last - offset + 1;
    if (body.length !== want) throw new AttemptError({ error: this.truncated(relPath, body.length, want), retryable: true });
    return body;
  }

  /** A 200 to a ranged GET: keeps [offset, offset+length), drops the rest of the body. */
  private async sliceWhole(res: Dispatcher.ResponseData, relPath: string, signal: AbortSignal, offset: number, length: number): Promise<Buffer> {
    const expected = contentLength(res.headers);
    const end = offset + length;
    const parts: Buffer[] = [];
    let pos = 0;
    try {
      for await (const chunk of res.body) {
        const c = chunk as Buffer;
        const from = Math.max(offset - pos, 0);
        const to = Math.min(end - pos, c.length);
        if (to > from) parts.push(c.subarray(from, to));
        pos += c.length;
        if (pos >= end) break; // leaving the loop destroys the body: the rest is never read
      }
    } catch (e) {
      throw new AttemptError(this.classify(e, relPath, signal, 'body', { received: pos, expected }));
    }
    if (!res.body.destroyed) res.body.destroy();
    if (pos < end && expected !== undefined && pos < expected) {
      throw new AttemptError({ error: this.truncated(relPath, pos, expected), retryable: true });
    }
    if (pos <= offset) {
      throw new AttemptError({
        error: new NarfsError('ERR_INVALID_ARGUMENT', `GET ${this.describe(relPath)}: offset ${offset} is at or past the end of the file (${pos} bytes)`, {
          details: { datalake: this.displayUrl, relPath, offset, length, size: pos },
        }),
        retryable: false,
      });
    }
    return Buffer.concat(parts);
  }

  /** The answer to a 416 (Range Not Satisfiable): the offset lies at or past the end. */
  rangeNotSatisfiable(relPath: string, offset: number, length: number): AttemptError {
    return new AttemptError({
      error: new NarfsError('ERR_INVALID_ARGUMENT', `GET ${this.describe(relPath)}: offset ${offset} is at or past the end of the file`, {
        details: { datalake: this.displayUrl, relPath, offset, length },
      }),
      retryable: false,
    });
  }

  /** Closes an Agent gracefully, destroying its sockets after `closeTimeoutMs`. */
  async closeAgent(agent: Dispatcher): Promise<void> {
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
}

// --- small helpers

const gunzipAsync = promisify(zlib.gunzip);
const inflateAsync = promisify(zlib.inflate);
const brotliAsync = promisify(zlib.brotliDecompress);

export function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function headerText(v: string | string[] | undefined): string {
  return (Array.isArray(v) ? v.join(',') : (v ?? '')).trim();
}

/** The `code` of an error or of its cause. */
export function errorCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  if (typeof c === 'string') return c;
  return causeCode(e);
}

export function causeCode(e: unknown): string | undefined {
  const c = ((e as { cause?: unknown } | null)?.cause as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

export function contentLength(headers: Record<string, string | string[] | undefined>): number | undefined {
  const v = headers['content-length'];
  if (typeof v !== 'string' || !/^\d+$/.test(v)) return undefined;
  return Number(v);
}

/** Retry-After as delta-seconds or an HTTP date, in ms from now. */
export function parseRetryAfter(v: string | string[] | undefined): number | undefined {
  if (typeof v !== 'string') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** Drops an unwanted (error) body without waiting for it. */
export function discard(res: Dispatcher.ResponseData): void {
  res.body.dump({ limit: 64 * 1024 }).catch(() => {});
}
