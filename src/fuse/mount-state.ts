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
 * wait without end.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';

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

const PROBE = `
const fs = require('node:fs');
try { fs.statfsSync(process.argv[1]); process.stdout.write('ok'); }
catch (e) { process.stdout.write(String(e && e.code)); }
`;

export async function mountState(mountpoint: string, timeoutMs = 10_000): Promise<MountState> {
  const fstype = await mountedType(mountpoint);
  if (fstype === undefined) return 'none';
  if (!/^fuse(\.|blk$|$)/.test(fstype)) return 'other';
  return new Promise<MountState>((resolve) => {
    execFile(process.execPath, ['-e', PROBE, mountpoint], { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout) => {
      const out = String(stdout).trim();
      if (out === 'ok') resolve('live');
      else if (out === 'ENOTCONN' || out === 'ECONNABORTED') resolve('stale');
      else if (err && (err as { killed?: boolean }).killed) resolve('hung');
      else resolve(out === '' ? 'hung' : 'live'); // any other answer came from a daemon
    });
  });
}

/** The fstype of the mount exactly at `mountpoint` (the top one), from /proc/self/mountinfo. */
export async function mountedType(mountpoint: string): Promise<string | undefined> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  let found: string | undefined;
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    if (unescape(fields[4] ?? '') !== mountpoint) continue;
    const dash = fields.indexOf('-');
    if (dash > 0) found = fields[dash + 1];
  }
  return found;
}

/** mountinfo escapes space, tab, newline and backslash as \\ooo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}
