/**
 * PathInfoService: store path basename → verified narinfo, through the metadata cache and
 * the datalakes in priority order.
 *
 * Invariants:
 * - A narinfo is returned only if it parsed (narinfo.cc quirks), describes exactly the
 *   store path asked for, and passed the signature policy.
 * - Datalakes are asked through the DatalakeSet's one walk (`find`): priority order, a
 *   down datalake skipped at once, absence, failure and a rejected narinfo all falling
 *   through to the next one (like Nix trying substituters). A path is absent only when
 *   every datalake answered "absent"; then a negative entry is cached for `negativeTtlMs`.
 *   If some datalake failed or is down and none had a good narinfo, the failure is thrown
 *   (EIO at the edge: ERR_DATALAKE_UNAVAILABLE, fast when every datalake is known to be
 *   down), and nothing negative is cached. A rejection alone is thrown with its own code.
 * - A narinfo in the metadata cache is served without asking any datalake, so cached
 *   paths resolve while every datalake is down.
 * - One fetch per hash part at a time, shared by all callers; each caller waits only
 *   within its own signal.
 * - A verified narinfo is served even when it cannot be stored in the metadata cache (a
 *   full disk): the failure is logged with its code (ERR_CACHE_FULL / ERR_CACHE_IO) and
 *   the answer still returned. Only the datalake's answer decides "rejected".
 * - Positive entries are kept, but a narinfo is not trusted for ever: its NAR URL is not
 *   covered by the signature, so when its NAR turns out absent or wrong, `refresh` drops
 *   the cached entry (and the memo) and asks the datalakes again.
 */
import { NarfsError, toNarfsError } from '../errors.js';
import { raceSignal } from '../deadline.js';
import type { Logger } from '../log.js';
import type { Datalake } from '../datalake/datalake.js';
import type { DatalakeSet } from '../datalake/datalake-set.js';
import type { MetadataCache } from '../cache/metadata-cache.js';
import { parseNarInfo, type NarInfo } from '../nix/narinfo.js';
import { storePathBase, type StorePath } from '../nix/store-path.js';
import { enforceSignaturePolicy, type SignaturePolicy } from './signature-policy.js';

export interface PathInfo {
  narInfo: NarInfo;
  /** The datalake the narinfo came from (its NAR URL is relative to it). */
  datalake: Datalake;
}

export interface PathInfoServiceOptions {
  negativeTtlMs: number;
  logger: Logger;
}

export class PathInfoService {
  readonly #datalakes: DatalakeSet;
  readonly #meta: MetadataCache;
  readonly #policy: SignaturePolicy;
  readonly #opts: PathInfoServiceOptions;
  readonly #inflight = new Map<string, Promise<PathInfo | undefined>>();
  /** Basename → PathInfo, for paths resolved in this process. */
  readonly #memo = new Map<string, PathInfo>();

  /** The set decides the order datalakes are asked in (priority, then command line). */
  constructor(datalakes: DatalakeSet, meta: MetadataCache, policy: SignaturePolicy, options: PathInfoServiceOptions) {
    this.#datalakes = datalakes;
    this.#meta = meta;
    this.#policy = policy;
    this.#opts = options;
  }

  async get(sp: StorePath, signal?: AbortSignal): Promise<PathInfo | undefined> {
    const base = storePathBase(sp);
    const memo = this.#memo.get(base);
    if (memo) return memo;
    const info = await this.getByHashPart(sp.hashPart, signal);
    // Two names may share a hash part only if one is bogus: answer for the real one.
    if (info && storePathBase(info.narInfo.storePath) !== base) return undefined;
    return info;
  }

  /** The store path whose narinfo is `<hashPart>.narinfo`, whatever its name. */
  getByHashPart(hashPart: string, signal?: AbortSignal): Promise<PathInfo | undefined> {
    let pending = this.#inflight.get(hashPart);
    if (!pending) {
      pending = this.#lookup(hashPart).finally(() => this.#inflight.delete(hashPart));
      this.#inflight.set(hashPart, pending);
    }
    return raceSignal(pending, signal);
  }

  /**
   * Forgets what is known of `sp` (memo and cached narinfo) and asks the datalakes again.
   * Called when the NAR of the narinfo in hand failed: the next answer may point elsewhere.
   */
  async refresh(sp: StorePath, signal?: AbortSignal): Promise<PathInfo | undefined> {
    this.#memo.delete(storePathBase(sp));
    await this.#meta.deleteNarInfo(sp.hashPart).catch((err: unknown) => {
      this.#opts.logger.warn('cannot drop a cached narinfo', { path: storePathBase(sp), err: toNarfsError(err, 'ERR_CACHE_IO') });
    });
    // A lookup already in flight may have read the old entry: wait it out, then look again.
    await this.#inflight.get(sp.hashPart)?.catch(() => undefined);
    this.#memo.delete(storePathBase(sp));
    return this.get(sp, signal);
  }

  async #lookup(hashPart: string): Promise<PathInfo | undefined> {
    const sp = { hashPart };
    const cached = await this.#meta.getNarInfo(sp.hashPart);
    if (cached?.kind === 'negative') return undefined;
    if (cached?.kind === 'positive') {
      const datalake = this.#datalakes.datalakes.find((d) => d.displayUrl === cached.entry.source);
      if (datalake) {
        const narInfo = parseNarInfo(cached.entry.text, `${cached.entry.source}/${sp.hashPart}.narinfo`);
        // The policy in force now decides, not the one it was fetched under (keys change).
        enforceSignaturePolicy(narInfo, this.#policy, datalake.displayUrl);
        const info = { narInfo, datalake };
        this.#memo.set(cached.entry.name, info);
        return info;
      }
      // The datalake it came from is not configured any more: fetch afresh.
    }
    const rel = `${sp.hashPart}.narinfo`;
    // One walk over the datalakes (DatalakeSet.find): priority order, health, fall-through.
    // A narinfo that does not verify is refused there and the next datalake is asked.
    const found = await this.#datalakes.find(rel, (bytes, datalake) => {
      const whence = `${datalake.displayUrl}/${rel}`;
      const text = bytes.toString('utf8');
      try {
        const narInfo = parseNarInfo(text, whence);
        if (narInfo.storePath.hashPart !== sp.hashPart) {
          throw new NarfsError('ERR_NARINFO_MISMATCH', `${whence} describes ${storePathBase(narInfo.storePath)}`);
        }
        enforceSignaturePolicy(narInfo, this.#policy, datalake.displayUrl);
        return { narInfo, text };
      } catch (err) {
        const failure = toNarfsError(err, 'ERR_NARINFO_PARSE');
        this.#opts.logger.warn('narinfo rejected; trying the next datalake', { datalake: datalake.displayUrl, path: rel, err: failure });
        throw failure;
      }
    });
    if (found) {
      const { narInfo, text } = found.value;
      const datalake = found.datalake;
      const name = storePathBase(narInfo.storePath);
      await this.#meta.putNarInfo(sp.hashPart, { name, text, source: datalake.displayUrl, fetchedAt: Date.now() }).catch((err: unknown) => {
        // The answer is verified; failing to remember it must not turn it into EIO.
        this.#opts.logger.warn('cannot store a verified narinfo in the metadata cache; serving it anyway', {
          path: name, err: toNarfsError(err, 'ERR_CACHE_IO'),
        });
      });
      const info = { narInfo, datalake };
      this.#memo.set(name, info);
      return info;
    }
    // Every datalake answered "absent" (a failure or a down datalake would have thrown).
    await this.#meta.putNegative(sp.hashPart, this.#opts.negativeTtlMs).catch(() => {});
    return undefined;
  }
}

