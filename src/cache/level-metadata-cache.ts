/**
 * LevelMetadataCache: the MetadataCache on a `level` (LevelDB) database in
 * `<cache-dir>/meta`.
 *
 * Keys: `ni!<hashPart>` → NarInfoEntry JSON; `neg!<hashPart>` → expiry (ms since epoch);
 * `ls!<hashPart>` → `.ls` JSON text. LevelDB allows one process per database: a second
 * daemon on the same cache directory fails with ERR_CACHE_LOCKED.
 */
import { Level } from 'level';
import { NarfsError } from '../errors.js';
import type { MetadataCache, NarInfoEntry, NarInfoLookup } from './metadata-cache.js';

export class LevelMetadataCache implements MetadataCache {
  readonly #db: Level<string, string>;

  private constructor(db: Level<string, string>) {
    this.#db = db;
  }

  static async open(dir: string): Promise<LevelMetadataCache> {
    const db = new Level<string, string>(dir, { valueEncoding: 'utf8' });
    try {
      await db.open();
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const locked = /lock/i.test(String(cause?.message ?? '')) || cause?.code === 'LEVEL_LOCKED';
      throw new NarfsError(locked ? 'ERR_CACHE_LOCKED' : 'ERR_CACHE_IO', `cannot open the metadata cache ${dir}`, { cause: err });
    }
    return new LevelMetadataCache(db);
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

  async getListing(hashPart: string): Promise<string | undefined> {
    return this.#get(`ls!${hashPart}`);
  }

  async putListing(hashPart: string, json: string): Promise<void> {
    await this.#wrap(() => this.#db.put(`ls!${hashPart}`, json));
  }

  async deleteListing(hashPart: string): Promise<void> {
    await this.#wrap(() => this.#db.del(`ls!${hashPart}`));
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

  async #get(key: string): Promise<string | undefined> {
    try {
      const v = await this.#db.get(key);
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
      throw new NarfsError('ERR_CACHE_IO', 'metadata cache access failed', { cause: err });
    }
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
