/**
 * StoreFilesystem against listings of real NARs: each tree is serialised by `writeNar` and
 * parsed back by `parseNar`, so every narOffset is the one Nix would record, and the
 * ContentReader serves the bytes of that very NAR buffer. A read that returns the right
 * bytes therefore proves the offset arithmetic of `read` against real file contents.
 */
import assert from 'node:assert/strict';
import { constants } from 'node:fs';

import { isNarfsError } from '../../../src/errors.js';
import { ROOT_INO, StoreFilesystem, type Attr, type ContentReader, type RootNodes } from '../../../src/fs/store-filesystem.js';
import { byteString, type NarNode } from '../../../src/nix/nar-listing.js';
import { parseNar } from '../../../src/nix/nar-parser.js';
import { writeNar, type NarTree } from '../../../src/nix/nar-writer.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const OP_TIMEOUT_MS = 200;
/** Deadline slack for a loaded CI machine. */
const SLACK_MS = 800;

// 1500 bytes, not a multiple of 512, with a pattern so a wrong offset shows.
const DATA = Buffer.from(Array.from({ length: 1500 }, (_, i) => (i * 7 + 3) % 251));
const SCRIPT = '#!/bin/sh\necho hi\n';
const FULLWIDTH_A = '\uff21'; // UTF-8 ef bc a1, UTF-16 ff21
const EMOJI = '\u{1f600}'; // UTF-8 f0 9f 98 80, UTF-16 d83d de00 (sorts before ff21 in UTF-16)

const TREE: NarTree = {
  type: 'directory',
  entries: {
    a: {
      type: 'directory',
      entries: {
        z: { type: 'directory', entries: {} },
        'é': { type: 'regular', contents: 'accent\n' },
        _: { type: 'regular', contents: '' },
        up: { type: 'symlink', target: '../B' },
      },
    },
    B: { type: 'regular', contents: 'big B\n' },
    [EMOJI]: { type: 'regular', contents: 'smile\n' },
    'é': { type: 'symlink', target: 'a/é' },
    bin: { type: 'directory', entries: { run: { type: 'regular', contents: SCRIPT, executable: true } } },
    [FULLWIDTH_A]: { type: 'regular', contents: 'wide\n' },
    data: { type: 'regular', contents: DATA },
    empty: { type: 'regular', contents: '' },
    _: { type: 'regular', contents: 'underscore\n' },
  },
};
/** Bytewise (strcmp of UTF-8) order of the root of TREE. */
const TREE_ORDER = ['B', '_', 'a', 'bin', 'data', 'empty', 'é', FULLWIDTH_A, EMOJI];

const H1 = '0123456789abcdfghijklmnpqrsvwxyz';
const H2 = '11111111111111111111111111111111';
const H3 = '22222222222222222222222222222222';
const H4 = '33333333333333333333333333333333';
const TREE_NAME = `${H1}-tree-1.0`;
const FILE_NAME = `${H2}-single-file`;
const LINK_NAME = `${H3}-single-link`;
const ABSENT_NAME = `${H4}-absent`;
const LINK_TARGET = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-tree-1.0/é';

interface Fixture {
  nar: Buffer;
  node: NarNode;
}

function fixture(tree: NarTree): Fixture {
  const nar = writeNar(tree);
  return { nar, node: parseNar(nar) };
}

const FIXTURES = new Map<string, Fixture>([
  [TREE_NAME, fixture(TREE)],
  [FILE_NAME, fixture({ type: 'regular', contents: 'just one file\n', executable: true })],
  [LINK_NAME, fixture({ type: 'symlink', target: LINK_TARGET })],
]);

class CountingRoots implements RootNodes {
  resolveCalls: string[] = [];
  knownCalls = 0;
  known: string[] = [];
  signals: AbortSignal[] = [];
  /** When set, resolve waits for it (to hold lookups in flight). */
  gate: Promise<void> | undefined;
  neverSettle = false;

  async resolve(name: string, signal: AbortSignal): Promise<NarNode | undefined> {
    this.resolveCalls.push(name);
    this.signals.push(signal);
    if (this.neverSettle) return new Promise<never>(() => {});
    if (this.gate) await this.gate;
    return FIXTURES.get(name)?.node;
  }

  knownNames(): Iterable<string> {
    this.knownCalls++;
    return this.known;
  }

  released: string[] = [];
  release(name: string): void {
    this.released.push(name);
  }
}

class NarContent implements ContentReader {
  reads: Array<{ name: string; narOffset: number; length: number }> = [];
  prefetched: string[] = [];
  neverSettle = false;
  signals: AbortSignal[] = [];

  async read(name: string, narOffset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    this.reads.push({ name, narOffset, length });
    this.signals.push(signal);
    if (this.neverSettle) return new Promise<never>(() => {});
    const f = FIXTURES.get(name);
    if (!f) throw new Error(`no NAR for ${name}`);
    return Buffer.from(f.nar.subarray(narOffset, narOffset + length));
  }

  prefetch(name: string): void {
    this.prefetched.push(name);
  }
}

function setup(rootDirs: string[] = ['.links']) {
  const roots = new CountingRoots();
  const content = new NarContent();
  const resolved: string[] = [];
  const fs = new StoreFilesystem(roots, content, {
    opTimeoutMs: OP_TIMEOUT_MS,
    rootDirs,
    onResolved: (n) => resolved.push(n),
  });
  return { fs, roots, content, resolved };
}

/** The Unicode form of a byte-string name or target (the filesystem's names are bytes). */
function uni(bytes: string): string {
  return Buffer.from(bytes, 'latin1').toString('utf8');
}

/** Looks up a name given in Unicode (its UTF-8 bytes, as the kernel would pass it). */
async function mustLookup(fs: StoreFilesystem, parent: number, name: string): Promise<Attr> {
  const a = await fs.lookup(parent, byteString(name));
  assert.ok(a, `lookup of ${JSON.stringify(name)} under ${parent} found nothing`);
  return a;
}

/** Walks a path of names from the root. */
async function walk(fs: StoreFilesystem, ...names: string[]): Promise<Attr> {
  let ino = ROOT_INO;
  let attr: Attr | undefined;
  for (const n of names) {
    attr = await mustLookup(fs, ino, n);
    ino = attr.ino;
  }
  assert.ok(attr);
  return attr;
}

async function readAll(fs: StoreFilesystem, ino: number): Promise<Buffer> {
  const fh = fs.open(ino, constants.O_RDONLY);
  try {
    return await fs.read(fh, 0, 1 << 20);
  } finally {
    fs.release(fh);
  }
}

function expectedAttr(ino: number, over: Partial<Attr> & Pick<Attr, 'kind' | 'mode'>): Attr {
  return { ino, nlink: 1, size: 0, blocks: 0, uid: 0, gid: 0, mtimeMs: 1000, ...over };
}

describe('StoreFilesystem', () => {
  describe('attributes (as Nix canonicalises a store path)', () => {
    it('gives the root of the store 0555, inode 1, uid/gid 0, mtime 1 s', () => {
      const { fs } = setup();
      assert.deepEqual(fs.getattr(ROOT_INO), expectedAttr(1, { kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2 }));
    });

    it('gives directories 0555 and nlink 2 + subdirectories', async () => {
      const { fs } = setup();
      const top = await walk(fs, TREE_NAME);
      // subdirectories of the top: a, bin
      assert.deepEqual(top, expectedAttr(top.ino, { kind: 'directory', mode: S_IFDIR | 0o555, nlink: 4 }));
      const a = await walk(fs, TREE_NAME, 'a');
      assert.deepEqual(a, expectedAttr(a.ino, { kind: 'directory', mode: S_IFDIR | 0o555, nlink: 3 }));
      const z = await walk(fs, TREE_NAME, 'a', 'z');
      assert.deepEqual(z, expectedAttr(z.ino, { kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2 }));
      assert.deepEqual(fs.getattr(z.ino), z);
    });

    it('gives regular files 0444, size and blocks = ceil(size/512)', async () => {
      const { fs } = setup();
      const data = await walk(fs, TREE_NAME, 'data');
      assert.deepEqual(data, expectedAttr(data.ino, { kind: 'regular', mode: S_IFREG | 0o444, size: 1500, blocks: 3 }));
      const b = await walk(fs, TREE_NAME, 'B');
      assert.deepEqual(b, expectedAttr(b.ino, { kind: 'regular', mode: S_IFREG | 0o444, size: 6, blocks: 1 }));
    });

    it('gives executables 0555', async () => {
      const { fs } = setup();
      const run = await walk(fs, TREE_NAME, 'bin', 'run');
      assert.deepEqual(
        run,
        expectedAttr(run.ino, { kind: 'regular', mode: S_IFREG | 0o555, size: SCRIPT.length, blocks: 1 }),
      );
    });

    it('gives empty files size 0 and 0 blocks', async () => {
      const { fs } = setup();
      const e = await walk(fs, TREE_NAME, 'empty');
      assert.deepEqual(e, expectedAttr(e.ino, { kind: 'regular', mode: S_IFREG | 0o444 }));
      const u = await walk(fs, TREE_NAME, 'a', '_');
      assert.deepEqual(u, expectedAttr(u.ino, { kind: 'regular', mode: S_IFREG | 0o444 }));
    });

    it('gives symlinks 0777 and size = byte length of the target (not its UTF-16 length)', async () => {
      const { fs } = setup();
      const l = await walk(fs, TREE_NAME, 'é');
      // 'a/é' is 3 UTF-16 units but 4 bytes
      assert.deepEqual(l, expectedAttr(l.ino, { kind: 'symlink', mode: S_IFLNK | 0o777, size: 4 }));
      assert.equal(uni(fs.readlink(l.ino)), 'a/é');
      const up = await walk(fs, TREE_NAME, 'a', 'up');
      assert.equal(up.size, 4);
      assert.equal(uni(fs.readlink(up.ino)), '../B');
    });

    it('getattr of an inode never handed out is ERR_STALE_INODE', () => {
      const { fs } = setup();
      assert.throws(() => fs.getattr(4242), isCode('ERR_STALE_INODE'));
    });
  });

  describe('inode numbers', () => {
    it('are stable across repeated lookups and agree with readdir once looked up', async () => {
      const { fs, roots } = setup();
      const top1 = await walk(fs, TREE_NAME);
      const top2 = await walk(fs, TREE_NAME);
      assert.equal(top1.ino, top2.ino);
      assert.equal(roots.resolveCalls.length, 1, 'a resolved root is not resolved again');
      const b1 = await walk(fs, TREE_NAME, 'B');
      const listed = fs.readdir(top1.ino);
      const b2 = listed.find((e) => e.name === 'B');
      assert.equal(b2?.attr?.ino, b1.ino);
      // readdir creates no inodes: a child never looked up has number 0 there
      assert.equal(listed.find((e) => e.name === 'data')?.attr?.ino, 0);
      const data2 = (await walk(fs, TREE_NAME, 'data')).ino;
      assert.equal(fs.readdir(top1.ino).find((e) => e.name === 'data')?.attr?.ino, data2);
      const rootEntry = fs.readdir(ROOT_INO).find((e) => e.name === TREE_NAME);
      assert.equal(rootEntry?.attr?.ino, top1.ino);
    });

    it('are distinct for distinct nodes', async () => {
      const { fs } = setup();
      const top = await walk(fs, TREE_NAME);
      const inos = fs.readdir(top.ino).map((e) => fs.lookupChild(top.ino, e.name)!.ino);
      assert.equal(new Set(inos).size, TREE_ORDER.length);
      assert.ok(!inos.includes(ROOT_INO));
      assert.ok(!inos.includes(top.ino));
    });
  });

  describe('bounded inode table (lookup counts and forget)', () => {
    function setupForgetting() {
      const roots = new CountingRoots();
      const content = new NarContent();
      const fs = new StoreFilesystem(roots, content, { opTimeoutMs: OP_TIMEOUT_MS, rootDirs: ['.links'], forgets: true });
      return { fs, roots };
    }

    it('readdir creates no inodes; lookups do; forget drops them and the count falls back', async () => {
      const { fs } = setupForgetting();
      const idle = fs.inodeCount; // root + .links
      const top = await walk(fs, TREE_NAME);
      assert.equal(fs.inodeCount, idle + 1);
      fs.readdir(top.ino);
      assert.equal(fs.inodeCount, idle + 1, 'readdir must not create inodes');
      const kids = fs.readdir(top.ino).map((e) => fs.lookupChild(top.ino, e.name)!);
      assert.equal(fs.inodeCount, idle + 1 + TREE_ORDER.length);
      for (const k of kids) assert.equal(fs.forget(k.ino, 1), true);
      assert.equal(fs.forget(top.ino, 1), true);
      assert.equal(fs.inodeCount, idle);
      assert.equal(fs.statfs().files, idle);
      assert.throws(() => fs.getattr(top.ino), isCode('ERR_STALE_INODE'));
    });

    it('tells the store when the last inode of a store path is forgotten (its listing may go)', async () => {
      const { fs, roots } = setupForgetting();
      const top = await walk(fs, TREE_NAME);
      const kids = fs.readdir(top.ino).map((e) => fs.lookupChild(top.ino, e.name)!);
      assert.equal(fs.forget(top.ino, 1), true, 'the store path root goes first');
      assert.deepEqual(roots.released, [], 'its children still hold the listing');
      for (const k of kids.slice(0, -1)) fs.forget(k.ino, 1);
      assert.deepEqual(roots.released, []);
      fs.forget(kids[kids.length - 1]!.ino, 1);
      assert.deepEqual(roots.released, [TREE_NAME]);
      await walk(fs, TREE_NAME);
      assert.deepEqual(roots.resolveCalls.filter((n) => n === TREE_NAME).length, 2, 'resolved again after the release');
    });

    it('an inode looked up twice lives until both lookups are forgotten', async () => {
      const { fs } = setupForgetting();
      const a = await walk(fs, TREE_NAME);
      const b = await walk(fs, TREE_NAME);
      assert.equal(a.ino, b.ino);
      assert.equal(fs.forget(a.ino, 1), false);
      assert.equal(fs.getattr(a.ino).ino, a.ino);
      assert.equal(fs.forget(a.ino, 1), true);
    });

    it('an open handle keeps a forgotten inode until release; a new lookup gets a new number', async () => {
      const { fs, roots } = setupForgetting();
      const top = await walk(fs, TREE_NAME);
      const data = await mustLookup(fs, top.ino, 'data');
      const fh = fs.open(data.ino, constants.O_RDONLY);
      assert.equal(fs.forget(data.ino, 1), false);
      assert.equal((await fs.read(fh, 0, 10)).length, 10);
      fs.release(fh);
      assert.throws(() => fs.getattr(data.ino), isCode('ERR_STALE_INODE'));
      const again = await mustLookup(fs, top.ino, 'data');
      assert.notEqual(again.ino, data.ino, 'numbers are never reused');
      fs.forget(again.ino, 1);
      fs.forget(top.ino, 1);
      const calls = roots.resolveCalls.length;
      await walk(fs, TREE_NAME);
      assert.equal(roots.resolveCalls.length, calls + 1, 'a forgotten store path is resolved again (the store caches it)');
    });

    it('a forgotten number whose table slot went to another inode is ERR_STALE_INODE, not that inode', async () => {
      const { fs } = setupForgetting();
      const top = await walk(fs, TREE_NAME);
      const data = await mustLookup(fs, top.ino, 'data');
      assert.equal(fs.forget(data.ino, 1), true);
      const b = await mustLookup(fs, top.ino, 'B'); // takes the freed slot
      assert.notEqual(b.ino, data.ino);
      assert.throws(() => fs.getattr(data.ino), isCode('ERR_STALE_INODE'));
      assert.throws(() => fs.open(data.ino, constants.O_RDONLY), isCode('ERR_STALE_INODE'));
      assert.equal(fs.contentLocation(data.ino), undefined);
      await assert.rejects(fs.read(0, 0, 10, undefined, data.ino), isCode('ERR_BAD_HANDLE'));
      assert.equal(fs.forget(data.ino, 1), false, 'a stale FORGET drops nothing');
      assert.equal(fs.getattr(b.ino).size, 6, 'B is still held');
      assert.equal(fs.readdir(top.ino).find((e) => e.name === 'data')?.attr?.ino, 0);
    });

    it('after a large walk and a forget of all of it the inode table is back to its idle size', async () => {
      const files: Record<string, NarTree> = {};
      for (let i = 0; i < 20_000; i++) files[`f${String(i).padStart(5, '0')}`] = { type: 'regular', contents: '' };
      const big = fixture({ type: 'directory', entries: { d: { type: 'directory', entries: files } } });
      const name = `${H4}-big`;
      FIXTURES.set(name, big);
      try {
        let released!: () => void;
        const gcRan = new Promise<void>((resolve) => { released = resolve; });
        const roots = new CountingRoots();
        const fs = new StoreFilesystem(roots, new NarContent(), {
          opTimeoutMs: OP_TIMEOUT_MS, rootDirs: ['.links'], forgets: true, releaseDelayMs: 0, onMemoryReleased: () => released(),
        });
        const idleCount = fs.inodeCount;
        const idleBytes = fs.inodeTableBytes;
        const top = await walk(fs, name);
        const d = await mustLookup(fs, top.ino, 'd');
        const kids = fs.readdir(d.ino).map((e) => fs.lookupChild(d.ino, e.name)!);
        assert.equal(fs.inodeCount, idleCount + 2 + 20_000);
        assert.ok(fs.inodeTableBytes > 20 * idleBytes, `the table grew (${fs.inodeTableBytes} bytes)`);
        for (const k of kids) assert.equal(fs.forget(k.ino, 1), true);
        fs.forget(d.ino, 1);
        fs.forget(top.ino, 1);
        assert.equal(fs.inodeCount, idleCount);
        assert.equal(fs.inodeTableBytes, idleBytes);
        await gcRan; // a burst of >= FORGET_BURST forgets that halved the table gives memory back
        assert.deepEqual(roots.released, [name]);
        // Numbers given before the compaction are still unknown, new ones work.
        assert.throws(() => fs.getattr(kids[123]!.ino), isCode('ERR_STALE_INODE'));
        const again = await walk(fs, name, 'd', 'f00123');
        assert.ok(again.ino > kids[kids.length - 1]!.ino);
      } finally {
        FIXTURES.delete(name);
      }
    });

    it('statfs counts blocks of the inodes held, without walking', async () => {
      const { fs } = setupForgetting();
      const top = await walk(fs, TREE_NAME);
      const data = await mustLookup(fs, top.ino, 'data');
      assert.equal(fs.statfs().blocks, Math.ceil(data.blocks / 8));
      fs.forget(data.ino, 1);
      assert.equal(fs.statfs().blocks, 0);
    });

    it('without forgets (fuse-native) nothing is dropped', async () => {
      const { fs } = setup();
      const top = await walk(fs, TREE_NAME);
      assert.equal(fs.forget(top.ino, 1), false);
      assert.equal(fs.getattr(top.ino).ino, top.ino);
    });

    it('lookup ends early with ERR_ABORTED when the caller aborts (FUSE INTERRUPT)', async () => {
      const { fs, roots } = setupForgetting();
      roots.neverSettle = true;
      const ac = new AbortController();
      const p = fs.lookup(ROOT_INO, TREE_NAME, ac.signal);
      ac.abort();
      await assert.rejects(p, isCode('ERR_ABORTED'));
    });
  });

  describe('readdir', () => {
    it('lists a slice of a directory: from `start`, at most `limit` entries', async () => {
      const { fs } = setup();
      const top = await walk(fs, TREE_NAME);
      const all = fs.readdir(top.ino).map((e) => e.name);
      assert.deepEqual(fs.readdir(top.ino, 2, 3).map((e) => e.name), all.slice(2, 5));
      assert.deepEqual(fs.readdir(top.ino, all.length - 1, 10).map((e) => e.name), all.slice(-1));
      assert.deepEqual(fs.readdir(top.ino, all.length, 10), []);
      assert.deepEqual(fs.readdir(ROOT_INO, 0, 1).map((e) => e.name), ['.links']);
    });

    it('lists a directory in bytewise UTF-8 order, with attributes', async () => {
      const { fs } = setup();
      const top = await walk(fs, TREE_NAME);
      const entries = fs.readdir(top.ino);
      assert.deepEqual(entries.map((e) => uni(e.name)), TREE_ORDER);
      const kinds = Object.fromEntries(entries.map((e) => [uni(e.name), e.attr?.kind]));
      assert.deepEqual(kinds, {
        B: 'regular', _: 'regular', a: 'directory', bin: 'directory', data: 'regular',
        empty: 'regular', 'é': 'symlink', [FULLWIDTH_A]: 'regular', [EMOJI]: 'regular',
      });
      const a = await walk(fs, TREE_NAME, 'a');
      assert.deepEqual(fs.readdir(a.ino).map((e) => uni(e.name)), ['_', 'up', 'z', 'é']);
      const z = await walk(fs, TREE_NAME, 'a', 'z');
      assert.deepEqual(fs.readdir(z.ino), []);
    });

    it('lists the root as extra dirs, then knownNames and looked-up names, without calling resolve', async () => {
      const { fs, roots } = setup();
      roots.known = [LINK_NAME, TREE_NAME]; // unsorted on purpose; TREE_NAME also looked up below
      await walk(fs, TREE_NAME);
      await walk(fs, FILE_NAME);
      const before = roots.resolveCalls.length;
      const entries = fs.readdir(ROOT_INO);
      assert.equal(roots.resolveCalls.length, before, 'readdir of the root must not resolve anything');
      assert.ok(roots.knownCalls >= 1);
      assert.deepEqual(entries.map((e) => uni(e.name)), ['.links', FILE_NAME, TREE_NAME, LINK_NAME].sort(bytewise));
      const byName = new Map(entries.map((e) => [e.name, e]));
      assert.equal(byName.get('.links')?.attr?.kind, 'directory');
      assert.equal(byName.get(LINK_NAME)?.attr, undefined, 'a known but unresolved name has no attr yet');
      assert.equal(byName.get(FILE_NAME)?.attr?.kind, 'regular');
      assert.equal(byName.get(TREE_NAME)?.attr?.kind, 'directory');
    });

    it('lists an empty, read-only .links', async () => {
      const { fs, roots } = setup();
      const links = await mustLookup(fs, ROOT_INO, '.links');
      assert.equal(roots.resolveCalls.length, 0);
      assert.deepEqual(links, expectedAttr(links.ino, { kind: 'directory', mode: S_IFDIR | 0o555, nlink: 2 }));
      assert.deepEqual(fs.readdir(links.ino), []);
      assert.equal(await fs.lookup(links.ino, 'anything'), undefined);
    });

    it('readdir of a file is ERR_NOT_DIRECTORY', async () => {
      const { fs } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      assert.throws(() => fs.readdir(b.ino), isCode('ERR_NOT_DIRECTORY'));
    });
  });

  describe('root lookups', () => {
    for (const [label, name] of [
      ['a name that is no store path', 'foo'],
      ['a 31-char hash', `${H1.slice(1)}-tree-1.0`],
      ['a hash with an e', `e${H1.slice(1)}-tree-1.0`],
      ['a missing dash', `${H1}xtree-1.0`],
      ['an empty name part', `${H1}-`],
      ['a hash part only', H1],
    ] as const) {
      it(`${label} is absent without asking RootNodes`, async () => {
        const { fs, roots } = setup();
        assert.equal(await fs.lookup(ROOT_INO, name), undefined);
        assert.deepEqual(roots.resolveCalls, []);
      });
    }

    it('an absent store path (resolve → undefined) is undefined and is not listed', async () => {
      const { fs, roots, resolved } = setup();
      assert.equal(await fs.lookup(ROOT_INO, ABSENT_NAME), undefined);
      assert.deepEqual(roots.resolveCalls, [ABSENT_NAME]);
      assert.deepEqual(resolved, []);
      assert.deepEqual(fs.readdir(ROOT_INO).map((e) => uni(e.name)), ['.links']);
      // absence is not remembered here (the store layer has the negative cache)
      assert.equal(await fs.lookup(ROOT_INO, ABSENT_NAME), undefined);
      assert.equal(roots.resolveCalls.length, 2);
    });

    it('concurrent lookups of one name call resolve once and get one inode', async () => {
      const { fs, roots, resolved } = setup();
      let open!: () => void;
      roots.gate = new Promise<void>((r) => { open = r; });
      const pending = [1, 2, 3, 4].map(() => fs.lookup(ROOT_INO, TREE_NAME));
      await new Promise((r) => setImmediate(r));
      assert.equal(roots.resolveCalls.length, 1);
      open();
      const attrs = await Promise.all(pending);
      assert.equal(roots.resolveCalls.length, 1);
      assert.equal(new Set(attrs.map((a) => a?.ino)).size, 1);
      assert.equal(attrs[0]?.kind, 'directory');
      assert.deepEqual(resolved, [TREE_NAME], 'onResolved once per store path');
    });

    it('a resolve that never settles fails with ERR_DEADLINE within opTimeoutMs, and is retried later', async function () {
      this.timeout(OP_TIMEOUT_MS + SLACK_MS + 2000);
      const { fs, roots } = setup();
      roots.neverSettle = true;
      const t0 = performance.now();
      await assert.rejects(fs.lookup(ROOT_INO, TREE_NAME), isCode('ERR_DEADLINE'));
      const took = performance.now() - t0;
      assert.ok(took >= OP_TIMEOUT_MS - 20, `gave up too early (${took.toFixed(0)} ms)`);
      assert.ok(took < OP_TIMEOUT_MS + SLACK_MS, `took ${took.toFixed(0)} ms`);
      assert.equal(roots.signals[0]?.aborted, true, 'the work is told to stop');
      // the failed attempt is not kept: the next lookup asks again
      roots.neverSettle = false;
      const a = await fs.lookup(ROOT_INO, TREE_NAME);
      assert.equal(a?.kind, 'directory');
      assert.equal(roots.resolveCalls.length, 2);
    });
  });

  describe('lookups below a store path', () => {
    it('finds nested names, including non-ASCII ones, and nothing else', async () => {
      const { fs } = setup();
      const e = await walk(fs, TREE_NAME, 'a', 'é');
      assert.equal(e.size, 7);
      const top = await walk(fs, TREE_NAME);
      assert.equal(await fs.lookup(top.ino, 'b'), undefined, 'names are case-sensitive');
      assert.equal(await fs.lookup(top.ino, byteString('e\u0301')), undefined, 'no Unicode normalisation');
      assert.equal(await fs.lookup(top.ino, 'missing'), undefined);
      assert.equal((await fs.lookup(top.ino, byteString(EMOJI)))?.size, 6);
      assert.equal(await fs.lookup(top.ino, EMOJI), undefined, 'names are bytes: the UTF-16 string is not the name');
    });

    it('lookup under a file is ERR_NOT_DIRECTORY', async () => {
      const { fs } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      await assert.rejects(fs.lookup(b.ino, 'x'), isCode('ERR_NOT_DIRECTORY'));
      const l = await walk(fs, TREE_NAME, 'é');
      await assert.rejects(fs.lookup(l.ino, 'x'), isCode('ERR_NOT_DIRECTORY'));
    });

    it('readlink of a file or a directory is ERR_NOT_SYMLINK', async () => {
      const { fs } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      assert.throws(() => uni(fs.readlink(b.ino)), isCode('ERR_NOT_SYMLINK'));
      const a = await walk(fs, TREE_NAME, 'a');
      assert.throws(() => uni(fs.readlink(a.ino)), isCode('ERR_NOT_SYMLINK'));
    });
  });

  describe('open and read', () => {
    it('reads every file back as it is in the NAR', async () => {
      const { fs } = setup();
      assert.deepEqual(await readAll(fs, (await walk(fs, TREE_NAME, 'data')).ino), DATA);
      assert.equal((await readAll(fs, (await walk(fs, TREE_NAME, 'B')).ino)).toString(), 'big B\n');
      assert.equal((await readAll(fs, (await walk(fs, TREE_NAME, 'bin', 'run')).ino)).toString(), SCRIPT);
      assert.equal((await readAll(fs, (await walk(fs, TREE_NAME, 'a', 'é')).ino)).toString(), 'accent\n');
      assert.equal((await readAll(fs, (await walk(fs, TREE_NAME, '_')).ino)).toString(), 'underscore\n');
      assert.equal((await readAll(fs, (await walk(fs, TREE_NAME, FULLWIDTH_A)).ino)).toString(), 'wide\n');
    });

    it('reads at offsets: inside, spanning the end, at the end and past it', async () => {
      const { fs, content } = setup();
      const data = await walk(fs, TREE_NAME, 'data');
      const fh = fs.open(data.ino, constants.O_RDONLY);
      assert.deepEqual(await fs.read(fh, 0, 10), DATA.subarray(0, 10));
      assert.deepEqual(await fs.read(fh, 513, 100), DATA.subarray(513, 613));
      assert.deepEqual(await fs.read(fh, 1499, 1), DATA.subarray(1499));
      const span = await fs.read(fh, 1400, 4096);
      assert.equal(span.length, 100);
      assert.deepEqual(span, DATA.subarray(1400));
      const readsBefore = content.reads.length;
      assert.equal((await fs.read(fh, 1500, 10)).length, 0);
      assert.equal((await fs.read(fh, 99999, 10)).length, 0);
      assert.equal((await fs.read(fh, 0, 0)).length, 0);
      assert.equal(content.reads.length, readsBefore, 'nothing is fetched for reads at or past EOF');
      // the span was clipped before asking the store layer
      const clipped = content.reads.find((r) => r.length === 100 && r.name === TREE_NAME);
      assert.ok(clipped);
      fs.release(fh);
    });

    it('an empty file reads as nothing and fetches nothing', async () => {
      const { fs, content } = setup();
      const e = await walk(fs, TREE_NAME, 'empty');
      assert.equal((await readAll(fs, e.ino)).length, 0);
      assert.deepEqual(content.reads, []);
      assert.deepEqual(content.prefetched, [], 'no prefetch for an empty file');
    });

    it('open of a non-empty file hints a prefetch of its store path', async () => {
      const { fs, content } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      fs.release(fs.open(b.ino, constants.O_RDONLY));
      assert.deepEqual(content.prefetched, [TREE_NAME]);
    });

    for (const [label, flags] of [
      ['O_WRONLY', constants.O_WRONLY],
      ['O_RDWR', constants.O_RDWR],
      ['O_RDONLY|O_TRUNC', constants.O_RDONLY | constants.O_TRUNC],
      ['O_RDONLY|O_CREAT', constants.O_RDONLY | constants.O_CREAT],
      ['O_WRONLY|O_CREAT|O_TRUNC', constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC],
    ] as const) {
      it(`open with ${label} is ERR_READ_ONLY`, async () => {
        const { fs } = setup();
        const b = await walk(fs, TREE_NAME, 'B');
        assert.throws(() => fs.open(b.ino, flags), isCode('ERR_READ_ONLY'));
      });
    }

    it('open of a directory is ERR_IS_DIRECTORY', async () => {
      const { fs } = setup();
      const a = await walk(fs, TREE_NAME, 'a');
      assert.throws(() => fs.open(a.ino, constants.O_RDONLY), isCode('ERR_IS_DIRECTORY'));
      const top = await walk(fs, TREE_NAME);
      assert.throws(() => fs.open(top.ino, constants.O_RDONLY), isCode('ERR_IS_DIRECTORY'));
    });

    // Regression (src/fs/store-filesystem.ts): the root inode was not in #inodes, so open(ROOT_INO)
    // and readlink(ROOT_INO) went through #inode() and threw ERR_STALE_INODE ("inode 1 is not
    // known", ENOENT at the edge) instead of ERR_IS_DIRECTORY / ERR_NOT_SYMLINK.
    it('open and readlink of the store root say what the root is, not ERR_STALE_INODE', () => {
      const { fs } = setup();
      assert.throws(() => fs.open(ROOT_INO, constants.O_RDONLY), isCode('ERR_IS_DIRECTORY'));
      assert.throws(() => uni(fs.readlink(ROOT_INO)), isCode('ERR_NOT_SYMLINK'));
    });

    it('read of a released (or never opened) handle is ERR_BAD_HANDLE', async () => {
      const { fs } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      const fh = fs.open(b.ino, constants.O_RDONLY);
      assert.equal((await fs.read(fh, 0, 3)).toString(), 'big');
      fs.release(fh);
      await assert.rejects(fs.read(fh, 0, 3), isCode('ERR_BAD_HANDLE'));
      await assert.rejects(fs.read(987654, 0, 3), isCode('ERR_BAD_HANDLE'));
    });

    it('two handles of one file are independent', async () => {
      const { fs } = setup();
      const b = await walk(fs, TREE_NAME, 'B');
      const f1 = fs.open(b.ino, constants.O_RDONLY);
      const f2 = fs.open(b.ino, constants.O_RDONLY);
      assert.notEqual(f1, f2);
      fs.release(f1);
      assert.equal((await fs.read(f2, 4, 10)).toString(), 'B\n');
      fs.release(f2);
    });

    it('a ContentReader that never settles fails the read with ERR_DEADLINE within opTimeoutMs', async function () {
      this.timeout(OP_TIMEOUT_MS + SLACK_MS + 2000);
      const { fs, content } = setup();
      const data = await walk(fs, TREE_NAME, 'data');
      const fh = fs.open(data.ino, constants.O_RDONLY);
      content.neverSettle = true;
      const t0 = performance.now();
      await assert.rejects(fs.read(fh, 0, 100), isCode('ERR_DEADLINE'));
      const took = performance.now() - t0;
      assert.ok(took >= OP_TIMEOUT_MS - 20, `gave up too early (${took.toFixed(0)} ms)`);
      assert.ok(took < OP_TIMEOUT_MS + SLACK_MS, `took ${took.toFixed(0)} ms`);
      assert.equal(content.signals.at(-1)?.aborted, true);
      // the handle stays usable once the store layer answers again
      content.neverSettle = false;
      assert.deepEqual(await fs.read(fh, 0, 100), DATA.subarray(0, 100));
      fs.release(fh);
    });
  });

  describe('contentLocation (where a FUSE engine may read complete content)', () => {
    it('names the NAR at the file\'s narOffset, or a whole per-file blob from offset 0 when the reader has one', async () => {
      const { fs, content } = setup();
      const data = await walk(fs, TREE_NAME, 'data');
      const empty = await walk(fs, TREE_NAME, 'empty');
      assert.equal(fs.contentLocation(data.ino), undefined, 'nothing local yet');
      const node = FIXTURES.get(TREE_NAME)!.node;
      const dataNode = node.type === 'directory' ? node.entries.get('data') : undefined;
      assert.ok(dataNode?.type === 'regular');
      const nar = content as NarContent & ContentReader;
      const asked: Array<[string, number]> = [];
      nar.contentFile = (name, narOffset) => {
        asked.push([name, narOffset]);
        return name === TREE_NAME ? { path: '/cache/tree.nar', offset: narOffset, size: 9999 } : undefined;
      };
      assert.deepEqual(fs.contentLocation(data.ino), { path: '/cache/tree.nar', offset: dataNode.narOffset, size: 1500, fileSize: 9999 });
      nar.contentFile = (name, narOffset) => {
        asked.push([name, narOffset]);
        return { path: '/cache/blobs/ab/abcd', offset: 0, size: 1500 };
      };
      assert.deepEqual(fs.contentLocation(data.ino), { path: '/cache/blobs/ab/abcd', offset: 0, size: 1500, fileSize: 1500 });
      assert.deepEqual(asked, [[TREE_NAME, dataNode.narOffset], [TREE_NAME, dataNode.narOffset]]);
      assert.equal(fs.contentLocation(empty.ino), undefined, 'an empty file has no content to serve');
    });
  });

  describe('access', () => {
    it('never allows W_OK; X_OK follows the mode', async () => {
      const { fs } = setup();
      const { R_OK, W_OK, X_OK, F_OK } = constants;
      const b = await walk(fs, TREE_NAME, 'B');
      const run = await walk(fs, TREE_NAME, 'bin', 'run');
      const a = await walk(fs, TREE_NAME, 'a');
      for (const ino of [ROOT_INO, b.ino, run.ino, a.ino]) {
        assert.equal(fs.access(ino, W_OK), false, `W_OK on ${ino}`);
        assert.equal(fs.access(ino, R_OK | W_OK), false, `R_OK|W_OK on ${ino}`);
        assert.equal(fs.access(ino, R_OK), true, `R_OK on ${ino}`);
        assert.equal(fs.access(ino, F_OK), true, `F_OK on ${ino}`);
      }
      assert.equal(fs.access(b.ino, X_OK), false);
      assert.equal(fs.access(run.ino, X_OK), true);
      assert.equal(fs.access(a.ino, R_OK | X_OK), true);
    });
  });

  describe('store paths that are a single file or symlink', () => {
    it('a single executable file is a root entry that reads back its contents', async () => {
      const { fs, roots } = setup();
      const f = await mustLookup(fs, ROOT_INO, FILE_NAME);
      assert.deepEqual(
        f,
        expectedAttr(f.ino, { kind: 'regular', mode: S_IFREG | 0o555, size: 14, blocks: 1 }),
      );
      assert.equal((await readAll(fs, f.ino)).toString(), 'just one file\n');
      assert.throws(() => fs.readdir(f.ino), isCode('ERR_NOT_DIRECTORY'));
      await assert.rejects(fs.lookup(f.ino, 'x'), isCode('ERR_NOT_DIRECTORY'));
      assert.deepEqual(roots.resolveCalls, [FILE_NAME]);
    });

    it('a single symlink is a root entry with its target', async () => {
      const { fs } = setup();
      const l = await mustLookup(fs, ROOT_INO, LINK_NAME);
      assert.deepEqual(
        l,
        expectedAttr(l.ino, { kind: 'symlink', mode: S_IFLNK | 0o777, size: Buffer.byteLength(LINK_TARGET) }),
      );
      assert.equal(l.size, LINK_TARGET.length + 1, 'é is two bytes');
      assert.equal(uni(fs.readlink(l.ino)), LINK_TARGET);
      assert.throws(() => fs.open(l.ino, constants.O_WRONLY), isCode('ERR_READ_ONLY'));
    });
  });
});

function bytewise(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}
