import assert from 'node:assert/strict';

import { isNarfsError } from '../../../src/errors.js';
import {
  STORE_DIR,
  isStorePathBase,
  isValidHashPart,
  parseStorePath,
  parseStorePathBase,
  storePathBase,
  storePathFull,
} from '../../../src/nix/store-path.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const H = 'd3h4nm3v0qi2h0g02l6whnb6h468n3is';

describe('store-path', () => {
  it('parses basenames and full paths', () => {
    assert.equal(STORE_DIR, '/nix/store');
    const sp = parseStorePathBase(`${H}-tree`);
    assert.deepEqual(sp, { hashPart: H, name: 'tree' });
    assert.equal(storePathBase(sp), `${H}-tree`);
    assert.equal(storePathFull(sp), `/nix/store/${H}-tree`);
    assert.deepEqual(parseStorePath(`/nix/store/${H}-tree`), sp);
    assert.deepEqual(parseStorePathBase(`${H}-foo-1.2.3.drv`).name, 'foo-1.2.3.drv');
  });

  const good = [
    `${H}-a`,
    `${H}-A+-._?=0`,
    `${H}-${'x'.repeat(211)}`,
    `${H}-.x`, // only '.', '..', '.-…', '..-…' are special
    `${H}-..x`,
    `${H}-...`,
    `${H}--`,
    `${H}-x.-`,
  ];
  const bad = [
    `${H}`, // no name
    `${H}-`, // empty name
    `${H}x`, // no dash (HEAD requires it)
    `${H}_tree`,
    `${H}-${'x'.repeat(212)}`, // too long
    `${H}-.`,
    `${H}-..`,
    `${H}-.-foo`,
    `${H}-..-foo`,
    `${H}-a b`,
    `${H}-a/b`,
    `${H}-é`,
    `${H}-a\0`,
    `${H.slice(0, 31)}e-tree`, // 'e' is not nix32
    `${H.slice(0, 31)}-tree`, // 31-char hash
    `${H.toUpperCase()}-tree`,
    '',
  ];

  it('accepts valid basenames', () => {
    for (const s of good) {
      assert.ok(isStorePathBase(s), s);
      assert.equal(storePathBase(parseStorePathBase(s)), s);
    }
  });

  it('rejects invalid basenames with ERR_STORE_PATH, and isStorePathBase agrees', () => {
    for (const s of bad) {
      assert.equal(isStorePathBase(s), false, s);
      assert.throws(() => parseStorePathBase(s), isCode('ERR_STORE_PATH'), s);
    }
  });

  it('requires full paths directly under /nix/store', () => {
    for (const s of [
      `${H}-tree`,
      `/nix/store/${H}-tree/`,
      `/nix/store/${H}-tree/bin`,
      `/nix/store//${H}-tree`,
      `/nix/stor/${H}-tree`,
      `/gnu/store/${H}-tree`,
      `nix/store/${H}-tree`,
      `/nix/store/./${H}-tree`,
    ]) {
      assert.throws(() => parseStorePath(s), isCode('ERR_STORE_PATH'), s);
    }
  });

  it('validates hash parts', () => {
    assert.ok(isValidHashPart(H));
    assert.ok(!isValidHashPart(`${H}0`));
    assert.ok(!isValidHashPart(H.replace('d', 'e')));
    assert.ok(!isValidHashPart(H.replace('d', 'o')));
    assert.ok(!isValidHashPart(H.replace('d', 'u')));
    assert.ok(!isValidHashPart(H.replace('d', 't')));
  });
});
