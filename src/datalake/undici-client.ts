/**
 * The parts of undici that narfs uses (Agent, Pool, ProxyAgent, the redirect interceptor),
 * loaded from undici's own modules instead of its index.
 *
 * Why: `import 'undici'` evaluates every module undici has (mock agents, fetch, WebSocket,
 * EventSource, the cache stores): 110-126 ms of a mount's start on a warm machine, against
 * 45-48 ms for these parts (measured with `node -e`, Node 20, undici 7.30). A mount answers
 * its first request only after its datalake client is loaded (bench scenario 1 counts the
 * mount time).
 *
 * Invariant: the values are undici's own classes (the same objects `import 'undici'` gives;
 * test/unit/datalake/undici-client.test.ts checks that against the installed undici). The
 * request API (`request`, `stream`, ...) lives on Dispatcher.prototype only once undici's
 * index added it (`Object.assign(Dispatcher.prototype, api)` in its index.js): done here
 * the same way, once. The types are the package's public ones.
 */
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

const require = createRequire(import.meta.url);

const dispatcher = require('undici/lib/dispatcher/dispatcher') as { prototype: Record<string, unknown> };
if (typeof dispatcher.prototype['request'] !== 'function') {
  Object.assign(dispatcher.prototype, require('undici/lib/api') as Record<string, unknown>);
}

export const Agent = require('undici/lib/dispatcher/agent') as typeof Undici.Agent;
export type Agent = Undici.Agent;
export const Pool = require('undici/lib/dispatcher/pool') as typeof Undici.Pool;
export type Pool = Undici.Pool;
export const ProxyAgent = require('undici/lib/dispatcher/proxy-agent') as typeof Undici.ProxyAgent;
export type ProxyAgent = Undici.ProxyAgent;
export const interceptors = {
  redirect: require('undici/lib/interceptor/redirect') as typeof Undici.interceptors.redirect,
};
export type { Dispatcher } from 'undici';
