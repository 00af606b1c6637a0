import assert from 'node:assert/strict';

import { isNarfsError } from '../../../src/errors.js';
import { byteString, listingToJson, listingsEqual, parseListingJson, parseListingTree, type NarNode } from '../../../src/nix/nar-listing.js';
import { CompactDirectory, compactOf, readCompactListing } from '../../../src/nix/compact-listing.js';
import { encodeNarIndex } from '../../../src/nix/nar-index.js';
import { parseNar } from '../../../src/nix/nar-parser.js';
import { writeNar } from '../../../src/nix/nar-writer.js';
import { REF_LS, TREE_LS } from './golden.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const reg = (size: number, narOffset: number, executable = false): NarNode => ({ type: 'regular', size, executable, narOffset });
const rejects = (text: string, label = text): void => {
  assert.throws(() => parseListingJson(text), isCode('ERR_LISTING_PARSE'), label);
};

/** The compact reader and JSON.parse agree: same listing, or both refuse (the compact one may defer). */
const agree = (text: string): void => {
  const bytes = Buffer.from(text, 'latin1');
  let tree: NarNode | undefined;
  try { tree = parseListingTree(bytes); } catch { tree = undefined; }
  const compact = readCompactListing(bytes);
  if (compact === undefined) return;
  assert.ok(tree !== undefined, `compact reader accepted what JSON.parse refuses: ${text}`);
  assert.ok(listingsEqual(compact.node(0), tree) && listingsEqual(tree, compact.node(0)), text);
  assert.ok(listingToJson(compact.node(0)).equals(listingToJson(tree)), text);
};

describe('nar-listing', () => {
  it('maxFileEnd is the largest narOffset + size of a regular file of the compact listing', () => {
    const ls = '{"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":10,"narOffset":500},'
      + '"b":{"type":"directory","entries":{"c":{"type":"regular","size":7,"executable":true,"narOffset":900}}},'
      + '"d":{"type":"symlink","target":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}}';
    assert.equal(readCompactListing(Buffer.from(ls))!.maxFileEnd(), 907);
    assert.equal(readCompactListing(Buffer.from('{"version":1,"root":{"type":"symlink","target":"t"}}'))!.maxFileEnd(), 0);
  });

  it('reads the form Nix writes without JSON.parse, as JSON.parse reads it', () => {
    assert.ok(readCompactListing(Buffer.from(TREE_LS)) !== undefined, 'TREE_LS takes the compact path');
    const esc = '{"version":1,"root":{"type":"directory","entries":{"a\\b":{"type":"symlink","target":"\\u00e9\\"\\n"},"caf\u00e9":{"type":"regular","size":3,"executable":true,"narOffset":96},"x\\ud83d\\ude00":{"type":"regular","size":0}}}}';
    const variants = [
      TREE_LS, REF_LS, esc,
      ' {"root":{"type":"regular","size":1,"narOffset":9},"version":1} ',
      '{"version":1.0,"root":{"type":"regular","size":1,"narOffset":9}}',
      '{"type":"regular","size":1e1,"narOffset":9}',
      '{"type":"regular","size":1,"narOffset":9,"executable":false,"executable":true}',
      '{"type":"directory","entries":{"b":{"type":"symlink","target":"x"},"a":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"a":{"type":"symlink","target":"x"},"a":{"type":"symlink","target":"y"}}}',
      '{"type":"directory","entries":{"a/b":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"..":{"type":"symlink","target":"x"}}}',
      '{"type":"symlink","target":"a\\u0000b"}',
      '{"type":"symlink","target":"\\ud800"}',
      '{"type":"symlink","target":""}',
      '{"type":"regular","size":5}',
      '{"type":"regular","size":5,"narOffset":0}',
      '{"type":"regular","size":-1,"narOffset":9}',
      '{"type":"regular","size":9007199254740993,"narOffset":9}',
      '{"type":"fifo"}',
      '{"type":"regular","size":1,"narOffset":9} x',
      '{"type":"regular","size":1,"narOffset":9,"extra":[1,{"a":null}]}',
      '{"type":"directory","entries":{}}',
      `{"type":"directory","entries":{"${'n'.repeat(256)}":{"type":"symlink","target":"x"}}}`,
      '{"type":"directory","entries":{"a\u00ff\u0080":{"type":"symlink","target":"\u00fe"}}}',
    ];
    for (const v of variants) agree(v);
    const nested = (d: number) => '{"type":"directory","entries":{"d":'.repeat(d) + '{"type":"symlink","target":"x"}' + '}}'.repeat(d);
    agree(nested(63));
    agree(nested(64));
    // Raw bytes >= 0x80 are bytes (Nix 2.8 writes names that are not UTF-8 raw).
    const raw = readCompactListing(Buffer.from('{"type":"directory","entries":{"\xff\xfe":{"type":"symlink","target":"t\xe9"}}}', 'latin1'));
    assert.ok(raw !== undefined);
    const root = raw.node(0);
    assert.ok(root.type === 'directory');
    assert.deepEqual([...root.entries.keys()], ['\xff\xfe']);
    assert.deepEqual(root.entries.get('\xff\xfe'), { type: 'symlink', target: 't\xe9' });
    assert.equal(raw.find(0, '\xff\xfe'), 1);
    assert.equal(raw.find(0, '\xff'), -1);
  });

  it('reads and rewrites the .ls files Nix 2.8 wrote, byte for byte', () => {
    assert.equal(listingToJson(parseListingJson(TREE_LS)).toString('utf8'), TREE_LS);
    assert.equal(listingToJson(parseListingJson(REF_LS)).toString('utf8'), REF_LS);
    assert.deepEqual(parseListingJson(REF_LS), reg(63, 96));
  });

  it('reads the 2.26 key order, a bare node, and HEAD\'s explicit executable:false', () => {
    const sorted = '{"root":{"entries":{"f":{"executable":false,"narOffset":96,"size":1,"type":"regular"}},"type":"directory"},"version":1}';
    const bare = '{"type":"directory","entries":{"f":{"type":"regular","size":1,"narOffset":96}}}';
    const a = parseListingJson(sorted);
    assert.ok(listingsEqual(a, parseListingJson(bare)));
    assert.equal(listingToJson(a).toString('utf8'), '{"version":1,"root":{"type":"directory","entries":{"f":{"type":"regular","size":1,"narOffset":96}}}}');
  });

  it('agrees with the listing parsed from the NAR itself', () => {
    const nar = writeNar({
      type: 'directory',
      entries: { empty: { type: 'regular', contents: '' }, 'hello.txt': { type: 'regular', contents: 'hello\n' }, link: { type: 'symlink', target: 'hello.txt' }, sub: { type: 'directory', entries: { 'run.sh': { type: 'regular', contents: '#!/bin/sh\necho hi\n', executable: true } } } },
    });
    assert.ok(listingsEqual(parseNar(nar), parseListingJson(TREE_LS)));
  });

  it('orders entries bytewise, not in JS object key order', () => {
    const text = '{"version":1,"root":{"type":"directory","entries":{"b":{"type":"symlink","target":"x"},"10":{"type":"symlink","target":"x"},"9":{"type":"symlink","target":"x"},"😀":{"type":"symlink","target":"x"},"\uFFFD":{"type":"symlink","target":"x"}}}}';
    const root = parseListingJson(text);
    assert.ok(root.type === 'directory');
    assert.deepEqual([...root.entries.keys()], ['10', '9', 'b', '\uFFFD', '😀'].map(byteString));
    assert.match(listingToJson(root).toString('utf8'), /"entries":\{"10":.*"9":.*"b":.*"\uFFFD":.*"😀":/u);
  });

  it('treats __proto__ and constructor as ordinary names', () => {
    const text = '{"type":"directory","entries":{"__proto__":{"type":"regular","size":2,"narOffset":200},"constructor":{"type":"symlink","target":"t"}}}';
    const root = parseListingJson(text);
    assert.ok(root.type === 'directory');
    assert.deepEqual(root.entries.get('__proto__'), reg(2, 200));
    assert.equal(root.entries.get('constructor')?.type, 'symlink');
    assert.equal(listingToJson(root).toString('utf8'), `{"version":1,"root":${text}}`);
    assert.equal(({} as Record<string, unknown>)['type'], undefined, 'Object.prototype untouched');
  });

  it('defaults a missing executable to false and allows a missing narOffset only for empty files', () => {
    assert.deepEqual(parseListingJson('{"type":"regular","size":0}'), reg(0, 0));
    rejects('{"type":"regular","size":5}', 'non-empty without narOffset');
    rejects('{"type":"regular","size":5,"narOffset":0}', 'narOffset 0 means absent');
  });

  it('rejects malformed listings with ERR_LISTING_PARSE', () => {
    const bad = [
      '',
      'not json',
      '[]',
      'null',
      '{"version":2,"root":{"type":"regular","size":0}}',
      '{"version":1}',
      '{"root":{"type":"regular","size":0}}',
      '{"type":"fifo"}',
      '{}',
      '{"type":"regular"}',
      '{"type":"regular","size":-1,"narOffset":8}',
      '{"type":"regular","size":1.5,"narOffset":8}',
      '{"type":"regular","size":"1","narOffset":8}',
      '{"type":"regular","size":9007199254740993,"narOffset":8}',
      '{"type":"regular","size":1,"narOffset":8,"executable":1}',
      '{"type":"regular","size":1,"narOffset":"8"}',
      '{"type":"symlink"}',
      '{"type":"symlink","target":""}',
      '{"type":"symlink","target":"a\\u0000b"}',
      `{"type":"symlink","target":"${'t'.repeat(4096)}"}`,
      '{"type":"directory"}',
      '{"type":"directory","entries":[]}',
      '{"type":"directory","entries":{"a":null}}',
      '{"type":"directory","entries":{"":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{".":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"..":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"a/b":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"a\\u0000":{"type":"symlink","target":"x"}}}',
      '{"type":"directory","entries":{"\\ud800":{"type":"symlink","target":"x"}}}',
      `{"type":"directory","entries":{"${'n'.repeat(256)}":{"type":"symlink","target":"x"}}}`,
    ];
    for (const t of bad) rejects(t, t.slice(0, 100));
  });

  it('limits nesting to depth 63', () => {
    const nest = (depth: number): string => {
      let s = '{"type":"symlink","target":"x"}';
      for (let i = 0; i < depth; i++) s = `{"type":"directory","entries":{"d":${s}}}`;
      return s;
    };
    parseListingJson(nest(63));
    rejects(nest(64), 'depth 64');
  });

  it('compares listings field by field', () => {
    const base = parseListingJson(TREE_LS);
    assert.ok(listingsEqual(base, parseListingJson(TREE_LS)));
    const variants = [
      TREE_LS.replace('"size":6', '"size":7'),
      TREE_LS.replace('"narOffset":424', '"narOffset":432'),
      TREE_LS.replace('"executable":true,', ''),
      TREE_LS.replace('"target":"hello.txt"', '"target":"hello.txt2"'),
      TREE_LS.replace('"link":{"type":"symlink","target":"hello.txt"}', '"link":{"type":"regular","size":0}'),
      TREE_LS.replace('"hello.txt"', '"hello.txu"'),
      TREE_LS.replace(',"link":{"type":"symlink","target":"hello.txt"}', ''),
    ];
    for (const v of variants) {
      assert.notEqual(v, TREE_LS);
      assert.equal(listingsEqual(base, parseListingJson(v)), false, v);
      assert.equal(listingsEqual(parseListingJson(v), base), false, v);
    }
    // The offset of an empty file is meaningless and ignored.
    assert.ok(listingsEqual(base, parseListingJson(TREE_LS.replace('"size":0,"narOffset":232', '"size":0'))));
  });

  it('walks a compact listing building each directory\'s entries once, not once per child', () => {
    // A CompactDirectory builds `entries` (a Map of every child) on each access, so a
    // walker that looks each child up through it is quadratic: a fuzzed .ls of one
    // 1,000-entry directory took ~1 s to compare and re-serialise (test/unit/nix/fuzz.test.ts).
    // Counted, not timed: each walk must build each directory's entries a bounded number of times.
    const n = 3000;
    const kids = Array.from({ length: n }, (_, i) => `"f${String(i).padStart(5, '0')}":{"type":"symlink","target":"t${i}"}`).join(',');
    const json = `{"version":1,"root":{"type":"directory","entries":{"sub":{"type":"directory","entries":{"big":{"type":"directory","entries":{${kids}}}}}}}}`;
    const root = parseListingJson(json);
    assert.ok(root instanceof CompactDirectory, 'the form Nix writes is read compact');
    const getter = Object.getOwnPropertyDescriptor(CompactDirectory.prototype, 'entries')!;
    let builds = 0;
    Object.defineProperty(CompactDirectory.prototype, 'entries', {
      configurable: true,
      get(this: CompactDirectory) { builds++; return getter.get!.call(this); },
    });
    try {
      const count = (walk: () => unknown): number => { builds = 0; walk(); return builds; };
      // Three directories, two listings: at most two builds per directory and side.
      assert.ok(listingsEqual(root, parseListingJson(json)));
      assert.ok(count(() => listingsEqual(root, parseListingJson(json))) <= 12);
      assert.ok(count(() => listingToJson(root)) <= 6);
      const sub = root.type === 'directory' ? root.entries.get('sub')! : undefined;
      assert.ok(sub instanceof CompactDirectory && sub.index !== 0, 'a directory below the root is built anew by compactOf');
      assert.ok(count(() => compactOf(sub)) <= 4);
      const index = {
        storePath: '/nix/store/00000000000000000000000000000000-walk', narHash: { algo: 'sha256' as const, digest: Buffer.alloc(32) },
        narSize: 1 << 20, chunkSize: 1 << 16, root, files: [], signatures: [],
      };
      assert.ok(count(() => encodeNarIndex(index)) <= 6);
    } finally {
      Object.defineProperty(CompactDirectory.prototype, 'entries', getter);
    }
    // And the results are right: the serialised listing reads back equal, child by child.
    const again = parseListingJson(listingToJson(root));
    assert.ok(listingsEqual(root, again) && listingsEqual(again, root));
    const big = (again.type === 'directory' ? again.entries.get('sub') : undefined);
    const bigEntries = big?.type === 'directory' ? big.entries.get('big') : undefined;
    assert.equal(bigEntries?.type === 'directory' ? bigEntries.entries.size : -1, n);
  });
});
