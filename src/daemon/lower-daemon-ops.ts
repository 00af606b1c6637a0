/**
 * answerLowerRequest: what narfs answers to each worker-protocol request on its lower-store
 * socket, from the verified narinfos of its datalakes (PathInfoService: signature policy
 * applied, negative answers remembered for --negative-ttl). A path whose narinfo narfs
 * refuses (untrusted signature, wrong path, malformed) is not valid; a datalake that
 * fails is an error for the client, never a "not valid".
 *
 * Served as Nix's LocalStore would for a read-only store whose valid paths are exactly
 * the datalake's (daemon.cc `performOp`; local-overlay-store.cc names what the overlay
 * asks of its lower store):
 * - IsValidPath, QueryValidPaths, QueryPathInfo (deriver, narHash, references, narSize,
 *   sigs, ca from the narinfo; `ultimate` false; registrationTime: the daemon's start),
 *   QueryPathFromHashPart, QueryReferences, QueryDeriver, QueryPathHash;
 * - QueryValidDerivers: the path's deriver, when that .drv is in the datalake and names
 *   the path among its outputs (LocalStore reads the same from DerivationOutputs);
 * - QueryReferrers and QueryRealisation: empty (a datalake has no reverse index and no
 *   realisations: the overlay's own database answers for what it built);
 * - HasSubstitutes / QuerySubstitutablePaths: none; QueryMissing: what is not valid is
 *   unknown, nothing to build or substitute (`nix path-info --store unix://…` asks it);
 *   SetOptions: accepted, ignored;
 * - anything else: an error that names the operation.
 */
import { NarfsError, isNarfsError, toNarfsError } from '../errors.js';
import { formatHash } from '../nix/hash.js';
import { parseDerivationOutputs } from '../nix/derivation.js';
import { isValidHashPart, parseStorePath, storePathBase, storePathFull, type StorePath } from '../nix/store-path.js';
import {
  STDERR_LAST, WireWriter, WorkerOp, protocolMinor, writePathInfo, writeStderrError, type WirePathInfo,
} from '../nix/worker-protocol.js';
import type { WorkerRequest } from '../nix/worker-protocol-requests.js';
import type { PathInfo, PathInfoService } from '../store/path-info-service.js';

export interface LowerStoreSource {
  infos: PathInfoService;
  /** The bytes of a store path that is a regular file (a .drv), verified. */
  readFile(info: PathInfo, signal: AbortSignal): Promise<Buffer>;
  /** registrationTime of every path (seconds). */
  registrationTime: number;
}

/** How many paths of one QueryValidPaths are resolved at once. */
const VALID_PATHS_CONCURRENCY = 16;

/** The wire form of a verified narinfo. */
export function toWirePathInfo(info: PathInfo, registrationTime: number): WirePathInfo {
  const ni = info.narInfo;
  const wire: WirePathInfo = {
    // Nix reads it with Hash::parseAny(s, SHA256): a bare base16 digest is sha256.
    narHashBase16: ni.narHash.algo === 'sha256' ? formatHash(ni.narHash, 'base16', false) : formatHash(ni.narHash, 'base16'),
    references: ni.references.map(storePathFull),
    registrationTime,
    narSize: ni.narSize,
    ultimate: false,
    sigs: [...ni.sigs],
  };
  if (ni.deriver) wire.deriver = storePathFull(ni.deriver);
  if (ni.ca) wire.ca = ni.ca;
  return wire;
}

/** A store path argument; Nix's daemon refuses a malformed one with an error, so do we. */
function storePathArg(s: string): StorePath {
  try {
    return parseStorePath(s);
  } catch (err) {
    throw new NarfsError('ERR_WORKER_PROTOCOL', `path '${s.length > 300 ? s.slice(0, 300) + '…' : s}' is not a valid store path`, { cause: err });
  }
}

/**
 * Narinfos that the datalakes have but that narfs refuses (signature policy, another path,
 * malformed): such a path is not valid in this store, as for the mount. Failures that say
 * nothing about the path (a datalake down, a timeout) stay errors.
 */
const REFUSED: ReadonlySet<string> = new Set(['ERR_NARINFO_SIGNATURE', 'ERR_NARINFO_MISMATCH', 'ERR_NARINFO_PARSE', 'ERR_NARINFO_CORRUPT']);

async function infoOf(src: LowerStoreSource, sp: StorePath, signal: AbortSignal): Promise<PathInfo | undefined> {
  try {
    return await src.infos.get(sp, signal);
  } catch (err) {
    if (isNarfsError(err) && REFUSED.has(err.code)) return undefined;
    throw err;
  }
}

async function pathInfo(src: LowerStoreSource, path: string, signal: AbortSignal): Promise<PathInfo | undefined> {
  return infoOf(src, storePathArg(path), signal);
}

function notValid(path: string): NarfsError {
  return new NarfsError('ERR_PATH_NOT_FOUND', `path '${path}' is not valid`);
}

/** The message a Nix client shows for a failure: the error, its code and hint. */
export function errorMessage(err: unknown): string {
  const e = toNarfsError(err);
  return `narfs: ${e.message} [${e.code}]${isNarfsError(err) && e.hint ? ` (${e.hint})` : ''}`;
}

/**
 * The whole answer to `req` (stderr messages, then the result), or an STDERR_ERROR.
 * Never throws: every failure becomes an error answer for the client.
 */
export async function answerLowerRequest(src: LowerStoreSource, req: WorkerRequest, version: number, signal: AbortSignal): Promise<Buffer> {
  try {
    const w = new WireWriter();
    await answer(src, req, version, signal, w);
    return w.toBuffer();
  } catch (err) {
    return writeStderrError(new WireWriter(), errorMessage(err), version).toBuffer();
  }
}

async function answer(src: LowerStoreSource, req: WorkerRequest, version: number, signal: AbortSignal, w: WireWriter): Promise<void> {
  const last = () => w.u64(STDERR_LAST);
  if (req.kind === 'set-options') {
    last();
    return;
  }
  if (req.kind === 'path') {
    switch (req.op) {
      case WorkerOp.IsValidPath:
        last().bool((await pathInfo(src, req.path, signal)) !== undefined);
        return;
      case WorkerOp.QueryPathInfo: {
        const info = await pathInfo(src, req.path, signal);
        if (protocolMinor(version) >= 17) {
          last().bool(info !== undefined);
          if (info) writePathInfo(w, toWirePathInfo(info, src.registrationTime), version);
          return;
        }
        if (!info) throw notValid(req.path);
        writePathInfo(last(), toWirePathInfo(info, src.registrationTime), version);
        return;
      }
      case WorkerOp.QueryReferences:
      case WorkerOp.QueryDeriver:
      case WorkerOp.QueryPathHash: {
        const info = await pathInfo(src, req.path, signal);
        if (!info) throw notValid(req.path);
        const wire = toWirePathInfo(info, src.registrationTime);
        if (req.op === WorkerOp.QueryReferences) last().strings([...wire.references].sort());
        else if (req.op === WorkerOp.QueryDeriver) last().string(wire.deriver ?? '');
        else last().string(wire.narHashBase16);
        return;
      }
      case WorkerOp.QueryReferrers:
        storePathArg(req.path);
        last().strings([]);
        return;
      case WorkerOp.QueryValidDerivers: {
        const info = await pathInfo(src, req.path, signal);
        last().strings(info ? await validDerivers(src, info, signal) : []);
        return;
      }
      case WorkerOp.HasSubstitutes:
        storePathArg(req.path);
        last().bool(false);
        return;
      default:
        break;
    }
  } else if (req.kind === 'paths') {
    if (req.op === WorkerOp.QueryValidPaths) {
      const paths = req.paths.map((p) => ({ p, sp: storePathArg(p) }));
      const valid = new Set<string>();
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < paths.length; i = next++) {
          if (await infoOf(src, paths[i]!.sp, signal)) valid.add(paths[i]!.p);
        }
      };
      await Promise.all(Array.from({ length: Math.min(VALID_PATHS_CONCURRENCY, paths.length) }, worker));
      last().strings([...valid].sort());
      return;
    }
    if (req.op === WorkerOp.QueryMissing) {
      // Nothing can be built or substituted here: what is not valid is unknown.
      const unknown: string[] = [];
      for (const p of req.paths) {
        let sp: StorePath | undefined;
        try {
          sp = parseStorePath(p);
        } catch {
          sp = undefined; // `<drv>^<outputs>`: a build, which this store never does
        }
        if (!sp || !(await infoOf(src, sp, signal))) unknown.push(p);
      }
      last().strings([]).strings([]).strings(unknown.sort()).u64(0).u64(0);
      return;
    }
    if (req.op === WorkerOp.QuerySubstitutablePaths) {
      last().strings([]);
      return;
    }
  } else if (req.kind === 'string') {
    if (req.op === WorkerOp.QueryPathFromHashPart) {
      let info: PathInfo | undefined;
      try {
        info = isValidHashPart(req.value) ? await src.infos.getByHashPart(req.value, signal) : undefined;
      } catch (err) {
        if (!(isNarfsError(err) && REFUSED.has(err.code))) throw err;
      }
      last().string(info ? storePathFull(info.narInfo.storePath) : '');
      return;
    }
    if (req.op === WorkerOp.QueryRealisation) {
      // An empty set: of store paths before 1.31, of realisations from 1.31 on.
      last().strings([]);
      return;
    }
  }
  throw new NarfsError('ERR_WORKER_PROTOCOL', `operation ${req.name} is not supported by the narfs lower store (read-only; it serves path queries)`);
}

/** [deriver] when the deriver is in the datalake and its outputs include the path. */
async function validDerivers(src: LowerStoreSource, info: PathInfo, signal: AbortSignal): Promise<string[]> {
  const deriver = info.narInfo.deriver;
  if (!deriver) return [];
  const drvInfo = await infoOf(src, deriver, signal);
  if (!drvInfo) return [];
  const text = (await src.readFile(drvInfo, signal)).toString('utf8');
  let outputs;
  try {
    outputs = parseDerivationOutputs(text);
  } catch (err) {
    throw new NarfsError('ERR_DERIVATION_PARSE', `${storePathBase(deriver)}: ${(err as Error).message}`, { cause: err });
  }
  const self = storePathFull(info.narInfo.storePath);
  return outputs.some((o) => o.path === self) ? [storePathFull(deriver)] : [];
}
