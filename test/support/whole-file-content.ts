/**
 * WholeFileContent: RootNodes + ContentReader for one store path whose regular files each
 * lie in a standalone local file, `blobs/<aa>/<sha256hex>` (the per-file cache layout of
 * issue 10's design), so the FUSE engine's passthrough can be tested and measured before
 * the cache keeps blobs. The NAR is made by real Nix (`nix-store --dump` of a directory);
 * each regular file's bytes are cut from it at their narOffset and written once per
 * content (mode 0444). Reads that reach JS are served from the NAR file by pread.
 *
 * Invariants: `contentFile` names a blob only while it is not dropped; `drop` tells the
 * `watchDropped` listeners (as a cache does when it finds a blob damaged), `restore` makes
 * it available again (as a refetch does). Call `close` to release the NAR descriptor.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { open, mkdir, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContentReader, RootNodes } from '../../src/fs/store-filesystem.js';
import type { NarNode } from '../../src/nix/nar-listing.js';
import { parseNar } from '../../src/nix/nar-parser.js';

/** `nix-store --dump dir` as bytes (a real NAR), with a deadline fit for a loaded machine. */
export function dumpNar(dir: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile('nix-store', ['--dump', dir], { encoding: 'buffer', maxBuffer: 2 ** 31, timeout: 300_000, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => (err ? reject(new Error(`nix-store --dump ${dir}: ${err.message} ${stderr.toString()}`)) : resolve(stdout)));
  });
}

export class WholeFileContent implements RootNodes, ContentReader {
  readonly name: string;
  readonly root: NarNode;
  /** narOffset → blob path, for every regular file of size > 0. */
  readonly blobs = new Map<number, string>();
  /** narOffset → file size. */
  readonly sizes = new Map<number, number>();
  readonly #dropped = new Set<number>();
  readonly #listeners: Array<(name: string, path: string) => void> = [];
  readonly #nar: FileHandle;

  private constructor(name: string, root: NarNode, nar: FileHandle) {
    this.name = name;
    this.root = root;
    this.#nar = nar;
  }

  /** Dumps `src` with nix-store, writes its NAR and one blob per content under `dir`. */
  static async fromDirectory(src: string, name: string, dir: string): Promise<WholeFileContent> {
    const nar = await dumpNar(src);
    const root = parseNar(nar);
    const narPath = join(dir, `${name}.nar`);
    await mkdir(dir, { recursive: true });
    await writeFile(narPath, nar);
    const self = new WholeFileContent(name, root, await open(narPath, 'r'));
    const files: Array<{ narOffset: number; size: number }> = [];
    const walk = (n: NarNode): void => {
      if (n.type === 'regular' && n.size > 0) files.push({ narOffset: n.narOffset, size: n.size });
      else if (n.type === 'directory') for (const c of n.entries.values()) walk(c);
    };
    walk(root);
    for (const f of files) {
      const bytes = nar.subarray(f.narOffset, f.narOffset + f.size);
      const sha = createHash('sha256').update(bytes).digest('hex');
      const path = join(dir, 'blobs', sha.slice(0, 2), sha);
      await mkdir(join(dir, 'blobs', sha.slice(0, 2)), { recursive: true });
      await writeFile(path, bytes, { mode: 0o444, flag: 'w' }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EACCES') throw e; // the same content twice: already there, read-only
      });
      self.blobs.set(f.narOffset, path);
      self.sizes.set(f.narOffset, f.size);
    }
    return self;
  }

  async resolve(name: string): Promise<NarNode | undefined> {
    return name === this.name ? this.root : undefined;
  }

  knownNames(): Iterable<string> {
    return [this.name];
  }

  async read(name: string, narOffset: number, length: number): Promise<Buffer> {
    if (name !== this.name) throw new Error(`no store path ${name}`);
    const buf = Buffer.alloc(length);
    const { bytesRead } = await this.#nar.read(buf, 0, length, narOffset);
    return buf.subarray(0, bytesRead);
  }

  contentFile(name: string, narOffset: number): { path: string; offset: number; size: number } | undefined {
    if (name !== this.name || this.#dropped.has(narOffset)) return undefined;
    const path = this.blobs.get(narOffset);
    const size = this.sizes.get(narOffset);
    return path === undefined || !size ? undefined : { path, offset: 0, size };
  }

  watchDropped(listener: (name: string, path: string) => void): void {
    this.#listeners.push(listener);
  }

  /** The blob of the file at `narOffset` must not be served any more. */
  drop(narOffset: number): void {
    const path = this.blobs.get(narOffset);
    if (!path) throw new Error(`no blob at narOffset ${narOffset}`);
    this.#dropped.add(narOffset);
    for (const l of this.#listeners) l(this.name, path);
  }

  /** The blob of the file at `narOffset` is verified and local again. */
  restore(narOffset: number): void {
    this.#dropped.delete(narOffset);
  }

  async close(): Promise<void> {
    await this.#nar.close();
  }
}

/** The narOffset of the regular file at `path` (names joined by '/') under `root`. */
export function narOffsetOf(root: NarNode, path: string): number {
  let n: NarNode | undefined = root;
  for (const part of path.split('/')) n = n?.type === 'directory' ? n.entries.get(part) : undefined;
  if (n?.type !== 'regular') throw new Error(`${path} is not a regular file`);
  return n.narOffset;
}
