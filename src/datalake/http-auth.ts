/**
 * HttpAuth: the Authorization header an HttpDatalake sends to its own origin, from (most
 * specific first):
 *   1. user:password in the datalake URL (Basic);
 *   2. a bearer token file scoped to this host (`--bearer-token-file HOST=FILE`);
 *   3. a `machine` entry of the netrc file for this host (Basic; Nix's `netrc-file`);
 *   4. a bearer token file without a host (`--bearer-token-file FILE`: every http(s)
 *      datalake that nothing above covers);
 *   5. the `default` entry of the netrc file.
 * A host is matched by name, or by name:port when the scope gives a port.
 *
 * Token and netrc files must be private (readSecretFile: no group/other bits, owned by
 * the user or root), else ERR_SECRET_PERMISSIONS. Files are read by `load()` (at `open()` and again whenever `refresh()` is asked, after a
 * 401: a rotated token is picked up without a restart), never in the constructor. A token
 * file holds one token; surrounding whitespace is trimmed, and anything but visible ASCII
 * inside it is refused (it would end up in a header).
 *
 * Invariant: the header value never leaves this object except as the request header to the
 * datalake's own origin (the redirect interceptor drops it across origins). Error messages
 * name files, never their contents.
 */
import { NarfsError } from '../errors.js';
import { findNetrcEntry, parseNetrc } from './netrc.js';
import { readSecretFile } from './secret-file.js';

export interface BearerTokenFile {
  /** File holding the token. */
  file: string;
  /** Host name (or host:port) the token is for; unset = every http(s) datalake. */
  host?: string;
}

export interface HttpAuthOptions {
  /** A netrc file (Nix's `netrc-file`): `machine HOST login USER password PASS`. */
  netrcFile?: string;
  /** Bearer token files, scoped to a host or not. */
  bearerTokenFiles?: readonly BearerTokenFile[];
}

/** Parses `[HOST=]FILE` as given to --bearer-token-file. */
export function parseBearerTokenFile(spec: string): BearerTokenFile {
  const m = /^([^=/]+)=(.+)$/.exec(spec);
  return m ? { host: m[1]!.trim(), file: m[2]!.trim() } : { file: spec.trim() };
}

export class HttpAuth {
  private readonly urlBasic: string | undefined;
  private readonly scopedToken: string | undefined;
  private readonly globalToken: string | undefined;
  private readonly netrcFile: string | undefined;
  private readonly hostname: string;
  private current: string | undefined;
  private loading: Promise<void> | undefined;

  constructor(url: URL, options: HttpAuthOptions = {}) {
    this.hostname = url.hostname;
    if (url.username !== '' || url.password !== '') {
      this.urlBasic = basic(safeDecode(url.username), safeDecode(url.password));
    }
    const host = url.hostname.toLowerCase();
    const hostPort = url.host.toLowerCase();
    for (const t of options.bearerTokenFiles ?? []) {
      const scope = t.host?.toLowerCase();
      if (scope === undefined) this.globalToken ??= t.file;
      else if (scope === host || scope === hostPort) this.scopedToken ??= t.file;
    }
    this.netrcFile = options.netrcFile;
    this.current = this.urlBasic;
  }

  /** Whether any credentials apply to this origin (complete once `load()` has run). */
  get configured(): boolean {
    return this.current !== undefined;
  }

  /** The Authorization header value, if any. */
  header(): string | undefined {
    return this.current;
  }

  /** (Re)reads the token and netrc files. Concurrent calls share one read. */
  load(): Promise<void> {
    this.loading ??= this.read().finally(() => {
      this.loading = undefined;
    });
    return this.loading;
  }

  /** Re-reads the files; true when the header changed (worth one more try after a 401). */
  async refresh(): Promise<boolean> {
    const before = this.current;
    await this.load();
    return this.current !== before;
  }

  private async read(): Promise<void> {
    if (this.urlBasic !== undefined) {
      this.current = this.urlBasic;
      return;
    }
    if (this.scopedToken !== undefined) {
      this.current = 'Bearer ' + (await readToken(this.scopedToken));
      return;
    }
    const entry = this.netrcFile === undefined ? undefined : await this.netrcEntry(this.netrcFile);
    if (entry?.machine !== undefined) {
      this.current = basic(entry.login ?? '', entry.password ?? '');
    } else if (this.globalToken !== undefined) {
      this.current = 'Bearer ' + (await readToken(this.globalToken));
    } else if (entry !== undefined) {
      this.current = basic(entry.login ?? '', entry.password ?? '');
    } else {
      this.current = undefined;
    }
  }

  private async netrcEntry(file: string) {
    const text = (await readSecretFile(file, 'netrc file').catch((err: unknown) => {
      if (err instanceof NarfsError) throw err;
      throw new NarfsError('ERR_DATALAKE_FILE', `cannot read the netrc file ${file}`, { cause: err, details: { file } });
    })).toString('utf8');
    const entry = findNetrcEntry(parseNetrc(text, `netrc file ${file}`), this.hostname);
    // An entry without login or password gives nothing to send (curl sends nothing either).
    return entry && (entry.login !== undefined || entry.password !== undefined) ? entry : undefined;
  }
}

async function readToken(file: string): Promise<string> {
  const text = (await readSecretFile(file, 'bearer token file').catch((err: unknown) => {
    if (err instanceof NarfsError) throw err;
    throw new NarfsError('ERR_DATALAKE_FILE', `cannot read the bearer token file ${file}`, { cause: err, details: { file } });
  })).toString('utf8');
  const token = text.trim();
  if (token === '') throw new NarfsError('ERR_DATALAKE_FILE', `the bearer token file ${file} is empty`, { details: { file } });
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new NarfsError('ERR_DATALAKE_FILE', `the bearer token file ${file} holds more than one token, or characters a header cannot carry`, {
      details: { file },
      hint: 'A bearer token file holds one token of visible ASCII characters (surrounding whitespace is ignored).',
    });
  }
  return token;
}

function basic(user: string, pass: string): string {
  return 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
