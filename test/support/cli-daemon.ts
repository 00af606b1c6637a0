/**
 * Runs `bin/narfs mount` as a user would (a separate process), waits for its ready line,
 * and always stops it: SIGTERM, then SIGKILL and a forced unmount (fusectl abort +
 * `fusermount -uz`) when it does not go.
 *
 * Waits are on events: `waitForOutput` resolves on the output chunk that completes the
 * expected text and fails at once when the process exits first; its deadline only bounds
 * a hang, generously for a loaded 2-core machine (a node start plus a FUSE mount).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';

export const NARFS_BIN = fileURLToPath(new URL('../../bin/narfs', import.meta.url));

/** Upper bound for one expected line of a narfs process (ready line, a log line). */
export const OUTPUT_TIMEOUT_MS = 120_000;

export interface CliDaemon {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exit: Promise<number | null>;
  /** SIGTERM, then force; resolves with the exit code (null if it had to be killed). */
  stop(): Promise<number | null>;
  /**
   * Resolves once everything written so far to `stream` matches `pattern` (waiting on the
   * process's output, not polling); rejects when the process exits before that or after
   * `timeoutMs`, with `what` and the output so far.
   */
  waitForOutput(stream: 'stdout' | 'stderr', pattern: RegExp, what: string, timeoutMs?: number): Promise<void>;
}

/**
 * `wrap` turns the narfs command line into the one to run (e.g. as another user, in a
 * mount namespace of its own); `env` replaces the environment.
 */
export interface SpawnNarfsOptions {
  wrap?: (argv: string[]) => [string, string[]];
  env?: NodeJS.ProcessEnv;
}

export function spawnNarfs(args: string[], options: SpawnNarfsOptions = {}): CliDaemon {
  const argv = [process.execPath, NARFS_BIN, ...args];
  const [cmd, cmdArgs] = options.wrap ? options.wrap(argv) : [argv[0]!, argv.slice(1)];
  const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
  const stdout: string[] = [];
  const stderr: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => stdout.push(d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr.push(d);
    if (process.env.NARFS_TEST_LOG) process.stderr.write(d);
  });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const mountpoint = args[0] === 'mount' ? args[1] : undefined;
  const waitForOutput = (which: 'stdout' | 'stderr', pattern: RegExp, what: string, timeoutMs = OUTPUT_TIMEOUT_MS): Promise<void> => {
    const text = () => (which === 'stdout' ? stdout : stderr).join('');
    const source = which === 'stdout' ? child.stdout! : child.stderr!;
    return new Promise<void>((resolve, reject) => {
      const finish = (error?: Error): void => {
        clearTimeout(timer);
        source.off('data', onData);
        child.off('exit', onExit);
        if (error) reject(error);
        else resolve();
      };
      const describe = () => `${what}; stdout: ${stdout.join('')}; stderr: ${stderr.join('')}`;
      // Our 'data' listener runs after the one above that collects the output.
      const onData = (): void => {
        if (pattern.test(text())) finish();
      };
      const onExit = (code: number | null, signal: string | null): void => {
        // Output written just before exiting may still be in the pipe: take it first.
        source.once('end', () => finish(pattern.test(text()) ? undefined : new Error(`narfs exited (${code ?? signal}) before ${describe()}`)));
        if (source.readableEnded) finish(pattern.test(text()) ? undefined : new Error(`narfs exited (${code ?? signal}) before ${describe()}`));
      };
      const timer = setTimeout(() => finish(new Error(`no ${what} within ${timeoutMs / 1000} s; ${describe()}`)), timeoutMs);
      source.on('data', onData);
      child.on('exit', onExit);
      if (pattern.test(text())) finish();
      else if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode, child.signalCode);
    });
  };
  return {
    child, stdout, stderr, exit, waitForOutput,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const code = await Promise.race([exit, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
      if (code !== 'timeout') return code;
      child.kill('SIGKILL');
      if (mountpoint) await forceUnmount(mountpoint, { abort: true });
      return exit;
    },
  };
}

/** Starts `narfs mount …` and waits for its ready line, "narfs: mounted". */
export async function startNarfsMount(args: string[], timeoutMs = OUTPUT_TIMEOUT_MS, options: SpawnNarfsOptions = {}): Promise<CliDaemon> {
  const d = spawnNarfs(['mount', ...args], options);
  try {
    await d.waitForOutput('stdout', /narfs: mounted/, 'the ready line', timeoutMs);
  } catch (e) {
    await d.stop();
    assert.fail(`narfs mount did not get ready: ${(e as Error).message}`);
  }
  return d;
}
