/**
 * readSecretFile: reads a file that holds a secret (bearer token, netrc, AWS shared
 * credentials, a signing key) only when no one but its owner can read it, as ssh does
 * for private keys (ssh's sshkey_perm_ok: "permissions 0644 are too open").
 *
 * Rules, checked on the descriptor that is read (fstat after open, so a file swapped
 * between the check and the read cannot slip through):
 * - no permission bits for group or others (`mode & 0o077 === 0`): 0600 and 0400 pass,
 *   0640, 0644 and 0604 are refused;
 * - the owner is the reading user or root (root-owned files under /etc or
 *   /run/credentials, read by a root daemon or through group-less 0400 systemd
 *   credentials, pass);
 * - a regular file (no FIFO or device that could block the read).
 * A refusal is ERR_SECRET_PERMISSIONS naming the file and its mode, with the hint
 * `chmod 600 FILE`; nothing of the contents is ever put into an error.
 *
 * Absence is reported as the caller wants it: `readSecretFile` throws the fs error
 * (ENOENT …) for the caller to wrap, so each caller keeps its own code and message.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { NarfsError } from '../errors.js';

/** Group or other permission bits: any of them set makes a secret file too open. */
const OPEN_TO_OTHERS = 0o077;

export interface SecretFileCheck {
  mode: number;
  uid: number;
  isFile: boolean;
}

/** Why `st` is not a private file for `uid`, or undefined when it is. */
export function secretFileProblem(st: SecretFileCheck, uid: number): string | undefined {
  if (!st.isFile) return 'is not a regular file';
  if ((st.mode & OPEN_TO_OTHERS) !== 0) return `is accessible by others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  if (st.uid !== uid && st.uid !== 0) return `belongs to uid ${st.uid}, neither you (uid ${uid}) nor root`;
  return undefined;
}

/**
 * The contents of secret file `file` (`what` names its role in messages: "bearer token
 * file"). Throws ERR_SECRET_PERMISSIONS when it is not private; fs errors pass through.
 */
export async function readSecretFile(file: string, what: string): Promise<Buffer> {
  const fh = await open(file, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    const uid = process.getuid?.() ?? 0;
    const problem = secretFileProblem({ mode: st.mode, uid: st.uid, isFile: st.isFile() }, uid);
    if (problem !== undefined) {
      throw new NarfsError('ERR_SECRET_PERMISSIONS', `the ${what} ${file} ${problem}; it holds a secret, so narfs will not use it`, {
        details: { file, mode: (st.mode & 0o7777).toString(8), owner: st.uid },
        hint: st.isFile() ? `Make it private: chmod 600 ${file}` : `Give a regular file, readable by its owner only (chmod 600 ${file}).`,
      });
    }
    return await fh.readFile();
  } finally {
    await fh.close().catch(() => {});
  }
}
