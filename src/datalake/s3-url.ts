/**
 * parseS3Url: `s3://bucket[/prefix][?params]` → where an S3 datalake's objects live.
 *
 * Follows Nix's S3 store URL (src/libstore/s3-url.cc, s3-binary-cache-store.hh): the bucket
 * is the URL's authority, the path a key prefix, and these parameters are read:
 * - `region`            signing region; default us-east-1 (Nix's default; an explicit AWS_REGION
 *                       or profile region is used when the URL has none, as the AWS tools do);
 * - `endpoint`          an S3-compatible service: a full URL (`http://127.0.0.1:9000[/base]`),
 *                       or, as older Nix accepts, a bare `host[:port]` whose scheme is `scheme=`
 *                       (default https). Without it: AWS, `https://s3.<region>.amazonaws.com`;
 * - `profile`           the AWS profile whose keys sign requests (s3-credentials.ts);
 * - `addressing-style`  `path` (`endpoint/bucket/key`), `virtual` (`bucket.endpoint/key`) or
 *                       `auto` (default): virtual on AWS for DNS-safe buckets without dots,
 *                       path otherwise and always on a custom endpoint (Nix addresses custom
 *                       endpoints path-style);
 * - `priority`, `want-mass-query`: store parameters, applied by `open()` (datalake.ts).
 * Other Nix store parameters (narinfo-compression, multipart-upload, …) concern writers and
 * are ignored.
 *
 * Invariants: pure (no I/O, no environment); user:password in the s3 URL or the endpoint is
 * refused (keys belong in the environment or a profile), and no error message repeats the URL;
 * `displayUrl` names the bucket, prefix and endpoint only.
 */
import { NarfsError } from '../errors.js';

export type AddressingStyle = 'auto' | 'path' | 'virtual';

export interface S3Location {
  bucket: string;
  /** Key prefix without leading or trailing "/", "" for the bucket root. */
  prefix: string;
  /** Region from the URL, or undefined (then the environment's, then us-east-1). */
  region: string | undefined;
  /** Custom endpoint, or undefined for AWS. */
  endpoint: URL | undefined;
  profile: string | undefined;
  addressingStyle: AddressingStyle;
  /** The URL's parameters (priority=, want-mass-query= are applied by open()). */
  params: URLSearchParams;
  /** Safe for logs: s3://bucket/prefix, plus the endpoint when there is one. */
  displayUrl: string;
}

/** Where one request goes: origin (scheme://host[:port]), the Host header, and the key's URL path. */
export interface S3Target {
  origin: string;
  host: string;
  /** URL path up to the bucket's root (ends in "/"), already percent-encoded. */
  rootPath: string;
}

export const DEFAULT_S3_REGION = 'us-east-1';

export function parseS3Url(url: string): S3Location {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new NarfsError('ERR_DATALAKE_URL', 'the s3 datalake URL is not a valid URL', {
      hint: 'S3 datalakes are s3://bucket[/prefix][?region=…&endpoint=…&profile=…&addressing-style=auto|path|virtual].',
    });
  }
  if (u.protocol !== 's3:') throw new NarfsError('ERR_DATALAKE_URL', `S3Datalake needs s3://, not ${u.protocol}//`);
  if (u.username !== '' || u.password !== '') {
    throw new NarfsError('ERR_DATALAKE_URL', 'an s3:// datalake URL must not carry credentials', {
      hint: 'Give S3 keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile in ~/.aws/credentials (profile=NAME).',
    });
  }
  const bucket = u.hostname;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(bucket) || u.port !== '') {
    throw new NarfsError('ERR_DATALAKE_URL', 'the s3:// URL has a missing or invalid bucket name', {
      hint: 'Write s3://BUCKET[/prefix]; an S3-compatible server goes into ?endpoint=http://host:port.',
    });
  }
  let prefix: string;
  try {
    prefix = u.pathname.split('/').filter((s) => s !== '').map((s) => decodeURIComponent(s)).join('/');
  } catch {
    throw new NarfsError('ERR_DATALAKE_URL', 'the key prefix of the s3:// URL is not valid percent-encoding');
  }
  const params = u.searchParams;
  const region = params.get('region') ?? undefined;
  if (region !== undefined && !/^[a-z0-9-]{1,64}$/.test(region)) {
    throw new NarfsError('ERR_DATALAKE_URL', 'the region parameter of the s3:// URL is not a region name (like eu-west-1)');
  }
  const style = params.get('addressing-style') ?? 'auto';
  if (style !== 'auto' && style !== 'path' && style !== 'virtual') {
    throw new NarfsError('ERR_DATALAKE_URL', `addressing-style must be auto, path or virtual, not '${style.slice(0, 20)}'`);
  }
  const profile = params.get('profile') ?? undefined;
  if (profile !== undefined && !/^[A-Za-z0-9_.@+-]{1,128}$/.test(profile)) {
    throw new NarfsError('ERR_DATALAKE_URL', 'the profile parameter of the s3:// URL is not a profile name');
  }
  const endpoint = parseEndpoint(params.get('endpoint'), params.get('scheme'));
  const shownEndpoint = endpoint ? `?endpoint=${endpoint.origin}${endpoint.pathname.replace(/\/$/, '')}` : '';
  return {
    bucket,
    prefix,
    region,
    endpoint,
    profile,
    addressingStyle: style,
    params,
    displayUrl: `s3://${bucket}${prefix === '' ? '' : '/' + prefix}${shownEndpoint}`,
  };
}

function parseEndpoint(raw: string | null, scheme: string | null): URL | undefined {
  if (raw === null || raw === '') return undefined;
  if (scheme !== null && scheme !== 'http' && scheme !== 'https') {
    throw new NarfsError('ERR_DATALAKE_URL', 'the scheme parameter of the s3:// URL must be http or https');
  }
  const text = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(raw) ? raw : `${scheme ?? 'https'}://${raw}`;
  let e: URL;
  try {
    e = new URL(text);
  } catch {
    throw new NarfsError('ERR_DATALAKE_URL', 'the endpoint parameter of the s3:// URL is not a URL or host[:port]');
  }
  if (e.protocol !== 'http:' && e.protocol !== 'https:') {
    throw new NarfsError('ERR_DATALAKE_URL', `the endpoint of an s3:// datalake must be http:// or https://, not ${e.protocol}//`);
  }
  if (e.username !== '' || e.password !== '') {
    throw new NarfsError('ERR_DATALAKE_URL', 'the endpoint of an s3:// datalake must not carry credentials', {
      hint: 'Give S3 keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile in ~/.aws/credentials (profile=NAME).',
    });
  }
  if (e.search !== '' || e.hash !== '') {
    throw new NarfsError('ERR_DATALAKE_URL', 'the endpoint of an s3:// datalake must not have a query or fragment (percent-encode it inside the s3:// URL)');
  }
  return e;
}

/** True when the bucket can be a DNS label of its own (virtual-hosted addressing over TLS). */
function dnsSafeBucket(bucket: string): boolean {
  return /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/.test(bucket);
}

/** Resolves where requests go for `loc` in `region` (the effective one). */
export function s3Target(loc: S3Location, region: string): S3Target {
  const base = loc.endpoint ?? new URL(`https://s3.${region}.amazonaws.com`);
  const virtual =
    loc.addressingStyle === 'virtual' || (loc.addressingStyle === 'auto' && loc.endpoint === undefined && dnsSafeBucket(loc.bucket));
  const basePath = base.pathname.endsWith('/') ? base.pathname : base.pathname + '/';
  const prefixPath = loc.prefix === '' ? '' : loc.prefix.split('/').map(encodeS3Segment).join('/') + '/';
  if (virtual) {
    const host = `${loc.bucket}.${base.host}`;
    return { origin: `${base.protocol}//${host}`, host, rootPath: basePath + prefixPath };
  }
  return { origin: base.origin, host: base.host, rootPath: `${basePath}${encodeS3Segment(loc.bucket)}/${prefixPath}` };
}

/**
 * Percent-encodes one key segment the way SigV4 canonicalises it (RFC 3986 unreserved
 * characters stay, everything else is %XX), so that the path sent is the path signed.
 */
export function encodeS3Segment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}
