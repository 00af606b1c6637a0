/**
 * Worker-thread entry for the lower-store work the daemon keeps off the thread that serves
 * FUSE (run-in-worker.ts): one job per worker, `workerData` is a NixdbJob.
 *
 * - `register`: createLowerStore (never creating `<lower>/nix/store`: it may be this very
 *   process's mount) then registerValidPaths; answers the RegisterValidPathsResult. A store
 *   that does not exist yet is created in the same generation as the rows.
 * - `register-batches`: the same for several batches in one generation
 *   (registerValidPathBatches); answers one `{ ok, value } | { ok: false, error: WireError }`
 *   per batch, in order.
 * - `create`: createLowerStore (before the mount exists, so `nix/store` is made too).
 * - `scan`: readValidPaths; answers the basenames joined by "\n" as UTF-8 bytes, handed
 *   over without a copy (a structured clone of a million strings would be decoded on the
 *   receiving thread).
 */
import { basename } from 'node:path';
import { createLowerStore } from './create-lower-store.js';
import { readValidPaths } from './read-valid-paths.js';
import { registerValidPathBatches, registerValidPaths } from './register-valid-paths.js';
import { checkLowerStoreFiles } from './check-lower-schema.js';
import { lowerStoreLayout } from './lower-store-layout.js';
import { toWireError } from './wire-error.js';
import { answerParent, type WorkerAnswer } from './run-in-worker.js';
import type { ValidPathInfo } from './valid-path-info.js';

export type NixdbJob =
  | { op: 'register'; lowerRoot: string; infos: ValidPathInfo[]; lockTimeoutMs?: number }
  | { op: 'register-batches'; lowerRoot: string; batches: ValidPathInfo[][]; lockTimeoutMs?: number }
  | { op: 'create'; lowerRoot: string; lockTimeoutMs?: number }
  | { op: 'scan'; lowerRoot: string };

/**
 * An existing store gets createLowerStore's checks and repairs (state dirs, a WAL or an old
 * schema; no lock when it is complete); a missing one is created with the rows.
 */
async function createIfPresent(lowerRoot: string, lock: { lockTimeoutMs?: number }): Promise<void> {
  if (checkLowerStoreFiles(lowerStoreLayout(lowerRoot)) === 'present') await createLowerStore(lowerRoot, { ...lock, createStoreDir: false });
}

async function run(job: NixdbJob): Promise<WorkerAnswer<unknown>> {
  switch (job.op) {
    case 'register': {
      const lock = job.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: job.lockTimeoutMs };
      await createIfPresent(job.lowerRoot, lock);
      return { value: await registerValidPaths(job.lowerRoot, job.infos, { ...lock, create: { createStoreDir: false } }) };
    }
    case 'register-batches': {
      const lock = job.lockTimeoutMs === undefined ? {} : { lockTimeoutMs: job.lockTimeoutMs };
      await createIfPresent(job.lowerRoot, lock);
      const outcomes = await registerValidPathBatches(job.lowerRoot, job.batches, { ...lock, create: { createStoreDir: false } });
      return { value: outcomes.map((o) => (o.ok ? o : { ok: false, error: toWireError(o.error, 'ERR_DB_IO') })) };
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
