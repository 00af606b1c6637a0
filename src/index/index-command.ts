/**
 * `narfs index`: argv → indexStorePath over the asked store paths (or every narinfo the
 * datalake lists), progress lines and a summary on stderr.
 *
 *   narfs index --secret-key-file KEY [--seekable] [--chunk-size N] [--frame-size N] [--zstd-level N]
 *               [--log-format text|json] DATALAKE_URL [store path | hash part ...]
 *
 * Exit codes (as the other commands): 0 every path indexed or already current, 1 some path
 * failed (each failure logged with its code; the others are still done), 2 usage error.
 */
import { parseArgs } from 'node:util';

import { openDatalake } from '../datalake/open-datalake.js';
import { openDatalakeWriter } from '../datalake/open-datalake-writer.js';
import { NarfsError, toNarfsError } from '../errors.js';
import { createLogger } from '../log.js';
import { isValidChunkSize } from '../nix/nar-index.js';
import { parseSecretKey } from '../nix/signature.js';
import { readSecretFile } from '../datalake/secret-file.js';
import { isValidHashPart, parseStorePath, parseStorePathBase } from '../nix/store-path.js';
import { indexStorePath } from './index-store-path.js';

/**
 * Chosen by measurement (scripts/measure-seekable-zstd.ts, zstd level 3 on both sides, an
 * 851 MiB NAR corpus standing in for the bench closure: the same Debian files, dumped with
 * nix-store --dump: python3.11, perl (2 dirs), /usr/include, man, doc, llvm-14).
 * seekable / plain zstd, total and worst store path:
 *
 *   chunk / frame target   total   worst
 *   256K / 256K            1.145   1.350 (include)
 *   256K / 1M              1.106   1.225 (include)
 *   256K / 2M              1.087   1.202 (doc)
 *   512K / 2M              1.051   1.086 (doc)
 *   1M   / 2M              1.038   1.085 (doc)
 *
 * 512 KiB chunks with 2 MiB frames for small files is the smallest chunk that keeps every
 * store path within the 1.1x goal; a 1 MiB read window costs at most 1.5 MiB of chunks.
 * (Frames of small files pack up to zstd level 3's 2 MiB window; a chunk of a larger file
 * is a frame of its own, so chunk size sets the size of big-file frames.)
 */
export const DEFAULT_INDEX_CHUNK_SIZE = 512 * 1024;
export const DEFAULT_FRAME_SIZE = 2 * 1024 * 1024;
/** The level Nix writes zstd NARs at (libarchive's default). */
export const DEFAULT_ZSTD_LEVEL = 3;

export const INDEX_HELP = `narfs index --secret-key-file KEY [--seekable] [--chunk-size N] DATALAKE_URL [store path ...]
  writes a signed per-file index (<hash>.narfs-index) beside each narinfo of a file:// or
  s3:// datalake (no paths: every narinfo the datalake lists); idempotent.
  --secret-key-file FILE      the key that signs the indexes (nix-store --generate-binary-cache-key)
  --seekable                  also re-encode compressed NARs as independent zstd frames aligned
                              to the chunks (nar/<FileHash>.nar.zst) and point the narinfo at it
  --chunk-size N              bytes per chunk: a power of two, 64K..4M (default 512K)
  --frame-size N              with --seekable: small files pack into frames of up to N bytes
                              (default 2M; a chunk of a larger file is always a frame of its own)
  --zstd-level N              zstd level of the seekable frames (default 3, as Nix)
`;

export async function indexCommand(args: string[]): Promise<number> {
  let values: Record<string, unknown>;
  let positionals: string[];
  try {
    const r = parseArgs({
      args,
      options: {
        'secret-key-file': { type: 'string' },
        seekable: { type: 'boolean' },
        'chunk-size': { type: 'string' },
        'zstd-level': { type: 'string' },
        'frame-size': { type: 'string' },
        'log-format': { type: 'string' },
        help: { type: 'boolean' },
      },
      allowPositionals: true,
      strict: true,
    });
    values = r.values as Record<string, unknown>;
    positionals = r.positionals;
  } catch (e) {
    throw new NarfsError('ERR_USAGE', (e as Error).message, { cause: e });
  }
  if (values.help === true) {
    process.stdout.write(INDEX_HELP);
    return 0;
  }
  const [url, ...paths] = positionals;
  if (url === undefined) throw new NarfsError('ERR_USAGE', 'narfs index needs a DATALAKE_URL', { hint: INDEX_HELP });
  const keyFile = values['secret-key-file'] as string | undefined;
  if (keyFile === undefined) throw new NarfsError('ERR_USAGE', 'narfs index needs --secret-key-file FILE');
  // A signing key is a secret: refused when others may read it, like ssh keys.
  const keyText = await readSecretFile(keyFile, 'secret key file').catch((e: unknown) => {
    if (e instanceof NarfsError) throw e;
    throw new NarfsError('ERR_USAGE', `cannot read --secret-key-file ${keyFile}: ${(e as Error).message}`);
  });
  const secretKey = parseSecretKey(keyText.toString('utf8').trim());
  const chunkSize = values['chunk-size'] === undefined ? DEFAULT_INDEX_CHUNK_SIZE : parseSize(values['chunk-size'] as string);
  if (!isValidChunkSize(chunkSize)) throw new NarfsError('ERR_USAGE', `--chunk-size must be a power of two from 64K to 4M`);
  const frameSize = values['frame-size'] === undefined ? Math.max(DEFAULT_FRAME_SIZE, chunkSize) : parseSize(values['frame-size'] as string);
  if (!(frameSize >= chunkSize && frameSize <= 64 << 20)) throw new NarfsError('ERR_USAGE', '--frame-size must be at least the chunk size and at most 64M');
  const zstdLevel = values['zstd-level'] === undefined ? DEFAULT_ZSTD_LEVEL : Number(values['zstd-level']);
  if (!Number.isInteger(zstdLevel) || zstdLevel < 1 || zstdLevel > 19) throw new NarfsError('ERR_USAGE', '--zstd-level must be 1..19');
  const hashParts = paths.map(toHashPart);
  const logger = createLogger({ format: values['log-format'] === 'json' ? 'json' : 'text' });

  const reader = openDatalake(url);
  const writer = openDatalakeWriter(url);
  let failed = 0;
  try {
    await reader.open();
    let todo = hashParts;
    if (todo.length === 0) {
      const listed = (await writer.listNarInfoHashes?.()) ?? (await reader.listNarInfoHashes?.());
      if (listed === undefined) throw new NarfsError('ERR_USAGE', `${reader.displayUrl} cannot be listed: name the store paths to index`);
      todo = listed;
    }
    const t0 = Date.now();
    let indexed = 0;
    let skipped = 0;
    let reencoded = 0;
    let narBytes = 0;
    let before = 0;
    let after = 0;
    for (const [i, hashPart] of todo.entries()) {
      try {
        const r = await indexStorePath(hashPart, { reader, writer, secretKey, chunkSize, seekable: values.seekable === true, zstdLevel, frameSize });
        const where = `[${i + 1}/${todo.length}]`;
        if (r.status === 'skipped') {
          skipped++;
          logger.info(`${where} ${r.storePath}: index is current, skipped`);
          continue;
        }
        indexed++;
        narBytes += r.narSize;
        if (r.reencoded) {
          reencoded++;
          before += r.fileSizeBefore ?? 0;
          after += r.fileSizeAfter ?? 0;
        }
        logger.info(
          `${where} ${r.storePath}: indexed ${r.files} files, ${mib(r.narSize)} NAR` +
            (r.reencoded ? `, seekable zstd ${mib(r.fileSizeAfter!)} in ${r.frames} frames (was ${r.fileSizeBefore === undefined ? '?' : mib(r.fileSizeBefore)})` : ''),
        );
      } catch (e) {
        failed++;
        const err = toNarfsError(e);
        logger.error(`${hashPart}: not indexed: ${err.message}`, { code: err.code, hint: err.hint });
      }
    }
    const ratio = reencoded > 0 && before > 0 ? `, seekable/previous size ${(after / before).toFixed(3)}` : '';
    process.stderr.write(
      `narfs: index ${reader.displayUrl}: ${indexed} indexed (${reencoded} re-encoded, ${mib(narBytes)} of NARs), ` +
        `${skipped} already current, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s${ratio}\n`,
    );
  } finally {
    await Promise.allSettled([reader.close(), writer.close()]);
  }
  return failed === 0 ? 0 : 1;
}

function toHashPart(arg: string): string {
  if (isValidHashPart(arg)) return arg;
  try {
    return (arg.startsWith('/') ? parseStorePath(arg) : parseStorePathBase(arg)).hashPart;
  } catch (e) {
    throw new NarfsError('ERR_USAGE', `'${arg}' is not a store path or hash part`, { cause: e });
  }
}

function parseSize(s: string): number {
  const m = /^(\d+)\s*([KMG]?)(i?B)?$/i.exec(s.trim());
  if (m === null) throw new NarfsError('ERR_USAGE', `'${s}' is not a size (like 262144, 256K or 1M)`);
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
