/**
 * loadLater (src/daemon/load-later.ts): a module loaded when first needed is the instance
 * the static imports see, under whichever loader runs the code (mocha runs it through
 * tsx's CommonJS hook, where a bare import() loads a second copy of every module).
 */
import assert from 'node:assert/strict';
import { loadLater } from '../../src/daemon/load-later.js';
import { NarfsError, toNarfsError } from '../../src/errors.js';
import { CleanupStack } from '../../src/daemon/cleanup-stack.js';

describe('loadLater', () => {
  it('gives the module instance of the static imports: classes and instanceof are shared', async () => {
    const errors = await loadLater<typeof import('../../src/errors.js')>('../errors.js');
    assert.equal(errors.NarfsError, NarfsError);
    const err = new errors.NarfsError('ERR_CACHE_IO', 'from the later module');
    assert.equal(toNarfsError(err), err, 'a NarfsError made by the later module is kept as it is');
    const stacks = await loadLater<typeof import('../../src/daemon/cleanup-stack.js')>('./cleanup-stack.js');
    assert.equal(stacks.CleanupStack, CleanupStack);
  });

  it('rejects (does not throw) for a module that is not there', async () => {
    const loading = loadLater('./no-such-module.js');
    await assert.rejects(loading);
  });
});
