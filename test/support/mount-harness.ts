/**
 * Test harness for real FUSE mounts: an in-process daemon (startMount) on a temp
 * mountpoint, probes run in child processes, and an unmount that always happens
 * (close, then `fusermount -uz` as a fallback) even when the test fails.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startMount, type RunningMount } from '../../src/daemon/mount-daemon.js';
import type { MountConfig } from '../../src/config/mount-config.js';
import type { Logger } from '../../src/log.js';
import { parseTrustedPublicKeys } from '../../src/nix/signature.js';
import { forceUnmount } from '../../src/fuse/fuse-native-mount.js';

const execFileP = promisify(execFile);
const PROBE = fileURLToPath(new URL('./fs-probe.mjs', import.meta.url));

export interface LogLine { level: string; msg: string; fields: Record<string, unknown> }

export interface TestMount {
  mnt: string;
  cacheDir: string;
  running: RunningMount;
  logs: LogLine[];
}

export interface TestMountOptions {
  datalakes: string[];
  trustedPublicKeys?: string;
  requireSigs?: boolean;
  opTimeoutMs?: number;
  negativeTtlMs?: number;
  cacheDir?: string;
}

export function captureLogger(lines: LogLine[]): Logger {
  const push = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => {
    lines.push({ level, msg, fields });
    if (process.env.NARFS_TEST_LOG) process.stderr.write(`[${level}] ${msg} ${JSON.stringify(fields, (_k, v) => (v instanceof Error ? { code: (v as { code?: string }).code, message: v.message } : v))}\n`);
  };
  return { debug: push('debug'), info: push('info'), warn: push('warn'), error: push('error') };
}

/** Mounts, runs `fn`, and always unmounts and removes the temp dirs. */
export async function withMount<T>(options: TestMountOptions, fn: (m: TestMount) => Promise<T>): Promise<T> {
  const root = await mkdtemp(join(tmpdir(), 'narfs-test-'));
  const mnt = join(root, 'nix', 'store');
  await mkdir(mnt, { recursive: true });
  const cacheDir = options.cacheDir ?? join(root, 'cache');
  const logs: LogLine[] = [];
  const config: MountConfig = {
    mountpoint: mnt,
    datalakes: options.datalakes,
    trustedPublicKeys: options.trustedPublicKeys ? parseTrustedPublicKeys(options.trustedPublicKeys) : [],
    requireSigs: options.requireSigs ?? true,
    cacheDir,
    opTimeoutMs: options.opTimeoutMs ?? 30_000,
    negativeTtlMs: options.negativeTtlMs ?? 30_000,
    logFormat: 'text',
  };
  let running: RunningMount | undefined;
  try {
    running = await startMount(config, captureLogger(logs));
    return await fn({ mnt, cacheDir, running, logs });
  } finally {
    const closed = running ? await Promise.race([
      running.close().then(() => true, () => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), 15_000)),
    ]) : true;
    if (!closed) await forceUnmount(mnt, { abort: true });
    await execFileP('fusermount', ['-uz', mnt]).catch(() => {});
    await rm(root, { recursive: true, force: true }).catch(() => {});
  }
}

export interface ProbeResult {
  ok: boolean;
  code?: string;
  ms: number;
  bytes?: number;
  sha256?: string;
  mode?: number;
  size?: number;
  nlink?: number;
  ino?: number;
  uid?: number;
  gid?: number;
  mtimeMs?: number;
  blocks?: number;
  names?: string[];
  target?: string;
}

/** One filesystem operation in a child process (never blocks the FUSE-serving thread). */
export async function probe(op: string, path: string, timeoutMs = 120_000): Promise<ProbeResult> {
  const { stdout } = await execFileP(process.execPath, [PROBE, op, path], { timeout: timeoutMs, maxBuffer: 64 << 20 });
  return JSON.parse(stdout) as ProbeResult;
}

/** Runs a command asynchronously; resolves with its exit code and output. */
export async function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 300_000):
Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 256 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

/** Files under `<cacheDir>/nar` and `<cacheDir>/tmp`, for "nothing left in the cache" checks. */
export async function cacheFiles(cacheDir: string): Promise<{ nar: string[]; tmp: string[] }> {
  const list = (d: string) => readdir(join(cacheDir, d)).catch(() => [] as string[]);
  return { nar: await list('nar'), tmp: await list('tmp') };
}

export const NIX_ENV: NodeJS.ProcessEnv = {
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsandbox = false\nsubstituters =\n',
};
