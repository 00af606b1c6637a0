/**
 * Where narfs keeps things for a normal user, by the XDG Base Directory rules:
 * the cache under `$XDG_CACHE_HOME/narfs` (else `~/.cache/narfs`), mode 0700, and the
 * settings file `$XDG_CONFIG_HOME/narfs/narfs.conf` (else `~/.config/narfs/narfs.conf`),
 * read when it exists and no --config is given. Root keeps the system defaults
 * (/var/cache/narfs, no implicit settings file), as a service would have them.
 * A relative XDG variable is ignored, as the specification says.
 */
import { chmod, mkdir, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { NarfsError } from '../errors.js';

export const SYSTEM_CACHE_DIR = '/var/cache/narfs';

function xdg(env: NodeJS.ProcessEnv, name: 'XDG_CACHE_HOME' | 'XDG_CONFIG_HOME', fallback: string): string {
  const v = env[name];
  if (v && isAbsolute(v)) return v;
  const home = env.HOME && isAbsolute(env.HOME) ? env.HOME : homedir();
  return join(home, fallback);
}

/** The cache directory when --cache-dir is not given. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): string {
  return uid === 0 ? SYSTEM_CACHE_DIR : join(xdg(env, 'XDG_CACHE_HOME', '.cache'), 'narfs');
}

/** The settings file read when --config is not given (a normal user's only). */
export function defaultConfigFile(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): string | undefined {
  return uid === 0 ? undefined : join(xdg(env, 'XDG_CONFIG_HOME', '.config'), 'narfs', 'narfs.conf');
}

/** Whether `file` exists (an unreadable one counts: reading it then says why). */
export async function exists(file: string): Promise<boolean> {
  return stat(file).then(() => true, (e: NodeJS.ErrnoException) => e.code !== 'ENOENT' && e.code !== 'ENOTDIR');
}

/** Creates the user's cache directory 0700, and takes group and other bits off one that exists. */
export async function ensurePrivateDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const st = await stat(dir);
    if ((st.mode & 0o077) !== 0) await chmod(dir, st.mode & 0o700);
  } catch (err) {
    throw new NarfsError('ERR_CACHE_IO', `cannot create the cache directory ${dir} (mode 0700)`, { cause: err });
  }
}
