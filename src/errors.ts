/**
 * The one error class of narfs and its catalog of stable codes.
 *
 * Invariant: every error that crosses a module boundary is a NarfsError whose `code`
 * is listed below, with a `hint` written for the person who reads the log. Callers match
 * on `code`, never on messages. Errno is chosen once, at the FUSE edge (src/fuse), from
 * the code: absence is not an error here (functions return `undefined`).
 *
 * Secrets (tokens, keys, credentials in URLs) must never be put into a message or hint.
 */

/** Code → default hint. Add new codes in the section of the module that raises them. */
export const ERROR_CATALOG = {
  // --- generic
  ERR_INTERNAL: 'This is a bug in narfs; please report it with the log line.',
  ERR_INVALID_ARGUMENT: 'Check the arguments passed to the command.',
  ERR_DEADLINE: 'The operation did not finish within its deadline; the datalake may be slow or down.',
  ERR_ABORTED: 'The operation was cancelled (shutdown or caller gave up).',
  ERR_READ_ONLY: 'The narfs store is read-only.',

  // --- src/nix: hashes, store paths, narinfo, signatures
  ERR_NIX32: 'The string is not valid nix32 (alphabet 0-9a-z without e, o, u, t) or has non-zero excess bits.',
  ERR_HASH_FORMAT: 'Hashes look like sha256:<nix32|base16|base64> or sha256-<base64>.',
  ERR_STORE_PATH: 'A store path is /nix/store/<32 nix32 chars>-<name>, name of [0-9A-Za-z+-._?=], at most 211 chars.',
  ERR_NARINFO_PARSE: 'The .narinfo file is malformed; every line must be "Key: value" and end in a newline.',
  ERR_NARINFO_CORRUPT: 'The .narinfo lacks StorePath, NarHash, URL or a non-zero NarSize.',
  ERR_NARINFO_MISMATCH: 'The .narinfo describes another store path than the one asked for.',
  ERR_NARINFO_SIGNATURE: 'No valid signature by a trusted key; check --trusted-public-keys or use --no-require-sigs.',
  ERR_KEY_FORMAT: 'Keys look like <name>:<base64>, as written by nix-store --generate-binary-cache-key.',
  ERR_CACHE_INFO: 'nix-cache-info is malformed or is for another store directory than /nix/store.',
  ERR_LISTING_PARSE: 'The .ls listing is not the JSON Nix writes ({"version":1,"root":...}).',
  ERR_DERIVATION_PARSE: 'The .drv file is not a valid ATerm derivation.',

  // --- src/nix: NAR (one code per rejection rule of nix-formats.md §1.3)
  ERR_NAR_MAGIC: 'The data is not a Nix archive (bad magic).',
  ERR_NAR_PADDING: 'The NAR has non-zero padding bytes.',
  ERR_NAR_TAG: 'The NAR has an unexpected token where the grammar requires another.',
  ERR_NAR_FILE_TYPE: 'The NAR has an unknown node type.',
  ERR_NAR_EXECUTABLE: 'The NAR executable marker has a non-empty value.',
  ERR_NAR_NAME: 'The NAR has an invalid entry name (empty, ".", "..", "/" or NUL, or longer than 255 bytes).',
  ERR_NAR_UNSORTED: 'The NAR directory entries are not strictly sorted bytewise.',
  ERR_NAR_SYMLINK: 'The NAR has an empty symlink target, a NUL in it, or one longer than 4095 bytes.',
  ERR_NAR_LIMIT: 'The NAR has a token longer than the grammar allows.',
  ERR_NAR_DEPTH: 'The NAR nests directories 64 levels deep or more.',
  ERR_NAR_TRAILING: 'The NAR has bytes after its end.',
  ERR_NAR_TRUNCATED: 'The NAR ends before its grammar is complete (truncated download?).',
  ERR_NAR_HASH_MISMATCH: 'The NAR does not hash to the NarHash of its narinfo; the datalake holds corrupt data.',
  ERR_NAR_SIZE_MISMATCH: 'The NAR is not NarSize bytes long; the datalake holds corrupt or truncated data.',
  ERR_LISTING_MISMATCH: 'The published .ls listing does not describe the NAR; the datalake is inconsistent.',

  // --- src/nix/nar-index.ts: the signed per-file index (issue 10, piece "index")
  ERR_INDEX_PARSE: 'The .narfs-index file is malformed or truncated; narfs ignores it and fetches the whole NAR. Re-run narfs index on the datalake.',
  ERR_INDEX_SIGNATURE: 'The .narfs-index has no valid signature by a trusted key; narfs ignores it and fetches the whole NAR. Sign it with a key in --trusted-public-keys (narfs index --secret-key-file).',
  ERR_INDEX_BINDING: 'The .narfs-index describes another store path, NarHash or NarSize than its narinfo (stale index?); narfs ignores it. Re-run narfs index on the datalake.',

  // --- src/compression
  ERR_COMPRESSION_UNSUPPORTED: 'narfs reads none, xz, zstd, bzip2, br and gzip NARs.',
  ERR_DECOMPRESS: 'The compressed NAR is corrupt or truncated.',

  // --- src/datalake
  ERR_DATALAKE_URL: 'Datalakes are file:///dir, http://host/path, https://host/path or s3://bucket[/prefix][?region=…&endpoint=…&profile=…].',
  ERR_DATALAKE_UNAVAILABLE: 'The datalake could not be reached or answered with an error; narfs tried the others.',
  ERR_DATALAKE_TIMEOUT: 'The datalake did not answer within the deadline.',
  ERR_DATALAKE_HTTP: 'The datalake answered with an unexpected HTTP status.',
  ERR_DATALAKE_TRUNCATED: 'The datalake closed the body before all of it arrived.',
  ERR_NOT_BINARY_CACHE: 'The URL does not serve a nix-cache-info file; is it a Nix binary cache?',
  ERR_DATALAKE_AUTH: 'The datalake refused the credentials (or wants some): check --netrc-file, --bearer-token-file or the S3 keys.',
  ERR_DATALAKE_TLS: 'The datalake\'s TLS certificate is not trusted: give its CA bundle with --ssl-cert-file, and check the host name and the certificate dates.',
  ERR_DATALAKE_FILE: 'A file named by the datalake settings (--netrc-file, --bearer-token-file, --ssl-cert-file) could not be read or is malformed.',
  ERR_SECRET_PERMISSIONS: 'A file holding a secret (token, netrc, credentials, key) may be read by others: make it private with chmod 600, owned by you (or root).',

  // --- src/slice
  ERR_SLICE_PARSE: 'A slice list holds one store path per line (/nix/store/<hash>-<name> or <hash>-<name>); # starts a comment.',
  ERR_SLICE_FETCH: 'The slice list could not be fetched or read; narfs keeps the last list it had (kept in the cache directory).',

  // --- ranged reads of indexed store paths (src/store/chunk-fetcher.ts, Datalake.getRange)
  ERR_INDEX_UNUSABLE: 'The index cannot serve ranged reads of this NAR (its compression is not none, or its seekable frames do not match the narinfo\'s FileHash); narfs fetches the whole NAR instead.',
  ERR_CHUNK_HASH_MISMATCH: 'A chunk fetched by a ranged read does not hash to the SHA-256 in the signed index; the datalake serves corrupt data for this NAR. The chunk was not served or cached.',
  ERR_RANGE_UNSUPPORTED: 'This datalake backend cannot read byte ranges; narfs fetches whole NARs from it.',

  // --- src/cache, src/store
  ERR_CACHE_IO: 'The cache directory could not be read or written; check its permissions and the disk.',
  ERR_CACHE_FULL: 'The filesystem of the cache directory is full (or over quota); free space there or use a larger --cache-dir. Nothing partial was kept.',
  ERR_CACHE_CORRUPT: 'A cached file no longer matches what was verified when it was stored (truncated, or changed on disk); narfs drops it and fetches it again. `narfs verify-cache` re-hashes the whole cache.',
  ERR_CACHE_LOCKED: 'Another narfs daemon uses this cache directory.',
  ERR_PATH_NOT_FOUND: 'No datalake has this store path.',
  ERR_NAR_MISSING: 'The datalake has the narinfo but not the NAR file it points to.',
  ERR_NAR_URL: 'The narinfo URL points outside the datalake that served it; narfs only fetches relative URLs.',
  ERR_SIGNATURE_POLICY: 'Give --trusted-public-keys, or --no-require-sigs to accept unsigned paths.',

  // --- src/fs (POSIX semantics; the FUSE edge maps these to errno)
  ERR_NOT_DIRECTORY: 'A path component is not a directory.',
  ERR_IS_DIRECTORY: 'The operation needs a file, not a directory.',
  ERR_NOT_SYMLINK: 'The entry is not a symbolic link.',
  ERR_STALE_INODE: 'The inode is not known to this mount (forgotten or never looked up).',
  ERR_BAD_HANDLE: 'The file handle is not open.',
  ERR_RESTART_STATE: 'The restart state of the mount (inode journal, engine state under $RUNTIME_DIRECTORY or <cache-dir>/run) could not be read or written; check that directory and its disk.',

  // --- src/fuse, src/daemon, src/cli
  ERR_MOUNT: 'The mount failed; check that /dev/fuse exists, the mountpoint is an empty directory and you may mount.',
  ERR_MOUNTPOINT: 'The mountpoint must be an existing directory.',
  ERR_FUSE_URING_UNAVAILABLE: 'FUSE over io_uring (--fuse-transport uring) needs a 6.14+ kernel with CONFIG_FUSE_IO_URING and the fuse module parameter enable_uring set to Y (echo Y > /sys/module/fuse/parameters/enable_uring); or use --fuse-transport dev, the default.',
  ERR_NAME_NOT_UTF8: 'The fuse-native backend passes names and symlink targets as UTF-8 strings and cannot serve one that is not UTF-8; mount with the native engine (the default) to serve it byte-exact.',
  ERR_USAGE: 'Run narfs --help for the commands and options.',
  ERR_CONTROL: 'The control socket of the running daemon could not be used.',
  ERR_CONFIG: 'The --config file is malformed: lines are "key = value" with the long option names of the command line, # starts a comment.',
  ERR_WORKER_PROTOCOL: 'A client of the lower-store socket sent something that is not the Nix worker protocol, or asked for an operation narfs does not serve.',
  ERR_LOWER_SOCKET: 'The --lower-socket path could not be set up: another daemon answers there, it is not a socket, or its directory is not writable.',

  // --- src/nixdb
  ERR_DB_SCHEMA: 'The lower database has a schema narfs does not know; narfs leaves it untouched.',
  ERR_DB_LOCKED: 'Another writer holds the lower database; try again when it is done.',
  ERR_DB_IO: 'The lower database could not be read or written.',
  ERR_CLOSURE_INCOMPLETE: 'A reference of the closure is in no datalake; nothing was registered.',
} as const;

export type ErrorCode = keyof typeof ERROR_CATALOG;

export interface NarfsErrorOptions {
  cause?: unknown;
  hint?: string;
  /** Structured context for logs (never secrets). */
  details?: Record<string, unknown>;
}

export class NarfsError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: NarfsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'NarfsError';
    this.code = code;
    this.hint = options.hint ?? ERROR_CATALOG[code];
    this.details = options.details;
  }
}

export function isNarfsError(e: unknown, code?: ErrorCode): e is NarfsError {
  return e instanceof NarfsError && (code === undefined || e.code === code);
}

/** Wraps anything thrown into a NarfsError, keeping an existing one as it is. */
export function toNarfsError(e: unknown, code: ErrorCode = 'ERR_INTERNAL'): NarfsError {
  if (e instanceof NarfsError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new NarfsError(code, message, { cause: e });
}
