/**
 * Test harness for real FUSE mounts: an in-process daemon (startMount) on a temp
 * mountpoint, probes run in child processes, and an unmount that always happens
 * (close, then `fusermount -uz` as a fallback) even when the test fails.
 */
import { execFile, spawn } from 'node:child_process';
import { watch } from 'node:fs';
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
  /**
   * Resolves with the first log line (already logged or logged later) that matches;
   * rejects after `timeoutMs` with `what` and the lines so far.
   */
  waitForLog(match: (l: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
}

/** Upper bound for waiting on a log line or a cache clean-up of the in-process daemon. */
export const EVENT_TIMEOUT_MS = 60_000;

export interface TestMountOptions {
  datalakes: string[];
  trustedPublicKeys?: string;
  requireSigs?: boolean;
  opTimeoutMs?: number;
  negativeTtlMs?: number;
  cacheDir?: string;
  /** Any other mount settings (cache bound, traces, indexes…). */
  extra?: Partial<MountConfig>;
}

export function captureLogger(lines: LogLine[], onLine?: (l: LogLine) => void): Logger {
  const push = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => {
    const line = { level, msg, fields };
    lines.push(line);
    onLine?.(line);
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
  const logWaiters = new Set<(l: LogLine) => void>();
  const waitForLog = (match: (l: LogLine) => boolean, what: string, timeoutMs = EVENT_TIMEOUT_MS): Promise<LogLine> => {
    const found = logs.find(match);
    if (found) return Promise.resolve(found);
    return new Promise<LogLine>((resolve, reject) => {
      const onLine = (l: LogLine): void => {
        if (!match(l)) return;
        clearTimeout(timer);
        logWaiters.delete(onLine);
        resolve(l);
      };
      const timer = setTimeout(() => {
        logWaiters.delete(onLine);
        reject(new Error(`no log line: ${what} within ${timeoutMs / 1000} s; lines: ${logs.map((l) => `${l.level} ${l.msg}`).join(' | ')}`));
      }, timeoutMs);
      logWaiters.add(onLine);
    });
  };
  const config: MountConfig = {
    mountpoint: mnt,
    datalakes: options.datalakes,
    trustedPublicKeys: options.trustedPublicKeys ? parseTrustedPublicKeys(options.trustedPublicKeys) : [],
    requireSigs: options.requireSigs ?? true,
    cacheDir,
    opTimeoutMs: options.opTimeoutMs ?? 30_000,
    negativeTtlMs: options.negativeTtlMs ?? 30_000,
    logFormat: 'text',
    ...options.extra,
  };
  let running: RunningMount | undefined;
  try {
    running = await startMount(config, captureLogger(logs, (l) => {
      for (const w of [...logWaiters]) w(l);
    }));
    return await fn({ mnt, cacheDir, running, logs, waitForLog });
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

export interface GatedProbe {
  /** The probe process has started and waits for `go()`. */
  ready: Promise<void>;
  /** Lets it make its syscall. */
  go(): void;
  /** Resolves when it has written "go": it is about to make its syscall. */
  going: Promise<void>;
  result: Promise<ProbeResult>;
}

/**
 * A probe that starts, reports ready, and makes its syscall only on `go()`, so that many
 * probes can be lined up on events (fs-probe.mjs, NARFS_PROBE_GATE). `result` rejects if the
 * probe fails or takes longer than `timeoutMs` after starting.
 */
export function gatedProbe(op: string, path: string, timeoutMs = 120_000): GatedProbe {
  const child = spawn(process.execPath, [PROBE, op, path], {
    env: { ...process.env, NARFS_PROBE_GATE: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const seen = (word: string) =>
    new Promise<void>((resolve, reject) => {
      const onData = () => {
        if (stderr.split('\n').includes(word)) {
          child.stderr.off('data', onData);
          resolve();
        }
      };
      child.stderr.on('data', onData);
      child.once('close', () => reject(new Error(`probe ${op} ${path} ended before "${word}": ${stderr}`)));
    });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const ready = seen('ready');
  const going = seen('go');
  const result = new Promise<ProbeResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      try {
        resolve(JSON.parse(stdout) as ProbeResult);
      } catch {
        reject(new Error(`probe ${op} ${path} ended (${code ?? signal}) without a result: ${stderr}`));
      }
    });
  });
  // A probe that died is reported through `result`; writing to it must not throw.
  child.stdin.on('error', () => {});
  // Whoever awaits only `result` must not see the others as unhandled rejections.
  ready.catch(() => {});
  going.catch(() => {});
  return { ready, going, result, go: () => child.stdin.end('\n') };
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

/**
 * What the cache stores (trees, complete blobs, partial files) and what is in `tmp/`, for
 * "nothing left in the cache" checks.
 */
export async function cacheFiles(cacheDir: string): Promise<{ stored: string[]; tmp: string[] }> {
  const list = (d: string) => readdir(join(cacheDir, d)).catch(() => [] as string[]);
  const blobs: string[] = [];
  for (const sub of await list('blobs')) blobs.push(...(await list(join('blobs', sub))).map((n) => `blobs/${sub}/${n}`));
  const trees = (await list('trees')).map((n) => `trees/${n}`);
  const partial = (await list('partial')).map((n) => `partial/${n}`);
  return { stored: [...trees, ...blobs, ...partial], tmp: await list('tmp') };
}

/**
 * Resolves once the cache stores nothing and `<cacheDir>/tmp` holds no file, re-checking
 * on every change inotify reports in them (fs.watch), not on a timer; rejects after
 * `timeoutMs` with what is left. A directory that does not exist counts as empty.
 */
export async function untilCacheEmpty(cacheDir: string, timeoutMs = EVENT_TIMEOUT_MS): Promise<void> {
  const ac = new AbortController();
  let changed: () => void = () => {};
  for (const d of ['trees', 'blobs', 'partial', 'tmp']) {
    try {
      watch(join(cacheDir, d), { signal: ac.signal }, () => changed()).on('error', () => changed());
    } catch {
      // absent: nothing to wait for there
    }
  }
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      // Armed before the check, so a change during the check is not missed.
      const next = new Promise<void>((resolve) => (changed = resolve));
      const f = await cacheFiles(cacheDir);
      if (f.stored.length === 0 && f.tmp.length === 0) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`cache not empty after ${timeoutMs / 1000} s: ${JSON.stringify(f)}`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([next, new Promise<void>((resolve) => (timer = setTimeout(resolve, left)))]);
      clearTimeout(timer);
    }
  } finally {
    ac.abort();
  }
}

export const NIX_ENV: NodeJS.ProcessEnv = {
  NIX_CONFIG: 'experimental-features = nix-command\nbuild-users-group =\nsandbox = false\nsubstituters =\n',
};
