/**
 * Worker entry for test/integration/lock-file.test.ts: takes the lock on
 * `workerData.file` (lockFiles), posts "held", then spins until it is terminated.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { lockFiles } from '../../src/nixdb/lock-file.js';

await lockFiles([{ path: (workerData as { file: string }).file }], { timeoutMs: 30_000 });
parentPort!.postMessage('held');
for (;;) {
  // Busy until terminated: the worker never gets to release the lock itself.
}
