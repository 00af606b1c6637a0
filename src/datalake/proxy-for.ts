/**
 * proxyFor: which HTTP proxy (if any) a request to a datalake goes through, with the rules
 * of curl (lib/url.c, detect_proxy/check_noproxy), which Nix's downloads follow:
 *
 * - `no_proxy` (or `NO_PROXY`) is checked first and wins even over `--proxy`: a comma- or
 *   space-separated list of host names (a name also covers its subdomains; a leading "."
 *   or "*." is ignored), `host:port` entries that match that port only, IPv4 CIDR blocks
 *   (`10.0.0.0/8`), IP literals, or `*` for "never proxy";
 * - then the explicit proxy (`--proxy`);
 * - then `http_proxy` for http:// targets, `https_proxy` for https:// ones, then
 *   `all_proxy`; each read in lower case first, then upper case (curl reads only the lower
 *   case `http_proxy`, against "httpoxy"; a daemon has no CGI request to fear, and Node
 *   tools read both). Empty values count as unset.
 *
 * A proxy without a scheme ("squid.lan:3128") is http://, as curl has it. Only http:// and
 * https:// proxies are supported. Invariant: no error message repeats the proxy URL (it may
 * carry user:password).
 */
import { isIPv4 } from 'node:net';
import { NarfsError } from '../errors.js';

export type ProxyEnv = Readonly<Record<string, string | undefined>>;

/** The proxy URL for requests to `target`, or undefined for a direct connection. */
export function proxyFor(target: URL, explicit: string | undefined, env: ProxyEnv = process.env): URL | undefined {
  const get = (name: string): string | undefined => {
    const v = env[name] ?? env[name.toUpperCase()];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  if (noProxyMatches(target, get('no_proxy'))) return undefined;
  const chosen =
    (explicit !== undefined && explicit.trim() !== '' ? explicit.trim() : undefined) ??
    (target.protocol === 'https:' ? get('https_proxy') : get('http_proxy')) ??
    get('all_proxy');
  return chosen === undefined ? undefined : parseProxyUrl(chosen);
}

/** Parses a proxy URL; a bare host:port is http://. */
export function parseProxyUrl(text: string): URL {
  let u: URL;
  try {
    u = new URL(/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(text) ? text : `http://${text}`);
  } catch {
    throw new NarfsError('ERR_DATALAKE_URL', 'the proxy is not a valid URL', {
      hint: 'Give --proxy (or http_proxy/https_proxy) as http://host:port.',
    });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new NarfsError('ERR_DATALAKE_URL', `proxies are http:// or https://, not ${u.protocol}//`, {
      hint: 'Give --proxy (or http_proxy/https_proxy) as http://host:port.',
    });
  }
  return u;
}

/** Whether the no_proxy list exempts `target` (curl's check_noproxy). */
export function noProxyMatches(target: URL, list: string | undefined): boolean {
  if (list === undefined) return false;
  const host = target.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  const port = Number(target.port || (target.protocol === 'https:' ? 443 : 80));
  for (const raw of list.split(/[,\s]+/)) {
    let entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    let entryPort: number | undefined;
    const bracketed = /^\[(.*)\](?::(\d+))?$/.exec(entry);
    const colons = entry.split(':').length - 1;
    if (bracketed) {
      entry = bracketed[1]!;
      if (bracketed[2] !== undefined) entryPort = Number(bracketed[2]);
    } else if (colons === 1) {
      const [h, p] = entry.split(':');
      if (!/^\d+$/.test(p!)) continue;
      entry = h!;
      entryPort = Number(p);
    }
    if (entryPort !== undefined && entryPort !== port) continue;
    entry = entry.replace(/^\*?\./, '');
    const cidr = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(entry);
    if (cidr) {
      if (isIPv4(host) && isIPv4(cidr[1]!) && inCidr(host, cidr[1]!, Number(cidr[2]))) return true;
      continue;
    }
    if (host === entry || host.endsWith(`.${entry}`)) return true;
  }
  return false;
}

function inCidr(ip: string, base: string, bits: number): boolean {
  if (bits < 0 || bits > 32) return false;
  const toInt = (s: string) => s.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const block = 2 ** (32 - bits);
  return Math.floor(toInt(ip) / block) === Math.floor(toInt(base) / block);
}
