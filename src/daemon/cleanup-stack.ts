/**
 * CleanupStack: what was opened, undone in reverse order. `run()` never throws (a failed
 * step is logged and the rest still run) and runs the steps once, however often called.
 */
import type { Logger } from '../log.js';

export class CleanupStack {
  readonly #steps: Array<() => Promise<void> | void> = [];
  readonly #logger: Logger;
  #running: Promise<void> | undefined;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  push(step: () => Promise<void> | void): void {
    this.#steps.push(step);
  }

  run(): Promise<void> {
    this.#running ??= (async () => {
      for (const step of this.#steps.splice(0).reverse()) {
        try {
          await step();
        } catch (err) {
          this.#logger.warn('cleanup step failed', { err });
        }
      }
    })();
    return this.#running;
  }
}
