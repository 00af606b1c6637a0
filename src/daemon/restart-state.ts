/**
 * RestartState: what lets `narfs mount` under systemd restart — `systemctl restart`, a
 * crash or kill -9 with Restart=on-failure, a watchdog kill — without unmounting.
 *
 * Protocol (systemd.service(5) FileDescriptorStoreMax=, sd_notify(3) FDSTORE=1/FDNAME=/
 * FDSTOREREMOVE=1, sd_listen_fds(3)):
 * - After a fresh mount: `engine.json` ({version, mountpoint, minor, flags}) is written
 *   (write + rename), then every /dev/fuse descriptor of the engine (the mount's and its
 *   clones: a clone closed by a dying process would end the requests read on it with
 *   ECONNABORTED, fs/fuse/dev.c fuse_dev_release) goes to systemd's fd store named "fuse".
 *   The inode journal `inodes` (src/fs/inode-journal.ts) and the record of passthrough
 *   backing ids `backing` (src/fuse/backing-journal.ts) are started empty before the mount.
 * - On start, descriptors passed back (LISTEN_PID = us, LISTEN_FDS from fd 3, names in
 *   LISTEN_FDNAMES) named "fuse" are resumed when engine.json names this mountpoint and a
 *   FUSE filesystem is still mounted there; otherwise they are closed, dropped from the
 *   store, and the mount starts afresh (detaching a stale mount as before).
 * - SIGTERM during a restart job of our unit (asked of systemd: `systemctl list-jobs`):
 *   hand over (no unmount, descriptors stay in the store, state kept). Any other SIGTERM
 *   (`systemctl stop`, no systemd): unmount, FDSTOREREMOVE=1, remove the state.
 * State directory: $RUNTIME_DIRECTORY (the unit's RuntimeDirectory=narfs, kept across
 * restarts by RuntimeDirectoryPreserve=restart), else <cache-dir>/run.
 * Without $NOTIFY_SOCKET (not under systemd), or with $FDSTORE=0 (systemd >= 254 exports
 * the unit's FileDescriptorStoreMax= there), none of this is active.
 */
import { execFile } from 'node:child_process';
import { closeSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import { InodeJournal } from '../fs/inode-journal.js';
import { BackingJournal } from '../fuse/backing-journal.js';
import { mountedType } from '../fuse/mount-state.js';
import { loadNativeAddon, type NegotiatedInit } from '../fuse/native-mount.js';

const execFileP = promisify(execFile);
const STATE_VERSION = 1;
const FD_NAME = 'fuse';
const SD_LISTEN_FDS_START = 3;

interface EngineState extends NegotiatedInit {
  version: number;
  mountpoint: string;
}

/** Descriptors systemd passed to this process, by name (consumed: LISTEN_* are unset). */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const pid = Number(env['LISTEN_PID']);
  const n = Number(env['LISTEN_FDS']);
  const names = (env['LISTEN_FDNAMES'] ?? '').split(':');
  delete env['LISTEN_PID'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_FDNAMES'];
  if (pid !== process.pid || !Number.isInteger(n) || n <= 0) return out;
  for (let i = 0; i < n; i++) {
    const name = names[i] || 'unknown';
    if (!out.has(name)) out.set(name, []);
    out.get(name)!.push(SD_LISTEN_FDS_START + i);
  }
  return out;
}

export class RestartState {
  readonly dir: string;
  readonly #log: Logger;
  readonly #passed: number[];
  #adopted = false;

  private constructor(dir: string, passed: number[], logger: Logger) {
    this.dir = dir;
    this.#passed = passed;
    this.#log = logger;
  }

  /** Active under systemd with an fd store; undefined otherwise (nothing is kept). */
  static fromEnvironment(cacheDir: string, logger: Logger): RestartState | undefined {
    const passed = takeListenFds();
    const fuse = passed.get(FD_NAME) ?? [];
    for (const [name, fds] of passed) if (name !== FD_NAME) for (const fd of fds) closeQuietly(fd);
    if (!process.env['NOTIFY_SOCKET'] || process.env['FDSTORE'] === '0') {
      for (const fd of fuse) closeQuietly(fd);
      return undefined;
    }
    return new RestartState(process.env['RUNTIME_DIRECTORY']?.split(':')[0] || join(cacheDir, 'run'), fuse, logger);
  }

  get #statePath(): string {
    return join(this.dir, 'engine.json');
  }

  get adopted(): boolean {
    return this.#adopted;
  }

  /**
   * The descriptors to resume, when the previous process left a usable connection for
   * `mountpoint`; otherwise undefined, and passed descriptors are closed and dropped.
   */
  async resumable(mountpoint: string): Promise<({ fds: number[] } & NegotiatedInit) | undefined> {
    if (this.#passed.length === 0) return undefined;
    let why = '';
    try {
      const state = JSON.parse(await readFile(this.#statePath, 'utf8')) as EngineState;
      const fstype = await mountedType(mountpoint);
      if (state.version !== STATE_VERSION || state.mountpoint !== mountpoint) why = 'its state names another mount';
      else if (fstype === undefined || !fstype.startsWith('fuse')) why = `${mountpoint} is no longer a FUSE mount`;
      else {
        this.#adopted = true;
        this.#log.info('resuming the FUSE connection of the previous process', { mountpoint, fds: this.#passed.length });
        return { fds: [...this.#passed], minor: state.minor, flags: state.flags };
      }
    } catch (err) {
      why = `no readable ${this.#statePath} (${(err as Error).message})`;
    }
    this.#log.warn('not resuming the stored FUSE connection; mounting afresh', { why });
    this.dropStored();
    return undefined;
  }

  /** The inode journal: continued when resuming, empty for a fresh mount. */
  async openJournal(): Promise<InodeJournal> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    try {
      return InodeJournal.open(join(this.dir, 'inodes'), { fresh: !this.#adopted });
    } catch (err) {
      throw new NarfsError('ERR_RESTART_STATE', `cannot open the inode journal in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * The record of passthrough backing ids (src/fuse/backing-journal.ts): continued when
   * resuming (the ids of the earlier processes stay in use), empty for a fresh mount.
   */
  async openBackingJournal(): Promise<BackingJournal> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    try {
      return BackingJournal.open(join(this.dir, 'backing'), { fresh: !this.#adopted });
    } catch (err) {
      throw new NarfsError('ERR_RESTART_STATE', `cannot open the backing id record in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** After a fresh mount: the state file, then the descriptors into the fd store. */
  async save(mountpoint: string, init: NegotiatedInit, fds: number[]): Promise<void> {
    if (!this.#adopted) {
      const state: EngineState = { version: STATE_VERSION, mountpoint, minor: init.minor, flags: init.flags };
      const tmp = `${this.#statePath}.tmp`;
      await writeFile(tmp, JSON.stringify(state));
      await rename(tmp, this.#statePath);
    }
    // Also after resuming: systemd keeps one copy of a descriptor it already stores.
    const err = loadNativeAddon().sdNotifyFds(`FDSTORE=1\nFDNAME=${FD_NAME}`, fds);
    if (err !== 0) this.#log.warn('cannot store the FUSE descriptors in systemd: a restart will remount', { errno: err });
    else this.#log.info('FUSE descriptors stored in systemd (restart keeps the mount)', { fds: fds.length });
  }

  /** A clean stop: nothing to resume any more. */
  async clear(): Promise<void> {
    this.dropStored();
    await rm(this.#statePath, { force: true });
    await rm(join(this.dir, 'inodes'), { force: true });
    await rm(join(this.dir, 'backing'), { force: true });
  }

  dropStored(): void {
    for (const fd of this.#passed.splice(0)) if (!this.#adopted) closeQuietly(fd);
    loadNativeAddon().sdNotifyFds(`FDSTOREREMOVE=1\nFDNAME=${FD_NAME}`, []);
  }

  /**
   * Whether systemd is restarting our unit right now (a restart job is running), so a
   * SIGTERM asks for a handover rather than an unmount.
   */
  static async restartPending(logger: Logger): Promise<boolean> {
    const unit = ownUnit();
    if (!unit) return false;
    try {
      const { stdout } = await execFileP('systemctl', ['list-jobs', '--no-legend', '--no-pager', '--full'], { timeout: 10_000 });
      for (const line of stdout.split('\n')) {
        const [, name, type] = line.trim().split(/\s+/);
        if (name === unit) return type === 'restart' || type === 'try-restart' || type === 'reload-or-restart';
      }
      return false;
    } catch (err) {
      logger.warn('cannot ask systemd whether this is a restart; unmounting', { err: (err as Error).message });
      return false;
    }
  }
}

/** Our unit's name, from the cgroup systemd put us in. */
function ownUnit(): string | undefined {
  try {
    const cg = readFileSync('/proc/self/cgroup', 'utf8');
    const m = /\/([^/\n]+\.service)(?:\/|$)/m.exec(cg);
    return m?.[1];
  } catch {
    return undefined;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
