/**
 * neighbours (src/store/neighbourhood.ts) on synthetic listings laid out in NAR order
 * (entries in bytewise name order, each file's contents after a header, padded to 8 as in
 * `dumpPath`, src/libutil/archive.cc): which siblings of a missed file are fetched along.
 * The shapes are those of bench scenario 9 (a program reading a directory's small files
 * and skipping its large ones) and scenario 1 (an interpreter loading modules of every size).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { IndexedFile, NarIndex } from '../../../src/nix/nar-index.js';
import type { NarDirectory, NarNode } from '../../../src/nix/nar-listing.js';
import {
  NEIGHBOUR_START_FILE_BYTES, directoriesOf, directoryTreeOf, jumpedTo, neighbourRegions, neighbours, noteMiss, noteSubtreeMiss, subtreeFiles, type NeighbourOptions,
} from '../../../src/store/neighbourhood.js';

/** A tree spec: a file is its size, a directory an object of entries. */
type Spec = { [name: string]: number | Spec };

const HEADER = 120; // about the NAR bytes of an entry's header before a file's contents

/** A NarIndex of `spec` with realistic NAR offsets; `paths` maps each file path to its IndexedFile. */
function listing(spec: Spec, framed = false): { idx: NarIndex; at: (path: string) => IndexedFile } {
  let cursor = 64;
  const files: IndexedFile[] = [];
  const byPath = new Map<string, IndexedFile>();
  const build = (s: Spec, prefix: string): NarDirectory => {
    const entries = new Map<string, NarNode>();
    cursor += HEADER;
    for (const name of Object.keys(s).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) {
      const v = s[name]!;
      if (typeof v === 'number') {
        cursor += HEADER;
        const narOffset = cursor;
        cursor += Math.ceil(v / 8) * 8;
        const f: IndexedFile = { narOffset, size: v, sha256: createHash('sha256').update(`${prefix}${name}`).digest(), chunkHashes: Buffer.alloc(32) };
        files.push(f);
        byPath.set(`${prefix}${name}`, f);
        entries.set(name, { type: 'regular', size: v, executable: false, narOffset });
      } else entries.set(name, build(v, `${prefix}${name}/`));
    }
    return { type: 'directory', entries };
  };
  const root = build(spec, '');
  const idx = {
    storePath: '/nix/store/00000000000000000000000000000000-synthetic',
    narHash: { algo: 'sha256', digest: Buffer.alloc(32) },
    narSize: cursor,
    chunkSize: 512 * 1024,
    root,
    files,
    signatures: [],
    ...(framed ? { frames: { fileHash: { algo: 'sha256', digest: Buffer.alloc(32) }, fileSize: cursor, narOffsets: [0], fileOffsets: [0] } } : {}),
  } as unknown as NarIndex;
  return { idx, at: (p) => byPath.get(p) ?? assert.fail(`no ${p}`) };
}

const opts = (over: Partial<NeighbourOptions> = {}): NeighbourOptions => ({ budgetBytes: 1 << 20, maxFileBytes: 128 * 1024, isHeld: () => false, ...over });
const nameOf = (idx: NarIndex, f: IndexedFile): string => {
  const walk = (n: NarNode, p: string): string | undefined => {
    if (n.type === 'regular') return n.narOffset === f.narOffset ? p : undefined;
    if (n.type !== 'directory') return undefined;
    for (const [k, c] of n.entries) {
      const r = walk(c, p ? `${p}/${k}` : k);
      if (r) return r;
    }
    return undefined;
  };
  return walk(idx.root, '') ?? '?';
};

/** NAR bytes of the requests a fetcher makes for `files` when it bridges gaps up to `gap`. */
function requestBytes(files: IndexedFile[], gap = 64 * 1024): number {
  let total = 0;
  let start = -1;
  let end = -1;
  for (const f of [...files].sort((a, b) => a.narOffset - b.narOffset)) {
    if (start >= 0 && f.narOffset - end <= gap) end = Math.max(end, f.narOffset + f.size);
    else {
      if (start >= 0) total += end - start;
      start = f.narOffset;
      end = f.narOffset + f.size;
    }
  }
  return start >= 0 ? total + end - start : 0;
}

describe('neighbourhood of a missed file', function () {
  // A man page directory: small pages between large ones (bench scenario 9's doc path, read in small pages).
  const man: Spec = {};
  for (let k = 0; k < 60; k++) man[`p${String(k).padStart(3, '0')}.1.gz`] = k % 2 === 0 ? 3000 : 50_000;

  it('a path whose misses were small brings small siblings only, and no large file inside its requests', function () {
    const { idx, at } = listing({ man1: man });
    const got = neighbours(idx, at('man1/p000.1.gz'), opts());
    assert.ok(got.length >= 5, `small siblings come along (${got.length})`);
    for (const f of got) assert.ok(f.size <= NEIGHBOUR_START_FILE_BYTES, `${nameOf(idx, f)} (${f.size} bytes) is not a small sibling`);
    // The requests carry the small pages, not the large ones between them.
    const wanted = got.reduce((s, f) => s + f.size, 0);
    assert.ok(requestBytes(got) < 2 * wanted, `requests of ${requestBytes(got)} bytes for ${wanted} wanted`);
  });

  it('once a large file of a path has missed, siblings up to its size come along, in all its directories (modules of every size)', function () {
    const spec = { lib: { 'a.py': 3000, 'b.py': 50_000, 'c.py': 3000, 'd.py': 70_000 }, man1: man };
    const { idx, at } = listing(spec);
    noteMiss(idx, at('lib/b.py').size); // a 50 000-byte module missed
    const got = neighbours(idx, at('man1/p020.1.gz'), opts());
    assert.ok(got.some((f) => f.size === 50_000), 'large siblings come along');
    assert.ok(got.every((f) => f.size <= 50_000));
    // Another path's reach is its own.
    const { idx: i2, at: at2 } = listing(spec);
    const other = neighbours(i2, at2('man1/p020.1.gz'), opts());
    assert.ok(other.every((f) => f.size <= NEIGHBOUR_START_FILE_BYTES), 'another path starts small');
  });

  it('files wholly inside a gap the fetcher bridges come along, whatever their directory, also beyond the reach', function () {
    const { idx, at } = listing({ lib: { 'a.h': 2000, 'b.h': 2000, 'c.h': 20_000, 'd.h': 2000, 'e': { 'x.h': 4000 }, 'f.h': 2000 } });
    // The reach is 16 KiB (nothing larger missed); c.h (20 000) is no neighbour but lies in a bridged gap.
    const got = neighbours(idx, at('lib/a.h'), opts({ maxFileBytes: 32 * 1024 })).map((f) => nameOf(idx, f));
    assert.deepEqual(got, ['lib/b.h', 'lib/c.h', 'lib/d.h', 'lib/e/x.h', 'lib/f.h']);
    // Not when the fetcher would not bridge them.
    const { idx: i2, at: at2 } = listing({ lib: { 'a.h': 2000, 'b.h': 2000, 'c.h': 20_000, 'd.h': 2000 } });
    assert.deepEqual(neighbours(i2, at2('lib/a.h'), opts({ maxFileBytes: 16 * 1024, gapBytes: 1024 })).map((f) => nameOf(i2, f)), ['lib/b.h', 'lib/d.h']);
  });

  it('seekable: only siblings (frames bring what lies inside them along already)', function () {
    const { idx, at } = listing({ lib: { 'a.h': 2000, 'b.h': 2000, 'c.h': 20_000, 'd.h': 2000, 'e': { 'x.h': 4000 }, 'f.h': 2000 } }, true);
    assert.deepEqual(neighbours(idx, at('lib/a.h'), opts({ maxFileBytes: 16 * 1024 })).map((f) => nameOf(idx, f)), ['lib/b.h', 'lib/d.h', 'lib/f.h']);
  });

  it('the first sibling on a side is taken whatever its distance to the missed file (the file has a request of its own)', function () {
    // Review: c (2 KB, the nearest sibling) was skipped for the 40 KB between it and the
    // missed a, although c starts a request of its own and adds no unwanted byte.
    const { idx, at } = listing({ d: { a: 2000, b: 40_000, c: 2000, d: 70_000, e: 2000 } });
    const got = neighbours(idx, at('d/a'), opts());
    assert.deepEqual(got.map((f) => nameOf(idx, f)), ['d/c', 'd/e']);
    // Past the first, a sibling is still skipped when it would bridge too much of a gap.
    const { idx: i2, at: at2 } = listing({ d: { a: 2000, b: 40_000, c: 2000, d: 40_000, e: 2000 } });
    assert.deepEqual(neighbours(i2, at2('d/a'), opts()).map((f) => nameOf(i2, f)), ['d/c']);
  });

  it('the reach grows only by noteMiss; neighbours() does not count a miss', function () {
    const spec = { lib: { 'a.py': 3000, 'b.py': 50_000, 'c.py': 3000, 'd.py': 70_000, 'e.py': 3000 } };
    const { idx, at } = listing(spec);
    // Asking for the neighbours of a large file (the caller may not fetch them) leaves the reach as it was.
    neighbours(idx, at('lib/d.py'), opts());
    assert.ok(neighbours(idx, at('lib/a.py'), opts()).every((f) => f.size <= NEIGHBOUR_START_FILE_BYTES), 'a query is no miss');
    // A miss of a file larger than any neighbour (a 200 KB module: the caller fetches no
    // neighbours for it) raises the path's reach to maxFileBytes.
    noteMiss(idx, 200_000);
    const got = neighbours(idx, at('lib/a.py'), opts());
    assert.ok(got.some((f) => f.size === 50_000) && got.some((f) => f.size === 70_000), 'large siblings come along after a large miss');
  });

  it('never the missed file, also when it is given as another object of the same file', function () {
    const { idx, at } = listing({ d: { a: 2000, b: 2000, c: 2000 } });
    const missed = { ...at('d/b') };
    const got = neighbours(idx, missed, opts());
    assert.ok(got.every((f) => f.narOffset !== missed.narOffset), `the missed file is not its own neighbour: ${got.map((f) => nameOf(idx, f))}`);
  });

  it('files inside a gap come along only between neighbours of one side, and no larger than maxFileBytes', function () {
    // The two sides are fetched apart (the missed file's own request lies between them):
    // the gap across the missed file is not bridged, so what lies in it is no free file.
    const { idx, at } = listing({ lib: { 'a.h': 2000, 'b': { x: 20_000 }, 'c.h': 2000, 'd': { y: 20_000 }, 'e.h': 2000 } });
    assert.deepEqual(neighbours(idx, at('lib/c.h'), opts({ maxFileBytes: 16 * 1024 })).map((f) => nameOf(idx, f)), ['lib/a.h', 'lib/e.h']);
    // A file in a bridged gap larger than any neighbour may be does not come along (when
    // the fetcher splits the request there, it would cost its bytes).
    const { idx: i2, at: at2 } = listing({ lib: { 'a.h': 2000, 'b.h': 2000, 'c': { x: 30_000 }, 'd.h': 2000 } });
    assert.deepEqual(neighbours(i2, at2('lib/a.h'), opts({ maxFileBytes: 16 * 1024 })).map((f) => nameOf(i2, f)), ['lib/b.h', 'lib/d.h']);
    // With a huge gap setting, no multi-MB file comes along.
    const { idx: i3, at: at3 } = listing({ lib: { 'a.h': 2000, 'b.h': 2000, 'c': { big: 3_000_000 }, 'd.h': 2000 } });
    const got = neighbours(i3, at3('lib/b.h'), opts({ gapBytes: 8 << 20 }));
    assert.ok(got.every((f) => f.size <= 128 * 1024), got.map((f) => `${nameOf(i3, f)} ${f.size}`).join(', '));
  });

  it('a region never spans the missed file or a file held or coming (the fetcher would fetch its bytes again)', function () {
    const { idx, at } = listing({ d: { a: 2000, b: 2000, c: 2000, d: 2000, e: 2000, f: 2000 } });
    const held = at('d/e');
    const isHeld = (f: IndexedFile) => f.narOffset === held.narOffset;
    const missed = at('d/c');
    const got = neighbours(idx, missed, opts({ isHeld }));
    assert.deepEqual(got.map((f) => nameOf(idx, f)), ['d/a', 'd/b', 'd/d', 'd/f']);
    assert.deepEqual(neighbourRegions(idx, missed, got, isHeld).map((g) => g.map((f) => nameOf(idx, f))), [['d/a', 'd/b'], ['d/d'], ['d/f']]);
    // A sibling past a held file starts a region of its own: no gap rule (before: c, 40 KB
    // held, counted as 40 KB of unwanted bytes, and d was skipped).
    const { idx: i2, at: at2 } = listing({ d: { a: 2000, b: 2000, c: 40_000, d: 2000 } });
    const h2 = at2('d/c');
    const isHeld2 = (f: IndexedFile) => f.narOffset === h2.narOffset;
    const got2 = neighbours(i2, at2('d/a'), opts({ isHeld: isHeld2 }));
    assert.deepEqual(got2.map((f) => nameOf(i2, f)), ['d/b', 'd/d']);
    assert.deepEqual(neighbourRegions(i2, at2('d/a'), got2, isHeld2).map((g) => g.map((f) => nameOf(i2, f))), [['d/b'], ['d/d']]);
  });

  it('never the file itself, a held file, or more than the budget of siblings', function () {
    const { idx, at } = listing({ d: { a: 1000, b: 1000, c: 1000, d: 1000, e: 1000 } });
    const held = at('d/b');
    const got = neighbours(idx, at('d/c'), opts({ budgetBytes: 2000, isHeld: (f) => f === held }));
    assert.deepEqual(got.map((f) => nameOf(idx, f)), ['d/d', 'd/e']);
  });
});

describe('neighbourhood: the subtree rule', () => {
  // A library directory as an interpreter sees it: modules at the top, packages below.
  const lib = (): Spec => ({
    lib: {
      'abc.py': 5000, 'enum.py': 70_000,
      encodings: { '__init__.py': 6000, 'aliases.py': 15_000, 'cp1252.py': 12_000 },
      json: { '__init__.py': 14_000, 'decoder.py': 12_000 },
      re: { '__init__.py': 16_000, '_parser.py': 40_000 },
      xml: { '__init__.py': 1000, etree: { 'ElementTree.py': 72_000 } },
      'zipfile.py': 90_000,
    },
    share: { 'big.dat': 200_000 },
  });
  const pos = (idx: NarIndex, f: IndexedFile): number => idx.files.indexOf(f);

  it('knows each directory\'s parent and the contiguous files of its subtree', () => {
    const { idx, at } = listing(lib());
    const t = directoryTreeOf(idx);
    const dirs = directoriesOf(idx);
    const d = (p: string) => dirs[pos(idx, at(p))]!;
    assert.equal(t.parent[0], -1, 'directory 0 is the root');
    assert.equal(t.parent[d('lib/json/__init__.py')], d('lib/abc.py'));
    assert.equal(t.parent[d('lib/xml/etree/ElementTree.py')], d('lib/xml/__init__.py'));
    const files = (dir: number) => idx.files.slice(t.start[dir], t.end[dir]).map((f) => nameOf(idx, f));
    assert.deepEqual(files(d('lib/xml/__init__.py')), ['lib/xml/__init__.py', 'lib/xml/etree/ElementTree.py']);
    assert.deepEqual(files(d('lib/abc.py')), idx.files.filter((f) => nameOf(idx, f).startsWith('lib/')).map((f) => nameOf(idx, f)));
    assert.equal(t.end[0]! - t.start[0]!, idx.files.length);
  });

  it('chooses a directory once misses jumped into three of its subdirectories, and only once', () => {
    const { idx, at } = listing(lib());
    const none = () => false;
    const miss = (p: string) => noteSubtreeMiss(idx, pos(idx, at(p)), 128 * 1024, none);
    const lib0 = directoriesOf(idx)[pos(idx, at('lib/abc.py'))]!;
    assert.equal(miss('lib/encodings/__init__.py'), undefined);
    assert.equal(miss('lib/abc.py'), undefined, 'a file of the directory itself is no subdirectory');
    assert.equal(miss('lib/json/__init__.py'), undefined);
    assert.equal(miss('lib/re/__init__.py'), lib0);
    assert.equal(miss('lib/xml/__init__.py'), undefined, 'chosen already');
  });

  it('does not count a reader going through the tree in order (nothing small left unread between)', () => {
    const { idx, at } = listing(lib());
    const read = new Set<IndexedFile>();
    const held = (f: IndexedFile) => read.has(f);
    // Every small file in NAR order, skipping the large ones as scenario 9 does.
    let chosen: number | undefined;
    for (const f of idx.files) {
      if (f.size > 16_000) continue;
      chosen ??= noteSubtreeMiss(idx, pos(idx, f), 128 * 1024, held);
      read.add(f);
    }
    assert.equal(chosen, undefined);
    // Backwards, or past an unread small file, is a jump.
    assert.equal(jumpedTo(idx, pos(idx, at('lib/json/__init__.py')), pos(idx, at('lib/encodings/__init__.py')), 16_384, () => true), true);
    assert.equal(jumpedTo(idx, pos(idx, at('lib/encodings/__init__.py')), pos(idx, at('lib/json/__init__.py')), 16_384, () => false), true);
    assert.equal(jumpedTo(idx, pos(idx, at('lib/encodings/__init__.py')), pos(idx, at('lib/json/__init__.py')), 16_384, () => true), false);
  });

  it('fetches the subtree\'s files within the reach and the budget, never a held file, nothing past the budget', () => {
    const { idx, at } = listing(lib());
    const lib0 = directoriesOf(idx)[pos(idx, at('lib/abc.py'))]!;
    const held = at('lib/json/decoder.py');
    const isHeld = (f: IndexedFile) => f === held;
    const names = (fs: IndexedFile[] | undefined) => fs?.map((f) => nameOf(idx, f));
    // Reach 16 KiB (nothing larger missed yet): the small files only, whatever the budget.
    const small = ['lib/abc.py', 'lib/encodings/__init__.py', 'lib/encodings/aliases.py', 'lib/encodings/cp1252.py',
      'lib/json/__init__.py', 'lib/re/__init__.py', 'lib/xml/__init__.py'];
    assert.deepEqual(names(subtreeFiles(idx, lib0, { budgetBytes: 1 << 30, maxFileBytes: 128 * 1024, isHeld })), small);
    assert.equal(subtreeFiles(idx, lib0, { budgetBytes: 60_000, maxFileBytes: 128 * 1024, isHeld }), undefined, '69 KB do not fit 60 KB');
    // A 40 KB module missed: the reach is 40 KB, and _parser.py comes too.
    noteMiss(idx, 40_000);
    assert.deepEqual(names(subtreeFiles(idx, lib0, { budgetBytes: 1 << 30, maxFileBytes: 128 * 1024, isHeld })),
      [...small.slice(0, 6), 'lib/re/_parser.py', 'lib/xml/__init__.py']);
    assert.ok(!names(subtreeFiles(idx, 0, { budgetBytes: 1 << 30, maxFileBytes: 128 * 1024, isHeld }))!.includes('share/big.dat'));
  });

  it('chooses a directory again once the reach has doubled since, not before', () => {
    const { idx, at } = listing(lib());
    const none = () => false;
    const miss = (p: string) => noteSubtreeMiss(idx, pos(idx, at(p)), 128 * 1024, none);
    const lib0 = directoriesOf(idx)[pos(idx, at('lib/abc.py'))]!;
    miss('lib/encodings/__init__.py');
    miss('lib/json/__init__.py');
    assert.equal(miss('lib/re/__init__.py'), lib0, 'chosen at a reach of 16 KiB');
    noteMiss(idx, 30_000);
    assert.equal(miss('lib/encodings/cp1252.py'), undefined, '30 KB is less than twice 16 KiB');
    noteMiss(idx, 70_000);
    assert.equal(miss('lib/json/decoder.py'), lib0, 'chosen again at 70 KB');
    assert.equal(miss('lib/re/_parser.py'), undefined);
  });
});
