/**
 * FUSE passthrough in the native engine (native/src/session_passthrough.cc) under a real
 * mount, over a content reader whose files are whole standalone blobs (offset 0, the
 * per-file cache layout; test/support/whole-file-content.ts, NAR made by real Nix):
 * - opens are answered with FOPEN_PASSTHROUGH, reads and mmap never reach narfs, bytes are
 *   exact (sha256, `nix hash path` against the source directory), one backing id per node,
 *   closed when the kernel forgets the node;
 * - a dropped blob stops passthrough for new opens (its id is closed); while a passthrough
 *   file of it is open, new opens get EIO (the kernel allows no other mode then), after
 *   which the file is served again from JS;
 * - a file open in cached mode keeps new opens out of passthrough (else the kernel would
 *   fail them) until it is closed;
 * - a failed BACKING_OPEN (cache on overlayfs: ELOOP at max_stack_depth 1) falls back to
 *   pread from C and is counted;
 * - with passthrough off, the same files are served by pread from C.
 * Root only (passthrough needs CAP_SYS_ADMIN); skipped when NARFS_FUSE_BACKEND selects
 * fuse-native. Probes run in child processes (no syscall on the mount from this thread).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { StoreFilesystem } from '../../src/fs/store-filesystem.js';
import { NativeMount, type NativeStats } from '../../src/fuse/native-mount.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';
import { fuseBackendOf } from '../../src/daemon/mount-daemon.js';
import { captureLogger, probe, NIX_ENV, type LogLine } from '../support/mount-harness.js';
import { WholeFileContent, narOffsetOf } from '../support/whole-file-content.js';

const execFileP = promisify(execFile);
const NAME = '0123456789abcdfghijklmnpqrsvwxyz-passthrough-1.0';

async function eventually(check: () => boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`not reached in time: ${what}`);
}

/** sha256 of `path` read through mmap, in a child process. */
async function mmapSha256(path: string): Promise<string> {
  const py = 'import hashlib,mmap,sys\nf=open(sys.argv[1],"rb")\nm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\nprint(hashlib.sha256(m).hexdigest())';
  const { stdout } = await execFileP('/usr/bin/python3', ['-c', py, path], { timeout: 120_000 });
  return stdout.trim();
}

/** A child process holding `path` open until told to close it. */
async function holdOpen(path: string): Promise<{ child: ChildProcess; close: () => Promise<void> }> {
  const py = 'import sys\nf=open(sys.argv[1],"rb")\nf.read(1)\nprint("open",flush=True)\nsys.stdin.read()\nf.close()';
  const child = spawn('/usr/bin/python3', ['-c', py, path], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('open')) resolve(); });
    void exited.then((code) => reject(new Error(`holder exited ${code}: ${err}`)));
  });
  return {
    child,
    close: async () => {
      child.stdin!.end();
      assert.equal(await exited, 0, err);
    },
  };
}

async function nixHashPath(path: string): Promise<string> {
  const { stdout } = await execFileP('nix', ['hash', 'path', '--type', 'sha256', '--base32', path],
    { env: { ...process.env, ...NIX_ENV }, timeout: 300_000, maxBuffer: 1 << 20 });
  return stdout.trim();
}

interface Mounted { mnt: string; dir: string; stats: () => NativeStats; logs: LogLine[] }

describe('e2e: native engine, FUSE passthrough of whole-file content', function () {
  this.timeout(10 * 60_000);
  let work: string;
  let src: string;
  let content: WholeFileContent;
  const sha: Record<string, string> = {};

  before(async function () {
    if (fuseBackendOf({} as never) !== 'native' || process.getuid?.() !== 0) this.skip();
    work = await mkdtemp(join(tmpdir(), 'narfs-pt-'));
    src = join(work, 'src');
    await mkdir(join(src, 'bin'), { recursive: true });
    const files: Record<string, Buffer> = {
      'big.bin': randomBytes(24 << 20),
      'small.txt': Buffer.from('passthrough narfs\n'),
      'other.txt': Buffer.from('another file\n'),
      'held.txt': Buffer.from('held open\n'),
      'bin/tool': Buffer.from('#!/bin/sh\necho tool\n'),
      empty: Buffer.alloc(0),
    };
    for (const [p, b] of Object.entries(files)) {
      await writeFile(join(src, p), b);
      sha[p] = createHash('sha256').update(b).digest('hex');
    }
    await chmod(join(src, 'bin/tool'), 0o755);
    await symlink('small.txt', join(src, 'link'));
    content = await WholeFileContent.fromDirectory(src, NAME, join(work, 'cache'));
  });

  after(async () => {
    await content?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function withPassthroughMount<T>(passthrough: boolean, fn: (m: Mounted) => Promise<T>): Promise<T> {
    const mnt = join(work, `mnt-${passthrough ? 'pt' : 'pread'}`);
    await mkdir(mnt, { recursive: true });
    const logs: LogLine[] = [];
    const fs = new StoreFilesystem(content, content, { opTimeoutMs: 30_000, forgets: true });
    const mount = new NativeMount(fs, { mountpoint: mnt, opTimeoutMs: 30_000, logger: captureLogger(logs), passthrough });
    await mount.mount();
    try {
      return await fn({ mnt, dir: join(mnt, NAME), stats: () => mount.stats()!, logs });
    } finally {
      await mount.unmount().catch(() => {});
      await forceUnmount(mnt, { abort: true }).catch(() => {});
      await execFileP('fusermount', ['-uz', mnt]).catch(() => {});
    }
  }

  it('opens whole files in passthrough: byte-exact, mmap, nix hash path; reads never reach narfs', async () => {
    await withPassthroughMount(true, async (m) => {
      assert.equal(m.stats().passthroughEnabled, true, 'passthrough negotiated as root');
      for (const p of ['big.bin', 'small.txt', 'bin/tool']) {
        const r = await probe('read', join(m.dir, p));
        assert.equal(r.sha256, sha[p], p);
      }
      assert.equal((await probe('read', join(m.dir, 'empty'))).bytes, 0);
      assert.equal(await mmapSha256(join(m.dir, 'big.bin')), sha['big.bin']);
      const s = m.stats();
      assert.ok(s.passthroughOpens >= 4, `passthrough opens: ${JSON.stringify(s)}`);
      assert.equal(s.readsInC, 0, 'no READ reached C');
      assert.equal(s.passthroughFallbacks, 0);
      assert.equal(s.backingLive, 3, 'one backing id per node, reused by later opens');
      assert.equal(await nixHashPath(m.dir), await nixHashPath(src));
      // The kernel forgets the nodes: their backing ids are closed.
      await execFileP('sh', ['-c', 'sync; echo 2 > /proc/sys/vm/drop_caches'], { timeout: 120_000 });
      await eventually(() => m.stats().backingLive === 0, `backing ids closed after forget: ${JSON.stringify(m.stats())}`);
      assert.equal((await probe('read', join(m.dir, 'small.txt'))).sha256, sha['small.txt']);
      assert.equal(m.stats().backingLive, 1);
    });
  });

  it('a dropped blob is not passed through to new opens; with a passthrough file open, new opens get EIO until it closes', async () => {
    const small = narOffsetOf(content.root, 'small.txt');
    const held = narOffsetOf(content.root, 'held.txt');
    await withPassthroughMount(true, async (m) => {
      const path = join(m.dir, 'small.txt');
      assert.equal((await probe('read', path)).sha256, sha['small.txt']);
      const before = m.stats();
      assert.equal(before.passthroughOpens, 1);
      assert.equal(before.backingLive, 1);
      content.drop(small);
      try {
        assert.equal(m.stats().backingLive, 0, 'no handle open: the id is closed at once');
        const toJs = m.stats().toJs;
        assert.equal((await probe('read', path)).sha256, sha['small.txt']);
        const after = m.stats();
        assert.equal(after.passthroughOpens, 1, 'not passed through after the drop');
        assert.ok(after.toJs > toJs, 'served from JS');
      } finally {
        content.restore(small);
      }
      // Back: the next open (JS pushes the location again) is passed through.
      assert.equal((await probe('read', path)).sha256, sha['small.txt']);
      assert.equal(m.stats().passthroughOpens, 2);

      const heldPath = join(m.dir, 'held.txt');
      const holder = await holdOpen(heldPath);
      try {
        const opens = m.stats().passthroughOpens;
        assert.equal(opens, 3, 'the holder opened it in passthrough');
        content.drop(held);
        assert.equal(m.stats().backingLive, 2, 'the held node keeps its id while its file is open');
        const r = await probe('read', heldPath);
        assert.equal(r.code, 'EIO', JSON.stringify(r));
        assert.equal(m.stats().passthroughConflicts, 1);
      } finally {
        await holder.close();
        content.restore(held);
      }
      await eventually(() => m.stats().backingLive === 1, `the held node's id closed on its release: ${JSON.stringify(m.stats())}`);
      assert.equal((await probe('read', heldPath)).sha256, sha['held.txt']);
    });
  });

  it('a file open in cached mode keeps new opens out of passthrough until it closes', async () => {
    const other = narOffsetOf(content.root, 'other.txt');
    await withPassthroughMount(true, async (m) => {
      const path = join(m.dir, 'other.txt');
      content.drop(other); // not local yet: JS answers the open, in cached mode
      let holder: Awaited<ReturnType<typeof holdOpen>> | undefined;
      try {
        holder = await holdOpen(path);
        content.restore(other); // verified and local now
        const r = await probe('read', path);
        assert.equal(r.sha256, sha['other.txt'], JSON.stringify(r));
        assert.equal(m.stats().passthroughOpens, 0, 'a cached-mode file is open: no passthrough');
      } finally {
        await holder?.close();
        content.restore(other);
      }
      // The RELEASE of the holder's file arrives asynchronously after close().
      const end = Date.now() + 60_000;
      for (;;) {
        const r = await probe('read', path);
        assert.equal(r.sha256, sha['other.txt'], JSON.stringify(r));
        if (m.stats().passthroughOpens > 0 || Date.now() > end) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.equal(m.stats().passthroughOpens, 1, JSON.stringify(m.stats()));
      assert.equal(m.stats().passthroughConflicts, 0);
    });
  });

  it('a cache on a stacked filesystem (overlayfs: BACKING_OPEN says ELOOP) falls back to pread, counted', async () => {
    const ovl = join(work, 'ovl');
    for (const d of ['lower', 'upper', 'work', 'merged']) await mkdir(join(ovl, d), { recursive: true });
    const merged = join(ovl, 'merged');
    await execFileP('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${join(ovl, 'lower')},upperdir=${join(ovl, 'upper')},workdir=${join(ovl, 'work')}`, merged]);
    let stacked: WholeFileContent | undefined;
    try {
      stacked = await WholeFileContent.fromDirectory(src, NAME, join(merged, 'cache'));
      const mnt = join(work, 'mnt-stacked');
      await mkdir(mnt, { recursive: true });
      const fs = new StoreFilesystem(stacked, stacked, { opTimeoutMs: 30_000, forgets: true });
      const mount = new NativeMount(fs, { mountpoint: mnt, opTimeoutMs: 30_000, logger: captureLogger([]) });
      await mount.mount();
      try {
        assert.equal((await probe('read', join(mnt, NAME, 'big.bin'))).sha256, sha['big.bin']);
        const s = mount.stats()!;
        assert.equal(s.passthroughEnabled, true, 'ELOOP does not turn passthrough off');
        assert.ok(s.passthroughFallbacks >= 1, JSON.stringify(s));
        assert.equal(s.passthroughOpens, 0);
        assert.equal(s.backingLive, 0);
        assert.ok(s.readsInC > 0, JSON.stringify(s));
      } finally {
        await mount.unmount().catch(() => {});
        await forceUnmount(mnt, { abort: true }).catch(() => {});
      }
    } finally {
      await stacked?.close();
      await execFileP('umount', ['-l', merged]).catch(() => {});
    }
  });

  it('with passthrough off (--no-passthrough), the same files are read by pread from C', async () => {
    await withPassthroughMount(false, async (m) => {
      assert.equal(m.stats().passthroughEnabled, false);
      assert.equal((await probe('read', join(m.dir, 'big.bin'))).sha256, sha['big.bin']);
      assert.equal(await mmapSha256(join(m.dir, 'big.bin')), sha['big.bin']);
      const s = m.stats();
      assert.equal(s.passthroughOpens, 0);
      assert.equal(s.backingLive, 0);
      assert.ok(s.readsInC > 0 && s.bytesInC >= 24 << 20, JSON.stringify(s));
      assert.equal(await nixHashPath(m.dir), await nixHashPath(src));
    });
  });
});

