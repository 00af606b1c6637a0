/**
 * A small daemon for the unprivileged-mount test: serves one store path, built in memory
 * with writeNar/parseNar (so offsets are those of a real NAR), through NativeMount mounted
 * by fusermount3. Each regular file's bytes are also a standalone file (a per-file blob,
 * offset 0), so the engine may pass them through (root) or pread them (everyone else).
 * Prints "mounted" when the kernel's INIT came; on SIGTERM prints "stats <engine stats
 * JSON>", unmounts and prints "unmounted".
 * usage: node --import tsx native-user-mount.ts <mountpoint> <name>
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StoreFilesystem, type ContentReader, type RootNodes } from '../../src/fs/store-filesystem.js';
import { NativeMount } from '../../src/fuse/native-mount.js';
import { parseNar } from '../../src/nix/nar-parser.js';
import { writeNar, type NarTree } from '../../src/nix/nar-writer.js';
import type { NarNode } from '../../src/nix/nar-listing.js';

export const USER_MOUNT_TREE: NarTree = {
  type: 'directory',
  entries: {
    bin: { type: 'directory', entries: { hello: { type: 'regular', contents: '#!/bin/sh\necho hello\n', executable: true } } },
    'data.txt': { type: 'regular', contents: 'unprivileged narfs\n' },
    link: { type: 'symlink', target: 'data.txt' },
  },
};

const [mountpoint, name] = process.argv.slice(2);
if (mountpoint && name) {
  const nar = writeNar(USER_MOUNT_TREE);
  const root: NarNode = parseNar(nar);
  const roots: RootNodes = {
    resolve: async (n) => (n === name ? root : undefined),
    knownNames: () => [name],
  };
  const blobDir = await mkdtemp(join(tmpdir(), 'narfs-user-blobs-'));
  const blobs = new Map<number, string>();
  const sizes = new Map<number, number>();
  const walk = async (n: NarNode): Promise<void> => {
    if (n.type === 'regular' && n.size > 0) {
      const path = join(blobDir, String(n.narOffset));
      await writeFile(path, nar.subarray(n.narOffset, n.narOffset + n.size), { mode: 0o444 });
      blobs.set(n.narOffset, path);
      sizes.set(n.narOffset, n.size);
    } else if (n.type === 'directory') {
      for (const c of n.entries.values()) await walk(c);
    }
  };
  await walk(root);
  const content: ContentReader = {
    read: async (_n, off, len) => Buffer.from(nar.subarray(off, off + len)),
    contentFile: (n, off) => {
      const path = n === name ? blobs.get(off) : undefined;
      return path === undefined ? undefined : { path, offset: 0, size: sizes.get(off)! };
    },
  };
  const log = (level: string) => (msg: string, fields?: Record<string, unknown>) => process.stderr.write(`[${level}] ${msg} ${JSON.stringify(fields ?? {})}\n`);
  const logger = { debug: () => {}, info: log('info'), warn: log('warn'), error: log('error') };
  const fs = new StoreFilesystem(roots, content, { opTimeoutMs: 10_000, forgets: true });
  const mount = new NativeMount(fs, { mountpoint, opTimeoutMs: 10_000, logger, useFusermount: true, allowOther: false });
  await mount.mount();
  process.stdout.write('mounted\n');
  process.once('SIGTERM', () => {
    process.stdout.write(`stats ${JSON.stringify(mount.stats())}\n`);
    mount.unmount().then(() => rm(blobDir, { recursive: true, force: true })).then(() => {
      process.stdout.write('unmounted\n');
      process.exit(0);
    }, (err: unknown) => {
      process.stderr.write(`unmount failed: ${String(err)}\n`);
      process.exit(1);
    });
  });
}
