/**
 * Worker-thread entry for the lower-store work the daemon keeps off the thread that serves
 * FUSE (run-in-worker.ts): one job per worker, `workerData` is a NixdbJob.
 *
 * - `register`: createLowerStore (never creating `<lower>/nix/store`: it may be this very
 *   process's mount) then registerValidPaths; answers the RegisterValidPathsResult.
 * - `create`: createLowerStore (before the mount exists, so `nix/store` is made too).
 * - `scan`: readValidPaths; answers the basenames joined by "\n" as UTF-8 bytes, handed
 *   over without a copy (a structured clone of a million strings would be decoded on the
 *   receiving thread).
 */
import { basename } from 'node:path';
import { createLowerStore } from './create-lower-store.js';
import { readValidPaths } from './read-valid-paths.js';
import { registerValidPaths } from './register-valid-paths.js';
import { answerParent, type WorkerAnswer } from './run-in-worker.js';
import type { ValidPathInfo } from './valid-path-info.js';

export type NixdbJob =
  | { op: 'register'; lowerRoot: string; infos: ValidPathInfo[]; lockTimeoutMs?: number }
  | { op: 'create'; lowerRoot: string; lockTimeoutMs?: number }
  | { op: 'scan'; lowerRoot: string };

async function run(job: NixdbJob): Promise<WorkerAnswer<unknown>> {
  switch (job.op) {
    case 'register': {
      const lock = job.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: job.lockTimeoutMs };
      await createLowerStore(job.lowerRoot, { ...lock, createStoreDir: false });
      return { value: await registerValidPaths(job.lowerRoot, job.infos, lock) };
    }
    case 'create': {
      const lock = job.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: job.lockTimeoutMs };
      await createLowerStore(job.lowerRoot, lock);
      return { value: null };
    }
    case 'scan': {
      const names = readValidPaths(job.lowerRoot).map((p) => basename(p));
      const bytes = new TextEncoder().encode(names.join('\n'));
      return { value: bytes, transferList: [bytes.buffer] };
    }
  }
}

await answerParent(run, 'ERR_DB_IO');
