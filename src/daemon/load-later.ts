/**
 * loadLater: loads a module of src/ (a specifier relative to src/daemon/) when it is first
 * needed instead of at start-up, so that `narfs mount` loads before its mount answers only
 * what the mount needs (store-stack.ts, mount-daemon.ts; issue 10's first use).
 *
 * Invariant: the module comes from the same module graph as the static imports of its
 * caller, so classes (NarfsError, instanceof checks) are shared. Built narfs is ES modules
 * and `import()` is that graph. Under a CommonJS loader (tsx's require hook, which mocha
 * uses for the tests) `import()` would create a second instance of every module it reaches
 * (a second NarfsError class); there the module is required, as the static imports were.
 */
export function loadLater<T>(specifier: string): Promise<T> {
  if (typeof require === 'function') {
    try {
      return Promise.resolve(require(specifier) as T);
    } catch (err) {
      return Promise.reject(err);
    }
  }
  return import(specifier) as Promise<T>;
}
