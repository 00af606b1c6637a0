// A raw worker-protocol client over a Unix socket, written with narfs' client-side
// readers and writers: the handshake, one request at a time, and access to the socket
// for tests that send garbage or hang up half-way. Waits are on socket events, each
// bounded by a deadline generous for a loaded 2-core machine.
import { connect, type Socket } from 'node:net';
import { PROTOCOL_VERSION, WireIncomplete, WireReader, WireWriter, protocolMinor } from '../../src/nix/worker-protocol.js';
import {
  readHandshakeInfo, readResult, readServerHello, readStderr, writeClientHello, writeClientPostHandshake, writeRequest,
  type ClientRequest, type HandshakeInfo, type StderrOutcome, type WorkerResult,
} from '../../src/nix/worker-protocol-client.js';

export const SOCKET_WAIT_MS = 60_000;

export class WorkerSocket {
  readonly socket: Socket;
  #buf = Buffer.alloc(0);
  #closed = false;
  #waiters: Array<() => void> = [];
  version = PROTOCOL_VERSION;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake();
    });
    socket.on('error', () => {});
    // The server ending its side is the end of the conversation.
    socket.on('end', () => {
      this.#closed = true;
      socket.end();
      this.#wake();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
  }

  static connect(path: string): Promise<WorkerSocket> {
    return new Promise((resolve, reject) => {
      const s = connect({ path, allowHalfOpen: true });
      s.once('connect', () => resolve(new WorkerSocket(s)));
      s.once('error', reject);
    });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes received and not yet read. */
  get pending(): Buffer {
    return this.#buf;
  }

  /** Parses with `fn` once enough bytes are there; rejects when the socket closes first. */
  async read<T>(fn: (r: WireReader) => T, what: string): Promise<T> {
    const deadline = Date.now() + SOCKET_WAIT_MS;
    for (;;) {
      const r = new WireReader(this.#buf);
      try {
        const v = fn(r);
        this.#buf = this.#buf.subarray(r.offset);
        return v;
      } catch (err) {
        if (!(err instanceof WireIncomplete)) throw err;
      }
      if (this.#closed) throw new Error(`the socket closed before ${what}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${SOCKET_WAIT_MS} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.#waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  /** Resolves when the server has closed the connection. */
  async waitClosed(): Promise<void> {
    await this.read(() => { if (!this.#closed) throw new WireIncomplete(); }, 'the close').catch((err: Error) => {
      if (!this.#closed) throw err;
    });
  }

  async handshake(clientVersion = PROTOCOL_VERSION): Promise<HandshakeInfo> {
    this.socket.write(writeClientHello(new WireWriter(), clientVersion).toBuffer());
    const { serverVersion } = await this.read(readServerHello, 'the server hello');
    this.version = Math.min(serverVersion, clientVersion);
    const w = new WireWriter();
    if (protocolMinor(this.version) >= 38) w.strings([]);
    writeClientPostHandshake(w, this.version);
    this.socket.write(w.toBuffer());
    if (protocolMinor(this.version) >= 38) await this.read((r) => r.strings(), 'the server features');
    const info = await this.read((r) => readHandshakeInfo(r, this.version), 'the handshake info');
    const start = await this.read((r) => readStderr(r, this.version), 'the start-up messages');
    if (start.kind !== 'last') throw new Error(`start-up error: ${start.message}`);
    return info;
  }

  async request(req: ClientRequest): Promise<{ outcome: StderrOutcome; result?: WorkerResult }> {
    this.socket.write(writeRequest(new WireWriter(), req, this.version).toBuffer());
    const outcome = await this.read((r) => readStderr(r, this.version), `the answer to op ${req.op}`);
    if (outcome.kind !== 'last') return { outcome };
    const result = await this.read((r) => readResult(r, req.op, this.version), `the result of op ${req.op}`);
    return { outcome, result };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Sends `bytes`, shuts the write side, and returns everything the server wrote until it closed. */
export function sendAndCollect(path: string, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect({ path, allowHalfOpen: true });
    const parts: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`the server did not close within ${SOCKET_WAIT_MS} ms`)); }, SOCKET_WAIT_MS);
    s.on('connect', () => s.end(bytes));
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('error', (err) => { clearTimeout(timer); reject(err); });
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(parts)); });
  });
}
