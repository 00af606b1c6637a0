/**
 * A read trace's entries on the control socket (src/daemon/trace-wire.ts) and the client's
 * reading of trace files (readTraces, src/cli/prefetch-command.ts): grouped per store path
 * in first-entry order, a round trip keeps the entries, anything not written by
 * traceToWire for valid entries is ERR_CONTROL, an unreadable file is ERR_USAGE with a hint.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { traceFromWire, traceToWire } from '../../../src/daemon/trace-wire.js';
import { TRACE_HEADER } from '../../../src/daemon/read-trace.js';
import { readTraces } from '../../../src/cli/prefetch-command.js';
import { NarfsError } from '../../../src/errors.js';

const A = `${'a'.repeat(32)}-hello-2.12`;
const B = `${'b'.repeat(32)}-glibc-2.38`;

describe('trace entries on the control socket', () => {
  it('groups per store path in first-entry order and round-trips', () => {
    const entries = [{ name: A, narOffset: 128 }, { name: B, narOffset: 400 }, { name: A, narOffset: 9000 }, { name: B, narOffset: 96 }];
    const wire = traceToWire(entries);
    assert.deepEqual(wire, [[A, [128, 9000]], [B, [400, 96]]]);
    assert.deepEqual(traceFromWire(JSON.parse(JSON.stringify(wire))), [
      { name: A, narOffset: 128 }, { name: A, narOffset: 9000 }, { name: B, narOffset: 400 }, { name: B, narOffset: 96 },
    ]);
    assert.deepEqual(traceFromWire([]), []);
  });

  it('drops duplicates', () => {
    assert.deepEqual(traceFromWire([[A, [1, 1]], [A, [1, 2]]]), [{ name: A, narOffset: 1 }, { name: A, narOffset: 2 }]);
  });

  it('refuses anything else with ERR_CONTROL', () => {
    const bad: unknown[] = [
      undefined, null, 'x', {}, [A], [[A]], [[A, 5]], [[A, [1], 2]], [[5, [1]]],
      [['not-a-store-path', [1]]], [['../../etc', [1]]], [[`${'e'.repeat(32)}-x`, [1]]],
      [[A, [-1]]], [[A, [1.5]]], [[A, ['12']]], [[A, [2 ** 53]]], [[A, [null]]],
    ];
    for (const v of bad) {
      assert.throws(() => traceFromWire(v), (e: unknown) => e instanceof NarfsError && e.code === 'ERR_CONTROL', JSON.stringify(v));
    }
  });
});

describe('readTraces (narfs prefetch --trace)', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(join(tmpdir(), 'narfs-trace-wire-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads files in order, each entry once across files, and counts bad lines', async () => {
    writeFileSync(join(dir, '1'), `${TRACE_HEADER}\n${A}\t128\n${B}\t96\nnonsense\n${A}\t128\n`);
    writeFileSync(join(dir, '2'), `${TRACE_HEADER}\n${B}\t96\n${B}\t400\n../x\t1\n`);
    const r = await readTraces([join(dir, '1'), join(dir, '2')]);
    assert.deepEqual(r, { entries: [{ name: A, narOffset: 128 }, { name: B, narOffset: 96 }, { name: B, narOffset: 400 }], bad: 2 });
  });

  it('an unreadable trace is ERR_USAGE with a hint', async () => {
    await assert.rejects(readTraces([join(dir, 'missing')]), (e: unknown) =>
      e instanceof NarfsError && e.code === 'ERR_USAGE' && /--trace .*missing: cannot read it/.test(e.message) && /--record-trace/.test(e.hint ?? ''));
  });
});
