/**
 * DatalakeWriter: the write side of a Nix binary cache, for publishers (`narfs index`).
 * Paths are relative to the cache root and checked by checkRelPath (datalake.ts), exactly
 * as for reading, so a writer can never write outside its datalake.
 *
 * Invariants every backend keeps:
 * - a put is atomic where the backend allows it: a reader sees the old object or the new
 *   one, never a part (file://: temp file in the same directory, fsync, rename; S3: one
 *   PUT, which S3 makes visible only when complete);
 * - a put whose source delivers another number of bytes than announced fails and leaves
 *   the old object in place (ERR_DATALAKE_TRUNCATED);
 * - failures are NarfsErrors (ERR_DATALAKE_UNAVAILABLE, ERR_DATALAKE_HTTP,
 *   ERR_DATALAKE_AUTH), never secrets in a message.
 */
import type { Readable } from 'node:stream';

export interface PutOptions {
  signal?: AbortSignal;
}

export interface DatalakeWriter {
  /** The URL with any credentials removed: safe for logs. */
  readonly displayUrl: string;
  /** Writes a small object whole (narinfo, index). */
  putBytes(relPath: string, bytes: Uint8Array, options?: PutOptions): Promise<void>;
  /** Writes an object from a local file (a NAR staged on local disk). */
  putFile(relPath: string, localPath: string, options?: PutOptions): Promise<void>;
  /** Writes an object of exactly `size` bytes from a stream. */
  putStream(relPath: string, stream: Readable, size: number, options?: PutOptions): Promise<void>;
  /** The hash parts of all narinfos, where the backend lists cheaply; else undefined. */
  listNarInfoHashes?(options?: PutOptions): Promise<string[] | undefined>;
  close(): Promise<void>;
}
