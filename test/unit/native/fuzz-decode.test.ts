/**
 * CI's short run of the FUSE request decoder fuzzer (native/fuzz): builds it with
 * AddressSanitizer + UndefinedBehaviorSanitizer and feeds it malformed, truncated and
 * oversized requests. `npm run fuzz:native` runs the long version (10^5 inputs).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const RUN = fileURLToPath(new URL('../../../native/fuzz/run.sh', import.meta.url));

describe('native: fuzzed FUSE request decoding (ASan + UBSan)', function () {
  this.timeout(10 * 60_000);

  it('decodes 3000 malformed requests without a sanitizer finding, each status reached', async () => {
    const { stdout } = await execFileP('bash', [RUN, '3000', String(Date.now() % 100000)], { timeout: 9 * 60_000, maxBuffer: 16 << 20 });
    const m = /(\d+) inputs: ok (\d+), too short (\d+), len mismatch (\d+), bad body (\d+)/.exec(stdout);
    assert.ok(m, stdout);
    assert.equal(Number(m[1]), 3000);
    for (const i of [2, 3, 4, 5]) assert.ok(Number(m[i]) > 0, `every decode status is exercised: ${stdout}`);
  });
});
