import { skipOrFail } from '../../support/environment.js';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { byteString, listingsEqual, type NarNode } from '../../../src/nix/nar-listing.js';
import { NarParser, parseNar } from '../../../src/nix/nar-parser.js';
import { NarTokenWriter, writeNar, type NarTree } from '../../../src/nix/nar-writer.js';
import { encodeNix32 } from '../../../src/nix/nix32.js';
import { HELLO_NAR_HEX } from './golden.js';
import { haveNix, nix, nixText, withTempDir } from './nix-tool.js';

/** Reads a directory tree the way Nix dumps it (owner exec bit ⇒ executable). */
function readTree(path: Buffer): NarTree {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return { type: 'symlink', target: readlinkSync(path, { encoding: 'buffer' }) };
  if (st.isFile()) return { type: 'regular', contents: readFileSync(path), executable: (st.mode & 0o100) !== 0 };
  const byteEntries: Array<[Buffer, NarTree]> = [];
  for (const name of readdirSync(path, { encoding: 'buffer' })) byteEntries.push([name, readTree(joinBytes(path, name))]);
  return { type: 'directory', entries: {}, byteEntries };
}

/** Paths as bytes: names need not be UTF-8. */
function joinBytes(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, Buffer.from('/'), name]);
}

/** A listing without narOffsets, straight from the file system. */
function fsListing(path: Buffer): NarNode {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return { type: 'symlink', target: readlinkSync(path, { encoding: 'buffer' }).toString('latin1') };
  if (st.isFile()) return { type: 'regular', size: st.size, executable: (st.mode & 0o100) !== 0, narOffset: -1 };
  const entries = new Map<string, NarNode>();
  const names = readdirSync(path, { encoding: 'buffer' }).sort(Buffer.compare);
  for (const name of names) entries.set(name.toString('latin1'), fsListing(joinBytes(path, name)));
  return { type: 'directory', entries };
}

/** Compares a parsed listing with the file system, and checks file bytes at each narOffset. */
function checkAgainstFs(node: NarNode, path: Buffer, narBytes: Buffer): void {
  const expected = fsListing(path);
  const where = path.toString('latin1');
  assert.equal(node.type, expected.type, where);
  if (node.type === 'regular' && expected.type === 'regular') {
    assert.equal(node.size, expected.size, where);
    assert.equal(node.executable, expected.executable, where);
    assert.deepEqual(narBytes.subarray(node.narOffset, node.narOffset + node.size), readFileSync(path), `bytes at narOffset of ${where}`);
  } else if (node.type === 'symlink' && expected.type === 'symlink') {
    assert.equal(node.target, expected.target, where);
  } else if (node.type === 'directory' && expected.type === 'directory') {
    assert.deepEqual([...node.entries.keys()], [...expected.entries.keys()], where);
    for (const [name, child] of node.entries) checkAgainstFs(child, joinBytes(path, Buffer.from(name, 'latin1')), narBytes);
  }
}

/** A directory full of traps: sort order, Unicode, spaces, modes, symlinks, sizes. */
function makeTrapDir(root: string): void {
  const d = join(root, 'trap');
  mkdirSync(d);
  const files: Record<string, string | Buffer> = {
    B: 'upper',
    a: 'lower',
    'a-': 'dash',
    'a.': 'dot',
    _: 'underscore',
    'é': 'nfc',
    'e\u0301': 'nfd',
    '😀': 'emoji',
    '\uFFFD': 'replacement char',
    'with space': 'x',
    '10': 'ten',
    '9': 'nine',
    '__proto__': 'proto',
    '.hidden': 'h',
    empty: '',
    eight: '12345678',
    big: randomBytes(200_001),
  };
  for (const [name, contents] of Object.entries(files)) writeFileSync(join(d, name), contents);
  writeFileSync(join(d, 'exec'), '#!/bin/sh\n');
  chmodSync(join(d, 'exec'), 0o755);
  writeFileSync(join(d, 'owner-exec-only'), 'x');
  chmodSync(join(d, 'owner-exec-only'), 0o744);
  writeFileSync(join(d, 'group-exec-only'), 'x');
  chmodSync(join(d, 'group-exec-only'), 0o654);
  writeFileSync(join(d, 'empty-exec'), '');
  chmodSync(join(d, 'empty-exec'), 0o555);
  symlinkSync('a', join(d, 'link'));
  symlinkSync('/nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree/hello.txt', join(d, 'abs-link'));
  symlinkSync('../../dangling target with space', join(d, 'dangling'));
  mkdirSync(join(d, 'emptydir'));
  mkdirSync(join(d, 'sub', 'deeper', 'deepest'), { recursive: true });
  writeFileSync(join(d, 'sub', 'deeper', 'deepest', 'f'), 'deep');
  writeFileSync(join(d, 'sub', 'a'), 'same name as a sibling of sub');
  // Names and a symlink target that are not UTF-8 (bytes, as Nix allows).
  const db = Buffer.from(d);
  writeFileSync(joinBytes(db, Buffer.from('caf\xe9', 'latin1')), 'latin1');
  writeFileSync(joinBytes(db, Buffer.from([0xff, 0xfe, 0x78])), 'ff fe x');
  symlinkSync(Buffer.from('tgt-\xe9-\xff', 'latin1'), joinBytes(db, Buffer.from('bytes-link')));
}

describe('nar-writer', () => {
  it('writes the hello NAR of §1.7', () => {
    assert.equal(writeNar({ type: 'regular', contents: 'hello\n' }).toString('hex'), HELLO_NAR_HEX);
  });

  it('sorts entries bytewise, whatever the object key order', () => {
    const names = ['😀', '\uFFFD', 'é', 'a.', 'a-', 'a', '_', 'B', '9', '10'];
    const entries: Record<string, NarTree> = {};
    for (const n of names) entries[n] = { type: 'regular', contents: n };
    const root = parseNar(writeNar({ type: 'directory', entries }));
    assert.ok(root.type === 'directory');
    assert.deepEqual([...root.entries.keys()], ['10', '9', 'B', '_', 'a', 'a-', 'a.', 'é', '\uFFFD', '😀'].map(byteString));
  });

  it('token writer emits raw tokens, including malformed ones', () => {
    const w = new NarTokenWriter().str('ab', 0xff).int(1).raw('z').pad(1);
    assert.equal(w.bytes().toString('hex'), `0200000000000000${'6162'}${'ff'.repeat(6)}0100000000000000${'7a'}${'00'.repeat(7)}`);
    assert.equal(w.byteLength, 32);
    assert.equal(new NarTokenWriter().str('').bytes().toString('hex'), '0000000000000000');
    assert.equal(new NarTokenWriter().int(2n ** 64n - 1n).bytes().toString('hex'), 'ff'.repeat(8));
  });

  describe('against nix-store --dump', () => {
    before(function () {
      if (!haveNix()) skipOrFail(this, 'nix');
    });

    it('writes the same bytes and parses to the same tree for a directory full of traps', () => {
      withTempDir((tmp) => {
        makeTrapDir(tmp);
        const dir = join(tmp, 'trap');
        const fromNix = nix('nix-store', ['--dump', dir]);
        const ours = writeNar(readTree(Buffer.from(dir)));
        assert.equal(ours.length, fromNix.length, 'length');
        assert.ok(ours.equals(fromNix), 'bytes differ from nix-store --dump');

        const listing = parseNar(fromNix);
        checkAgainstFs(listing, Buffer.from(dir), fromNix);

        // NarHash as nix-hash computes it.
        const nix32 = encodeNix32(createHash('sha256').update(fromNix).digest());
        assert.equal(nixText('nix-hash', ['--type', 'sha256', '--base32', dir]), nix32);
        assert.equal(nixText('nix-hash', ['--type', 'sha256', dir]), createHash('sha256').update(ours).digest('hex'));

        // Parsing Nix's bytes in odd chunks gives the same listing.
        const p = new NarParser();
        for (let off = 0; off < fromNix.length; off += 4099) p.write(fromNix.subarray(off, off + 4099));
        assert.ok(listingsEqual(p.end(), listing));
      });
    });

    it('writes the same bytes as Nix for single files and symlinks', () => {
      withTempDir((tmp) => {
        const cases: Array<[string, () => void]> = [
          ['plain', () => writeFileSync(join(tmp, 'plain'), 'hello\n')],
          ['exe', () => { writeFileSync(join(tmp, 'exe'), 'x'.repeat(17)); chmodSync(join(tmp, 'exe'), 0o555); }],
          ['nothing', () => writeFileSync(join(tmp, 'nothing'), '')],
          ['sym', () => symlinkSync('some/where else', join(tmp, 'sym'))],
        ];
        for (const [name, make] of cases) {
          make();
          const path = Buffer.from(join(tmp, name));
          const fromNix = nix('nix-store', ['--dump', join(tmp, name)]);
          assert.ok(writeNar(readTree(path)).equals(fromNix), name);
          checkAgainstFs(parseNar(fromNix), path, fromNix);
        }
      });
    });
  });
});
