/**
 * S3Engine: a real S3 server for the tests — OpenStack Swift with its s3api middleware
 * (Debian's python3-swift), run by scripts/s3_engine.py in one foreground child process of
 * the test, on 127.0.0.1, storing into a temp directory — and a real S3 client (Debian's
 * s3cmd) to fill buckets.
 *
 * Invariants:
 * - readiness is an event, never a sleep: the engine prints its port once every socket is
 *   bound, then one GET /healthcheck must answer 200 (it waits in the listen backlog until
 *   the servers run); both under a deadline that fits a loaded 2-core machine;
 * - `stop()` ends exactly the process it started, by pid (SIGTERM, SIGKILL after a
 *   deadline), waits for its exit, and removes the temp directory;
 * - the credentials are fixed test keys (tempauth): never anybody's real ones;
 * - `available()` says whether python3-swift and s3cmd are installed; with CI=true a missing
 *   engine is a failure (test/support/environment.ts skipOrFail), locally a skip.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('../../scripts/s3_engine.py', import.meta.url));
/** Generous: Swift imports eventlet, paste and lxml; a loaded machine takes seconds. */
const START_DEADLINE_MS = 90_000;
const STOP_DEADLINE_MS = 15_000;

export interface S3EngineInfo {
  port: number;
  pid: number;
  accessKey: string;
  secretKey: string;
  region: string;
}

export class S3Engine {
  /** http://127.0.0.1:<port> */
  readonly endpoint: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly region: string;
  /** Wall time from spawn to the first successful health check. */
  readonly startMs: number;
  private exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
    info: S3EngineInfo,
    startMs: number,
    private readonly stderrTail: () => string,
  ) {
    this.endpoint = `http://127.0.0.1:${info.port}`;
    this.accessKey = info.accessKey;
    this.secretKey = info.secretKey;
    this.region = info.region;
    this.startMs = startMs;
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
  }

  /** True when Swift's s3api and s3cmd are installed (scripts/install-system-deps.sh). */
  static async available(): Promise<boolean> {
    try {
      await run(PYTHON, ['-c', 'import swift.common.middleware.s3api, eventlet'], { timeout: 60_000 });
      await run('s3cmd', ['--version'], { timeout: 60_000 });
      return true;
    } catch {
      return false;
    }
  }

  static async start(): Promise<S3Engine> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'narfs-s3-engine-'));
    const t0 = Date.now();
    const child = spawn(PYTHON, [SCRIPT, '--dir', path.join(dir, 'state')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString()).slice(-8192);
    });
    const tail = () => stderr;
    let info: S3EngineInfo;
    try {
      info = await new Promise<S3EngineInfo>((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`S3 engine did not announce its port within ${START_DEADLINE_MS} ms: ${tail()}`)), START_DEADLINE_MS);
        child.stdout!.on('data', (c: Buffer) => {
          out += c.toString();
          const nl = out.indexOf('\n');
          if (nl >= 0) {
            clearTimeout(timer);
            try {
              resolve(JSON.parse(out.slice(0, nl)) as S3EngineInfo);
            } catch (e) {
              reject(e as Error);
            }
          }
        });
        child.once('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
        child.once('exit', (code, signal) => {
          clearTimeout(timer);
          reject(new Error(`S3 engine exited (${code ?? signal}) before it was ready: ${tail()}`));
        });
      });
      child.stdout!.resume();
      await healthy(info.port, START_DEADLINE_MS - (Date.now() - t0));
    } catch (e) {
      await killAndWait(child);
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
    return new S3Engine(child, dir, info, Date.now() - t0, tail);
  }

  /** `s3://bucket[/prefix]?endpoint=…&region=…` plus extra parameters. */
  url(bucket: string, prefix = '', params: Record<string, string> = {}): string {
    const q = new URLSearchParams({ endpoint: this.endpoint, region: this.region, ...params });
    return `s3://${bucket}${prefix === '' ? '' : '/' + prefix}?${q.toString()}`;
  }

  /** The engine's keys as the AWS tools' environment variables. */
  env(): Record<string, string> {
    return { AWS_ACCESS_KEY_ID: this.accessKey, AWS_SECRET_ACCESS_KEY: this.secretKey };
  }

  /** Runs s3cmd (a real S3 client) against the engine. */
  async s3cmd(args: string[]): Promise<string> {
    const cfg = path.join(this.dir, 's3cfg');
    const host = this.endpoint.replace(/^http:\/\//, '');
    await fsp.writeFile(
      cfg,
      [
        '[default]',
        `access_key = ${this.accessKey}`,
        `secret_key = ${this.secretKey}`,
        `host_base = ${host}`,
        `host_bucket = ${host}`,
        'use_https = False',
        'signature_v2 = False',
        `bucket_location = ${this.region}`,
        'progress_meter = False',
        '',
      ].join('\n'),
    );
    const { stdout } = await run('s3cmd', ['-c', cfg, '--no-mime-magic', ...args], { timeout: 600_000, maxBuffer: 64 << 20 });
    return stdout;
  }

  /** Creates `bucket` and uploads every file under `dir` to `bucket/prefix/…`, with s3cmd. */
  async populate(bucket: string, dir: string, prefix = ''): Promise<void> {
    await this.s3cmd(['mb', `s3://${bucket}`]);
    const dest = `s3://${bucket}/${prefix === '' ? '' : prefix + '/'}`;
    // Single PUTs: the engine runs without multipart uploads (no SLO middleware).
    await this.s3cmd(['put', '--recursive', '--disable-multipart', dir.replace(/\/?$/, '/'), dest]);
  }

  /** Ends the engine (by its pid), waits for it, removes its directory. */
  async stop(): Promise<void> {
    await killAndWait(this.child);
    await this.exited;
    await fsp.rm(this.dir, { recursive: true, force: true });
  }

  /** The engine's last stderr lines, for failure messages. */
  log(): string {
    return this.stderrTail();
  }
}

/** One GET /healthcheck that must answer 200 within `ms` (it waits in the backlog until the engine serves). */
function healthy(port: number, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthcheck', timeout: Math.max(ms, 1) }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new Error(`S3 engine health check answered ${res.statusCode}`));
    });
    req.once('timeout', () => req.destroy(new Error(`S3 engine health check got no answer within ${ms} ms`)));
    req.once('error', reject);
  });
}

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), STOP_DEADLINE_MS);
  });
  if ((await Promise.race([exited.then(() => 'exited' as const), late])) === 'late') {
    child.kill('SIGKILL');
    await exited;
  }
  clearTimeout(timer);
}
