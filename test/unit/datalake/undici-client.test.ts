/**
 * src/datalake/undici-client.ts loads undici's parts from their own modules: they must be
 * the very classes the package's index exports (a new undici that moves a module fails
 * here, not in a datalake), and requests must work through them without the index loaded.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const REPO = fileURLToPath(new URL('../../..', import.meta.url));

describe('undici-client: undici without its index', () => {
  it('exports the classes and the redirect interceptor of the installed undici', async () => {
    const parts = await import('../../../src/datalake/undici-client.js');
    const undici = require('undici') as typeof import('undici');
    assert.equal(parts.Agent, undici.Agent);
    assert.equal(parts.Pool, undici.Pool);
    assert.equal(parts.ProxyAgent, undici.ProxyAgent);
    assert.equal(parts.interceptors.redirect, undici.interceptors.redirect);
  });

  it('makes a request with redirects through them, the index never loaded', () => {
    // A process of its own: this one may have loaded the index already (other tests).
    const script = `
      import { createServer } from 'node:http';
      import { createRequire } from 'node:module';
      const { Agent, interceptors } = await import(${JSON.stringify(`${REPO}/src/datalake/undici-client.ts`)});
      const server = createServer((req, res) => {
        if (req.url === '/old') { res.writeHead(302, { location: '/new' }); res.end(); return; }
        res.end('moved here ' + req.url);
      });
      await new Promise((r) => server.listen(0, '127.0.0.1', r));
      const agent = new Agent().compose(interceptors.redirect({ maxRedirections: 2 }));
      const res = await agent.request({ origin: 'http://127.0.0.1:' + server.address().port, path: '/old', method: 'GET' });
      const body = await res.body.text();
      const index = createRequire(import.meta.url).resolve('undici');
      const loaded = Object.keys(createRequire(import.meta.url).cache).includes(index);
      process.stdout.write(JSON.stringify({ status: res.statusCode, body, loaded }));
      server.close();
      await agent.close();
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: REPO, encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { status: 200, body: 'moved here /new', loaded: false });
  });
});
