/**
 * PendingNars: verified NARs whose split into blobs a stop interrupted, kept for the next
 * process of the same cache, so that an unmount neither waits for the commit of what was
 * just fetched nor loses it.
 *
 * Layout: `<cache-dir>/pending/<store path hash part>.<NarHash, hex>.<NarSize>.nar`, each
 * the NAR itself, uncompressed (a Materialiser staging file, nar-staging-file.ts). The
 * hash part (the 32 characters before the first `-`) names the store path; a whole base
 * name would not fit NAME_MAX (a store path name may be 211 characters, store-api.cc).
 *
 * Invariants:
 * - An entry comes only from a staging file whose NAR matched NarHash and NarSize in this
 *   process (Materialiser.stop), moved here by rename(2) from tmp/ (same filesystem, both
 *   under the cache directory): never written in place, so an entry is either whole or not
 *   there. Its name says what it claims to be, nothing else is recorded.
 * - Nothing here is trusted: an entry is read again only through the verify worker, which
 *   checks NarHash and NarSize once more against the narinfo in force (a bit flipped on
 *   disk, a torn file after a power loss, a narinfo that changed: the NAR is then fetched
 *   from the datalake as if nothing was kept).
 * - An entry is handed out once (`take`); whoever took it removes it (`PendingNar.drop`).
 *   An entry of the same store path with another NarHash or NarSize is stale and goes
 *   when the path is next taken.
 * - Bounded: every entry counts in the BlobStore's bound (`reserve`) from open until it is
 *   dropped. At open, files that are not entries (other names, a size that is not the
 *   NarSize named), entries older than MAX_AGE_MS and those beyond MAX_SHARE of the bound
 *   (oldest first) are removed; `trimTo` removes entries, oldest first, for `narfs gc`.
 */
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import type { BlobStore } from './blob-store.js';
import { cacheError } from './cache-error.js';

/** An entry older than this is removed at open: its path was not used for a week. */
const MAX_AGE_MS = 7 * 24 * 3600 * 1000;
/** Entries may hold at most this share of the cache's bound at open; the oldest go first. */
const MAX_SHARE = 0.25;
/** `<32 nix32 characters>.<64 hex>.<decimal size>.nar`. */
const NAME = /^([0-9a-df-np-sv-z]{32})\.([0-9a-f]{64})\.(0|[1-9][0-9]{0,15})\.nar$/;
/** The key of a store path base name: its hash part. */
const keyOf = (name: string): string => name.slice(0, 32);

/** A kept NAR handed to one caller. */
export interface PendingNar {
  readonly path: string;
  readonly narSize: number;
  /**
   * Hands its bytes in the bound over to the caller (who calls the function returned once
   * the file is gone); `drop` then removes the file only. Counted once throughout, so
   * nothing is evicted to make room for bytes already held.
   */
  adopt(): () => void;
  /** Removes the file and, unless adopted, lets go of its bytes in the bound (once; never throws). */
  drop(): Promise<void>;
}

interface Entry {
  file: string;
  hash: string;
  size: number;
  mtimeMs: number;
  release: () => void;
}

export class PendingNars {
  readonly dir: string;
  readonly #blobs: BlobStore;
  readonly #logger: Logger;
  /** By store path hash part: one entry per path (a newer one replaces an older). */
  readonly #entries = new Map<string, Entry>();

  private constructor(dir: string, blobs: BlobStore, logger: Logger) {
    this.dir = dir;
    this.#blobs = blobs;
    this.#logger = logger;
  }

  /** Opens (creating) `<cacheDir>/pending`, keeping the entries described in the header. */
  static async open(cacheDir: string, blobs: BlobStore, logger: Logger, now = Date.now()): Promise<PendingNars> {
    const dir = join(cacheDir, 'pending');
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => { throw cacheError(err, `cannot create ${dir}`); });
    const p = new PendingNars(dir, blobs, logger);
    const names = await readdir(dir).catch((err: unknown) => { throw cacheError(err, `cannot list ${dir}`); });
    const found: Array<{ name: string; file: string; hash: string; size: number; mtimeMs: number }> = [];
    const removed: string[] = [];
    for (const file of names) {
      const m = NAME.exec(file);
      const st = await stat(join(dir, file)).catch(() => undefined);
      const size = m ? Number(m[3]) : -1;
      if (!m || !st?.isFile() || !Number.isSafeInteger(size) || st.size !== size || now - st.mtimeMs > MAX_AGE_MS) {
        removed.push(file);
        continue;
      }
      found.push({ name: m[1]!, file, hash: m[2]!, size, mtimeMs: st.mtimeMs });
    }
    // Newest first: within the share, and one per path, the newest wins.
    found.sort((a, b) => b.mtimeMs - a.mtimeMs);
    const share = Number.isFinite(blobs.maxBytes) ? blobs.maxBytes * MAX_SHARE : Number.POSITIVE_INFINITY;
    let held = 0;
    for (const f of found) {
      if (p.#entries.has(f.name) || held + f.size > share) {
        removed.push(f.file);
        continue;
      }
      held += f.size;
      p.#entries.set(f.name, { file: f.file, hash: f.hash, size: f.size, mtimeMs: f.mtimeMs, release: blobs.reserve(f.size) });
    }
    for (const file of removed) await rm(join(dir, file), { recursive: true, force: true }).catch(() => {});
    if (p.#entries.size > 0 || removed.length > 0) {
      logger.info('NARs kept at the last stop', { kept: p.#entries.size, bytes: held, removed: removed.length });
    }
    return p;
  }

  /** Entries held. */
  get size(): number {
    return this.#entries.size;
  }

  /** Bytes held by entries. */
  get bytes(): number {
    let n = 0;
    for (const e of this.#entries.values()) n += e.size;
    return n;
  }

  /**
   * The entry of `name` if it names this NarHash and NarSize, handed over (the caller
   * drops it); an entry of `name` naming another NAR is removed.
   */
  take(name: string, narHash: Buffer, narSize: number): PendingNar | undefined {
    const key = keyOf(name);
    const e = this.#entries.get(key);
    if (!e) return undefined;
    this.#entries.delete(key);
    const handed = this.#handOut(e);
    if (e.hash === narHash.toString('hex') && e.size === narSize) return handed;
    void handed.drop();
    return undefined;
  }

  /** Removes the entry of `name`, if any (its path is held whole by now). */
  async discard(name: string): Promise<void> {
    const key = keyOf(name);
    const e = this.#entries.get(key);
    if (!e) return;
    this.#entries.delete(key);
    await this.#handOut(e).drop();
  }

  /**
   * Keeps the staging file `staging` (a verified NAR of `narSize` bytes hashing to
   * `narHash`) as the entry of `name`, moving it here, with `release`, the end of its
   * reservation in the BlobStore's bound (the staging file's, handed over: the bytes stay
   * counted once, nothing is evicted for them). False (logged) when the move failed: the
   * caller still owns the file and `release`.
   */
  async keep(name: string, narHash: Buffer, narSize: number, staging: string, release: () => void): Promise<boolean> {
    const key = keyOf(name);
    const file = `${key}.${narHash.toString('hex')}.${narSize}.nar`;
    if (!NAME.test(file)) return false;
    try {
      await rename(staging, join(this.dir, file));
    } catch (err) {
      this.#logger.warn('cannot keep a verified NAR for the next start; it is fetched again when read', { path: name, err: cacheError(err, `cannot move ${staging}`) });
      return false;
    }
    const old = this.#entries.get(key);
    this.#entries.set(key, { file, hash: narHash.toString('hex'), size: narSize, mtimeMs: Date.now(), release });
    if (old && old.file !== file) void this.#handOut(old).drop();
    else old?.release();
    return true;
  }

  /** Removes entries, oldest first, until the BlobStore holds at most `maxBytes` (`narfs gc`); returns the bytes freed. */
  async trimTo(maxBytes: number): Promise<{ freed: number; removed: number }> {
    const oldest = [...this.#entries].sort(([, a], [, b]) => a.mtimeMs - b.mtimeMs);
    let freed = 0;
    let removed = 0;
    for (const [name, e] of oldest) {
      if (this.#blobs.stats().bytes <= maxBytes) break;
      this.#entries.delete(name);
      await this.#handOut(e).drop();
      freed += e.size;
      removed++;
    }
    return { freed, removed };
  }

  /** Lets go of every entry's bytes in the bound (the BlobStore closes next); the files stay. */
  close(): void {
    for (const e of this.#entries.values()) e.release();
    this.#entries.clear();
  }

  #handOut(e: Entry): PendingNar {
    const path = join(this.dir, e.file);
    let dropped: Promise<void> | undefined;
    let release: (() => void) | undefined = e.release;
    return {
      path,
      narSize: e.size,
      adopt: () => {
        const r = release ?? (() => {});
        release = undefined;
        return r;
      },
      drop: () => dropped ??= rm(path, { force: true }).catch(() => {}).then(() => release?.()),
    };
  }
}
