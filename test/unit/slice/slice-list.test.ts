import assert from 'node:assert/strict';
import { NarfsError } from '../../../src/errors.js';
import { parseSliceList } from '../../../src/slice/slice-list.js';
import { storePathBase } from '../../../src/nix/store-path.js';

const A = '6qhi9a2q8vza2s19hkqvlcl1p83bp5a2-narfs-fixture-single-exec';
const B = 'ia6s2b8kjgrgvdw15jh466qfbh779v1r-narfs-fixture-single-symlink';

function rejects(text: string, line: RegExp): void {
  assert.throws(() => parseSliceList(text, 'roots.txt'), (e: unknown) => {
    assert.ok(e instanceof NarfsError);
    assert.equal(e.code, 'ERR_SLICE_PARSE');
    assert.match(e.message, line);
    return true;
  });
}

describe('parseSliceList', function () {
  it('reads full store paths and basenames, with comments, blank lines, CRLF; duplicates count once', function () {
    const text = `# acme's slice\r\n/nix/store/${A}   # the tool\r\n\r\n  ${B}\n/nix/store/${B}\n#/nix/store/ignored\n`;
    assert.deepEqual(parseSliceList(text, 'roots.txt').map(storePathBase), [A, B]);
  });

  it('an empty list (only comments) is an empty slice', function () {
    assert.deepEqual(parseSliceList('# nothing yet\n\n', 'roots.txt'), []);
  });

  it('refuses the whole list on one bad line, naming the line', function () {
    rejects(`${A}\n/nix/store/${B}/bin/sh\n`, /line 2: not a store path of \/nix\/store/);
    rejects(`/gnu/store/${A}\n`, /line 1/);
    rejects(`${A}\nhello\n`, /line 2: not a store path/);
    rejects(`eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x\n`, /line 1/);
    rejects(`<html>\n`, /line 1/);
  });
});
