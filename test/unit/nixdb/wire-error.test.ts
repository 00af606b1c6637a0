/**
 * wire-error: a NarfsError survives the trip through JSON whole, anything else that is
 * thrown gets the fallback code, details become plain bounded JSON without secret-named
 * keys, and a received error of unknown shape or code never becomes an unknown code.
 */
import assert from 'node:assert/strict';
import { ERROR_CATALOG, NarfsError } from '../../../src/errors.js';
import { fromWireError, toWireError } from '../../../src/nixdb/wire-error.js';

describe('wire-error', () => {
  it('round-trips code, message, hint and details through JSON', () => {
    const err = new NarfsError('ERR_CLOSURE_INCOMPLETE', 'missing refs', { hint: 'custom', details: { missing: ['/nix/store/a', '/nix/store/b'], n: 2 } });
    const back = fromWireError(JSON.parse(JSON.stringify(toWireError(err))), 'ERR_CONTROL');
    assert.deepEqual([back.code, back.message, back.hint, back.details], [err.code, err.message, err.hint, err.details]);
  });

  it('gives foreign errors the fallback code', () => {
    const w = toWireError(new TypeError('boom'), 'ERR_DB_IO');
    assert.deepEqual(w, { code: 'ERR_DB_IO', message: 'boom', hint: ERROR_CATALOG.ERR_DB_IO });
  });

  it('makes details plain JSON: no functions, no secrets, bigint and Errors as text', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const err = new NarfsError('ERR_DATALAKE_HTTP', 'x', {
      details: {
        status: 403, big: 10n, fn: () => 1, nan: Number.NaN, token: 'sekrit', Authorization: 'Bearer x',
        cause: new NarfsError('ERR_DATALAKE_TIMEOUT', 'slow'), deep: cyclic, list: Array.from({ length: 5000 }, (_, i) => i),
      },
    });
    const d = toWireError(err).details!;
    assert.equal(d.status, 403);
    assert.equal(d.big, '10');
    assert.equal(d.nan, 'NaN');
    assert.ok(!('fn' in d) && !('token' in d) && !('Authorization' in d));
    assert.deepEqual(d.cause, { code: 'ERR_DATALAKE_TIMEOUT', message: 'slow' });
    assert.equal((d.list as unknown[]).length, 1000);
    assert.doesNotThrow(() => JSON.stringify(d));
  });

  it('never trusts the shape or the code it receives', () => {
    for (const w of [null, 42, 'ERR_DB_IO', [], {}, { code: 7 }, { code: 'toString', message: 'm' }, { code: 'ERR_NOPE', message: 'm', details: [1] }]) {
      const e = fromWireError(w, 'ERR_CONTROL');
      assert.equal(e.code, 'ERR_CONTROL', JSON.stringify(w));
      assert.equal(e.hint.length > 0, true);
      assert.equal(e.details, undefined);
    }
    assert.match(fromWireError({ code: 'ERR_NOPE', message: 'm' }, 'ERR_CONTROL').message, /unknown error code "ERR_NOPE": m/);
  });
});
