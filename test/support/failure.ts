/**
 * failure(p, code): awaits `p`, which must reject with a NarfsError of `code`, and returns
 * that error for further checks. Shared by the datalake test files.
 */
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { isNarfsError, type NarfsError } from '../../src/errors.js';

export async function failure(p: Promise<unknown>, code: string): Promise<NarfsError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err !== undefined, `expected rejection with ${code}`);
  assert.ok(isNarfsError(err), `expected a NarfsError, got ${inspect(err)}`);
  assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
  return err;
}
