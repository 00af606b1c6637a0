/**
 * A metadata walk (`find`, lstat + readlink of every entry, kernel caches dropped) on the
 * native engine reaches JS only for directory listings: every page of a large directory
 * comes as READDIRPLUS (no READDIRPLUS_AUTO, so no per-entry LOOKUP for later pages), the
 * read after a directory's last entry is answered in C (`dirEnd`), and symlinks sent in a
 * READDIRPLUS page have their target recorded in C (no READLINK to JS). The walk's output
 * equals the source directory's (names, sizes, modes, types, targets). The store path is
 * made by real Nix (`nix-store --dump`, test/support/whole-file-content.ts). Root only.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { StoreFilesystem } from '../../src/fs/store-filesystem.js';
import { NativeMount } from '../../src/fuse/native-mount.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';
import { captureLogger, type LogLine } from '../support/mount-harness.js';
import { WholeFileContent } from '../support/whole-file-content.js';

const execFileP = promisify(execFile);
const NAME = '0123456789abcdfghijklmnpqrsvwxyz-walk-1.0';
/** FUSE opcodes (include/uapi/linux/fuse.h). */
const LOOKUP = 1;
const READLINK = 5;
const READDIR = 28;
const READDIRPLUS = 44;

async function find(dir: string): Promise<string[]> {
  const { stdout } = await execFileP('find', [dir, '-printf', '%P|%s|%m|%y|%l\n'], { maxBuffer: 64 << 20, timeout: 300_000 });
  // A directory's size is its filesystem's business (narfs says 0): not compared.
  return stdout.trim().split('\n').map((l) => l.replace(/^([^|]*)\|\d+\|(\d+)\|d\|/, '$1|-|$2|d|')).sort();
}

describe('e2e: native engine, a metadata walk reaches JS only for listings', function () {
  this.timeout(10 * 60_000);
  let work: string;
  let src: string;
  let content: WholeFileContent;

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native' || process.getuid?.() !== 0) this.skip();
    work = await mkdtemp(join(tmpdir(), 'narfs-walk-'));
    src = join(work, 'src');
    // A directory of 3,000 entries (many READDIRPLUS pages), symlinks in it and elsewhere,
    // nested directories and an executable.
    const big = join(src, 'share', 'big');
    await mkdir(big, { recursive: true });
    for (let i = 0; i < 3000; i++) {
      const n = `entry-with-a-longish-name-${String(i).padStart(5, '0')}`;
      if (i % 10 === 3) await symlink(`../target-${i}`, join(big, n));
      else await writeFile(join(big, n), `file ${i}\n`);
    }
    await mkdir(join(src, 'bin'));
    await writeFile(join(src, 'bin', 'tool'), '#!/bin/sh\n');
    await chmod(join(src, 'bin', 'tool'), 0o755);
    await symlink('bin/tool', join(src, 'link-to-tool'));
    await symlink('share/big', join(src, 'link-to-big'));
    await execFileP('chmod', ['-R', 'a-w', src]); // the modes Nix gives a store path: 0444, 0555
    content = await WholeFileContent.fromDirectory(src, NAME, join(work, 'cache'));
  });

  after(async () => {
    await content?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('walks with caches dropped: no LOOKUP, READLINK or plain READDIR reaches JS; same output as the source', async () => {
    const mnt = join(work, 'mnt');
    await mkdir(mnt, { recursive: true });
    const logs: LogLine[] = [];
    const fs = new StoreFilesystem(content, content, { opTimeoutMs: 30_000, forgets: true });
    const mount = new NativeMount(fs, { mountpoint: mnt, opTimeoutMs: 30_000, logger: captureLogger(logs) });
    await mount.mount();
    try {
      const expected = await find(src);
      assert.equal(expected.length, 3000 + 7); // with the root itself and share, share/big, bin, bin/tool, 2 links
      // The first walk resolves the store path (one LOOKUP of its name under the root).
      assert.deepEqual(await find(join(mnt, NAME)), expected);
      for (let rep = 0; rep < 2; rep++) {
        await execFileP('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { timeout: 120_000 });
        const before = mount.stats()!;
        assert.deepEqual(await find(join(mnt, NAME)), expected);
        const after = mount.stats()!;
        const delta = (op: number) => (after.toJsByOpcode[op] ?? 0) - (before.toJsByOpcode[op] ?? 0);
        const seen = JSON.stringify({ before: before.toJsByOpcode, after: after.toJsByOpcode });
        assert.ok(delta(LOOKUP) <= 1, `LOOKUPs to JS: ${seen}`); // the store path's root, if the kernel forgot it
        assert.equal(delta(READLINK), 0, `READLINKs to JS: ${seen}`);
        assert.equal(delta(READDIR), 0, `plain READDIRs to JS: ${seen}`);
        assert.ok(delta(READDIRPLUS) >= 4, `the big directory is listed in pages: ${seen}`);
        assert.ok(after.inC - before.inC >= 300, 'symlink targets and end-of-listing reads are answered in C');
      }
    } finally {
      await mount.unmount().catch(() => {});
      await forceUnmount(mnt, { abort: true }).catch(() => {});
      await execFileP('fusermount', ['-uz', mnt]).catch(() => {});
    }
  });
});
