/**
 * The Datalake interface: a read-only Nix binary cache (nix-formats.md §2), addressed by
 * paths relative to its root ("nix-cache-info", "<hash>.narinfo", "<hash>.ls", "nar/…").
 *
 * Invariants every backend keeps (checked by test/integration/datalake-contract.test.ts):
 * - absence (file missing, HTTP 404 or 403) resolves to `undefined`, never throws;
 * - any other failure throws a NarfsError (ERR_DATALAKE_UNAVAILABLE, ERR_DATALAKE_TIMEOUT,
 *   ERR_DATALAKE_HTTP, ERR_DATALAKE_TRUNCATED) and never hangs: every call settles within
 *   the backend's deadlines or when `signal` aborts;
 * - a stream ends with an error, never silently, when fewer bytes arrive than announced.
 */
import type { Readable } from 'node:stream';

export interface CacheInfo {
  storeDir: string;
  wantMassQuery: boolean;
  /** Lower is preferred; Nix's default for a cache without one is 50. */
  priority: number;
}

export interface GetOptions {
  signal?: AbortSignal;
}

export interface Datalake {
  /** The URL with any credentials removed: safe for logs. */
  readonly displayUrl: string;
  /** Reads and checks nix-cache-info (StoreDir must be /nix/store). Called once at start. */
  open(options?: GetOptions): Promise<CacheInfo>;
  /** A small file, whole (narinfo, .ls, nix-cache-info), or undefined when absent. */
  getBytes(relPath: string, options?: GetOptions): Promise<Buffer | undefined>;
  /** A file as a stream (NARs), or undefined when absent. */
  getStream(relPath: string, options?: GetOptions): Promise<Readable | undefined>;
  /** Lists the hash parts of all narinfos, where the backend can (file://); else undefined. */
  listNarInfoHashes?(options?: GetOptions): Promise<string[] | undefined>;
  /** Releases connections; in-flight calls fail with ERR_ABORTED. */
  close(): Promise<void>;
}
