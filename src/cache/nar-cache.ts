/**
 * NarCache: verified, uncompressed NARs on disk, one file per store path, with the
 * listing parsed from that very NAR beside it.
 *
 * Layout under `<cache-dir>`:
 *   nar/<hash>-<name>.nar            the NAR, byte-identical to `nix-store --dump`
 *   nar/<hash>-<name>.listing.json   its listing (`.ls` form, narOffsets into the file)
 *   tmp/                             downloads in progress (emptied at start)
 * Invariant: a `.nar` file exists only if its bytes hashed to the narinfo's NarHash and
 * its length was NarSize. It is written in tmp/, fsynced, and renamed into place after
 * its listing, so a crash never leaves a partial or unverified entry; readers serve
 * file contents with pread at `narOffset` (an equivalent of a store path's files, without
 * unpacking millions of small files).
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { NarfsError } from '../errors.js';

export interface NarTemp {
  readonly path: string;
  readonly handle: FileHandle;
  /** fsyncs, writes the listing, renames the NAR into place. */
  commit(listingJson: string): Promise<void>;
  /** Closes and deletes the temp file; never throws. */
  abort(): Promise<void>;
}

export class NarCache {
  readonly dir: string;
  readonly #narDir: string;
  readonly #tmpDir: string;

  constructor(dir: string) {
    this.dir = dir;
    this.#narDir = join(dir, 'nar');
    this.#tmpDir = join(dir, 'tmp');
  }

  async init(): Promise<void> {
    try {
      await mkdir(this.#narDir, { recursive: true });
      await rm(this.#tmpDir, { recursive: true, force: true });
      await mkdir(this.#tmpDir, { recursive: true });
    } catch (err) {
      throw new NarfsError('ERR_CACHE_IO', `cannot prepare the cache directory ${this.dir}`, { cause: err });
    }
  }

  narPath(name: string): string {
    return join(this.#narDir, `${name}.nar`);
  }

  async has(name: string): Promise<boolean> {
    try {
      return (await stat(this.narPath(name))).isFile();
    } catch {
      return false;
    }
  }

  /** The listing of a cached NAR, or undefined when the NAR is not cached. */
  async readListing(name: string): Promise<string | undefined> {
    if (!(await this.has(name))) return undefined;
    try {
      return await readFile(join(this.#narDir, `${name}.listing.json`), 'utf8');
    } catch {
      return undefined;
    }
  }

  /** Basenames of the store paths whose NAR is cached. */
  async cachedNames(): Promise<string[]> {
    const files = await readdir(this.#narDir).catch(() => [] as string[]);
    return files.filter((f) => f.endsWith('.nar')).map((f) => f.slice(0, -4));
  }

  async createTemp(name: string): Promise<NarTemp> {
    const path = join(this.#tmpDir, `${name}.${process.pid}.${randomBytes(4).toString('hex')}.nar`);
    let handle: FileHandle;
    try {
      handle = await open(path, 'wx', 0o644);
    } catch (err) {
      throw new NarfsError('ERR_CACHE_IO', `cannot create ${path}`, { cause: err });
    }
    const listingTmp = `${path}.listing`;
    let closed = false;
    const close = async () => {
      if (!closed) {
        closed = true;
        await handle.close();
      }
    };
    return {
      path,
      handle,
      commit: async (listingJson: string) => {
        try {
          await handle.datasync();
          await close();
          await writeFile(listingTmp, listingJson, { flush: true });
          await rename(listingTmp, join(this.#narDir, `${name}.listing.json`));
          await rename(path, this.narPath(name));
          await syncDir(this.#narDir);
        } catch (err) {
          await rm(path, { force: true }).catch(() => {});
          await rm(listingTmp, { force: true }).catch(() => {});
          throw new NarfsError('ERR_CACHE_IO', `cannot store the NAR of ${name}`, { cause: err });
        }
      },
      abort: async () => {
        await close().catch(() => {});
        await rm(path, { force: true }).catch(() => {});
      },
    };
  }
}

/** fsync of a directory, so renames into it survive a power cut. */
async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
