/**
 * The Nix worker protocol ("daemon protocol", spoken on unix:// and ssh-ng:// stores):
 * framing and the values narfs' lower-store daemon reads and writes. Pure: bytes in,
 * values out; no sockets here.
 *
 * Format (Nix src/libutil/serialise.{hh,cc}, src/libstore/worker-protocol{,-connection}.cc,
 * src/libstore/daemon.cc, 2.22 … 2.35):
 * - every number is a little-endian u64; a bool is a u64 0/1;
 * - a string is its length (u64), its bytes, and zero padding to a multiple of 8;
 * - a string list / set is its count (u64) then the strings; sets are sorted (std::set);
 * - a store path is written as a string, the full path (`/nix/store/<hash>-<name>`);
 *   an absent optional store path is the empty string;
 * - a protocol version is `major << 8 | minor`; fields depend on the minor version of the
 *   connection (the smaller of the client's and the server's), as named below.
 *
 * Readers never wait: a WireReader over the bytes received so far throws WireIncomplete
 * when they end before the value does, so that the caller can wait for more and parse
 * again from the start of the message. Any other failure is ERR_WORKER_PROTOCOL.
 */
import { NarfsError } from '../errors.js';

export const WORKER_MAGIC_1 = 0x6e697863; // "cxin": client hello
export const WORKER_MAGIC_2 = 0x6478696f; // "oixd": server hello

/** The version narfs speaks: 1.38 (Nix 2.24 … 2.34); older clients get their own. */
export const PROTOCOL_VERSION = (1 << 8) | 38;
/** Oldest client version served (Nix's own daemon refuses below 1.10). */
export const MIN_CLIENT_VERSION = (1 << 8) | 10;

export const protocolMajor = (v: number): number => v & 0xff00;
export const protocolMinor = (v: number): number => v & 0x00ff;

export const STDERR_NEXT = 0x6f6c6d67;
export const STDERR_READ = 0x64617461;
export const STDERR_WRITE = 0x64617416;
export const STDERR_LAST = 0x616c7473;
export const STDERR_ERROR = 0x63787470;
export const STDERR_START_ACTIVITY = 0x53545254;
export const STDERR_STOP_ACTIVITY = 0x53544f50;
export const STDERR_RESULT = 0x52534c54;

/** WorkerProto::Op (worker-protocol.hh). */
export const WorkerOp = {
  IsValidPath: 1,
  HasSubstitutes: 3,
  QueryPathHash: 4,
  QueryReferences: 5,
  QueryReferrers: 6,
  AddToStore: 7,
  AddTextToStore: 8,
  BuildPaths: 9,
  EnsurePath: 10,
  AddTempRoot: 11,
  AddIndirectRoot: 12,
  SyncWithGC: 13,
  FindRoots: 14,
  ExportPath: 16,
  QueryDeriver: 18,
  SetOptions: 19,
  CollectGarbage: 20,
  QuerySubstitutablePathInfo: 21,
  QueryDerivationOutputs: 22,
  QueryAllValidPaths: 23,
  QueryFailedPaths: 24,
  ClearFailedPaths: 25,
  QueryPathInfo: 26,
  ImportPaths: 27,
  QueryDerivationOutputNames: 28,
  QueryPathFromHashPart: 29,
  QuerySubstitutablePathInfos: 30,
  QueryValidPaths: 31,
  QuerySubstitutablePaths: 32,
  QueryValidDerivers: 33,
  OptimiseStore: 34,
  VerifyStore: 35,
  BuildDerivation: 36,
  AddSignatures: 37,
  NarFromPath: 38,
  AddToStoreNar: 39,
  QueryMissing: 40,
  QueryDerivationOutputMap: 41,
  RegisterDrvOutput: 42,
  QueryRealisation: 43,
  AddMultipleToStore: 44,
  AddBuildLog: 45,
  BuildPathsWithResults: 46,
  AddPermRoot: 47,
} as const;
export type WorkerOpName = keyof typeof WorkerOp;

const OP_NAMES = new Map<number, WorkerOpName>(Object.entries(WorkerOp).map(([k, v]) => [v, k as WorkerOpName]));

/** `IsValidPath`, or `op 99` for a number Nix does not define. */
export function workerOpName(op: number): string {
  return OP_NAMES.get(op) ?? `op ${op}`;
}

/** Longest string a reader accepts unless told otherwise (Nix settings may be long). */
export const MAX_WIRE_STRING = 1 << 20;
/** Most entries a string list may have. */
export const MAX_WIRE_LIST = 1 << 20;

/** Thrown by WireReader when the bytes end before the value: wait for more, parse again. */
export class WireIncomplete extends Error {
  constructor() {
    super('more bytes needed');
    this.name = 'WireIncomplete';
  }
}
const INCOMPLETE = new WireIncomplete();

export function wireError(message: string): NarfsError {
  return new NarfsError('ERR_WORKER_PROTOCOL', message);
}

/** Reads worker-protocol values from the front of a buffer (the bytes received so far). */
export class WireReader {
  readonly #buf: Buffer;
  #pos: number;

  constructor(buf: Buffer, pos = 0) {
    this.#buf = buf;
    this.#pos = pos;
  }

  /** Bytes consumed so far. */
  get offset(): number {
    return this.#pos;
  }

  get remaining(): number {
    return this.#buf.length - this.#pos;
  }

  #need(n: number): void {
    if (this.#buf.length - this.#pos < n) throw INCOMPLETE;
  }

  /** A u64 as a bigint (the whole range). */
  u64Big(): bigint {
    this.#need(8);
    const v = this.#buf.readBigUInt64LE(this.#pos);
    this.#pos += 8;
    return v;
  }

  /** A u64 that must fit a JS number exactly (sizes, counts, times). */
  u64(what = 'number'): number {
    const v = this.u64Big();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw wireError(`${what} ${v} is out of range`);
    return Number(v);
  }

  /** A bool: Nix reads any non-zero u64 as true. */
  bool(): boolean {
    return this.u64Big() !== 0n;
  }

  bytes(max = MAX_WIRE_STRING, what = 'string'): Buffer {
    const len = this.u64Big();
    if (len > BigInt(max)) throw wireError(`${what} of ${len} bytes is longer than ${max}`);
    const n = Number(len);
    const padded = n + ((8 - (n % 8)) % 8);
    this.#need(padded);
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    for (let i = this.#pos + n; i < this.#pos + padded; i++) {
      if (this.#buf[i] !== 0) throw wireError(`non-zero padding after a ${what}`);
    }
    this.#pos += padded;
    return out;
  }

  string(max = MAX_WIRE_STRING, what = 'string'): string {
    return this.bytes(max, what).toString('utf8');
  }

  strings(maxCount = MAX_WIRE_LIST, maxLen = MAX_WIRE_STRING, what = 'string list'): string[] {
    const count = this.u64Big();
    if (count > BigInt(maxCount)) throw wireError(`${what} of ${count} entries is longer than ${maxCount}`);
    const out: string[] = [];
    for (let i = 0n; i < count; i++) out.push(this.string(maxLen, what));
    return out;
  }
}

/** Builds a worker-protocol message. */
export class WireWriter {
  readonly #parts: Buffer[] = [];

  u64(v: number | bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(typeof v === 'bigint' ? v : BigInt(v));
    this.#parts.push(b);
    return this;
  }

  bool(v: boolean): this {
    return this.u64(v ? 1 : 0);
  }

  string(s: string | Buffer): this {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    this.u64(b.length);
    this.#parts.push(b);
    const pad = (8 - (b.length % 8)) % 8;
    if (pad > 0) this.#parts.push(Buffer.alloc(pad));
    return this;
  }

  strings(list: readonly string[]): this {
    this.u64(list.length);
    for (const s of list) this.string(s);
    return this;
  }

  raw(b: Buffer): this {
    this.#parts.push(b);
    return this;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.#parts);
  }
}

/** A set of strings as Nix writes a std::set<std::string> or StorePathSet: sorted bytewise, unique. */
export function sortedSet(list: Iterable<string>): string[] {
  return [...new Set(list)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

// --- ValidPathInfo (worker-protocol.cc `Serialise<UnkeyedValidPathInfo>`) -----------------

/** What the worker protocol carries of a valid path (UnkeyedValidPathInfo), as wire strings. */
export interface WirePathInfo {
  /** Full store path of the deriver, or undefined. */
  deriver?: string;
  /** NAR hash as base16 without the algorithm (sha256 implied). */
  narHashBase16: string;
  /** Full store paths. Written sorted. */
  references: string[];
  /** Seconds since the epoch. */
  registrationTime: number;
  narSize: number;
  /** Minor ≥ 16. */
  ultimate: boolean;
  /** `name:base64`, written sorted. Minor ≥ 16. */
  sigs: string[];
  /** Rendered content address or undefined. Minor ≥ 16. */
  ca?: string;
}

export function writePathInfo(w: WireWriter, info: WirePathInfo, version: number): WireWriter {
  w.string(info.deriver ?? '').string(info.narHashBase16).strings(sortedSet(info.references));
  w.u64(info.registrationTime).u64(info.narSize);
  if (protocolMinor(version) >= 16) w.bool(info.ultimate).strings(sortedSet(info.sigs)).string(info.ca ?? '');
  return w;
}

export function readPathInfo(r: WireReader, version: number): WirePathInfo {
  const deriver = r.string();
  const narHashBase16 = r.string();
  const references = r.strings();
  const registrationTime = r.u64('registration time');
  const narSize = r.u64('NAR size');
  const info: WirePathInfo = { narHashBase16, references, registrationTime, narSize, ultimate: false, sigs: [] };
  if (deriver !== '') info.deriver = deriver;
  if (protocolMinor(version) >= 16) {
    info.ultimate = r.bool();
    info.sigs = r.strings();
    const ca = r.string();
    if (ca !== '') info.ca = ca;
  }
  return info;
}

// --- errors (TunnelLogger::stopWork in daemon.cc; `operator<<(Sink&, const Error&)`) ------

/** Nix's Verbosity lvlError. */
const LVL_ERROR = 0;

/** STDERR_ERROR with `message`, in the form the connection's version expects. */
export function writeStderrError(w: WireWriter, message: string, version: number): WireWriter {
  w.u64(STDERR_ERROR);
  if (protocolMinor(version) >= 26) {
    // type, level, name (removed), message, havePos, traces
    w.string('Error').u64(LVL_ERROR).string('Error').string(message).u64(0).u64(0);
  } else {
    w.string(message).u64(1);
  }
  return w;
}

export interface StderrError {
  message: string;
  traces: string[];
}

// --- handshake (worker-protocol-connection.cc BasicServerConnection) ----------------------

/**
 * The client's magic. A server answers it with its hello before reading the client's
 * version: clients before Nix 2.24 wait for that hello before they send their version.
 */
export function readClientMagic(r: WireReader): void {
  const magic = r.u64Big();
  if (magic !== BigInt(WORKER_MAGIC_1)) throw wireError('protocol mismatch: the client did not send the worker magic');
}

/** The client's first message: magic and its version. */
export function readClientHello(r: WireReader): { clientVersion: number } {
  readClientMagic(r);
  const clientVersion = r.u64('client version');
  return { clientVersion };
}

/** The version both sides use, or an error for a client Nix itself would refuse. */
export function negotiateVersion(clientVersion: number, serverVersion = PROTOCOL_VERSION): number {
  if (protocolMajor(clientVersion) !== protocolMajor(serverVersion)) {
    throw wireError(`unsupported protocol major version ${clientVersion >> 8}`);
  }
  const v = Math.min(clientVersion, serverVersion);
  if (v < MIN_CLIENT_VERSION) throw wireError('the Nix client version is too old');
  return v;
}

export function writeServerHello(w: WireWriter, serverVersion = PROTOCOL_VERSION): WireWriter {
  return w.u64(WORKER_MAGIC_2).u64(serverVersion);
}

/** Minor ≥ 38: after the hello, the client's features (a string set); the server answers with its own. */
export function readFeatures(r: WireReader): string[] {
  return r.strings(1024, 1024, 'feature list');
}

/** The client's obsolete post-handshake fields (CPU affinity, reserveSpace). */
export function readClientPostHandshake(r: WireReader, version: number): void {
  const minor = protocolMinor(version);
  if (minor >= 14 && r.u64Big() !== 0n) r.u64Big(); // obsolete CPU affinity
  if (minor >= 11) r.u64Big(); // obsolete reserveSpace
}

/** TrustedFlag as `Serialise<std::optional<TrustedFlag>>` writes it: 0 unknown, 1 trusted, 2 not. */
export type Trust = 'unknown' | 'trusted' | 'not-trusted';

/** ClientHandshakeInfo, then the STDERR_LAST that ends the start-up messages. */
export function writeHandshakeInfo(w: WireWriter, version: number, daemonVersion: string, trust: Trust): WireWriter {
  const minor = protocolMinor(version);
  if (minor >= 33) w.string(daemonVersion);
  if (minor >= 35) w.u64(trust === 'unknown' ? 0 : trust === 'trusted' ? 1 : 2);
  return w.u64(STDERR_LAST);
}
