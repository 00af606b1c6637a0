/**
 * The metadata cache: narinfos already fetched and verified (kept), narinfos known to be
 * absent (kept for a short TTL, so newly pushed paths appear), and `.ls` listings as the
 * datalake published them (unverified until the NAR is fetched).
 *
 * Invariant: only narinfos that passed parsing, the name check and the signature policy
 * are stored as positive entries; a reader may trust them without re-checking signatures.
 */
export interface NarInfoEntry {
  /** Store path basename `<hash>-<name>`. */
  name: string;
  /** The narinfo text exactly as served. */
  text: string;
  /** displayUrl of the datalake that served it (NAR URLs are relative to it). */
  source: string;
  fetchedAt: number;
}

export type NarInfoLookup =
  | { kind: 'positive'; entry: NarInfoEntry }
  | { kind: 'negative'; expiresAt: number };

export interface MetadataCache {
  getNarInfo(hashPart: string): Promise<NarInfoLookup | undefined>;
  putNarInfo(hashPart: string, entry: NarInfoEntry): Promise<void>;
  putNegative(hashPart: string, ttlMs: number): Promise<void>;
  /** Drops the positive entry (its NAR turned out absent or wrong). */
  deleteNarInfo(hashPart: string): Promise<void>;
  getListing(hashPart: string): Promise<string | undefined>;
  putListing(hashPart: string, json: string): Promise<void>;
  deleteListing(hashPart: string): Promise<void>;
  /** Basenames of every positive narinfo entry. */
  knownNames(): Promise<string[]>;
  close(): Promise<void>;
}
