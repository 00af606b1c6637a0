/**
 * Runs `bin/narfs mount` as a user would (a separate process), waits for its ready line,
 * and always stops it: SIGTERM, then SIGKILL and a forced unmount (fusectl abort +
 * `fusermount -uz`) when it does not go.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';

export const NARFS_BIN = fileURLToPath(new URL('../../bin/narfs', import.meta.url));

export interface CliDaemon {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exit: Promise<number | null>;
  /** SIGTERM, then force; resolves with the exit code (null if it had to be killed). */
  stop(): Promise<number | null>;
}

export function spawnNarfs(args: string[]): CliDaemon {
  const child = spawn(process.execPath, [NARFS_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => stdout.push(d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr.push(d);
    if (process.env.NARFS_TEST_LOG) process.stderr.write(d);
  });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const mountpoint = args[0] === 'mount' ? args[1] : undefined;
  return {
    child, stdout, stderr, exit,
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

/** Starts `narfs mount …` and waits for "narfs: mounted". */
export async function startNarfsMount(args: string[], timeoutMs = 30_000): Promise<CliDaemon> {
  const d = spawnNarfs(['mount', ...args]);
  const end = Date.now() + timeoutMs;
  while (!d.stdout.join('').includes('narfs: mounted')) {
    if (Date.now() > end || d.child.exitCode !== null) {
      await d.stop();
      assert.fail(`narfs mount did not get ready: ${d.stderr.join('')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return d;
}
