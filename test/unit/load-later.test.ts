/**
 * loadLater (src/daemon/load-later.ts): a module loaded when first needed is the instance
 * the static imports see, under whichever loader runs the code (mocha runs it through
 * tsx's CommonJS hook, where a bare import() loads a second copy of every module). The
 * specifier is relative to the caller's import.meta.url, wherever the caller is: here
 * test/unit/, not src/daemon/. The ES-module branch (built narfs) is checked on dist/ by
 * test/integration/load-later-dist.test.ts.
 */
import assert from 'node:assert/strict';
import { loadLater } from '../../src/daemon/load-later.js';
import { NarfsError, toNarfsError } from '../../src/errors.js';
import { CleanupStack } from '../../src/daemon/cleanup-stack.js';
import { sleep } from '../../src/deadline.js';

describe('loadLater', () => {
  it('gives the module instance of the static imports: classes and instanceof are shared', async () => {
    const errors = await loadLater<typeof import('../../src/errors.js')>('../../src/errors.js', import.meta.url);
    assert.equal(errors.NarfsError, NarfsError);
    const err = new errors.NarfsError('ERR_CACHE_IO', 'from the later module');
    assert.equal(toNarfsError(err), err, 'a NarfsError made by the later module is kept as it is');
    const stacks = await loadLater<typeof import('../../src/daemon/cleanup-stack.js')>('../../src/daemon/cleanup-stack.js', import.meta.url);
    assert.equal(stacks.CleanupStack, CleanupStack);
    // An error raised inside a module loaded later is an instance of the static class.
    const deadlines = await loadLater<typeof import('../../src/deadline.js')>('../../src/deadline.js', import.meta.url);
    assert.equal(deadlines.sleep, sleep);
    await assert.rejects(deadlines.sleep(1, AbortSignal.abort()), (e) => e instanceof NarfsError && e.code === 'ERR_ABORTED');
  });

  it('resolves against the base given, not against src/daemon/', async () => {
    // From src/daemon/ this would be src/daemon/cleanup-stack.js; from here it is not there.
    await assert.rejects(loadLater('./cleanup-stack.js', import.meta.url));
    const here = await loadLater<typeof import('../../src/daemon/cleanup-stack.js')>('./cleanup-stack.js', new URL('../../src/daemon/', import.meta.url).href);
    assert.equal(here.CleanupStack, CleanupStack);
  });

  it('rejects (does not throw) for a module that is not there, or a base that is not a URL', async () => {
    const loading = loadLater('./no-such-module.js', import.meta.url);
    await assert.rejects(loading);
    await assert.rejects(loadLater('./x.js', 'not a url'));
  });
});
