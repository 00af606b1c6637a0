/**
 * The lower-store database writer (see docs/lower-store.md for the write protocol).
 *
 * Invariant: the only ways narfs changes a lower store are `createLowerStore` and
 * `registerValidPaths`; both hold the narfs writer lock and Nix's big-lock exclusively and
 * replace `db.sqlite` atomically, so Nix readers that never lock see whole generations.
 */
export { createLowerStore, type CreateLowerStoreOptions, type CreateLowerStoreResult } from './create-lower-store.js';
export {
  registerValidPaths,
  registerValidPathBatches,
  type BatchOutcome,
  type RegisterBatchesOptions,
  type RegisterValidPathsOptions,
  type RegisterValidPathsResult,
} from './register-valid-paths.js';
export { type ValidPathInfo, isStorePath, validateValidPathInfos } from './valid-path-info.js';
export { lowerStoreLayout, type LowerStoreLayout } from './lower-store-layout.js';
export { DEFAULT_LOCK_TIMEOUT_MS } from './with-writer-locks.js';
export { readValidPaths } from './read-valid-paths.js';
export { registerOffThread, type RegisterOffThreadOptions } from './register-off-thread.js';
export { readValidNamesOffThread, nameChunks, type ReadValidNamesOptions } from './read-valid-names-off-thread.js';
export { createLowerStoreOffThread, type CreateLowerStoreOffThreadOptions } from './create-lower-store-off-thread.js';
