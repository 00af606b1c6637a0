import assert from 'node:assert/strict';

import { isNarfsError } from '../../../src/errors.js';
import { formatHash } from '../../../src/nix/hash.js';
import { formatNarInfo, parseCacheInfo, parseNarInfo } from '../../../src/nix/narinfo.js';
import { storePathBase, storePathFull } from '../../../src/nix/store-path.js';
import { REF_NAR_HASH_HEX, REF_NARINFO, TREE_NAR_HASH_HEX, TREE_NARINFO } from './golden.js';

const isCode = (code: string) => (e: unknown) => isNarfsError(e) && e.code === code;
const replaceLine = (text: string, key: string, line: string): string => {
  const re = new RegExp(`^${key}: .*\\n`, 'm');
  assert.match(text, re, `fixture has no ${key} line`);
  return text.replace(re, line);
};

describe('narinfo', () => {
  it('parses the worked example for tree', () => {
    const ni = parseNarInfo(TREE_NARINFO, 'tree.narinfo');
    assert.equal(storePathFull(ni.storePath), '/nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree');
    assert.equal(ni.url, 'nar/0hgl9shs8wv90ggh4p4xqk6yb6rbbbzvhs1yy25j4s3f0vhcx1v9.nar.xz');
    assert.equal(ni.compression, 'xz');
    assert.equal(formatHash(ni.fileHash!, 'nix32'), 'sha256:0hgl9shs8wv90ggh4p4xqk6yb6rbbbzvhs1yy25j4s3f0vhcx1v9');
    assert.equal(ni.fileSize, 268);
    assert.equal(ni.narHash.digest.toString('hex'), TREE_NAR_HASH_HEX);
    assert.equal(ni.narSize, 1088);
    assert.deepEqual(ni.references, []);
    assert.equal(ni.deriver, undefined);
    assert.equal(ni.sigs.length, 1);
    assert.match(ni.sigs[0]!, /^test-cache-1:mH4q/);
    assert.equal(ni.ca, 'fixed:r:sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb');
  });

  it('parses the worked example for ref.txt (references, text CA)', () => {
    const ni = parseNarInfo(REF_NARINFO);
    assert.deepEqual(ni.references.map(storePathBase), ['d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree']);
    assert.equal(ni.narHash.digest.toString('hex'), REF_NAR_HASH_HEX);
    assert.equal(ni.narSize, 176);
  });

  it('formats byte-identically to what Nix wrote', () => {
    assert.equal(formatNarInfo(parseNarInfo(TREE_NARINFO)), TREE_NARINFO);
    assert.equal(formatNarInfo(parseNarInfo(REF_NARINFO)), REF_NARINFO);
  });

  it('writes the optional fields in Nix order and reads them back', () => {
    const ni = parseNarInfo(REF_NARINFO);
    ni.deriver = { hashPart: 'h03k8arrvrzapcax6dwdh33dxc160650', name: 'ref.txt.drv' };
    ni.system = 'x86_64-linux';
    ni.sigs = ['b:x', 'a:y'];
    const text = formatNarInfo(ni);
    assert.deepEqual(
      text.split('\n').map((l) => l.split(':')[0]),
      ['StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize', 'References', 'Deriver', 'System', 'Sig', 'Sig', 'CA', ''],
    );
    const back = parseNarInfo(text);
    assert.deepEqual(back.sigs, ['a:y', 'b:x']);
    assert.equal(back.system, 'x86_64-linux');
    assert.equal(back.deriver?.name, 'ref.txt.drv');
  });

  it('accepts the quirks Nix accepts', () => {
    // Unknown keys ignored; Compression missing ⇒ bzip2; unknown-deriver ⇒ none.
    let t = replaceLine(TREE_NARINFO, 'Compression', 'Foo: bar\n');
    t += 'Deriver: unknown-deriver\n';
    let ni = parseNarInfo(t);
    assert.equal(ni.compression, 'bzip2');
    assert.equal(ni.deriver, undefined);
    // Compression empty ⇒ bzip2.
    ni = parseNarInfo(replaceLine(TREE_NARINFO, 'Compression', 'Compression: \n'));
    assert.equal(ni.compression, 'bzip2');
    // NarHash in base16, base64 and SRI.
    for (const enc of ['base16', 'base64', 'sri'] as const) {
      const h = formatHash(parseNarInfo(TREE_NARINFO).narHash, enc);
      ni = parseNarInfo(replaceLine(TREE_NARINFO, 'NarHash', `NarHash: ${h}\n`));
      assert.equal(ni.narHash.digest.toString('hex'), TREE_NAR_HASH_HEX, enc);
    }
    // The character after ':' is skipped unseen, whatever it is.
    ni = parseNarInfo(replaceLine(TREE_NARINFO, 'URL', 'URL:\tnar/x.nar\n'));
    assert.equal(ni.url, 'nar/x.nar');
    // Several Sig lines, duplicates collapse; references are a sorted set.
    t = `${REF_NARINFO}Sig: a:b\nSig: a:b\n`;
    assert.deepEqual(parseNarInfo(t).sigs.length, 2);
    t = replaceLine(
      REF_NARINFO,
      'References',
      'References: h03k8arrvrzapcax6dwdh33dxc160650-ref.txt  d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree\n',
    );
    assert.deepEqual(parseNarInfo(t).references.map((r) => r.name), ['tree', 'ref.txt']);
  });

  it('eats the next line when a value is written without its space (like Nix)', () => {
    // "Compression:\n" skips the newline as if it were the space, and the value runs to the
    // end of the next line: the FileHash line becomes the compression method.
    const ni = parseNarInfo(replaceLine(TREE_NARINFO, 'Compression', 'Compression:\n'));
    assert.equal(ni.compression, 'FileHash: sha256:0hgl9shs8wv90ggh4p4xqk6yb6rbbbzvhs1yy25j4s3f0vhcx1v9');
    assert.equal(ni.fileHash, undefined);
    // The same on References makes the next line a (bad) reference list.
    assert.throws(() => parseNarInfo(replaceLine(REF_NARINFO, 'References', 'References:\n')), isCode('ERR_NARINFO_PARSE'));
  });

  describe('rejections', () => {
    it('missing trailing newline ⇒ ERR_NARINFO_PARSE', () => {
      assert.throws(() => parseNarInfo(TREE_NARINFO.slice(0, -1)), isCode('ERR_NARINFO_PARSE'));
    });
    it('line without colon ⇒ ERR_NARINFO_PARSE', () => {
      assert.throws(() => parseNarInfo(`${TREE_NARINFO}garbage\n`), isCode('ERR_NARINFO_PARSE'));
    });
    it('missing StorePath / NarHash / URL ⇒ ERR_NARINFO_CORRUPT', () => {
      for (const key of ['StorePath', 'NarHash', 'URL']) {
        assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, key, '')), isCode('ERR_NARINFO_CORRUPT'), key);
      }
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'URL', 'URL: \n')), isCode('ERR_NARINFO_CORRUPT'));
    });
    it('NarSize missing or 0 ⇒ ERR_NARINFO_CORRUPT', () => {
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'NarSize', '')), isCode('ERR_NARINFO_CORRUPT'));
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'NarSize', 'NarSize: 0\n')), isCode('ERR_NARINFO_CORRUPT'));
    });
    it('bad sizes ⇒ ERR_NARINFO_PARSE', () => {
      for (const v of ['-1', '1e3', '0x10', ' 5', '', '99999999999999999999']) {
        assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'NarSize', `NarSize: ${v}\n`)), isCode('ERR_NARINFO_PARSE'), v);
      }
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'FileSize', 'FileSize: x\n')), isCode('ERR_NARINFO_PARSE'));
    });
    it('bad hashes ⇒ ERR_NARINFO_PARSE; NarHash must be sha256', () => {
      const nix32 = '173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb';
      for (const v of [nix32, `sha256:${nix32.slice(1)}`, `md5:${nix32}`, 'sha1:0000000000000000000000000000000000000000']) {
        assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'NarHash', `NarHash: ${v}\n`)), isCode('ERR_NARINFO_PARSE'), v);
      }
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'FileHash', 'FileHash: sha256:zz\n')), isCode('ERR_NARINFO_PARSE'));
    });
    it('duplicate References or CA ⇒ ERR_NARINFO_PARSE', () => {
      assert.throws(() => parseNarInfo(`${TREE_NARINFO}References: \n`), isCode('ERR_NARINFO_PARSE'));
      assert.throws(() => parseNarInfo(`${REF_NARINFO}References: d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree\n`), isCode('ERR_NARINFO_PARSE'));
      assert.throws(() => parseNarInfo(`${TREE_NARINFO}CA: fixed:r:sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb\n`), isCode('ERR_NARINFO_PARSE'));
    });
    it('bad store paths ⇒ ERR_NARINFO_PARSE', () => {
      for (const line of [
        'StorePath: /nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is\n',
        'StorePath: d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree\n',
        'StorePath: /tmp/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree\n',
        'StorePath: /nix/store/e3h4nm3v0qi2h0g02l6whnb6h468n3is-tree\n',
        'StorePath: /nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tr ee\n',
      ]) {
        assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'StorePath', line)), isCode('ERR_NARINFO_PARSE'), line);
      }
      assert.throws(() => parseNarInfo(`${TREE_NARINFO}Deriver: /nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-x.drv\n`), isCode('ERR_NARINFO_PARSE'));
      assert.throws(() => parseNarInfo(replaceLine(REF_NARINFO, 'References', 'References: bogus\n')), isCode('ERR_NARINFO_PARSE'));
    });
    it('bad CA ⇒ ERR_NARINFO_PARSE', () => {
      assert.throws(() => parseNarInfo(replaceLine(TREE_NARINFO, 'CA', 'CA: fixed:r:sha256:nope\n')), isCode('ERR_NARINFO_PARSE'));
    });
    it('CRLF line ends are not tolerated', () => {
      assert.throws(() => parseNarInfo(TREE_NARINFO.replace(/\n/g, '\r\n')), isCode('ERR_NARINFO_PARSE'));
    });
  });

  describe('nix-cache-info', () => {
    it('parses the usual file', () => {
      assert.deepEqual(parseCacheInfo('StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n'), {
        storeDir: '/nix/store',
        wantMassQuery: true,
        priority: 40,
      });
    });
    it('has Nix defaults and leaves a missing StoreDir to the caller', () => {
      assert.deepEqual(parseCacheInfo(''), { storeDir: undefined, wantMassQuery: false, priority: 50 });
      assert.deepEqual(parseCacheInfo('StoreDir: /gnu/store'), { storeDir: '/gnu/store', wantMassQuery: false, priority: 50 });
    });
    it('trims values, ignores junk lines and unknown keys, reads Priority like stoi', () => {
      const ci = parseCacheInfo('junk\nStoreDir:/nix/store  \r\nWantMassQuery: true\nFoo: 1\nPriority:  -3abc\n');
      assert.deepEqual(ci, { storeDir: '/nix/store', wantMassQuery: false, priority: -3 });
    });
    it('rejects a Priority that is not a number', () => {
      assert.throws(() => parseCacheInfo('Priority: high\n'), isCode('ERR_CACHE_INFO'));
      assert.throws(() => parseCacheInfo('Priority: 99999999999\n'), isCode('ERR_CACHE_INFO'));
    });
  });
});
