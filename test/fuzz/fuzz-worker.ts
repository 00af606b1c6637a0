/**
 * Runs `fuzzTarget` on a worker thread under a watchdog, so an input that never returns
 * (an infinite loop in a synchronous parser cannot be interrupted from inside) is still
 * reported, with its seed and index, as a `hang` violation.
 *
 * Protocol: the worker stores the index of the input it is about to run and bumps a beat
 * counter in a SharedArrayBuffer before each input; the main thread terminates the worker
 * when the beat has not moved for `hangMs` (or `startupMs` before the first beat). The
 * worker loads the targets from `targetsModule` (a module URL exporting FUZZ_TARGETS), so
 * tests can run fake targets through the same path. TypeScript is loaded in the worker by
 * registering tsx there (workers do not inherit the parent's --import hooks).
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

import { fuzzTarget, type FuzzOptions, type FuzzReport, type FuzzTarget } from './fuzz-engine.js';

export interface FuzzJob {
  /** URL of a module exporting `FUZZ_TARGETS: Record<string, FuzzTarget>`. */
  targetsModule: string;
  target: string;
  seeds: Uint8Array[];
  options: Omit<FuzzOptions, 'onInput'>;
}

export interface WatchdogOptions {
  /** A single input running this long is a hang (default 30 s). */
  hangMs?: number;
  /** Allowance for loading the worker before the first input (default 120 s). */
  startupMs?: number;
}

interface WorkerData {
  narfsFuzzJob: FuzzJob;
  progress: SharedArrayBuffer;
}

export function runFuzzInWorker(job: FuzzJob, watchdog: WatchdogOptions = {}): Promise<FuzzReport> {
  const hangMs = watchdog.hangMs ?? 30_000;
  const startupMs = watchdog.startupMs ?? 120_000;
  const progress = new SharedArrayBuffer(8);
  const cells = new Int32Array(progress); // [index of the input being run, beats]
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const self = import.meta.url;
  const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(self)}); })`;
  const data: WorkerData = { narfsFuzzJob: job, progress };
  const worker = new Worker(boot, { eval: true, workerData: data });

  return new Promise<FuzzReport>((resolve, reject) => {
    let lastBeat = 0;
    let lastChange = Date.now();
    let settled = false;
    const finish = (f: () => void): void => {
      if (settled) return;
      settled = true;
      clearInterval(timer);
      f();
    };
    const timer = setInterval(() => {
      const beat = Atomics.load(cells, 1);
      const now = Date.now();
      if (beat !== lastBeat) {
        lastBeat = beat;
        lastChange = now;
        return;
      }
      const limit = beat === 0 ? startupMs : hangMs;
      if (now - lastChange < limit) return;
      const index = Atomics.load(cells, 0);
      void worker.terminate();
      const start = job.options.start ?? 0;
      finish(() =>
        resolve({
          target: job.target,
          seed: job.options.seed,
          inputs: beat === 0 ? 0 : index - start + 1,
          accepted: 0,
          rejected: {},
          rejectedSeeds: [],
          violations: [
            beat === 0
              ? { target: job.target, seed: job.options.seed, index: -1, kind: 'hang', message: `the worker ran no input within ${limit} ms`, inputLength: 0 }
              : { target: job.target, seed: job.options.seed, index, kind: 'hang', message: `no return within ${limit} ms`, inputLength: -1 },
          ],
          elapsedMs: 0,
          maxInputMs: limit,
          slowestIndex: index,
          maxMemoryDelta: 0,
        }),
      );
    }, Math.max(10, Math.min(250, hangMs / 4)));
    worker.once('message', (report: FuzzReport) => finish(() => resolve(report)));
    worker.once('error', (err) => finish(() => reject(err)));
    worker.once('exit', (code) => finish(() => reject(new Error(`fuzz worker exited with code ${code} before reporting`))));
  });
}

async function workerMain(data: WorkerData): Promise<void> {
  const { narfsFuzzJob: job, progress } = data;
  const cells = new Int32Array(progress);
  const mod = (await import(job.targetsModule)) as { FUZZ_TARGETS: Record<string, FuzzTarget> };
  const target = mod.FUZZ_TARGETS[job.target];
  if (target === undefined) throw new Error(`no fuzz target '${job.target}' in ${job.targetsModule}`);
  const seeds = job.seeds.map((s) => Buffer.from(s.buffer, s.byteOffset, s.byteLength));
  const report = fuzzTarget(target, seeds, {
    ...job.options,
    onInput(index) {
      Atomics.store(cells, 0, index);
      Atomics.add(cells, 1, 1);
    },
  });
  parentPort!.postMessage(report);
}

const data = workerData as Partial<WorkerData> | null;
if (!isMainThread && data?.narfsFuzzJob !== undefined) await workerMain(data as WorkerData);
