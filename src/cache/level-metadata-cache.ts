/**
 * LevelMetadataCache: the MetadataCache on a `level` (LevelDB) database in
 * `<cache-dir>/meta`.
 *
 * Keys: `ni!<hashPart>` → NarInfoEntry JSON; `neg!<hashPart>` → expiry (ms since epoch);
 * `ls!<hashPart>` → `.ls` JSON text, or for a listing of LARGE_LISTING chars or more the
 * marker `\u0001<bytes>:<crc32>` (no JSON text and no latin1-marked text starts with
 * U+0001) for the text's UTF-8 bytes in the file `listings/<hashPart>.ls` under the
 * database directory (LevelDB ignores it). The file is written whole (temp file + rename)
 * before the marker is put, so a marker only ever names a complete file; a file that is
 * missing or does not match its marker's length and CRC reads as no listing cached. LevelDB allows one process per database: a second
 * daemon on the same cache directory fails with ERR_CACHE_LOCKED (told by classic-level's
 * error code LEVEL_LOCKED, never by the message).
 *
 * Memory: a large listing (a 100,000-file path's `.ls` is ~6 MB) never enters LevelDB,
 * which would copy it into a C++ string, keep it in its memtable until later writes fill
 * writeBufferSize (a daemon that only reads may never do that) and buffer it again when
 * it writes the memtable out; a plain file costs one transient encoding of the text. A
 * listing read does not fill LevelDB's block cache (`fillCache: false`): it is parsed once.
 *
 * A failed write is ERR_CACHE_FULL when the filesystem has (almost) no room left, else
 * ERR_CACHE_IO. LevelDB reports both as LEVEL_IO_ERROR with only a text to tell them
 * apart, so the disk itself is asked (statfs): under FULL_BELOW_BYTES available counts as
 * full. LevelDB's log-write failures are not sticky: once space is freed, writes work
 * again without a reopen (checked on a full tmpfs).
 */
import { mkdir, open, readFile, rename, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Level } from 'level';
import { NarfsError } from '../errors.js';

/** Available bytes under which a LevelDB I/O error is taken for a full disk. */
const FULL_BELOW_BYTES = 1 << 20;
/** Listings at least this long (in chars) are kept in a file of their own (see above). */
export const LARGE_LISTING = 256 * 1024;
const FILE_MARK = '\u0001';
import type { MetadataCache, NarInfoEntry, NarInfoLookup } from './metadata-cache.js';

export class LevelMetadataCache implements MetadataCache {
  readonly #db: Level<string, string>;
  readonly #dir: string;
  #tmpSeq = 0;

  private constructor(db: Level<string, string>, dir: string) {
    this.#db = db;
    this.#dir = dir;
  }

  static async open(dir: string): Promise<LevelMetadataCache> {
    const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
    try {
      await db.open();
    } catch (err) {
      const code = (err as { code?: string }).code;
      const causeCode = (err as { cause?: { code?: string } }).cause?.code;
      const locked = code === 'LEVEL_LOCKED' || causeCode === 'LEVEL_LOCKED';
      if (locked) throw new NarfsError('ERR_CACHE_LOCKED', `cannot open the metadata cache ${dir}: another process has it open`, { cause: err });
      throw new NarfsError((await isFull(dir)) ? 'ERR_CACHE_FULL' : 'ERR_CACHE_IO', `cannot open the metadata cache ${dir}`, { cause: err });
    }
    return new LevelMetadataCache(db, dir);
  }

  async getNarInfo(hashPart: string): Promise<NarInfoLookup | undefined> {
    const pos = await this.#get(`ni!${hashPart}`);
    if (pos !== undefined) return { kind: 'positive', entry: parseEntry(pos) };
    const neg = await this.#get(`neg!${hashPart}`);
    if (neg === undefined) return undefined;
    const expiresAt = Number(neg);
    if (expiresAt > Date.now()) return { kind: 'negative', expiresAt };
    await this.#db.del(`neg!${hashPart}`).catch(() => {});
    return undefined;
  }

  async putNarInfo(hashPart: string, entry: NarInfoEntry): Promise<void> {
    // batch() itself throws on a closed database: build it inside the wrapper.
    await this.#wrap(() => this.#db.batch()
      .put(`ni!${hashPart}`, JSON.stringify(entry))
      .del(`neg!${hashPart}`)
      .write());
  }

  async putNegative(hashPart: string, ttlMs: number): Promise<void> {
    if (ttlMs <= 0) return;
    await this.#wrap(() => this.#db.put(`neg!${hashPart}`, String(Date.now() + ttlMs)));
  }

  async deleteNarInfo(hashPart: string): Promise<void> {
    await this.#wrap(() => this.#db.del(`ni!${hashPart}`));
  }

  async getListing(hashPart: string): Promise<string | undefined> {
    const v = await this.#get(`ls!${hashPart}`, false);
    if (v === undefined || !v.startsWith(FILE_MARK)) return v;
    const [len, crc] = v.slice(1).split(':').map(Number);
    let bytes: Buffer;
    try {
      bytes = await readFile(this.#listingFile(hashPart));
    } catch {
      return undefined;
    }
    if (bytes.length !== len || crc32(bytes) !== crc) return undefined;
    return bytes.toString('utf8');
  }

  async putListing(hashPart: string, json: string): Promise<void> {
    const key = `ls!${hashPart}`;
    if (json.length < LARGE_LISTING) {
      await this.#wrap(() => this.#db.put(key, json));
      return;
    }
    await this.#wrap(async () => {
      const file = this.#listingFile(hashPart);
      const tmp = `${file}.${process.pid}.${this.#tmpSeq++}.tmp`;
      await mkdir(join(this.#dir, 'listings'), { recursive: true });
      let written: { length: number; crc: number };
      try {
        written = await writeUtf8(tmp, json);
        await rename(tmp, file);
      } catch (err) {
        await unlink(tmp).catch(() => {});
        throw err;
      }
      await this.#db.put(key, `${FILE_MARK}${written.length}:${written.crc}`);
    });
  }

  async deleteListing(hashPart: string): Promise<void> {
    await this.#wrap(() => this.#db.del(`ls!${hashPart}`));
    await unlink(this.#listingFile(hashPart)).catch(() => {});
  }

  #listingFile(hashPart: string): string {
    return join(this.#dir, 'listings', `${hashPart}.ls`);
  }

  async knownNames(): Promise<string[]> {
    const names: string[] = [];
    await this.#wrap(async () => {
      for await (const value of this.#db.values({ gt: 'ni!', lt: 'ni"' })) names.push(parseEntry(value).name);
    });
    return names;
  }

  async close(): Promise<void> {
    await this.#db.close();
  }

  async #get(key: string, fillCache = true): Promise<string | undefined> {
    try {
      const v = await this.#db.get(key, { fillCache });
      return v ?? undefined;
    } catch (err) {
      if ((err as { code?: string }).code === 'LEVEL_NOT_FOUND') return undefined;
      throw new NarfsError('ERR_CACHE_IO', `metadata cache read failed`, { cause: err });
    }
  }

  async #wrap(op: () => Promise<unknown>): Promise<void> {
    try {
      await op();
    } catch (err) {
      if (err instanceof NarfsError) throw err;
      const full = (err as { code?: string }).code === 'LEVEL_IO_ERROR' && (await isFull(this.#dir));
      throw new NarfsError(full ? 'ERR_CACHE_FULL' : 'ERR_CACHE_IO', `metadata cache write failed${full ? ': the disk is full' : ''}`, { cause: err });
    }
  }
}

/** Chars of a listing encoded and written at a time (the whole text is never encoded at once). */
const WRITE_CHUNK = 256 * 1024;

/**
 * Writes `text` as UTF-8 to a new file `path` a chunk at a time (a chunk never ends
 * between the two halves of a surrogate pair); returns the byte length and CRC32.
 */
async function writeUtf8(path: string, text: string): Promise<{ length: number; crc: number }> {
  const fh = await open(path, 'wx');
  try {
    let length = 0;
    let crc = 0;
    for (let i = 0; i < text.length;) {
      let end = Math.min(text.length, i + WRITE_CHUNK);
      const last = text.charCodeAt(end - 1);
      if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
      const chunk = Buffer.from(text.slice(i, end), 'utf8');
      await fh.write(chunk);
      crc = crc32(chunk, crc);
      length += chunk.length;
      i = end;
    }
    return { length, crc };
  } finally {
    await fh.close();
  }
}

/** Whether the filesystem holding `dir` has less than FULL_BELOW_BYTES available. */
async function isFull(dir: string): Promise<boolean> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize < FULL_BELOW_BYTES;
  } catch {
    return false;
  }
}

function parseEntry(json: string): NarInfoEntry {
  try {
    const e = JSON.parse(json) as NarInfoEntry;
    if (typeof e.name !== 'string' || typeof e.text !== 'string' || typeof e.source !== 'string') throw new Error('missing fields');
    return e;
  } catch (err) {
    throw new NarfsError('ERR_CACHE_IO', 'a metadata cache entry is corrupt', { cause: err, hint: 'Delete the cache directory\'s meta/ to rebuild it.' });
  }
}
