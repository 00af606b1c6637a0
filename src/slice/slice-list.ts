/**
 * parseSliceList: the text of a slice list (`--slice FILE|URL`) → its root store paths.
 *
 * Format: one root per line, as a full store path (`/nix/store/<hash>-<name>`) or its
 * basename (`<hash>-<name>`), the forms `nix path-info` prints and `narfs register
 * --from-file` reads; `#` starts a comment anywhere on a line; blank lines and
 * surrounding whitespace are ignored; CRLF line ends are accepted; a root given twice
 * counts once.
 *
 * Invariant: a list is taken whole or not at all. Any line that is not a store path
 * (another store directory, a path inside a store path, a bad hash) fails the whole list
 * with ERR_SLICE_PARSE naming the line, so a truncated or mangled download never shrinks
 * what the user sees: the caller keeps its previous list.
 */
import { NarfsError } from '../errors.js';
import { parseStorePathBase, storePathBase, STORE_DIR, type StorePath } from '../nix/store-path.js';

/** More roots than this is not a slice but a mistake (or an attack on memory). */
export const MAX_SLICE_ROOTS = 1_000_000;

export function parseSliceList(text: string, whence: string): StorePath[] {
  const out: StorePath[] = [];
  const seen = new Set<string>();
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.replace(/#.*/, '').trim();
    if (line === '') continue;
    let base = line;
    if (line.startsWith('/')) {
      if (!line.startsWith(STORE_DIR + '/') || line.slice(STORE_DIR.length + 1).includes('/')) {
        throw new NarfsError('ERR_SLICE_PARSE', `${whence}, line ${n + 1}: not a store path of ${STORE_DIR} (a path inside one, or another store directory)`);
      }
      base = line.slice(STORE_DIR.length + 1);
    }
    let sp: StorePath;
    try {
      sp = parseStorePathBase(base);
    } catch (err) {
      throw new NarfsError('ERR_SLICE_PARSE', `${whence}, line ${n + 1}: not a store path`, { cause: err });
    }
    const key = storePathBase(sp);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(sp);
    if (out.length > MAX_SLICE_ROOTS) throw new NarfsError('ERR_SLICE_PARSE', `${whence}: more than ${MAX_SLICE_ROOTS} roots`);
  }
  return out;
}
