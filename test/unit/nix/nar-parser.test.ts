import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

import { isNarfsError } from '../../../src/errors.js';
import { byteString, listingToJson, type NarDirectory, type NarNode } from '../../../src/nix/nar-listing.js';
import { NarParser, parseNar, type NarHandler } from '../../../src/nix/nar-parser.js';
import { NarTokenWriter, writeNar, type NarTree } from '../../../src/nix/nar-writer.js';
import { HELLO_NAR_HASH_HEX, HELLO_NAR_HEX, TREE_LS, TREE_NAR_HASH_HEX } from './golden.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

const TREE: NarTree = {
  type: 'directory',
  entries: {
    empty: { type: 'regular', contents: '' },
    'hello.txt': { type: 'regular', contents: 'hello\n' },
    link: { type: 'symlink', target: 'hello.txt' },
    sub: { type: 'directory', entries: { 'run.sh': { type: 'regular', contents: '#!/bin/sh\necho hi\n', executable: true } } },
  },
};
const TREE_NAR = writeNar(TREE);
const HELLO_NAR = Buffer.from(HELLO_NAR_HEX, 'hex');

/** Feeds `bytes` in chunks of the given sizes (cycled), then ends. */
function parseChunked(bytes: Buffer, sizes: number[], handler?: NarHandler): NarNode {
  const p = new NarParser(handler);
  let off = 0;
  for (let i = 0; off < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    p.write(bytes.subarray(off, off + n));
    off += n;
  }
  assert.equal(p.bytesSeen, bytes.length);
  return p.end();
}

/** Asserts the code whole and byte by byte (the error must not depend on chunking). */
function rejects(bytes: Buffer, code: string, label = code): void {
  assert.throws(() => parseNar(bytes), isCode(code), `${label} (whole)`);
  assert.throws(() => parseChunked(bytes, [1]), isCode(code), `${label} (1-byte chunks)`);
  assert.throws(() => parseChunked(bytes, [3, 5, 13]), isCode(code), `${label} (odd chunks)`);
}

const nar = (): NarTokenWriter => new NarTokenWriter().str('nix-archive-1');
/** A valid regular file node. */
const file = (w: NarTokenWriter, contents = 'x'): NarTokenWriter => w.strs('(', 'type', 'regular', 'contents', contents, ')');
/** A directory with the given entry names (each an empty file), unchecked. */
function dirNar(names: Array<string | Buffer>): Buffer {
  const w = nar().strs('(', 'type', 'directory');
  for (const n of names) file(w.strs('entry', '(', 'name', n, 'node'), '').str(')');
  return w.str(')').bytes();
}

describe('nar-parser', () => {
  describe('golden NARs', () => {
    it('parses the 120-byte hello NAR with narOffset 96', () => {
      assert.equal(HELLO_NAR.length, 120);
      assert.equal(createHash('sha256').update(HELLO_NAR).digest('hex'), HELLO_NAR_HASH_HEX);
      assert.deepEqual(parseNar(HELLO_NAR), { type: 'regular', size: 6, executable: false, narOffset: 96 });
      assert.deepEqual(writeNar({ type: 'regular', contents: 'hello\n' }), HELLO_NAR);
    });

    it('parses the tree NAR into the listing Nix 2.8 published', () => {
      assert.equal(TREE_NAR.length, 1088);
      assert.equal(createHash('sha256').update(TREE_NAR).digest('hex'), TREE_NAR_HASH_HEX);
      assert.equal(listingToJson(parseNar(TREE_NAR)).toString('utf8'), TREE_LS);
    });

    it('gives the same listing for every chunking, split anywhere', () => {
      for (let cut = 0; cut <= TREE_NAR.length; cut++) {
        const p = new NarParser();
        p.write(TREE_NAR.subarray(0, cut));
        p.write(TREE_NAR.subarray(cut));
        assert.equal(listingToJson(p.end()).toString('utf8'), TREE_LS, `cut at ${cut}`);
      }
      for (const sizes of [[1], [2], [7], [8], [9], [1, 15, 3], [4096]]) {
        assert.equal(listingToJson(parseChunked(TREE_NAR, sizes)).toString('utf8'), TREE_LS, JSON.stringify(sizes));
      }
    });

    it('hands file bytes over in order, without copying, with their offsets', () => {
      const seen = new Map<string, Buffer[]>();
      const starts: string[] = [];
      const ends: string[] = [];
      const handler: NarHandler = {
        onFileStart: (path, size, executable, narOffset) => starts.push(`${path.join('/')}:${size}:${executable}:${narOffset}`),
        onFileContents: (path, chunk, offsetInFile) => {
          const key = path.join('/');
          const parts = seen.get(key) ?? [];
          assert.equal(offsetInFile, parts.reduce((n, b) => n + b.length, 0));
          assert.equal(chunk.buffer, TREE_NAR.buffer, 'a view of the input, not a copy');
          parts.push(chunk);
          seen.set(key, parts);
        },
        onFileEnd: (path) => ends.push(path.join('/')),
      };
      parseNar(TREE_NAR, handler);
      assert.deepEqual(starts, ['empty:0:false:232', 'hello.txt:6:false:424', 'sub/run.sh:18:true:984']);
      assert.deepEqual(ends, ['empty', 'hello.txt', 'sub/run.sh']);
      assert.deepEqual([...seen.keys()], ['hello.txt', 'sub/run.sh']);
      assert.equal(Buffer.concat(seen.get('sub/run.sh')!).toString(), '#!/bin/sh\necho hi\n');

      // Byte by byte: contents arrive in 1-byte pieces that add up.
      const pieces: string[] = [];
      parseChunked(TREE_NAR, [1], { onFileContents: (p, c) => pieces.push(c.toString('latin1')) });
      assert.equal(pieces.join(''), 'hello\n#!/bin/sh\necho hi\n');
    });

    it('bytes at narOffset are the file contents', () => {
      const contents = Buffer.from(Array.from({ length: 1000 }, (_, i) => i & 0xff));
      const tree: NarTree = {
        type: 'directory',
        entries: { a: { type: 'regular', contents }, b: { type: 'directory', entries: { c: { type: 'regular', contents: 'abcdefgh' } } } },
      };
      const bytes = writeNar(tree);
      const root = parseNar(bytes) as NarDirectory;
      const a = root.entries.get('a');
      assert.ok(a?.type === 'regular');
      assert.deepEqual(bytes.subarray(a.narOffset, a.narOffset + a.size), contents);
      const c = (root.entries.get('b') as NarDirectory).entries.get('c');
      assert.ok(c?.type === 'regular');
      assert.equal(bytes.toString('latin1', c.narOffset, c.narOffset + c.size), 'abcdefgh');
    });

    it('accepts bytewise order that differs from JS string order', () => {
      // U+FFFD (EF BF BD) < U+1F600 (F0 9F 98 80) bytewise, but '\uFFFD' > '\uD83D…' in UTF-16.
      const names = ['B', '_', 'a', 'a-', 'a.', 'é', '\uFFFD', '😀'];
      const root = parseNar(dirNar(names)) as NarDirectory;
      assert.deepEqual([...root.entries.keys()], names.map(byteString));
      rejects(dirNar(['😀', '\uFFFD']), 'ERR_NAR_UNSORTED', 'emoji before U+FFFD');
    });

    it('accepts names Nix accepts on Linux: case variants and unnormalised Unicode', () => {
      const nfc = '\u00e2';
      const nfd = 'a\u0302';
      const names = [nfd, 'A', 'a', nfc].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      assert.equal((parseNar(dirNar(names)) as NarDirectory).entries.size, 4);
    });

    it('accepts the limits themselves: 255-byte names, 4095-byte targets, depth 63', () => {
      parseNar(dirNar(['n'.repeat(255)]));
      parseNar(nar().strs('(', 'type', 'symlink', 'target', 't'.repeat(4095), ')').bytes());
      const deep = nar();
      for (let i = 0; i < 63; i++) deep.strs('(', 'type', 'directory', 'entry', '(', 'name', 'd', 'node');
      file(deep);
      for (let i = 0; i < 63; i++) deep.strs(')', ')');
      const root = parseNar(deep.bytes());
      let n: NarNode = root;
      let depth = 0;
      while (n.type === 'directory') {
        n = n.entries.get('d')!;
        depth++;
      }
      assert.equal(depth, 63);
    });

    it('keeps a name called __proto__ as a plain entry', () => {
      const root = parseNar(dirNar(['__proto__', 'constructor'])) as NarDirectory;
      assert.deepEqual([...root.entries.keys()], ['__proto__', 'constructor']);
      assert.equal(Object.getPrototypeOf(root.entries), Map.prototype);
    });
  });

  describe('rejects every row of §1.3', () => {
    it('row 1: bad magic ⇒ ERR_NAR_MAGIC', () => {
      rejects(new NarTokenWriter().str('nix-archive-2').bytes(), 'ERR_NAR_MAGIC');
      rejects(new NarTokenWriter().str('nix-archive-10').bytes(), 'ERR_NAR_MAGIC', 'longer than 13');
      rejects(new NarTokenWriter().str('nix').bytes(), 'ERR_NAR_MAGIC', 'shorter');
      rejects(new NarTokenWriter().int(2n ** 63n).bytes(), 'ERR_NAR_MAGIC', 'huge length');
      rejects(Buffer.from('PK\x03\x04 not a nar at all', 'latin1'), 'ERR_NAR_MAGIC', 'zip');
    });

    it('row 2: non-zero padding anywhere ⇒ ERR_NAR_PADDING', () => {
      rejects(new NarTokenWriter().str('nix-archive-1', 1).bytes(), 'ERR_NAR_PADDING', 'magic padding');
      rejects(nar().str('(', 0x80).bytes(), 'ERR_NAR_PADDING', 'tag padding');
      rejects(nar().strs('(', 'type', 'regular', 'contents').int(6).raw('hello\n').raw(Buffer.from([0, 1])).str(')').bytes(), 'ERR_NAR_PADDING', 'contents padding');
      rejects(nar().strs('(', 'type', 'symlink', 'target').str('abc', 0xff).bytes(), 'ERR_NAR_PADDING', 'target padding');
      rejects(nar().strs('(', 'type', 'directory', 'entry', '(', 'name').str('n', 7).bytes(), 'ERR_NAR_PADDING', 'name padding');
    });

    it('row 3: node not starting "(" "type" ⇒ ERR_NAR_TAG', () => {
      rejects(nar().strs('type', 'regular').bytes(), 'ERR_NAR_TAG', 'no (');
      rejects(nar().strs('(', 'regular', 'contents', '', ')').bytes(), 'ERR_NAR_TAG', 'no type');
      rejects(nar().strs('(', 'typ').bytes(), 'ERR_NAR_TAG', 'typ');
    });

    it('row 4: unknown file type ⇒ ERR_NAR_FILE_TYPE', () => {
      rejects(nar().strs('(', 'type', 'fifo', ')').bytes(), 'ERR_NAR_FILE_TYPE');
      rejects(nar().strs('(', 'type', 'Regular', ')').bytes(), 'ERR_NAR_FILE_TYPE', 'case');
      rejects(nar().strs('(', 'type', '', ')').bytes(), 'ERR_NAR_FILE_TYPE', 'empty');
    });

    it('row 5: executable marker with a value ⇒ ERR_NAR_EXECUTABLE', () => {
      rejects(nar().strs('(', 'type', 'regular', 'executable', 'x', 'contents', '', ')').bytes(), 'ERR_NAR_EXECUTABLE');
      rejects(nar().strs('(', 'type', 'regular', 'executable', 'contents', '', ')').bytes(), 'ERR_NAR_EXECUTABLE', 'missing value');
    });

    it('row 6: executable after contents ⇒ ERR_NAR_TAG', () => {
      rejects(nar().strs('(', 'type', 'regular', 'contents', 'hi', 'executable', '', ')').bytes(), 'ERR_NAR_TAG');
    });

    it('row 7: no contents after type regular [executable ""] ⇒ ERR_NAR_TAG', () => {
      rejects(nar().strs('(', 'type', 'regular', ')').bytes(), 'ERR_NAR_TAG', 'bare regular');
      rejects(nar().strs('(', 'type', 'regular', 'foo', ')').bytes(), 'ERR_NAR_TAG', 'other token');
      rejects(nar().strs('(', 'type', 'regular', 'executable', '', ')').bytes(), 'ERR_NAR_TAG', 'executable only');
      rejects(nar().strs('(', 'type', 'regular', 'executable', '', 'executable', '', 'contents', '', ')').bytes(), 'ERR_NAR_TAG', 'executable twice');
      rejects(nar().strs('(', 'type', 'regular', 'contents', 'a', 'contents', 'b', ')').bytes(), 'ERR_NAR_TAG', 'contents twice');
    });

    it('row 8: directory item other than entry or ")" ⇒ ERR_NAR_TAG', () => {
      rejects(nar().strs('(', 'type', 'directory', 'node').bytes(), 'ERR_NAR_TAG');
      rejects(nar().strs('(', 'type', 'directory', 'contents', '', ')').bytes(), 'ERR_NAR_TAG', 'contents in directory');
    });

    it('row 9: entry not exactly ( name <n> node <obj> ) ⇒ ERR_NAR_TAG', () => {
      rejects(file(nar().strs('(', 'type', 'directory', 'entry', '(', 'node')).strs('name', 'a', ')', ')').bytes(), 'ERR_NAR_TAG', 'name-after-node');
      rejects(file(nar().strs('(', 'type', 'directory', 'entry', 'name', 'a', 'node')).strs(')', ')').bytes(), 'ERR_NAR_TAG', 'no (');
      rejects(file(nar().strs('(', 'type', 'directory', 'entry', '(', 'name', 'a')).strs(')', ')').bytes(), 'ERR_NAR_TAG', 'no node');
      rejects(file(nar().strs('(', 'type', 'directory', 'entry', '(', 'name', 'a', 'node')).strs('entry').bytes(), 'ERR_NAR_TAG', 'no ) after node');
    });

    it('row 10: invalid names ⇒ ERR_NAR_NAME', () => {
      for (const n of ['', '.', '..', 'a/b', '/', 'a\0b']) rejects(dirNar([n]), 'ERR_NAR_NAME', JSON.stringify(n));
    });

    it('names and symlink targets that are not UTF-8 are bytes, as Nix allows', () => {
      const names = [Buffer.from('caf\xe9', 'latin1'), Buffer.from([0xc0, 0xaf]), Buffer.from([0xff, 0xfe, 0x78])];
      const root = parseNar(dirNar(names)) as NarDirectory;
      assert.deepEqual([...root.entries.keys()].map((n) => Buffer.from(n, 'latin1')), names);
      const link = parseNar(nar().strs('(', 'type', 'symlink', 'target', Buffer.from([0x74, 0xe9, 0xff]), ')').bytes());
      assert.ok(link.type === 'symlink');
      assert.deepEqual(Buffer.from(link.target, 'latin1'), Buffer.from([0x74, 0xe9, 0xff]));
      rejects(dirNar([Buffer.from([0xff]), Buffer.from([0xe9])]), 'ERR_NAR_UNSORTED', 'byte order beyond 0x7f');
    });

    it('row 11: names not strictly increasing ⇒ ERR_NAR_UNSORTED', () => {
      rejects(dirNar(['b', 'a']), 'ERR_NAR_UNSORTED');
      rejects(dirNar(['a', 'a']), 'ERR_NAR_UNSORTED', 'duplicate');
      rejects(dirNar(['a', 'B']), 'ERR_NAR_UNSORTED', 'case-insensitive order');
      rejects(dirNar(['é', 'z']), 'ERR_NAR_UNSORTED', 'locale order');
      rejects(dirNar(['a.', 'a-']), 'ERR_NAR_UNSORTED', 'punctuation');
      // Each directory has its own order: a name may repeat in a sibling directory.
      const ok = nar().strs('(', 'type', 'directory');
      for (const d of ['x', 'y']) file(ok.strs('entry', '(', 'name', d, 'node', '(', 'type', 'directory', 'entry', '(', 'name', 'b', 'node')).strs(')', ')', ')');
      parseNar(ok.str(')').bytes());
    });

    it('row 12: symlink other than target <t> ) ⇒ ERR_NAR_TAG', () => {
      rejects(nar().strs('(', 'type', 'symlink', 'foo', 'x', ')').bytes(), 'ERR_NAR_TAG');
      rejects(nar().strs('(', 'type', 'symlink', 'target', 'x', 'target', 'y', ')').bytes(), 'ERR_NAR_TAG', 'two targets');
      rejects(nar().strs('(', 'type', 'symlink', ')').bytes(), 'ERR_NAR_TAG', 'no target');
    });

    it('row 13: empty or NUL symlink target ⇒ ERR_NAR_SYMLINK', () => {
      rejects(nar().strs('(', 'type', 'symlink', 'target', '', ')').bytes(), 'ERR_NAR_SYMLINK');
      rejects(nar().strs('(', 'type', 'symlink', 'target', 'a\0b', ')').bytes(), 'ERR_NAR_SYMLINK', 'NUL');
    });

    it('row 14: over-long tokens ⇒ ERR_NAR_LIMIT / ERR_NAR_NAME / ERR_NAR_SYMLINK', () => {
      rejects(nar().str('('.repeat(33)).bytes(), 'ERR_NAR_LIMIT', '33-byte tag');
      rejects(nar().strs('(', 'type', 'x'.repeat(33)).bytes(), 'ERR_NAR_LIMIT', '33-byte type');
      rejects(nar().str('(').int(2n ** 40n).bytes(), 'ERR_NAR_LIMIT', 'huge tag length');
      rejects(dirNar(['n'.repeat(256)]), 'ERR_NAR_NAME', '256-byte name');
      rejects(nar().strs('(', 'type', 'symlink', 'target', 't'.repeat(4096), ')').bytes(), 'ERR_NAR_SYMLINK', '4096-byte target');
      rejects(nar().strs('(', 'type', 'regular', 'contents').int(2n ** 53n).bytes(), 'ERR_NAR_LIMIT', 'contents ≥ 2^53');
    });

    it('row 15: nesting depth ≥ 64 ⇒ ERR_NAR_DEPTH', () => {
      const deep = nar();
      for (let i = 0; i < 64; i++) deep.strs('(', 'type', 'directory', 'entry', '(', 'name', 'd', 'node');
      file(deep);
      for (let i = 0; i < 64; i++) deep.strs(')', ')');
      rejects(deep.bytes(), 'ERR_NAR_DEPTH');
    });

    it('row 17: trailing bytes ⇒ ERR_NAR_TRAILING', () => {
      rejects(Buffer.concat([HELLO_NAR, Buffer.alloc(1)]), 'ERR_NAR_TRAILING');
      rejects(Buffer.concat([TREE_NAR, HELLO_NAR]), 'ERR_NAR_TRAILING', 'two NARs');
      const p = new NarParser();
      p.write(HELLO_NAR);
      assert.throws(() => p.write(Buffer.from([0])), isCode('ERR_NAR_TRAILING'), 'in a later write');
    });

    it('early end ⇒ ERR_NAR_TRUNCATED, for every prefix', () => {
      for (let len = 0; len < TREE_NAR.length; len++) {
        assert.throws(() => parseNar(TREE_NAR.subarray(0, len)), isCode('ERR_NAR_TRUNCATED'), `prefix ${len}`);
      }
      const p = new NarParser();
      p.write(TREE_NAR.subarray(0, 500));
      assert.throws(() => p.end(), isCode('ERR_NAR_TRUNCATED'));
    });
  });

  it('stays failed after an error', () => {
    const p = new NarParser();
    assert.throws(() => p.write(new NarTokenWriter().str('nix-archive-2').bytes()), isCode('ERR_NAR_MAGIC'));
    assert.throws(() => p.write(HELLO_NAR), isCode('ERR_NAR_MAGIC'));
    assert.throws(() => p.end(), isCode('ERR_NAR_MAGIC'));
  });

  it('passes a handler error through unchanged and stops', () => {
    const boom = new Error('disk full');
    const p = new NarParser({ onFileContents: () => { throw boom; } });
    assert.throws(() => p.write(HELLO_NAR), (e: unknown) => e === boom);
    assert.throws(() => p.end(), (e: unknown) => e === boom);
  });

  it('streams a large file in arbitrary chunks with the right offsets', () => {
    const size = 3 * 1024 * 1024 + 5;
    const head = nar().strs('(', 'type', 'regular', 'executable', '', 'contents').int(size).bytes();
    const body = Buffer.alloc(size, 0xab);
    const tail = new NarTokenWriter().pad(size).str(')').bytes();
    const all = Buffer.concat([head, body, tail]);
    const h = createHash('sha256');
    let count = 0;
    const root = parseChunked(all, [65536, 1, 4093], {
      onFileContents: (_p, c, off) => {
        assert.equal(off, count);
        count += c.length;
        h.update(c);
      },
    });
    assert.deepEqual(root, { type: 'regular', size, executable: true, narOffset: head.length });
    assert.equal(count, size);
    assert.equal(h.digest('hex'), createHash('sha256').update(body).digest('hex'));
  });
});
