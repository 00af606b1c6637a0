/**
 * SliceSource: where a slice list comes from (`--slice FILE|URL`) and the copy of it kept
 * on disk for offline starts.
 *
 * - A FILE is read whole at each fetch; "unchanged" when its text is the one in hand.
 * - An http(s) URL is fetched by ConditionalGet with the datalake's credentials for that origin (HttpAuth:
 *   a bearer token file scoped to the host or global, the netrc entry, user:pass in the
 *   URL), the CA bundle and proxy of the datalakes, and the deadlines and retries of
 *   HttpTransfer. Requests are conditional: the ETag and Last-Modified of the list in hand
 *   go out as If-None-Match and If-Modified-Since, and a 304 keeps the list (RFC 9110
 *   §13.1). 401 (and 403 with credentials configured) is ERR_DATALAKE_AUTH after one
 *   re-read of the credential files; 404 and any other status are ERR_SLICE_FETCH.
 * - The kept copy (`<cache-dir>/slice/kept.json`, mode 0600, written to a temp file and
 *   renamed) holds the list text, its validators and the closures last computed; it is
 *   used only for the same `--slice` (identified by a SHA-256 of the location, which may
 *   carry credentials, so the location itself is never written).
 *
 * Invariant: no message, log field or kept file carries a credential: URLs are shown as
 * origin + path, without user:pass or query.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NarfsError } from '../errors.js';
import { ConditionalGet } from '../datalake/conditional-get.js';
import type { HttpAccessOptions } from '../datalake/http-datalake.js';
import type { StorePath } from '../nix/store-path.js';
import { parseSliceList } from './slice-list.js';

export interface SliceSnapshot {
  roots: StorePath[];
  text: string;
  etag?: string;
  lastModified?: string;
  /** ms since the epoch of the last fetch that returned (or confirmed) this list. */
  fetchedAt: number;
}

export interface KeptSlice extends SliceSnapshot {
  /** Root basename → closure basenames, as last computed. */
  closures: Record<string, string[]>;
}

export interface SliceFetch {
  changed: boolean;
  snapshot: SliceSnapshot;
}

const KEPT_VERSION = 1;

export class SliceSource {
  /** The location without credentials or query: for messages. */
  readonly display: string;
  readonly #location: string;
  readonly #id: string;
  readonly #keptFile: string;
  readonly #http: ConditionalGet | undefined;
  #current: SliceSnapshot | undefined;

  constructor(location: string, cacheDir: string, access: HttpAccessOptions = {}) {
    this.#location = location;
    this.#id = createHash('sha256').update(location).digest('hex');
    this.#keptFile = join(cacheDir, 'slice', 'kept.json');
    if (/^https?:\/\//i.test(location)) {
      let u: URL;
      try {
        u = new URL(location);
      } catch {
        throw new NarfsError('ERR_USAGE', '--slice is not a valid URL');
      }
      this.#http = new ConditionalGet(u, access);
      this.display = this.#http.display;
    } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location) && !location.startsWith('file://')) {
      throw new NarfsError('ERR_USAGE', '--slice is a file or an http(s):// URL');
    } else {
      this.display = location.startsWith('file://') ? new URL(location).pathname : location;
    }
  }

  /** The list kept by an earlier run for this same --slice, if any. */
  async loadKept(): Promise<KeptSlice | undefined> {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(this.#keptFile, 'utf8'));
    } catch {
      return undefined;
    }
    const k = raw as { version?: number; id?: string; text?: unknown; etag?: unknown; lastModified?: unknown; fetchedAt?: unknown; closures?: unknown };
    if (k.version !== KEPT_VERSION || k.id !== this.#id || typeof k.text !== 'string') return undefined;
    try {
      const snapshot: KeptSlice = {
        roots: parseSliceList(k.text, `${this.#keptFile} (kept copy of ${this.display})`),
        text: k.text,
        fetchedAt: typeof k.fetchedAt === 'number' ? k.fetchedAt : 0,
        closures: isClosures(k.closures) ? k.closures : {},
      };
      if (typeof k.etag === 'string') snapshot.etag = k.etag;
      if (typeof k.lastModified === 'string') snapshot.lastModified = k.lastModified;
      this.#current = snapshot;
      return snapshot;
    } catch {
      return undefined;
    }
  }

  /** Writes the list in hand and its closures for the next offline start. */
  async keep(closures: ReadonlyMap<string, readonly string[]>): Promise<void> {
    const s = this.#current;
    if (!s) return;
    const dir = join(this.#keptFile, '..');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const body = JSON.stringify({
      version: KEPT_VERSION, id: this.#id, source: this.display, text: s.text,
      ...(s.etag ? { etag: s.etag } : {}), ...(s.lastModified ? { lastModified: s.lastModified } : {}),
      fetchedAt: s.fetchedAt, closures: Object.fromEntries(closures),
    });
    const tmp = `${this.#keptFile}.${process.pid}.tmp`;
    await writeFile(tmp, body, { mode: 0o600 });
    await rename(tmp, this.#keptFile);
  }

  /** Fetches the list (conditionally, for a URL). Throws a NarfsError; the list in hand stays. */
  async fetch(signal?: AbortSignal): Promise<SliceFetch> {
    const fetched = this.#http ? await this.#http.get(this.#current, signal) : await this.#readFile();
    if (fetched === 'not-modified') {
      this.#current!.fetchedAt = Date.now();
      return { changed: false, snapshot: this.#current! };
    }
    const { text, etag, lastModified } = fetched;
    const prev = this.#current;
    if (prev && prev.text === text) {
      prev.fetchedAt = Date.now();
      if (etag) prev.etag = etag;
      if (lastModified) prev.lastModified = lastModified;
      return { changed: false, snapshot: prev };
    }
    const snapshot: SliceSnapshot = { roots: parseSliceList(text, this.display), text, fetchedAt: Date.now() };
    if (etag) snapshot.etag = etag;
    if (lastModified) snapshot.lastModified = lastModified;
    this.#current = snapshot;
    return { changed: true, snapshot };
  }

  async close(): Promise<void> {
    await this.#http?.close();
  }

  async #readFile(): Promise<{ text: string; etag?: string; lastModified?: string }> {
    const file = this.display;
    const text = await readFile(file, 'utf8').catch((err: unknown) => {
      throw new NarfsError('ERR_SLICE_FETCH', `cannot read the slice list ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { cause: err });
    });
    return { text };
  }

}

function isClosures(v: unknown): v is Record<string, string[]> {
  return typeof v === 'object' && v !== null && Object.values(v).every((a) => Array.isArray(a) && a.every((s) => typeof s === 'string'));
}
