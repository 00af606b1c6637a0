/**
 * mountState: what is mounted at a directory, and whether a FUSE mount there still has a
 * live daemon — decided without ever making a call on that mount from this process, so a
 * hung mount cannot hang the caller.
 *
 * Why not `stat`: after a daemon dies, the kernel keeps answering `stat` of the mount root
 * from its attribute cache (narfs asks for long attribute timeouts), so a stale mount can
 * look healthy. FUSE_STATFS is never cached: `statfs` reaches the daemon or fails with
 * ENOTCONN when the connection is gone (fs/fuse/inode.c, fuse_statfs). It runs in a child
 * process with a deadline: a live daemon that does not answer ends as 'hung', not as a
 * wait without end. The child is coreutils' `stat --file-system` (statfs(2), ~1 ms to
 * start), not a Node process (~60-90 ms): a mount's start-up waits for this check before
 * it says "mounted" (bench scenario 1 counts it). Its message is read in the C locale.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { NarfsError } from '../errors.js';

export type MountState =
  /** Nothing is mounted at the directory. */
  | 'none'
  /** Something that is not FUSE is mounted there. */
  | 'other'
  /** A FUSE mount whose daemon answered. */
  | 'live'
  /** A FUSE mount whose connection is gone (its daemon died): detach it. */
  | 'stale'
  /** A FUSE mount whose daemon did not answer within the deadline. */
  | 'hung';

/** What `stat` says (strerror, C locale) for ENOTCONN and ECONNABORTED: the connection is gone. */
const GONE = /(Transport endpoint is not connected|Software caused connection abort)$/m;

export async function mountState(mountpoint: string, timeoutMs = 10_000): Promise<MountState> {
  const fstype = await mountedType(mountpoint);
  if (fstype === undefined) return 'none';
  if (!/^fuse(\.|blk$|$)/.test(fstype)) return 'other';
  return new Promise<MountState>((resolve, reject) => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C' };
    execFile('stat', ['--file-system', '--format=ok', '--', mountpoint], { timeout: timeoutMs, killSignal: 'SIGKILL', env }, (err, stdout, stderr) => {
      const out = String(stdout).trim();
      const said = String(stderr).trim();
      if (out === 'ok') resolve('live');
      else if (GONE.test(said)) resolve('stale');
      else if (err && (err as { killed?: boolean }).killed) resolve('hung');
      else if (err && (err as { code?: unknown }).code === 'ENOENT') {
        // No verdict either way: the caller keeps the cause (mount-daemon.ts).
        reject(new NarfsError('ERR_MOUNT', `cannot check whether ${mountpoint} answers: stat(1) is not on PATH`, {
          hint: 'install coreutils', cause: err,
        }));
      }
      else resolve(said === '' ? 'hung' : 'live'); // any other answer (an errno) came from a daemon
    });
  });
}

/** The fstype of the mount exactly at `mountpoint` (the top one), from /proc/self/mountinfo. */
export async function mountedType(mountpoint: string): Promise<string | undefined> {
  return (await mountEntry(mountpoint))?.fstype;
}

/**
 * The top mount exactly at `mountpoint` in /proc/self/mountinfo: its fstype and its device
 * (`major:minor`, field 3; a FUSE mount's is unique to its connection, so it tells one
 * mount from a later one at the same place).
 */
export async function mountEntry(mountpoint: string): Promise<{ fstype: string; dev: string } | undefined> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  let found: { fstype: string; dev: string } | undefined;
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    if (unescape(fields[4] ?? '') !== mountpoint) continue;
    const dash = fields.indexOf('-');
    if (dash > 0) found = { fstype: fields[dash + 1] ?? '', dev: fields[2] ?? '' };
  }
  return found;
}

/** mountinfo escapes space, tab, newline and backslash as \\ooo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}
