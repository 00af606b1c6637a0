/**
 * proxyFor: curl's choice of proxy (explicit, then per-scheme variables, then all_proxy)
 * and its no_proxy rules (names and subdomains, ports, CIDR, "*").
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { noProxyMatches, proxyFor } from '../../../src/datalake/proxy-for.js';
import { isNarfsError } from '../../../src/errors.js';

const u = (s: string) => new URL(s);
const p = (target: string, explicit: string | undefined, env: Record<string, string>) => proxyFor(u(target), explicit, env)?.href;

describe('proxyFor', () => {
  it('uses http_proxy for http, https_proxy for https, then all_proxy; lower case first', () => {
    const env = { http_proxy: 'http://h:1', HTTP_PROXY: 'http://H:9', https_proxy: 'http://s:2', all_proxy: 'http://a:3' };
    assert.equal(p('http://cache/x', undefined, env), 'http://h:1/');
    assert.equal(p('https://cache/x', undefined, env), 'http://s:2/');
    assert.equal(p('https://cache/x', undefined, { all_proxy: 'http://a:3' }), 'http://a:3/');
    assert.equal(p('http://cache/x', undefined, { HTTP_PROXY: 'http://H:9' }), 'http://h:9/');
    assert.equal(p('http://cache/x', undefined, { http_proxy: '' }), undefined, 'empty is unset');
    assert.equal(p('http://cache/x', undefined, {}), undefined);
  });

  it('--proxy wins over the variables, a bare host:port is http://', () => {
    assert.equal(p('https://cache/x', 'squid.lan:3128', { https_proxy: 'http://s:2' }), 'http://squid.lan:3128/');
  });

  it('no_proxy wins, also over --proxy: names, subdomains, ports, CIDR, *', () => {
    const env = (no_proxy: string) => ({ no_proxy, http_proxy: 'http://h:1' });
    assert.equal(p('http://cache.lan/x', 'http://x:1', env('cache.lan')), undefined);
    assert.equal(p('http://a.cache.lan/x', undefined, env('.cache.lan')), undefined);
    assert.equal(p('http://a.cache.lan/x', undefined, env('*.cache.lan')), undefined);
    assert.equal(p('http://notcache.lan/x', undefined, env('cache.lan')), 'http://h:1/');
    assert.equal(p('http://127.0.0.1:8080/x', undefined, env('127.0.0.1:9090')), 'http://h:1/');
    assert.equal(p('http://127.0.0.1:9090/x', undefined, env('127.0.0.1:9090')), undefined);
    assert.equal(p('http://10.1.2.3/x', undefined, env('192.168.0.0/16, 10.0.0.0/8')), undefined);
    assert.equal(p('http://11.1.2.3/x', undefined, env('10.0.0.0/8')), 'http://h:1/');
    assert.equal(p('http://[::1]:80/x', undefined, env('[::1]')), undefined);
    assert.equal(p('http://anything/x', undefined, { NO_PROXY: '*', http_proxy: 'http://h:1' }), undefined);
    assert.equal(noProxyMatches(u('http://x/'), undefined), false);
  });

  it('refuses other proxy schemes without repeating the URL', () => {
    try {
      proxyFor(u('http://cache/'), 'socks5://user:TOPSECRET@p:1080', {});
      assert.fail('accepted');
    } catch (e) {
      assert.ok(isNarfsError(e, 'ERR_DATALAKE_URL'), inspect(e));
      assert.ok(!inspect(e).includes('TOPSECRET'));
    }
  });
});
