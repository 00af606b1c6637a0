/**
 * The --config file: nix.conf-like "key = value" lines, lists that add up, booleans,
 * unknown and repeated keys refused without echoing values, command line over file.
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { mergeConfig, parseConfigFile, type ConfigSpec } from '../../../src/config/config-file.js';
import { buildMountConfig } from '../../../src/config/mount-config.js';
import { isNarfsError } from '../../../src/errors.js';

const SPEC: ConfigSpec = {
  datalake: 'list', 'trusted-public-keys': 'list', 'bearer-token-file': 'list',
  'netrc-file': 'string', proxy: 'string', 'require-sigs': 'boolean',
};

function rejects(text: string, re: RegExp): void {
  try {
    parseConfigFile(text, SPEC, 'test.conf');
    assert.fail('accepted');
  } catch (e) {
    assert.ok(isNarfsError(e, 'ERR_CONFIG'), inspect(e));
    assert.match(e.message, re);
    assert.ok(!inspect(e).includes('TOPSECRET'), inspect(e));
  }
}

describe('config file', () => {
  it('reads key = value lines, comments, lists that add up and split like nix.conf', () => {
    const v = parseConfigFile([
      '# narfs',
      'datalake = https://a.example/x   https://b.example  # two',
      '  datalake=file:///srv/c',
      'trusted-public-keys = k1:AAAA k2:BBBB',
      'bearer-token-file = a.example=/run/tok a',
      'bearer-token-file = /run/tok-b',
      'netrc-file = /etc/nix/netrc',
      'require-sigs = false',
      '',
    ].join('\n'), SPEC, 'test.conf');
    assert.deepEqual(v, {
      datalake: ['https://a.example/x', 'https://b.example', 'file:///srv/c'],
      'trusted-public-keys': ['k1:AAAA', 'k2:BBBB'],
      'bearer-token-file': ['a.example=/run/tok a', '/run/tok-b'],
      'netrc-file': '/etc/nix/netrc',
      'require-sigs': false,
    });
  });

  it('refuses unknown, repeated, valueless and malformed settings, naming the line and never a value', () => {
    rejects('datalake = x\nproxi = http://u:TOPSECRET@p:1\n', /line 2: unknown setting 'proxi'/);
    rejects('https://u:TOPSECRET@h/x?priority=1\n', /line 1: unknown setting '\(not an option name\)'/);
    rejects('proxy = http://a:1\nproxy = http://u:TOPSECRET@b:1\n', /line 2: 'proxy' is set twice/);
    rejects('require-sigs = TOPSECRET\n', /'require-sigs' is true or false/);
    rejects('netrc-file =\n', /has no value/);
    rejects('TOPSECRET\n', /not a "key = value" line/);
  });

  it('command-line values replace the file\'s, key by key', () => {
    const merged = mergeConfig({ datalake: ['file:///cli'], proxy: undefined }, { datalake: ['https://f'], proxy: 'http://p:1' });
    assert.deepEqual(merged, { datalake: ['file:///cli'], proxy: 'http://p:1' });
  });

  it('buildMountConfig turns the access options into datalakeAccess (tokens scoped by HOST=)', () => {
    const c = buildMountConfig({
      mountpoint: '/m', datalake: ['https://a'], noRequireSigs: true,
      netrcFile: '/n', bearerTokenFile: ['cache.lan=/t1', '/t2'], sslCertFile: '/ca.pem', proxy: 'squid:3128',
    });
    assert.deepEqual(c.datalakeAccess, {
      netrcFile: '/n', bearerTokenFiles: [{ host: 'cache.lan', file: '/t1' }, { file: '/t2' }], sslCertFile: '/ca.pem', proxy: 'squid:3128',
    });
    assert.equal(buildMountConfig({ mountpoint: '/m', datalake: ['file:///x'], noRequireSigs: true }).datalakeAccess, undefined);
    assert.throws(() => buildMountConfig({ mountpoint: '/m', datalake: ['https://a'], noRequireSigs: true, proxy: 'socks5://p:1' }),
      (e: unknown) => isNarfsError(e, 'ERR_DATALAKE_URL'));
  });

  it('passthrough: on unless --no-passthrough (or passthrough = false in the file)', () => {
    const base = { mountpoint: '/m', datalake: ['file:///x'], noRequireSigs: true };
    assert.equal(buildMountConfig(base).passthrough, undefined); // the engine's default: on
    assert.equal(buildMountConfig({ ...base, passthrough: false }).passthrough, false);
    assert.deepEqual(parseConfigFile('passthrough = false\n', { passthrough: 'boolean' }, 'test.conf'), { passthrough: false });
  });
});
