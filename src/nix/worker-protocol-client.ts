/**
 * The client side of the worker protocol, as far as narfs needs it to check a daemon:
 * the handshake a Nix client sends (worker-protocol-connection.cc BasicClientConnection,
 * remote-store.cc initConnection / setOptions), the requests of the lower-store
 * operations, and the decoding of what a daemon answers (processStderr and the result of
 * each op). Pure; used by tests, the protocol capture script and benchmarks.
 *
 * Invariant: every reader consumes exactly one message or throws (WireIncomplete when the
 * bytes end early, ERR_WORKER_PROTOCOL for anything a Nix client would refuse).
 */
import {
  PROTOCOL_VERSION, STDERR_ERROR, STDERR_LAST, STDERR_NEXT, STDERR_RESULT, STDERR_START_ACTIVITY,
  STDERR_STOP_ACTIVITY, WORKER_MAGIC_1, WORKER_MAGIC_2, WireReader, WireWriter, WorkerOp, protocolMinor,
  readPathInfo, wireError, type StderrError, type Trust, type WirePathInfo,
} from './worker-protocol.js';

export function writeClientHello(w: WireWriter, clientVersion = PROTOCOL_VERSION): WireWriter {
  return w.u64(WORKER_MAGIC_1).u64(clientVersion);
}

export function readServerHello(r: WireReader): { serverVersion: number } {
  if (r.u64Big() !== BigInt(WORKER_MAGIC_2)) throw wireError('the daemon did not answer with the worker magic');
  return { serverVersion: r.u64('server version') };
}

/** CPU affinity (none) and reserveSpace (false), as RemoteStore sends them. */
export function writeClientPostHandshake(w: WireWriter, version: number): WireWriter {
  const minor = protocolMinor(version);
  if (minor >= 14) w.u64(0);
  if (minor >= 11) w.bool(false);
  return w;
}

export interface HandshakeInfo {
  daemonVersion?: string;
  trust: Trust;
}

export function readHandshakeInfo(r: WireReader, version: number): HandshakeInfo {
  const minor = protocolMinor(version);
  const info: HandshakeInfo = { trust: 'unknown' };
  if (minor >= 33) info.daemonVersion = r.string();
  if (minor >= 35) {
    const t = r.u64('trust flag');
    info.trust = t === 0 ? 'unknown' : t === 1 ? 'trusted' : 'not-trusted';
  }
  return info;
}

export type StderrOutcome = { kind: 'last'; logs: string[] } | ({ kind: 'error' } & StderrError);

function skipFields(r: WireReader): void {
  const n = r.u64('field count');
  for (let i = 0; i < n; i++) {
    const type = r.u64('field type');
    if (type === 0) r.u64Big();
    else if (type === 1) r.string();
    else throw wireError(`unknown log field type ${type}`);
  }
}

/** The daemon's log messages up to STDERR_LAST or STDERR_ERROR (processStderr). */
export function readStderr(r: WireReader, version: number): StderrOutcome {
  const logs: string[] = [];
  for (;;) {
    const msg = r.u64('stderr message');
    if (msg === STDERR_LAST) return { kind: 'last', logs };
    if (msg === STDERR_NEXT) {
      logs.push(r.string());
    } else if (msg === STDERR_START_ACTIVITY) {
      r.u64Big(); r.u64Big(); r.u64Big();
      logs.push(r.string());
      skipFields(r);
      r.u64Big();
    } else if (msg === STDERR_STOP_ACTIVITY) {
      r.u64Big();
    } else if (msg === STDERR_RESULT) {
      r.u64Big(); r.u64Big();
      skipFields(r);
    } else if (msg === STDERR_ERROR) {
      if (protocolMinor(version) >= 26) {
        const type = r.string();
        if (type !== 'Error') throw wireError(`error of type ${JSON.stringify(type)}`);
        r.u64Big(); // level
        r.string(); // name (removed)
        const message = r.string();
        if (r.u64Big() !== 0n) throw wireError('error with a position');
        const n = r.u64('trace count');
        const traces: string[] = [];
        for (let i = 0; i < n; i++) {
          if (r.u64Big() !== 0n) throw wireError('trace with a position');
          traces.push(r.string());
        }
        return { kind: 'error', message, traces };
      }
      const message = r.string();
      r.u64Big(); // status
      return { kind: 'error', message, traces: [] };
    } else {
      throw wireError(`unknown stderr message 0x${msg.toString(16)}`);
    }
  }
}

/** What the lower-store operations answer after STDERR_LAST. */
export type WorkerResult =
  | { kind: 'none' }
  | { kind: 'bool'; value: boolean }
  | { kind: 'string'; value: string }
  | { kind: 'strings'; value: string[] }
  | { kind: 'path-info'; value: WirePathInfo | undefined }
  | { kind: 'missing'; willBuild: string[]; willSubstitute: string[]; unknown: string[]; downloadSize: number; narSize: number };

/** Reads the result of `op` (after its STDERR_LAST), for the ops narfs' daemon serves. */
export function readResult(r: WireReader, op: number, version: number): WorkerResult {
  switch (op) {
    case WorkerOp.SetOptions:
      return { kind: 'none' };
    case WorkerOp.IsValidPath:
    case WorkerOp.HasSubstitutes:
    case WorkerOp.BuildPaths:
      return { kind: 'bool', value: r.bool() };
    case WorkerOp.QueryMissing:
      return {
        kind: 'missing', willBuild: r.strings(), willSubstitute: r.strings(), unknown: r.strings(),
        downloadSize: r.u64('download size'), narSize: r.u64('NAR size'),
      };
    case WorkerOp.QueryPathInfo: {
      if (protocolMinor(version) >= 17 && !r.bool()) return { kind: 'path-info', value: undefined };
      return { kind: 'path-info', value: readPathInfo(r, version) };
    }
    case WorkerOp.QueryPathFromHashPart:
    case WorkerOp.QueryDeriver:
    case WorkerOp.QueryPathHash:
      return { kind: 'string', value: r.string() };
    case WorkerOp.QueryValidPaths:
    case WorkerOp.QuerySubstitutablePaths:
    case WorkerOp.QueryReferences:
    case WorkerOp.QueryReferrers:
    case WorkerOp.QueryValidDerivers:
    case WorkerOp.QueryRealisation:
      return { kind: 'strings', value: r.strings() };
    default:
      throw wireError(`no result reader for op ${op}`);
  }
}

/** A request of the lower-store operations, as RemoteStore writes it. */
export type ClientRequest =
  | { op: typeof WorkerOp.SetOptions; overrides?: Array<[string, string]> }
  | { op: number; path: string }
  | { op: typeof WorkerOp.QueryValidPaths; paths: string[]; substitute?: boolean }
  | { op: typeof WorkerOp.QueryPathFromHashPart | typeof WorkerOp.QueryRealisation; value: string };

export function writeRequest(w: WireWriter, req: ClientRequest, version: number): WireWriter {
  w.u64(req.op);
  if (req.op === WorkerOp.SetOptions) {
    const overrides = 'overrides' in req ? req.overrides ?? [] : [];
    // keepFailed … useSubstitutes, the order of RemoteStore::setOptions
    for (const v of [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1]) w.u64(v);
    if (protocolMinor(version) >= 12) {
      w.u64(overrides.length);
      for (const [k, v] of overrides) w.string(k).string(v);
    }
    return w;
  }
  if ('paths' in req) {
    w.strings(req.paths);
    if (protocolMinor(version) >= 27) w.bool(req.substitute ?? false);
    return w;
  }
  if ('value' in req) return w.string(req.value);
  if ('path' in req) return w.string(req.path);
  throw wireError(`cannot write a request for op ${req.op}`);
}
