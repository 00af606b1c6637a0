/**
 * loadLater's ES-module branch, the one built narfs runs (src/daemon/load-later.ts): plain
 * `node` on dist/ (no tsx, no CommonJS hook) loads modules later through import() and
 * they are the instances the static imports see (NarfsError is one class), resolved against
 * the base the caller gives. Needs the build (`npm run build`, which scripts/test.sh runs
 * first); without dist/ the test fails, it never skips.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { run } from '../support/mount-harness.js';

const PROBE = fileURLToPath(new URL('../support/load-later-dist-probe.mjs', import.meta.url));
const BUILT = fileURLToPath(new URL('../../dist/src/daemon/load-later.js', import.meta.url));

describe('loadLater on the built dist/ (ES modules)', function () {
  this.timeout(120_000);

  it('shares classes with the static imports and resolves against the base given', async () => {
    assert.ok(existsSync(BUILT), `${BUILT} is missing: run \`npm run build\` first`);
    const r = await run(process.execPath, [PROBE]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim()), {
      requireDefined: false,
      sameErrorClass: true,
      sameFunction: true,
      errorInstanceOf: 'ERR_ABORTED',
      sameWithDaemonBase: true,
      ownBaseRejects: true,
    });
  });
});
