/**
 * startLowerDaemon: a Unix socket that speaks the Nix worker protocol (as `nix-daemon`
 * does) for the operations Nix's local-overlay store asks of its lower store, so that
 * `local-overlay://?lower-store=unix://<socket>&…` sees every path of the datalakes as
 * valid the moment it is there, without a lower database or a registration step.
 *
 * Per connection (worker-protocol-connection.cc BasicServerConnection, daemon.cc
 * processConnection): client magic → server hello (magic, version) → client version
 * (clients before Nix 2.24 wait for the hello before they send it); from 1.38 the feature sets (narfs
 * offers none); the client's obsolete affinity/reserveSpace fields → ClientHandshakeInfo
 * (daemon version "narfs-<version>", trust "not trusted") and STDERR_LAST; then requests,
 * answered one at a time in order (lower-daemon-ops.ts).
 *
 * Invariants:
 * - One connection never affects another: garbage, a bad request or a client that goes
 *   away ends that connection only (its lookups are aborted).
 * - Never a hang: a request whose arguments can be delimited gets an answer, an error if
 *   narfs does not serve it, and the connection stays usable; an operation whose arguments
 *   cannot be delimited, or bytes that are not the protocol, get an STDERR_ERROR (once the
 *   handshake is done) and the connection is closed. A request that stays incomplete for
 *   `requestTimeoutMs` closes the connection; an idle connection between requests may stay
 *   (Nix keeps its connections to the lower store open for the life of the process).
 * - The socket file is mode 0600 from the moment it has its name (bound in a fresh 0700
 *   directory next to it, chmod'ed, renamed into place): only its owner (root, for a
 *   system mount) may connect; Nix's local-overlay store runs as root too. A socket file
 *   of a dead daemon is replaced; a live one, or a file that is not a socket, is refused.
 *   `close()` removes the file only if it is still ours.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { lstat } from 'node:fs/promises';
import { NarfsError, toNarfsError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  PROTOCOL_VERSION, WireIncomplete, WireReader, WireWriter, negotiateVersion, protocolMinor, readClientMagic,
  readClientPostHandshake, readFeatures, writeHandshakeInfo, writeServerHello, writeStderrError,
} from '../nix/worker-protocol.js';
import { readRequest } from '../nix/worker-protocol-requests.js';
import { answerLowerRequest, errorMessage, type LowerStoreSource } from './lower-daemon-ops.js';
import { isLive, listenPrivately } from './private-socket.js';

/** The version string sent in the handshake (Nix shows it in `nix store info`). */
export const LOWER_DAEMON_VERSION = 'narfs-0.1.0';

/** Bytes a single request may take before it is refused (SetOptions is the largest). */
export const MAX_REQUEST_BYTES = 16 << 20;

export interface LowerDaemonOptions extends LowerStoreSource {
  logger: Logger;
  /** How long a started request may stay incomplete (default 60 s). */
  requestTimeoutMs?: number;
  /** Connections served at once; more are closed at once (default 512). */
  maxConnections?: number;
}

export interface LowerDaemon {
  readonly path: string;
  /** Connections open now. */
  connections(): number;
  close(): Promise<void>;
}

export async function startLowerDaemon(path: string, options: LowerDaemonOptions): Promise<LowerDaemon> {
  const existing = await lstat(path).catch(() => undefined);
  if (existing && !existing.isSocket()) {
    throw new NarfsError('ERR_LOWER_SOCKET', `${path} exists and is not a socket`, { hint: 'Give --lower-socket a path that is free or a socket left by an earlier narfs.' });
  }
  if (existing && await isLive(path)) throw new NarfsError('ERR_LOWER_SOCKET', `another daemon answers on ${path}`);
  const conns = new Set<LowerConnection>();
  const max = options.maxConnections ?? 512;
  // Half-open: a client may send its last request and shut its side; it still gets the answer.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    if (conns.size >= max) {
      options.logger.warn('lower socket: too many connections; closing a new one', { max });
      socket.destroy();
      return;
    }
    const conn = new LowerConnection(socket, options);
    conns.add(conn);
    socket.on('close', () => conns.delete(conn));
  });
  const closeServer = await listenPrivately(server, path, 'ERR_LOWER_SOCKET');
  server.on('error', (err) => options.logger.warn('lower socket: server error', { err: toNarfsError(err, 'ERR_LOWER_SOCKET') }));
  options.logger.info('lower store socket ready', { path });
  return {
    path,
    connections: () => conns.size,
    async close() {
      for (const c of conns) c.destroy();
      await closeServer();
    },
  };
}

type Stage = 'hello' | 'version' | 'features' | 'post-handshake' | 'requests' | 'closed';

/** One client: a parse-and-answer loop over the bytes received so far. */
class LowerConnection {
  readonly #socket: Socket;
  readonly #opts: LowerDaemonOptions;
  readonly #aborted = new AbortController();
  #buf: Buffer = Buffer.alloc(0);
  #stage: Stage = 'hello';
  #version = PROTOCOL_VERSION;
  #busy = false;
  /** The client shut its side: answer what is complete, then close. */
  #ended = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(socket: Socket, opts: LowerDaemonOptions) {
    this.#socket = socket;
    this.#opts = opts;
    socket.on('data', (chunk: Buffer) => {
      this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
      void this.#pump();
    });
    socket.on('error', () => {});
    socket.on('end', () => {
      this.#ended = true;
      void this.#pump();
    });
    socket.on('close', () => {
      this.#stage = 'closed';
      clearTimeout(this.#timer);
      this.#aborted.abort(new NarfsError('ERR_ABORTED', 'the client went away'));
    });
  }

  destroy(): void {
    this.#stage = 'closed';
    clearTimeout(this.#timer);
    this.#socket.destroy();
  }

  #send(b: Buffer): void {
    if (this.#stage !== 'closed' && !this.#socket.destroyed) this.#socket.write(b);
  }

  /** Sends what is left to say (an error, when the client can read one) and closes. */
  #fail(err: unknown): void {
    if (this.#stage === 'closed') return;
    this.#opts.logger.debug('lower socket: closing a connection', { err: toNarfsError(err, 'ERR_WORKER_PROTOCOL') });
    if (this.#stage === 'requests') this.#send(writeStderrError(new WireWriter(), errorMessage(err), this.#version).toBuffer());
    this.#stage = 'closed';
    clearTimeout(this.#timer);
    this.#socket.end();
    this.#socket.destroySoon();
  }

  async #pump(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      while (this.#stage !== 'closed' && this.#buf.length > 0) {
        const r = new WireReader(this.#buf);
        let step: (() => Promise<void>) | undefined;
        try {
          step = this.#parse(r);
        } catch (err) {
          if (!(err instanceof WireIncomplete)) {
            this.#fail(err);
            return;
          }
          if (this.#buf.length > MAX_REQUEST_BYTES) {
            this.#fail(new NarfsError('ERR_WORKER_PROTOCOL', `request longer than ${MAX_REQUEST_BYTES} bytes`));
            return;
          }
          this.#armTimer();
          return;
        }
        clearTimeout(this.#timer);
        this.#timer = undefined;
        this.#buf = this.#buf.subarray(r.offset);
        try {
          await step();
        } catch (err) {
          this.#fail(err);
          return;
        }
      }
    } finally {
      this.#busy = false;
      if (this.#ended && this.#stage !== 'closed') {
        this.#stage = 'closed';
        clearTimeout(this.#timer);
        this.#socket.end();
      }
    }
  }

  /** A request has begun but not ended: it must end within the deadline. */
  #armTimer(): void {
    if (this.#timer) return;
    const ms = this.#opts.requestTimeoutMs ?? 60_000;
    this.#timer = setTimeout(() => {
      this.#fail(new NarfsError('ERR_DEADLINE', `a request stayed incomplete for ${ms} ms`));
    }, ms);
    this.#timer.unref();
  }

  /** Parses the next message of the current stage; returns what to do with it. */
  #parse(r: WireReader): () => Promise<void> {
    switch (this.#stage) {
      case 'hello':
        readClientMagic(r);
        return async () => {
          this.#send(writeServerHello(new WireWriter()).toBuffer());
          this.#stage = 'version';
        };
      case 'version': {
        const clientVersion = r.u64('client version');
        return async () => {
          this.#version = negotiateVersion(clientVersion);
          this.#stage = protocolMinor(this.#version) >= 38 ? 'features' : 'post-handshake';
        };
      }
      case 'features':
        readFeatures(r);
        return async () => {
          this.#send(new WireWriter().strings([]).toBuffer());
          this.#stage = 'post-handshake';
        };
      case 'post-handshake':
        readClientPostHandshake(r, this.#version);
        return async () => {
          this.#send(writeHandshakeInfo(new WireWriter(), this.#version, LOWER_DAEMON_VERSION, 'not-trusted').toBuffer());
          this.#stage = 'requests';
        };
      case 'requests': {
        const req = readRequest(r, this.#version);
        if (req.kind === 'opaque') {
          return async () => this.#fail(new NarfsError('ERR_WORKER_PROTOCOL', `operation ${req.name} is not supported by the narfs lower store`));
        }
        return async () => {
          const answer = await answerLowerRequest(this.#opts, req, this.#version, this.#aborted.signal);
          this.#send(answer);
        };
      }
      default:
        throw new NarfsError('ERR_WORKER_PROTOCOL', 'the connection is closed');
    }
  }
}
