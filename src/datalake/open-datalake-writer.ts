/**
 * openDatalakeWriter: builds the DatalakeWriter for a URL, chosen by scheme (file://, s3://).
 * HTTP binary caches are read-only to narfs (Nix's HttpBinaryCacheStore PUTs, but without
 * a standard for it narfs does not guess). No I/O happens here, and no message repeats the
 * URL (it may carry credentials): only its scheme.
 */
import { NarfsError } from '../errors.js';
import type { DatalakeWriter } from './datalake-writer.js';
import { FileDatalakeWriter } from './file-datalake-writer.js';
import { S3DatalakeWriter, type S3DatalakeWriterOptions } from './s3-datalake-writer.js';

export function openDatalakeWriter(url: string, options: S3DatalakeWriterOptions = {}): DatalakeWriter {
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  switch (scheme) {
    case 'file':
      return new FileDatalakeWriter(url);
    case 's3':
      return new S3DatalakeWriter(url, options);
    case undefined:
      throw new NarfsError('ERR_DATALAKE_URL', 'the datalake is not a URL', { hint: 'Write a local directory as file:///absolute/dir.' });
    default:
      throw new NarfsError('ERR_DATALAKE_URL', `narfs cannot write to a '${scheme}:' datalake`, {
        hint: 'narfs index writes to file:///dir and s3://bucket[/prefix] datalakes.',
      });
  }
}
