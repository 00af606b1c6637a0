/**
 * Worker-thread entry of registerOffThread: creates the lower store if needed and
 * registers one batch, then posts the result (or the error's code, message and hint).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createLowerStore } from './create-lower-store.js';
import { registerValidPaths } from './register-valid-paths.js';
import type { ValidPathInfo } from './valid-path-info.js';

interface Job { lowerRoot: string; infos: ValidPathInfo[]; lockTimeoutMs?: number }

const job = workerData as Job;
const lock = job.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: job.lockTimeoutMs };
try {
  await createLowerStore(job.lowerRoot, { ...lock, createStoreDir: false });
  const result = await registerValidPaths(job.lowerRoot, job.infos, lock);
  parentPort!.postMessage({ ok: true, result });
} catch (e) {
  const err = e as { code?: string; message?: string; hint?: string };
  parentPort!.postMessage({ ok: false, code: err.code, message: err.message ?? String(e), hint: err.hint });
}
