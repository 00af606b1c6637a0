/**
 * runTool: runs an external tool (real Nix, a compressor…) asynchronously under a bounded
 * deadline of its own, so a test hook around it can wait on the child's exit
 * (`this.timeout(0)`) instead of racing mocha's fixed timeout against machine load.
 *
 * Invariant: the promise settles exactly once: with stdout when the tool exits 0, else with
 * an Error naming the command, how it ended (status, signal, or the deadline, after which
 * the child is SIGKILLed) and its trimmed stderr.
 */
import { execFile } from 'node:child_process';

/**
 * Deadline for one short external tool call on a loaded 2-core machine (several test runs
 * and builds at once): generous, since a false timeout is a flaky test, yet bounded.
 */
export const TOOL_TIMEOUT_MS = 5 * 60_000;

export interface RunToolOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  input?: string | Buffer;
}

export function runTool(cmd: string, args: readonly string[], options: RunToolOptions = {}): Promise<string> {
  const timeoutMs = options.timeoutMs ?? TOOL_TIMEOUT_MS;
  const command = [cmd, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { env: options.env ?? process.env, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 256 << 20, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve(stdout);
          return;
        }
        const e = error as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null; code?: number | string };
        let how: string;
        if (e.killed === true && e.signal === 'SIGKILL') how = `did not finish within ${timeoutMs / 1000} s and was killed`;
        else if (typeof e.code === 'number') how = `exited with status ${e.code}`;
        else if (e.signal) how = `was killed by ${e.signal}`;
        else how = `could not run: ${e.message}`;
        const text = stderr.trim();
        reject(new Error(`${command} ${how}${text === '' ? '' : `; stderr: ${text}`}`, { cause: error }));
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
    else child.stdin?.end();
  });
}
