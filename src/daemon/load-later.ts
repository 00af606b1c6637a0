/**
 * loadLater: loads a module of narfs when it is first needed instead of at start-up, so
 * that `narfs mount` loads before its mount answers only what the mount needs
 * (store-stack.ts, mount-daemon.ts; issue 10's first use).
 *
 * The specifier is relative to `base`, the caller's `import.meta.url`, exactly as the
 * caller's own static imports are: there is no implicit base (a relative specifier would
 * otherwise resolve against this file, and a caller outside src/daemon/ would get another
 * module or none).
 *
 * Invariant: the module comes from the same module graph as the static imports of its
 * caller, so classes (NarfsError, instanceof checks) are shared. Built narfs is ES modules
 * and `import()` of the resolved file: URL is that graph (checked on dist/ by
 * test/integration/load-later-dist.test.ts). Under a CommonJS loader (tsx's require hook,
 * which mocha uses for the tests) `import()` would create a second instance of every
 * module it reaches (a second NarfsError class); there the resolved file is required, as
 * the static imports were (test/unit/load-later.test.ts).
 */
import { fileURLToPath } from 'node:url';

export function loadLater<T>(specifier: string, base: string): Promise<T> {
  let url: URL;
  try {
    url = new URL(specifier, base);
  } catch (err) {
    return Promise.reject(err);
  }
  if (typeof require === 'function') {
    try {
      return Promise.resolve(require(fileURLToPath(url)) as T);
    } catch (err) {
      return Promise.reject(err);
    }
  }
  return import(url.href) as Promise<T>;
}
