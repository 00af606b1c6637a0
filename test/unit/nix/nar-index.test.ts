import assert from 'node:assert/strict';
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';

import { isNarfsError } from '../../../src/errors.js';
import type { Hash } from '../../../src/nix/hash.js';
import { IndexBuilder } from '../../../src/nix/nar-index-builder.js';
import {
  chunkCount,
  chunkHash,
  chunkMatches,
  encodeNarIndex,
  findFile,
  narIndexFingerprint,
  parseNarIndex,
  signNarIndex,
  verifyNarIndex,
  type NarIndex,
} from '../../../src/nix/nar-index.js';
import { byteString, type NarNode, type NarRegular } from '../../../src/nix/nar-listing.js';
import { NarParser, parseNar } from '../../../src/nix/nar-parser.js';
import { writeNar, type NarTree } from '../../../src/nix/nar-writer.js';
import type { NarInfo } from '../../../src/nix/narinfo.js';
import { narInfoFingerprint, signFingerprint, verifyNarInfo, type PublicKey, type SecretKey } from '../../../src/nix/signature.js';
import { parseStorePath } from '../../../src/nix/store-path.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;

const CHUNK = 64 * 1024;
/** Known bytes: byte i of a pattern file is (i * 7 + seed) mod 251. */
function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) % 251;
  return b;
}

const BIG = pattern(3 * CHUNK + 1234, 3); // 4 chunks, the last one short
const EXACT = pattern(2 * CHUNK, 5); // 2 full chunks
const TREE: NarTree = {
  type: 'directory',
  entries: {
    'big.bin': { type: 'regular', contents: BIG, executable: true },
    empty: { type: 'regular', contents: '' },
    'exact.bin': { type: 'regular', contents: EXACT },
    'hello.txt': { type: 'regular', contents: 'hello\n' },
    link: { type: 'symlink', target: 'hello.txt' },
    sub: { type: 'directory', entries: { 'run.sh': { type: 'regular', contents: '#!/bin/sh\necho hi\n', executable: true } } },
  },
  byteEntries: [[Buffer.from([0xff, 0x01]), { type: 'regular', contents: 'not utf-8 name\n' }]],
};
const NAR = writeNar(TREE);
const NAR_HASH: Hash = { algo: 'sha256', digest: createHash('sha256').update(NAR).digest() };
const STORE_PATH = '/nix/store/7vfbdwrdsq0fvwxxz1crg8ikwbzyw6vr-golden';

function keyFromSeed(name: string, fill: number): { sk: SecretKey; pk: PublicKey } {
  const seed = Buffer.alloc(32, fill);
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const spki = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
  const publicKey = Buffer.from(spki.subarray(12));
  return { sk: { name, seed, publicKey }, pk: { name, key: publicKey } };
}
const KEY = keyFromSeed('narfs-test-1', 1);
const OTHER = keyFromSeed('narfs-test-1', 2); // same name, other key

function build(nar: Buffer, chunkSize = CHUNK, writes: number[] = [nar.length], chunkHashes = true): NarIndex {
  const b = new IndexBuilder(chunkSize, { chunkHashes });
  const p = new NarParser(b);
  let off = 0;
  for (let i = 0; off < nar.length; i++) {
    const n = writes[i % writes.length]!;
    p.write(nar.subarray(off, off + n));
    off += n;
  }
  const root = p.end();
  return b.finish(root, { algo: 'sha256', digest: createHash('sha256').update(nar).digest() }, nar.length, STORE_PATH);
}

function signed(idx: NarIndex, sk = KEY.sk): NarIndex {
  return { ...idx, signatures: [...idx.signatures, signNarIndex(idx, sk)].sort() };
}

function narInfoFor(over: Partial<NarInfo> = {}): NarInfo {
  return {
    storePath: parseStorePath(STORE_PATH),
    url: 'nar/x.nar',
    compression: 'none',
    narHash: NAR_HASH,
    narSize: NAR.length,
    references: [],
    sigs: [],
    ...over,
  };
}

/** Every regular file of a tree with its path, in NAR order. */
function regulars(node: NarNode, path = ''): Array<[string, NarRegular]> {
  if (node.type === 'regular') return [[path, node]];
  if (node.type === 'symlink') return [];
  return [...node.entries].flatMap(([n, c]) => regulars(c, `${path}/${n}`));
}

/** Pinned: a change of the format or of the NAR layout must be deliberate. */
const GOLDEN_SHA256 = 'd97badb8e5ce56188c25c5477c0812051107917aa00f63503022c6aeaa702cba';
const GOLDEN_LENGTH = 635;
const GOLDEN_FINGERPRINT =
  'narfs-index-1;/nix/store/7vfbdwrdsq0fvwxxz1crg8ikwbzyw6vr-golden;sha256:1dfnzrllgl25iz6j3p962mjh5fdqszj1yjh8rzlnr8hs44a4qyca;330616;sha256:15y6jzh0wpc6lmwwf4syrcp9zvw2i2sc2zi5vy2rrqp9gs0pzs6g';
/** magic, store path (length 0x32), NarHash, NarSize 330616 (f8 96 14), chunk 2^16, flags 0, root directory of 7 entries, 'big.bin' ... */
const GOLDEN_HEAD =
  '4e41524653495801' +
  '32' + Buffer.from(STORE_PATH).toString('hex') +
  '8a794c14211aa26ce9cf084a1fe4d7b8b902651526dd21cd8f45d04769fed6b5' +
  'f89614' + '10' + '00' + '03' + '07' + '07' + Buffer.from('big.bin').toString('hex');

describe('nar-index', () => {
  const idx = signed(build(NAR));
  const bytes = encodeNarIndex(idx);

  it('indexes every non-empty regular file with its offset, SHA-256 and chunk hashes', () => {
    const listed = regulars(parseNar(NAR)).filter(([, f]) => f.size > 0);
    assert.equal(idx.files.length, listed.length);
    assert.equal(idx.files.length, 5);
    for (const [i, [path, f]] of listed.entries()) {
      const file = idx.files[i]!;
      assert.equal(file.narOffset, f.narOffset, path);
      assert.equal(file.size, f.size, path);
      const contents = NAR.subarray(f.narOffset, f.narOffset + f.size);
      assert.deepEqual(file.sha256, createHash('sha256').update(contents).digest(), path);
      const n = chunkCount(f.size, CHUNK);
      assert.equal(file.chunkHashes.length, 32 * n, path);
      for (let k = 0; k < n; k++) {
        const want = createHash('sha256').update(contents.subarray(k * CHUNK, (k + 1) * CHUNK)).digest();
        assert.deepEqual(chunkHash(file, k), want, `${path} chunk ${k}`);
      }
    }
    assert.equal(chunkCount(BIG.length, CHUNK), 4);
    assert.equal(chunkCount(EXACT.length, CHUNK), 2);
    assert.equal(chunkCount(0, CHUNK), 0);
  });

  it('pins the golden bytes and fingerprint', () => {
    assert.equal(bytes.subarray(0, GOLDEN_HEAD.length / 2).toString('hex'), GOLDEN_HEAD);
    assert.equal(NAR_HASH.digest.toString('hex'), '8a794c14211aa26ce9cf084a1fe4d7b8b902651526dd21cd8f45d04769fed6b5');
    assert.equal(bytes.length, GOLDEN_LENGTH);
    assert.equal(createHash('sha256').update(bytes).digest('hex'), GOLDEN_SHA256);
    assert.equal(narIndexFingerprint(idx), GOLDEN_FINGERPRINT);
    assert.ok(narIndexFingerprint(idx).startsWith(`narfs-index-1;${STORE_PATH};sha256:`));
  });

  it('fingerprints a parsed index from its bytes as it would from its fields, and not after a field changed', () => {
    const parsed = parseNarIndex(bytes);
    // A structural copy has no kept bytes: its fingerprint comes from encoding the fields.
    const copy: NarIndex = structuredClone(parsed);
    assert.equal(narIndexFingerprint(parsed), narIndexFingerprint(copy));
    assert.equal(narIndexFingerprint(parsed), GOLDEN_FINGERPRINT);
    // A caller that replaces a field gets the fingerprint of what the index now says.
    const changed = parseNarIndex(bytes);
    changed.narSize += 1;
    assert.notEqual(narIndexFingerprint(changed), GOLDEN_FINGERPRINT);
    assert.equal(narIndexFingerprint(changed), narIndexFingerprint({ ...structuredClone(parsed), narSize: parsed.narSize + 1 }));
    const dropped = parseNarIndex(bytes);
    dropped.files.pop();
    assert.throws(() => narIndexFingerprint(dropped), 'the body is encoded again (and no longer matches its tree)');
  });

  it('round-trips: parse(encode(x)) equals x and encodes to the same bytes', () => {
    const back = parseNarIndex(bytes);
    assert.deepEqual(back, idx);
    assert.deepEqual(encodeNarIndex(back), bytes);
    // An index with a frame table, a root file, and no signatures.
    const withFrames: NarIndex = {
      ...idx,
      frames: {
        fileHash: { algo: 'sha256', digest: Buffer.alloc(32, 9) },
        fileSize: 5000,
        narOffsets: [0, 100, NAR.length - 1],
        fileOffsets: [0, 40, 4000],
      },
    };
    assert.deepEqual(parseNarIndex(encodeNarIndex(withFrames)), withFrames);
    const single = writeNar({ type: 'regular', contents: BIG });
    const rootFile = build(single);
    assert.equal(rootFile.files.length, 1);
    assert.equal(rootFile.files[0]!.narOffset, 96);
    assert.deepEqual(parseNarIndex(encodeNarIndex(rootFile)), rootFile);
  });

  it('does not depend on how the NAR is cut into writes, and works at every chunk size', () => {
    for (const writes of [[1], [7, 65536, 3], [4096]]) {
      assert.deepEqual(encodeNarIndex(build(NAR, CHUNK, writes)), encodeNarIndex(build(NAR)));
    }
    for (const cs of [64 * 1024, 128 * 1024, 4 * 1024 * 1024]) {
      const i2 = build(NAR, cs);
      assert.deepEqual(parseNarIndex(encodeNarIndex(i2)), i2);
      assert.equal(i2.files[0]!.chunkHashes.length, 32 * chunkCount(BIG.length, cs));
    }
    assert.throws(() => new IndexBuilder(100_000), isCode('ERR_INVALID_ARGUMENT'));
    assert.throws(() => new IndexBuilder(32 * 1024), isCode('ERR_INVALID_ARGUMENT'));
    assert.throws(() => new IndexBuilder(8 * 1024 * 1024), isCode('ERR_INVALID_ARGUMENT'));
  });

  it('finds the file holding a NAR offset', () => {
    for (const f of idx.files) {
      assert.equal(findFile(idx, f.narOffset), f);
      assert.equal(findFile(idx, f.narOffset + f.size - 1), f);
      assert.notEqual(findFile(idx, f.narOffset + f.size), f);
    }
    assert.equal(findFile(idx, 0), undefined);
    assert.equal(findFile(idx, NAR.length), undefined);
  });

  it('verifies with the right key and binding, and without sigs when not required', () => {
    verifyNarIndex(parseNarIndex(bytes), narInfoFor(), [KEY.pk], true);
    verifyNarIndex(build(NAR), narInfoFor(), [], false);
  });

  it('rejects a wrong key or no signature (ERR_INDEX_SIGNATURE)', () => {
    assert.throws(() => verifyNarIndex(idx, narInfoFor(), [OTHER.pk], true), isCode('ERR_INDEX_SIGNATURE'));
    assert.throws(() => verifyNarIndex(idx, narInfoFor(), [], true), isCode('ERR_INDEX_SIGNATURE'));
    assert.throws(() => verifyNarIndex(build(NAR), narInfoFor(), [KEY.pk], true), isCode('ERR_INDEX_SIGNATURE'));
    verifyNarIndex(signed(build(NAR), OTHER.sk), narInfoFor(), [KEY.pk, OTHER.pk], true);
  });

  it('rejects an index bound to another NarHash, NarSize or store path (ERR_INDEX_BINDING)', () => {
    const otherHash: Hash = { algo: 'sha256', digest: Buffer.from(NAR_HASH.digest).fill(0, 0, 1) };
    assert.throws(() => verifyNarIndex(idx, narInfoFor({ narHash: otherHash }), [KEY.pk], true), isCode('ERR_INDEX_BINDING'));
    assert.throws(() => verifyNarIndex(idx, narInfoFor({ narSize: NAR.length + 8 }), [KEY.pk], true), isCode('ERR_INDEX_BINDING'));
    const otherPath = parseStorePath('/nix/store/7vfbdwrdsq0fvwxxz1crg8ikwbzyw6vr-golden2');
    assert.throws(() => verifyNarIndex(idx, narInfoFor({ storePath: otherPath }), [KEY.pk], true), isCode('ERR_INDEX_BINDING'));
    // Binding is checked even when signatures are not required.
    assert.throws(() => verifyNarIndex(idx, narInfoFor({ narHash: otherHash }), [], false), isCode('ERR_INDEX_BINDING'));
    // Re-binding a signed index to another NarHash breaks its signature.
    const rebound = { ...idx, narHash: otherHash };
    assert.throws(() => verifyNarIndex(rebound, narInfoFor({ narHash: otherHash }), [KEY.pk], true), isCode('ERR_INDEX_SIGNATURE'));
  });

  it('covers every byte of the body by the signature: any change is detected', () => {
    // Flip each byte of the body that parses again; the signature must fail every time.
    const bodyEnd = bytes.length - (1 + 1 + Buffer.byteLength(idx.signatures[0]!));
    let parsedVariants = 0;
    for (let i = 0; i < bodyEnd; i++) {
      const b = Buffer.from(bytes);
      b[i] = b[i]! ^ 0x01;
      let changed: NarIndex;
      try {
        changed = parseNarIndex(b);
      } catch (e) {
        assert.ok(isCode('ERR_INDEX_PARSE')(e), `byte ${i}: ${String(e)}`);
        continue;
      }
      parsedVariants++;
      const ni = narInfoFor({ narHash: changed.narHash, narSize: changed.narSize, storePath: parseStorePath(changed.storePath) });
      assert.throws(() => verifyNarIndex(changed, ni, [KEY.pk], true), isCode('ERR_INDEX_SIGNATURE'), `byte ${i}`);
    }
    assert.ok(parsedVariants > 100, `only ${parsedVariants} variants parsed`);
  });

  it('never takes an index signature for a narinfo signature, nor the reverse', () => {
    const ni = narInfoFor();
    const niSig = signFingerprint(narInfoFingerprint(ni), KEY.sk);
    assert.equal(verifyNarInfo({ ...ni, sigs: [niSig] }, [KEY.pk]).trusted, true);
    // index signature in the narinfo
    assert.equal(verifyNarInfo({ ...ni, sigs: [...idx.signatures] }, [KEY.pk]).trusted, false);
    // narinfo signature in the index
    const withNiSig = { ...build(NAR), signatures: [niSig] };
    assert.throws(() => verifyNarIndex(parseNarIndex(encodeNarIndex(withNiSig)), ni, [KEY.pk], true), isCode('ERR_INDEX_SIGNATURE'));
    assert.ok(!narIndexFingerprint(idx).startsWith('1;'));
  });

  it('rejects every truncation', () => {
    for (let n = 0; n < bytes.length; n++) {
      assert.throws(() => parseNarIndex(bytes.subarray(0, n)), isCode('ERR_INDEX_PARSE'), `length ${n}`);
    }
  });

  it('rejects trailing bytes, bad magic, unknown flags and node types', () => {
    assert.throws(() => parseNarIndex(Buffer.concat([bytes, Buffer.from([0])])), isCode('ERR_INDEX_PARSE'));
    const magic = Buffer.from(bytes);
    magic[7] = 2;
    assert.throws(() => parseNarIndex(magic), isCode('ERR_INDEX_PARSE'));
    const flagsAt = 8 + 1 + STORE_PATH.length + 32 + varintLength(NAR.length) + 1;
    const flags = Buffer.from(bytes);
    assert.equal(flags[flagsAt], 0);
    flags[flagsAt] = 4;
    assert.throws(() => parseNarIndex(flags), isCode('ERR_INDEX_PARSE'));
    const type = Buffer.from(bytes);
    assert.equal(type[flagsAt + 1], 3); // the root directory
    type[flagsAt + 1] = 4;
    assert.throws(() => parseNarIndex(type), isCode('ERR_INDEX_PARSE'));
  });

  it('a whole-only tree (from a whole NAR): file hashes only, round-trips, is never a published index, matches no chunk', () => {
    const flagsAt = 8 + 1 + STORE_PATH.length + 32 + varintLength(NAR.length) + 1;
    for (const writes of [[NAR.length], [1], [7, 65536, 3]]) {
      const w = build(NAR, CHUNK, writes, false);
      assert.equal(w.wholeOnly, true);
      assert.deepEqual(w.files.map((f) => [f.narOffset, f.size, f.sha256]), idx.files.map((f) => [f.narOffset, f.size, f.sha256]));
      for (const f of w.files) assert.deepEqual(f.chunkHashes, chunkCount(f.size, CHUNK) > 1 ? Buffer.alloc(0) : f.sha256);
      const enc = encodeNarIndex(w);
      assert.equal(enc[flagsAt], 2);
      // The chunk hashes of the multi-chunk files (BIG: 4, EXACT: 2) are not there.
      assert.equal(encodeNarIndex(build(NAR)).length - enc.length, 32 * (4 + 2));
      const back = parseNarIndex(enc);
      assert.deepEqual(back, w);
      assert.deepEqual(encodeNarIndex(back), enc);
      const big = back.files.find((f) => f.size === BIG.length)!;
      assert.equal(chunkMatches(back, big, 0, BIG.subarray(0, CHUNK)), false, 'no chunk matches without chunk hashes');
      assert.throws(() => verifyNarIndex(back, narInfoFor(), [], false), isCode('ERR_INDEX_UNUSABLE'));
      assert.throws(() => verifyNarIndex(signed(back), narInfoFor(), [KEY.pk], true), isCode('ERR_INDEX_UNUSABLE'));
    }
    // Chunk hashes in a whole-only index, or none in a full one, do not encode.
    assert.throws(() => encodeNarIndex({ ...idx, wholeOnly: true }), isCode('ERR_INVALID_ARGUMENT'));
    assert.throws(() => encodeNarIndex({ ...build(NAR, CHUNK, [NAR.length], false), wholeOnly: false }), isCode('ERR_INVALID_ARGUMENT'));
  });

  it('rejects unsorted or duplicate entries', () => {
    // 'hello.txt' renamed 'aello.txt' now comes after 'exact.bin' but sorts before it.
    const at = bytes.indexOf(Buffer.from('hello.txt'));
    const unsorted = Buffer.from(bytes);
    unsorted.write('aello.txt', at, 'latin1');
    assert.throws(() => parseNarIndex(unsorted), isCode('ERR_INDEX_PARSE'));
    // A duplicate: 'a' 'b' becomes 'a' 'a'.
    const dupIdx = build(writeNar({ type: 'directory', entries: { a: { type: 'symlink', target: 'x' }, b: { type: 'symlink', target: 'y' } } }));
    const dupBytes = encodeNarIndex(dupIdx);
    const bAt = dupBytes.lastIndexOf(Buffer.from([1, 0x62])); // length 1, 'b'
    dupBytes[bAt + 1] = 0x61;
    assert.throws(() => parseNarIndex(dupBytes), isCode('ERR_INDEX_PARSE'));
    // Names that are not NAR names.
    for (const bad of ['.', '..', 'a/b', '', 'a\u0000b', 'b/']) {
      const b = encodeNarIndex(dupIdx);
      const i = b.lastIndexOf(Buffer.from([1, 0x62]));
      const patched = Buffer.concat([b.subarray(0, i), Buffer.from([bad.length]), Buffer.from(bad), b.subarray(i + 2)]);
      assert.throws(() => parseNarIndex(patched), isCode('ERR_INDEX_PARSE'), bad);
    }
  });

  it('refuses to encode files that are not the files of the tree', () => {
    const shuffled = { ...idx, files: [idx.files[1]!, idx.files[0]!, ...idx.files.slice(2)] };
    // Order in memory does not matter for the bytes (files are keyed by offset) ...
    assert.deepEqual(encodeNarIndex(shuffled), bytes);
    // ... but a missing file, or a file of another size, does.
    assert.throws(() => encodeNarIndex({ ...idx, files: idx.files.slice(1) }), isCode('ERR_INVALID_ARGUMENT'));
    const resized = { ...idx, files: idx.files.map((f, i) => (i === 0 ? { ...f, size: f.size - 1 } : f)) };
    assert.throws(() => encodeNarIndex(resized), isCode('ERR_INVALID_ARGUMENT'));
  });

  it('rejects a NarSize that the tree does not lay out, and frames beyond NarSize or FileSize', () => {
    for (const narSize of [NAR.length - 8, NAR.length + 8, 0, 2 ** 53 - 1]) {
      assert.throws(() => parseNarIndex(encodeNarIndex({ ...idx, narSize })), isCode('ERR_INDEX_PARSE'), String(narSize));
    }
    const frames = (narOffsets: number[], fileOffsets: number[], fileSize = 5000): NarIndex => ({
      ...idx,
      frames: { fileHash: { algo: 'sha256', digest: Buffer.alloc(32, 9) }, fileSize, narOffsets, fileOffsets },
    });
    assert.throws(() => parseNarIndex(encodeNarIndex(frames([0, NAR.length], [0, 10]))), isCode('ERR_INDEX_PARSE'));
    assert.throws(() => parseNarIndex(encodeNarIndex(frames([0, 10], [0, 5000]))), isCode('ERR_INDEX_PARSE'));
    assert.throws(() => parseNarIndex(encodeNarIndex(frames([0, 10, 10], [0, 5, 6]))), isCode('ERR_INDEX_PARSE'));
    assert.throws(() => encodeNarIndex(frames([], [])), isCode('ERR_INVALID_ARGUMENT'));
    // A file whose size would make the NAR larger than 2^53 is refused, not allocated.
    const huge = Buffer.from(encodeNarIndex(build(writeNar({ type: 'regular', contents: 'x' }))));
    // root: flags at 8+1+len+32+1+1, then type 0 and size 1 → give it size 2^50 (chunk hashes missing).
    const at = 8 + 1 + STORE_PATH.length + 32 + 1 + 1 + 1 + 1;
    assert.equal(huge[at], 1);
    const patched = Buffer.concat([huge.subarray(0, at), Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]), huge.subarray(at + 1)]);
    assert.throws(() => parseNarIndex(patched), isCode('ERR_INDEX_PARSE'));
  });

  it('rejects non-minimal varints and malformed signatures', () => {
    // NarSize spelled with a redundant trailing 0x00 group.
    const nsAt = 8 + 1 + STORE_PATH.length + 32;
    const len = varintLength(NAR.length);
    const spelled = Buffer.from(bytes.subarray(nsAt, nsAt + len));
    spelled[len - 1] = spelled[len - 1]! | 0x80;
    const nonMinimal = Buffer.concat([bytes.subarray(0, nsAt), spelled, Buffer.from([0]), bytes.subarray(nsAt + len)]);
    assert.throws(() => parseNarIndex(nonMinimal), isCode('ERR_INDEX_PARSE'));
    for (const sig of ['nocolon', ':x', 'a b:c', 'k:\u00e9']) {
      const body = encodeNarIndex({ ...idx, signatures: [] });
      const s = Buffer.from(sig, 'latin1');
      const withSig = Buffer.concat([body.subarray(0, body.length - 1), Buffer.from([1, s.length]), s]);
      assert.throws(() => parseNarIndex(withSig), isCode('ERR_INDEX_PARSE'), sig);
    }
    // Unsorted signatures.
    const two = encodeNarIndex({ ...idx, signatures: ['b:x', 'a:y'] });
    assert.deepEqual(parseNarIndex(two).signatures, ['a:y', 'b:x']);
    const body = encodeNarIndex({ ...idx, signatures: [] });
    const swapped = Buffer.concat([body.subarray(0, body.length - 1), Buffer.from([2, 3]), Buffer.from('b:x'), Buffer.from([3]), Buffer.from('a:y')]);
    assert.throws(() => parseNarIndex(swapped), isCode('ERR_INDEX_PARSE'));
  });

  it('detects a wrong chunk with the consumer helper', () => {
    const big = idx.files.find((f) => f.size === BIG.length)!;
    for (let k = 0; k < 4; k++) {
      const good = BIG.subarray(k * CHUNK, (k + 1) * CHUNK);
      assert.equal(chunkMatches(idx, big, k, good), true, `chunk ${k}`);
      const bad = Buffer.from(good);
      bad[bad.length >> 1] = bad[bad.length >> 1]! ^ 0x80;
      assert.equal(chunkMatches(idx, big, k, bad), false, `flipped chunk ${k}`);
      assert.equal(chunkMatches(idx, big, k, good.subarray(1)), false, `short chunk ${k}`);
    }
    assert.equal(chunkMatches(idx, big, 1, BIG.subarray(0, CHUNK)), false, 'chunk 0 offered as chunk 1');
    assert.equal(chunkMatches(idx, big, 4, Buffer.alloc(0)), false, 'chunk beyond the end');
    const hello = idx.files.find((f) => f.size === 6)!;
    assert.equal(chunkMatches(idx, hello, 0, Buffer.from('hello\n')), true);
    assert.equal(chunkMatches(idx, hello, 0, Buffer.from('hellO\n')), false);
  });

  it('keeps names as bytes', () => {
    assert.equal(idx.root.type, 'directory');
    if (idx.root.type !== 'directory') return;
    assert.ok(idx.root.entries.has('\u00ff\u0001'));
    assert.ok(idx.root.entries.has(byteString('hello.txt')));
  });
});

function varintLength(n: number): number {
  let l = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    l++;
  }
  return l;
}
