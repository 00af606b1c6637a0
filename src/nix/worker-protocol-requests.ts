/**
 * Worker-protocol requests as a daemon reads them: the op number, then its arguments
 * (daemon.cc `performOp`, Nix 2.22 … 2.35). Pure; see worker-protocol.ts for the framing.
 *
 * Invariant: `readRequest` consumes exactly the bytes of one request or throws
 * (WireIncomplete: wait for more bytes; ERR_WORKER_PROTOCOL: the stream is garbage).
 * Requests whose arguments narfs can delimit are returned whole, even for operations it
 * does not serve, so that the connection stays in step after an error answer. Only
 * operations whose arguments cannot be delimited without implementing them (NAR streams,
 * framed data, derivations) come back as `opaque`: the daemon answers with an error and
 * closes, as Nix's own daemon does after an error it cannot recover from.
 */
import { WireReader, WorkerOp, protocolMinor, workerOpName, wireError } from './worker-protocol.js';

/** Longest store path string accepted (Nix allows 211 name characters plus the store dir). */
export const MAX_PATH_STRING = 4096;

/** Operations whose one argument is a store path. */
const PATH_OPS = new Set<number>([
  WorkerOp.IsValidPath, WorkerOp.HasSubstitutes, WorkerOp.QueryPathHash, WorkerOp.QueryReferences,
  WorkerOp.QueryReferrers, WorkerOp.QueryValidDerivers, WorkerOp.QueryDerivationOutputs,
  WorkerOp.QueryDerivationOutputNames, WorkerOp.QueryDerivationOutputMap, WorkerOp.QueryDeriver,
  WorkerOp.QuerySubstitutablePathInfo, WorkerOp.EnsurePath, WorkerOp.AddTempRoot, WorkerOp.AddIndirectRoot,
  WorkerOp.QueryPathInfo, WorkerOp.NarFromPath, WorkerOp.ExportPath,
]);

/** Operations without arguments. */
const NO_ARG_OPS = new Set<number>([
  WorkerOp.SyncWithGC, WorkerOp.FindRoots, WorkerOp.QueryAllValidPaths, WorkerOp.OptimiseStore,
  WorkerOp.QueryFailedPaths, WorkerOp.ClearFailedPaths,
]);

export type WorkerRequest =
  | { kind: 'path'; op: number; name: string; path: string }
  | { kind: 'paths'; op: number; name: string; paths: string[]; substitute: boolean }
  | { kind: 'string'; op: number; name: string; value: string }
  | { kind: 'set-options'; op: number; name: string; overrides: Array<[string, string]> }
  /** Arguments read and dropped: an operation narfs does not serve, connection still in step. */
  | { kind: 'other'; op: number; name: string }
  /** Arguments that cannot be delimited: answer with an error, then close. */
  | { kind: 'opaque'; op: number; name: string };

/** Reads one request from `r` (the bytes after the handshake), for a connection of `version`. */
export function readRequest(r: WireReader, version: number): WorkerRequest {
  const opBig = r.u64Big();
  const op = opBig > 0xffffn ? -1 : Number(opBig);
  const name = op < 0 ? `op ${opBig}` : workerOpName(op);
  const minor = protocolMinor(version);
  if (PATH_OPS.has(op)) return { kind: 'path', op, name, path: r.string(MAX_PATH_STRING, 'store path') };
  if (NO_ARG_OPS.has(op)) return { kind: 'other', op, name };
  switch (op) {
    case WorkerOp.QueryPathFromHashPart:
    case WorkerOp.QueryRealisation:
      return { kind: 'string', op, name, value: r.string(MAX_PATH_STRING, name) };
    case WorkerOp.QueryValidPaths: {
      const paths = r.strings(undefined, MAX_PATH_STRING, 'store path set');
      const substitute = minor >= 27 ? r.bool() : false;
      return { kind: 'paths', op, name, paths, substitute };
    }
    case WorkerOp.QuerySubstitutablePaths:
      return { kind: 'paths', op, name, paths: r.strings(undefined, MAX_PATH_STRING, 'store path set'), substitute: false };
    case WorkerOp.QuerySubstitutablePathInfos: {
      if (minor < 22) {
        r.strings(undefined, MAX_PATH_STRING);
      } else {
        const n = r.u64('map size');
        for (let i = 0; i < n; i++) {
          r.string(MAX_PATH_STRING);
          r.string(MAX_PATH_STRING);
        }
      }
      return { kind: 'other', op, name };
    }
    case WorkerOp.SetOptions: {
      for (let i = 0; i < 12; i++) r.u64Big();
      const overrides: Array<[string, string]> = [];
      if (minor >= 12) {
        const n = r.u64('settings count');
        if (n > 100_000) throw wireError(`SetOptions with ${n} settings`);
        for (let i = 0; i < n; i++) overrides.push([r.string(), r.string()]);
      }
      return { kind: 'set-options', op, name, overrides };
    }
    case WorkerOp.VerifyStore:
      r.u64Big();
      r.u64Big();
      return { kind: 'other', op, name };
    case WorkerOp.AddSignatures:
      r.string(MAX_PATH_STRING);
      r.strings();
      return { kind: 'other', op, name };
    case WorkerOp.AddPermRoot:
      r.string(MAX_PATH_STRING);
      r.string();
      return { kind: 'other', op, name };
    case WorkerOp.BuildPaths:
    case WorkerOp.BuildPathsWithResults:
      r.strings();
      if (minor >= 15) r.u64Big();
      return { kind: 'other', op, name };
    case WorkerOp.QueryMissing:
      // DerivedPaths as strings: `/nix/store/…` (opaque) or `<drv>^<outputs>` (built).
      return { kind: 'paths', op, name, paths: r.strings(undefined, MAX_PATH_STRING, 'derived path set'), substitute: false };
    case WorkerOp.CollectGarbage:
      r.u64Big();
      r.strings();
      for (let i = 0; i < 5; i++) r.u64Big(); // ignoreLiveness, maxFreed, 3 obsolete
      return { kind: 'other', op, name };
    default:
      return { kind: 'opaque', op, name };
  }
}
