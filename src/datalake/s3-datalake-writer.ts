/**
 * S3DatalakeWriter: writes objects into a Nix binary cache in an S3 bucket
 * (`s3://bucket[/prefix]?…`, the URL parameters and credentials of s3-url.ts and
 * s3-credentials.ts, as S3Datalake reads them) with SigV4-signed PutObject requests, and
 * lists narinfos with ListObjectsV2.
 *
 * Invariants:
 * - one PUT per object (S3 makes an object visible only once complete: atomic for readers);
 *   the payload hash is signed (x-amz-content-sha256 = SHA-256 of the body: putBytes hashes
 *   the bytes, putFile the local file before sending it), so a body corrupted on the way is
 *   refused by S3; putStream, which cannot hash ahead, sends UNSIGNED-PAYLOAD;
 * - a PUT is retried (3 attempts, backoff) on connection errors, 5xx, 429, SlowDown and
 *   RequestTimeout, only when the body can be sent again (bytes, local file); credential
 *   errors (401/403 with an S3 credentials code) are ERR_DATALAKE_AUTH, never retried;
 * - every request has connect, headers and body deadlines (undici Agent), and the
 *   caller's signal aborts it;
 * - secrets never appear in messages: S3's error text is scrubbed of the keys.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import aws4 from 'aws4';
import { Agent, type Dispatcher } from './undici-client.js';

import { NarfsError } from '../errors.js';
import { checkRelPath } from './datalake.js';
import type { DatalakeWriter, PutOptions } from './datalake-writer.js';
import { resolveS3Credentials, type CredentialSources, type S3Credentials } from './s3-credentials.js';
import { DEFAULT_S3_REGION, encodeS3Segment, parseS3Url, s3Target, type S3Location, type S3Target } from './s3-url.js';

export interface S3DatalakeWriterOptions {
  credentialSources?: CredentialSources;
  connectTimeoutMs?: number;
  /** Deadline for the response headers after the body was sent, and between body chunks. */
  ioTimeoutMs?: number;
  attempts?: number;
  userAgent?: string;
}

const AUTH_CODES = new Set([
  'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken', 'TokenRefreshRequired',
  'RequestTimeTooSkewed', 'RequestExpired', 'AuthorizationHeaderMalformed', 'AccessDenied', 'AllAccessDisabled',
  'InvalidSecurity', 'AccountProblem', 'PermanentRedirect', 'MissingSecurityHeader', 'AuthorizationHeaderMissing',
]);
const RETRY_CODES = new Set(['SlowDown', 'RequestTimeout', 'InternalError', 'ServiceUnavailable']);
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

interface Auth {
  credentials: S3Credentials | undefined;
  region: string;
  target: S3Target;
}

class Retryable extends Error {
  constructor(readonly error: NarfsError) {
    super(error.message);
  }
}

export class S3DatalakeWriter implements DatalakeWriter {
  readonly displayUrl: string;
  private readonly loc: S3Location;
  private readonly agent: Agent;
  private readonly attempts: number;
  private readonly userAgent: string;
  private readonly sources: CredentialSources;
  private authPromise: Promise<Auth> | undefined;

  constructor(url: string, options: S3DatalakeWriterOptions = {}) {
    this.loc = parseS3Url(url);
    this.displayUrl = this.loc.displayUrl;
    this.sources = options.credentialSources ?? {};
    this.attempts = options.attempts ?? 3;
    this.userAgent = options.userAgent ?? 'narfs';
    const io = options.ioTimeoutMs ?? 120_000;
    this.agent = new Agent({ connections: 4, connectTimeout: options.connectTimeoutMs ?? 15_000, headersTimeout: io, bodyTimeout: io });
  }

  async putBytes(relPath: string, bytes: Uint8Array, options: PutOptions = {}): Promise<void> {
    const sha = createHash('sha256').update(bytes).digest('hex');
    await this.put(relPath, () => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes.length, sha, true, options);
  }

  async putFile(relPath: string, localPath: string, options: PutOptions = {}): Promise<void> {
    const h = createHash('sha256');
    let size = 0;
    try {
      for await (const chunk of createReadStream(localPath, { highWaterMark: 1 << 20 })) {
        h.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
    } catch (e) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `cannot read the local file to publish as ${relPath}`, { cause: e });
    }
    const sha = h.digest('hex');
    await this.put(relPath, () => createReadStream(localPath, { highWaterMark: 1 << 20 }), size, sha, true, options);
  }

  async putStream(relPath: string, stream: Readable, size: number, options: PutOptions = {}): Promise<void> {
    await this.put(relPath, () => stream, size, 'UNSIGNED-PAYLOAD', false, options);
  }

  /** ListObjectsV2 under the prefix: `<hash>.narinfo` keys (not in sub-"directories"). */
  async listNarInfoHashes(options: PutOptions = {}): Promise<string[]> {
    const auth = await this.auth();
    const out: string[] = [];
    let token: string | undefined;
    const prefix = this.loc.prefix === '' ? '' : `${this.loc.prefix}/`;
    // The bucket's root path without the key prefix (list addresses the bucket).
    const encodedPrefix = prefix === '' ? '' : `${this.loc.prefix.split('/').map(encodeS3Segment).join('/')}/`;
    const bucketPath = auth.target.rootPath.slice(0, auth.target.rootPath.length - encodedPrefix.length);
    for (let page = 0; page < 100_000; page++) {
      const q = new URLSearchParams({ 'list-type': '2', delimiter: '/', prefix });
      if (token !== undefined) q.set('continuation-token', token);
      const query = [...q.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${encodeS3Segment(k)}=${encodeS3Segment(v)}`).join('&');
      const res = await this.request(auth, 'GET', `${bucketPath}?${query}`, EMPTY_SHA256, undefined, undefined, options.signal);
      const text = await readText(res, 64 << 20);
      if (res.statusCode !== 200) throw this.failure(res.statusCode, text, 'list', auth).error;
      for (const m of text.matchAll(/<Key>([^<]*)<\/Key>/g)) {
        const key = unescapeXml(m[1]!).slice(prefix.length);
        if (/^[0-9a-z]{32}\.narinfo$/.test(key)) out.push(key.slice(0, 32));
      }
      if (!/<IsTruncated>true<\/IsTruncated>/.test(text)) break;
      token = /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(text)?.[1];
      if (token === undefined) break;
      token = unescapeXml(token);
    }
    return [...new Set(out)].sort();
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  // ---------------------------------------------------------------------------

  private auth(): Promise<Auth> {
    if (this.authPromise === undefined) {
      this.authPromise = resolveS3Credentials(this.loc.profile, this.sources).then((r) => {
        const region = this.loc.region ?? r.region ?? DEFAULT_S3_REGION;
        return { credentials: r.credentials, region, target: s3Target(this.loc, region) };
      });
      this.authPromise.catch(() => {
        this.authPromise = undefined;
      });
    }
    return this.authPromise;
  }

  private async put(
    relPath: string,
    body: () => Buffer | Readable,
    size: number,
    payloadSha: string,
    repeatable: boolean,
    options: PutOptions,
  ): Promise<void> {
    const segs = checkRelPath(relPath);
    const auth = await this.auth();
    const path = auth.target.rootPath + segs.map(encodeS3Segment).join('/');
    const attempts = repeatable ? this.attempts : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await this.request(auth, 'PUT', path, payloadSha, body(), size, options.signal).catch((e: unknown) => {
          if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', `writing ${relPath} was aborted`, { cause: e });
          throw new Retryable(new NarfsError('ERR_DATALAKE_UNAVAILABLE', `PUT ${relPath} to ${this.displayUrl} failed: ${(e as Error).message}`, { cause: e }));
        });
        const text = await readText(res, 64 * 1024);
        if (res.statusCode === 200) return;
        const f = this.failure(res.statusCode, text, `PUT ${relPath}`, auth);
        if (f instanceof Retryable) throw f;
        throw f.error;
      } catch (e) {
        if (!(e instanceof Retryable)) throw e;
        if (attempt >= attempts) throw e.error;
        await sleep(200 * 2 ** attempt * (0.5 + Math.random()), undefined, options.signal ? { signal: options.signal } : {});
      }
    }
  }

  private request(
    auth: Auth,
    method: 'GET' | 'PUT',
    path: string,
    payloadSha: string,
    body: Buffer | Readable | undefined,
    size: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Dispatcher.ResponseData> {
    let headers: Record<string, string> = {
      host: auth.target.host,
      'user-agent': this.userAgent,
      'x-amz-content-sha256': payloadSha,
    };
    if (size !== undefined) headers['content-length'] = String(size);
    if (auth.credentials) {
      headers = aws4.sign({ method, host: auth.target.host, path, service: 's3', region: auth.region, headers }, auth.credentials).headers;
    }
    return this.agent.request({
      origin: auth.target.origin,
      path,
      method,
      headers,
      ...(body !== undefined ? { body } : {}),
      ...(signal !== undefined ? { signal } : {}),
    });
  }

  /** The error of a non-200 answer: Retryable for what may pass next time. */
  private failure(status: number, text: string, what: string, auth: Auth): Retryable | { error: NarfsError } {
    const code = /<Code>([^<]{1,100})<\/Code>/.exec(text)?.[1]?.trim();
    let message = /<Message>([^<]{1,500})<\/Message>/.exec(text)?.[1]?.trim() ?? '';
    const c = auth.credentials;
    for (const secret of c ? [c.accessKeyId, c.secretAccessKey, c.sessionToken ?? ''] : []) {
      if (secret.length >= 4) message = message.split(secret).join('…');
    }
    const said = code ? `${code}${message ? ` (${unescapeXml(message)})` : ''}` : `HTTP ${status}`;
    const details = { datalake: this.displayUrl, status, ...(code ? { s3Code: code } : {}) };
    if ((code !== undefined && AUTH_CODES.has(code)) || status === 401 || status === 403) {
      return {
        error: new NarfsError('ERR_DATALAKE_AUTH', `${what} on ${this.displayUrl}: S3 refused it: ${said}`, {
          details,
          hint: 'Writing needs keys with s3:PutObject (and s3:ListBucket to list): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or profile=, and region=.',
        }),
      };
    }
    const err = new NarfsError(status >= 500 || status === 429 ? 'ERR_DATALAKE_UNAVAILABLE' : 'ERR_DATALAKE_HTTP', `${what} on ${this.displayUrl}: ${said}`, { details });
    if (status >= 500 || status === 429 || (code !== undefined && RETRY_CODES.has(code))) return new Retryable(err);
    return { error: err };
  }
}

async function readText(res: Dispatcher.ResponseData, max: number): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of res.body) {
    parts.push(chunk as Buffer);
    n += (chunk as Buffer).length;
    if (n > max) {
      res.body.destroy();
      throw new NarfsError('ERR_DATALAKE_HTTP', 'S3 answered with a body larger than expected');
    }
  }
  return Buffer.concat(parts).toString('utf8');
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos);/g, (_, n: string) => ({ lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" })[n]!);
}
