/**
 * parseNetrc / findNetrcEntry: the netrc file Nix's `netrc-file` setting names (Nix hands
 * it to curl with CURLOPT_NETRC_FILE, CURL_NETRC_OPTIONAL; src/libstore/filetransfer.cc),
 * read here with curl's rules (lib/netrc.c):
 *
 *   machine cache.example.org login alice password "s3cret with spaces"
 *   default login anonymous password guest
 *
 * - tokens are separated by any whitespace, newlines included, so an entry may span lines;
 * - a token may be double-quoted, with \" \\ \n \r \t escapes (curl 7.84 and later);
 * - `machine NAME` starts an entry for the host NAME (matched case-insensitively against
 *   the host name, without the port, as curl does); `default` starts an entry for any host;
 *   the first entry that matches wins, so `default` belongs at the end;
 * - `login`, `password` and `account` take a value; `macdef NAME` is followed by a macro
 *   body that runs up to the next empty line and is skipped;
 * - a line whose first non-blank character is `#` is a comment.
 *
 * Invariant: no error message repeats a token of the file (it holds passwords); errors
 * name the line number and the keyword only.
 */
import { NarfsError } from '../errors.js';

export interface NetrcEntry {
  /** Lower-cased host name, or undefined for the `default` entry. */
  machine: string | undefined;
  login?: string;
  password?: string;
}

interface Token {
  text: string;
  line: number;
}

/** Parses netrc text into its entries, in file order. `whence` names the file in errors. */
export function parseNetrc(text: string, whence = 'the netrc file'): NetrcEntry[] {
  const tokens = tokenize(text, whence);
  const entries: NetrcEntry[] = [];
  let current: NetrcEntry | undefined;
  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i]!;
    const value = (): string => {
      const v = tokens[++i];
      if (v === undefined) {
        throw new NarfsError('ERR_DATALAKE_FILE', `${whence}, line ${tok.line}: '${tok.text}' has no value`);
      }
      return v.text;
    };
    switch (tok.text) {
      case 'machine':
        current = { machine: value().toLowerCase() };
        entries.push(current);
        break;
      case 'default':
        current = { machine: undefined };
        entries.push(current);
        break;
      case 'login':
      case 'password': {
        const v = value();
        if (current) current[tok.text] = v;
        break;
      }
      case 'account':
        value();
        break;
      case 'macdef':
        // tokenize() already dropped the macro body; only its name is left here.
        value();
        break;
      default:
        // curl skips what it does not know; so do we (without echoing it).
        break;
    }
  }
  return entries;
}

/** The first entry for `hostname` (a `machine` of that name, or `default`), as curl picks it. */
export function findNetrcEntry(entries: readonly NetrcEntry[], hostname: string): NetrcEntry | undefined {
  const host = hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  return entries.find((e) => e.machine === undefined || e.machine === host);
}

const VALUE_KEYWORDS = new Set(['machine', 'login', 'password', 'account', 'macdef']);

function tokenize(text: string, whence: string): Token[] {
  const tokens: Token[] = [];
  const lines = text.split(/\r?\n/);
  let inMacro = false;
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!;
    if (inMacro) {
      if (line.trim() === '') inMacro = false;
      continue;
    }
    if (/^\s*#/.test(line)) continue;
    let i = 0;
    while (i < line.length) {
      const c = line[i]!;
      if (/\s/.test(c)) {
        i++;
        continue;
      }
      let tok = '';
      if (c === '"') {
        i++;
        let closed = false;
        while (i < line.length) {
          const d = line[i++]!;
          if (d === '"') {
            closed = true;
            break;
          }
          if (d === '\\' && i < line.length) {
            const e = line[i++]!;
            tok += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e;
          } else {
            tok += d;
          }
        }
        if (!closed) throw new NarfsError('ERR_DATALAKE_FILE', `${whence}, line ${n + 1}: a quoted token is not closed`);
      } else {
        while (i < line.length && !/\s/.test(line[i]!)) tok += line[i++];
      }
      tokens.push({ text: tok, line: n + 1 });
      const prev = tokens[tokens.length - 2];
      const beforePrev = tokens[tokens.length - 3];
      if (prev?.text === 'macdef' && !VALUE_KEYWORDS.has(beforePrev?.text ?? '')) {
        // The macro body starts on the next line and runs up to an empty line.
        inMacro = true;
        break;
      }
    }
  }
  return tokens;
}
