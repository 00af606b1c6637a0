/**
 * parseNetrc / findNetrcEntry against curl's netrc rules (lib/netrc.c): entries across
 * lines, quoted tokens, default, macdef bodies, comments; errors never echo a token.
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { findNetrcEntry, parseNetrc } from '../../../src/datalake/netrc.js';
import { isNarfsError } from '../../../src/errors.js';

describe('netrc', () => {
  it('reads machine entries, on one line or across lines, and matches host names case-insensitively', () => {
    const e = parseNetrc('machine cache.example.org login alice password s3cret\nmachine Other.Example\n  login bob\n  password pw2\n');
    assert.deepEqual(findNetrcEntry(e, 'cache.example.org'), { machine: 'cache.example.org', login: 'alice', password: 's3cret' });
    assert.deepEqual(findNetrcEntry(e, 'other.example'), { machine: 'other.example', login: 'bob', password: 'pw2' });
    assert.equal(findNetrcEntry(e, 'example.org'), undefined, 'no suffix matching: a machine is one host');
  });

  it('takes the first match: default at the end covers every other host', () => {
    const e = parseNetrc('machine a login x password 1\ndefault login anon password guest\nmachine b login y password 2\n');
    assert.equal(findNetrcEntry(e, 'a')?.login, 'x');
    assert.equal(findNetrcEntry(e, 'zzz')?.login, 'anon');
    assert.equal(findNetrcEntry(e, 'b')?.login, 'anon', 'curl stops at default');
  });

  it('reads quoted tokens with escapes, skips comments, account and macdef bodies', () => {
    const text = [
      '# a comment with machine evil login no password no',
      'macdef init',
      'machine evil login no password no',
      '',
      'machine h account acct login "al ice" password "p\\"w \\\\ x\\t"',
    ].join('\n');
    const e = parseNetrc(text);
    assert.equal(findNetrcEntry(e, 'evil'), undefined);
    assert.deepEqual(findNetrcEntry(e, 'h'), { machine: 'h', login: 'al ice', password: 'p"w \\ x\t' });
  });

  it('a login or password named "macdef" is a value, not a macro', () => {
    const e = parseNetrc('machine h login macdef password pw\n');
    assert.deepEqual(findNetrcEntry(e, 'h'), { machine: 'h', login: 'macdef', password: 'pw' });
  });

  it('rejects a keyword without value and an unclosed quote, never echoing tokens', () => {
    for (const text of ['machine h login alice password', 'machine h password "TOPSECRET']) {
      try {
        parseNetrc(text, 'netrc test');
        assert.fail('accepted');
      } catch (e) {
        assert.ok(isNarfsError(e, 'ERR_DATALAKE_FILE'), inspect(e));
        assert.match(e.message, /line 1/);
        assert.ok(!inspect(e).includes('alice') && !inspect(e).includes('TOPSECRET'), inspect(e));
      }
    }
  });

  it('matches bracketed IPv6 hosts without brackets', () => {
    assert.equal(findNetrcEntry(parseNetrc('machine ::1 login l password p'), '[::1]')?.login, 'l');
  });
});
