/**
 * openDatalake: builds the Datalake backend for a URL, chosen by scheme.
 *
 * Invariant: the returned datalake has done no I/O yet (call `open()`); an unknown or
 * unsupported scheme is ERR_DATALAKE_URL at once, and no message ever repeats the URL
 * (it may carry credentials) — only its scheme.
 */
import { NarfsError } from '../errors.js';
import type { Datalake } from './datalake.js';
import { FileDatalake } from './file-datalake.js';
import { HttpDatalake, type HttpDatalakeOptions } from './http-datalake.js';
import { S3Datalake } from './s3-datalake.js';

/** Options for every backend; each backend reads the ones it knows. */
export type OpenDatalakeOptions = HttpDatalakeOptions;

export function openDatalake(url: string, options: OpenDatalakeOptions = {}): Datalake {
  const match = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url);
  if (!match) {
    throw new NarfsError('ERR_DATALAKE_URL', 'the datalake is not a URL', {
      hint: url.startsWith('/')
        ? 'Write a local directory as file:///absolute/dir.'
        : 'Datalakes are file:///dir, http://host/path, https://host/path or s3://bucket[/prefix].',
    });
  }
  const scheme = match[1]!.toLowerCase();
  switch (scheme) {
    case 'file':
      return new FileDatalake(url);
    case 'http':
    case 'https':
      return new HttpDatalake(url, options);
    case 's3': {
      // HttpDatalake's tuning applies to S3 too; S3 signatures are host-bound, so no redirects.
      const { maxRedirections: _ignored, ...s3Options } = options;
      return new S3Datalake(url, s3Options);
    }
    default:
      throw new NarfsError('ERR_DATALAKE_URL', `unknown datalake scheme '${scheme}:'`);
  }
}
