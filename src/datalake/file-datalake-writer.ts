/**
 * FileDatalakeWriter: writes into a Nix binary cache in a local directory (`file:///dir`),
 * as Nix's LocalBinaryCacheStore::upsertFile does (write a temp file, then rename), so a
 * reader never sees a half-written file.
 *
 * Invariants: every put writes `<dir>/.<name>.narfs-tmp-<pid>-<random>` beside the target,
 * fsyncs it, renames it over the target (atomic on POSIX) and removes the temp file on any
 * failure; parent directories (`nar/`) are created; files get mode 0644 (as Nix writes
 * them). The root directory must exist (ERR_NOT_BINARY_CACHE otherwise). relPaths are
 * checked by checkRelPath: nothing is written outside the root.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';

import { NarfsError } from '../errors.js';
import { checkRelPath } from './datalake.js';
import type { DatalakeWriter, PutOptions } from './datalake-writer.js';
import { parseFileDatalakeUrl } from './file-datalake.js';

export class FileDatalakeWriter implements DatalakeWriter {
  readonly displayUrl: string;
  readonly root: string;

  constructor(url: string | URL) {
    this.root = parseFileDatalakeUrl(url).root;
    this.displayUrl = 'file://' + this.root;
  }

  async putBytes(relPath: string, bytes: Uint8Array, options: PutOptions = {}): Promise<void> {
    await this.atomically(relPath, options, async (fh) => {
      await fh.writeFile(bytes);
    });
  }

  async putFile(relPath: string, localPath: string, options: PutOptions = {}): Promise<void> {
    let size: number;
    try {
      size = (await fsp.stat(localPath)).size;
    } catch (e) {
      throw new NarfsError('ERR_INVALID_ARGUMENT', `cannot read the local file to publish as ${relPath}`, { cause: e });
    }
    await this.putStream(relPath, createReadStream(localPath, { highWaterMark: 1 << 20 }), size, options);
  }

  async putStream(relPath: string, stream: Readable, size: number, options: PutOptions = {}): Promise<void> {
    await this.atomically(relPath, options, async (fh) => {
      let n = 0;
      try {
        for await (const chunk of stream) {
          const b = chunk as Buffer;
          n += b.length;
          if (n > size) throw truncated(relPath, n, size, 'more');
          if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', `writing ${relPath} was aborted`);
          for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
        }
      } finally {
        if (!stream.destroyed) stream.destroy();
      }
      if (n !== size) throw truncated(relPath, n, size, 'fewer');
    });
  }

  async listNarInfoHashes(): Promise<string[]> {
    try {
      return (await fsp.readdir(this.root))
        .filter((n) => /^[0-9a-z]{32}\.narinfo$/.test(n))
        .map((n) => n.slice(0, 32))
        .sort();
    } catch (e) {
      throw this.wrap(e, '.');
    }
  }

  async close(): Promise<void> {}

  // ---------------------------------------------------------------------------

  private async atomically(relPath: string, options: PutOptions, write: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
    const target = path.join(this.root, ...checkRelPath(relPath));
    if (options.signal?.aborted) throw new NarfsError('ERR_ABORTED', `writing ${relPath} was aborted`);
    try {
      if (!(await fsp.stat(this.root)).isDirectory()) throw new Error('not a directory');
    } catch (e) {
      throw new NarfsError('ERR_NOT_BINARY_CACHE', `${this.displayUrl} is not a directory`, { cause: e });
    }
    const dir = path.dirname(target);
    const temp = path.join(dir, `.${path.basename(target)}.narfs-tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    let fh: fsp.FileHandle | undefined;
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
      fh = await fsp.open(temp, 'wx', 0o644);
      await write(fh);
      await fh.sync();
      await fh.close();
      fh = undefined;
      await fsp.rename(temp, target);
    } catch (e) {
      await fh?.close().catch(() => {});
      await fsp.rm(temp, { force: true }).catch(() => {});
      throw this.wrap(e, relPath);
    }
  }

  private wrap(e: unknown, relPath: string): NarfsError {
    if (e instanceof NarfsError) return e;
    if ((e as Error)?.name === 'AbortError') return new NarfsError('ERR_ABORTED', `writing ${relPath} was aborted`, { cause: e });
    const code = (e as NodeJS.ErrnoException)?.code;
    return new NarfsError('ERR_DATALAKE_UNAVAILABLE', `writing ${relPath} to ${this.displayUrl} failed${code ? ` (${code})` : ''}`, {
      cause: e,
      details: { datalake: this.displayUrl, relPath },
      hint: 'Check that the datalake directory is writable and its filesystem has space.',
    });
  }
}

function truncated(relPath: string, got: number, want: number, which: string): NarfsError {
  return new NarfsError('ERR_DATALAKE_TRUNCATED', `the source of ${relPath} gave ${which} bytes than the ${want} announced (${got})`);
}
